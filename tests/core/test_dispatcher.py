"""The in-process Dispatcher: admission, status and results, metrics, hooks, stop.

Execution semantics (retries, panics, timeouts, detach, async) are in test_execution.py.

Tests marked xfail stop their dispatcher before the assertion that fails: on CPython 3.11 a
worker thread formatting a traceback (traceback parses source for its ^^^ markers) while pytest
formats a failure can trip the ast module's shared recursion counter (cpython gh-106905,
pytest#10763) and turn the report into an INTERNALERROR.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from csjd_core import (
    CSJDError,
    Dispatcher,
    DispatcherClosed,
    DuplicateJob,
    Hooks,
    InvalidJob,
    Job,
    JobContext,
    JobNotFound,
    JobState,
    MetricsSnapshot,
    QueueFull,
    RetryPolicy,
    StopReport,
    UnknownJobType,
    permanent,
)
from csjd_core.backends.memory import MemoryBackend
from csjd_core.config import EngineConfig
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.testing import wait_until

from core_support import DEADLINE, FAST, Harness, state_of, wait_state

SLOW = RetryPolicy(base_delay=30.0, max_delay=30.0, jitter=None)  # retries that never come due


class Recorder(Hooks):
    """Records every hook call (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def _add(self, *call: Any) -> None:
        with self._lock:
            self.calls.append(call)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [c[1:] for c in self.calls if c[0] == name]

    def before_enqueue(self, job: Job) -> None:
        self._add("before_enqueue", job.id)

    def after_enqueue(self, job: Job) -> None:
        self._add("after_enqueue", job.id)

    def before_process(self, job: Job, ctx: JobContext) -> None:
        self._add("before_process", job.id, ctx.job_id, ctx.attempt, threading.current_thread())

    def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
        self._add("after_process", job.id, result, type(error).__name__ if error else None)

    def after_retry_scheduled(self, job: Job, attempt: int, delay: float) -> None:
        self._add("after_retry_scheduled", job.id, attempt, delay)

    def after_failed(self, job: Job, error: str) -> None:
        self._add("after_failed", job.id, error)

    def worker_started(self, worker_id: str) -> None:
        self._add("worker_started", worker_id, threading.current_thread())

    def worker_stopped(self, worker_id: str) -> None:
        self._add("worker_stopped", worker_id, threading.current_thread())


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


def noop(ctx: JobContext, job: Job) -> None:
    return None


def echo(ctx: JobContext, job: Job) -> Any:
    return job.payload


def blocked_on(gate: threading.Event) -> Any:
    def handler(ctx: JobContext, job: Job) -> str:
        assert gate.wait(DEADLINE), "test gate never opened"
        return "released"

    return handler


# -- submit, status, results ---------------------------------------------------------------


def test_submit_runs_the_job_and_status_reports_everything(harness: Harness) -> None:
    d = harness.dispatcher(workers=2)
    d.register_handler("double", lambda ctx, job: {"n": job.payload["n"] * 2})
    d.start()
    before = datetime.now(UTC)
    d.submit(Job("j-1", "double", {"n": 21}, queue="math"))
    status = wait_state(d, "j-1", JobState.SUCCEEDED)
    assert status.id == "j-1"
    assert status.type == "double"
    assert status.queue == "math"
    assert status.result == {"n": 42}
    assert status.attempts == 1
    assert status.max_attempts == 3  # Config.default_max_attempts
    assert status.last_error is None
    assert status.last_traceback is None
    assert status.worker_id
    assert status.run_at is None
    assert status.enqueued_at is not None
    assert status.started_at is not None
    assert status.finished_at is not None
    assert before - timedelta(seconds=1) <= status.enqueued_at <= status.started_at
    assert status.started_at <= status.finished_at <= datetime.now(UTC)
    assert status.finished_at.tzinfo is not None


def test_status_of_a_queued_job_before_start(harness: Harness) -> None:
    d = harness.dispatcher()
    d.register_handler("t", noop)
    d.submit(Job("q", "t", max_attempts=7))  # never started: it waits in the queue
    status = d.status("q")
    assert status.state is JobState.QUEUED
    assert (status.attempts, status.max_attempts) == (0, 7)
    assert status.started_at is None
    assert status.finished_at is None
    assert d.pending() == 1


def test_unknown_id_is_job_not_found(harness: Harness) -> None:
    d = harness.dispatcher()
    with pytest.raises(JobNotFound, match="'nope'") as info:
        d.status("nope")
    assert info.value.job_id == "nope"
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, CSJDError)


def test_handler_decorator_and_registration_after_start(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    d.start()

    @d.handler("late")
    def late(ctx: JobContext, job: Job) -> str:
        return "ran"

    assert late.__name__ == "late"  # the decorator returns the function itself
    d.submit(Job("l", "late"))
    assert wait_state(d, "l", JobState.SUCCEEDED).result == "ran"
    with pytest.raises(ValueError, match="already has handler"):
        d.register_handler("late", noop)
    d.register_handler("late", late)  # the same function again is harmless


def test_unknown_type_is_refused_at_submit(harness: Harness) -> None:
    d = harness.dispatcher()
    d.register_handler("known", noop)
    with pytest.raises(UnknownJobType, match="'mystery'") as info:
        d.submit(Job("u", "mystery"))
    assert isinstance(info.value, LookupError)
    assert state_of(d, "u") is None
    settle(d, submitted=1, accepted=0)


@pytest.mark.parametrize(
    ("job", "match"),
    [
        (Job("", "t"), "job id"),
        (Job("x", "t", {"v": float("nan")}), "not JSON-serializable"),
        (Job("x", "t", object()), "not JSON-serializable"),
        (Job("x", "t", run_at=datetime(2030, 1, 1)), "timezone-aware"),
        (Job("x", "t", max_attempts=0), "max_attempts"),
        (Job("x", "t", timeout=-1), "timeout"),
    ],
    ids=["empty-id", "nan", "object", "naive-run-at", "zero-attempts", "negative-timeout"],
)
def test_invalid_jobs_are_refused_and_counted_as_submitted(
    harness: Harness, job: Job, match: str
) -> None:
    d = harness.dispatcher()
    d.register_handler("t", noop)
    with pytest.raises(InvalidJob, match=match):
        d.submit(job)
    assert d.pending() == 0
    settle(d, submitted=1, accepted=0)


def test_duplicate_id_while_queued_running_or_waiting_for_retry(harness: Harness) -> None:
    d = harness.dispatcher(workers=1, retry=SLOW)
    gate = harness.gate()
    d.register_handler("block", blocked_on(gate))

    def flaky(ctx: JobContext, job: Job) -> None:
        raise RuntimeError("try again later")

    d.register_handler("flaky", flaky)
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("retrying", "flaky"))
    wait_state(d, "retrying", JobState.SCHEDULED)
    d.submit(Job("running", "block"))
    wait_state(d, "running", JobState.RUNNING)
    d.submit(Job("queued", "t"))
    for job_id in ("retrying", "running", "queued"):
        with pytest.raises(DuplicateJob, match=repr(job_id)) as info:
            d.submit(Job(job_id, "t"))
        assert info.value.job_id == job_id
    assert d.pending() == 3
    settle(d, accepted=3)


def test_an_id_is_free_again_once_the_job_finished(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    runs: list[Any] = []
    d.register_handler("t", lambda ctx, job: runs.append(job.payload) or len(runs))
    d.start()
    d.submit(Job("same", "t", "first"))
    assert wait_state(d, "same", JobState.SUCCEEDED).result == 1
    d.submit(Job("same", "t", "second"))
    assert d.join(DEADLINE)
    assert runs == ["first", "second"]
    assert d.status("same").result == 2
    settle(d, succeeded=2)


def test_queue_full_at_exactly_the_cap_counting_running_and_retries(harness: Harness) -> None:
    d = harness.dispatcher(workers=1, max_pending_jobs=3, retry=SLOW)
    gate = harness.gate()
    d.register_handler("block", blocked_on(gate))
    d.register_handler("fail", lambda ctx, job: 1 / 0)
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("retrying", "fail"))
    wait_state(d, "retrying", JobState.SCHEDULED)  # waiting 30 s for its retry
    d.submit(Job("running", "block"))
    wait_state(d, "running", JobState.RUNNING)
    d.submit(Job("queued", "t"))  # the third unfinished job: exactly at the cap
    started = time.monotonic()
    for i in range(100):
        with pytest.raises(QueueFull) as info:
            d.submit(Job(f"over-{i}", "t"))
        assert info.value.limit == 3
    with pytest.raises(QueueFull):
        d.submit_batch([Job("batch-over", "t")])
    assert time.monotonic() - started < 1.0, "QueueFull must be immediate, never a wait"
    assert d.pending() == 3
    settle(d, submitted=104, accepted=3)
    gate.set()  # "running" and then "queued" finish: room again
    wait_until(lambda: d.pending() == 1, DEADLINE, message="running jobs never finished")
    d.submit(Job("fits-again", "t"))
    assert wait_state(d, "fits-again", JobState.SUCCEEDED)


# -- submit_batch --------------------------------------------------------------------------


def test_submit_batch_admits_and_runs_every_job(harness: Harness) -> None:
    d = harness.dispatcher(workers=2)
    d.register_handler("t", echo)
    d.start()
    d.submit_batch(Job(f"b{i}", "t", i) for i in range(20))
    assert d.join(DEADLINE)
    assert [d.status(f"b{i}").result for i in range(20)] == list(range(20))
    settle(d, submitted=20, accepted=20, succeeded=20)


def _assert_nothing_admitted(d: Dispatcher, ids: list[str], pending: int) -> None:
    assert d.pending() == pending
    for job_id in ids:
        assert state_of(d, job_id) is None, f"{job_id} was admitted from a refused batch"


def test_batch_with_a_duplicate_of_an_unfinished_job_admits_nothing(harness: Harness) -> None:
    d = harness.dispatcher()
    d.register_handler("t", noop)
    d.submit(Job("taken", "t"))
    batch = [Job("a", "t"), Job("b", "t"), Job("taken", "t"), Job("c", "t")]
    with pytest.raises(DuplicateJob, match="'taken'"):
        d.submit_batch(batch)
    _assert_nothing_admitted(d, ["a", "b", "c"], pending=1)
    settle(d, submitted=5, accepted=1)


def test_batch_repeating_an_id_admits_nothing(harness: Harness) -> None:
    d = harness.dispatcher()
    d.register_handler("t", noop)
    with pytest.raises(InvalidJob, match="'twice' appears twice"):
        d.submit_batch([Job("once", "t"), Job("twice", "t"), Job("twice", "t")])
    _assert_nothing_admitted(d, ["once", "twice"], pending=0)
    settle(d, submitted=3)


def test_batch_over_the_cap_admits_nothing(harness: Harness) -> None:
    d = harness.dispatcher(max_pending_jobs=5)
    d.register_handler("t", noop)
    d.submit_batch([Job(f"first-{i}", "t") for i in range(3)])
    with pytest.raises(QueueFull):
        d.submit_batch([Job(f"second-{i}", "t") for i in range(3)])  # 3 + 3 > 5
    _assert_nothing_admitted(d, [f"second-{i}" for i in range(3)], pending=3)
    d.submit_batch([Job(f"third-{i}", "t") for i in range(2)])  # 3 + 2 == 5 fits exactly
    assert d.pending() == 5
    settle(d, submitted=8, accepted=5)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Job("bad", "t", {"x": float("inf")}), InvalidJob),
        (Job("bad", "unregistered"), UnknownJobType),
        ("not a job", InvalidJob),
    ],
    ids=["invalid-payload", "unknown-type", "not-a-job"],
)
def test_batch_with_one_bad_job_admits_nothing(
    harness: Harness, bad: Any, error: type[Exception]
) -> None:
    d = harness.dispatcher()
    d.register_handler("t", noop)
    with pytest.raises(error):
        d.submit_batch([Job("a", "t"), Job("b", "t"), bad, Job("c", "t")])
    _assert_nothing_admitted(d, ["a", "b", "c"], pending=0)
    settle(d, submitted=4, accepted=0)


def test_empty_batch_is_a_no_op(harness: Harness) -> None:
    d = harness.dispatcher()
    d.submit_batch([])
    assert d.metrics() == MetricsSnapshot()


# -- run_at --------------------------------------------------------------------------------


def test_run_at_job_is_scheduled_and_never_runs_early(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    ran_at: list[float] = []
    d.register_handler("t", lambda ctx, job: ran_at.append(time.time()))
    d.start()
    run_at = datetime.now(UTC) + timedelta(seconds=0.15)
    d.submit(Job("later", "t", run_at=run_at))
    d.submit(Job("now", "t"))
    status = d.status("later")
    assert status.state is JobState.SCHEDULED
    assert status.run_at is not None
    assert abs((status.run_at - run_at).total_seconds()) < 0.01
    wait_state(d, "now", JobState.SUCCEEDED)  # the worker is not held by the scheduled job
    assert state_of(d, "later") is JobState.SCHEDULED
    wait_state(d, "later", JobState.SUCCEEDED)
    assert ran_at[-1] >= run_at.timestamp()


def test_a_job_scheduled_on_an_idle_dispatcher_runs_on_time(harness: Harness) -> None:
    """Idle workers block in fetch for up to a second between checks for stop: a run_at job
    submitted meanwhile must still start at its run_at, not when that wait ends."""
    d = harness.dispatcher(workers=1)
    ran_at: list[float] = []
    d.register_handler("t", lambda ctx, job: ran_at.append(time.time()))
    d.start()
    d.submit(Job("warm-up", "t"))  # the worker is now idle inside its blocking fetch
    wait_state(d, "warm-up", JobState.SUCCEEDED)
    run_at = datetime.now(UTC) + timedelta(seconds=0.1)
    d.submit(Job("timed", "t", run_at=run_at))
    wait_state(d, "timed", JobState.SUCCEEDED)
    late = ran_at[-1] - run_at.timestamp()
    assert 0 <= late < 0.5, f"ran {late:.3f} s after its run_at"


def test_run_at_in_the_past_runs_at_once(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("past", "t", run_at=datetime.now(UTC) - timedelta(hours=1)))
    wait_state(d, "past", JobState.SUCCEEDED)


# -- results ---------------------------------------------------------------------------------


def test_result_expires_after_result_ttl(harness: Harness) -> None:
    recorder = Recorder()
    d = harness.dispatcher(workers=1, result_ttl=0.05, hooks=[recorder])
    d.register_handler("t", lambda ctx, job: "value")
    d.start()
    d.submit(Job("short-lived", "t"))
    assert d.join(DEADLINE)
    assert recorder.named("after_process") == [("short-lived", "value", None)]
    wait_until(lambda: state_of(d, "short-lived") is None, DEADLINE, message="result never expired")
    with pytest.raises(JobNotFound):
        d.status("short-lived")


def test_max_results_keeps_only_the_newest(harness: Harness) -> None:
    d = harness.dispatcher(workers=1, max_results=2)
    d.register_handler("t", echo)
    d.start()
    for i in range(5):
        d.submit(Job(f"r{i}", "t", i))
        wait_state(d, f"r{i}", JobState.SUCCEEDED)
    assert [state_of(d, f"r{i}") for i in range(5)] == [None, None, None] + [JobState.SUCCEEDED] * 2


def test_a_failed_job_keeps_its_error_and_traceback(harness: Harness) -> None:
    d = harness.dispatcher(workers=1, default_max_attempts=2)

    def broken(ctx: JobContext, job: Job) -> None:
        raise KeyError("missing-key")

    d.register_handler("t", broken)
    d.start()
    d.submit(Job("f", "t"))
    status = wait_state(d, "f", JobState.FAILED)
    assert status.attempts == 2
    assert status.last_error == "KeyError: 'missing-key'"
    assert status.last_traceback is not None
    assert "Traceback" in status.last_traceback
    assert "in broken" in status.last_traceback
    assert status.result is None


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_identities_over_a_random_mix(harness: Harness) -> None:
    """Every outcome kind, then the exact totals and the two idle identities of the spec."""
    rng = random.Random(20240611)
    d = harness.dispatcher(workers=3, default_max_attempts=2, max_pending_jobs=1000)
    lock = threading.Lock()
    seen: dict[str, int] = {}

    def mixed(ctx: JobContext, job: Job) -> Any:
        kind = job.payload
        with lock:
            seen[job.id] = seen.get(job.id, 0) + 1
        if kind == "ok":
            return "fine"
        if kind == "fail_once" and ctx.attempt == 1:
            raise RuntimeError("transient")
        if kind == "fail_always":
            raise RuntimeError("broken")
        if kind == "permanent":
            raise permanent(ValueError("bad input"))
        if kind == "panic_once" and ctx.attempt == 1:
            raise SystemExit(3)
        if kind == "bad_result":
            return {"not": {1, 2}}
        return "recovered"

    expected = {  # kind -> (processed, retried, succeeded, failed, panics)
        "ok": (1, 0, 1, 0, 0),
        "fail_once": (2, 1, 1, 0, 0),
        "fail_always": (2, 1, 0, 1, 0),
        "permanent": (1, 0, 0, 1, 0),
        "panic_once": (2, 1, 1, 0, 1),
        "bad_result": (1, 0, 0, 1, 0),
    }
    d.register_handler("mix", mixed)
    d.start()
    kinds = [rng.choice(sorted(expected)) for _ in range(120)]
    jobs = [Job(f"m{i}", "mix", kind) for i, kind in enumerate(kinds)]
    for job in jobs[:60]:
        d.submit(job)
    d.submit_batch(jobs[60:])
    future = datetime.now(UTC) + timedelta(hours=1)
    d.submit_batch([Job(f"future{i}", "mix", "ok", run_at=future) for i in range(4)])
    for refused in (Job("", "mix"), Job("m0", "nope"), Job("x", "mix", float("nan"))):
        with pytest.raises(CSJDError):
            d.submit(refused)
    # Wait for the counters, not for pending(): see test_metrics_are_final_when_join_returns.
    wait_until(
        lambda: d.metrics().succeeded + d.metrics().failed == 120,
        DEADLINE,
        message=lambda: f"metrics never settled: {d.metrics()}, pending={d.pending()}",
    )
    assert d.pending() == 4
    m = d.metrics()
    totals = [sum(expected[k][i] for k in kinds) for i in range(5)]
    assert (m.processed, m.retried, m.succeeded, m.failed, m.panics) == tuple(totals)
    assert (m.submitted, m.accepted, m.detached) == (127, 124, 0)
    assert m.accepted == m.succeeded + m.failed + d.pending()
    assert m.processed == m.succeeded + m.failed + m.retried
    assert sum(seen.values()) == m.processed


def test_metrics_are_final_when_join_returns(harness: Harness) -> None:
    in_window = threading.Event()
    joined = threading.Event()

    class HoldFailureLog(logging.Handler):
        """Holds the worker inside the 'job failed' log call: after the backend recorded the
        failure, before the worker counted it."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("job failed id='doomed'"):
                in_window.set()
                joined.wait(1.0)

    handler = HoldFailureLog(level=logging.ERROR)
    engine_logger = logging.getLogger("csjd_core.engine")
    engine_logger.addHandler(handler)
    try:
        d = harness.dispatcher(workers=1, default_max_attempts=1)
        d.register_handler("t", lambda ctx, job: 1 / 0)
        d.start()
        d.submit(Job("doomed", "t"))
        assert in_window.wait(DEADLINE)
        idle = d.join(0.2)
        m = d.metrics()
        joined.set()
        d.stop(timeout=DEADLINE)  # no engine thread may run while pytest reports the failure
    finally:
        joined.set()
        engine_logger.removeHandler(handler)
    # Either join() waits for the outcome to be counted, or it has not returned True yet.
    assert not idle or (m.accepted, m.failed, m.processed) == (1, 1, 1), m


def test_a_snapshot_never_shows_more_finished_than_accepted() -> None:
    snapshots: list[MetricsSnapshot] = []

    class SlowToReturn(MemoryBackend):
        """Returns from enqueue only after the job ran: widens the submit path's window."""

        def enqueue(self, jobs: Any) -> None:
            super().enqueue(jobs)
            wait_until(lambda: self.pending() == 0, DEADLINE, message="job never ran")
            wait_until(lambda: d.metrics().succeeded == 1, DEADLINE, message="never counted")
            snapshots.append(d.metrics())

    d = BaseDispatcher(
        SlowToReturn(),
        EngineConfig(workers=1, max_pending_jobs=10, default_max_attempts=1, retry=FAST),
        max_results=100,
    )
    try:
        d.register_handler("t", noop)
        d.start()
        d.submit(Job("j", "t"))
    finally:
        d.stop(timeout=DEADLINE)
    (m,) = snapshots
    assert m.accepted >= m.succeeded + m.failed, m


def test_metrics_snapshot_is_a_frozen_value(harness: Harness) -> None:
    d = harness.dispatcher()
    m = d.metrics()
    assert m == MetricsSnapshot(0, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(AttributeError):
        m.submitted = 5  # type: ignore[misc]


# -- hooks -----------------------------------------------------------------------------------


def test_every_hook_is_called_with_the_right_arguments(harness: Harness) -> None:
    recorder = Recorder()
    d = harness.dispatcher(workers=1, default_max_attempts=2, hooks=[recorder])

    def handler(ctx: JobContext, job: Job) -> Any:
        if job.id == "flaky" and ctx.attempt == 1:
            raise RuntimeError("first")
        if job.id == "doomed":
            raise ValueError("always")
        return job.id.upper()

    d.register_handler("t", handler)
    d.start()
    worker_thread = wait_until(lambda: recorder.named("worker_started"), DEADLINE)[0][1]
    for job_id in ("ok", "flaky", "doomed"):
        d.submit(Job(job_id, "t"))
        wait_state(d, job_id, JobState.SUCCEEDED, JobState.FAILED)
    report = d.stop(timeout=DEADLINE)
    assert report.clean

    assert recorder.named("before_enqueue") == [("ok",), ("flaky",), ("doomed",)]
    assert recorder.named("after_enqueue") == [("ok",), ("flaky",), ("doomed",)]
    processes = recorder.named("before_process")
    assert [(c[0], c[1], c[2]) for c in processes] == [
        ("ok", "ok", 1),
        ("flaky", "flaky", 1),
        ("flaky", "flaky", 2),
        ("doomed", "doomed", 1),
        ("doomed", "doomed", 2),
    ]
    assert {c[3] for c in processes} == {worker_thread}  # on the worker thread
    assert recorder.named("after_process") == [
        ("ok", "OK", None),
        ("flaky", None, "RuntimeError"),
        ("flaky", "FLAKY", None),
        ("doomed", None, "ValueError"),
        ("doomed", None, "ValueError"),
    ]
    retries = recorder.named("after_retry_scheduled")
    assert [(c[0], c[1]) for c in retries] == [("flaky", 1), ("doomed", 1)]
    assert all(0.0 <= c[2] <= FAST.max_delay for c in retries)
    assert recorder.named("after_failed") == [("doomed", "ValueError: always")]
    started = recorder.named("worker_started")
    stopped = recorder.named("worker_stopped")
    assert len(started) == 1
    assert [c[:2] for c in stopped] == [c[:2] for c in started]
    assert isinstance(started[0][0], str)
    assert started[0][0]


def test_duck_typed_hook_objects_work(harness: Harness) -> None:
    class OnlyOne:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def after_enqueue(self, job: Job) -> None:
            self.seen.append(job.id)

    hook = OnlyOne()
    d = harness.dispatcher(hooks=[hook])
    d.register_handler("t", noop)
    d.submit(Job("duck", "t"))
    assert hook.seen == ["duck"]


class Exploding(Hooks):
    def __init__(self) -> None:
        self.calls = 0

    def _boom(self, *args: Any) -> None:
        self.calls += 1
        raise RuntimeError("hook bug")

    before_enqueue = after_enqueue = before_process = after_process = _boom
    after_retry_scheduled = after_failed = worker_started = worker_stopped = _boom


def test_a_raising_hook_is_logged_and_never_fails_a_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="csjd_core")
    hook = Exploding()
    d = harness.dispatcher(workers=1, default_max_attempts=2, hooks=[hook])

    def handler(ctx: JobContext, job: Job) -> str:
        if job.id == "retry-then-fail":
            raise RuntimeError("handler error")
        return "ok"

    d.register_handler("t", handler)
    d.start()
    d.submit(Job("good", "t"))
    d.submit_batch([Job("batch", "t")])
    d.submit(Job("retry-then-fail", "t"))
    assert wait_state(d, "good", JobState.SUCCEEDED).result == "ok"
    assert wait_state(d, "batch", JobState.SUCCEEDED).result == "ok"
    assert wait_state(d, "retry-then-fail", JobState.FAILED).attempts == 2
    d.stop(timeout=DEADLINE)
    hook_logs = [r for r in caplog.records if r.getMessage().startswith("hook failed")]
    # enqueue 2x3, process 2x4, retry 1, failed 1, worker start + stop
    assert hook.calls == 18
    assert len(hook_logs) == 18
    assert all(r.exc_info is not None for r in hook_logs)
    assert {r.getMessage().split("method=")[1] for r in hook_logs} == {
        "before_enqueue",
        "after_enqueue",
        "before_process",
        "after_process",
        "after_retry_scheduled",
        "after_failed",
        "worker_started",
        "worker_stopped",
    }
    settle(d, succeeded=2, failed=1, retried=1, panics=0)


def test_a_hook_raising_a_base_exception_does_not_kill_the_worker(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Fatal(BaseException):
        pass

    died: list[str] = []
    monkeypatch.setattr(
        threading, "excepthook", lambda args: died.append(f"{args.thread}: {args.exc_value!r}")
    )

    class Bad(Hooks):
        def after_process(self, job: Job, result: Any, error: BaseException | None) -> None:
            if job.id == "first":
                raise Fatal("hook panic")

    d = harness.dispatcher(workers=1, hooks=[Bad()])
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("first", "t"))
    d.submit(Job("second", "t"))
    idle = d.join(0.3)
    states = [state_of(d, "first"), state_of(d, "second")]
    d.stop(timeout=DEADLINE)
    assert idle, f"a hook's BaseException stalled the pool; dead threads: {died}"
    assert died == []
    assert states == [JobState.SUCCEEDED, JobState.SUCCEEDED]


# -- stop --------------------------------------------------------------------------------------


def test_stop_drains_queued_jobs_and_reports_them(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    gate = harness.gate()
    d.register_handler("block", blocked_on(gate))
    d.register_handler("t", echo)
    d.start()
    d.submit(Job("first", "block"))
    wait_state(d, "first", JobState.RUNNING)
    for i in range(5):
        d.submit(Job(f"q{i}", "t", i))
    reports: list[StopReport] = []
    stopper = threading.Thread(target=lambda: reports.append(d.stop()))
    stopper.start()
    wait_until(lambda: not d.started, DEADLINE, message="stop() never began")
    with pytest.raises(DispatcherClosed):
        d.submit(Job("late", "t"))
    with pytest.raises(DispatcherClosed):
        d.submit_batch([Job("late-batch", "t")])
    gate.set()
    stopper.join(DEADLINE)
    assert not stopper.is_alive()
    assert reports == [
        StopReport(finished=6, abandoned=0, left_pending=0, still_running=0, timed_out=False)
    ]
    assert reports[0].clean
    assert [d.status(f"q{i}").state for i in range(5)] == [JobState.SUCCEEDED] * 5
    settle(d, submitted=8, accepted=6, succeeded=6)


def test_stop_with_a_hung_handler_returns_within_its_timeout(harness: Harness) -> None:
    d = harness.dispatcher(workers=2)
    gate = harness.gate()
    d.register_handler("block", blocked_on(gate))
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("hung", "block"))
    wait_state(d, "hung", JobState.RUNNING)
    started = time.monotonic()
    report = d.stop(timeout=0.2)
    elapsed = time.monotonic() - started
    assert elapsed < 0.2 + 0.5, f"stop(timeout=0.2) took {elapsed:.3f} s"
    assert report.still_running == 1
    assert report.timed_out
    assert not report.clean
    assert report.abandoned == 0
    assert state_of(d, "hung") is JobState.RUNNING
    gate.set()
    wait_state(d, "hung", JobState.SUCCEEDED)  # the attempt itself was never cut off


def test_stop_abandons_scheduled_jobs_and_logs_each(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="csjd_core")
    d = harness.dispatcher(workers=1, retry=SLOW)
    d.register_handler("fail", lambda ctx, job: 1 / 0)
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("retry-wait", "fail"))
    wait_state(d, "retry-wait", JobState.SCHEDULED)
    # The worker counts the attempt just after the store records it: not a "finished" at stop.
    wait_until(lambda: d.metrics().retried == 1, DEADLINE)
    future = datetime.now(UTC) + timedelta(hours=1)
    d.submit_batch([Job("future-1", "t", run_at=future), Job("future-2", "t", run_at=future)])
    started = time.monotonic()
    report = d.stop(timeout=DEADLINE)
    assert time.monotonic() - started < 1.0, "stop waited for scheduled work"
    assert report == StopReport(
        finished=0, abandoned=3, left_pending=0, still_running=0, timed_out=False
    )
    abandoned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert sorted(r.getMessage() for r in abandoned) == [
        "job abandoned at stop id='future-1' type='t'",
        "job abandoned at stop id='future-2' type='t'",
        "job abandoned at stop id='retry-wait' type='fail'",
    ]
    assert all(r.levelno == logging.WARNING for r in abandoned)


def test_stop_of_a_never_started_dispatcher_abandons_its_queue(harness: Harness) -> None:
    d = harness.dispatcher()
    d.register_handler("t", noop)
    d.submit_batch([Job(f"n{i}", "t") for i in range(4)])
    report = d.stop()
    assert (report.finished, report.abandoned, report.still_running) == (0, 4, 0)
    with pytest.raises(DispatcherClosed):
        d.start()


def test_stop_is_idempotent(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="csjd_core")
    d = harness.dispatcher()
    d.register_handler("t", noop)
    d.submit(Job("left", "t"))
    first = d.stop()
    second = d.stop(timeout=0.01)
    assert first == second
    assert first.abandoned == 1
    assert len([r for r in caplog.records if "abandoned" in r.getMessage()]) == 1


def test_context_manager_starts_and_stops(harness: Harness) -> None:
    d = harness.dispatcher(workers=2)
    d.register_handler("t", echo)
    with d as running:
        assert running is d
        assert d.started
        d.submit(Job("cm", "t", "inside"))
        assert d.join(DEADLINE)
    assert not d.started
    assert d.status("cm").result == "inside"  # results stay readable after stop
    with pytest.raises(DispatcherClosed):
        d.submit(Job("after", "t"))


def test_join_waits_for_retries_and_times_out_on_stuck_work(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    gate = harness.gate()
    d.register_handler("flaky", lambda ctx, job: 1 / 0 if ctx.attempt < 3 else "done")
    d.register_handler("block", blocked_on(gate))
    d.start()
    d.submit(Job("f", "flaky"))
    assert d.join(DEADLINE)
    assert d.status("f").result == "done"
    assert d.status("f").attempts == 3
    d.submit(Job("b", "block"))
    assert d.join(timeout=0.05) is False
    gate.set()
    assert d.join(timedelta(seconds=DEADLINE))


def test_submit_racing_with_stop_is_refused_not_lost(harness: Harness) -> None:
    """A submit that passed the closed check while stop() ran must not admit a job into a
    backend that stop() already emptied: that job would be neither run nor reported."""
    entered = threading.Event()
    proceed = threading.Event()

    class SlowGate(Hooks):
        def before_enqueue(self, job: Job) -> None:
            if job.id == "racer":
                entered.set()
                proceed.wait(DEADLINE)

    d = harness.dispatcher(hooks=[SlowGate()])
    d.register_handler("t", noop)
    d.start()
    outcome: list[BaseException | None] = []

    def submitter() -> None:
        try:
            d.submit(Job("racer", "t"))
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=submitter)
    thread.start()
    assert entered.wait(DEADLINE)
    report = d.stop(timeout=DEADLINE)  # completes while the submit is inside its hook
    proceed.set()
    thread.join(DEADLINE)
    if outcome == [None]:
        # Admitted: then it must run, or the stop report must have counted it.
        assert report.abandoned == 1 or state_of(d, "racer") is JobState.SUCCEEDED, (
            f"job 'racer' was accepted after stop() and silently lost "
            f"(state={state_of(d, 'racer')}, report={report})"
        )
    else:
        assert isinstance(outcome[0], DispatcherClosed)
        settle(d, accepted=0)


def test_concurrent_stop_calls_get_the_same_report(harness: Harness) -> None:
    d = harness.dispatcher(workers=1)
    gate = harness.gate()
    d.register_handler("block", blocked_on(gate))
    d.register_handler("t", noop)
    d.start()
    d.submit(Job("running", "block"))
    wait_state(d, "running", JobState.RUNNING)
    d.submit(Job("future", "t", run_at=datetime.now(UTC) + timedelta(hours=1)))
    reports: list[StopReport] = []
    threads = [threading.Thread(target=lambda: reports.append(d.stop())) for _ in range(2)]

    def inside(thread: threading.Thread, function: str) -> bool:
        frame = sys._current_frames().get(thread.ident or -1)
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
        return False

    first, second = threads
    first.start()
    wait_until(lambda: inside(first, "join_workers"), DEADLINE, message="no drain")
    second.start()  # arrives while the first is draining: waits for the same shutdown
    wait_until(lambda: inside(second, "stop"), DEADLINE, message="second stop() not waiting")
    gate.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert len(reports) == 2
    assert reports[0] == reports[1]
    assert reports[0].abandoned == 1
