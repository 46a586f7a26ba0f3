"""Read-ahead (issue 14): entries held ahead are not running and cost no attempt or delivery;
a worker starts one at hand-over; old ones go back; a graceful stop hands them back; a SIGKILL
costs them only a reclaim; the default adapts to the handlers' speed.

Real dispatchers with their threads on the session server, and worker subprocesses that are
really killed.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from redis_support import DEADLINE, Dispatchers, Workers, assert_all_done, submit_all

from csjd_core import Job, JobContext, JobState, permanent
from csjd_core.backends.redis import QueueKeys
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until

GROUP = "csjd-workers"
KEYS = QueueKeys("csjd:jobs", "default")


HANDED_BACK_MS = 24 * 3600 * 1000  # release.lua makes an entry look idle for ten years


def pending(redis_client: Any) -> dict[str, tuple[str, int]]:
    """Entry id -> (consumer, times delivered) of the group's pending list."""
    rows = redis_client.xpending_range(KEYS.stream, GROUP, "-", "+", 1000)
    return {r["message_id"].decode(): (r["consumer"].decode(), r["times_delivered"]) for r in rows}


def held_by(redis_client: Any, consumer: str) -> int:
    """Entries ``consumer`` holds: its pending entries, less those it handed back (they stay in
    its list, idle for years, until a reclaimer takes them)."""
    rows = redis_client.xpending_range(KEYS.stream, GROUP, "-", "+", 1000, consumername=consumer)
    return sum(1 for r in rows if r["time_since_delivered"] < HANDED_BACK_MS)


class Gate:
    """A handler that records each attempt and blocks the jobs named in ``blocking``."""

    def __init__(self, *blocking: str) -> None:
        self.blocking = set(blocking)
        self.open = threading.Event()
        self.started: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, ctx: JobContext, job: Job) -> None:
        with self.lock:
            self.started.append((job.id, ctx.attempt))
        if job.id in self.blocking:
            assert self.open.wait(DEADLINE)

    def ran(self, job_id: str) -> bool:
        with self.lock:
            return any(started == job_id for started, _ in self.started)


def test_entries_held_ahead_are_not_running_and_start_at_hand_over(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    gate = Gate("a", "b")
    d = dispatchers(workers=1, prefetch=3, block=0.05)
    d.register_handler("t", gate)
    d.submit_batch([Job(i, "t") for i in ("a", "b", "c")])
    d.start()
    consumer = d.backend.consumer
    wait_until(lambda: gate.ran("a") and held_by(redis_client, consumer) == 3, DEADLINE)
    # b and c are in this consumer's pending list, delivered once, and not started.
    for job_id in ("b", "c"):
        status = d.status(job_id)
        assert (status.state, status.attempts) == (JobState.QUEUED, 0)
    assert sorted(n for _, n in pending(redis_client).values()) == [1, 1, 1]
    assert d.status("a").state is JobState.RUNNING
    gate.blocking.discard("a")
    gate.open.set()  # a finishes; b is taken by the worker: started at hand-over
    gate.open = threading.Event()
    wait_until(lambda: gate.ran("b"), DEADLINE)
    # The start is recorded by the reader's next round trip.
    wait_until(lambda: d.status("b").state is JobState.RUNNING, DEADLINE)
    assert d.status("b").attempts == 1
    assert d.status("b").worker_id == consumer
    gate.open.set()
    wait_until(lambda: d.pending() == 0, DEADLINE)
    assert sorted(gate.started) == [("a", 1), ("b", 1), ("c", 1)]
    for job_id in ("a", "b", "c"):
        status = d.status(job_id)
        assert (status.state, status.attempts) == (JobState.SUCCEEDED, 1)


def test_outcomes_of_held_entries_count_their_attempts_whichever_write_lands_first(
    dispatchers: Dispatchers,
) -> None:
    # A held entry's start is recorded with the reader's next round trip; a failure is recorded
    # at once (group commit), so it may land first. Either way the record counts the attempt.
    seen: dict[str, list[int]] = {}

    def handler(ctx: JobContext, job: Job) -> str:
        seen.setdefault(job.id, []).append(ctx.attempt)
        if job.payload == "flaky" and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        if job.payload == "bad":
            raise permanent(ValueError("never works"))
        return job.id

    d = dispatchers(workers=2, prefetch=16)
    d.register_handler("t", handler)
    kinds = ["ok", "flaky", "bad"] * 20
    submit_all(d, [Job(f"{kind}-{i}", "t", kind) for i, kind in enumerate(kinds)])
    d.start()
    wait_until(lambda: d.pending() == 0, DEADLINE)
    for i, kind in enumerate(kinds):
        job_id = f"{kind}-{i}"
        status = d.status(job_id)
        expected = {"ok": (JobState.SUCCEEDED, 1), "flaky": (JobState.SUCCEEDED, 2)}
        assert (status.state, status.attempts) == expected.get(kind, (JobState.FAILED, 1))
        assert seen[job_id] == ([1, 2] if kind == "flaky" else [1])
        # Its start is recorded whichever way (started.lua, or with the outcome).
        assert status.worker_id == d.backend.consumer
        assert status.started_at is not None
        assert status.finished_at is not None
        assert status.started_at <= status.finished_at
    letters = d.dead_letters(count=100)
    assert sorted(letter.job_id for letter in letters) == sorted(
        f"bad-{i}" for i, kind in enumerate(kinds) if kind == "bad"
    )
    assert {letter.attempts for letter in letters} == {1}


def test_a_held_entry_older_than_a_third_of_the_lease_goes_back_unstarted(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    # lease 1 s: an entry held for more than about 0.33 s is handed back, never started here;
    # another consumer runs it as its first attempt, its delivery not counted.
    gate = Gate("slow")
    a = dispatchers(workers=1, prefetch=2, block=0.05)
    a.register_handler("t", gate)
    a.submit_batch([Job("slow", "t"), Job("waiting", "t")])
    a.start()
    wait_until(lambda: gate.ran("slow"), DEADLINE)
    b = dispatchers(workers=1, max_deliveries=1)
    ran_by_b: list[tuple[str, int]] = []
    b.register_handler("t", lambda ctx, job: ran_by_b.append((job.id, ctx.attempt)))
    b.start()
    wait_until(lambda: ran_by_b == [("waiting", 1)], DEADLINE)
    gate.open.set()
    wait_until(lambda: a.pending() == 0, DEADLINE)
    assert not gate.ran("waiting")
    status = a.status("waiting")
    assert (status.state, status.attempts, status.worker_id) == (
        JobState.SUCCEEDED,
        1,
        b.backend.consumer,
    )
    assert a.dead_letters() == []


def test_a_graceful_stop_hands_held_entries_back_unspent(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    gate = Gate("first")
    a = dispatchers(workers=1, prefetch=4, block=0.05, lease=30.0, heartbeat_interval=5.0)
    a.register_handler("t", gate)
    ids = ["first", "h1", "h2", "h3"]
    a.submit_batch([Job(i, "t") for i in ids])
    a.start()
    consumer = a.backend.consumer
    wait_until(lambda: gate.ran("first") and held_by(redis_client, consumer) == 4, DEADLINE)
    stopping = threading.Thread(target=a.stop, args=(DEADLINE,))
    stopping.start()
    wait_until(lambda: a.backend.holdings.stopping, DEADLINE)
    gate.open.set()
    stopping.join(DEADLINE)
    for job_id in ("h1", "h2", "h3"):
        status = a.status(job_id)
        assert (status.state, status.attempts) == (JobState.QUEUED, 0)
    # Claimable at once (not after the 30 s lease), by a consumer that dead-letters any entry
    # delivered twice: the hand-back spent nothing.
    b = dispatchers(workers=2, max_deliveries=1, lease=30.0, heartbeat_interval=5.0)
    ran: list[tuple[str, int]] = []
    b.register_handler("t", lambda ctx, job: ran.append((job.id, ctx.attempt)))
    b.start()
    wait_until(lambda: b.pending() == 0, DEADLINE)
    assert sorted(ran) == [("h1", 1), ("h2", 1), ("h3", 1)]
    assert b.dead_letters() == []
    assert a.status("first").attempts == 1


def test_a_sigkill_costs_held_entries_only_a_reclaim(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    # One worker thread runs a long job and holds three entries ahead; SIGKILL. With
    # max_deliveries=1 the survivor dead-letters the job that was running (its delivery had
    # started an attempt) and runs the held ones as their first attempt.
    a = workers("a", workers=1, prefetch=4)
    producer = dispatchers()
    held = ["h1", "h2", "h3"]
    producer.submit(Job("long", "sleep", {"s": 60}))
    producer.submit_batch([Job(i, "work", {"ms": 0}) for i in held])
    wait_until(lambda: a.started() == ["long"], DEADLINE)
    wait_until(
        lambda: (
            all(producer.status(i).state is JobState.QUEUED for i in held)
            and producer.backend.client.xpending(KEYS.stream, GROUP)["pending"] == 4
        ),
        DEADLINE,
    )
    a.signal(signal.SIGKILL)
    a.wait()
    workers("b", workers=2, max_deliveries=1)
    counts = assert_all_done(workers, held)
    assert all(counts[i] == 1 for i in held)
    for job_id in held:
        status = producer.status(job_id)
        assert (status.state, status.attempts) == (JobState.SUCCEEDED, 1)
    wait_until(lambda: producer.pending() == 0, DEADLINE)
    (letter,) = producer.dead_letters()
    assert (letter.job_id, letter.reason) == ("long", "max_deliveries")


def test_a_hold_lost_again_and_again_is_dead_lettered_by_max_deliveries(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    # A handler that kills its process before its start is recorded leaves the entry held,
    # never started: lost holds are counted in the record and capped like deliveries.
    producer = dispatchers()
    producer.submit(Job("killer", "t"))
    redis_client.xgroup_create(KEYS.stream, GROUP, "0", mkstream=True)
    for n in range(3):  # ghost consumers that read it and vanished before starting it
        if n == 0:
            redis_client.xreadgroup(GROUP, f"ghost{n}", {KEYS.stream: ">"}, count=1)
        else:  # the previous ghost's hold, taken over (as a reclaimer would) and lost again
            (entry,) = pending(redis_client)
            redis_client.xclaim(KEYS.stream, GROUP, f"ghost{n}", 0, [entry], justid=True)
            redis_client.hincrby(KEYS.job("killer"), "lost", 1)
    assert producer.status("killer").state is JobState.QUEUED
    b = dispatchers(workers=1, max_deliveries=2, lease=0.3, heartbeat_interval=0.1)
    ran: list[str] = []
    b.register_handler("t", lambda ctx, job: ran.append(job.id))
    b.start()
    wait_until(lambda: b.dead_count() == 1, DEADLINE)
    (letter,) = b.dead_letters()
    assert letter.reason == "max_deliveries"
    assert "lost 3 times" in letter.error
    assert ran == []
    assert b.status("killer").state is JobState.FAILED


def test_a_lost_hold_runs_as_its_first_attempt_with_its_delivery_undone(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    producer = dispatchers()
    producer.submit(Job("j", "t"))
    redis_client.xgroup_create(KEYS.stream, GROUP, "0", mkstream=True)
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=1)  # held, never started
    b = dispatchers(workers=1, max_deliveries=1, lease=0.3, heartbeat_interval=0.1)
    ran: list[tuple[str, int]] = []
    b.register_handler("t", lambda ctx, job: ran.append((job.id, ctx.attempt)))
    b.start()
    wait_until(lambda: b.pending() == 0, DEADLINE)
    assert ran == [("j", 1)]
    assert b.dead_letters() == []
    assert redis_client.hget(KEYS.job("j"), "lost") == b"1"


def test_the_default_read_ahead_follows_the_handlers_speed(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    # Fast handlers: the reader holds up to `workers` entries ahead. Slow ones (200 ms, far
    # longer than a few round trips): it holds none, so other consumers can take the backlog.
    workers = 4
    speed = {"ms": 0.0}

    def handler(ctx: JobContext, job: Job) -> None:
        if speed["ms"]:
            ctx.wait(speed["ms"] / 1000)

    d: RedisDistributedDispatcher = dispatchers(workers=workers, block=0.05)
    d.register_handler("t", handler)
    submit_all(d, [Job(f"fast-{i}", "t") for i in range(3000)])
    holdings = d.backend.holdings
    d.start()
    wait_until(lambda: d.pending() == 0, DEADLINE)
    assert holdings.ahead_target() == workers, (holdings.round_trip, holdings.handler_time)
    speed["ms"] = 200.0
    submit_all(d, [Job(f"slow-{i}", "t") for i in range(200)])
    consumer = d.backend.consumer
    wait_until(lambda: holdings.ahead_target() == 0 and not holdings.ahead, DEADLINE)
    # From now on it holds nothing ahead: the backlog stays in the stream for other consumers.
    # Its pending list holds what its workers run, and for a moment the successes being
    # recorded (the next entries are read in the same round trip as those are acked).
    for _ in range(10):
        assert not holdings.ahead
        assert held_by(redis_client, consumer) <= 2 * workers
        assert d.backend.ready_count() > 100
        threading.Event().wait(0.05)
