"""``CSJD_SCHEDULE``: periodic runs of Django Tasks functions (``@task``, run by
`csjd_django.backends.CSJDBackend`), declared in settings::

    CSJD_SCHEDULE = {
        "nightly-report": {                      # the schedule's name
            "task": "myapp.tasks.nightly_report",  # a @task on a CSJDBackend
            "schedule": "0 3 * * *",             # cron; or {"minutes": 5}: every(minutes=5)
            "timezone": "Europe/Paris",          # cron only; default UTC
            "kwargs": {"fmt": "pdf"},
            "catch_up": "latest", "catch_up_limit": 100, "max_running": 1, "jitter": 30,
        },
    }

Each entry becomes a core `Schedule` (``App.add_schedule``) of a `TaskJobFunction`: a slot
admits exactly the job that ``task.enqueue(**kwargs)`` admits (the backend's `build_job`), so
a run is a Django Tasks run: ``task_started`` / ``task_finished`` are sent and its result is
``task.get_result(job_id)``. (``task_enqueued`` is not sent: no `TaskResult` exists at
enqueue time for a slot that one of several tickers admits.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

from csjd_core.context import JobContext
from csjd_core.errors import InvalidJob, SettingsError
from csjd_core.job import Job
from csjd_core.jobs import JobFunction
from csjd_core.limits import brief
from csjd_core.periodic import Cron, Every, every, make_schedule, zone

if TYPE_CHECKING:
    from csjd_core.app import App
    from csjd_core.periodic import Schedule
    from csjd_django.backends import CSJDBackend
    from csjd_django.compat import Task

__all__ = [
    "ENTRY_KEYS",
    "SETTING",
    "ScheduleSettingError",
    "TaskJobFunction",
    "install_schedules",
    "schedule_problems",
]

SETTING = "CSJD_SCHEDULE"
#: The keys of one ``CSJD_SCHEDULE`` entry ("task" and "schedule" are required).
ENTRY_KEYS = (
    "task",
    "schedule",
    "timezone",
    "kwargs",
    "catch_up",
    "catch_up_limit",
    "max_running",
    "jitter",
)
#: The system check reporting each kind of problem (see `csjd_django.checks`).
BAD_ENTRY = "csjd.E020"  # not a mapping, an unknown key, a bad option value
BAD_TIMING = "csjd.E021"  # a bad cron expression, every() period or time zone
BAD_TASK = "csjd.E022"  # not importable, not a @task, or not on a CSJD backend
DUPLICATE = "csjd.E023"  # the name of an @csjd.job(schedule=...) schedule too


class ScheduleSettingError(SettingsError):
    """An entry of ``CSJD_SCHEDULE`` is wrong; `check_id` is the system check reporting it."""

    def __init__(self, name: str | None, message: str, check_id: str = BAD_ENTRY) -> None:
        super().__init__(SETTING if name is None else f"{SETTING}[{name!r}]", message)
        self.check_id = check_id


class TaskJobFunction(JobFunction[..., Any]):
    """A Django Tasks function as a core job function, so that it can have schedules: it
    builds the job its backend's ``enqueue`` builds and runs as the backend runs it (the
    handler the backend registered for the task)."""

    def __init__(self, registry: App, task: Task, backend: CSJDBackend) -> None:
        job_type = backend.job_type(task)
        super().__init__(
            registry,
            task.func,
            job_type,
            max_attempts=getattr(task, "max_attempts", None) or backend.max_attempts,
            timeout=getattr(task, "timeout", None) or backend.timeout,
            queue=task.queue_name,
            takes_context=task.takes_context,
        )
        self.task = task
        self.backend = backend

    def build_job(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | timedelta | None = None,
        eta: datetime | None = None,
        job_id: str | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        queue: str | None = None,
    ) -> Job:
        """The job ``task.enqueue(*args, **kwargs)`` admits, with ``job_id``.

        Raises:
            InvalidJob: an argument is not JSON, or an option was given (a task's options
                are its own: ``task.using(...)``, ``@task(...)``).
            TypeError: the arguments do not fit the task's function.
        """
        given: dict[str, object] = {"countdown": countdown, "eta": eta, "timeout": timeout}
        given |= {"max_attempts": max_attempts, "queue": queue}
        extra = sorted(name for name, value in given.items() if value is not None)
        if extra:
            raise InvalidJob(f"{self.type}: a task's options are its own, not {', '.join(extra)}")
        args, kwargs = list(args), dict(kwargs or {})
        self._bind(args, kwargs)
        return self.backend.build_job(self.task, args, kwargs, job_id=job_id)

    def run_job(self, ctx: JobContext, job: Job) -> Any:
        """Run as the backend runs its tasks (``task_started``, the task's context)."""
        handler = self.registry.registry.get(self.type)
        assert handler is not None  # validate_task registered it
        return handler.fn(ctx, job)


# -- reading the setting ---------------------------------------------------------------------
def _entries() -> dict[str, Any]:
    """``CSJD_SCHEDULE`` as a dict of entries (``{}`` when not set).

    Raises:
        ScheduleSettingError: it is not a mapping of names to entries.
    """
    value = getattr(settings, SETTING, None)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ScheduleSettingError(
            None, f"must be a dict of schedule name -> entry, got {brief(value)}"
        )
    return dict(value)


def _trigger(name: str, entry: Mapping[str, Any]) -> str | Every:
    """The entry's ``schedule`` (a cron string, ``{"minutes": 5}`` or `every`), checked with
    its ``timezone``.

    Raises:
        ScheduleSettingError: a bad expression, period or time zone (`BAD_TIMING`).
    """
    spec: object = entry["schedule"]
    timezone = entry.get("timezone")
    try:
        if timezone is not None:
            zone(timezone)
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"seconds", "minutes", "hours", "days"})
            if unknown:
                raise ValueError(
                    f"unknown every() part {unknown[0]!r}; give seconds, minutes, hours or days"
                )
            spec = every(**spec)
        if isinstance(spec, str):
            Cron(spec, timezone)
        elif not isinstance(spec, Every):
            raise ValueError(
                "schedule must be a cron string ('0 3 * * *') or a period ({'minutes': 5}), "
                f"got {brief(spec)}"
            )
    except ValueError as exc:
        raise ScheduleSettingError(name, str(exc), BAD_TIMING) from None
    return spec


def _task(name: str, path: object) -> tuple[Task, CSJDBackend]:
    """The ``@task`` at ``path`` and its CSJD backend (the task is validated by it, which
    registers its handler).

    Raises:
        ScheduleSettingError: not importable, not a task, or not on a CSJD backend
            (`BAD_TASK`).
    """
    from csjd_django.backends import CSJDBackend  # noqa: PLC0415 - needs the Tasks framework
    from csjd_django.compat import Task  # noqa: PLC0415

    if not isinstance(path, str) or not path:
        raise ScheduleSettingError(
            name, f"'task' must be the dotted path of a @task, got {brief(path)}", BAD_TASK
        )
    try:
        task = import_string(path)
    except ImportError as exc:
        raise ScheduleSettingError(name, f"cannot import task {path!r}: {exc}", BAD_TASK) from None
    if not isinstance(task, Task):
        raise ScheduleSettingError(
            name, f"{path!r} is {brief(task)}, not a function decorated with @task", BAD_TASK
        )
    try:
        backend = task.get_backend()
    except Exception as exc:  # InvalidTaskBackend (its module differs by Django version)
        raise ScheduleSettingError(
            name, f"task {path!r} has no usable backend: {exc}", BAD_TASK
        ) from None
    if not isinstance(backend, CSJDBackend):
        raise ScheduleSettingError(
            name,
            f"task {path!r} runs on TASKS[{task.backend!r}] ({type(backend).__name__}); "
            "CSJD schedules tasks of a csjd_django.backends.CSJDBackend only",
            BAD_TASK,
        )
    backend.validate_task(task)
    return task, backend


def _arguments(app: App, name: str, entry: object, *, register: bool) -> dict[str, Any]:
    """`App.add_schedule` arguments for one entry (its job function made, and with
    ``register`` made known to ``app``: a check changes nothing).

    Raises:
        ScheduleSettingError: the entry is wrong (its `check_id` says how).
    """
    if not isinstance(entry, Mapping):
        raise ScheduleSettingError(name, f"an entry must be a dict, got {brief(entry)}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ScheduleSettingError(
            name, f"unknown key {unknown[0]!r}; known: {', '.join(ENTRY_KEYS)}"
        )
    missing = [key for key in ("task", "schedule") if key not in entry]
    if missing:
        raise ScheduleSettingError(name, f"{missing[0]!r} is required")
    schedule = _trigger(name, entry)
    task, backend = _task(name, entry["task"])
    job_type = backend.job_type(task)
    job = app.jobs.get(job_type)
    if not isinstance(job, TaskJobFunction) or job.task.func is not task.func:
        job = TaskJobFunction(app, task, backend)
        if register:
            app.jobs[job_type] = job
    options = {key: entry[key] for key in ENTRY_KEYS[2:] if key in entry}
    return {"job": job, "schedule": schedule, "name": name, **options}


def _made(app: App, name: str, entry: object) -> Schedule:
    """The entry's `Schedule`, checked as `App.add_schedule` checks it (not added).

    Raises:
        ScheduleSettingError: the entry is wrong.
    """
    arguments = _arguments(app, name, entry, register=False)
    try:
        return make_schedule(**arguments)
    except (ValueError, TypeError) as exc:  # the setting names the entry already
        raise ScheduleSettingError(name, str(exc).removeprefix(f"schedule {name!r}: ")) from None


def schedule_problems(app: App, installed: frozenset[str] = frozenset()) -> list[SettingsError]:
    """Every problem of ``CSJD_SCHEDULE`` (for ``manage.py check``), one per entry at most.

    Args:
        app: the project's app (its schedules from ``@csjd.job(schedule=...)``).
        installed: the names ``app`` already holds from this setting (not duplicates).
    """
    try:
        entries = _entries()
    except ScheduleSettingError as exc:
        return [exc]
    problems: list[SettingsError] = []
    for name, entry in entries.items():
        try:
            _made(app, name, entry)
        except ScheduleSettingError as exc:
            problems.append(exc)
            continue
        if name in app.schedules and name not in installed:
            problems.append(
                ScheduleSettingError(
                    name,
                    "an @csjd.job(schedule=...) schedule has this name too; rename one "
                    "(schedule_name= on the job)",
                    DUPLICATE,
                )
            )
    return problems


def install_schedules(app: App, installed: frozenset[str] = frozenset()) -> frozenset[str]:
    """Put the schedules of ``CSJD_SCHEDULE`` in ``app.schedules`` in place of ``installed``
    (the names it put there before): all of them, or none on an error.

    Returns:
        The names installed.

    Raises:
        ScheduleSettingError: the first wrong entry (``manage.py check`` lists them all).
    """
    for name in installed:
        app.schedules.pop(name, None)
    entries = _entries()
    added: list[str] = []
    try:
        for name, entry in entries.items():
            try:
                app.add_schedule(**_arguments(app, name, entry, register=True))
            except ScheduleSettingError:
                raise
            except (ValueError, TypeError) as exc:
                check_id = DUPLICATE if name in app.schedules else BAD_ENTRY
                raise ScheduleSettingError(name, str(exc), check_id) from None
            added.append(name)
    except ScheduleSettingError:
        for name in added:
            app.schedules.pop(name, None)
        raise
    return frozenset(added)
