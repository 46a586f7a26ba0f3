"""The fenced scripts and the reclaimer, driven step by step with two consumers in one process.

These tests call the backend's internals (``reader.accept``, ``maintenance.reclaim``,
``maintenance.collect_consumers``)
directly instead of waiting for its threads, so every interleaving is exact: consumer A reads an
entry, B takes it over, and A comes back late. RELIABILITY.md rules 2, 3, 5, 6, 7 and 12.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from redis_support import DEADLINE, Consumers, fast_config

from csjd_core import DuplicateJob, Job, JobContext, JobState
from csjd_core.backends.base import AttemptError, Delivery
from csjd_core.backends.redis import QueueKeys, RedisStreamsBackend, codec
from csjd_core.config import RedisConfig
from csjd_core.testing import wait_until

GROUP = "csjd-workers"
KEYS = QueueKeys("csjd:jobs", "default")
LEASE = 0.3  # the lease of `Consumers`


def read(backend: RedisStreamsBackend, count: int = 10) -> list[Delivery]:
    """What the reader thread does once: XREADGROUP '>' then the start script."""
    reply = backend.client.xreadgroup(GROUP, backend.consumer, {KEYS.stream: ">"}, count=count)
    for _, entries in reply:
        backend.reader.accept(KEYS, entries)
    out = []
    while (delivery := backend.fetch(0)) is not None:
        out.append(delivery)
    return out


def reclaim(backend: RedisStreamsBackend) -> list[Delivery]:
    """Run the reclaimer until it hands over at least one delivery (after the lease)."""

    def claimed() -> list[Delivery]:
        backend.maintenance.reclaim()
        out = []
        while (delivery := backend.fetch(0)) is not None:
            out.append(delivery)
        return out

    return wait_until(claimed, DEADLINE, interval=0.02)


def pel(redis_client: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = redis_client.xpending_range(KEYS.stream, GROUP, "-", "+", 100)
    return rows


def owner(redis_client: Any, entry: str) -> tuple[str, int]:
    (row,) = redis_client.xpending_range(KEYS.stream, GROUP, entry, entry, 1)
    return row["consumer"].decode(), row["times_delivered"]


ERROR = AttemptError("error", "RuntimeError: late", "Traceback ...")


def started_by_ghost(redis_client: Any, ids: list[str]) -> None:
    """Record the jobs as started, as the consumer that read them would have (an entry never
    started is a lost hold, not a delivery: see the read-ahead tests)."""
    for job_id in ids:
        redis_client.hset(KEYS.job(job_id), "state", "running")


def queued_success(consumers: Consumers, backend: RedisStreamsBackend, d: Delivery) -> bool:
    """A success taken by the reader's next round trip, as on the hot path; True if recorded."""
    backend.holdings.pipelining = True  # as the reader sets it once it cycles
    assert backend.succeed_nowait(d, "queued") is None
    assert d.job.id not in [lost.job.id for lost in consumers.lost]
    backend.reader.cycle(read=False)  # the round trip: records it, reads nothing
    return d not in consumers.lost


@pytest.mark.parametrize("takeover", ["reclaimer", "xclaim", "xclaim-justid"])
@pytest.mark.parametrize("late", ["succeed", "succeed_nowait", "retry", "fail"])
def test_a_late_outcome_from_the_old_owner_is_refused(
    consumers: Consumers, redis_client: Any, takeover: str, late: str
) -> None:
    a, b = consumers("A"), consumers("B")
    a.enqueue([Job("j", "t")])
    (da,) = read(a)
    entry = da.ref[1]
    assert owner(redis_client, entry) == ("A", 1)
    assert a.status("j").state is JobState.RUNNING

    if takeover == "reclaimer":  # A stopped renewing (paused, partitioned): B reclaims
        (db,) = reclaim(b)
    else:  # a takeover by hand, with or without a new delivery count
        redis_client.xclaim(KEYS.stream, GROUP, "B", 0, [entry], justid=takeover == "xclaim-justid")
        b.reader.accept(KEYS, redis_client.xrange(KEYS.stream, entry, entry))
        db = b.fetch(0)
        assert db is not None
    assert owner(redis_client, entry)[0] == "B"
    assert db.attempt == 2

    refused = {
        "succeed": lambda: a.succeed(da, "from A"),
        "succeed_nowait": lambda: queued_success(consumers, a, da),
        "retry": lambda: a.retry(da, ERROR, 0.0),
        "fail": lambda: a.fail(da, ERROR),
    }[late]()
    assert refused is False
    assert consumers.lost == ([da] if late == "succeed_nowait" else [])
    assert owner(redis_client, entry)[0] == "B"  # the entry is still pending, still B's
    running = a.status("j")
    assert running.state is JobState.RUNNING
    assert running.worker_id == "B"
    assert a.dead_letters() == []
    assert redis_client.zcard(KEYS.delayed) == 0

    assert b.succeed(db, "from B") is True
    done = a.status("j")
    assert (done.state, done.result, done.attempts, done.worker_id) == (
        JobState.SUCCEEDED,
        "from B",
        2,
        "B",
    )
    assert pel(redis_client) == []
    assert redis_client.xlen(KEYS.stream) == 0
    assert a.pending() == 0
    assert a.succeed(da, "again") is False  # acked and deleted: still refused


def test_a_queued_success_is_recorded_by_the_next_round_trip(
    consumers: Consumers, redis_client: Any
) -> None:
    a = consumers("A")
    a.enqueue([Job("j", "t")])
    (da,) = read(a)
    assert queued_success(consumers, a, da) is True
    done = a.status("j")
    assert (done.state, done.result, done.attempts) == (JobState.SUCCEEDED, "queued", 1)
    assert pel(redis_client) == []
    assert a.pending() == 0
    assert a.holdings.owned == {}


def test_a_queued_success_outlives_an_unreachable_server(redis_server_factory: Any) -> None:
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    made = Consumers(server.url)
    try:
        a = made("A")
        a.enqueue([Job("j", "t")])
        (da,) = read(a)
        a.holdings.pipelining = True
        assert a.succeed_nowait(da, "queued") is None
        server.kill()
        with pytest.raises(redis.ConnectionError):
            a.reader.cycle(read=False)
        assert len(a.holdings.acks) == 1  # kept for the next round trip, not lost
        server.restart()
        assert a.status("j").state is JobState.RUNNING
        a.reader.cycle(
            read=False
        )  # the restarted server lost the scripts: loaded again, success kept
        assert len(a.holdings.acks) == 1
        a.reader.cycle(read=False)
        assert made.lost == []
        assert a.status("j").state is JobState.SUCCEEDED
        assert a.pending() == 0
    finally:
        made.close()


def test_a_stale_renewal_is_refused_and_does_not_take_the_entry_back(
    consumers: Consumers, redis_client: Any
) -> None:
    a, b = consumers("A"), consumers("B")
    a.enqueue([Job("j", "t")])
    (da,) = read(a)
    entry = da.ref[1]
    assert a.renew([da]) == [True]  # the owner renews: fine

    # B takes the entry without changing its delivery count (XCLAIM JUSTID): only the owner
    # check can refuse A now. Then the count check: B's own renewal with a stale count.
    redis_client.xclaim(KEYS.stream, GROUP, "B", 0, [entry], justid=True)
    assert owner(redis_client, entry) == ("B", 1)
    assert a.renew([da]) == [False]
    assert owner(redis_client, entry) == ("B", 1)
    stale_b = Delivery(da.job, da.attempt, da.max_attempts, 0, da.ref)  # wrong delivery count
    assert b.renew([stale_b]) == [False]
    assert b.renew([Delivery(da.job, da.attempt, da.max_attempts, 1, da.ref)]) == [True]

    # A normal takeover (count 2): A's renewal with its old count is refused as well, and the
    # entry's idle time keeps growing (A did not reset it).
    redis_client.xclaim(KEYS.stream, GROUP, "B", 0, [entry])
    assert owner(redis_client, entry) == ("B", 2)
    idle_before = pel(redis_client)[0]["time_since_delivered"]
    wait_until(lambda: pel(redis_client)[0]["time_since_delivered"] > idle_before + 20, DEADLINE)
    assert a.renew([da]) == [False]
    assert owner(redis_client, entry) == ("B", 2)
    assert pel(redis_client)[0]["time_since_delivered"] > idle_before + 20


def test_renewal_keeps_an_entry_from_the_reclaimer(consumers: Consumers, redis_client: Any) -> None:
    a, b = consumers("A"), consumers("B")
    a.enqueue([Job("j", "t")])
    (da,) = read(a)
    renewals = 0

    def renewed_past_two_leases() -> bool:
        nonlocal renewals
        assert a.renew([da]) == [True]
        renewals += 1
        b.maintenance.reclaim()
        assert b.fetch(0) is None
        return renewals * 0.05 > 2 * LEASE

    wait_until(renewed_past_two_leases, DEADLINE, interval=0.05)
    assert owner(redis_client, da.ref[1]) == ("A", 1)
    assert a.succeed(da, None) is True


def test_max_deliveries_dead_letters_every_entry_over_the_limit(
    consumers: Consumers, redis_client: Any
) -> None:
    # Three entries, each delivered (and started) max_deliveries=2 times to a consumer that
    # died. The reclaimer (room for one job at a time) must dead-letter all three and run none.
    producer = consumers("producer")
    producer.enqueue([Job(f"j{i}", "t") for i in range(3)])
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=10)
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: "0"}, count=10)  # delivery 2
    started_by_ghost(redis_client, [f"j{i}" for i in range(3)])
    assert [row["times_delivered"] for row in pel(redis_client)] == [2, 2, 2]
    b = consumers("B", max_deliveries=2, prefetch=1)

    def all_dead() -> bool:
        b.maintenance.reclaim()
        assert b.fetch(0) is None, "an entry over max_deliveries was claimed to run again"
        return len(b.dead_letters()) == 3

    wait_until(all_dead, DEADLINE, interval=0.02)
    letters = b.dead_letters()
    assert sorted(letter.job_id for letter in letters) == ["j0", "j1", "j2"]
    assert {letter.reason for letter in letters} == {"max_deliveries"}
    assert all("delivered 2 times" in letter.error for letter in letters)
    assert pel(redis_client) == []
    assert b.pending() == 0
    assert b.status("j1").state is JobState.FAILED


def test_max_deliveries_lets_entries_under_the_limit_run(
    consumers: Consumers, redis_client: Any
) -> None:
    producer = consumers("producer")
    producer.enqueue([Job(f"j{i}", "t") for i in range(4)])
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=2)  # j0, j1: once
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=2)  # j2, j3: once
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: "0"}, count=2)  # j0, j1: twice
    started_by_ghost(redis_client, [f"j{i}" for i in range(4)])
    b = consumers("B", max_deliveries=2, prefetch=1)
    claimed: list[str] = []

    def drained() -> bool:
        b.maintenance.reclaim()
        while (delivery := b.fetch(0)) is not None:
            claimed.append(delivery.job.id)
            assert b.succeed(delivery, None)
        return not pel(redis_client)

    wait_until(drained, DEADLINE, interval=0.02)
    assert sorted(claimed) == ["j2", "j3"]
    assert sorted(letter.job_id for letter in b.dead_letters()) == ["j0", "j1"]


def test_a_deleted_pending_entry_is_counted_and_dropped_by_the_reclaimer(
    consumers: Consumers, redis_client: Any
) -> None:
    producer = consumers("producer")
    producer.enqueue([Job("gone", "t"), Job("kept", "t")])
    reply = redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=10)
    gone_entry = reply[0][1][0][0]
    assert redis_client.xdel(KEYS.stream, gone_entry) == 1
    b = consumers("B")
    (delivery,) = reclaim(b)
    assert delivery.job.id == "kept"
    assert b.deleted_entries == 1
    assert [row["message_id"] for row in pel(redis_client)] == [delivery.ref[1].encode()]
    assert b.dead_letters() == []


def test_a_deleted_entry_in_our_own_pending_list_is_counted_not_dead_lettered(
    consumers: Consumers, redis_client: Any, redis_url: str
) -> None:
    # A stable consumer name reads its own PEL first when it starts (a reply lost on the wire
    # strands entries there). An entry deleted meanwhile comes back with no fields.
    producer = consumers("producer")
    producer.enqueue([Job("gone", "t"), Job("kept", "t")])
    reply = redis_client.xreadgroup(GROUP, "node-a", {KEYS.stream: ">"}, count=10)
    redis_client.xdel(KEYS.stream, reply[0][1][0][0])
    node = consumers("node-a", lease=30.0, heartbeat_interval=5.0)
    history = redis_client.xreadgroup(GROUP, "node-a", {KEYS.stream: "0"}, count=10)
    node.reader.accept(KEYS, history[0][1])
    delivery = node.fetch(0)
    assert delivery is not None
    assert delivery.job.id == "kept"
    assert node.deleted_entries == 1
    assert node.dead_letters() == []
    assert len(pel(redis_client)) == 1


def test_consumer_gc_deletes_only_expired_consumers_with_empty_pending_lists(
    consumers: Consumers, redis_client: Any
) -> None:
    producer = consumers("producer")
    producer.enqueue([Job("j", "t")])
    redis_client.xgroup_createconsumer(KEYS.stream, GROUP, "ghost-idle")
    redis_client.xgroup_createconsumer(KEYS.stream, GROUP, "alive-idle")
    redis_client.set(KEYS.heartbeat_prefix + "alive-idle", "1", px=60_000)
    redis_client.xreadgroup(GROUP, "ghost-busy", {KEYS.stream: ">"}, count=1)

    def names() -> set[str]:
        return {c["name"].decode() for c in redis_client.xinfo_consumers(KEYS.stream, GROUP)}

    gc = consumers("gc")
    gc.maintenance.collect_consumers()
    assert names() == {"alive-idle", "ghost-busy"}
    assert len(pel(redis_client)) == 1  # the busy ghost kept its pending entry

    (delivery,) = reclaim(gc)  # after the lease the entry moves to gc; now the ghost is empty
    gc.maintenance.collect_consumers()
    assert names() == {"alive-idle", "gc"}
    assert gc.succeed(delivery, None) is True


@pytest.mark.parametrize("outcome", ["succeed", "retry", "fail"])
def test_an_outcome_after_redis_lost_the_group_is_refused_not_raised(
    consumers: Consumers, redis_client: Any, outcome: str
) -> None:
    # Redis restarted without persistence while the attempt ran: stream, group and job record
    # are gone, so every script meets NOGROUP. The attempt lost its claim; the worker thread
    # that records it must not die of the error.
    a = consumers("A")
    a.enqueue([Job("j", "t")])
    (da,) = read(a)
    redis_client.flushall()
    recorded = {
        "succeed": lambda: a.succeed(da, 1),
        "retry": lambda: a.retry(da, ERROR, 0.0),
        "fail": lambda: a.fail(da, ERROR),
    }[outcome]()
    assert recorded is False
    assert redis_client.keys("*") == []


def test_the_reader_and_maintenance_threads_outlive_unexpected_errors(
    redis_client: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Safety nets: one unexpected error must not end the reader (the process would stop
    # consuming while its heartbeat says it is alive) or the maintenance thread (no lease would
    # be renewed any more: every running job would be run again elsewhere).
    from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415

    d = RedisDistributedDispatcher(RedisConfig(url=redis_url), fast_config(workers=2))
    backend = d.backend
    parts = {
        "_accept_read": backend.reader,
        "collect_queue": backend.maintenance,  # run by the maintainer (this consumer)
        "heartbeat": backend.maintenance,
    }
    failures = dict.fromkeys(parts, 1)
    for name, part in parts.items():
        original = getattr(part, name)

        def failing(*args: Any, _name: str = name, _original: Any = original) -> Any:
            if failures[_name]:
                failures[_name] -= 1
                raise RuntimeError(f"injected failure in {_name}")
            return _original(*args)

        monkeypatch.setattr(part, name, failing)
    ran: list[str] = []
    d.register_handler("t", lambda ctx, job: ran.append(job.id))
    try:
        # Waiting before the reader starts, "first" is read by a cycle (read_start.lua), not by
        # a blocking read: taking it fails once, it is handed back and read again.
        d.submit(Job("first", "t"))
        d.start()
        wait_until(lambda: not any(failures.values()), DEADLINE)
        d.submit(Job("second", "t"))
        wait_until(lambda: sorted(ran) == ["first", "second"], DEADLINE)
        assert d.status("first").attempts == 1
        assert all(thread.is_alive() for thread in backend._threads)
    finally:
        d.stop(5)


def test_a_batch_that_repeats_an_id_admits_nothing(consumers: Consumers) -> None:
    producer = consumers("producer")
    with pytest.raises(DuplicateJob):
        producer.enqueue([Job("p", "t"), Job("q", "t"), Job("p", "t")])
    assert producer.pending() == 0
    assert producer.status("p") is None
    assert producer.status("q") is None
    producer.enqueue([Job("p", "t"), Job("q", "t")])
    assert producer.pending() == 2


def test_a_refused_late_outcome_does_not_stop_renewing_the_new_attempt(
    consumers: Consumers, redis_client: Any
) -> None:
    # A runs the job, loses it to B, and takes it back (B died): two attempts of A exist, the
    # old one fenced out. Its refused outcome must not forget the new attempt, whose lease
    # the heartbeat keeps renewing (else it is reclaimed and run a third time).
    a = consumers("A")
    a.enqueue([Job("j", "t")])
    (old,) = read(a)
    entry = old.ref[1]
    redis_client.xclaim(KEYS.stream, GROUP, "B", 0, [entry])
    redis_client.xclaim(KEYS.stream, GROUP, "A", 0, [entry])
    a.reader.accept(KEYS, redis_client.xrange(KEYS.stream, entry, entry))
    new = a.fetch(0)
    assert new is not None
    assert new.attempt == 2
    assert a.succeed(old, "stale") is False

    idle = lambda: pel(redis_client)[0]["time_since_delivered"]  # noqa: E731
    wait_until(lambda: idle() >= 50, DEADLINE)
    a.maintenance.heartbeat()  # renews every attempt this consumer still runs
    assert idle() < 50
    assert a.succeed(new, "fresh") is True
    assert a.status("j").result == "fresh"


def test_entries_reclaimed_at_start_are_not_read_again_from_our_own_pending_list(
    consumers: Consumers, redis_client: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At start the reader first reads this consumer's own pending list (id 0); the reclaimer
    # runs in another thread. Entries the reclaimer has just claimed into that list must not
    # be read and started a second time. Here the reclaimer is made to win the race.
    from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415

    producer = consumers("producer")
    producer.enqueue([Job("j0", "t"), Job("j1", "t")])
    redis_client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=10)
    wait_until(
        lambda: min(r["time_since_delivered"] for r in pel(redis_client)) > LEASE * 1000, DEADLINE
    )
    d = RedisDistributedDispatcher(
        RedisConfig(url=redis_url), fast_config(workers=2, lease=LEASE, heartbeat_interval=0.1)
    )
    backend = d.backend
    reclaimed = threading.Event()
    reclaim, xreadgroup = backend.maintenance.reclaim_queue, redis.Redis.xreadgroup

    def reclaim_and_tell(keys: QueueKeys) -> tuple[int, bool]:
        done = reclaim(keys)  # the scan of the queue's maintainer (this consumer)
        if backend.holdings.owned:  # it claimed the ghost's entries into our pending list
            reclaimed.set()
        return done

    def read_after_a_reclaim(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        if "0" in args[2].values():  # the reader's first read: its own pending list
            reclaimed.wait(4 * LEASE)  # (with the fix, the reclaimer waits for this read)
        return xreadgroup(self, *args, **kwargs)

    monkeypatch.setattr(backend.maintenance, "reclaim_queue", reclaim_and_tell)
    monkeypatch.setattr(redis.Redis, "xreadgroup", read_after_a_reclaim)
    ran: list[tuple[str, int]] = []

    def work(ctx: JobContext, job: Job) -> None:
        ran.append((job.id, ctx.attempt))
        time.sleep(0.3)  # the job's work: still running when the reader starts

    d.register_handler("t", work)
    try:
        d.start()
        wait_until(lambda: d.pending() == 0, DEADLINE)
        assert sorted(ran) == [("j0", 1), ("j1", 1)]
        assert [d.status(i).attempts for i in ("j0", "j1")] == [1, 1]
    finally:
        d.stop(5)


def test_entries_handed_back_at_stop_are_reclaimed_at_once_without_a_spent_delivery(
    consumers: Consumers, redis_client: Any
) -> None:
    # Entries read ahead but never run are handed back when the consumer stops: claimable at
    # once (not after the lease), the attempt undone, and the delivery not counted against
    # max_deliveries (else rolling restarts could dead-letter a job that never ran).
    a = consumers("A", lease=30.0, heartbeat_interval=5.0)
    b = consumers("B", lease=30.0, heartbeat_interval=5.0, max_deliveries=1)
    a.enqueue([Job("j", "t")])
    reply = redis_client.xreadgroup(GROUP, "A", {KEYS.stream: ">"}, count=1)
    a.reader.accept(KEYS, reply[0][1])  # in A's read-ahead buffer, started, not running
    assert a.status("j").attempts == 1
    a.wake()  # stop fetching: the buffer is handed back
    assert a.status("j").state is JobState.QUEUED
    assert a.status("j").attempts == 0
    (delivery,) = reclaim(b)  # no lease to wait for (30 s here)
    assert (delivery.job.id, delivery.attempt) == ("j", 1)
    assert owner(redis_client, delivery.ref[1]) == ("B", 1)
    assert b.dead_letters() == []
    assert b.succeed(delivery, None) is True


def test_an_outcome_moves_a_compact_records_data_into_it(
    consumers: Consumers, redis_client: Any
) -> None:
    # A queued job's record leaves its data to the stream entry, which the outcome deletes: the
    # data moves into the record with it (a retry is promoted from it, status() shows it).
    a = consumers("A")
    jobs = [Job(i, "t", {"n": i}) for i in ("ok", "again", "dead")]
    a.enqueue(jobs)
    data = {codec.text(f[b"id"]): f[b"d"] for _, f in redis_client.xrange(KEYS.stream)}
    assert not any(redis_client.hexists(KEYS.job(job.id), "data") for job in jobs)
    ok, again, dead = read(a)
    assert a.succeed(ok, "r") and a.retry(again, ERROR, 60.0) and a.fail(dead, ERROR)
    assert redis_client.xlen(KEYS.stream) == 0
    for job, state in zip(jobs, (JobState.SUCCEEDED, JobState.SCHEDULED, JobState.FAILED)):
        assert redis_client.hget(KEYS.job(job.id), "data") == data[job.id]
        assert (a.status(job.id).state, a.status(job.id).payload) == (state, job.payload)
    (letter,) = a.dead_letters()
    assert letter.data == data["dead"].decode()


def test_a_retry_whose_data_is_gone_is_dead_lettered_not_parked(
    consumers: Consumers, redis_client: Any
) -> None:
    # Its entry deleted by hand while it ran, and no data in the outcome: parked in the delayed
    # set, the job could never be promoted (nothing to rebuild its entry from).
    a = consumers("A")
    a.enqueue([Job("j", "t", {"n": 1})])
    (d,) = read(a)
    redis_client.xdel(KEYS.stream, d.ref[1])
    bare = Delivery(d.job, d.attempt, d.max_attempts, d.token, (d.ref[0], d.ref[1], ""))
    assert a.retry(bare, ERROR, 0.0)
    status = a.status("j")
    assert status.state is JobState.FAILED
    assert status.last_error is not None and status.last_error.startswith("its data is gone")
    (letter,) = a.dead_letters()
    assert (letter.job_id, letter.reason) == ("j", "poison")
    assert redis_client.zcard(KEYS.delayed) == 0
    assert int(redis_client.get(KEYS.pending)) == 0
