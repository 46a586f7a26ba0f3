"""Job definitions, apart from the runtime: the ``@job`` decorator (`JobRegistry`), the
decorated functions (`JobFunction`, with ``.delay`` / ``.apply_async``) and `JobHandle`.

A `JobFunction` enqueues through a small interface, `Enqueuer`: the `App` that defined it, or
whatever its registry says (the Flask extension: the app of ``current_app``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from csjd_core.context import JobContext
from csjd_core.engine.registry import HandlerFn, HandlerRegistry
from csjd_core.errors import CSJDError, InvalidJob, JobFailed
from csjd_core.job import Job, JobState, JobStatus, check_json, validate_job
from csjd_core.limits import job_options, name_problem, priority, seconds
from csjd_core.periodic import Every, Schedule, make_schedule

__all__ = ["Enqueuer", "JobFunction", "JobHandle", "JobRegistry"]

P = ParamSpec("P")
R = TypeVar("R")


class Enqueuer(Protocol):
    """What a `JobFunction` and a `JobHandle` need of the runtime (an `App` is one)."""

    def enqueue(self, job: Job) -> None:
        """Admit ``job``."""

    def status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """The status of ``job_id``."""

    def cancel(self, job_id: str, queue: str | None = None) -> bool:
        """Cancel ``job_id``."""


class JobHandle(Generic[R]):
    """A reference to an enqueued job: its id, status and eventual result."""

    __slots__ = ("_app", "id", "queue")

    def __init__(self, app: Enqueuer, job_id: str, queue: str | None = None) -> None:
        self._app = app
        self.id = job_id
        self.queue = queue

    def status(self) -> JobStatus:
        """The job's current status (raises `JobNotFound` for an unknown or expired id)."""
        return self._app.status(self.id, self.queue)

    def cancel(self) -> bool:
        """Cancel the job (see `App.cancel`): True when it was cancelled or its cancellation
        requested of a running attempt, False when it had already ended.

        Raises:
            JobNotFound: no record of it (its result expired).
        """
        return self._app.cancel(self.id, self.queue)

    def result(self, timeout: float | timedelta | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises:
            JobFailed: the job failed for good, or was cancelled (``exc.status.state``).
            TimeoutError: it did not finish within ``timeout`` seconds.
        """
        limit = None if timeout is None else seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.001
        while True:
            status = self.status()
            if status.state is JobState.SUCCEEDED:
                return status.result  # type: ignore[no-any-return]
            if status.state is JobState.FAILED or status.state is JobState.CANCELLED:
                raise JobFailed(status)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id!r} still {status.state} after {limit} s")
            wait = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            pause = min(pause * 2, 0.05)

    async def aresult(self, timeout: float | timedelta | None = None) -> R:
        """`result` for async code (waits in a thread)."""
        return await asyncio.to_thread(self.result, timeout)

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r})"


class JobFunction(Generic[P, R]):
    """A function decorated with ``@app.job``: call it inline, or enqueue it.

    ``f(*args)`` runs it now in this thread; ``f.delay(*args)`` enqueues it; ``f.apply_async(
    args=..., kwargs=..., countdown=..., eta=..., job_id=..., priority=...)`` enqueues with
    options.
    """

    def __init__(
        self,
        registry: JobRegistry,
        fn: Callable[..., Any],
        type: str,
        *,
        max_attempts: int | None,
        timeout: float | None,
        queue: str | None,
        takes_context: bool,
        expires: float | None = None,
        priority: int = 0,
    ) -> None:
        self.registry = registry
        self.fn = fn
        self.type = type
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.queue = queue
        self.priority = priority
        self.takes_context = takes_context
        #: Seconds after its enqueue after which a job not started yet never runs (``None``).
        self.expires = expires
        self._signature = inspect.signature(fn)
        self.__name__ = getattr(fn, "__name__", type)
        self.__qualname__ = getattr(fn, "__qualname__", type)
        self.__doc__ = fn.__doc__
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    @property
    def app(self) -> Enqueuer:
        """Where this job is enqueued now: its `App` (in Flask, the app of ``current_app``)."""
        return self.registry.enqueuer(self.type)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function inline, now (no queue, no retries)."""
        if self.takes_context:
            ctx = JobContext(f"inline-{uuid.uuid4().hex}", 1)
            return self.fn(ctx, *args, **kwargs)  # type: ignore[no-any-return]
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Enqueue with these arguments (Celery's ``delay``)."""
        return self.apply_async(args, kwargs)

    def apply_async(
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
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
    ) -> JobHandle[R]:
        """Enqueue with options (Celery's ``apply_async``).

        Args:
            args: positional arguments (JSON values).
            kwargs: keyword arguments (JSON values).
            countdown: seconds (or a `timedelta`) to wait before the first attempt.
            eta: a timezone-aware `datetime` for the first attempt (not with ``countdown``).
            job_id: an id (idempotency key); default a random UUID.
            max_attempts, timeout, queue: override the decorator's settings for this call.
            expires: seconds (or a `timedelta`) from now, or a timezone-aware `datetime`: a
                job not started by then never runs (it ends ``cancelled``, reason
                ``"expired"``); default the decorator's ``expires``.
            priority: -100 to 100, higher starts first (default: the decorator's, else 0).

        Raises:
            InvalidJob: an argument is not JSON (naming it), or the options are inconsistent.
            TypeError: the arguments do not match the function's signature.
            QueueFull, DuplicateJob, DispatcherClosed, BackendUnavailable: from admission.
        """
        job = self.build_job(
            args,
            kwargs,
            countdown=countdown,
            eta=eta,
            job_id=job_id,
            max_attempts=max_attempts,
            timeout=timeout,
            queue=queue,
            **({"expires": expires} if expires is not None else {}),
            priority=priority,
        )
        app = self.app
        app.enqueue(job)
        return JobHandle(app, job.id, job.queue)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """`delay` for async code (admission may block on the store or Redis)."""
        return await asyncio.to_thread(self.apply_async, args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> JobHandle[R]:
        """`apply_async` for async code."""
        return await asyncio.to_thread(lambda: self.apply_async(args, kwargs, **options))

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
        expires: float | timedelta | datetime | None = None,
        priority: int | None = None,
    ) -> Job:
        """The `Job` that `apply_async` would enqueue (validated, not enqueued)."""
        if isinstance(args, str | bytes) or not isinstance(args, Sequence):
            raise InvalidJob(f"args must be a list or tuple, got {type(args).__name__}")
        kwargs = dict(kwargs or {})
        self._bind(args, kwargs)
        if countdown is not None and eta is not None:
            raise InvalidJob("give countdown or eta, not both")
        run_at = eta
        if countdown is not None:
            try:
                delay = seconds(countdown, "countdown")
            except ValueError as exc:
                raise InvalidJob(str(exc)) from exc
            run_at = datetime.now(UTC) + timedelta(seconds=delay)
        job = Job(
            job_id if job_id is not None else uuid.uuid4().hex,
            self.type,
            {"args": list(args), "kwargs": kwargs},
            max_attempts=max_attempts if max_attempts is not None else self.max_attempts,
            timeout=timeout if timeout is not None else self.timeout,
            run_at=run_at,
            queue=queue if queue is not None else self.queue,
            expires=_expires_at(expires if expires is not None else self.expires),
            priority=priority if priority is not None else self.priority,
        )
        try:
            validate_job(job)
        except InvalidJob:
            self._check_arguments(args, kwargs)  # name the argument at fault, if one is
            raise
        return job

    def _bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise `TypeError` unless the arguments fit the function's signature."""
        bind_args = (None, *args) if self.takes_context else tuple(args)
        try:
            self._signature.bind(*bind_args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.type}: {exc}") from None

    def _check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """`check_json` each argument, naming the first one that is refused."""
        names = list(self._signature.parameters)
        for index, value in enumerate(args):
            position = index + (1 if self.takes_context else 0)
            name = names[position] if position < len(names) else f"#{index}"
            check_json(value, f"argument {name!r} of job {self.type!r}")
        for key, value in kwargs.items():
            check_json(value, f"argument {key!r} of job {self.type!r}")

    def run_job(self, ctx: JobContext, job: Job) -> Any:
        """The handler registered for this function: unpack the payload and call it."""
        payload = job.payload
        if not isinstance(payload, dict) or set(payload) - {"args", "kwargs"}:
            raise InvalidJob(f"job {job.id!r}: payload must be {{'args': [...], 'kwargs': {{}}}}")
        args = payload.get("args") or []
        kwargs = payload.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidJob(f"job {job.id!r}: malformed args/kwargs in payload")
        if self.takes_context:
            return self.fn(ctx, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<JobFunction {self.type!r} ({self.__qualname__})>"


def _expires_at(expires: float | timedelta | datetime | None) -> datetime | None:
    """An ``expires`` option as the moment it names: seconds (or a `timedelta`) from now, or
    a `datetime` (checked at admission).

    Raises:
        InvalidJob: a negative, too long or non-numeric duration.
    """
    if expires is None or isinstance(expires, datetime):
        return expires
    try:
        delay = seconds(expires, "expires")
    except ValueError as exc:
        raise InvalidJob(str(exc)) from exc
    return datetime.now(UTC) + timedelta(seconds=delay)


def _check_job_options(
    max_attempts: int | None,
    timeout: float | timedelta | None,
    queue: str | None,
    rank: int = 0,
) -> float | None:
    """Validate ``@job`` options as admission would (so a bad one fails at import, not at the
    first enqueue); returns the timeout in seconds.

    Raises:
        ValueError: naming the option and its limit.
    """
    _, limit = job_options(max_attempts, timeout)
    priority(rank)
    if queue is not None:
        problem = name_problem(queue, "queue")
        if problem is not None:
            raise ValueError(problem)
    return limit


class JobRegistry:
    """Job definitions: the ``@job`` decorator, the decorated functions (`jobs`) and the
    handler registry (`registry`: job type -> handler, the allow-list workers use).

    `App` is one (and the runtime that runs them); the Flask extension is another, whose jobs
    every Flask app it is initialised on registers.
    """

    #: The class `job` wraps functions in; frameworks add methods (e.g. ``delay_on_commit``).
    job_class: ClassVar[type[JobFunction[Any, Any]]] = JobFunction

    def __init__(self) -> None:
        self.registry = HandlerRegistry()
        self.jobs: dict[str, JobFunction[Any, Any]] = {}
        #: The periodic jobs, by schedule name (`add_schedule`, ``@job(schedule=...)``).
        self.schedules: dict[str, Schedule] = {}

    # -- the decorator family --------------------------------------------------------------
    @overload
    def job(
        self,
        type: str | None = ...,
        *,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        takes_context: Literal[False] = ...,
        schedule: str | Every | None = ...,
        timezone: str | None = ...,
        catch_up: str = ...,
        catch_up_limit: int = ...,
        max_running: int | None = ...,
        schedule_name: str | None = ...,
        schedule_kwargs: Mapping[str, Any] | None = ...,
        schedule_jitter: float | timedelta | None = ...,
        expires: float | timedelta | None = ...,
    ) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...

    @overload
    def job(
        self,
        type: str | None = ...,
        *,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        takes_context: Literal[True],
        schedule: str | Every | None = ...,
        timezone: str | None = ...,
        catch_up: str = ...,
        catch_up_limit: int = ...,
        max_running: int | None = ...,
        schedule_name: str | None = ...,
        schedule_kwargs: Mapping[str, Any] | None = ...,
        schedule_jitter: float | timedelta | None = ...,
        expires: float | timedelta | None = ...,
    ) -> Callable[[Callable[..., R]], JobFunction[..., R]]: ...

    def job(
        self,
        type: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        queue: str | None = None,
        priority: int = 0,
        takes_context: bool = False,
        schedule: str | Every | None = None,
        timezone: str | None = None,
        catch_up: str = "latest",
        catch_up_limit: int = 100,
        max_running: int | None = 1,
        schedule_name: str | None = None,
        schedule_kwargs: Mapping[str, Any] | None = None,
        schedule_jitter: float | timedelta | None = None,
        expires: float | timedelta | None = None,
    ) -> Callable[[Callable[..., Any]], JobFunction[Any, Any]]:
        """Decorate a function as a job of ``type`` (default: ``module.qualname``).

        ``priority`` (-100 to 100, default 0) is its jobs' priority: a higher one starts first
        (``apply_async(priority=...)`` overrides it per call).

        With ``schedule`` (a cron string, or ``every(minutes=5)``) it is also a periodic job:
        see `add_schedule` for the schedule's options (``schedule_name``, ``schedule_kwargs``
        and ``schedule_jitter`` are its ``name``, ``kwargs`` and ``jitter``).

        ``expires`` (seconds or a `timedelta`): each job not started within that time of its
        enqueue never runs (it ends ``cancelled``, reason ``"expired"``); ``apply_async``
        may give its own.

        Raises:
            ValueError: a bad option, ``type`` already names another function, or a bad or
                duplicate schedule.
        """
        limit = _check_job_options(max_attempts, timeout, queue, priority)
        expiry = None if expires is None else seconds(expires, "expires")
        if schedule is None:
            extra: dict[str, object] = {"timezone": timezone, "schedule_name": schedule_name}
            extra |= {"schedule_kwargs": schedule_kwargs, "schedule_jitter": schedule_jitter}
            given = [name for name, value in extra.items() if value is not None]
            if given:
                verb = "needs" if len(given) == 1 else "need"
                raise ValueError(f"{', '.join(given)} {verb} schedule= (a cron string or every())")

        def decorate(fn: Callable[..., Any]) -> JobFunction[Any, Any]:
            name = type or f"{fn.__module__}.{fn.__qualname__}"
            wrapped: JobFunction[Any, Any] = self.job_class(
                self,
                fn,
                name,
                max_attempts=max_attempts,
                timeout=limit,
                queue=queue,
                takes_context=takes_context,
                expires=expiry,
                priority=priority,
            )
            made = None
            if schedule is not None:  # checked before anything is registered
                made = make_schedule(
                    wrapped,
                    schedule,
                    name=schedule_name,
                    timezone=timezone,
                    kwargs=schedule_kwargs,
                    catch_up=catch_up,
                    catch_up_limit=catch_up_limit,
                    max_running=max_running,
                    jitter=schedule_jitter,
                )
                self._check_schedule_name(made.name)
            self.add_job(wrapped)
            if made is not None:
                self.schedules[made.name] = made
            return wrapped

        return decorate

    def add_schedule(
        self,
        job: JobFunction[Any, Any],
        schedule: str | Every,
        *,
        name: str | None = None,
        timezone: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        catch_up: str = "latest",
        catch_up_limit: int = 100,
        max_running: int | None = 1,
        jitter: float | timedelta | None = None,
    ) -> Schedule:
        """Run ``job`` periodically (a second schedule of one job needs its own ``name``).

        Args:
            job: a job function of this registry.
            schedule: a cron expression (``"0 3 * * *"``, matched in ``timezone``; needs
                ``csjd[cron]``), or `every` (slots counted from the Unix epoch).
            name: unique among the registry's schedules (default: the job type).
            timezone: an IANA time zone for a cron expression (default UTC).
            kwargs: fixed keyword arguments of every run (JSON, checked against the function).
            catch_up: after slots were missed (no ticker ran): ``"latest"`` runs the most
                recent one, ``"none"`` none (a slot more than a minute late, or one period if
                shorter, is missed), ``"all"`` each of them, the last ``catch_up_limit``.
            max_running: skip a slot while this many runs of the schedule are unfinished
                (``None``: no limit).
            jitter: delay each slot by up to this many seconds, the same in every process.

        Raises:
            ValueError: a bad expression, time zone or option, or a name already scheduled.
            TypeError: ``kwargs`` do not fit the function.
        """
        if self.jobs.get(job.type) is not job:
            raise ValueError(f"{job!r} is not a job of this registry")
        made = make_schedule(
            job,
            schedule,
            name=name,
            timezone=timezone,
            kwargs=kwargs,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            max_running=max_running,
            jitter=jitter,
        )
        self._check_schedule_name(made.name)
        self.schedules[made.name] = made
        return made

    def _check_schedule_name(self, name: str) -> None:
        if name in self.schedules:
            raise ValueError(
                f"two schedules are named {name!r}; give one a name of its own "
                "(schedule_name= on @job, name= on add_schedule)"
            )

    def add_job(self, job: JobFunction[Any, Any]) -> None:
        """Register a decorated function: its handler (``run_job``) and its definition.

        Raises:
            ValueError: another function is registered for its type.
        """
        self.registry.register(job.type, job.run_job)
        self.jobs[job.type] = job

    def register_handler(self, type: str, fn: HandlerFn) -> None:
        """Register a raw ``fn(ctx, job)`` handler."""
        self.registry.register(type, fn)

    def enqueuer(self, job_type: str) -> Enqueuer:
        """Where jobs of ``job_type`` are enqueued (an `App`: itself; the Flask extension:
        the `App` of ``current_app``). A registry of its own has no runtime.

        Raises:
            CSJDError: there is nowhere to enqueue now (no runtime; Flask: no application
                context).
        """
        raise CSJDError(
            f"cannot enqueue {job_type!r}: {type(self).__name__} only defines jobs; define them "
            "on an App (app.job), or give the registry a runtime by overriding enqueuer()"
        )
