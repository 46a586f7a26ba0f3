"""Fleet maintenance (issue 17): one elected maintainer per queue reclaims and collects.

Each claim_interval, the consumers with an idle worker stand for each queue's maintainer role
(``SET NX`` on ``QueueKeys.maintainer``); only the holder scans the pending list and, every ten
claim_intervals, collects expired consumers, so the fleet's maintenance cost grows linearly with
its size. These tests check the election, the takeover when a holder dies, that a stalled
consumer's entries still reach every consumer with an idle worker, and (soak tier) that
hundreds of worker starts and stops leave no orphan consumers and that the command rate is
linear in the number of consumers.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from typing import Any

import pytest
import redis
from redis_support import DEADLINE, Dispatchers, Workers, fast_config

from csjd_core import Job, JobContext
from csjd_core.backends.base import BackendSettings
from csjd_core.backends.redis import QueueKeys, RedisStreamsBackend
from csjd_core.config import RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until

GROUP = "csjd-workers"
KEYS = QueueKeys("csjd:jobs", "default")


def names(client: Any) -> set[str]:
    """The consumers of the default queue's group (XINFO CONSUMERS)."""
    return {c["name"].decode() for c in client.xinfo_consumers(KEYS.stream, GROUP)}


def holder(client: Any) -> str | None:
    """The consumer holding the default queue's maintainer role, if any."""
    value = client.get(KEYS.maintainer)
    return None if value is None else value.decode()


def stalled_entries(client: Any, ids: list[str]) -> None:
    """Entries of ``ids`` delivered to a consumer that died while running them."""
    with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: a consumer made it already
        client.xgroup_create(KEYS.stream, GROUP, "0", mkstream=True)
    client.xreadgroup(GROUP, "ghost", {KEYS.stream: ">"}, count=len(ids))
    for job_id in ids:  # started, as the ghost's worker would have recorded
        client.hset(KEYS.job(job_id), "state", "running")


def consumer(url: str, name: str, **config: Any) -> RedisStreamsBackend:
    """A backend that runs no threads: its maintenance is driven by the test."""
    backend = RedisStreamsBackend(RedisConfig(url=url), fast_config(consumer=name, **config))
    backend.open(
        BackendSettings(
            max_pending_jobs=1000,
            default_max_attempts=3,
            result_ttl=60.0,
            max_results=0,
            worker_id=name,
            on_lost_claim=lambda delivery: None,
        )
    )
    backend.reader.ensure_groups()
    return backend


def test_one_consumer_maintains_the_queue_each_claim_interval(
    dispatchers: Dispatchers, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    period = 0.1
    scans: list[str] = []  # the consumer of each reclaim scan, in order
    a, b = (dispatchers(workers=1, claim_interval=period) for _ in range(2))
    for d in (a, b):
        maintenance = d.backend.maintenance

        def scan(keys: QueueKeys, _m: Any = maintenance, _scan: Any = maintenance.reclaim_queue):
            scans.append(_m.consumer)
            return _scan(keys)

        monkeypatch.setattr(maintenance, "reclaim_queue", scan)
        d.start()
    wait_until(lambda: holder(redis_client) in {a.consumer, b.consumer}, DEADLINE)
    first, began = len(scans), time.monotonic()
    time.sleep(10 * period)  # a measurement window, not a synchronisation
    elapsed = time.monotonic() - began
    # Both consumers stand every claim_interval, and one scan per claim_interval is done (by
    # the holder, whose term goes on while it stands again), where each consumer used to scan:
    # a new term can begin only once the last one lapsed.
    assert 1 <= len(scans) - first <= elapsed / period + 2, scans
    assert redis_client.pttl(KEYS.maintainer) <= period * 1000

    # A holder that stops hands the role on at once (resign.lua); the other stands next.
    name = wait_until(lambda: holder(redis_client), DEADLINE)
    stopping, other = (a, b) if name == a.consumer else (b, a)
    stopping.stop(5)
    wait_until(lambda: holder(redis_client) == other.consumer, DEADLINE)


def test_a_killed_maintainer_is_replaced_within_a_claim_interval(
    workers: Workers, redis_client: Any
) -> None:
    period = 0.5
    a = workers("a", workers=1, claim=period)
    b = workers("b", workers=1, claim=period)
    procs = {a.consumer: a, b.consumer: b}
    name = wait_until(lambda: (h := holder(redis_client)) in procs and h, DEADLINE)
    dead = procs[name]
    survivor = b if dead is a else a
    dead.signal(signal.SIGKILL)
    dead.wait()
    killed = time.monotonic()
    lapse = max(0, redis_client.pttl(KEYS.maintainer)) / 1000  # what is left of its term
    assert lapse <= period
    wait_until(lambda: holder(redis_client) == survivor.consumer, DEADLINE, interval=0.01)
    took = time.monotonic() - killed
    # The survivor stands every claim_interval: it takes the role at most one claim_interval
    # after the dead holder's term lapsed (plus a claim_interval of slack for a loaded box).
    assert took <= lapse + 2 * period, (took, lapse)
    assert "Exception in thread" not in survivor.log()


def test_a_maintainer_out_of_idle_workers_resigns_and_the_next_claims_the_rest(
    redis_client: Any, redis_url: str
) -> None:
    # Only the maintainer reclaims, and only what its idle workers can start: one that runs out
    # before the end of the scan gives the role up, so the next consumer with an idle worker
    # takes it and claims more (it would otherwise wait for the term to lapse).
    options = {"workers": 1, "prefetch": 1, "lease": 0.2, "heartbeat_interval": 0.1}
    made = [consumer(redis_url, name, claim_interval=5.0, **options) for name in "ABC"]
    a, b, c = made
    try:
        a.enqueue([Job(f"j{i}", "t") for i in range(2)])
        stalled_entries(redis_client, ["j0", "j1"])
        wait_until(
            lambda: all(
                row["time_since_delivered"] > 300
                for row in redis_client.xpending_range(KEYS.stream, GROUP, "-", "+", 10)
            ),
            DEADLINE,
        )
        a.maintenance.maintain()
        first = a.fetch(0)
        assert first is not None  # A claimed one, the most its one worker can start
        assert first.job.id == "j0"
        assert holder(redis_client) is None  # and resigned: more may be stalled
        assert a.maintenance.terms["default"] == 1
        assert redis_client.get(KEYS.collected) == b"A"  # it collected, for ten terms

        a.maintenance.maintain()  # no idle worker: A does not stand
        assert holder(redis_client) is None
        assert a.maintenance.terms["default"] == 1

        b.maintenance.maintain()
        second = b.fetch(0)
        assert second is not None
        assert second.job.id == "j1"
        # B's scan reached the end of the pending list: it keeps the role for its term, and C
        # (an idle worker, nothing to do) stands in vain.
        assert holder(redis_client) == "B"
        c.maintenance.maintain()
        assert c.fetch(0) is None
        assert (b.maintenance.terms["default"], c.maintenance.terms["default"]) == (1, 0)
        assert holder(redis_client) == "B"
        assert a.succeed(first, None) and b.succeed(second, None)
    finally:
        for backend in made:
            backend.close(clean=True)


def test_a_stalled_consumers_entries_reach_every_consumer_with_an_idle_worker(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    release = threading.Event()
    running: list[str] = []

    def hold(ctx: JobContext, job: Job) -> None:
        running.append(job.id)
        release.wait(DEADLINE)

    producer = dispatchers()
    ids = [f"j{i}" for i in range(3)]
    producer.submit_batch([Job(i, "hold") for i in ids])
    stalled_entries(redis_client, ids)
    fleet = [dispatchers(workers=1, lease=0.3, heartbeat_interval=0.1) for _ in range(3)]
    for d in fleet:
        d.register_handler("hold", hold)
        d.start()
    try:
        # Each consumer can start one: the three entries go to three consumers, the role
        # passing from one maintainer to the next as each runs out of idle workers.
        wait_until(lambda: len(running) == 3, DEADLINE)
        owners = {
            row["consumer"].decode()
            for row in redis_client.xpending_range(KEYS.stream, GROUP, "-", "+", 10)
        }
        assert owners == {d.consumer for d in fleet}
    finally:
        release.set()
    wait_until(lambda: producer.pending() == 0, DEADLINE)


@pytest.mark.parametrize("server_url", ["cluster"], indirect=True)
def test_on_a_cluster_each_queue_elects_its_maintainer_in_its_own_slot(
    dispatchers: Dispatchers,
) -> None:
    # "default" and "other" live on two masters of the session's cluster: each queue's role,
    # reclaim scan, collection and resignation run on the node of the queue's slot.
    queues = ("default", "other")
    producer = dispatchers(queues=queues)
    client = producer.backend.client  # a RedisCluster: it routes each key to its node
    for queue in queues:
        keys = QueueKeys("csjd:jobs", queue)
        assert client.keyslot(keys.maintainer) == client.keyslot(keys.stream)
        producer.submit(Job(f"{queue}-job", "t", queue=queue))
        client.xgroup_create(keys.stream, GROUP, "0", mkstream=True)
        client.xreadgroup(GROUP, "ghost", {keys.stream: ">"}, count=1)
        client.hset(keys.job(f"{queue}-job"), "state", "running")  # the ghost started it
    ran: list[str] = []
    d = dispatchers(queues=queues, workers=2, lease=0.3, heartbeat_interval=0.1, claim_interval=0.1)
    d.register_handler("t", lambda ctx, job: ran.append(job.id))
    d.start()

    def maintained() -> bool:
        return all(
            client.get(QueueKeys("csjd:jobs", q).maintainer) == d.consumer.encode()
            and {c["name"] for c in client.xinfo_consumers(QueueKeys("csjd:jobs", q).stream, GROUP)}
            == {d.consumer.encode()}  # the ghost, emptied by the reclaimer, was collected
            for q in queues
        )

    wait_until(maintained, DEADLINE)
    assert sorted(ran) == ["default-job", "other-job"]
    d.stop(5)
    assert all(client.get(QueueKeys("csjd:jobs", q).maintainer) is None for q in queues)


# ---------------------------------------------------------------------------- soak tier
@pytest.mark.soak
@pytest.mark.timeout(600)
def test_hundreds_of_worker_restarts_leave_no_orphan_consumers(
    redis_server_factory: Any, private_workers: Workers
) -> None:
    url = redis_server_factory().url
    client = redis.Redis.from_url(url)
    made = Dispatchers(url)
    ran: list[str] = []
    options = {"workers": 1, "block": 0.05, "claim_interval": 0.2, "heartbeat_interval": 0.1}
    try:

        def start(d: RedisDistributedDispatcher) -> None:
            # Both types return at once here; in a victim process "sleep" holds its worker.
            for job_type in ("work", "sleep"):
                d.register_handler(job_type, lambda ctx, job: ran.append(job.id))
            d.start()

        # Two long-lived consumers: the survivors that reclaim and collect in the end.
        survivors = [made(**options) for _ in range(2)]
        for d in survivors:
            start(d)
        producer = made()
        rng = random.Random(17)
        cycles = 0
        held: list[str] = []
        # 300 cycles: in-process consumers started and stopped five at a time, with jobs to
        # take (a stop finishes what it runs and hands back what it read ahead); and every
        # 30 cycles a worker process killed with SIGKILL while it runs a job.
        while cycles < 300:
            batch = [made(**options) for _ in range(5)]
            for d in batch:
                start(d)
            producer.submit_batch([Job(f"c{cycles + i}", "work") for i in range(rng.randint(0, 5))])
            for d in batch:
                d.stop(5)
                made.made.remove(d)
            cycles += len(batch)
            if cycles % 30 == 0:  # a worker process killed while it runs a job
                victim = private_workers(f"k{cycles}", url=url, workers=1, claim=0.2)
                for attempt in range(20):  # until the victim, not a survivor, takes one
                    job_id = f"held-{cycles}-{attempt}"
                    producer.submit(Job(job_id, "sleep", {"s": 60}))
                    wait_until(lambda j=job_id: j in victim.started() or j in ran, DEADLINE)
                    if job_id in victim.started():
                        break
                held.append(job_id)
                victim.signal(signal.SIGKILL)
                victim.wait()
        live = {d.consumer for d in survivors}
        wait_until(
            lambda: names(client) <= live,
            120,
            interval=0.2,
            message=lambda: f"orphans left: {sorted(names(client) - live)}",
        )
        wait_until(lambda: producer.pending() == 0, 60)
        assert set(held) <= set(ran)  # the killed workers' jobs were reclaimed and run
        assert len(held) == 10
        assert names(client) == live
    finally:
        made.close()
        client.close()


MAINTENANCE = ("set", "exists", "xinfo|consumers", "xgroup|delconsumer", "xautoclaim")


def maintenance_rate(client: Any, seconds: float) -> float:
    """Maintenance commands per second over ``seconds`` (INFO commandstats deltas): heartbeats
    and elections (SET), collection (EXISTS, XINFO CONSUMERS, XGROUP DELCONSUMER) and reclaim
    scans (one XAUTOCLAIM per reclaim.lua call)."""

    def calls() -> int:
        stats = client.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in MAINTENANCE)

    before, began = calls(), time.monotonic()
    time.sleep(seconds)  # the measurement window
    return (calls() - before) / (time.monotonic() - began)


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_fleet_maintenance_cost_is_linear_in_consumers(redis_server_factory: Any) -> None:
    # The command rate of 20 and of 200 live consumers (in-process backends, each with its own
    # threads and connections) over two collection periods. Before the election every consumer
    # scanned and checked every other's heartbeat: 10x the consumers cost far over 100x.
    period = 0.5
    rates = {}
    for count in (20, 200):
        server = redis_server_factory()
        client = redis.Redis.from_url(server.url)
        fleet = [
            RedisDistributedDispatcher(
                RedisConfig(url=server.url),
                fast_config(workers=1, claim_interval=period, heartbeat_interval=period),
            )
            for _ in range(count)
        ]
        try:
            for d in fleet:
                d.start()
            wait_until(lambda: len(names(client)) == count, 60)
            time.sleep(10 * period)  # one collection period to settle (not a synchronisation)
            rates[count] = maintenance_rate(client, 20 * period)
            assert len(names(client)) == count  # every consumer lived through the window
        finally:
            stoppers = [threading.Thread(target=d.stop, args=(5,)) for d in fleet]
            for thread in stoppers:
                thread.start()
            for thread in stoppers:
                thread.join()
            client.close()
            server.stop()
    assert rates[200] <= 15 * rates[20], rates
