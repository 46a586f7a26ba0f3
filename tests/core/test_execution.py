"""Execution semantics of the engine (SPEC 2, "Execution"), through the in-process Dispatcher.

Retries and backoff, permanent errors, panics, timeouts, detach, async handlers, the
concurrency bound. Admission, status, hooks and stop are in test_dispatcher.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from csjd_core import (
    Dispatcher,
    Hooks,
    Job,
    JobContext,
    JobState,
    JobTimeout,
    MetricsSnapshot,
    PermanentError,
    RetryPolicy,
    permanent,
)
from csjd_core.testing import wait_until

from core_support import DEADLINE, Harness, state_of, wait_state

#: The spec's bound on how long after the deadline a detach may take, plus scheduling slack.
DETACH_BOUND = 0.25 + 0.25


def settle(d: Dispatcher, **expected: int) -> MetricsSnapshot:
    """Wait until the named counters reach exactly these values; return that snapshot.

    A worker counts an outcome just after recording it in the backend, so a state seen through
    status() can precede its count by a moment (see test_metrics_are_final_when_join_returns).
    """

    def reached() -> MetricsSnapshot | None:
        m = d.metrics()
        return m if all(getattr(m, k) == v for k, v in expected.items()) else None

    return wait_until(
        reached, DEADLINE, message=lambda: f"metrics {d.metrics()} never reached {expected}"
    )


def csjd_threads() -> set[threading.Thread]:
    """CSJD's live threads (workers, watchdog). Tests compare against a set taken at their
    start: threads of earlier tests may still be exiting, never starting."""
    return {t for t in threading.enumerate() if t.name.startswith("csjd-")}


class Attempts:
    """Records (job id, attempt, thread name, monotonic time) of every handler call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, int, str, float]] = []

    def record(self, ctx: JobContext, job: Job) -> None:
        with self.lock:
            self.calls.append(
                (job.id, ctx.attempt, threading.current_thread().name, time.monotonic())
            )

    def of(self, job_id: str) -> list[int]:
        with self.lock:
            return [c[1] for c in self.calls if c[0] == job_id]


# -- retries -------------------------------------------------------------------------------


def test_failed_attempts_are_retried_until_success(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="csjd_core")
    d = harness.dispatcher(workers=1)
    seen = Attempts()

    def flaky(ctx: JobContext, job: Job) -> str:
        seen.record(ctx, job)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return "third time lucky"

    d.register_handler("t", flaky)
    d.start()
    d.submit(Job("f", "t"))
    status = wait_state(d, "f", JobState.SUCCEEDED)
    assert seen.of("f") == [1, 2, 3]
    assert status.attempts == 3
    assert status.result == "third time lucky"
    settle(d, processed=3, retried=2, succeeded=1, failed=0, panics=0)
    retries = [r for r in caplog.records if r.getMessage().startswith("job retry")]
    assert [r.levelno for r in retries] == [logging.WARNING] * 2
    assert "id='f' type='t' attempt=1/3 kind=error" in retries[0].getMessage()
    assert "ConnectionError: attempt 1 failed" in retries[0].getMessage()


def test_attempts_exhausted_is_a_logged_failure(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="csjd_core")
    d = harness.dispatcher(workers=1)
    seen = Attempts()

    def always(ctx: JobContext, job: Job) -> None:
        seen.record(ctx, job)
        raise RuntimeError("still broken")

    d.register_handler("t", always)
    d.start()
    d.submit(Job("f", "t", max_attempts=4))
    status = wait_state(d, "f", JobState.FAILED)
    assert seen.of("f") == [1, 2, 3, 4]
    assert (status.attempts, status.max_attempts) == (4, 4)
    assert status.last_error == "RuntimeError: still broken"
    # The worker logs just after recording the failure: wait for the record.
    failed = wait_until(
        lambda: [r for r in caplog.records if r.getMessage().startswith("job failed")],
        DEADLINE,
        message="the failure was never logged",
    )
    assert len(failed) == 1
    assert failed[0].levelno == logging.ERROR
    assert failed[0].exc_info is not None
    assert failed[0].exc_info[0] is RuntimeError
    assert "attempt=4/4" in failed[0].getMessage()
    settle(d, processed=4, retried=3, failed=1)


def test_backoff_waits_in_the_heap_not_in_a_worker(harness: Harness) -> None:
    """With one worker, a job waiting 0.3 s for its retry does not hold that worker."""
    d = harness.dispatcher(workers=1, retry=RetryPolicy(base_delay=0.3, max_delay=0.3, jitter=None))
    seen = Attempts()

    def handler(ctx: JobContext, job: Job) -> None:
        seen.record(ctx, job)
        if job.id == "slow-retry" and ctx.attempt == 1:
            raise RuntimeError("later")

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("slow-retry", "t"))
    waiting = wait_state(d, "slow-retry", JobState.SCHEDULED)
    assert waiting.run_at is not None
    assert waiting.last_error == "RuntimeError: later"
    for i in range(20):
        d.submit(Job(f"other-{i}", "t"))
    for i in range(20):
        wait_state(d, f"other-{i}", JobState.SUCCEEDED)
    assert state_of(d, "slow-retry") is JobState.SCHEDULED  # all 20 ran during its backoff
    wait_state(d, "slow-retry", JobState.SUCCEEDED)
    first, second = [c[3] for c in seen.calls if c[0] == "slow-retry"]
    assert second - first >= 0.3 - 0.01


def test_many_retries_create_no_threads(harness: Harness) -> None:
    before = csjd_threads()
    baseline = threading.active_count()
    d = harness.dispatcher(workers=3, default_max_attempts=5, max_pending_jobs=100)
    counts: list[int] = []

    def failing(ctx: JobContext, job: Job) -> None:
        counts.append(threading.active_count())
        raise RuntimeError("nope")

    d.register_handler("t", failing)
    d.start()
    d.submit_batch([Job(f"r{i}", "t") for i in range(40)])
    assert d.join(DEADLINE)
    settle(d, processed=200, retried=160, failed=40)
    assert len(counts) == 200
    assert max(counts) <= baseline + 3, f"threads grew during retries: {max(counts)} > {baseline}+3"
    assert len(csjd_threads() - before) == 3


@pytest.mark.parametrize(
    "error",
    [permanent(ValueError("bad input")), PermanentError("no such user"), permanent("plain text")],
    ids=["permanent(exc)", "PermanentError", "permanent(str)"],
)
def test_permanent_errors_are_not_retried(harness: Harness, error: PermanentError) -> None:
    d = harness.dispatcher(workers=1)
    seen = Attempts()

    def handler(ctx: JobContext, job: Job) -> None:
        seen.record(ctx, job)
        raise error

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("p", "t", max_attempts=5))
    status = wait_state(d, "p", JobState.FAILED)
    assert seen.of("p") == [1]
    assert status.attempts == 1
    assert status.last_error == str(error)
    settle(d, processed=1, retried=0, failed=1)


def test_permanent_keeps_the_cause() -> None:
    cause = ValueError("bad input")
    err = permanent(cause)
    assert isinstance(err, PermanentError)
    assert err.__cause__ is cause
    assert err.cause is cause
    assert str(err) == "ValueError: bad input"
    assert permanent(err) is err


def test_a_subclass_of_permanent_error_is_permanent(harness: Harness) -> None:
    class NotFound(PermanentError):
        pass

    d = harness.dispatcher(workers=1)
    d.register_handler("t", lambda ctx, job: (_ for _ in ()).throw(NotFound("gone")))
    d.start()
    d.submit(Job("p", "t"))
    assert wait_state(d, "p", JobState.FAILED).attempts == 1


# -- panics --------------------------------------------------------------------------------


class CustomPanic(BaseException):
    """A BaseException that is not an Exception."""


@pytest.mark.parametrize(
    "panic",
    [SystemExit(2), KeyboardInterrupt(), CustomPanic("custom"), GeneratorExit()],
    ids=["SystemExit", "KeyboardInterrupt", "custom-BaseException", "GeneratorExit"],
)
def test_panics_are_captured_counted_logged_and_retried(
    harness: Harness, caplog: pytest.LogCaptureFixture, panic: BaseException
) -> None:
    caplog.set_level(logging.ERROR, logger="csjd_core")
    baseline = threading.active_count()
    d = harness.dispatcher(workers=1)
    seen = Attempts()

    def handler(ctx: JobContext, job: Job) -> str:
        seen.record(ctx, job)
        if job.id == "panicky" and ctx.attempt == 1:
            raise panic
        return "ok"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("panicky", "t"))
    status = wait_state(d, "panicky", JobState.SUCCEEDED)
    assert status.attempts == 2
    settle(d, panics=1, retried=1, processed=2, succeeded=1, failed=0)
    logged = [r for r in caplog.records if "kind=panic" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is panic
    # The worker lives on: the same thread runs later jobs, and no thread was added.
    for i in range(5):
        d.submit(Job(f"after-{i}", "t"))
        wait_state(d, f"after-{i}", JobState.SUCCEEDED)
    threads = {c[2] for c in seen.calls}
    assert len(threads) == 1
    assert threading.active_count() <= baseline + 1


def test_a_job_that_panics_every_time_fails_with_panics_counted(harness: Harness) -> None:
    before = csjd_threads()
    d = harness.dispatcher(workers=2)
    d.register_handler("t", lambda ctx, job: (_ for _ in ()).throw(SystemExit(1)))
    d.start()
    d.submit_batch([Job(f"p{i}", "t", max_attempts=2) for i in range(5)])
    assert d.join(DEADLINE)
    for i in range(5):
        status = d.status(f"p{i}")
        assert status.state is JobState.FAILED
        assert status.last_error == "SystemExit: 1"
    settle(d, panics=10, processed=10, retried=5, failed=5)
    assert len(csjd_threads() - before) == 2


# -- timeouts ------------------------------------------------------------------------------


def test_cooperative_handler_times_out_and_is_retried(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    observed: list[tuple[int, bool, bool, float | None]] = []

    def patient(ctx: JobContext, job: Job) -> str:
        assert ctx.deadline is not None
        if ctx.attempt == 1:
            cancelled = ctx.wait(DEADLINE)  # returns True as soon as the deadline passes
            observed.append((ctx.attempt, cancelled, ctx.cancelled, ctx.remaining()))
            return "too late"
        return "in time"

    d.register_handler("t", patient)
    d.start()
    started = time.monotonic()
    d.submit(Job("coop", "t", timeout=0.05))
    status = wait_state(d, "coop", JobState.SUCCEEDED)
    assert observed == [(1, True, True, 0.0)]
    assert time.monotonic() - started < 2.0
    assert status.attempts == 2
    assert status.result == "in time"  # the timed-out attempt's return value was not used
    assert status.last_error == "attempt 1 timed out"
    settle(d, processed=2, retried=1, succeeded=1, panics=0, detached=0)


def test_raise_if_cancelled_is_a_timeout_failure(harness: Harness) -> None:
    d = harness.dispatcher(workers=1, default_timeout=0.05)

    def checks(ctx: JobContext, job: Job) -> None:
        ctx.wait(DEADLINE)
        ctx.raise_if_cancelled()

    d.register_handler("t", checks)
    d.start()
    d.submit(Job("c", "t", max_attempts=1))  # default_timeout applies
    status = wait_state(d, "c", JobState.FAILED)
    assert status.last_error is not None
    assert status.last_error.startswith("attempt 1 timed out (JobTimeout:")
    settle(d, panics=0)


def test_wait_returns_false_when_the_time_elapsed() -> None:
    ctx = JobContext("j", 1, deadline=time.monotonic() + 10)
    assert ctx.wait(0.001) is False
    assert not ctx.cancelled
    ctx.raise_if_cancelled()
    ctx.cancel()
    assert ctx.wait(10) is True
    with pytest.raises(JobTimeout):
        ctx.raise_if_cancelled()


def test_timeout_counts_from_the_handler_start_not_from_submit(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    gate = harness.gate()

    def handler(ctx: JobContext, job: Job) -> None:
        if job.id == "first":
            gate.wait(DEADLINE)
        elif ctx.wait(0.01):
            raise AssertionError("cancelled early: the deadline started at submit")

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("first", "t"))
    wait_state(d, "first", JobState.RUNNING)
    submitted = time.monotonic()
    d.submit(Job("second", "t", timeout=0.1, max_attempts=1))
    # Let "second" wait in the queue for longer than its timeout.
    wait_until(lambda: time.monotonic() - submitted > 0.15, message="clock stalled")
    assert state_of(d, "second") is JobState.QUEUED
    gate.set()
    assert wait_state(d, "second", JobState.SUCCEEDED, JobState.FAILED).state is (
        JobState.SUCCEEDED
    )


def test_a_hung_handler_keeps_its_slot_without_a_detach_budget(harness: Harness) -> None:
    d = harness.dispatcher(workers=1, max_detached_handlers=0)
    gate = harness.gate()
    hung_cancelled = threading.Event()
    second_started = threading.Event()

    def handler(ctx: JobContext, job: Job) -> str:
        if job.id == "hung":
            wait_until(lambda: ctx.cancelled, DEADLINE, message="never cancelled")
            hung_cancelled.set()
            gate.wait(DEADLINE)  # ignores the cancellation
            return "late"
        second_started.set()
        return "second"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("hung", "t", timeout=0.05, max_attempts=1))
    d.submit(Job("second", "t"))
    assert hung_cancelled.wait(DEADLINE)
    # Well past deadline + detach grace: strict non-overlap keeps "second" waiting.
    assert not second_started.wait(0.4)
    assert state_of(d, "hung") is JobState.RUNNING
    assert state_of(d, "second") is JobState.QUEUED
    gate.set()
    status = wait_state(d, "hung", JobState.FAILED)
    assert status.last_error == "attempt 1 timed out"
    assert status.result is None  # "late" was not taken as a success
    wait_state(d, "second", JobState.SUCCEEDED)
    settle(d, detached=0)


def test_a_hung_handler_is_detached_and_its_slot_refilled(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    before = csjd_threads()
    caplog.set_level(logging.WARNING, logger="csjd_core")
    d = harness.dispatcher(workers=1, max_detached_handlers=1)
    gate = harness.gate()
    started_at: list[float] = []
    workers_seen: dict[str, str] = {}

    def handler(ctx: JobContext, job: Job) -> str:
        workers_seen[job.id] = threading.current_thread().name + str(threading.get_ident())
        if job.id == "hung":
            started_at.append(time.monotonic())
            gate.wait(DEADLINE)  # ignores the cancellation
            return "late result"
        return "fresh worker"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("hung", "t", timeout=0.05, max_attempts=1))
    d.submit(Job("next", "t"))
    status = wait_state(d, "hung", JobState.FAILED)
    detached_after = time.monotonic() - started_at[0]
    assert detached_after < 0.05 + DETACH_BOUND, f"detached only after {detached_after:.3f} s"
    assert status.last_error is not None
    assert "detached" in status.last_error
    assert wait_state(d, "next", JobState.SUCCEEDED).result == "fresh worker"
    assert workers_seen["next"] != workers_seen["hung"]  # a fresh thread in the same slot
    m = settle(d, detached=1, processed=2, failed=1, succeeded=1)

    gate.set()  # the detached handler returns now: its result must be discarded
    wait_until(
        lambda: any("result discarded" in r.getMessage() for r in caplog.records),
        DEADLINE,
        message="the detached handler's end was never logged",
    )
    after = d.status("hung")
    assert (after.state, after.result, after.last_error) == (
        JobState.FAILED,
        None,
        status.last_error,
    )
    assert after.finished_at == status.finished_at
    assert d.metrics() == m
    wait_until(
        lambda: len(csjd_threads() - before) <= 2, DEADLINE, message="detached thread never exited"
    )
    detach_logs = [r for r in caplog.records if "detached id='hung'" in r.getMessage()]
    assert len(detach_logs) == 1
    assert detach_logs[0].levelno == logging.WARNING


def test_detached_retry_runs_while_the_old_handler_still_hangs(harness: Harness) -> None:
    before = csjd_threads()
    d = harness.dispatcher(workers=1, max_detached_handlers=1)
    gate = harness.gate()
    seen = Attempts()

    def handler(ctx: JobContext, job: Job) -> str:
        seen.record(ctx, job)
        if ctx.attempt == 1:
            gate.wait(DEADLINE)
            return "late"
        return "second attempt"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("j", "t", timeout=0.05, max_attempts=2))
    status = wait_state(d, "j", JobState.SUCCEEDED)
    assert status.result == "second attempt"
    assert seen.of("j") == [1, 2]
    gate.set()
    wait_until(
        lambda: len(csjd_threads() - before) <= 2, DEADLINE, message="detached thread never exited"
    )
    assert d.status("j").result == "second attempt"
    settle(d, detached=1, retried=1, succeeded=1, processed=2)


def test_live_detached_handlers_never_exceed_the_budget(harness: Harness) -> None:
    gates = {"a": harness.gate(), "b": harness.gate()}
    both_running = threading.Barrier(2, timeout=DEADLINE)

    class FailedEvents(Hooks):
        def __init__(self) -> None:
            self.failed: list[str] = []
            self.changed = threading.Event()

        def after_failed(self, job: Job, error: str) -> None:
            self.failed.append(job.id)
            self.changed.set()

    hook = FailedEvents()
    d = harness.dispatcher(workers=2, max_detached_handlers=1, hooks=[hook])

    def handler(ctx: JobContext, job: Job) -> str:
        both_running.wait()
        gates[job.id].wait(DEADLINE)
        return "late"

    d.register_handler("t", handler)
    d.start()
    d.submit_batch([Job(name, "t", timeout=0.05, max_attempts=1) for name in ("a", "b")])
    wait_until(lambda: hook.failed, DEADLINE, message="neither hung handler was detached")
    first = hook.failed[0]
    other = "b" if first == "a" else "a"
    hook.changed.clear()
    # Several detach grace periods later the other one is still attached: the budget is used.
    assert not hook.changed.wait(0.4)
    assert hook.failed == [first]
    settle(d, detached=1)
    assert state_of(d, other) is JobState.RUNNING
    gates[first].set()  # the detached handler ends: the budget frees up
    wait_until(lambda: len(hook.failed) == 2, DEADLINE, message="second handler never detached")
    settle(d, detached=2)
    assert state_of(d, other) is JobState.FAILED


# -- async handlers ------------------------------------------------------------------------


def test_async_handler_success_and_its_own_event_loop(harness: Harness) -> None:
    d = harness.dispatcher(workers=2)
    loops: list[int] = []

    async def handler(ctx: JobContext, job: Job) -> dict[str, Any]:
        await asyncio.sleep(0)
        loops.append(id(asyncio.get_running_loop()))
        return {"doubled": job.payload * 2, "attempt": ctx.attempt}

    d.register_handler("t", handler)
    d.start()
    d.submit_batch([Job(f"a{i}", "t", i) for i in range(10)])
    assert d.join(DEADLINE)
    assert [d.status(f"a{i}").result for i in range(10)] == [
        {"doubled": i * 2, "attempt": 1} for i in range(10)
    ]
    assert 1 <= len(set(loops)) <= 2  # one loop per worker thread, reused


def test_async_callable_object_and_sync_function_returning_a_coroutine(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)

    class AsyncHandler:
        async def __call__(self, ctx: JobContext, job: Job) -> str:
            await asyncio.sleep(0)
            return "object"

    async def inner() -> str:
        await asyncio.sleep(0)
        return "returned coroutine"

    d.register_handler("obj", AsyncHandler())
    d.register_handler("sync", lambda ctx, job: inner())
    d.start()
    d.submit(Job("o", "obj"))
    d.submit(Job("s", "sync"))
    assert wait_state(d, "o", JobState.SUCCEEDED).result == "object"
    assert wait_state(d, "s", JobState.SUCCEEDED).result == "returned coroutine"


def test_async_handler_exception_is_a_retried_failure(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)

    async def handler(ctx: JobContext, job: Job) -> str:
        await asyncio.sleep(0)
        if ctx.attempt == 1:
            raise ValueError("async boom")
        return "recovered"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("a", "t"))
    status = wait_state(d, "a", JobState.SUCCEEDED)
    assert (status.attempts, status.result, status.last_error) == (
        2,
        "recovered",
        "ValueError: async boom",
    )
    settle(d, retried=1, panics=0)


def test_async_timeout_cancels_the_awaiting_coroutine(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    cancelled = threading.Event()

    async def handler(ctx: JobContext, job: Job) -> str:
        try:
            await asyncio.sleep(DEADLINE)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    d.register_handler("t", handler)
    d.start()
    started = time.monotonic()
    d.submit(Job("a", "t", timeout=0.05, max_attempts=2))
    status = wait_state(d, "a", JobState.FAILED)
    assert time.monotonic() - started < 1.5
    assert cancelled.is_set()
    assert status.attempts == 2
    assert status.last_error == "attempt 2 timed out"  # a timeout failure, not a panic
    settle(d, panics=0, retried=1, failed=1, detached=0)


def test_async_handler_that_swallows_cancellation_is_still_a_timeout(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)

    async def handler(ctx: JobContext, job: Job) -> str:
        try:
            await asyncio.sleep(DEADLINE)
        except asyncio.CancelledError:
            return "pretend success"
        return "never"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("a", "t", timeout=0.05, max_attempts=1))
    status = wait_state(d, "a", JobState.FAILED)
    assert status.result is None
    assert status.last_error == "attempt 1 timed out"


def test_a_blocking_coroutine_falls_under_detach(harness: Harness) -> None:
    before = csjd_threads()
    d = harness.dispatcher(workers=1, max_detached_handlers=1)
    gate = harness.gate()

    async def blocking(ctx: JobContext, job: Job) -> str:
        gate.wait(DEADLINE)  # blocks the worker's event loop: cancellation cannot land
        return "late"

    async def quick(ctx: JobContext, job: Job) -> str:
        return "quick"

    d.register_handler("block", blocking)
    d.register_handler("quick", quick)
    d.start()
    started = time.monotonic()
    d.submit(Job("b", "block", timeout=0.05, max_attempts=1))
    d.submit(Job("q", "quick"))
    status = wait_state(d, "b", JobState.FAILED)
    assert time.monotonic() - started < 0.05 + DETACH_BOUND + 0.5
    assert status.last_error is not None
    assert "detached" in status.last_error
    assert wait_state(d, "q", JobState.SUCCEEDED).result == "quick"
    settle(d, detached=1)
    gate.set()
    wait_until(
        lambda: len(csjd_threads() - before) <= 2, DEADLINE, message="detached thread never exited"
    )
    assert d.status("b").state is JobState.FAILED


# -- the concurrency bound -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_at_most_workers_handlers_run_at_once(harness: Harness, kind: str) -> None:
    workers = 4
    d = harness.dispatcher(workers=workers)
    lock = threading.Lock()
    running = 0
    peak = 0
    first_wave = threading.Barrier(workers, timeout=DEADLINE)

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    def sync_handler(ctx: JobContext, job: Job) -> None:
        enter()
        try:
            if job.payload < workers:
                first_wave.wait()  # proves `workers` handlers do run at the same time
            time.sleep(0.002)  # the work itself
        finally:
            leave()

    async def async_handler(ctx: JobContext, job: Job) -> None:
        enter()
        try:
            if job.payload < workers:
                await asyncio.to_thread(first_wave.wait)
            await asyncio.sleep(0.002)
        finally:
            leave()

    d.register_handler("t", sync_handler if kind == "sync" else async_handler)
    d.start()
    d.submit_batch([Job(f"c{i}", "t", i) for i in range(50)])
    assert d.join(DEADLINE)
    assert peak == workers
    settle(d, succeeded=50)


def test_hooks_see_after_process_for_every_processed_attempt(harness: Harness) -> None:
    before = csjd_threads()

    class Pairs(Hooks):
        def __init__(self) -> None:
            self.before = 0
            self.after = 0

        def before_process(self, job: Job, ctx: JobContext) -> None:
            self.before += 1

        def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
            self.after += 1

    pairs = Pairs()
    d = harness.dispatcher(workers=1, max_detached_handlers=1, hooks=[pairs])
    gate = harness.gate()
    d.register_handler("t", lambda ctx, job: gate.wait(DEADLINE))
    d.start()
    d.submit(Job("hung", "t", timeout=0.05, max_attempts=1))
    wait_state(d, "hung", JobState.FAILED)
    gate.set()
    wait_until(
        lambda: len(csjd_threads() - before) <= 2, DEADLINE, message="detached thread never exited"
    )
    m = settle(d, processed=1, detached=1)
    d.stop(timeout=DEADLINE)
    assert (pairs.before, pairs.after) == (m.processed, m.processed)
