"""`App`: the runtime behind the ``@app.job`` decorator family — the mode, the settings and the
dispatcher of this process — shared by the Django and Flask integrations."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from datetime import timedelta
from enum import StrEnum

from csjd_core.config import Config, DistributedConfig, RedisConfig
from csjd_core.dispatcher import Dispatcher
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.errors import (
    BackendUnavailable,
    CSJDError,
    InvalidConfig,
    JobFailed,
    JobNotFound,
    RedisModeRequired,
)
from csjd_core.immediate import ImmediateDispatcher
from csjd_core.job import Job, JobStatus, validate_job
from csjd_core.jobs import JobFunction, JobHandle, JobRegistry
from csjd_core.limits import brief
from csjd_core.outbox import Outbox

__all__ = ["MODES", "App", "JobFailed", "JobFunction", "JobHandle", "Mode"]

logger = logging.getLogger(__name__)


class Mode(StrEnum):
    """Where jobs run. A `str`: ``Mode.REDIS == "redis"``."""

    INPROCESS = "inprocess"  # worker threads in this process, started on the first enqueue
    REDIS = "redis"  # enqueued to Redis Streams; `csjd worker` processes run them
    IMMEDIATE = "immediate"  # at enqueue, in the caller's thread (tests)

    @classmethod
    def parse(cls, value: object) -> Mode:
        """``value`` (a `Mode` or its string) as a `Mode`.

        Raises:
            InvalidConfig: not a mode (``owner="App"``, ``field="mode"``).
        """
        try:
            if isinstance(value, str):
                return cls(value)
        except ValueError:
            pass
        known = ", ".join(repr(str(m)) for m in cls)
        raise InvalidConfig(
            f"App.mode must be one of {known}, got {brief(value)}", owner="App", field="mode"
        )


MODES = tuple(Mode)


class App(JobRegistry):
    """The runtime of a set of jobs: their definitions (`JobRegistry`: ``@app.job``), the
    settings, and this process's dispatcher, built on first use.

    Args:
        mode: a `Mode` (or its string): ``"inprocess"`` (worker threads in this process,
            started lazily on the first enqueue), ``"redis"`` (enqueue to Redis Streams;
            workers run ``csjd worker``), or ``"immediate"`` (jobs run at enqueue, in the
            caller's thread — for tests).
        config: the in-process (and immediate) `Config`.
        redis: where Redis is (Redis mode).
        distributed: the `DistributedConfig` (Redis mode).
        name: a label for logs.

    Raises:
        InvalidConfig: an unknown mode, or Redis mode without ``redis``.
    """

    def __init__(
        self,
        *,
        mode: Mode | str = Mode.INPROCESS,
        config: Config | None = None,
        redis: RedisConfig | None = None,
        distributed: DistributedConfig | None = None,
        name: str = "csjd",
    ) -> None:
        super().__init__()
        self.mode = _mode(mode, redis)
        self.config = config if config is not None else Config()
        self.redis = redis
        self.distributed = distributed if distributed is not None else DistributedConfig()
        self.name = name
        #: Where jobs written in database transactions wait (`csjd_core.outbox`): a framework
        #: sets them (``CSJD_OUTBOX``, ``CSJD(app, outbox=db)``); workers relay them.
        self.outboxes: tuple[Outbox, ...] = ()
        self._dispatcher: BaseDispatcher | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()  # _build may call configure (frameworks)

    def enqueuer(self, job_type: str) -> App:
        """An `App` enqueues its jobs itself."""
        return self

    def configure(
        self,
        *,
        mode: Mode | str | None = None,
        config: Config | None = None,
        redis: RedisConfig | None = None,
        distributed: DistributedConfig | None = None,
    ) -> None:
        """Change the settings before the dispatcher is built (frameworks read their settings
        after the job functions were decorated).

        Raises:
            CSJDError: this process's dispatcher already exists.
            InvalidConfig: an unknown mode, or Redis mode without ``redis``.
        """
        with self._lock:
            if self._dispatcher is not None and self._pid == os.getpid():
                raise CSJDError(f"{self!r} is running; configure it before the first enqueue")
            redis = redis or self.redis
            self.mode = _mode(mode or self.mode, redis)
            self.config = config or self.config
            self.redis = redis
            self.distributed = distributed or self.distributed

    def require_redis(self, needed_by: str) -> RedisConfig:
        """This app's Redis settings, for a command or an operation that works on Redis queues.

        Raises:
            RedisModeRequired: the app is not in Redis mode (the message names ``needed_by``).
        """
        if self.mode is not Mode.REDIS or self.redis is None:
            raise RedisModeRequired(needed_by, self.mode)
        return self.redis

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
        if self.mode is Mode.IMMEDIATE:
            return ImmediateDispatcher(self.config, registry=self.registry)
        if self.mode is Mode.REDIS:
            from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415 - needs redis

            # A web process only enqueues: worker processes tick (`run_workers`).
            assert self.redis is not None
            return RedisDistributedDispatcher(self.redis, self.distributed, registry=self.registry)
        # In-process: this process runs the jobs, so it ticks the schedules and relays the
        # outboxes once started (with a file store, the one process holding it; in memory,
        # every process its own).
        return Dispatcher(
            self.config, registry=self.registry, schedules=self.schedules, outboxes=self.outboxes
        )

    def start(self) -> None:
        """Start the dispatcher's workers now (in-process mode starts lazily otherwise)."""
        self.dispatcher.start()

    def enqueue(self, job: Job) -> None:
        """Submit a `Job` through this app's dispatcher.

        In-process mode starts the workers on the first enqueue; Redis mode only produces (the
        workers are separate ``csjd worker`` processes).
        """
        dispatcher = self.dispatcher
        if self.mode is not Mode.REDIS and not dispatcher.started:
            dispatcher.start()
        dispatcher.submit(job)

    def outbox_job(self, job: Job) -> Job:
        """``job`` as an outbox row of this app keeps it, checked as admission will check it:
        in Redis mode, with the queue `enqueue` would admit it to when it names none (the
        first of the app's queues; the worker that relays it may consume others,
        ``--queues``), and within ``max_payload_bytes``.

        Raises:
            InvalidJob: a malformed job, or one over the payload limit.
        """
        validate_job(job)
        job = self.traced(job)  # the trace of this call, not the relay's (another process)
        if self.mode is not Mode.REDIS:
            return job
        from csjd_core.backends.redis import codec  # noqa: PLC0415 - Redis mode: redis is there

        config = self.distributed
        codec.encode(job, config.default_max_attempts, config.max_payload_bytes)
        if job.queue is None:
            return dataclasses.replace(job, queue=config.queues[0])
        return job

    def traced(self, job: Job) -> Job:
        """``job`` with the trace context of this call in its headers, under a producer span
        (``send <queue>``), when tracing is on (``tracing`` in the config): for a job admitted
        later — at a commit, or by an outbox's relay — whose trace must be the caller's. The
        admission then keeps that context and starts no other span. Tracing off: ``job``.
        """
        config = self.distributed if self.mode is Mode.REDIS else self.config
        if config.tracing is False:
            return job
        tracing = self.dispatcher.tracing
        return job if tracing is None else tracing.stamp(job)

    def status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """Status of a job submitted through this app; ``queued`` while it waits in one of the
        app's outboxes.

        Raises:
            JobNotFound: neither the queue nor an outbox knows the id.
        """
        try:
            return self.dispatcher.status(job_id, queue)
        except (JobNotFound, BackendUnavailable):  # Redis down: a waiting job is still queued
            if not self.outboxes:
                raise
            for outbox in self.outboxes:
                found = outbox.find(job_id)
                if found is not None and (queue is None or found.job.queue == queue):
                    config = self.distributed if self.mode is Mode.REDIS else self.config
                    return found.status(config.default_max_attempts)
        # A relay may have moved it between the two looks (a row is deleted only once its job
        # was admitted): the queue has it now, or nobody does.
        return self.dispatcher.status(job_id, queue)

    def cancel(self, job_id: str, queue: str | None = None) -> bool:
        """Cancel a job submitted through this app (`BaseDispatcher.cancel`): one that waits
        never runs; a running one is asked to stop (``ctx.cancelled``) and ends ``cancelled``
        whatever it does. In Redis mode any process can cancel any job of the app's queues.

        Returns:
            True when it was cancelled or its cancellation requested of a running attempt;
            False when it had already ended.

        Raises:
            JobNotFound: no record of the id (never submitted, its result expired, or it still
                waits in an outbox: not admitted yet).
            BackendUnavailable: the store or Redis could not record it.
        """
        return self.dispatcher.cancel(job_id, queue)

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


def _mode(mode: Mode | str, redis: RedisConfig | None) -> Mode:
    """``mode`` as a `Mode`, checked against the settings it needs.

    Raises:
        InvalidConfig: an unknown mode, or Redis mode without ``redis``.
    """
    parsed = Mode.parse(mode)
    if parsed is Mode.REDIS and redis is None:
        raise InvalidConfig(
            "App(mode='redis') needs redis=RedisConfig(url=...)", owner="App", field="redis"
        )
    return parsed
