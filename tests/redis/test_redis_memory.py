"""Redis memory per queued job (issue 17): on a redis-server with its default settings, a small
job waiting in its queue costs at most 512 bytes, its record a small listpack hash.

``benchmarks/bench_memory.py`` measures the same over 100,000 jobs and says where the bytes go
(docs/performance.md, "Memory per queued job"). Memory is deterministic here (a private server,
one producer, ids and payloads of fixed lengths): about 445 bytes per job on Redis 7.0 (2,000
jobs pay more of the keyspace's growing bucket array than 100,000 do), so the 512 bound leaves
room for another server version without hiding a regression like the one fixed (the record
repeating the data cost about 530 bytes more).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from csjd_core import Job, JobState
from csjd_core.backends.redis import QueueKeys
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until

GOAL = 512  # bytes per queued small job
JOBS = 2_000
BATCH = 100
KEYS = QueueKeys("csjd:jobs", "default")


def small_payload() -> dict[str, Any]:
    """A small job's payload: 100 bytes of compact JSON, shaped as `App` makes them."""
    payload = {
        "args": ["user@example.org", 42],
        "kwargs": {"template": "welcome", "locale": "en-GB", "ref": "x" * 10},
    }
    assert len(json.dumps(payload, separators=(",", ":"))) == 100
    return payload


@pytest.fixture
def private(
    redis_server_factory: Callable[..., Any],
) -> Iterator[tuple[redis.Redis, RedisDistributedDispatcher]]:
    """A client and a producer on a private server with the default settings."""
    server = redis_server_factory()
    client = redis.Redis.from_url(server.url)
    producer = RedisDistributedDispatcher(RedisConfig(url=server.url), DistributedConfig())
    try:
        yield client, producer
    finally:
        producer.stop()
        client.close()


def submit_small_jobs(producer: RedisDistributedDispatcher, n: int, **job: Any) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(n)]  # 32 characters, as App makes them
    for start in range(0, n, BATCH):
        chunk = ids[start : start + BATCH]
        producer.submit_batch([Job(i, "email.send", small_payload(), **job) for i in chunk])
    return ids


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def test_a_queued_small_job_costs_at_most_512_bytes(private: Any) -> None:
    client, producer = private
    submit_small_jobs(producer, BATCH)  # warm-up: the stream, the counter and the scripts
    before = used_memory(client)
    ids = submit_small_jobs(producer, JOBS)
    per_job = (used_memory(client) - before) / JOBS

    record = KEYS.job(ids[0])
    assert sorted(client.hkeys(record)) == [b"enqueued_at", b"entry", b"state"]
    assert client.object("encoding", record) == b"listpack"
    assert per_job <= GOAL, f"{per_job:.0f} bytes per queued job (goal: {GOAL})"
    status = producer.status(ids[0])  # the data is read from the stream entry
    assert (status.state, status.type, status.payload, status.max_attempts) == (
        JobState.QUEUED,
        "email.send",
        small_payload(),
        3,
    )


def test_a_promoted_job_has_a_compact_record_again(private: Any) -> None:
    # Waiting in the delayed set, a record holds its data (a hashtable: the data is longer than
    # hash-max-listpack-value); promoted, it is written afresh as a compact listpack.
    client, producer = private
    run_at = datetime.now(UTC) + timedelta(milliseconds=200)
    (job_id,) = submit_small_jobs(producer, 1, run_at=run_at)
    record = KEYS.job(job_id)
    assert client.object("encoding", record) == b"hashtable"
    assert producer.status(job_id).state is JobState.SCHEDULED
    promote = producer.backend.connection.run
    wait_until(
        lambda: promote("promote", KEYS.promote(), [KEYS.job_prefix, 10, "compact"])[0] == 1,
        5.0,
    )
    assert sorted(client.hkeys(record)) == [b"enqueued_at", b"entry", b"run_at", b"state"]
    assert client.object("encoding", record) == b"listpack"
    status = producer.status(job_id)
    assert (status.state, status.payload) == (JobState.QUEUED, small_payload())
