"""``--metrics-port`` for the worker commands: which registry serves what, in each shape of
worker (see docs/observability.md, "Prometheus metrics").

- One process: the worker serves its own registry: the `PrometheusExporter` hook, plus the
  queue gauges (`QueueCollector`, cached) and the outboxes.
- ``--processes N`` (or recycling): the supervisor owns prometheus_client's multiprocess
  directory (``PROMETHEUS_MULTIPROC_DIR``, or a private temporary one), wipes it at start,
  passes it to the children (they write their values there, and serve nothing), folds each
  exited child's files into the archive, and serves the port: the children's values summed, and
  the queue gauges read once by the supervisor itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from csjd_core.errors import CSJDError
from csjd_core.metrics_server import MetricsServer, redis_worker_health
from csjd_core.supervisor import FleetWatch

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from csjd_core.app import App
    from csjd_core.distributed import RedisDistributedDispatcher
    from csjd_core.prometheus import MultiprocessExporter, PrometheusExporter

__all__ = [
    "MULTIPROC_ENV",
    "SupervisorMetrics",
    "child_exporter",
    "serve_worker_metrics",
    "worker_exporter",
]

#: Set by the supervisor in its children's environment: write metrics to the multiprocess
#: directory (``PROMETHEUS_MULTIPROC_DIR``).
MULTIPROC_ENV = "CSJD_METRICS_MULTIPROC"


def worker_exporter(app: App, queues: Sequence[str]) -> PrometheusExporter:
    """The exporter hook of a single worker process consuming ``queues`` (the first is the
    default queue): labels from the app's handler registry, read live.

    Raises:
        CSJDError: prometheus_client is not installed (the ``prometheus`` extra).
    """
    exporter: PrometheusExporter = _prometheus().PrometheusExporter(
        app.registry.handlers, queues, default_queue=queues[0]
    )
    return exporter


def child_exporter(app: App, queues: Sequence[str]) -> MultiprocessExporter | None:
    """A supervised child's exporter (its values to the supervisor's directory), or ``None``
    when the supervisor serves no metrics."""
    if not os.environ.get(MULTIPROC_ENV) or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    exporter: MultiprocessExporter = _prometheus().MultiprocessExporter(
        app.registry.handlers, queues, default_queue=queues[0]
    )
    return exporter


def _prometheus() -> Any:
    """`csjd_core.prometheus`, or a `CSJDError` naming the extra it needs."""
    try:
        from csjd_core import prometheus  # noqa: PLC0415
    except ImportError as exc:
        raise CSJDError(f"--metrics-port: {exc}") from exc
    return prometheus


def _queue_collector(app: App, dispatcher: RedisDistributedDispatcher) -> Any:
    from csjd_core.operations import outbox_stats  # noqa: PLC0415
    from csjd_core.prometheus import QueueCollector  # noqa: PLC0415

    return QueueCollector(
        dispatcher.backend.admin.gauges,
        outboxes=(lambda: outbox_stats(app)) if app.outboxes else None,
    )


def serve_worker_metrics(
    app: App,
    dispatcher: RedisDistributedDispatcher,
    registry: CollectorRegistry,
    sock: socket.socket,
) -> MetricsServer:
    """Serve a single worker process's ``registry`` (its exporter's, to which the queue gauges
    are added) and its health on ``sock``: the server, started."""
    from csjd_core.prometheus import exposition  # noqa: PLC0415

    registry.register(_queue_collector(app, dispatcher))
    server = MetricsServer(
        sock, lambda accept: exposition(registry, accept), redis_worker_health(dispatcher)
    )
    return server.start()


class SupervisorMetrics(FleetWatch):
    """The supervisor's side of multiprocess mode (see the module's docstring)."""

    def __init__(
        self, app: App, dispatcher: RedisDistributedDispatcher, sock: socket.socket
    ) -> None:
        from csjd_core.prometheus import (  # noqa: PLC0415
            exposition,
            multiprocess_registry,
            wipe_multiprocess_dir,
        )

        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._private = not given
        self.path = given or tempfile.mkdtemp(prefix="csjd-metrics-")
        os.makedirs(self.path, exist_ok=True)
        wipe_multiprocess_dir(self.path)
        self.env = {"PROMETHEUS_MULTIPROC_DIR": self.path, MULTIPROC_ENV: "1"}
        self._lock = threading.Lock()  # a fold and a scrape never interleave
        registry = multiprocess_registry(self.path)
        registry.register(_queue_collector(app, dispatcher))
        self._running = 0
        self._wanted = 0
        client = dispatcher.backend.connection.client

        def scrape(accept: str | None) -> tuple[bytes, str]:
            with self._lock:
                return exposition(registry, accept)

        def health() -> tuple[bool, str]:
            try:
                client.ping()
            except Exception as exc:
                return False, f"redis unreachable: {type(exc).__name__}"
            if self._running < self._wanted:
                return False, f"{self._running} of {self._wanted} worker children running"
            return True, "ok"

        self.server = MetricsServer(sock, scrape, health).start()
        self._started = time.monotonic()

    def child_exited(self, pid: int) -> None:
        from csjd_core.prometheus import fold_dead_process  # noqa: PLC0415

        with self._lock:
            fold_dead_process(self.path, pid)

    def fleet(self, running: int, wanted: int) -> None:
        self._running, self._wanted = running, wanted

    def close(self) -> None:
        self.server.close()
        if self._private:
            shutil.rmtree(self.path, ignore_errors=True)
