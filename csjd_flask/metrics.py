"""The Prometheus metrics of a Flask app's web processes: a blueprint serving ``/metrics``.

``app.register_blueprint(csjd.metrics_blueprint())`` with ``CSJD_METRICS_TOKEN`` in the app's
config (a Prometheus server sends ``Authorization: Bearer <token>``), and/or
``csjd.metrics_blueprint(authorize=is_admin)`` with ``CSJD_METRICS = True``
(docs/observability.md, "Web processes").

What it serves is `csjd_core.web_metrics.WebMetrics`'s registry, the same as Django's view;
this module only decides who may read it. A blueprint that nobody could be let through, or on
an app with metrics off, is refused when it is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from flask import Blueprint, Flask, Response, request
from flask.blueprints import BlueprintSetupState

from csjd_core.errors import CSJDError
from csjd_core.web_metrics import TokenCheck

if TYPE_CHECKING:
    from csjd_flask.extension import CSJD

__all__ = ["DEFAULT_NAME", "MetricsRefused", "metrics_blueprint"]

#: The blueprint's default name (its endpoint is ``csjd_metrics.metrics``).
DEFAULT_NAME = "csjd_metrics"
#: The realm of the 401 answers' ``WWW-Authenticate`` challenge.
REALM = "csjd-metrics"


class MetricsRefused(CSJDError, RuntimeError):
    """The metrics blueprint cannot be served: the app it is registered on is not initialised
    with its extension, has metrics off (no ``CSJD_METRICS`` / ``CSJD_METRICS_TOKEN``), or has
    neither a token nor an ``authorize`` callback (nobody could read it, or everybody would)."""


def metrics_blueprint(
    extension: CSJD,
    *,
    authorize: Callable[[], bool] | None = None,
    name: str = DEFAULT_NAME,
) -> Blueprint:
    """The metrics of the apps ``extension`` is initialised on, at ``/metrics`` of a blueprint
    (`csjd_flask.CSJD.metrics_blueprint` calls this).

    A request with ``Authorization: Bearer <CSJD_METRICS_TOKEN>`` reads them; one with another
    ``Authorization`` header gets 401. Without the header, ``authorize()`` decides (False:
    403); with no ``authorize``, 401 and a ``Bearer`` challenge. GET and HEAD only (405
    otherwise); every answer is ``Cache-Control: no-store``.

    Raises:
        TypeError: ``authorize`` is not callable.
        MetricsRefused: when registered (see `MetricsRefused`).
    """
    if authorize is not None and not callable(authorize):
        raise TypeError(f"authorize must be a callable or None, got {authorize!r}")
    blueprint = Blueprint(name, __name__)
    blueprint.record(lambda state: _check_app(state, extension, authorize))

    @blueprint.route("/metrics", methods=["GET"], provide_automatic_options=False)
    def metrics() -> Response:
        web = extension.state().metrics
        assert web is not None  # checked at registration
        verdict = web.check_token(request.headers.get("Authorization"))
        if verdict is TokenCheck.INVALID:
            return _answer(401, challenge='error="invalid_token"')
        if verdict is TokenCheck.ABSENT:
            if authorize is None:
                return _answer(401, challenge="")
            if not authorize():
                return _answer(403)
        body, content_type = web.scrape(request.headers.get("Accept"))
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response

    return blueprint


def _answer(status: int, *, challenge: str | None = None) -> Response:
    """A refusal: 401 with a ``WWW-Authenticate: Bearer`` challenge (RFC 6750), or 403."""
    text = "authentication required" if status == 401 else "forbidden"
    response = Response(f"{text}\n", status=status, content_type="text/plain")
    response.headers["Cache-Control"] = "no-store"
    if challenge is not None:
        response.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"' + (
            f", {challenge}" if challenge else ""
        )
    return response


def _check_app(
    state: BlueprintSetupState, extension: CSJD, authorize: Callable[[], bool] | None
) -> None:
    """At registration: the app has the extension, metrics on, and a way in."""
    app = cast(Flask, state.app)  # typed as Flask's sans-IO base class
    try:
        web = extension.state(app).metrics
    except CSJDError as exc:
        raise MetricsRefused(
            f"the CSJD metrics blueprint is registered on Flask app {app.name!r}, which is not "
            f"initialised with its extension: call csjd.init_app(app) first ({exc})"
        ) from exc
    if web is None:
        raise MetricsRefused(
            f"the CSJD metrics are off on Flask app {app.name!r}: set CSJD_METRICS_TOKEN "
            "(or CSJD_METRICS = True) in app.config before csjd.init_app(app)"
        )
    if authorize is None and not web.has_token:
        raise MetricsRefused(
            f"the CSJD metrics of Flask app {app.name!r} would be readable by nobody: set "
            "CSJD_METRICS_TOKEN (Prometheus sends Authorization: Bearer <token>) or pass "
            "csjd.metrics_blueprint(authorize=...) — called on every request, False answers 403"
        )
