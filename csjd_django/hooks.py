"""Engine hooks of the Django integration: database connections in worker threads, and the
Tasks framework's ``task_finished`` signal."""

from __future__ import annotations

from typing import Any, Protocol

from django.db import close_old_connections, connections

from csjd_core import Hooks, Job, JobContext
from csjd_core.engine.outcome import AttemptOutcome

__all__ = ["TASK_BACKENDS", "CloseOldConnections", "TaskSignals"]


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


class _TaskBackend(Protocol):
    def attempt_recorded(self, outcome: AttemptOutcome) -> None: ...


#: Job type -> the `CSJDBackend` that runs that task (filled as tasks are validated; this module
#: does not import the Tasks framework, which Django 5.2 only has with the backport).
TASK_BACKENDS: dict[str, _TaskBackend] = {}


class TaskSignals(Hooks):
    """Sends Django's ``task_finished`` once per task, from the engine's outcome event: when
    the attempt's outcome is ``terminal`` (it succeeded, or failed for good), never after an
    attempt that is retried."""

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        backend = TASK_BACKENDS.get(outcome.job.type)
        if backend is not None:
            backend.attempt_recorded(outcome)
