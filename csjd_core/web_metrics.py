"""Prometheus metrics served by a web process (Django's ``csjd_django.metrics.metrics_view``,
Flask's ``csjd.metrics_blueprint()``): the ``CSJD_METRICS`` / ``CSJD_METRICS_TOKEN`` settings,
the registry such a process serves, and the bearer-token check — framework-free.

What the registry holds depends on where jobs run (docs/observability.md, "Web processes"):

- Redis mode (the web process only enqueues): the queue and outbox gauges (`QueueCollector`,
  read from Redis at most once per `QUEUE_TTL` seconds, whatever the scrape rate).
- In-process (and immediate) mode (jobs run in this process): the job metrics of a
  `PrometheusExporter` that `install_web_metrics` adds to the app's ``Config.hooks`` before its
  dispatcher is built, ``csjd_pending_jobs`` (`ProcessCollector`) and the outbox gauges.

Importing this module imports nothing optional; building a `WebMetrics` imports
prometheus_client.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

from csjd_core.app import App, Mode
from csjd_core.errors import SettingsError
from csjd_core.limits import brief

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from csjd_core.distributed import RedisDistributedDispatcher
    from csjd_core.job import Job
    from csjd_core.prometheus import PrometheusExporter

__all__ = [
    "QUEUE_TTL",
    "SETTINGS",
    "MetricsSettings",
    "TokenCheck",
    "WebMetrics",
    "install_web_metrics",
    "metrics_settings",
]

#: The settings read here (Django: ``settings.CSJD_*``; Flask: ``app.config``).
SETTINGS = ("CSJD_METRICS", "CSJD_METRICS_TOKEN")
#: Seconds a read of the queue gauges is reused by the scrapes that follow it.
QUEUE_TTL = 2.0
#: The shortest token accepted: a guessable token would open the figures to anyone.
MIN_TOKEN_LENGTH = 16
#: RFC 6750's ``b64token``: what an ``Authorization: Bearer`` header can carry as it is.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_INSTALL = "pip install 'csjd[prometheus]'"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings:
    """The metrics view's settings.

    Attributes:
        enabled: ``CSJD_METRICS``, or ``True`` when only ``CSJD_METRICS_TOKEN`` is set.
        token: ``CSJD_METRICS_TOKEN``: a scraper sending ``Authorization: Bearer <token>`` may
            read the metrics (``None``: only the framework's own check lets a request in).
    """

    enabled: bool = False
    token: str | None = None

    def __repr__(self) -> str:  # the token is a secret: never in a log or a traceback
        token = None if self.token is None else "***"
        return f"MetricsSettings(enabled={self.enabled}, token={token})"


def metrics_settings(settings: Mapping[str, Any]) -> MetricsSettings:
    """The metrics settings among ``settings`` (other keys are ignored).

    Raises:
        SettingsError: ``CSJD_METRICS`` is not a bool; ``CSJD_METRICS_TOKEN`` is not a string
            of at least `MIN_TOKEN_LENGTH` token characters (RFC 6750), or is set while
            ``CSJD_METRICS`` is ``False``; metrics are on and prometheus_client is not
            installed (naming ``csjd[prometheus]``).
    """
    enabled = settings.get("CSJD_METRICS")
    token = settings.get("CSJD_METRICS_TOKEN")
    if enabled is not None and type(enabled) is not bool:
        raise SettingsError("CSJD_METRICS", f"must be True or False, got {brief(enabled)}")
    if token is not None:
        if not isinstance(token, str):  # its value is a secret: only its type is said
            raise SettingsError(
                "CSJD_METRICS_TOKEN", f"must be a string, got a {type(token).__name__}"
            )
        if len(token) < MIN_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
            raise SettingsError(
                "CSJD_METRICS_TOKEN",
                f"must be at least {MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 - . _ ~ + / "
                f"(then '=' padding), got {len(token)} characters; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        if enabled is False:
            raise SettingsError(
                "CSJD_METRICS_TOKEN",
                "is set but CSJD_METRICS = False turns the metrics view off: remove one of them",
            )
    on = enabled if enabled is not None else token is not None
    if on:
        try:
            import prometheus_client  # noqa: F401, PLC0415 - the extra's presence is the check
        except ImportError:
            raise SettingsError(
                "CSJD_METRICS_TOKEN" if enabled is None else "CSJD_METRICS",
                f"the metrics view needs prometheus_client: {_INSTALL}",
            ) from None
    return MetricsSettings(enabled=on, token=token)


class TokenCheck(Enum):
    """What a request's ``Authorization`` header says about the metrics token."""

    ABSENT = "absent"  # no Authorization header: the framework's own check decides
    VALID = "valid"  # ``Bearer <the token>``
    INVALID = "invalid"  # anything else (another scheme, another token, no token configured)


class WebMetrics:
    """The registry a web process serves, built for ``app``'s mode (see the module docstring).

    Args:
        app: the configured `App` (its mode and outboxes are read now, its job types live).
        token: the bearer token that opens the view (``None``: none does).
        queue_ttl: seconds a read of the queue gauges is reused (default `QUEUE_TTL`).

    Raises:
        SettingsError: prometheus_client is not installed (naming ``csjd[prometheus]``).
    """

    def __init__(
        self, app: App, *, token: str | None = None, queue_ttl: float | None = None
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry  # noqa: PLC0415

            from csjd_core.prometheus import (  # noqa: PLC0415
                ProcessCollector,
                PrometheusExporter,
                QueueCollector,
            )
        except ImportError:
            raise SettingsError(
                "CSJD_METRICS", f"the metrics view needs prometheus_client: {_INSTALL}"
            ) from None
        from csjd_core.operations import outbox_stats  # noqa: PLC0415

        self.app = app
        self._token = token.encode() if token is not None else None
        ttl = QUEUE_TTL if queue_ttl is None else queue_ttl
        outboxes = (lambda: outbox_stats(app)) if app.outboxes else None
        #: The hook counting this process's attempts (``None`` in Redis mode: none run here).
        self.exporter: PrometheusExporter | None = None
        self.registry: CollectorRegistry
        if app.mode is Mode.REDIS:
            self.registry = CollectorRegistry()
            self.registry.register(QueueCollector(self._queue_gauges, outboxes=outboxes, ttl=ttl))
            return
        # Labels: the registered types (read live) and the queues the app's jobs name.
        queues = {job.queue for job in app.jobs.values() if job.queue}
        self.exporter = PrometheusExporter(app.registry.handlers, sorted(queues))
        # In flight and detached are read from the engine at the scrape: this process's
        # dispatcher then (rebuilt after a `stop`).
        self.exporter.bind(self._detached, self._running)
        self.registry = registry = self.exporter.registry
        registry.register(ProcessCollector(self._pending))
        if outboxes is not None:
            registry.register(QueueCollector(dict, outboxes=outboxes, ttl=ttl))

    def _queue_gauges(self) -> Mapping[str, Any]:
        dispatcher: RedisDistributedDispatcher = self.app.dispatcher  # type: ignore[assignment]
        return dispatcher.backend.admin.gauges()

    def _detached(self) -> int:
        return self.app.dispatcher.detached_running()

    def _running(self) -> list[Job]:
        return self.app.dispatcher.running_jobs()

    def _pending(self) -> int:
        dispatcher = self.app.dispatcher
        return dispatcher.pending() if dispatcher.started else 0

    @property
    def has_token(self) -> bool:
        """Whether a bearer token opens the view (``CSJD_METRICS_TOKEN`` is set)."""
        return self._token is not None

    def check_token(self, authorization: str | None) -> TokenCheck:
        """What the ``Authorization`` header ``authorization`` says (compared in constant
        time)."""
        if authorization is None:
            return TokenCheck.ABSENT
        scheme, _, given = authorization.strip().partition(" ")
        if self._token is None or scheme.lower() != "bearer":
            return TokenCheck.INVALID
        ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)
        return TokenCheck.VALID if ok else TokenCheck.INVALID

    def scrape(self, accept: str | None) -> tuple[bytes, str]:
        """The body and content type of a scrape for an ``Accept`` header (Prometheus text, or
        OpenMetrics when asked for)."""
        from csjd_core.prometheus import exposition  # noqa: PLC0415

        return exposition(self.registry, accept)

    def __repr__(self) -> str:
        return f"<WebMetrics app={self.app.name!r} mode={self.app.mode}>"


def install_web_metrics(app: App, settings: MetricsSettings) -> WebMetrics | None:
    """The `WebMetrics` of a configured ``app`` whose dispatcher is not built yet (``None``
    when metrics are off); in in-process and immediate mode its exporter is added to
    ``app.config.hooks``, so the dispatcher counts every attempt it runs.

    Raises:
        SettingsError: prometheus_client is not installed.
        CSJDError: ``app``'s dispatcher is already running (configure before enqueueing).
    """
    if not settings.enabled:
        return None
    metrics = WebMetrics(app, token=settings.token)
    if metrics.exporter is not None:
        hooks = (*app.config.hooks, metrics.exporter)
        app.configure(config=dataclasses.replace(app.config, hooks=hooks))
    return metrics
