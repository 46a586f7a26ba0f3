"""The outbox relay's admission (`Backend.relay`, `BaseDispatcher.relay`): admit the jobs
whose ids are free, skip the taken ones and those over the cap, and say which is which — one
contract for memory, the file store and Redis (the factories of test_backend_contract)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_backend_contract import CAP, FACTORIES, SETTINGS, fetch

from csjd_core import App, Config, Dispatcher, FileJobStore, Job, JobState
from csjd_core.backends.base import Backend, RelayResult, RelayVerdict
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher

ADMITTED, EXISTS, FULL, INVALID = (
    RelayVerdict.ADMITTED,
    RelayVerdict.EXISTS,
    RelayVerdict.FULL,
    RelayVerdict.INVALID,
)


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    instance = FACTORIES[request.param](request)
    assert instance.open(SETTINGS) == 0
    try:
        yield instance
    finally:
        instance.wake()
        instance.close(clean=True)


def jobs(*ids: str) -> list[Job]:
    return [Job(job_id, "t", {"n": index}) for index, job_id in enumerate(ids)]


def verdicts(results: list[RelayResult]) -> list[RelayVerdict]:
    return [result.verdict for result in results]


def test_new_ids_are_admitted_and_taken_ones_skipped(backend: Backend) -> None:
    backend.enqueue(jobs("relayed-before"))  # a crash kept its row: the relay sends it again
    results = backend.relay(jobs("a", "relayed-before", "b", "a"))
    assert [r.job_id for r in results] == ["a", "relayed-before", "b", "a"]
    assert verdicts(results) == [ADMITTED, EXISTS, ADMITTED, EXISTS]  # "a" repeated: once
    assert backend.pending() == 3
    for job_id in ("a", "b"):
        status = backend.status(job_id)
        assert status is not None and status.state is JobState.QUEUED
    assert [fetch(backend).job.id for _ in range(3)] == ["relayed-before", "a", "b"]


def test_jobs_over_the_cap_wait_and_none_is_admitted_out_of_order(backend: Backend) -> None:
    backend.enqueue(jobs("x", "y"))
    ids = [f"j{i}" for i in range(CAP)]
    results = backend.relay(jobs(*ids))
    room = CAP - 2
    assert verdicts(results) == [ADMITTED] * room + [FULL] * (CAP - room)
    assert backend.pending() == CAP
    # A taken id after the cap is still reported as taken (it needs no room).
    assert verdicts(backend.relay(jobs("j9", "x"))) == [FULL, EXISTS]
    for job_id in ids[room:]:
        assert backend.status(job_id) is None
    # Room again: the waiting ones are admitted, the admitted ones are not admitted twice.
    for _ in range(2):  # x and y end: room for two
        delivery = fetch(backend)
        backend.started(delivery, "w")
        assert backend.succeed(delivery, None)
    assert verdicts(backend.relay(jobs(*ids))) == [EXISTS] * room + [ADMITTED] * (CAP - room)
    assert backend.pending() == CAP


def test_a_relay_of_nothing_new_changes_nothing(backend: Backend) -> None:
    backend.enqueue(jobs("a", "b"))
    assert verdicts(backend.relay(jobs("a", "b"))) == [EXISTS, EXISTS]
    assert backend.pending() == 2
    assert backend.relay([]) == []


def test_file_store_relayed_jobs_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    store = FileJobStore(path, fsync="always")
    store.open(SETTINGS)
    assert verdicts(store.relay(jobs("a", "b"))) == [ADMITTED, ADMITTED]
    store.close(clean=False)
    store = FileJobStore(path, fsync="always")
    try:
        assert store.open(SETTINGS) == 2
        assert verdicts(store.relay(jobs("a", "c"))) == [EXISTS, ADMITTED]
    finally:
        store.close(clean=True)


# -- the dispatcher: malformed jobs, queues, counters ------------------------------------------
def test_a_malformed_job_is_invalid_and_blocks_nothing() -> None:
    app = App()
    app.register_handler("t", lambda ctx, job: None)
    dispatcher = Dispatcher(Config(), registry=app.registry)
    try:
        bad = Job("bad", "t", {"n": float("nan")})  # not JSON
        unknown = Job("unknown", "nobody-handles-this", {})
        results = dispatcher.relay([*jobs("a"), bad, unknown, *jobs("b")])
        assert verdicts(results) == [ADMITTED, INVALID, INVALID, ADMITTED]
        assert results[1].reason is not None and "JSON" in results[1].reason
        assert results[2].reason is not None and "no handler" in results[2].reason
        metrics = dispatcher.metrics()
        assert (metrics.accepted, metrics.submitted) == (2, 4)
    finally:
        dispatcher.stop(5)


def test_redis_relays_each_queue_and_refuses_only_what_it_cannot_store(
    redis_client: Any, redis_url: str
) -> None:
    config = DistributedConfig(queues=("default", "other"), max_payload_bytes=1000)
    dispatcher = RedisDistributedDispatcher(RedisConfig(url=redis_url), config)
    try:
        dispatcher.submit(Job("taken", "t", {}, queue="other"))
        batch = [
            Job("a", "t", {}),
            Job("taken", "t", {}, queue="other"),
            Job("huge", "t", {"blob": "x" * 2000}),
            Job("b", "nobody-knows-it-here", {}, queue="other"),  # types are not judged
        ]
        results = dispatcher.relay(batch)
        assert [(r.job_id, r.verdict) for r in results] == [
            ("a", ADMITTED),
            ("taken", EXISTS),
            ("huge", INVALID),
            ("b", ADMITTED),
        ]
        assert results[2].reason is not None and "max_payload_bytes" in results[2].reason
        assert dispatcher.status("a", "default").state is JobState.QUEUED
        assert dispatcher.status("b", "other").state is JobState.QUEUED
        assert dispatcher.pending() == 3
    finally:
        dispatcher.stop(5)
