"""A Redis restart under live consumers: no lease of a live holder is lost with it.

A restarted Redis (AOF, ``appendfsync always``) measures a pending entry's idle time from its
last delivery or renewal by the wall clock, outage included: every entry held when it went
away looks expired when it comes back. Once, under load, the first consumer to reconnect
reclaimed such an entry and ran the job again while its holder was still retrying the
success of the first run (tests/periodic/test_schedule_redis_restart.py, one slot run twice).

Here three consumers run their real reader and maintenance threads against a real server
that is SIGKILLed and restarted; the test thread plays their workers. A holds job ``j`` (its
handler finished as Redis died, or still runs), C holds ``k`` and stops during the outage,
B has idle workers (and A one once ``j``'s outcome is recorded). After the restart, ``k`` must
be reclaimed (its holder is gone) and ``j`` never (its holder renews it and records its
outcome): ``j`` runs once, ``k`` once more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis_support import DEADLINE, fast_config

from csjd_core import Job, JobState
from csjd_core.backends.base import BackendSettings, Delivery
from csjd_core.backends.redis import QueueKeys, RedisStreamsBackend
from csjd_core.config import RedisConfig
from csjd_core.testing import wait_until

from redis_server import RedisServerProcess

GROUP = "csjd-workers"
KEYS = QueueKeys("csjd:jobs", "default")
LEASE = 1.0
OUTAGE = 1.5 * LEASE  # longer than a lease: every held entry looks expired after the restart


class Fleet:
    """Consuming backends (reader and maintenance threads running) with fixed names."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[RedisStreamsBackend] = []
        self.lost: list[Delivery] = []  # queued successes refused later (on_lost_claim)

    def start(self, name: str, workers: int) -> RedisStreamsBackend:
        config = fast_config(
            consumer=name,
            workers=workers,
            prefetch=workers,  # nothing read ahead: each reads only what its workers start
            lease=LEASE,
            heartbeat_interval=0.2,
            claim_interval=0.1,
        )
        backend = RedisStreamsBackend(RedisConfig(url=self.url), config)
        backend.open(
            BackendSettings(
                max_pending_jobs=100,
                default_max_attempts=3,
                result_ttl=60.0,
                max_results=0,
                worker_id=name,
                on_lost_claim=self.lost.append,
            )
        )
        backend.start_consuming()
        self.made.append(backend)
        return backend

    def stop(self, backend: RedisStreamsBackend) -> None:
        """Stop a consumer as a killed process would leave it: its entries unsettled."""
        self.made.remove(backend)
        backend.close(clean=False)

    def close(self) -> None:
        for backend in self.made:
            backend.close(clean=True)


@pytest.fixture
def aof_server(
    redis_server_factory: Callable[..., RedisServerProcess],
) -> RedisServerProcess:
    return redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])


@pytest.fixture
def fleet(aof_server: RedisServerProcess) -> Iterator[Fleet]:
    made = Fleet(aof_server.url)
    try:
        yield made
    finally:
        made.close()


def pending(client: Any) -> dict[str, tuple[str, int, int]]:
    """Entry id -> (consumer, deliveries, idle ms) of the default band's pending list."""
    rows = client.xpending_range(KEYS.stream, GROUP, "-", "+", 100)
    return {
        r["message_id"].decode(): (
            r["consumer"].decode(),
            r["times_delivered"],
            r["time_since_delivered"],
        )
        for r in rows
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "holder",
    [
        "succeed",  # the one the old code failed every time
        pytest.param("succeed_nowait", marks=pytest.mark.soak),
        pytest.param("running", marks=pytest.mark.soak),
    ],
)
def test_a_live_holder_keeps_its_job_across_a_redis_restart(
    aof_server: RedisServerProcess, fleet: Fleet, holder: str
) -> None:
    # C holds k (its only worker busy with it), then A holds j; B starts last, idle.
    c = fleet.start("C", workers=1)
    c.enqueue([Job("k", "t")])
    dk = c.fetch(DEADLINE)
    assert dk is not None and dk.job.id == "k"
    a = fleet.start("A", workers=1)
    a.enqueue([Job("j", "t")])
    dj = a.fetch(DEADLINE)
    assert dj is not None and dj.job.id == "j"
    b = fleet.start("B", workers=2)

    aof_server.kill()
    died = time.monotonic()
    fleet.stop(c)  # C's process dies with Redis: k is held by nobody
    outcome: list[bool | None] = []
    settling = None
    if holder == "succeed":  # the worker records the success itself, retrying meanwhile
        settling = threading.Thread(target=lambda: outcome.append(a.succeed(dj, "done")))
        settling.start()
    elif holder == "succeed_nowait":  # queued for A's reader's next round trip
        a.holdings.pipelining = True  # as while its reader cycles (workers all busy)
        assert a.succeed_nowait(dj, "done") is None
    wait_until(lambda: time.monotonic() - died > OUTAGE, DEADLINE, interval=0.05)
    aof_server.restart()

    client = redis.Redis.from_url(aof_server.url)
    try:
        # The mechanism: the restarted server counts the outage in the entries' idle time.
        entries = pending(client)
        assert entries[dk.ref[1]][:2] == ("C", 1)
        assert entries[dk.ref[1]][2] > LEASE * 1000

        # k is reclaimed (C is gone), after live holders were given a lease to renew theirs:
        # by B, or by A once j's outcome freed its worker.
        def reclaimed() -> tuple[RedisStreamsBackend, Delivery] | None:
            for backend in (a, b):
                delivery = backend.fetch(0)
                if delivery is not None:
                    return backend, delivery
            return None

        taker, dk2 = wait_until(reclaimed, DEADLINE, interval=0.02)
        assert (dk2.job.id, dk2.attempt) == ("k", 2)
        if holder == "running":
            # j's handler still runs: A renewed j across the restart, nobody took it.
            assert pending(client)[dj.ref[1]][:2] == ("A", 1)
            assert a.succeed(dj, "done") is True
        elif settling is not None:
            settling.join(DEADLINE)
            assert outcome == [True]
        wait_until(lambda: a.status("j").state is JobState.SUCCEEDED, DEADLINE)
        assert taker.succeed(dk2, "done") is True
        assert reclaimed() is None  # j was never delivered again

        done = a.status("j")
        assert (done.state, done.attempts, done.result) == (JobState.SUCCEEDED, 1, "done")
        assert fleet.lost == []
        assert a.status("k").attempts == 2  # k ran again: its holder died (at-least-once)
        assert pending(client) == {}
    finally:
        client.close()
