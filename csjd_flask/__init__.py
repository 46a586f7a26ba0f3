"""CSJD for Flask: ``csjd = CSJD(app)`` (or ``CSJD()`` + ``init_app(app)``), ``@csjd.job``,
``flask csjd run``; ``csjd.dashboard_blueprint(authorize=...)`` for the jobs dashboard;
``csjd.metrics_blueprint()`` for Prometheus;
``CSJD(app, outbox=db)`` + ``delay_on_commit`` for the transactional
outbox. Configuration is the ``CSJD_*`` keys of ``app.config`` (docs/flask.md)."""

from csjd_flask.extension import (
    CSJD,
    AlreadyInitialized,
    CSJDState,
    DashboardRefused,
    FlaskJobFunction,
    NoAppContext,
    NotInitialized,
)
from csjd_flask.metrics import MetricsRefused
from csjd_flask.outbox import NoOutbox

__all__ = [  # noqa: RUF022 - plainly sorted, as csjd_core's (a test checks it)
    "AlreadyInitialized",
    "CSJD",
    "CSJDState",
    "DashboardRefused",
    "FlaskJobFunction",
    "MetricsRefused",
    "NoAppContext",
    "NoOutbox",
    "NotInitialized",
]
