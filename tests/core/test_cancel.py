"""Cancelling jobs in process: what the engine does with a cancellation (`BaseDispatcher.cancel`,
``ctx.cancelled`` / ``ctx.wait()`` / ``ctx.cancel_reason``, the outcome event, the metrics), the
decorator family's `App.cancel` and ``handle.cancel()``, and cancel racing completion."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from csjd_core import (
    App,
    AttemptOutcome,
    Config,
    Dispatcher,
    FileJobStore,
    Hooks,
    InvalidJob,
    Job,
    JobCancelled,
    JobContext,
    JobFailed,
    JobNotFound,
    JobState,
    OutcomeKind,
    RetryPolicy,
    operations,
)
from csjd_core.errors import CSJDError
from csjd_core.testing import wait_until

DEADLINE = 10.0


class Outcomes(Hooks):
    def __init__(self) -> None:
        self.seen: list[AttemptOutcome] = []

    def after_attempt(self, outcome: AttemptOutcome) -> None:
        self.seen.append(outcome)


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def dispatcher(outcomes: Outcomes) -> Iterator[Dispatcher]:
    d = Dispatcher(
        Config(workers=2, hooks=(outcomes,), retry=RetryPolicy(base_delay=30, jitter=None))
    )
    d.start()
    try:
        yield d
    finally:
        d.stop(5)


def running(d: Dispatcher, job_id: str) -> None:
    wait_until(lambda: d.status(job_id).state is JobState.RUNNING, DEADLINE)


def test_a_cooperative_handler_is_told_at_once_and_records_cancelled(
    dispatcher: Dispatcher, outcomes: Outcomes
) -> None:
    seen: dict[str, Any] = {}

    @dispatcher.handler("coop")
    def coop(ctx: JobContext, job: Job) -> str:
        seen["woke"] = ctx.wait(DEADLINE)
        seen["reason"] = ctx.cancel_reason
        seen["at"] = time.monotonic()
        ctx.raise_if_cancelled()
        return "not reached"

    dispatcher.submit(Job("c", "coop"))
    running(dispatcher, "c")
    asked = time.monotonic()
    assert dispatcher.cancel("c") is True
    assert dispatcher.join(DEADLINE)
    assert seen["woke"] is True
    assert seen["reason"] == "cancelled"
    assert seen["at"] - asked < 0.5  # at once: no polling interval in between
    status = dispatcher.status("c")
    assert (status.state, status.cancel_reason, status.attempts) == (
        JobState.CANCELLED,
        "cancelled",
        1,
    )
    assert status.last_error is not None and status.last_error.startswith("JobCancelled")
    [outcome] = outcomes.seen
    assert (outcome.kind, outcome.terminal, outcome.attempt) == (OutcomeKind.CANCELLED, True, 1)
    assert isinstance(outcome.exception, JobCancelled)
    metrics = dispatcher.metrics()
    assert (metrics.cancelled, metrics.processed, metrics.failed, metrics.retried) == (1, 1, 0, 0)
    assert dispatcher.cancel("c") is False  # ended: a second cancel changes nothing


def test_a_handler_that_ignores_it_finishes_its_result_kept_and_ends_cancelled(
    dispatcher: Dispatcher,
) -> None:
    release = threading.Event()

    @dispatcher.handler("stubborn")
    def stubborn(ctx: JobContext, job: Job) -> dict[str, bool]:
        release.wait(DEADLINE)
        return {"cancelled_seen": ctx.cancelled}

    dispatcher.submit(Job("s", "stubborn"))
    running(dispatcher, "s")
    assert dispatcher.cancel("s") is True
    assert dispatcher.status("s").cancel_reason == "cancelled"  # requested, still running
    release.set()
    assert dispatcher.join(DEADLINE)
    status = dispatcher.status("s")
    assert (status.state, status.result) == (JobState.CANCELLED, {"cancelled_seen": True})
    metrics = dispatcher.metrics()
    assert (metrics.cancelled, metrics.succeeded) == (1, 0)


def test_waiting_jobs_never_run(dispatcher: Dispatcher) -> None:
    release = threading.Event()
    ran: list[str] = []

    @dispatcher.handler("t")
    def handler(ctx: JobContext, job: Job) -> None:
        ran.append(job.id)
        if job.id.startswith("busy"):
            release.wait(DEADLINE)
        elif job.id == "flaky":
            raise RuntimeError("first attempt fails; the retry waits 30 s")

    dispatcher.submit(Job("flaky", "t"))
    wait_until(lambda: dispatcher.status("flaky").state is JobState.SCHEDULED, DEADLINE)
    dispatcher.submit(Job("busy-1", "t"))
    dispatcher.submit(Job("busy-2", "t"))
    running(dispatcher, "busy-1")
    running(dispatcher, "busy-2")
    dispatcher.submit(Job("queued", "t"))
    dispatcher.submit(Job("later", "t", run_at=datetime.now(UTC) + timedelta(seconds=0.3)))
    for job_id in ("queued", "later", "flaky"):
        assert dispatcher.cancel(job_id) is True
        assert dispatcher.status(job_id).state is JobState.CANCELLED
    assert dispatcher.pending() == 2
    release.set()
    assert dispatcher.join(DEADLINE)
    time.sleep(0.4)  # past "later"'s run_at: it must not run then either
    assert sorted(ran) == ["busy-1", "busy-2", "flaky"]
    assert dispatcher.status("flaky").attempts == 1
    metrics = dispatcher.metrics()
    assert metrics.accepted == metrics.succeeded + metrics.failed + metrics.cancelled
    assert (metrics.cancelled, metrics.retried) == (3, 1)


def test_a_timeout_and_a_cancel_say_which_is_which(dispatcher: Dispatcher) -> None:
    reasons: dict[str, str | None] = {}

    @dispatcher.handler("wait")
    def wait(ctx: JobContext, job: Job) -> None:
        ctx.wait(DEADLINE)
        reasons[job.id] = ctx.cancel_reason

    dispatcher.submit(Job("slow", "wait", timeout=0.05, max_attempts=1))
    dispatcher.submit(Job("stopped", "wait"))
    running(dispatcher, "stopped")
    dispatcher.cancel("stopped")
    assert dispatcher.join(DEADLINE)
    assert reasons == {"slow": "timed_out", "stopped": "cancelled"}
    assert dispatcher.status("slow").state is JobState.FAILED
    assert dispatcher.status("stopped").state is JobState.CANCELLED


def test_unknown_ids(dispatcher: Dispatcher) -> None:
    with pytest.raises(JobNotFound):
        dispatcher.cancel("never-submitted")
    with pytest.raises(JobNotFound):
        dispatcher.cancel("")


def test_app_and_handle(tmp_path: Path) -> None:
    app = App(config=Config(workers=1))
    release = threading.Event()

    @app.job("slow")
    def slow() -> str:
        release.wait(DEADLINE)
        return "done"

    try:
        first = slow.delay()
        wait_until(lambda: first.status().state is JobState.RUNNING, DEADLINE)
        second = slow.delay()
        assert second.cancel() is True
        with pytest.raises(JobFailed, match="was cancelled"):
            second.result(DEADLINE)
        release.set()
        assert first.result(DEADLINE) == "done"
        assert first.cancel() is False
        assert app.cancel(second.id) is False
        with pytest.raises(JobNotFound):
            app.cancel("nope")
    finally:
        app.stop(5)


def test_the_file_store_keeps_a_cancellation_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    d = Dispatcher(Config(store=FileJobStore(path)))
    d.register_handler("t", lambda ctx, job: None)
    d.submit(Job("gone", "t"))
    d.submit(Job("kept", "t"))
    assert d.cancel("gone") is True
    assert d.stop(5).left_pending == 2 - 1
    with FileJobStore(path) as again:
        assert [s.id for s in again.jobs()] == ["kept"]


@pytest.mark.parametrize(
    "races", [pytest.param(150, id="150"), pytest.param(1000, id="1000", marks=pytest.mark.soak)]
)
def test_cancel_racing_completion_has_one_final_state(races: int) -> None:
    """Races in process (1,000 in the soak tier, about 8 s): a job that finishes within a
    millisecond and a cancel sent at a random moment around it. The answer and the final
    state agree every time: True and ``cancelled`` (never ran, or ran with its result kept),
    or False and ``succeeded``."""
    d = Dispatcher(Config(workers=4, max_pending_jobs=100_000))

    @d.handler("quick")
    def quick(ctx: JobContext, job: Job) -> str:
        time.sleep(random.uniform(0, 0.001))  # lets the canceller run (releases the GIL)
        return "result"

    counts: Counter[str] = Counter()
    rng = random.Random(18)
    with d:
        for i in range(races):
            job_id = f"race-{i}"
            d.submit(Job(job_id, "quick"))
            if i % 10:  # most races around the completion, a few around the start
                while d.status(job_id).state is JobState.QUEUED:
                    pass
            time.sleep(rng.uniform(0, 0.001))  # a random moment, not a synchronisation
            answer = d.cancel(job_id)
            assert d.join(DEADLINE)
            status = d.status(job_id)
            if answer:
                assert status.state is JobState.CANCELLED, job_id
                counts["cancelled, ran" if status.attempts else "cancelled, never ran"] += 1
                if status.attempts:
                    assert status.result == "result"
            else:
                assert status.state is JobState.SUCCEEDED, job_id
                counts["succeeded first"] += 1
        metrics = d.metrics()
    assert sum(counts.values()) == races
    assert metrics.cancelled == counts["cancelled, ran"] + counts["cancelled, never ran"]
    assert metrics.succeeded == counts["succeeded first"]
    print("in-process cancel races:", dict(counts))


# -- expiry ----------------------------------------------------------------------------------


def test_expires_on_apply_async_and_on_the_decorator() -> None:
    app = App(config=Config(workers=1))
    release = threading.Event()
    ran: list[str] = []

    @app.job("blocker")
    def blocker() -> None:
        release.wait(DEADLINE)

    @app.job("report", expires=0.05)
    def report(name: str) -> str:
        ran.append(name)
        return name

    try:
        busy = blocker.delay()
        wait_until(lambda: busy.status().state is JobState.RUNNING, DEADLINE)
        by_decorator = report.delay("decorator")  # expires 0.05 s after its enqueue
        by_call = report.apply_async(args=["call"], expires=timedelta(hours=1))
        at = datetime.now(UTC) + timedelta(seconds=0.05)
        by_datetime = report.apply_async(args=["datetime"], expires=at)
        time.sleep(0.1)  # the backlog outlives two of the expiries (not a synchronisation)
        release.set()
        assert app.wait(DEADLINE)
        assert ran == ["call"]
        for handle in (by_decorator, by_datetime):
            status = handle.status()
            assert (status.state, status.cancel_reason) == (JobState.CANCELLED, "expired")
            with pytest.raises(JobFailed, match=r"was cancelled \(expired\)"):
                handle.result(DEADLINE)
        assert by_call.result(DEADLINE) == "call"
        metrics = app.dispatcher.metrics()
        assert (metrics.cancelled, metrics.succeeded) == (2, 2)
    finally:
        app.stop(5)


def test_bad_expiry_values_are_refused() -> None:
    app = App(mode="immediate")

    @app.job("x")
    def x() -> None: ...

    with pytest.raises(InvalidJob, match="expires must be a number of seconds >= 0"):
        x.apply_async(expires=-1)
    with pytest.raises(InvalidJob, match="expires must be timezone-aware"):
        x.apply_async(expires=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="expires must be at most"):
        app.job("y", expires=1e12)(lambda: None)


def test_the_file_store_keeps_expires_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    later = datetime.now(UTC) + timedelta(hours=1)
    soon = datetime.now(UTC) + timedelta(seconds=0.1)
    with FileJobStore(path) as store:
        store.enqueue([Job("kept", "t", expires=later), Job("stale", "t", expires=soon)])
        store.enqueue([Job("plain", "t")])  # the binary form, beside version 2's JSON one
    time.sleep(0.15)  # past "stale"'s expiry while no process runs (not a synchronisation)
    d = Dispatcher(Config(store=FileJobStore(path)))
    ran: list[str] = []
    d.register_handler("t", lambda ctx, job: ran.append(job.id))
    with d:
        assert d.join(DEADLINE)
        assert sorted(ran) == ["kept", "plain"]
        assert d.status("stale").cancel_reason == "expired"
    with FileJobStore(path) as again:
        assert again.jobs() == []


def test_an_async_handler_is_stopped_by_cancelling_its_task(dispatcher: Dispatcher) -> None:
    seen: dict[str, Any] = {}

    @dispatcher.handler("sleepy")
    async def sleepy(ctx: JobContext, job: Job) -> str:
        seen["started"] = True
        try:
            await asyncio.sleep(DEADLINE)
        except asyncio.CancelledError:
            seen["reason"] = ctx.cancel_reason
            raise
        return "not reached"

    dispatcher.submit(Job("a", "sleepy"))
    wait_until(lambda: seen.get("started"), DEADLINE)
    asked = time.monotonic()
    assert dispatcher.cancel("a") is True
    assert dispatcher.join(DEADLINE)
    assert time.monotonic() - asked < 1.0
    assert seen["reason"] == "cancelled"
    status = dispatcher.status("a")
    assert (status.state, status.cancel_reason) == (JobState.CANCELLED, "cancelled")


def test_a_command_cancels_in_a_file_store_no_process_holds(tmp_path: Path) -> None:
    """``csjd cancel`` of an in-process app reaches its jobs through the store (when no running
    process holds it: else `JobStoreLocked`); in memory it cannot, and says why."""
    path = tmp_path / "jobs.json"
    with FileJobStore(path) as store:
        store.enqueue([Job("a", "t"), Job("b", "t")])
    app = App(config=Config(store=FileJobStore(path)))
    app.register_handler("t", lambda ctx, job: None)
    try:
        report = operations.cancel_jobs(app, ["a", "zz"], from_command=True)
        assert (report.cancelled, report.missing) == (("a",), ("zz",))
        assert operations.waiting_jobs(app, "t", from_command=True) == ["b"]
    finally:
        app.stop(5)
    with FileJobStore(path) as again:
        assert [s.id for s in again.jobs()] == ["b"]
    with pytest.raises(CSJDError, match="own memory"):
        operations.cancel_jobs(App(), ["a"], from_command=True)
