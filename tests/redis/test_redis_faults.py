"""The fault catalogue of RELIABILITY.md against real worker subprocesses and a real server.

Workers are ``tests/redis/worker_proc.py worker`` children; each appends the ids of the jobs it
started and finished to its own files, so "nothing lost" is a count over the union of those files
and "run twice" is a count of repeated ids. Producers that must race are ``worker_proc.py
produce`` children released together by a start file.
"""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_support import (
    DEADLINE,
    ENV,
    SCRIPT,
    Dispatchers,
    Workers,
    assert_all_done,
    fast_config,
    lines,
    submit_all,
)

from csjd_core import BackendUnavailable, DuplicateJob, Job, JobState
from csjd_core.config import RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until
from csjd_core.worker import EXIT_FORCED

LEASE = 1.0


def no_thread_died(workers: Workers) -> None:
    logs = workers.logs()
    assert "Exception in thread" not in logs, logs


@pytest.mark.parametrize("server_url", ["redis", "cluster"], indirect=True)
def test_sigkill_one_of_two_workers_mid_run(workers: Workers, dispatchers: Dispatchers) -> None:
    rng = random.Random(4)
    a = workers("a", workers=4)
    b = workers("b", workers=4)
    producer = dispatchers()
    ids = [f"j{i:03d}" for i in range(300)]
    submit_all(producer, [Job(i, "work", {"ms": rng.randint(5, 20)}) for i in ids])

    wait_until(lambda: len(a.done()) >= 30, DEADLINE)
    a.signal(signal.SIGKILL)
    a.wait()
    killed_at = time.time()
    in_flight = set(a.started()) - set(a.done())  # final: a is dead

    counts = assert_all_done(workers, ids)
    duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
    # Unacknowledged at the kill: a's handlers still running or read ahead (together at most
    # a's `workers`), plus successes waiting for the reader's next round trip or riding on the
    # one in flight (at most `workers` more). Only those may run twice.
    assert set(duplicates) <= set(a.started())
    assert sum(n - 1 for n in duplicates.values()) <= 2 * 4  # a's `workers`, twice
    assert len(in_flight | set(duplicates)) <= 2 * 4
    wait_until(lambda: producer.pending() == 0, DEADLINE)

    # Every job a held (running, or read ahead) went to b through the reclaimer, after the lease.
    # A job a started counts that attempt, or — started at hand-over from the read-ahead and
    # killed before the start was recorded — a lost hold (docs/distributed.md, Read-ahead).
    client = producer.backend.client

    def attempted_by_a(job_id: str) -> bool:
        lost = client.hget(f"csjd:jobs:{{default}}:job:{job_id}", "lost")
        return producer.status(job_id).attempts > 1 or int(lost or 0) > 0

    held_by_a = [job_id for job_id in ids if attempted_by_a(job_id)]
    assert in_flight <= set(held_by_a)
    for job_id in held_by_a:
        status = producer.status(job_id)
        assert status.state is JobState.SUCCEEDED
        assert status.worker_id == b.consumer
        # a renewed its leases at most a heartbeat (plus scheduling delays) before the kill
        assert status.started_at.timestamp() >= killed_at + LEASE / 2
    assert "reclaimed entries from stalled consumers" in b.log()
    pending = producer.backend.client.xpending("csjd:jobs:{default}", "csjd-workers")
    assert pending["pending"] == 0
    no_thread_died(workers)


def test_sigterm_drains_in_flight_jobs_exactly_once(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    w = workers("w", workers=3, drain_timeout=10)
    producer = dispatchers()
    ids = [f"s{i}" for i in range(10)]
    submit_all(producer, [Job(i, "sleep", {"s": 0.5}) for i in ids])
    wait_until(lambda: len(w.started()) >= 3, DEADLINE)
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    started, done = w.started(), w.done()
    assert sorted(started) == sorted(done)  # every in-flight job finished within the grace
    assert 3 <= len(done) < len(ids)  # and nothing new was fetched after the signal
    assert "signal received; draining" in w.log()

    # The rest is still in Redis, handed back (not waiting for a lease), and runs exactly once.
    for job_id in set(ids) - set(done):
        assert producer.status(job_id).attempts == 0
    w2 = workers("w2", workers=4)
    counts = assert_all_done(workers, ids)
    assert counts == Counter(dict.fromkeys(ids, 1))
    assert set(w2.done()) == set(ids) - set(done)
    for job_id in ids:
        assert producer.status(job_id).attempts == 1
    no_thread_died(workers)


def test_a_second_sigterm_exits_at_once_with_exit_forced(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    w = workers("w", workers=2, drain_timeout=30)
    producer = dispatchers()
    submit_all(producer, [Job(f"long{i}", "sleep", {"s": 2.0}) for i in range(2)])
    wait_until(lambda: len(w.started()) == 2, DEADLINE)
    w.signal(signal.SIGTERM)
    wait_until(lambda: "signal received; draining" in w.log(), DEADLINE)
    asked = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait() == EXIT_FORCED
    assert time.monotonic() - asked < 1.0
    assert w.done() == []
    assert "second signal, exiting now without draining" in w.log()

    # Nothing is lost: the cut-off attempts are reclaimed after the lease.
    workers("w2", workers=2)
    counts = assert_all_done(workers, ["long0", "long1"])
    assert counts == Counter({"long0": 1, "long1": 1})
    assert producer.status("long0").attempts == 2, (producer.status("long0"), workers.logs())


def test_a_job_longer_than_the_lease_runs_once(workers: Workers, dispatchers: Dispatchers) -> None:
    # Each worker keeps a free slot, so each one's reclaimer runs all the time; the renewals
    # (every heartbeat) keep the long jobs away from it.
    workers("a", workers=2)
    workers("b", workers=2)
    producer = dispatchers()
    ids = ["long-a", "long-b"]
    submit_all(producer, [Job(i, "sleep", {"s": 2.5 * LEASE}) for i in ids])
    counts = assert_all_done(workers, ids)
    assert counts == Counter(dict.fromkeys(ids, 1))
    started: Counter[str] = Counter()
    for proc in workers.procs:
        started.update(proc.started())
    assert started == Counter(dict.fromkeys(ids, 1))
    for job_id in ids:
        assert producer.status(job_id).attempts == 1
    assert "reclaimed entries" not in workers.logs()


def test_client_kill_during_blocking_reads_loses_nothing(
    workers: Workers, dispatchers: Dispatchers, redis_client: Any
) -> None:
    w = workers("w", workers=2, block=0.5)
    producer = dispatchers()
    ids: list[str] = []

    def submit(n: int, ms: int = 1) -> None:
        batch = [Job(f"k{len(ids) + i}", "work", {"ms": ms}) for i in range(n)]
        ids.extend(job.id for job in batch)
        submit_all(producer, batch)

    def blocked_readers() -> list[dict[str, Any]]:
        return [
            c for c in redis_client.client_list() if c["cmd"] == "xreadgroup" and "b" in c["flags"]
        ]

    submit(20)
    assert_all_done(workers, ids)
    for _ in range(3):  # kill the connection in the middle of its BLOCK, three times
        (reader,) = wait_until(blocked_readers, DEADLINE)
        assert redis_client.client_kill_filter(_id=reader["id"]) == 1
        submit(20)
        assert_all_done(workers, ids)

    # Now every client connection at once, again and again, while jobs flow: replies to
    # XREADGROUP, the start script and the settle script are lost on the wire.
    submit(300, ms=2)
    for n in (50, 100, 150, 200):
        wait_until(lambda n=n: len(w.done()) >= n, DEADLINE)
        redis_client.client_kill_filter(_type="normal", skipme=True)
    counts = assert_all_done(workers, ids, timeout=DEADLINE + 2 * LEASE)
    assert counts == Counter(dict.fromkeys(ids, 1))
    wait_until(lambda: producer.pending() == 0, DEADLINE)
    assert "redis unreachable; reconnecting" in w.log()
    no_thread_died(workers)


def test_poison_that_kills_its_worker_is_capped_by_max_deliveries(
    workers: Workers, dispatchers: Dispatchers
) -> None:
    # One job a slot: a worker that dies holds nothing but the poison job.
    options = {"workers": 1, "max_deliveries": 2}
    live = [workers("p0", **options), workers("p1", **options)]
    producer = dispatchers()
    ids = [f"ok{i}" for i in range(60)]
    producer.submit(Job("poison", "die"))
    submit_all(producer, [Job(i, "work", {"ms": 5}) for i in ids])
    deaths = 0

    def settled() -> bool:
        nonlocal deaths
        for i, proc in enumerate(live):
            if proc.proc.poll() is not None:
                assert proc.proc.returncode == 17, proc.log()
                deaths += 1
                live[i] = workers(f"p{len(workers.procs)}", **options)
        return bool(producer.dead_letters()) and set(ids) <= set(workers.done())

    wait_until(settled, DEADLINE * 2, interval=0.05)
    (letter,) = producer.dead_letters()
    assert (letter.job_id, letter.reason) == ("poison", "max_deliveries")
    assert "delivered 2 times" in letter.error
    died: list[str] = []
    for proc in workers.procs:
        died += proc.died()
    assert died == ["poison", "poison"]
    assert deaths == 2
    assert workers.done() == Counter(dict.fromkeys(ids, 1))
    assert producer.status("poison").state is JobState.FAILED
    wait_until(lambda: producer.pending() == 0, DEADLINE)


def test_poison_entries_are_dead_lettered_while_jobs_flow(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    stream = "csjd:jobs:{default}"
    worker = dispatchers(workers=2, max_payload_bytes=1000)
    big_producer = dispatchers(max_payload_bytes=5000)  # admits what the worker refuses
    ran: list[str] = []
    worker.register_handler("t", lambda ctx, job: ran.append(job.id))
    worker.start()
    ids = [f"ok{i}" for i in range(40)]
    poison = {
        "garbage": {b"id": b"\xff\xfe\x00garbage", b"d": b"\x80\x81\x82"},
        "no-d": {b"id": b"no-d"},
        "no-id": {b"d": b'{"type":"t"}'},
        "not-json": {b"id": b"not-json", b"d": b"{nope"},
        "no-record": {b"id": b"no-record", b"d": b'{"type":"t","payload":1}'},
        "raw-oversized": {b"id": b"raw-oversized", b"d": b"x" * 2000},
    }
    for i, job_id in enumerate(ids):
        worker.submit(Job(job_id, "t"))
        if i % 6 == 0 and poison:
            redis_client.xadd(stream, poison.pop(next(iter(poison))))
    big_producer.submit(Job("oversized", "t", "y" * 3000))
    big_producer.submit(Job("unknown", "no-such-type"))
    # Poison in a dead consumer's pending list reaches the reclaimer instead of the reader.
    redis_client.xadd(stream, {b"id": b"stranded", b"d": b"\x00\xff"})
    redis_client.xreadgroup("csjd-workers", "ghost", {stream: ">"}, count=1)

    wait_until(lambda: len(worker.dead_letters()) == 9, DEADLINE)
    wait_until(lambda: worker.pending() == 0, DEADLINE)
    assert sorted(ran) == sorted(ids)
    letters = {letter.job_id: letter for letter in worker.dead_letters()}
    assert letters["unknown"].reason == "unknown_type"
    assert letters["oversized"].reason == "poison"
    assert "oversized entry" in letters["oversized"].error
    assert "oversized entry" in letters["raw-oversized"].error
    assert "missing field" in letters["no-d"].error
    assert "missing field" in letters[""].error
    assert "not UTF-8" in letters["\ufffd\ufffd\x00garbage"].error
    assert "malformed entry" in letters["not-json"].error
    assert "no job record" in letters["no-record"].error
    assert "not UTF-8" in letters["stranded"].error
    assert all(letter.reason == "poison" for k, letter in letters.items() if k != "unknown")
    assert worker.status("oversized").state is JobState.FAILED
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, "csjd-workers")["pending"] == 0


def run_producers(tmp_path: Path, url: str, args_per_proc: list[list[str]]) -> list[list[str]]:
    """Start producers, release them together, return each one's output lines."""
    go = tmp_path / "go"
    outs = [tmp_path / f"producer{i}.out" for i in range(len(args_per_proc))]
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "produce", "--url", url, "--out", str(out),
             "--go", str(go), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=ENV, text=True,
        )
        for out, args in zip(outs, args_per_proc, strict=True)
    ]  # fmt: skip
    try:
        wait_until(lambda: all(Path(f"{out}.ready").exists() for out in outs), DEADLINE)
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=DEADLINE * 2)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return [lines(out) for out in outs]


def test_producers_bursting_past_the_cap_admit_exactly_the_cap(
    tmp_path: Path, workers: Workers, dispatchers: Dispatchers, redis_url: str
) -> None:
    cap = 150
    outputs = run_producers(
        tmp_path,
        redis_url,
        [["--cap", str(cap), "--prefix", f"p{i}", "--count", "100"] for i in range(4)],
    )
    verdicts = Counter(line.split()[0] for out in outputs for line in out)
    assert verdicts == Counter({"ok": cap, "full": 400 - cap})
    assert all(any(line.startswith("ok") for line in out) for out in outputs)  # all raced
    accepted = [line.split()[1] for out in outputs for line in out if line.startswith("ok")]
    producer = dispatchers(max_pending_jobs=cap)
    assert producer.pending() == cap
    workers("w", workers=4, cap=cap)
    counts = assert_all_done(workers, accepted)
    assert set(counts) == set(accepted)
    wait_until(lambda: producer.stats()["default"].unfinished == 0, DEADLINE)


def test_the_same_id_submitted_concurrently_is_accepted_once(
    tmp_path: Path, workers: Workers, dispatchers: Dispatchers, redis_url: str
) -> None:
    ids = [f"same-{i}" for i in range(60)]
    outputs = run_producers(tmp_path, redis_url, [["--ids", ",".join(ids)]] * 4)
    per_id: dict[str, Counter[str]] = {job_id: Counter() for job_id in ids}
    for out in outputs:
        for line in out:
            verdict, job_id = line.split()
            per_id[job_id][verdict] += 1
    assert all(c == Counter({"ok": 1, "dup": 3}) for c in per_id.values()), per_id
    producer = dispatchers()
    assert producer.pending() == len(ids)
    assert producer.backend.client.xlen("csjd:jobs:{default}") == len(ids)
    workers("w", workers=4)
    assert assert_all_done(workers, ids) == Counter(dict.fromkeys(ids, 1))


def test_redis_restart_with_aof_always_loses_no_acknowledged_enqueue(
    redis_server_factory: Any, private_workers: Workers
) -> None:
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    private_workers("w", url=server.url, workers=4)
    producer = RedisDistributedDispatcher(
        RedisConfig(url=server.url, socket_timeout=2.0, connect_timeout=1.0), fast_config()
    )
    ids = [f"a{i:03d}" for i in range(400)]
    acknowledged: list[str] = []
    outage_errors = 0

    def produce() -> None:
        nonlocal outage_errors
        for job_id in ids:
            while True:  # an unanswered submit is retried with the same id: safe
                try:
                    producer.submit(Job(job_id, "work", {"ms": 1}))
                except DuplicateJob:  # the lost-reply case: it was enqueued after all
                    pass
                except BackendUnavailable:
                    outage_errors += 1
                    time.sleep(0.01)  # pacing of the retries, not synchronisation
                    continue
                acknowledged.append(job_id)
                break

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        wait_until(lambda: len(acknowledged) >= 100, DEADLINE)
        server.kill()
        wait_until(lambda: outage_errors >= 3, DEADLINE)
        server.restart()
    finally:
        thread.join(DEADLINE)
    assert not thread.is_alive()
    assert acknowledged == ids
    counts = assert_all_done(private_workers, ids, timeout=DEADLINE + 2 * LEASE)
    assert set(counts) == set(ids)
    assert sum(n - 1 for n in counts.values()) <= 4  # at most the jobs in flight at the kill
    wait_until(lambda: producer.pending() == 0, DEADLINE)
    producer.close()
    no_thread_died(private_workers)


def test_redis_restart_without_persistence_workers_recover_without_a_hot_loop(
    redis_server_factory: Any, private_workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    # No read-ahead (prefetch = workers): the six sleeping jobs must all run at once.
    w = private_workers("w", url=server.url, workers=4, prefetch=4)
    # A second consumer in this process, to count its XREADGROUP calls exactly.
    inproc = RedisDistributedDispatcher(
        RedisConfig(url=server.url, connect_timeout=1.0), fast_config(workers=2, prefetch=2)
    )
    ran: list[str] = []
    inproc.register_handler("work", lambda ctx, job: ran.append(job.id))
    inproc.register_handler("sleep", lambda ctx, job: time.sleep(job.payload["s"]))
    producer = RedisDistributedDispatcher(
        RedisConfig(url=server.url, connect_timeout=1.0), fast_config()
    )
    try:
        inproc.start()
        before = [f"before{i}" for i in range(20)]
        submit_all(producer, [Job(i, "work", {"ms": 1}) for i in before])
        wait_until(lambda: set(before) <= set(w.done()) | set(ran), DEADLINE)
        # Jobs in flight when Redis dies: their outcomes will meet a server without the group.
        inflight = [f"inflight{i}" for i in range(6)]
        submit_all(producer, [Job(i, "sleep", {"s": 0.4}) for i in inflight])
        wait_until(
            lambda: all(producer.status(i).state is JobState.RUNNING for i in inflight), DEADLINE
        )

        calls_before = inproc.backend.read_calls
        server.kill()
        down_at = time.monotonic()
        with pytest.raises(BackendUnavailable):
            producer.submit(Job("while-down", "work"))
        wait_until(lambda: inproc.backend.read_calls >= calls_before + 5, DEADLINE)
        outage = time.monotonic() - down_at
        calls = inproc.backend.read_calls - calls_before
        # Backoff from 25 ms, doubling: n failed reads take at least 25 ms * (2**(n-1) - 1).
        assert calls <= 2 + math.log2(outage / 0.025 + 1), (calls, outage)

        server.restart()
        up_at = time.monotonic()
        after = [f"after{i}" for i in range(40)]

        def submitted() -> bool:
            try:
                submit_all(producer, [Job(i, "work", {"ms": 1}) for i in after])
            except BackendUnavailable:
                return False
            return True

        wait_until(submitted, DEADLINE, interval=0.05)
        wait_until(lambda: set(after) <= set(w.done()) | set(ran), DEADLINE)
        assert w.done() and ran  # both consumers came back
        # Logged loudly by whichever consumer (reader or maintenance thread) met NOGROUP first.
        assert "vanished" in w.log() + caplog.text
        elapsed = time.monotonic() - up_at
        with redis.Redis.from_url(server.url) as admin:
            assert admin.xinfo_groups("csjd:jobs:{default}")
            stats = admin.info("commandstats")["cmdstat_xreadgroup"]
        # After the restart each consumer meets NOGROUP once or twice (until one of them has
        # recreated the group), then blocking reads: at most one per block (0.2 s) when idle,
        # one per batch when busy.
        assert stats["failed_calls"] <= 4, stats
        assert stats["calls"] <= len(after) + 2 * elapsed / 0.2 + 10, (stats, elapsed)
        no_thread_died(private_workers)
    finally:
        inproc.stop(5)
        producer.close()
