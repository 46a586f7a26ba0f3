"""The worker pool: runs attempts, classifies their outcome, records it through the backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from csjd_core.backends.base import AttemptError, Backend, Delivery
from csjd_core.config import EngineConfig
from csjd_core.context import JobContext
from csjd_core.engine.outcome import AttemptOutcome, OutcomeKind, decide
from csjd_core.engine.registry import HandlerRegistry
from csjd_core.engine.watchdog import Attempt, Watchdog
from csjd_core.errors import InvalidJob, PermanentError, describe_error, format_traceback
from csjd_core.hooks import HookRunner
from csjd_core.job import check_json, timeout_seconds
from csjd_core.limits import MAX_ERROR_TEXT, clip_text

if TYPE_CHECKING:
    from csjd_core.job import Job
from csjd_core.metrics import Counters, Tally

__all__ = ["Engine"]

logger = logging.getLogger("csjd_core.engine")

_IDLE_POLL = 1.0  # seconds an idle worker blocks in fetch before re-checking for stop
_SUCCEEDED = OutcomeKind.SUCCEEDED


class Worker:
    """One worker thread's state. A detached worker's thread exits after its handler."""

    __slots__ = ("busy", "detached", "id", "loop", "slot", "tally", "thread")

    def __init__(self, slot: int, worker_id: str, tally: Tally) -> None:
        self.slot = slot
        self.id = worker_id
        self.tally = tally
        self.busy = False  # between fetching a delivery and counting its outcome
        self.detached = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def run_coroutine(self, coro: Any, attempt: Attempt | None, ctx: JobContext) -> Any:
        """Run a coroutine to completion on this worker's own event loop; a cancellation of
        ``ctx`` (its job cancelled) cancels its task, as its timeout does."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.new_event_loop()
        task = loop.create_task(coro)
        if attempt is not None:
            attempt.loop = loop
            attempt.task = task
        ctx._stop = partial(_cancel_task, loop, task)
        if ctx.cancelled:  # the deadline passed, or the job was cancelled, before the task existed
            task.cancel()
        try:
            return loop.run_until_complete(task)
        finally:
            ctx._stop = None

    def close_loop(self) -> None:
        """Close the event loop, if one was created."""
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


def _lag(delivery: Delivery) -> float | None:
    """Seconds from the delivery's due time to its handler's start (never negative: a job
    run early, as immediate mode does, or a queue clock that stepped back, counts 0)."""
    due, started = delivery.due, delivery.started
    if due is None or started is None:
        return None
    return max(0.0, started - due)


def _attempt_fields(
    queue: str | None,
    delivery: Delivery,
    kind: OutcomeKind,
    terminal: bool,
    duration: float | None,
    exc: BaseException | None = None,
    retry_in: float | None = None,
) -> dict[str, Any]:
    """The ``extra`` fields of an attempt's log record (`csjd_core.logs.ATTEMPT_FIELDS`);
    ``queue``: the backend's default queue, for a job that names none."""
    job = delivery.job
    error_class = None
    if exc is not None:
        cls = type(exc)
        error_class = (
            cls.__qualname__
            if cls.__module__ == "builtins"
            else f"{cls.__module__}.{cls.__qualname__}"
        )
    return {
        "job_id": job.id,
        "job_type": job.type,
        "queue": job.queue or queue,
        "attempt": delivery.attempt,
        "max_attempts": delivery.max_attempts,
        "outcome": kind.value,
        "terminal": terminal,
        "duration": duration,
        "lag": _lag(delivery),
        "error_class": error_class,
        "retry_in": retry_in,
    }


def _cancel_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` from any thread (the loop may have closed meanwhile)."""
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)


class Engine:
    """Runs jobs from a backend on a bounded pool of worker threads."""

    def __init__(
        self,
        backend: Backend,
        registry: HandlerRegistry,
        config: EngineConfig,
        *,
        hooks: HookRunner,
        counters: Counters,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.workers = config.workers
        self.max_detached = config.max_detached_handlers
        self.default_timeout = config.default_timeout
        self.max_result_bytes = config.max_result_bytes
        self.retry_policy = config.retry
        self.hooks = hooks
        self.counters = counters
        self.worker_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self.watchdog = Watchdog(self._on_overrun)
        self._watchdog_tally = counters.tally()  # written only by the watchdog thread
        self.live_detached = 0
        self._workers: list[Worker] = []
        self._generation = 0
        self._stopping = False  # drain: fetch only what is ready, then exit
        self._halt = False  # deadline passed: exit after the current attempt
        # Orders detach spawns against stop: once `_stopping` is set under it, no new worker
        # appears, and a worker spawned before is started before stop() can join it.
        self._spawn_lock = threading.Lock()
        self._idle_cond = threading.Condition()
        self._joiners = 0
        #: The context of each attempt running in this process, by job id: a cancellation the
        #: backend reports (`on_cancel`) is told to it at once.
        self.running: dict[str, JobContext] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker threads."""
        for slot in range(self.workers):
            self._spawn(slot)

    def _spawn(self, slot: int) -> Worker:
        self._generation += 1
        worker = Worker(
            slot, f"{self.worker_prefix}:w{slot}.{self._generation}", self.counters.tally()
        )
        thread = threading.Thread(
            target=self._worker_main, args=(worker,), name=f"csjd-worker-{slot}", daemon=True
        )
        worker.thread = thread
        if slot < len(self._workers):
            self._workers[slot] = worker
        else:
            self._workers.append(worker)
        thread.start()
        return worker

    def begin_stop(self) -> None:
        """Stop fetching new work once the ready queue is empty."""
        with self._spawn_lock:
            self._stopping = True
        self.backend.wake()

    def halt(self) -> None:
        """Stop fetching at once; running attempts finish on their own."""
        with self._spawn_lock:
            self._stopping = True
            self._halt = True
        self.backend.wake()

    def join_workers(self, deadline: float | None) -> int:
        """Wait for worker threads until ``deadline``; return how many are still alive."""
        for worker in list(self._workers):
            thread = worker.thread
            if thread is None:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return sum(1 for w in self._workers if w.thread is not None and w.thread.is_alive())

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until the backend has no unfinished job and every outcome is counted.

        Returns:
            False if ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle_cond:
            self._joiners += 1
            try:
                while self.backend.pending() or self._any_busy():
                    remaining = 0.05 if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle_cond.wait(min(remaining, 0.05))
                return True
            finally:
                self._joiners -= 1

    # -- the worker loop -------------------------------------------------------------------
    def _worker_main(self, worker: Worker) -> None:
        hooks = self.hooks
        if hooks.active:
            hooks.call("worker_started", worker.id)
        fetch = self.backend.fetch
        try:
            while not self._halt:
                try:
                    delivery = fetch(0.0 if self._stopping else _IDLE_POLL)
                except Exception:  # the backend failed (Redis down...): never lose the worker
                    logger.exception("fetch failed; retrying worker=%s", worker.id)
                    time.sleep(_IDLE_POLL)
                    continue
                if delivery is None:
                    if self._stopping:
                        break
                    continue
                worker.busy = True
                try:
                    self.attempt(delivery, worker)
                finally:
                    worker.busy = False
                if self._joiners:
                    self._notify_idle()
                if worker.detached:
                    break
        finally:
            worker.close_loop()
            self.counters.retire(worker.tally)
            if worker.detached:
                with self.counters.lock:
                    self.live_detached -= 1
            if hooks.active:
                hooks.call("worker_stopped", worker.id)

    def attempt(self, delivery: Delivery, worker: Worker) -> None:
        """`run_attempt`, and if its outcome cannot be recorded, fail the job (or, failing
        that, release the delivery): a delivery is never kept without an outcome."""
        try:
            self.run_attempt(delivery, worker)
        except Exception as exc:
            self._unrecorded(delivery, exc, worker.tally)

    def _unrecorded(self, delivery: Delivery, exc: Exception, tally: Tally) -> None:
        job = delivery.job
        logger.exception(
            "could not record the outcome of an attempt; failing the job id=%r type=%r attempt=%d",
            job.id,
            job.type,
            delivery.attempt,
        )
        error = AttemptError(
            "internal",
            f"the outcome of attempt {delivery.attempt} could not be recorded: "
            + describe_error(exc),
            format_traceback(exc),
        )
        try:
            self._record_failure(delivery, error, None, tally)
            return
        except Exception:
            logger.exception("could not fail the job either; releasing it id=%r", job.id)
        try:
            self.backend.release(delivery)
        except Exception:
            logger.exception("could not release the job id=%r", job.id)

    def run_attempt(self, delivery: Delivery, worker: Worker) -> None:
        """Run one attempt and record its outcome (unless it was detached meanwhile)."""
        job = delivery.job
        backend = self.backend
        running = self.running
        # The backend and the delivery: where ctx.set_progress writes.
        ctx = JobContext(job.id, delivery.attempt, None, job.queue, backend, delivery)
        # Registered before `started` reads the job's cancellation: a cancel from now on finds
        # this context (`on_cancel`), or `started` (or else the outcome) finds the cancel.
        running[job.id] = ctx
        try:
            reason = backend.started(delivery, worker.id) or delivery.cancel
        except BaseException:
            self._unregister(ctx)
            raise
        if reason:  # cancelled after it was fetched: the handler never runs
            self._unregister(ctx)
            self._record_cancelled(delivery, reason, None, None, None, worker.tally, ran=False)
            return
        handler = self.registry.handlers.get(job.type)
        if handler is None:
            # Only reachable in distributed mode: in-process admission rejects unknown types.
            self._unregister(ctx)
            self._record_failure(
                delivery,
                AttemptError("unknown_type", f"no handler registered for job type {job.type!r}"),
                None,
                worker.tally,
            )
            return
        timeout = job.timeout
        if timeout is None:
            timeout = self.default_timeout
        elif type(timeout) is not float:
            timeout = timeout_seconds(timeout)  # admission checked it
        attempt: Attempt | None = None
        # The attempt's start: its timeout, its duration and its lag count from here.
        started = delivery.started = time.monotonic()
        if timeout is not None:
            ctx.deadline = started + timeout
            attempt = Attempt(delivery, ctx, worker)
            self.watchdog.watch(attempt)
        hooks = self.hooks
        if hooks.active:
            hooks.call("before_process", job, ctx)
        result: Any = None
        error: BaseException | None = None
        try:
            if handler.is_async:
                result = worker.run_coroutine(handler.fn(ctx, job), attempt, ctx)
            else:
                result = handler.fn(ctx, job)
                if result is not None and hasattr(result, "__await__"):
                    result = worker.run_coroutine(result, attempt, ctx)
        except BaseException as exc:
            error = exc
        duration = time.monotonic() - started
        if hooks.active:  # every before_process gets its after_process, detached or not
            hooks.call("after_process", job, result, error)
        if attempt is not None:
            attempt.done = True
            with self.counters.lock:
                if attempt.settled:  # detached: its outcome was already recorded
                    logger.warning(
                        "detached handler finished; result discarded job id=%r type=%r attempt=%d",
                        job.id,
                        job.type,
                        delivery.attempt,
                    )
                    return
                attempt.settled = True
        # Not detached: this attempt still holds the job, so no newer attempt registered under
        # its id (a detached one is unregistered by `_on_overrun`).
        running.pop(job.id, None)
        reason = delivery.cancel
        if reason is None and ctx.cancel_reason is not None and ctx.cancel_reason != "timed_out":
            reason = ctx.cancel_reason
        if reason is not None:
            # Cancelled while it ran: recorded so whether it stopped (raised) or finished (its
            # result kept); never retried.
            failure = None
            if error is not None:
                failure = self._classify(error, ctx)
            elif result is not None and not self._result_ok(delivery, result):
                result = None
            self._record_cancelled(
                delivery, reason, failure, error, result, worker.tally, duration=duration
            )
            return
        if error is None and not ctx.timed_out:
            if result is not None:
                try:
                    check_json(
                        result,
                        f"return value of job {job.id!r}",
                        max_bytes=self.max_result_bytes,
                        limit_name=f"max_result_bytes={self.max_result_bytes}",
                    )
                except InvalidJob as exc:
                    self._record_failure(
                        delivery,
                        AttemptError("invalid_result", str(exc)),
                        None,
                        worker.tally,
                        duration=duration,
                    )
                    return
            if backend.succeed_nowait(delivery, result) is not False:
                if delivery.cancel:  # a cancellation came first: the backend recorded that
                    self._recorded_cancel(delivery, worker.tally, result=result, duration=duration)
                    return
                # `_recorded` for a success, inlined: this is the hot path.
                tally = worker.tally
                tally.seq += 1
                tally.processed += 1
                tally.succeeded += 1
                tally.seq += 1
                # DEBUG: at INFO, a line per job would cost a busy worker more than its jobs
                # (docs/observability.md, "Structured logs"); failures are WARNING and ERROR.
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "job succeeded id=%r type=%r attempt=%d/%d duration=%.3fs",
                        job.id,
                        job.type,
                        delivery.attempt,
                        delivery.max_attempts,
                        duration,
                        extra=_attempt_fields(
                            self.backend.default_queue, delivery, _SUCCEEDED, True, duration
                        ),
                    )
                if hooks.wants_outcomes:
                    hooks.outcome(
                        AttemptOutcome(
                            job=job,
                            kind=_SUCCEEDED,
                            terminal=True,
                            attempt=delivery.attempt,
                            max_attempts=delivery.max_attempts,
                            result=result,
                            duration=duration,
                            lag=_lag(delivery),
                        )
                    )
            else:
                self._lost_claim(delivery)
            return
        self._record_failure(
            delivery, self._classify(error, ctx), error, worker.tally, duration=duration
        )

    def _result_ok(self, delivery: Delivery, result: Any) -> bool:
        """Whether a cancelled attempt's result can be kept (JSON within the limit)."""
        try:
            check_json(result, "result", max_bytes=self.max_result_bytes)
        except InvalidJob:
            logger.warning(
                "result of a cancelled job discarded: not JSON or too large id=%r",
                delivery.job.id,
            )
            return False
        return True

    def running_jobs(self) -> list[Job]:
        """The jobs whose attempts run now (registered for cancellation; a scrape's view)."""
        return [
            ctx._delivery.job  # the engine made each context with its delivery
            for ctx in list(self.running.values())
            if ctx._delivery is not None
        ]

    def _unregister(self, ctx: JobContext) -> None:
        running = self.running
        if running.get(ctx.job_id) is ctx:
            del running[ctx.job_id]

    # -- cancellation (the backend tells; see `Backend.cancel`) ----------------------------
    def on_cancel(self, job_id: str, reason: str) -> None:
        """A job was cancelled: cancel the context of its attempt running here, if any."""
        ctx = self.running.get(job_id)
        if ctx is not None:
            ctx.cancel(reason=reason)
            logger.info("cancellation told to the running attempt id=%r reason=%s", job_id, reason)

    def cancelled_unstarted(self, count: int) -> None:
        """Count jobs the backend ended cancelled before an attempt began."""
        with self.counters.lock:
            self.counters.cancelled += count

    def success_cancelled(self, delivery: Delivery) -> None:
        """A success counted when it was queued was recorded as a cancellation."""
        with self.counters.lock:
            self.counters.cancelled_successes += 1

    def _record_cancelled(
        self,
        delivery: Delivery,
        reason: str,
        error: AttemptError | None,
        exc: BaseException | None,
        result: Any,
        tally: Tally,
        *,
        ran: bool = True,
        duration: float | None = None,
    ) -> None:
        """Record an attempt whose job was cancelled (`Backend.cancelled`)."""
        if not self.backend.cancelled(delivery, reason, error, result):
            self._lost_claim(delivery)
            return
        delivery.cancel = delivery.cancel or reason
        self._recorded_cancel(
            delivery,
            tally,
            error=error,
            exception=exc,
            result=result,
            ran=ran,
            duration=duration,
        )

    def _recorded_cancel(
        self,
        delivery: Delivery,
        tally: Tally,
        *,
        error: AttemptError | None = None,
        exception: BaseException | None = None,
        result: Any = None,
        ran: bool = True,
        duration: float | None = None,
    ) -> None:
        """The outcome event of an attempt recorded as cancelled."""
        job = delivery.job
        logger.info(
            "job cancelled id=%r type=%r attempt=%d reason=%s ran=%s",
            job.id,
            job.type,
            delivery.attempt,
            delivery.cancel,
            ran,
            extra=_attempt_fields(
                self.backend.default_queue,
                delivery,
                OutcomeKind.CANCELLED,
                True,
                duration,
                exception,
            ),
        )
        tally.seq += 1
        if ran:
            tally.processed += 1
        tally.cancelled += 1
        tally.seq += 1
        hooks = self.hooks
        if hooks.wants_outcomes:
            hooks.outcome(
                AttemptOutcome(
                    job=job,
                    kind=OutcomeKind.CANCELLED,
                    terminal=True,
                    attempt=delivery.attempt,
                    max_attempts=delivery.max_attempts,
                    error=error,
                    exception=exception,
                    result=result,
                    duration=duration,
                    lag=_lag(delivery) if ran else None,
                )
            )

    def _classify(self, error: BaseException | None, ctx: JobContext) -> AttemptError:
        """What an attempt's error is, as text that never fails to build (see
        `describe_error`) and never exceeds the limits."""
        if isinstance(error, PermanentError):
            text = error.args[0] if error.args and isinstance(error.args[0], str) else ""
            return AttemptError(
                "permanent", clip_text(text) or describe_error(error), format_traceback(error)
            )
        if ctx.timed_out:
            message = f"attempt {ctx.attempt} timed out"
            if error is not None and not isinstance(error, asyncio.CancelledError):
                message += f" ({describe_error(error)})"
            return AttemptError(
                "timeout", message, format_traceback(error) if error is not None else None
            )
        assert error is not None
        kind = "error" if isinstance(error, Exception) else "panic"
        return AttemptError(kind, describe_error(error), format_traceback(error))

    # -- outcomes (also used by the watchdog when it detaches) -----------------------------
    def _record_failure(
        self,
        delivery: Delivery,
        error: AttemptError,
        exc: BaseException | None,
        tally: Tally,
        *,
        duration: float | None = None,
    ) -> None:
        """Record a failed attempt as `decide` says: a terminal failure or a retry.
        ``duration``: seconds its handler ran (``None`` if it never ran)."""
        job = delivery.job
        kind, terminal = decide(delivery, error)
        # The exception itself (for log handlers such as Sentry's) unless its text had to be
        # clipped: then the clipped traceback, so one huge message cannot flood the logs.
        clipped = exc is not None and len(error.message) > MAX_ERROR_TEXT
        trace = f"\n{error.traceback}" if clipped and error.traceback else ""
        exc_info = None if clipped else exc
        delay = None
        if terminal:
            ok = self.backend.fail(delivery, error)
            if ok and not delivery.cancel:
                logger.error(
                    "job failed id=%r type=%r attempt=%d/%d kind=%s error=%s%s",
                    job.id,
                    job.type,
                    delivery.attempt,
                    delivery.max_attempts,
                    error.kind,
                    error.message,
                    trace,
                    exc_info=exc_info,
                    extra=_attempt_fields(
                        self.backend.default_queue, delivery, kind, terminal, duration, exc
                    ),
                )
        else:
            delay = self.retry_policy.delay(delivery.attempt)
            ok = self.backend.retry(delivery, error, delay)
            if ok and not delivery.cancel:
                log = logger.error if kind is OutcomeKind.PANICKED else logger.warning
                log(
                    "job retry id=%r type=%r attempt=%d/%d kind=%s delay=%.3f error=%s%s",
                    job.id,
                    job.type,
                    delivery.attempt,
                    delivery.max_attempts,
                    error.kind,
                    delay,
                    error.message,
                    trace,
                    exc_info=exc_info,
                    extra=_attempt_fields(
                        self.backend.default_queue, delivery, kind, terminal, duration, exc, delay
                    ),
                )
        if not ok:
            self._lost_claim(delivery)
            return
        if delivery.cancel:  # the backend recorded a cancellation that came first
            self._recorded_cancel(delivery, tally, error=error, exception=exc, duration=duration)
            return
        self._recorded(
            delivery,
            kind,
            terminal,
            tally,
            error=error,
            exception=exc,
            retry_in=delay,
            duration=duration,
        )

    def _recorded(
        self,
        delivery: Delivery,
        kind: OutcomeKind,
        terminal: bool,
        tally: Tally,
        *,
        error: AttemptError,
        exception: BaseException | None,
        retry_in: float | None,
        duration: float | None,
    ) -> None:
        """The outcome event of a recorded failed attempt: counted in the metrics, then told
        to the hooks that want it (built only for them). Successes: see `run_attempt`."""
        tally.seq += 1
        tally.processed += 1
        if terminal:
            tally.failed += 1
        else:
            tally.retried += 1
        if kind is OutcomeKind.PANICKED:
            tally.panics += 1
        tally.seq += 1
        hooks = self.hooks
        if hooks.wants_outcomes:
            hooks.outcome(
                AttemptOutcome(
                    job=delivery.job,
                    kind=kind,
                    terminal=terminal,
                    attempt=delivery.attempt,
                    max_attempts=delivery.max_attempts,
                    error=error,
                    exception=exception,
                    retry_in=retry_in,
                    duration=duration,
                    lag=None if duration is None else _lag(delivery),
                )
            )

    def _any_busy(self) -> bool:
        return any(w.busy and not w.detached for w in list(self._workers))

    def _notify_idle(self) -> None:
        try:
            idle = not self.backend.pending() and not self._any_busy()
        except Exception:  # a join() is waiting; it will poll again
            return
        if idle:
            with self._idle_cond:
                self._idle_cond.notify_all()

    def success_lost(self, delivery: Delivery) -> None:
        """A success counted when it was queued was refused when the backend recorded it."""
        with self.counters.lock:
            self.counters.lost_successes += 1
        self._lost_claim(delivery)

    def _lost_claim(self, delivery: Delivery) -> None:
        logger.warning(
            "attempt lost its claim; outcome discarded id=%r type=%r attempt=%d",
            delivery.job.id,
            delivery.job.type,
            delivery.attempt,
        )

    def _on_overrun(self, attempt: Attempt) -> bool:
        """Detach an attempt running past deadline + grace if the budget allows.

        Returns:
            True to be asked again later (the budget may free up).
        """
        if not self.max_detached or self._halt:
            return False
        with self.counters.lock:
            if attempt.settled or attempt.done:
                return False
            if self.live_detached >= self.max_detached:
                return True
            attempt.settled = True
            self._unregister(attempt.ctx)
            # Under the same lock as `settled`: a handler returning right now must find its
            # worker detached, or that worker would go on to take the next job.
            worker = attempt.worker
            worker.detached = True
            self.live_detached += 1
            self.counters.detached += 1
        job = attempt.delivery.job
        logger.warning(
            "handler ignored its timeout; detached id=%r type=%r attempt=%d worker=%s",
            job.id,
            job.type,
            attempt.delivery.attempt,
            worker.id,
        )
        with self._spawn_lock:
            if not self._stopping:
                self._spawn(worker.slot)
        delivery = attempt.delivery
        started = delivery.started
        self._record_failure(
            delivery,
            AttemptError("timeout", f"attempt {delivery.attempt} timed out; handler detached"),
            None,
            self._watchdog_tally,
            duration=None if started is None else time.monotonic() - started,
        )
        return False
