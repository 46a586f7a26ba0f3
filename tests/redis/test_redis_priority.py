"""Priorities in Redis mode: a queue's band streams (keys.py ``BANDS``), what each script does
with them, and real worker processes taking a high-priority job ahead of a backlog.

The order itself is checked on every backend by the contract suite
(tests/core/test_backend_contract.py, "priorities"); these tests check the Redis design:
every band's stream under the queue's hash tag, a default job stored exactly as before
priorities, scheduled jobs, retries and requeued dead letters back in their band, the
reclaimer and the stats covering every band.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis_support import DEADLINE, Consumers, Dispatchers, Workers, fetch, submit_all

from csjd_core import Job, JobState
from csjd_core.backends.base import AttemptError, Delivery
from csjd_core.backends.redis import QueueKeys
from csjd_core.backends.redis.keys import BANDS, DEFAULT_BAND, band_of
from csjd_core.testing import wait_until

GROUP = "csjd-workers"
KEYS = QueueKeys("csjd:jobs", "default")
HIGH, NORMAL, LOW = KEYS.bands
ERROR = AttemptError("error", "RuntimeError: boom", "Traceback ...")


# -- the keys -------------------------------------------------------------------------------


def test_the_bands_map_priorities_and_share_the_queue_hash_tag() -> None:
    assert [band_of(p) for p in (100, 1, 0, -1, -100)] == [0, 0, DEFAULT_BAND, 2, 2]
    assert len(BANDS) == 3
    assert KEYS.streams == [
        "csjd:jobs:{default}:high",
        "csjd:jobs:{default}",
        "csjd:jobs:{default}:low",
    ]
    assert NORMAL is KEYS and KEYS.queue is KEYS and HIGH.queue is KEYS
    for view in KEYS.bands:  # one queue: every key but the stream is the queue's
        assert (view.pending, view.delayed, view.dead, view.job("j")) == (
            KEYS.pending,
            KEYS.delayed,
            KEYS.dead,
            KEYS.job("j"),
        )
        assert view.bands is KEYS.bands
    assert [KEYS.band_argument(p) for p in (5, 0, -5)] == ["1", "", "3"]
    assert [KEYS.band_stream(a) for a in ("1", "", "3", "9", "x")] == [
        HIGH.stream,
        KEYS.stream,
        LOW.stream,
        KEYS.stream,
        KEYS.stream,
    ]


def test_jobs_go_to_their_band_and_a_default_job_is_stored_as_before(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    producer = dispatchers()  # never started: only produces
    producer.submit_batch([Job("n", "t"), Job("h", "t", priority=3), Job("l", "t", priority=-3)])
    producer.submit(Job("h2", "t", priority=100))
    lengths = [redis_client.xlen(stream) for stream in KEYS.streams]
    assert lengths == [2, 1, 1]
    # Priority 0: the entry's data and the record are what releases before priorities wrote
    # (old workers run it); another band's data says its priority, its record the band.
    [(_, fields)] = redis_client.xrange(KEYS.stream)
    assert "priority" not in json.loads(fields[b"d"])
    assert set(redis_client.hgetall(KEYS.job("n"))) == {b"state", b"enqueued_at", b"entry"}
    [(_, fields), _] = redis_client.xrange(HIGH.stream)
    assert json.loads(fields[b"d"])["priority"] == 3
    assert redis_client.hget(KEYS.job("h"), "band") == b"1"
    assert redis_client.hget(KEYS.job("l"), "band") == b"3"
    assert producer.status("h").state is JobState.QUEUED  # its data read from its band
    assert producer.status("h").payload is None
    assert producer.pending() == 4
    stats = producer.stats()["default"]
    assert (stats.stream_length, stats.unfinished) == (4, 4)


# -- scripts and bands ------------------------------------------------------------------------


def test_scheduled_jobs_retries_and_requeued_dead_letters_go_back_to_their_band(
    consumers: Consumers, redis_client: Any
) -> None:
    backend = consumers("a")
    run_at = datetime.now(UTC) + timedelta(seconds=0.2)
    backend.enqueue([Job("s", "t", priority=9, run_at=run_at), Job("x", "t", priority=-9)])
    assert redis_client.zcard(KEYS.delayed) == 1
    first = fetch(backend)  # the low one is ready at once
    assert (first.job.id, first.ref[0].stream) == ("x", LOW.stream)
    backend.started(first, "w")
    assert backend.succeed(first, None)
    promoted = fetch(backend)  # promote.lua put it in the high band
    assert (promoted.job.id, promoted.ref[0].stream) == ("s", HIGH.stream)
    backend.started(promoted, "w")
    assert backend.retry(promoted, ERROR, 0.05)
    retried = fetch(backend)
    assert (retried.job.id, retried.attempt, retried.ref[0].stream) == ("s", 2, HIGH.stream)
    backend.started(retried, "w")
    assert backend.fail(retried, ERROR)
    [dead] = backend.dead_letters()
    assert backend.requeue_dead(dead.entry_id)
    assert redis_client.hget(KEYS.job("s"), "band") == b"1"
    again = fetch(backend)
    assert (again.job.id, again.attempt, again.ref[0].stream) == ("s", 1, HIGH.stream)
    backend.started(again, "w")
    assert backend.succeed(again, None)
    wait_until(lambda: backend.status("s").state is JobState.SUCCEEDED, DEADLINE)  # type: ignore[union-attr]
    assert [redis_client.xlen(s) for s in KEYS.streams] == [0, 0, 0]  # acked and deleted


def test_the_reclaimer_claims_the_entries_of_every_band(
    consumers: Consumers, redis_client: Any
) -> None:
    """Consumer a reads an entry of each band and stops renewing; b's reclaimer takes all
    three after the lease and settles them in their own streams."""
    a, b = consumers("a"), consumers("b")
    a.enqueue([Job("h", "t", priority=1), Job("n", "t"), Job("l", "t", priority=-1)])
    for view in KEYS.bands:
        reply = a.client.xreadgroup(GROUP, "a", {view.stream: ">"}, count=10)
        for _, entries in reply:
            a.reader.accept(view, entries)
    taken = {d.job.id: d for d in iter(lambda: a.fetch(0), None)}
    assert {i: d.ref[0].band for i, d in taken.items()} == {"h": 0, "n": 1, "l": 2}

    def claimed() -> list[Delivery]:
        b.maintenance.reclaim()
        return list(iter(lambda: b.fetch(0), None))

    got: list[Delivery] = []
    wait_until(lambda: got.extend(claimed()) or len(got) == 3, DEADLINE, interval=0.05)
    assert sorted((d.job.id, d.ref[0].stream) for d in got) == sorted(
        [("h", HIGH.stream), ("n", KEYS.stream), ("l", LOW.stream)]
    )
    for delivery in got:
        assert b.succeed(delivery, None)
    for old in taken.values():  # a's late outcomes are fenced out
        assert not a.succeed(old, None)
    assert [redis_client.xlen(s) for s in KEYS.streams] == [0, 0, 0]
    assert b.pending() == 0


def test_held_entries_start_highest_band_first(consumers: Consumers) -> None:
    """Entries read ahead in several reads are started by priority band, not read order."""
    backend = consumers("a", workers=1, prefetch=4)
    holdings = backend.holdings
    backend.enqueue([Job("n1", "t"), Job("l1", "t", priority=-5)])
    reply = backend.client.xreadgroup(GROUP, "a", {KEYS.stream: ">", LOW.stream: ">"}, count=5)
    deliveries = []
    for stream, entries in reply:
        view = backend.queues.of_stream(stream.decode())
        for entry_id, fields in entries:
            job = Job(
                fields[b"id"].decode(), "t", priority=json.loads(fields[b"d"]).get("priority", 0)
            )
            deliveries.append(
                Delivery(job, 1, 3, 1, (view, entry_id.decode(), fields[b"d"].decode()))
            )
    backend.enqueue([Job("h1", "t", priority=5)])
    [(_, [(entry_id, fields)])] = backend.client.xreadgroup(GROUP, "a", {HIGH.stream: ">"}, count=5)
    high = Job("h1", "t", priority=5)
    read_at = time.monotonic()
    holdings.hand_over([], sorted(deliveries, key=lambda d: d.job.id, reverse=True), read_at)
    holdings.hand_over([], [Delivery(high, 1, 3, 1, (HIGH, entry_id.decode(), ""))], read_at)
    order = [d.job.id for d in iter(lambda: backend.fetch(0), None)]
    assert order == ["h1", "n1", "l1"]
    assert holdings.banded == 0 and not holdings.ahead


# -- real workers ---------------------------------------------------------------------------


def test_a_high_priority_job_starts_before_a_backlog_of_low_priority_ones(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    """Two worker processes busy with a backlog of low-priority jobs: a high-priority job
    submitted behind it starts within the entries they hold (in flight and read ahead), long
    before the backlog drains."""
    procs = [workers(f"w{i}", workers=2, prefetch=3) for i in range(2)]
    producer = dispatchers()
    backlog = [Job(f"low-{i}", "work", {"ms": 30}, priority=-10) for i in range(240)]
    submit_all(producer, backlog)

    def started() -> list[str]:
        return [job_id for proc in procs for job_id in proc.started()]

    wait_until(lambda: len(started()) >= 8, DEADLINE, message=workers.logs)
    before = set(started())
    producer.submit(Job("urgent", "work", {"ms": 0}, priority=50))
    wait_until(lambda: "urgent" in started(), DEADLINE, message=workers.logs)
    after = set(started()) - {"urgent"}
    # Each process holds at most its prefetch (3) when the job arrives; the poll above adds
    # what started while it looked (a few 30 ms jobs on 4 slots).
    assert len(after - before) <= 2 * 3 + 8, len(after - before)
    assert len(backlog) - len(after) >= 150
    wait_until(lambda: producer.pending() == 0, 4 * DEADLINE, message=workers.logs)
