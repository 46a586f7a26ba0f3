"""Engine hooks that keep Django's database connections healthy in worker threads."""

from __future__ import annotations

from typing import Any

from django.db import close_old_connections, connections

from csjd_core import Hooks, Job, JobContext

__all__ = ["CloseOldConnections"]


class CloseOldConnections(Hooks):
    """Call ``close_old_connections()`` around each job, as Django does around each request:
    a connection that broke or outlived ``CONN_MAX_AGE`` is not reused by the next job."""

    def before_process(self, job: Job, ctx: JobContext) -> None:
        close_old_connections()

    def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
        close_old_connections()

    def worker_stopped(self, worker_id: str) -> None:
        # Connections are per thread: close this worker thread's before it ends, rather than
        # leaving them to the garbage collector (Python 3.13 warns about such connections).
        connections.close_all()
