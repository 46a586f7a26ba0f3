"""``--metrics-port``: one small HTTP server per worker command serving ``/metrics`` (Prometheus)
and ``/healthz`` (for Kubernetes and systemd probes) on the same port.

The health check is a callable returning ``(healthy, reason)``; `redis_worker_health` is the
worker's (Redis reachable, this consumer's heartbeat fresh), the supervisor brings its own.
Only the stdlib is imported here; the scrape body comes from `csjd_core.prometheus`.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from csjd_core.errors import InvalidConfig

if TYPE_CHECKING:
    from csjd_core.distributed import RedisDistributedDispatcher

__all__ = ["Health", "MetricsServer", "bind_metrics_port", "redis_worker_health"]

logger = logging.getLogger("csjd_core.metrics")

#: ``(healthy, reason)``: the reason is the 503 body (and ``ok`` for a 200).
Health = Callable[[], tuple[bool, str]]


def bind_metrics_port(port: int, host: str = "") -> socket.socket:
    """A listening socket on ``port`` (all interfaces unless ``host``), bound before the worker
    starts so a bad or taken port is a clear error at once.

    Raises:
        InvalidConfig: the port is out of 1..65535, taken, or not allowed (naming
            ``--metrics-port``).
    """
    if type(port) is not int or not 1 <= port <= 65535:
        raise InvalidConfig(
            f"--metrics-port: must be from 1 to 65535, got {port!r}",
            owner="WorkerOptions",
            field="metrics_port",
        )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        why = {
            errno.EADDRINUSE: "the port is in use by another process",
            errno.EACCES: "not allowed to listen on it (a port below 1024 needs privileges)",
        }.get(exc.errno or 0, str(exc))
        raise InvalidConfig(
            f"--metrics-port: cannot listen on port {port}: {why}",
            owner="WorkerOptions",
            field="metrics_port",
        ) from exc
    return sock


class MetricsServer:
    """Serves ``/metrics`` from ``scrape`` and ``/healthz`` from ``health`` on a bound socket,
    in a daemon thread (one thread per request: a slow scrape never blocks a probe).

    Args:
        sock: from `bind_metrics_port`.
        scrape: returns the body and content type for an ``Accept`` header
            (`csjd_core.prometheus.exposition` over a registry).
        health: returns ``(healthy, reason)``.
    """

    def __init__(
        self,
        sock: socket.socket,
        scrape: Callable[[str | None], tuple[bytes, str]],
        health: Health,
    ) -> None:
        handler = _handler(scrape, health)
        server = ThreadingHTTPServer(sock.getsockname()[:2], handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        self._server = server
        self.port: int = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="csjd-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        logger.info("metrics and health served port=%d paths=/metrics,/healthz", self.port)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def _handler(
    scrape: Callable[[str | None], tuple[bytes, str]], health: Health
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    body, content_type = scrape(self.headers.get("Accept"))
                    self._reply(200, body, content_type)
                elif path == "/healthz":
                    healthy, reason = health()
                    self._reply(200 if healthy else 503, reason.encode() + b"\n")
                else:
                    self._reply(404, b"not found: /metrics or /healthz\n")
            except Exception as exc:  # a failing scrape is an answer, never a dead thread
                logger.exception("metrics request failed path=%s", path)
                self._reply(500, f"{type(exc).__name__}\n".encode())

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per scrape and probe would drown the worker's log

    return Handler


def redis_worker_health(dispatcher: RedisDistributedDispatcher) -> Health:
    """The health of a Redis worker process: its Redis answers ``PING`` and this consumer's
    heartbeat was written within three heartbeat intervals (the maintenance thread is alive
    and reaches Redis)."""
    backend = dispatcher.backend
    interval = dispatcher.config.heartbeat_interval

    def health() -> tuple[bool, str]:
        try:
            backend.connection.client.ping()
        except Exception as exc:
            return False, f"redis unreachable: {type(exc).__name__}"
        beat = backend.maintenance.last_heartbeat
        if beat is None:
            return False, "no heartbeat written yet"
        age = time.monotonic() - beat
        if age > 3 * interval:
            return False, f"heartbeat stale: {age:.1f}s old (interval {interval}s)"
        return True, "ok"

    return health
