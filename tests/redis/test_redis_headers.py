"""Job headers in the Redis wire format (docs/distributed.md, "Wire format"): written in the
entry's data only when a job has some, kept through scheduling, retries and dead-letter
requeues in both record formats, and counted against ``max_payload_bytes``.

The contract suite (tests/core/test_backend_contract.py, "headers") checks every backend; these
tests check what Redis stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis_support import fast_config, fetch

from csjd_core import InvalidJob, Job
from csjd_core.backends.base import AttemptError, BackendSettings
from csjd_core.backends.redis import QueueKeys, RedisStreamsBackend
from csjd_core.config import RedisConfig

KEYS = QueueKeys("csjd:jobs", "default")
ERROR = AttemptError("error", "RuntimeError: boom", "Traceback ...")
HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "csjd=1",
}


@pytest.fixture
def make(redis_client: Any, redis_url: str) -> Iterator[Any]:
    made: list[RedisStreamsBackend] = []

    def build(**config: Any) -> RedisStreamsBackend:
        backend = RedisStreamsBackend(RedisConfig(url=redis_url), fast_config(**config))
        backend.open(
            BackendSettings(
                max_pending_jobs=100,
                default_max_attempts=2,
                result_ttl=60.0,
                max_results=0,
                worker_id="w",
            )
        )
        made.append(backend)
        return backend

    yield build
    for backend in made:
        backend.close(clean=True)


def test_headers_are_in_the_entry_data_only_when_set(make: Any, redis_client: Any) -> None:
    backend = make()
    backend.enqueue([Job("plain", "t", {"a": 1}), Job("traced", "t", headers=HEADERS)])
    entries = {
        fields[b"id"].decode(): json.loads(fields[b"d"])
        for _, fields in redis_client.xrange(KEYS.stream)
    }
    # A default job's data is byte for byte what releases before headers wrote.
    assert list(entries["plain"]) == ["type", "payload", "max_attempts", "timeout", "queue"]
    assert entries["traced"]["headers"] == HEADERS


@pytest.mark.parametrize("record_format", ["compact", "full"])
def test_headers_survive_scheduling_retries_and_a_dead_letter_requeue(
    make: Any, record_format: str
) -> None:
    backend = make(record_format=record_format)
    run_at = datetime.now(UTC) + timedelta(seconds=0.1)
    backend.enqueue([Job("j", "t", run_at=run_at, headers=HEADERS)])
    first = fetch(backend)  # promoted from the delayed set
    assert first.job.headers == HEADERS
    backend.started(first, "w")
    assert backend.retry(first, ERROR, 0.05)
    second = fetch(backend)
    assert (second.attempt, second.job.headers) == (2, HEADERS)
    backend.started(second, "w")
    assert backend.fail(second, ERROR)
    [dead] = backend.dead_letters()
    assert json.loads(dead.data)["headers"] == HEADERS
    assert backend.requeue_dead(dead.entry_id)
    again = fetch(backend)
    assert (again.attempt, again.job.headers) == (1, HEADERS)
    backend.started(again, "w")
    assert backend.succeed(again, None)


def test_headers_count_against_max_payload_bytes(make: Any) -> None:
    backend = make(max_payload_bytes=200)
    backend.enqueue([Job("small", "t", headers={"traceparent": "x"})])
    big = {"traceparent": "x" * 100, "tracestate": "y" * 100}
    with pytest.raises(InvalidJob, match="max_payload_bytes=200"):
        backend.enqueue([Job("big", "t", headers=big)])
