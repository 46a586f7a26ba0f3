"""The cancel part of the backend seam (`Backend.cancel`, `Backend.cancelled`, and how `succeed`,
`retry` and `fail` yield to a cancellation): one contract over memory, the file store, Redis and
Redis Cluster, with the factories of `test_backend_contract`. Each test checks the job's record,
the pending count and what a fetch still finds, not only the verdicts.

Where a distributed backend differs by design the test says so: a running job's cancellation
reaches its consumer with the next lease renewal (``renew``: the heartbeat's round trip), where
a local backend tells the engine at once (``on_cancel``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from test_backend_contract import CAP, ERROR, FACTORIES, SETTINGS, fetch, poll

from csjd_core import Job, JobState
from csjd_core.backends.base import (
    Backend,
    CancelVerdict,
    Delivery,
    SlotOp,
    SlotRequest,
    SlotVerdict,
)
from csjd_core.periodic import slot_id

#: What the backend told the engine: (job id, reason) per ``on_cancel``, and the counts of
#: ``on_cancelled_unstarted``.
TOLD: list[tuple[str, str]] = []
UNSTARTED: list[int] = []


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    TOLD.clear()
    UNSTARTED.clear()
    instance = FACTORIES[request.param](request)
    settings = dataclasses.replace(
        SETTINGS,
        on_cancel=lambda job_id, reason: TOLD.append((job_id, reason)),
        on_cancelled_unstarted=UNSTARTED.append,
    )
    assert instance.open(settings) == 0
    try:
        yield instance
    finally:
        instance.wake()
        instance.close(clean=True)


def running(backend: Backend, job_id: str) -> Delivery:
    """Enqueue ``job_id`` and start its first attempt."""
    backend.enqueue([Job(job_id, "t")])
    delivery = fetch(backend)
    assert delivery.job.id == job_id
    assert backend.started(delivery, "w") is None
    return delivery


def told(backend: Backend, delivery: Delivery) -> None:
    """The running attempt learns of its cancellation: at once in process; with the next
    lease renewal (the heartbeat's round trip) in Redis."""
    if not backend.local:
        assert TOLD == []
        assert backend.renew([delivery]) == [True]
    assert told_now(delivery.job.id)
    if not backend.local:
        assert delivery.cancel == "cancelled"


def told_now(job_id: str) -> bool:
    return [(job_id, "cancelled")] == TOLD


def finished(backend: Backend, job_id: str) -> tuple[JobState, str | None]:
    status = backend.status(job_id)
    assert status is not None
    return status.state, status.cancel_reason


# -- waiting jobs end at once ----------------------------------------------------------------


def test_a_queued_job_is_cancelled_and_never_runs(backend: Backend) -> None:
    backend.enqueue([Job("q", "t", {"n": 1}), Job("next", "t")])
    assert backend.cancel("q", None) is CancelVerdict.CANCELLED
    status = backend.status("q")
    assert status is not None
    assert (status.state, status.cancel_reason, status.attempts) == (
        JobState.CANCELLED,
        "cancelled",
        0,
    )
    assert status.finished_at is not None
    assert status.payload == {"n": 1}  # the record keeps the job's data
    assert backend.pending() == 1
    assert UNSTARTED == [1]
    assert fetch(backend).job.id == "next"
    assert poll(backend, 0.2) is None
    assert backend.cancel("q", None) is CancelVerdict.ENDED  # a second cancel changes nothing


def test_queued_jobs_of_every_priority_are_cancelled_where_they_wait(backend: Backend) -> None:
    # In process each priority has its ready deque; in Redis each band its stream: the cancel
    # must find the job in its own (was: only the default band's stream was looked at).
    backend.enqueue([Job("high", "t", priority=10), Job("low", "t", priority=-10)])
    backend.enqueue([Job("plain", "t"), Job("high2", "t", priority=50)])
    assert backend.cancel("high", None) is CancelVerdict.CANCELLED
    assert backend.cancel("low", None) is CancelVerdict.CANCELLED
    assert [finished(backend, i)[0] for i in ("high", "low")] == [JobState.CANCELLED] * 2
    assert backend.pending() == 2
    assert backend.ready_count() == 2
    assert [fetch(backend).job.id for _ in range(2)] == ["high2", "plain"]
    assert poll(backend, 0.2) is None


def test_a_cancelled_id_is_finished_for_reuse_and_the_cap(backend: Backend) -> None:
    backend.enqueue([Job(f"j{i}", "t") for i in range(CAP)])
    assert backend.cancel("j0", None) is CancelVerdict.CANCELLED
    backend.enqueue([Job("j0", "t")])  # the id is free again, and so is its place under the cap
    assert backend.pending() == CAP
    assert finished(backend, "j0") == (JobState.QUEUED, None)


def test_a_scheduled_job_is_cancelled_and_never_becomes_ready(backend: Backend) -> None:
    backend.enqueue([Job("later", "t", run_at=datetime.now(UTC) + timedelta(seconds=0.2))])
    assert backend.cancel("later", None) is CancelVerdict.CANCELLED
    assert finished(backend, "later") == (JobState.CANCELLED, "cancelled")
    assert backend.pending() == 0
    assert poll(backend, 0.6) is None


def test_a_job_waiting_for_its_retry_is_cancelled(backend: Backend) -> None:
    delivery = running(backend, "r")
    assert backend.retry(delivery, ERROR, 0.2)
    assert backend.cancel("r", None) is CancelVerdict.CANCELLED
    status = backend.status("r")
    assert status is not None
    assert (status.state, status.attempts, status.last_error) == (
        JobState.CANCELLED,
        1,
        ERROR.message,
    )
    assert backend.pending() == 0
    assert poll(backend, 0.6) is None


def test_unknown_and_finished_jobs(backend: Backend) -> None:
    assert backend.cancel("nobody", None) is CancelVerdict.NOT_FOUND
    delivery = running(backend, "done")
    assert backend.succeed(delivery, 7)
    assert backend.cancel("done", None) is CancelVerdict.ENDED
    assert finished(backend, "done") == (JobState.SUCCEEDED, None)
    assert TOLD == []


# -- running jobs: requested, then one final state -------------------------------------------


def test_a_running_job_that_finishes_anyway_ends_cancelled_with_its_result(
    backend: Backend,
) -> None:
    delivery = running(backend, "run")
    assert backend.cancel("run", None) is CancelVerdict.REQUESTED
    assert backend.cancel("run", None) is CancelVerdict.REQUESTED  # asked twice: still so
    told(backend, delivery)
    status = backend.status("run")
    assert status is not None
    assert (status.state, status.cancel_reason) == (JobState.RUNNING, "cancelled")
    assert backend.succeed(delivery, {"kept": True})  # settle refuses 'succeeded'
    assert delivery.cancel == "cancelled"
    status = backend.status("run")
    assert status is not None
    assert (status.state, status.result, status.attempts) == (
        JobState.CANCELLED,
        {"kept": True},
        1,
    )
    assert backend.pending() == 0


@pytest.mark.parametrize("outcome", ["retry", "fail"])
def test_a_cancelled_job_is_never_retried_nor_dead_lettered(backend: Backend, outcome: str) -> None:
    delivery = running(backend, "x")
    assert backend.cancel("x", None) is CancelVerdict.REQUESTED
    if outcome == "retry":
        assert backend.retry(delivery, ERROR, 0.0)
    else:
        assert backend.fail(delivery, ERROR)
    assert delivery.cancel == "cancelled"
    status = backend.status("x")
    assert status is not None
    assert (status.state, status.last_error) == (JobState.CANCELLED, ERROR.message)
    assert backend.pending() == 0
    assert poll(backend, 0.3) is None
    dead = getattr(backend, "dead_count", None)
    if dead is not None:
        assert dead() == 0


def test_an_attempt_that_stops_records_cancelled(backend: Backend) -> None:
    delivery = running(backend, "stop")
    assert backend.cancel("stop", None) is CancelVerdict.REQUESTED
    assert backend.cancelled(delivery, "cancelled", ERROR)
    status = backend.status("stop")
    assert status is not None
    assert (status.state, status.cancel_reason, status.last_error) == (
        JobState.CANCELLED,
        "cancelled",
        ERROR.message,
    )
    assert backend.pending() == 0
    assert backend.cancelled(delivery, "cancelled", None) is False  # one outcome only


def test_a_success_recorded_first_wins(backend: Backend) -> None:
    delivery = running(backend, "first")
    assert backend.succeed(delivery, 1)
    assert delivery.cancel is None
    assert backend.cancel("first", None) is CancelVerdict.ENDED
    assert finished(backend, "first") == (JobState.SUCCEEDED, None)


def test_a_cancel_after_the_fetch_stops_the_attempt_before_its_handler(
    backend: Backend,
) -> None:
    """In process a fetched job whose handler has not begun is cancelled as a running one: its
    start says so, and the handler never runs. (Redis starts an entry when it reads it.)"""
    if not backend.local:
        pytest.skip("a distributed backend starts the attempt when it reads the entry")
    backend.enqueue([Job("f", "t")])
    delivery = fetch(backend)
    assert backend.cancel("f", None) is CancelVerdict.REQUESTED
    assert backend.started(delivery, "w") == "cancelled"
    assert backend.cancelled(delivery, "cancelled", None)
    assert finished(backend, "f") == (JobState.CANCELLED, "cancelled")


# -- a finished state wherever one matters ---------------------------------------------------


def test_a_cancelled_run_is_finished_for_a_schedules_overlap_rule(backend: Backend) -> None:
    """``max_running=1``: a slot is skipped while the previous run is unfinished, and taken
    once that run is cancelled (enqueue.lua's check in Redis, the unfinished index locally)."""

    def slot(at: float) -> SlotRequest:
        job = Job(slot_id("nightly", at), "t", {"args": [], "kwargs": {}})
        return SlotRequest(SlotOp.SLOT, "nightly", None, at, job, max_running=1)

    assert backend.admit_slot(slot(1000.0)) is SlotVerdict.ENQUEUED
    assert backend.admit_slot(slot(2000.0)) is SlotVerdict.OVERLAP
    assert backend.cancel(slot_id("nightly", 1000.0), None) is CancelVerdict.CANCELLED
    assert backend.admit_slot(slot(3000.0)) is SlotVerdict.ENQUEUED


# -- expiry: a job not started by its ``expires`` never runs ---------------------------------


def test_an_expired_job_is_not_run_and_ends_cancelled_expired(backend: Backend) -> None:
    now = datetime.now(UTC)
    backend.enqueue(
        [
            Job("stale", "t", {"n": 1}, expires=now - timedelta(seconds=1)),
            Job("fresh", "t", expires=now + timedelta(minutes=5)),
        ]
    )
    delivery = fetch(backend)
    assert delivery.job.id == "fresh"
    assert delivery.job.expires is not None  # it travels with the job
    assert abs((delivery.job.expires - (now + timedelta(minutes=5))).total_seconds()) < 0.002
    status = backend.status("stale")
    assert status is not None
    assert (status.state, status.cancel_reason, status.attempts, status.payload) == (
        JobState.CANCELLED,
        "expired",
        0,
        {"n": 1},
    )
    assert UNSTARTED == [1]
    assert backend.pending() == 1


def test_expired_jobs_of_every_priority_end_where_they_wait(backend: Backend) -> None:
    # Redis ends an expired entry in its band's stream (read_start.lua reads every band).
    past = datetime.now(UTC) - timedelta(seconds=1)
    backend.enqueue(
        [
            Job("stale-high", "t", priority=10, expires=past),
            Job("stale-low", "t", priority=-10, expires=past),
            Job("fresh-low", "t", priority=-10),
        ]
    )
    assert fetch(backend).job.id == "fresh-low"
    for job_id in ("stale-high", "stale-low"):
        assert finished(backend, job_id) == (JobState.CANCELLED, "expired")
    assert backend.pending() == 1
    assert poll(backend, 0.2) is None


def test_a_scheduled_job_that_expires_before_its_run_at_never_runs(backend: Backend) -> None:
    now = datetime.now(UTC)
    backend.enqueue(
        [
            Job(
                "late",
                "t",
                run_at=now + timedelta(seconds=0.2),
                expires=now + timedelta(seconds=0.1),
            )
        ]
    )
    assert poll(backend, 0.8) is None
    assert finished(backend, "late") == (JobState.CANCELLED, "expired")
    assert backend.pending() == 0


def test_expiry_is_for_a_job_that_never_started(backend: Backend) -> None:
    """A retry of a job that started before its expiry still runs."""
    backend.enqueue([Job("r", "t", expires=datetime.now(UTC) + timedelta(seconds=0.3))])
    delivery = fetch(backend)
    backend.started(delivery, "w")
    assert backend.retry(delivery, ERROR, 0.5)
    again = fetch(backend)
    assert (again.job.id, again.attempt) == ("r", 2)
