"""`App`: the ``@app.job`` decorator family shared by the Django and Flask integrations."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from csjd_core.config import Config, DistributedConfig, RedisConfig
from csjd_core.context import JobContext
from csjd_core.dispatcher import Dispatcher
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.engine.registry import HandlerFn, HandlerRegistry
from csjd_core.errors import CSJDError, InvalidJob, JobFailed
from csjd_core.immediate import ImmediateDispatcher
from csjd_core.job import Job, JobState, JobStatus, check_json, validate_job
from csjd_core.limits import attempts, name_problem, positive_seconds
from csjd_core.retry import seconds

__all__ = ["App", "JobFailed", "JobFunction", "JobHandle"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

Mode = Literal["inprocess", "redis", "immediate"]
MODES = ("inprocess", "redis", "immediate")


class JobHandle(Generic[R]):
    """A reference to an enqueued job: its id, status and eventual result."""

    __slots__ = ("_app", "id", "queue")

    def __init__(self, app: App, job_id: str, queue: str | None = None) -> None:
        self._app = app
        self.id = job_id
        self.queue = queue

    def status(self) -> JobStatus:
        """The job's current status (raises `JobNotFound` for an unknown or expired id)."""
        return self._app.status(self.id, self.queue)

    def result(self, timeout: float | timedelta | None = None) -> R:
        """Wait for the job to finish and return its result.

        Raises:
            JobFailed: the job failed for good.
            TimeoutError: it did not finish within ``timeout`` seconds.
        """
        limit = None if timeout is None else seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        pause = 0.001
        while True:
            status = self.status()
            if status.state is JobState.SUCCEEDED:
                return status.result  # type: ignore[no-any-return]
            if status.state is JobState.FAILED:
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
    args=..., kwargs=..., countdown=..., eta=..., job_id=...)`` enqueues with options.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        type: str,
        *,
        max_attempts: int | None,
        timeout: float | None,
        queue: str | None,
        takes_context: bool,
    ) -> None:
        self.app = app
        self.fn = fn
        self.type = type
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.queue = queue
        self.takes_context = takes_context
        self._signature = inspect.signature(fn)
        self.__name__ = getattr(fn, "__name__", type)
        self.__qualname__ = getattr(fn, "__qualname__", type)
        self.__doc__ = fn.__doc__
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

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
    ) -> JobHandle[R]:
        """Enqueue with options (Celery's ``apply_async``).

        Args:
            args: positional arguments (JSON values).
            kwargs: keyword arguments (JSON values).
            countdown: seconds (or a `timedelta`) to wait before the first attempt.
            eta: a timezone-aware `datetime` for the first attempt (not with ``countdown``).
            job_id: an id (idempotency key); default a random UUID.
            max_attempts, timeout, queue: override the decorator's settings for this call.

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
        )
        self.app.enqueue(job)
        return JobHandle(self.app, job.id, job.queue)

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


def _check_job_options(
    max_attempts: int | None, timeout: float | timedelta | None, queue: str | None
) -> float | None:
    """Validate ``@job`` options as admission would (so a bad one fails at import, not at the
    first enqueue); returns the timeout in seconds.

    Raises:
        ValueError: naming the option and its limit.
    """
    if max_attempts is not None:
        attempts(max_attempts, "max_attempts")
    limit = None if timeout is None else positive_seconds(timeout, "timeout")
    if queue is not None:
        problem = name_problem(queue, "queue")
        if problem is not None:
            raise ValueError(problem)
    return limit


class App:
    """Holds the handler registry and settings; builds and owns the dispatcher.

    Args:
        mode: ``"inprocess"`` (worker threads in this process, started lazily on the first
            enqueue), ``"redis"`` (enqueue to Redis Streams; workers run ``csjd worker``), or
            ``"immediate"`` (jobs run at enqueue, in the caller's thread — for tests).
        config: the in-process (and immediate) `Config`.
        redis: where Redis is (``"redis"`` mode).
        distributed: the `DistributedConfig` (``"redis"`` mode).
        name: a label for logs.
    """

    #: The class `job` wraps functions in; frameworks add methods (e.g. ``delay_on_commit``).
    job_class: type[JobFunction[Any, Any]] = JobFunction

    def __init__(
        self,
        *,
        mode: Mode = "inprocess",
        config: Config | None = None,
        redis: RedisConfig | None = None,
        distributed: DistributedConfig | None = None,
        name: str = "csjd",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "redis" and redis is None:
            raise ValueError("mode='redis' needs redis=RedisConfig(url=...)")
        self.mode: Mode = mode
        self.config = config if config is not None else Config()
        self.redis = redis
        self.distributed = distributed if distributed is not None else DistributedConfig()
        self.name = name
        self.registry = HandlerRegistry()
        self.jobs: dict[str, JobFunction[Any, Any]] = {}
        self._dispatcher: BaseDispatcher | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()  # _build may call configure (frameworks)

    # -- the decorator family --------------------------------------------------------------
    @overload
    def job(
        self,
        type: str | None = ...,
        *,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        queue: str | None = ...,
        takes_context: Literal[False] = ...,
    ) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...

    @overload
    def job(
        self,
        type: str | None = ...,
        *,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        queue: str | None = ...,
        takes_context: Literal[True],
    ) -> Callable[[Callable[..., R]], JobFunction[..., R]]: ...

    def job(
        self,
        type: str | None = None,
        *,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        queue: str | None = None,
        takes_context: bool = False,
    ) -> Callable[[Callable[..., Any]], JobFunction[Any, Any]]:
        """Decorate a function as a job of ``type`` (default: ``module.qualname``).

        Raises:
            ValueError: a bad option, or ``type`` already names another function.
        """
        limit = _check_job_options(max_attempts, timeout, queue)

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
            )
            self.registry.register(name, wrapped.run_job)
            self.jobs[name] = wrapped
            return wrapped

        return decorate

    def register_handler(self, type: str, fn: HandlerFn) -> None:
        """Register a raw ``fn(ctx, job)`` handler."""
        self.registry.register(type, fn)

    def configure(
        self,
        *,
        mode: Mode | None = None,
        config: Config | None = None,
        redis: RedisConfig | None = None,
        distributed: DistributedConfig | None = None,
    ) -> None:
        """Change the settings before the dispatcher is built (frameworks read their settings
        after the job functions were decorated).

        Raises:
            CSJDError: this process's dispatcher already exists.
            ValueError: an unknown mode, or Redis mode without ``redis``.
        """
        with self._lock:
            if self._dispatcher is not None and self._pid == os.getpid():
                raise CSJDError(f"{self!r} is running; configure it before the first enqueue")
            mode = mode or self.mode
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            redis = redis or self.redis
            if mode == "redis" and redis is None:
                raise ValueError("mode='redis' needs redis=RedisConfig(url=...)")
            self.mode = mode
            self.config = config or self.config
            self.redis = redis
            self.distributed = distributed or self.distributed

    # -- the dispatcher --------------------------------------------------------------------
    @property
    def dispatcher(self) -> BaseDispatcher:
        """This process's dispatcher, built on first use (and rebuilt in a forked child)."""
        dispatcher = self._dispatcher
        if dispatcher is not None and self._pid == os.getpid():
            return dispatcher
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's threads did not survive the fork; start afresh.
                self._dispatcher = None
                self._pid = os.getpid()
            if self._dispatcher is None:
                self._dispatcher = self._build()
            return self._dispatcher

    def _build(self) -> BaseDispatcher:
        if self.mode == "immediate":
            return ImmediateDispatcher(self.config, registry=self.registry)
        if self.mode == "redis":
            from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415 - needs redis

            assert self.redis is not None
            return RedisDistributedDispatcher(self.redis, self.distributed, registry=self.registry)
        return Dispatcher(self.config, registry=self.registry)

    def start(self) -> None:
        """Start the dispatcher's workers now (in-process mode starts lazily otherwise)."""
        self.dispatcher.start()

    def enqueue(self, job: Job) -> None:
        """Submit a `Job` through this app's dispatcher.

        In-process mode starts the workers on the first enqueue; Redis mode only produces (the
        workers are separate ``csjd worker`` processes).
        """
        dispatcher = self.dispatcher
        if self.mode != "redis" and not dispatcher.started:
            dispatcher.start()
        dispatcher.submit(job)

    def status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """Status of a job submitted through this app."""
        return self.dispatcher.status(job_id, queue)

    def wait(self, timeout: float | timedelta | None = None) -> bool:
        """Block until every enqueued job finished (for tests). False on timeout."""
        dispatcher = self._dispatcher
        if dispatcher is None or self._pid != os.getpid():
            return True  # nothing enqueued here (a forked child has none of the parent's jobs)
        return dispatcher.join(timeout)

    def stop(self, timeout: float | timedelta | None = None) -> None:
        """Stop this process's dispatcher (a later enqueue builds a new one)."""
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None and self._pid == os.getpid():
            report = dispatcher.stop(timeout)
            logger.info("app stopped name=%s report=%s", self.name, report)

    def __repr__(self) -> str:
        return f"<App {self.name!r} mode={self.mode} jobs={len(self.jobs)}>"
