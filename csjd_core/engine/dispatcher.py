"""The dispatcher API both modes share: handlers, submit, status, metrics, stop."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from csjd_core.backends.base import (
    Backend,
    BackendSettings,
    CancelVerdict,
    RelayResult,
    RelayVerdict,
    SlotOp,
    SlotRequest,
    SlotVerdict,
)
from csjd_core.config import EngineConfig
from csjd_core.engine.pool import Engine
from csjd_core.engine.registry import HandlerFn, HandlerRegistry
from csjd_core.engine.ticker import Ticker
from csjd_core.errors import DispatcherClosed, InvalidJob, JobNotFound, UnknownJobType
from csjd_core.hooks import HookRunner
from csjd_core.job import Job, JobStatus, check_name, validate_job
from csjd_core.limits import name_problem
from csjd_core.metrics import Counters, MetricsSnapshot, StopReport
from csjd_core.outbox import Outbox, Relay
from csjd_core.periodic import manual_id, slot_id
from csjd_core.retry import seconds
from csjd_core.stats import ScheduleState

if TYPE_CHECKING:
    from csjd_core.periodic import Schedule
    from csjd_core.tracing import Tracing

__all__ = ["BaseDispatcher", "JobNotFound"]

logger = logging.getLogger("csjd_core.dispatcher")

F = TypeVar("F", bound=HandlerFn)


class BaseDispatcher:
    """Engine + backend. `Dispatcher` and `RedisDistributedDispatcher` are assemblies of this."""

    def __init__(
        self,
        backend: Backend,
        config: EngineConfig,
        *,
        registry: HandlerRegistry | None = None,
        max_results: int = 0,
        schedules: Mapping[str, Schedule] | None = None,
        tick: bool = True,
        outboxes: Sequence[Outbox] = (),
    ) -> None:
        self._backend = backend
        self._registry = registry if registry is not None else HandlerRegistry()
        #: Ticks ``schedules`` while started (unless not ``tick``), and records the last
        #: outcome of their runs that this dispatcher's workers finish.
        self.ticker: Ticker | None = None
        self._tick = tick
        hooks = config.hooks
        if schedules:
            self.ticker = Ticker(schedules, self)
            hooks = (*hooks, self.ticker)
        #: The OpenTelemetry spans (``config.tracing``): a producer span around each
        #: admission (`submit`, `submit_batch`), and a hook for the attempts' consumer spans.
        self.tracing: Tracing | None = None
        if config.tracing is not False:
            from csjd_core.tracing import Tracing  # noqa: PLC0415 - imports opentelemetry

            queues = getattr(config, "queues", ("default",))
            provider = None if config.tracing is True else config.tracing
            self.tracing = Tracing(provider, default_queue=queues[0])
            hooks = (*hooks, self.tracing)
        self._hooks = HookRunner(hooks)
        #: One `Relay` per outbox, relaying while started (`csjd_core.outbox`).
        self.relays = tuple(Relay(outbox, self) for outbox in outboxes)
        self._counters = Counters()
        self._engine = Engine(
            backend, self._registry, config, hooks=self._hooks, counters=self._counters
        )
        self._settings = BackendSettings(
            max_pending_jobs=config.max_pending_jobs,
            default_max_attempts=config.default_max_attempts,
            result_ttl=config.result_ttl,
            max_results=max_results,
            worker_id=self._engine.worker_prefix,
            on_lost_claim=self._engine.success_lost,
            on_cancel=self._engine.on_cancel,
            on_cancelled_success=self._engine.success_cancelled,
            on_cancelled_unstarted=self._engine.cancelled_unstarted,
        )
        self._lifecycle = threading.Lock()
        self._stopping = threading.Lock()
        self._opened = False
        self._started = False
        self._closed = False
        self._stop_report: StopReport | None = None

    # -- handlers --------------------------------------------------------------------------
    def register_handler(self, type: str, fn: HandlerFn) -> None:
        """Register ``fn(ctx, job)`` (plain or ``async def``) for jobs of ``type``.

        Raises:
            ValueError: empty type, or a different handler already registered for it.
        """
        self._registry.register(type, fn)

    def handler(self, type: str) -> Callable[[F], F]:
        """Decorator form of `register_handler`."""

        def decorate(fn: F) -> F:
            self.register_handler(type, fn)
            return fn

        return decorate

    @property
    def registry(self) -> HandlerRegistry:
        """The handler registry (job type -> function)."""
        return self._registry

    # -- lifecycle -------------------------------------------------------------------------
    def _ensure_open(self) -> None:
        if self._opened:
            return
        with self._lifecycle:
            if self._opened:
                return
            if self._closed:
                raise DispatcherClosed("dispatcher is stopped")
            recovered = self._backend.open(self._settings)
            if recovered:
                self._counters.add(self._counters.accepted, recovered)
                logger.info("recovered unfinished jobs count=%d", recovered)
            self._opened = True

    def start(self) -> None:
        """Open the backend (recovering stored jobs) and start the workers.

        Raises:
            DispatcherClosed: the dispatcher was stopped.
        """
        self._ensure_open()
        with self._lifecycle:
            if self._closed:
                raise DispatcherClosed("dispatcher is stopped; create a new one")
            if self._started:
                return
            self._backend.start_consuming()  # may raise (Redis down): then not started
            self._started = True
            self._engine.start()
            if self.ticker is not None and self._tick:
                self.ticker.start()
            for relay in self.relays:
                relay.start()

    def wake_relays(self) -> None:
        """Have the relays look at their outboxes now (a commit here wrote rows)."""
        for relay in self.relays:
            relay.wake()

    @property
    def started(self) -> bool:
        """True once `start` has run (and until `stop`)."""
        return self._started and not self._closed

    def __enter__(self) -> BaseDispatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- admission -------------------------------------------------------------------------
    def _check(self, job: Job) -> None:
        validate_job(job)
        if self._backend.local and job.type not in self._registry.handlers:
            raise UnknownJobType(
                f"no handler registered for job type {job.type!r} (job id={job.id!r}); "
                f"registered: {self._registry.types()}"
            )

    def submit(self, job: Job) -> None:
        """Admit one job.

        Raises:
            InvalidJob: the job is malformed (empty id, non-JSON payload, naive run_at...).
            UnknownJobType: in-process, no handler is registered for its type.
            DuplicateJob: its id belongs to an unfinished job.
            QueueFull: ``max_pending_jobs`` unfinished jobs already exist.
            DispatcherClosed: `stop` has begun.
            BackendUnavailable: the store or Redis could not record it.
        """
        tracing = self.tracing
        if tracing is None:
            self._admit(job, None)
            return
        with tracing.send((job,)) as (stamped,):
            self._admit(stamped, None)

    def _admit(self, job: Job, request: SlotRequest | None) -> SlotVerdict:
        """Admit ``job``: alone (``request`` None), or with a schedule's mark (`admit_slot`)."""
        counters = self._counters
        hooks = self._hooks
        accepted = False
        submitted = True
        try:
            if self._closed:
                raise DispatcherClosed("dispatcher is stopping; submit refused")
            self._check(job)
            if not self._opened:
                self._ensure_open()
            if hooks.active:
                hooks.call("before_enqueue", job)
            # Counted before workers can see the job, so no snapshot shows it finished but not
            # accepted; taken back if admission fails.
            next(counters.accepted)
            accepted = True
            if request is None:
                self._backend.enqueue((job,))
                verdict = SlotVerdict.ENQUEUED
            else:
                verdict = self._backend.admit_slot(request)
                if verdict is not SlotVerdict.ENQUEUED:
                    # A slot another ticker had, or one skipped: not a submission.
                    accepted = submitted = False
                    counters.add(counters.accepted, -1)
        except BaseException:
            if accepted:
                counters.add(counters.accepted, -1)
            raise
        finally:
            if submitted:
                next(counters.submitted)
        if hooks.active and verdict is SlotVerdict.ENQUEUED:
            hooks.call("after_enqueue", job)
        return verdict

    def submit_batch(self, jobs: Iterable[Job]) -> None:
        """Admit every job or none.

        Raises:
            The errors of `submit`; the message names the job that caused the refusal.
        """
        batch = list(jobs)
        tracing = self.tracing
        if tracing is None:
            self._submit_batch(batch)
            return
        with tracing.send(batch) as stamped:  # one producer span for the batch
            self._submit_batch(stamped)

    def _submit_batch(self, batch: list[Job]) -> None:
        counters = self._counters
        hooks = self._hooks
        accepted = False
        try:
            if self._closed:
                raise DispatcherClosed("dispatcher is stopping; submit refused")
            seen: set[str] = set()
            for job in batch:
                self._check(job)
                if job.id in seen:
                    raise InvalidJob(f"job id {job.id!r} appears twice in the batch")
                seen.add(job.id)
            self._check_batch(batch)
            self._ensure_open()
            if hooks.active:
                for job in batch:
                    hooks.call("before_enqueue", job)
            counters.add(counters.accepted, len(batch))
            accepted = True
            if batch:
                self._backend.enqueue(batch)
        except BaseException:
            if accepted:
                counters.add(counters.accepted, -len(batch))
            raise
        finally:
            counters.add(counters.submitted, len(batch))
        if hooks.active:
            for job in batch:
                hooks.call("after_enqueue", job)

    def relay(self, jobs: Sequence[Job]) -> list[RelayResult]:
        """The outbox relay's admission: admit the jobs whose ids are free, skip those that
        are taken (relayed before a crash kept their rows) and those over the pending cap,
        and say which is which — each queue's jobs in one atomic step (`Backend.relay`).
        A malformed job is ``INVALID`` (with the reason) and never blocks the others; in
        Redis mode a job's type is not judged (some worker may know it).

        Returns:
            One `RelayResult` per job, in order.

        Raises:
            DispatcherClosed, BackendUnavailable: for a queue, nothing of it was admitted (the
                results of queues relayed before are lost with the error: relay them again,
                their ids are then ``EXISTS``).
        """
        if self._closed:
            raise DispatcherClosed("dispatcher is stopping; relay refused")
        results: list[RelayResult | None] = [None] * len(jobs)
        queues: dict[str | None, list[tuple[int, Job]]] = {}
        for index, job in enumerate(jobs):
            try:
                self._check(job)
            except (InvalidJob, UnknownJobType) as exc:
                results[index] = RelayResult(job.id, RelayVerdict.INVALID, str(exc))
                continue
            queues.setdefault(job.queue, []).append((index, job))
        self._ensure_open()
        counters, hooks = self._counters, self._hooks
        # Every job is a submission, as in `submit` (a refused one too).
        counters.add(counters.submitted, len(jobs))
        for batch in queues.values():
            if hooks.active:
                for _, job in batch:
                    hooks.call("before_enqueue", job)
            # Counted before workers can see them; taken back for those not admitted.
            counters.add(counters.accepted, len(batch))
            try:
                relayed = self._backend.relay([job for _, job in batch])
            except BaseException:
                counters.add(counters.accepted, -len(batch))
                raise
            admitted = 0
            for (index, job), result in zip(batch, relayed, strict=True):
                results[index] = result
                if result.verdict is RelayVerdict.ADMITTED:
                    admitted += 1
                    if hooks.active:
                        hooks.call("after_enqueue", job)
            counters.add(counters.accepted, admitted - len(batch))
        return [result for result in results if result is not None]

    def _check_batch(self, batch: list[Job]) -> None:
        """Mode-specific batch rules (distributed mode: one queue per batch)."""

    # -- schedules (csjd_core.periodic) ----------------------------------------------------
    def clock(self) -> float:
        """The Unix time schedules are judged by (Redis ``TIME`` in Redis mode).

        Raises:
            BackendUnavailable: Redis could not be reached.
        """
        return self._backend.clock()

    def admit_slot(
        self,
        schedule: Schedule,
        op: SlotOp,
        slot: float,
        *,
        misfired: int = 0,
        after: float | None = None,
    ) -> SlotVerdict:
        """One atomic step on ``schedule``'s mark (see `SlotOp` and `SlotRequest`): a
        `SlotOp.SLOT` enqueues the slot's job (id ``periodic:<name>:<slot>``) unless the mark
        is at or past ``slot``.

        Raises:
            QueueFull, BackendUnavailable, DispatcherClosed: nothing changed.
        """
        job = schedule.build(slot_id(schedule.name, slot)) if op is SlotOp.SLOT else None
        return self._slot(schedule, op, slot, job, misfired, after)

    def run_now(self, schedule: Schedule) -> str:
        """Enqueue a run of ``schedule`` outside its slots ("run now"); returns its job id.
        It counts as unfinished for ``max_running`` until it ends.

        Raises:
            QueueFull, BackendUnavailable, DispatcherClosed: from admission.
        """
        job = schedule.build(manual_id(schedule.name))
        self._slot(schedule, SlotOp.MANUAL, 0.0, job, 0, None)
        return job.id

    def _slot(
        self,
        schedule: Schedule,
        op: SlotOp,
        slot: float,
        job: Job | None,
        misfired: int,
        after: float | None,
    ) -> SlotVerdict:
        request = SlotRequest(
            op,
            schedule.name,
            schedule.queue,
            slot,
            job,
            max_running=schedule.max_running or 0,
            misfired=misfired,
            after=after,
        )
        if job is None:
            if self._closed:
                raise DispatcherClosed("dispatcher is stopping; schedule step refused")
            self._ensure_open()
            return self._backend.admit_slot(request)
        return self._admit(job, request)

    def schedule_state(self, name: str, queue: str | None = None) -> ScheduleState | None:
        """The mark of schedule ``name`` kept under ``queue``, or ``None`` before any ticker
        saw it."""
        self._ensure_open()
        return self._backend.schedule_state(name, queue)

    def set_schedule_paused(self, schedule: Schedule, paused: bool) -> bool:
        """Pause ``schedule`` (every ticker records its slots as skipped), or resume it: in one
        atomic step the slots due while it was paused are recorded as skipped — whether or not
        a ticker ran meanwhile — and the next slot runs.

        Returns:
            False when there was nothing to do (already paused; not paused).
        """
        self._ensure_open()
        state = self.schedule_state(schedule.name, schedule.queue)
        if paused:
            if state is not None and state.paused:
                return False
            self._backend.set_paused(schedule.name, schedule.queue, True)
            return True
        if state is None or not state.paused:
            return False
        now = self.clock()
        through, skipped = float(math.floor(now)), 0
        if state.mark is not None:
            plan = schedule.plan(state.mark, now)
            through = state.mark if plan.through is None else plan.through
            skipped = plan.passed_over + len(plan.slots)
        # Counted only if the mark is still the one read here (a ticker may record some first).
        verdict = self._slot(schedule, SlotOp.RESUME, through, None, skipped, state.mark)
        return verdict is SlotVerdict.RESUMED

    def record_schedule_outcome(self, schedule: Schedule, job_id: str, kind: str) -> None:
        """Record how a run of ``schedule`` ended (see `ScheduleState.last_outcome`)."""
        self._backend.record_outcome(schedule.name, schedule.queue, job_id, kind)

    # -- queries ---------------------------------------------------------------------------
    def status(self, job_id: str, queue: str | None = None) -> JobStatus:
        """The job's state, attempts, timestamps, last error and result.

        Args:
            job_id: the job's id.
            queue: where to look (distributed mode; default: every configured queue).

        Raises:
            JobNotFound: the id is unknown, or its result expired (``result_ttl``).
            InvalidJob: ``queue`` is not a queue name.
        """
        try:
            check_name(job_id, "job id")
        except InvalidJob:
            raise JobNotFound(job_id) from None  # no job can have it
        if queue is not None and (problem := name_problem(queue, "queue")) is not None:
            raise InvalidJob(problem)
        self._ensure_open()
        found = self._backend.status(job_id, queue)
        if found is None:
            raise JobNotFound(job_id)
        return found

    def cancel(self, job_id: str, queue: str | None = None) -> bool:
        """Cancel a job: one that waits (queued, scheduled, waiting for a retry) never runs and
        ends ``cancelled``; a running one is asked to stop (``ctx.cancelled``: at once in
        process, within ``heartbeat_interval`` across Redis consumers) and ends ``cancelled``
        whatever its handler does (a result it returns is kept). Never retried afterwards.

        Args:
            job_id: the job's id.
            queue: where it is (distributed mode; default: every configured queue).

        Returns:
            True when the job was cancelled or its cancellation requested of a running
            attempt; False when it had already ended.

        Raises:
            JobNotFound: no record of the id (never submitted, or its result expired).
            InvalidJob: ``queue`` is not a queue name.
            BackendUnavailable: the store or Redis could not record it.
        """
        verdict = self.cancel_job(job_id, queue)
        if verdict is CancelVerdict.NOT_FOUND:
            raise JobNotFound(job_id)
        return verdict is not CancelVerdict.ENDED

    def cancel_job(
        self, job_id: str, queue: str | None = None, *, waiting_only: bool = False
    ) -> CancelVerdict:
        """`cancel`, answered with the backend's `CancelVerdict` (no `JobNotFound`); with
        ``waiting_only`` a job that started is left alone (the bulk form's rule)."""
        try:
            check_name(job_id, "job id")
        except InvalidJob:
            return CancelVerdict.NOT_FOUND  # no job can have it
        if queue is not None and (problem := name_problem(queue, "queue")) is not None:
            raise InvalidJob(problem)
        self._ensure_open()
        verdict = self._backend.cancel(job_id, queue, waiting_only=waiting_only)
        logger.info("cancel id=%r queue=%s verdict=%s", job_id, queue, verdict)
        return verdict

    def waiting_jobs(self, job_type: str | None = None, queue: str | None = None) -> list[str]:
        """The ids of the jobs that wait — queued or scheduled, not held by a worker — in
        ``queue`` (in process: every job), of ``job_type`` if given, oldest first.

        Raises:
            InvalidJob: ``queue`` is not a queue name.
            BackendUnavailable: Redis could not be reached.
        """
        if queue is not None and (problem := name_problem(queue, "queue")) is not None:
            raise InvalidJob(problem)
        self._ensure_open()
        return self._backend.waiting_jobs(queue, job_type)

    def metrics(self) -> MetricsSnapshot:
        """A consistent snapshot of this dispatcher's counters."""
        return self._counters.snapshot()

    def detached_running(self) -> int:
        """Handlers detached after their timeout whose threads still run."""
        return self._engine.live_detached

    def running_jobs(self) -> list[Job]:
        """The jobs whose attempts run on this dispatcher's workers now."""
        return self._engine.running_jobs()

    def pending(self) -> int:
        """Unfinished jobs known to this dispatcher's backend."""
        return self._backend.pending()

    def join(self, timeout: float | timedelta | None = None) -> bool:
        """Wait until no unfinished job remains (including scheduled retries).

        Returns:
            True when idle, False if ``timeout`` seconds passed first.
        """
        limit = None if timeout is None else seconds(timeout, "timeout")
        return self._engine.wait_idle(limit)

    # -- stop ------------------------------------------------------------------------------
    def stop(self, timeout: float | timedelta | None = None) -> StopReport:
        """Stop admission, drain ready jobs until the deadline, let running attempts finish.

        Args:
            timeout: seconds to wait; ``None`` waits for the drain to complete.

        Returns:
            A `StopReport`; never raises because work was left.
        """
        limit = None if timeout is None else seconds(timeout, "timeout")
        # One shutdown: a concurrent caller waits for it and gets the same report.
        with self._stopping:
            if self._stop_report is None:
                self._stop_report = self._shutdown(limit)
            return self._stop_report

    def _shutdown(self, limit: float | None) -> StopReport:
        deadline = None if limit is None else time.monotonic() + limit
        with self._lifecycle:  # closed first: a concurrent start() starts no ticker now
            self._closed = True
            started = self._started
        # Within the stop's deadline (a step under way ends soon; a relay's batch cut short is
        # claimed again later: its rows stay until a commit deletes them).
        wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
        if self.ticker is not None:
            self.ticker.stop(wait)
        for relay in self.relays:
            relay.stop(wait)
        before = self._counters.snapshot().processed
        still_running = 0
        timed_out = False
        if started:
            self._engine.begin_stop()
            still_running = self._engine.join_workers(deadline)
            if still_running:
                timed_out = True
                self._engine.halt()
                still_running = self._engine.join_workers(time.monotonic())
        self._engine.watchdog.stop()
        # Also when never opened: a dispatcher used only for status or admin calls holds
        # connections (Redis) that must not be left to the garbage collector.
        left: list[Job] = self._backend.close(clean=not still_running)
        abandoned = left_pending = 0
        if left:
            if self._backend.durable:
                left_pending = len(left)
                logger.info("stopped with unfinished jobs kept in the backend count=%d", len(left))
            else:
                abandoned = len(left)
                for job in left:
                    logger.warning("job abandoned at stop id=%r type=%r", job.id, job.type)
        report = StopReport(
            finished=self._counters.snapshot().processed - before,
            abandoned=abandoned,
            left_pending=left_pending,
            still_running=still_running,
            timed_out=timed_out,
        )
        return report
