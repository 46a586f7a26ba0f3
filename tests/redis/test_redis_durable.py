"""``durable_enqueue``: an enqueue returns only once a replica has the job (``WAIT 1`` on the
enqueue's own connection), else it raises `BackendUnavailable` and a retry with the same id is
safe. Default tier: one master and one replica (`redis_server_factory`); the replica is made
unable to acknowledge by stopping its process (SIGSTOP: it keeps its connection, reads
nothing, acknowledges nothing) and let go with SIGCONT. Soak tier: a 3-master cluster with a
replica each, whose master of the queue's slot is killed under load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis_support import DEADLINE, Workers, assert_all_done, fast_config

from csjd_core import BackendUnavailable, DuplicateJob, InvalidConfig, Job, JobState
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.settings import SettingsError, app_options
from csjd_core.testing import wait_until

from redis_server import RedisServerProcess

TIMEOUT = 0.3  # durable_timeout of these tests, seconds


def record_key(job_id: str) -> str:
    return f"csjd:jobs:{{default}}:job:{job_id}"


def caught_up(master: RedisServerProcess) -> bool:
    """The master's replica is online and acknowledges a write made since: a replica that
    already had the write from its full sync's snapshot would prove nothing, and one fresh
    from it is sent the write stream only after its first acknowledgement (up to 1 s later)."""
    with redis.Redis(master.host, master.port, single_connection_client=True) as m:
        if m.info("replication").get("slave0", {}).get("state") != "online":
            return False
        m.set("csjd-test:{default}:replicated", 1)  # the queue's slot, on a cluster too
        return int(m.execute_command("WAIT", 1, 2000)) >= 1


@pytest.fixture
def pair(redis_server_factory: Any) -> tuple[RedisServerProcess, RedisServerProcess]:
    """A master and its replica (full sync at once: no diskless-sync delay)."""
    master = redis_server_factory(extra_args=["--repl-diskless-sync-delay", "0"])
    replica = redis_server_factory(extra_args=["--replicaof", master.host, str(master.port)])
    wait_until(lambda: caught_up(master), DEADLINE, interval=0.01)
    return master, replica


@contextlib.contextmanager
def stopped(server: RedisServerProcess) -> Iterator[None]:
    """``server``'s process stopped (SIGSTOP) for the block: it acknowledges nothing."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def producer(url: str, **config: Any) -> RedisDistributedDispatcher:
    options = {"durable_enqueue": True, "durable_timeout": TIMEOUT, **config}
    return RedisDistributedDispatcher(RedisConfig(url=url), fast_config(**options))


def refused(dispatcher: RedisDistributedDispatcher, jobs: list[Job]) -> tuple[str, float]:
    """Submit ``jobs`` expecting `BackendUnavailable`: its message and the seconds it took."""
    began = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        if len(jobs) == 1:
            dispatcher.submit(jobs[0])
        else:
            dispatcher.submit_batch(jobs)
    return str(caught.value), time.monotonic() - began


# -- with a replica that acknowledges -------------------------------------------------------
def test_a_durable_submit_returns_only_once_the_replica_has_the_job(
    pair: tuple[RedisServerProcess, RedisServerProcess],
) -> None:
    master, replica = pair
    p = producer(master.url)
    with redis.Redis(replica.host, replica.port) as on_replica:
        for i in range(200):
            p.submit(Job(f"d{i}", "work", {"ms": 0}))
            # Read on the replica right after submit returned: there, every time.
            assert on_replica.hget(record_key(f"d{i}"), "state") == b"queued", i
        for b in range(4):
            batch = [Job(f"b{b}-{i}", "work", {"ms": 0}) for i in range(50)]
            p.submit_batch(batch)
            with on_replica.pipeline(transaction=False) as pipe:
                for job in batch:
                    pipe.exists(record_key(job.id))
                assert pipe.execute() == [1] * len(batch), b
    p.close()


# -- with a replica that cannot acknowledge ---------------------------------------------------
def test_unacknowledged_submit_raises_within_durable_timeout_and_its_retry_is_safe(
    pair: tuple[RedisServerProcess, RedisServerProcess], private_workers: Workers
) -> None:
    master, replica = pair
    p = producer(master.url)
    other = producer(master.url)  # another producer process: another connection
    p.submit(Job("before", "work", {"ms": 0}))
    other.submit(Job("before-other", "work", {"ms": 0}))
    with stopped(replica):
        message, took = refused(p, [Job("x", "work", {"ms": 0})])
        assert "durable_enqueue" in message
        assert "same id is safe" in message
        assert TIMEOUT <= took < TIMEOUT + 1.0, took
        assert p.status("x").state is JobState.QUEUED  # it is on the master
        # A retry while the replica still lacks the job is refused too, from any connection:
        # "DuplicateJob" must mean "stored where a failover keeps it", not only "on the master".
        for retrying in (p, other):
            refused(retrying, [Job("x", "work", {"ms": 0})])
    wait_until(lambda: caught_up(master), DEADLINE, interval=0.01)
    with pytest.raises(DuplicateJob):
        other.submit(Job("x", "work", {"ms": 0}))
    with redis.Redis(replica.host, replica.port) as on_replica:
        assert on_replica.exists(record_key("x"))

    private_workers("w", url=master.url, workers=2)
    counts = assert_all_done(private_workers, ["x", "before", "before-other"])
    assert counts == Counter({"x": 1, "before": 1, "before-other": 1})
    p.close()
    other.close()


def test_unacknowledged_submit_batch_raises_and_is_stored_once(
    pair: tuple[RedisServerProcess, RedisServerProcess], private_workers: Workers
) -> None:
    master, replica = pair
    p = producer(master.url)
    batch = [Job(f"b{i}", "work", {"ms": 0}) for i in range(20)]
    with stopped(replica):
        message, took = refused(p, batch)
        assert "durable_enqueue" in message
        assert TIMEOUT <= took < TIMEOUT + 1.0, took
    wait_until(lambda: caught_up(master), DEADLINE, interval=0.01)
    with pytest.raises(DuplicateJob):  # all-or-nothing: the whole batch was stored
        p.submit_batch(batch)
    assert p.pending() == len(batch)

    private_workers("w", url=master.url, workers=2)
    counts = assert_all_done(private_workers, [job.id for job in batch])
    assert counts == Counter({job.id: 1 for job in batch})
    p.close()


def test_without_any_replica_a_durable_submit_raises(redis_server_factory: Any) -> None:
    lone = redis_server_factory()
    p = producer(lone.url)
    message, took = refused(p, [Job("alone", "work")])
    assert "no replica acknowledged enqueue" in message
    assert "durable_enqueue" in message
    assert took < TIMEOUT + 1.0
    assert p.status("alone").state is JobState.QUEUED
    # Off (the default): the same server takes the job without waiting for anyone.
    plain = RedisDistributedDispatcher(RedisConfig(url=lone.url), fast_config())
    plain.submit(Job("plain", "work"))
    p.close()
    plain.close()


# -- configuration -----------------------------------------------------------------------------
def test_durable_enqueue_config_is_validated() -> None:
    config = DistributedConfig()
    assert (config.durable_enqueue, config.durable_timeout) == (False, 1.0)
    config = DistributedConfig(durable_enqueue=True, durable_timeout=timedelta(milliseconds=250))
    assert config.durable_timeout == 0.25
    for bad in ("yes", 1, 0, None):
        with pytest.raises(InvalidConfig, match="durable_enqueue must be True or False") as e:
            DistributedConfig(durable_enqueue=bad)
        assert e.value.field == "durable_enqueue"
    for bad_timeout in (0, -1.0, float("nan"), "1"):
        with pytest.raises(InvalidConfig) as e:
            DistributedConfig(durable_enqueue=True, durable_timeout=bad_timeout)
        assert e.value.field == "durable_timeout"


def test_csjd_durable_enqueue_setting_reaches_the_distributed_config() -> None:
    base = {"CSJD_MODE": "redis", "CSJD_REDIS_URL": "redis://localhost:6379/0"}
    options = app_options({**base, "CSJD_DURABLE_ENQUEUE": True, "CSJD_DURABLE_TIMEOUT": 0.5})
    assert options["distributed"].durable_enqueue is True
    assert options["distributed"].durable_timeout == 0.5
    assert app_options(base)["distributed"].durable_enqueue is False
    with pytest.raises(SettingsError) as e:
        app_options({**base, "CSJD_DURABLE_ENQUEUE": "true"})  # a bool, not a string
    assert e.value.setting == "CSJD_DURABLE_ENQUEUE"
    with pytest.raises(SettingsError) as e:
        app_options({**base, "CSJD_DURABLE_TIMEOUT": 0})
    assert e.value.setting == "CSJD_DURABLE_TIMEOUT"


# -- failover (soak) -------------------------------------------------------------------------
def refusal(error: BackendUnavailable) -> str:
    """Which of the enqueue's `BackendUnavailable` cases ``error`` is."""
    text = str(error)
    for words, kind in (
        ("no replica acknowledged", "not replicated"),
        ("unreachable", "not sent"),
        ("may or may not", "unanswered"),
    ):
        if words in text:
            return kind
    return text


def role(node: RedisServerProcess) -> str:
    with redis.Redis(node.host, node.port) as client:
        return str(client.info("replication")["role"])


@pytest.mark.soak
def test_failover_of_the_queues_master_loses_no_acknowledged_job(
    redis_cluster_factory: Any, tmp_path: Any
) -> None:
    cluster = redis_cluster_factory(masters=3, replicas=1)
    slot = key_slot(b"default")
    [index] = [i for i, (lo, hi) in enumerate(cluster.slot_ranges()) if lo <= slot <= hi]
    master, [replica] = cluster.masters[index], cluster.replicas_of[index]
    wait_until(lambda: caught_up(master), DEADLINE, interval=0.01)
    workers = Workers(tmp_path, cluster.url)
    try:
        w = workers("w", workers=4)
        acknowledged: list[str] = []
        refusals: Counter[tuple[str, str]] = Counter()  # (producer, kind)
        stop = threading.Event()

        def produce(name: str) -> None:
            p = RedisDistributedDispatcher(
                RedisConfig(url=cluster.url, socket_timeout=2.0, connect_timeout=1.0),
                fast_config(durable_enqueue=True, durable_timeout=1.0),
            )
            try:
                for i in range(10**6):
                    job = Job(f"{name}-{i:06d}", "work", {"ms": 2})
                    while not stop.is_set():  # the same id again until it is accepted
                        try:
                            p.submit(job)
                        except DuplicateJob:  # an earlier attempt stored it after all
                            pass
                        except BackendUnavailable as exc:
                            refusals[name, refusal(exc)] += 1
                            time.sleep(0.02)  # pacing of the retries, not synchronisation
                            continue
                        acknowledged.append(job.id)
                        break
                    if stop.is_set():
                        return
            finally:
                p.close()

        names = ["p0", "p1"]
        threads = [threading.Thread(target=produce, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(acknowledged) >= 500 and len(w.done()) >= 200, DEADLINE)
            master.kill()
            at_kill = list(acknowledged)
            done_at_kill = set(w.done())
            wait_until(lambda: role(replica) == "master" and cluster.ok(), 30, interval=0.05)
            started_at_promotion = set(w.started())
            # Nothing acknowledged is missing from the promoted replica.
            with (
                redis.Redis(replica.host, replica.port) as promoted,
                promoted.pipeline(transaction=False) as pipe,
            ):
                for job_id in at_kill:
                    pipe.exists(record_key(job_id))
                present = pipe.execute()
            missing = [job_id for job_id, n in zip(at_kill, present, strict=True) if not n]
            assert not missing, missing[:10]

            # Workers and producers find the promoted replica while the old master is still
            # dead (back at its address, it would redirect them and hide a stale slot table):
            # the worker runs jobs it never started before; each producer reaches the new
            # master, which stores its jobs but has no replica to acknowledge them.
            def recovered() -> bool:
                fresh = set(w.done()) - started_at_promotion
                reached = [refusals[name, "not replicated"] > before[name] for name in names]
                return bool(fresh) and all(reached)

            before = {name: refusals[name, "not replicated"] for name in names}
            wait_until(
                recovered,
                30,
                interval=0.05,
                message=lambda: f"no recovery: {dict(refusals)}\n{workers.logs()}",
            )
            # Nothing is acknowledged while the promoted master has no replica (at most the
            # submit each producer saw return just before the kill is counted after it).
            assert len(acknowledged) <= len(at_kill) + len(names)

            # Once the old master is back as the new one's replica, enqueues are acknowledged.
            master.restart()
            wait_until(lambda: role(master) == "slave" and caught_up(replica), 30, interval=0.05)
            resumed_at, done_at_resume = len(acknowledged), len(w.done())
            wait_until(
                lambda: (
                    len(acknowledged) >= resumed_at + 500 and len(w.done()) >= done_at_resume + 200
                ),
                DEADLINE,
                message=lambda: f"no recovery: {dict(refusals)}\n{workers.logs()}",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(DEADLINE)
        assert not any(thread.is_alive() for thread in threads)

        counts = assert_all_done(workers, acknowledged, timeout=30)
        duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
        # Run twice only: jobs the worker held when the master died — running at the kill or
        # started from its read-ahead before the promotion, whose outcomes could not be
        # recorded — and successes of its last round trip (at most `workers`, 4) that the
        # replica had not received yet.
        assert set(duplicates) <= started_at_promotion, duplicates
        held = started_at_promotion - done_at_kill
        assert sum(n - 1 for n in duplicates.values()) <= len(held) + 4, (duplicates, held)
        assert "Exception in thread" not in workers.logs()
        print(
            f"acknowledged={len(acknowledged)} at_kill={len(at_kill)} "
            f"duplicates={sum(n - 1 for n in duplicates.values())} refusals={dict(refusals)}"
        )
    finally:
        workers.close()


@pytest.mark.soak
def test_a_durable_submit_follows_its_queue_to_another_master(redis_cluster_factory: Any) -> None:
    """The queue's slot moved since the producer read the slot table: its durable submit is
    answered ``MOVED``, reads the table again, and lands — once, acknowledged — on the new
    master (``_run_replicated`` follows the redirection on its own connection)."""
    cluster = redis_cluster_factory(masters=3, replicas=1)
    slot = key_slot(b"default")
    source = cluster.owner(slot)
    target = next(m for m in cluster.masters if m is not source)
    wait_until(lambda: caught_up(source), DEADLINE, interval=0.01)  # its replica acknowledges
    p = RedisDistributedDispatcher(
        RedisConfig(url=cluster.url), fast_config(durable_enqueue=True, durable_timeout=2.0)
    )
    try:
        p.submit(Job("before", "work"))  # the slot table is read, the owner named
        moved = cluster.move_slot(slot, target)
        wait_until(lambda: caught_up(target), DEADLINE, interval=0.01)  # owns the slot now
        assert moved.keys > 0
        p.submit(Job("after", "work"))
        with pytest.raises(DuplicateJob):
            p.submit(Job("after", "work"))
    finally:
        p.close()
    assert cluster.owner(slot) is target
    with redis.Redis(target.host, target.port) as client:
        assert client.exists(record_key("before"), record_key("after")) == 2
