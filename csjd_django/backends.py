"""A backend for Django's Tasks framework that runs ``@task`` functions on CSJD.

``TASKS = {"default": {"BACKEND": "csjd_django.backends.CSJDBackend",
"QUEUES": ["default"], "OPTIONS": {"MAX_ATTEMPTS": 3, "TIMEOUT": 30}}}``
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from django.core import checks
from django.utils import timezone

from csjd_core.app import Mode
from csjd_core.context import JobContext
from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind
from csjd_core.errors import InvalidJob, JobNotFound
from csjd_core.job import Job, JobState, JobStatus, check_json
from csjd_core.limits import job_options
from csjd_django.compat import (
    BaseTaskBackend,
    InvalidTaskError,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)
from csjd_django.hooks import TASK_BACKENDS

__all__ = ["CSJDBackend", "CSJDTask"]

TYPE_PREFIX = "django.tasks:"

_STATUS = {
    JobState.QUEUED: TaskResultStatus.READY,
    JobState.SCHEDULED: TaskResultStatus.READY,
    JobState.RUNNING: TaskResultStatus.RUNNING,
    JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobState.FAILED: TaskResultStatus.FAILED,
    # Django's model has no cancelled status: FAILED, with a `JobCancelled` error saying so.
    JobState.CANCELLED: TaskResultStatus.FAILED,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CSJDTask(Task):  # type: ignore[misc]
    """A Task with CSJD's options: ``@task(max_attempts=5, timeout=30)`` (Django 6.1 and the
    backport forward extra ``@task`` options to the backend's ``task_class``)."""

    max_attempts: int | None = None
    timeout: float | None = None


class CSJDBackend(BaseTaskBackend):  # type: ignore[misc]
    """Django Tasks on CSJD: retries, timeouts, results, and ``csjd_worker`` to run them."""

    task_class = CSJDTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    #: A task's ``priority`` (-100 to 100, higher first) is its job's: exact in process, by
    #: band in Redis mode (docs/django.md, "Priorities").
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - {"MAX_ATTEMPTS", "TIMEOUT"}
        if unknown:
            raise InvalidTaskError(
                f"unknown OPTIONS for {alias!r}: {sorted(unknown)}; known: MAX_ATTEMPTS, TIMEOUT"
            )
        self.max_attempts, self.timeout = _task_options(
            self.options.get("MAX_ATTEMPTS"), self.options.get("TIMEOUT"), f"OPTIONS of {alias!r}"
        )
        self._tasks: dict[str, Task] = {}

    @staticmethod
    def job_type(task: Task) -> str:
        """The CSJD job type of a task: its module path, behind a prefix."""
        return TYPE_PREFIX + task.module_path

    def validate_task(self, task: Task) -> None:
        """Django's checks, plus CSJD's options; registers the task's handler (the allow-list
        a worker uses: a job type never names code to import)."""
        super().validate_task(task)
        _task_options(
            getattr(task, "max_attempts", None), getattr(task, "timeout", None), task.name
        )
        from csjd_django import app  # noqa: PLC0415 - csjd_django imports this lazily

        job_type = self.job_type(task)
        known = self._tasks.get(job_type)
        if known is not None and known.func is not task.func:
            raise InvalidTaskError(f"another task is registered as {task.module_path}")
        if job_type not in app.registry:
            app.register_handler(job_type, self._handler(job_type))
        self._tasks.setdefault(job_type, task)
        TASK_BACKENDS.setdefault(job_type, self)

    # -- producing -------------------------------------------------------------------------
    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Admit the task as a CSJD job and return its `TaskResult` (status READY).

        With ``CSJD_OUTBOX`` the job is written to the default database's outbox, in the
        caller's transaction (admitted once it commits; never if it rolls back)."""
        from csjd_django import app  # noqa: PLC0415

        self.validate_task(task)
        args, kwargs = list(args), dict(kwargs)
        try:
            job = self.build_job(task, args, kwargs)
        except InvalidJob as exc:
            raise InvalidTaskError(str(exc)) from exc
        app.configure_from_settings()
        if app.outboxes:
            app.enqueue_on_commit(job)
        else:
            app.enqueue(job)
        result = self._result(task, job.id, args, kwargs)
        object.__setattr__(result, "enqueued_at", timezone.now())
        task_enqueued.send(type(self), task_result=result)
        if app.mode is Mode.IMMEDIATE:  # it already ran: report what happened
            return self.get_result(job.id)
        return result

    def build_job(
        self,
        task: Task,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        job_id: str | None = None,
    ) -> Job:
        """The CSJD job that runs ``task`` with these arguments (what `enqueue` admits, and
        what a ``CSJD_SCHEDULE`` slot of the task admits).

        Raises:
            InvalidJob: an argument is not JSON (naming it).
        """
        for index, value in enumerate(args):
            check_json(value, f"argument {index} of task {task.name}")
        for key, value in kwargs.items():
            check_json(value, f"argument {key!r} of task {task.name}")
        return Job(
            job_id if job_id is not None else uuid.uuid4().hex,
            self.job_type(task),
            {"args": args, "kwargs": kwargs},
            max_attempts=getattr(task, "max_attempts", None) or self.max_attempts,
            timeout=getattr(task, "timeout", None) or self.timeout,
            run_at=task.run_after,
            queue=task.queue_name,
            # Django accepts any whole number in its range (5.0 too); a job's is an int.
            priority=int(task.priority),
        )

    def get_result(self, result_id: str) -> TaskResult:
        """The task's result, from CSJD's job status.

        Raises:
            TaskResultDoesNotExist: unknown id, expired result, or a task this process does not
                define.
        """
        from csjd_django import app  # noqa: PLC0415

        try:
            status = app.status(result_id)
        except JobNotFound as exc:
            raise TaskResultDoesNotExist(result_id) from exc
        task = self._tasks.get(status.type)
        if task is None:
            raise TaskResultDoesNotExist(f"{result_id} is not a task of backend {self.alias!r}")
        payload = status.payload if isinstance(status.payload, dict) else {}
        return self._from_status(task, status, payload)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """The backend's system checks (the CSJD settings are checked by ``csjd.E001``)."""
        if self.queues and not all(isinstance(q, str) and q for q in self.queues):
            yield checks.Error(f"TASKS[{self.alias!r}]['QUEUES'] must be names", id="csjd.E010")

    # -- results ---------------------------------------------------------------------------
    def _result(
        self, task: Task, result_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult:
        return TaskResult(
            task=task,
            id=result_id,
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def _from_status(self, task: Task, status: JobStatus, payload: dict[str, Any]) -> TaskResult:
        result = self._result(
            task, status.id, list(payload.get("args") or []), dict(payload.get("kwargs") or {})
        )
        for name, value in (
            ("status", _STATUS[status.state]),
            ("enqueued_at", status.enqueued_at),
            ("started_at", status.started_at),
            ("last_attempted_at", status.started_at),
            ("finished_at", status.finished_at),
        ):
            object.__setattr__(result, name, value)
        if status.worker_id:
            result.worker_ids.extend([status.worker_id] * max(1, status.attempts))
        if status.state is JobState.CANCELLED:
            result.errors.append(_cancelled_error(status.id, status.cancel_reason))
        elif status.last_error and status.state is JobState.FAILED:
            result.errors.append(
                TaskError(
                    exception_class_path=_exception_path(status.last_traceback, status.last_error),
                    traceback=status.last_traceback or status.last_error,
                )
            )
        if status.state is JobState.SUCCEEDED:
            object.__setattr__(result, "_return_value", status.result)
        return result

    # -- running (in the worker) ------------------------------------------------------------
    def _handler(self, job_type: str) -> Any:
        backend = self

        def prepare(ctx: JobContext, job: Job) -> tuple[Task, list[Any], dict[str, Any]]:
            task = backend._tasks[job_type]
            result = backend._running_result(task, job, ctx.attempt)
            task_started.send(type(backend), task_result=result)
            # Kept for the outcome event (csjd_django.hooks.TaskSignals), told on this thread.
            _running.current = (job.id, result)
            args, kwargs = list(result.args), dict(result.kwargs)
            if task.takes_context:
                args.insert(0, TaskContext(task_result=result))
            return task, args, kwargs

        def run(ctx: JobContext, job: Job) -> Any:
            task, args, kwargs = prepare(ctx, job)
            return task.func(*args, **kwargs)  # a coroutine for an async task: the engine awaits

        return run

    def _running_result(self, task: Task, job: Job, attempt: int) -> TaskResult:
        """The `TaskResult` of an attempt that starts now."""
        payload = job.payload if isinstance(job.payload, dict) else {}
        result = self._result(
            task, job.id, list(payload.get("args") or []), dict(payload.get("kwargs") or {})
        )
        now = timezone.now()
        for name in ("started_at", "last_attempted_at"):
            object.__setattr__(result, name, now)
        object.__setattr__(result, "status", TaskResultStatus.RUNNING)
        result.worker_ids.extend(["csjd"] * attempt)  # TaskContext.attempt counts these
        return result

    def attempt_recorded(self, outcome: AttemptOutcome) -> None:
        """Every recorded attempt of one of this backend's tasks: send ``task_finished`` when
        the engine decided the task ended (``terminal``); a retried attempt sends nothing:
        Django's model has no "retrying" state."""
        job = outcome.job
        running = getattr(_running, "current", None)
        _running.current = None
        task = self._tasks.get(job.type)
        if not outcome.terminal or task is None:
            return
        if running is not None and running[0] == job.id:
            result = running[1]
        else:  # decided off the worker thread (a detached timeout): no attempt to report
            result = self._running_result(task, job, outcome.attempt)
        object.__setattr__(result, "finished_at", timezone.now())
        if outcome.kind is OutcomeKind.SUCCEEDED:
            object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "_return_value", outcome.result)
        elif outcome.kind is OutcomeKind.CANCELLED:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            result.errors.append(_cancelled_error(job.id, "cancelled"))
        else:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            exc, error = outcome.exception, outcome.error
            message = error.message if error is not None else str(outcome.kind)
            result.errors.append(
                TaskError(
                    exception_class_path=(
                        f"{type(exc).__module__}.{type(exc).__qualname__}"
                        if exc is not None
                        else _exception_path(None, message)
                    ),
                    traceback=(error.traceback if error is not None else None) or message,
                )
            )
        task_finished.send(type(self), task_result=result)


#: The attempt this worker thread runs: (job id, its `TaskResult`).
_running = threading.local()


def _task_options(max_attempts: Any, timeout: Any, where: str) -> tuple[int | None, float | None]:
    """``max_attempts`` and ``timeout`` (seconds) checked by the rules admission uses.

    Raises:
        InvalidTaskError: naming ``where`` and the limit.
    """
    try:
        return job_options(max_attempts, timeout)
    except ValueError as exc:
        raise InvalidTaskError(f"{where}: {exc}") from None


def _cancelled_error(job_id: str, reason: str | None) -> TaskError:
    """The error a cancelled job's `TaskResult` carries: Django's Tasks have no cancelled
    status, so FAILED with this (``exception_class_path`` names `JobCancelled`)."""
    why = (
        "it expired before it started" if reason == "expired" else "its cancellation was requested"
    )
    return TaskError(
        exception_class_path="csjd_core.errors.JobCancelled",
        traceback=f"csjd_core.errors.JobCancelled: task {job_id!r} was cancelled: {why}",
    )


def _exception_path(traceback_text: str | None, error: str) -> str:
    """``module.Class`` of the error from its traceback's last line (``pkg.Error: message``)."""
    last = (traceback_text or "").strip().splitlines()[-1:] or [error]
    name = last[0].split(":", 1)[0].strip()
    return name if "." in name else f"builtins.{name}"
