"""Hostile and faulty inputs in Redis mode (issue: hardening), against the real server: stream
entries a producer wrote by hand, error text Redis's JSON decoder refuses, queue names that
would reach other keys, dead letters without bound, damaged dead letters, and the heartbeat's
lease warnings."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import pytest
import redis
from redis_support import DEADLINE, Dispatchers

from csjd_core import (
    InvalidJob,
    Job,
    JobContext,
    JobState,
    RedisConfig,
    permanent,
)
from csjd_core.backends.redis import QueueKeys
from csjd_core.testing import wait_until

KEYS = QueueKeys("csjd:jobs", "default")


def enqueue_raw(client: redis.Redis, job_id: str, data: str) -> None:
    """Write an entry as a producer that bypassed admission would: a job record and the entry."""
    client.hset(KEYS.job(job_id), mapping={"state": "queued", "attempts": 0, "data": data})
    client.incr(KEYS.pending)
    client.xadd(KEYS.stream, {"id": job_id, "d": data})


def dead_letters(client: redis.Redis) -> dict[str, dict[str, str]]:
    return {
        fields[b"id"].decode(): {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in client.xrange(KEYS.dead)
    }


def test_one_undecodable_entry_is_dead_lettered_alone(
    dispatchers: Dispatchers, redis_client: redis.Redis
) -> None:
    # A deeply nested entry raised RecursionError while its read batch was decoded: the whole
    # batch was handed back, reclaimed again and again, and a valid job read with it was
    # dead-lettered without ever running.
    ran: list[str] = []
    d = dispatchers(workers=4)
    d.register_handler("t", lambda ctx, job: ran.append(job.id))
    deep = '{"type": "t", "payload": ' + "[" * 50_000 + "]" * 50_000 + "}"
    enqueue_raw(redis_client, "deep", deep)
    producer = dispatchers()
    for i in range(3):  # read in the same batch as "deep"
        producer.submit(Job(f"valid-{i}", "t"))
    d.start()
    wait_until(lambda: len(ran) == 3 and redis_client.xlen(KEYS.dead) == 1, DEADLINE)
    assert sorted(ran) == ["valid-0", "valid-1", "valid-2"]
    letter = dead_letters(redis_client)["deep"]
    assert letter["reason"] == "poison" and "RecursionError" in letter["error"]
    for i in range(3):  # a success is recorded with the reader's next round trip
        wait_until(lambda i=i: d.status(f"valid-{i}").state is JobState.SUCCEEDED, DEADLINE)
        assert d.status(f"valid-{i}").attempts == 1


def test_an_entry_past_the_admission_limits_is_poison_and_timeouts_still_work(
    dispatchers: Dispatchers, redis_client: redis.Redis
) -> None:
    # timeout=1e10 killed the watchdog of any worker that picked the job up: every later
    # timeout in that process went unenforced. Entries are held to admission's limits.
    d = dispatchers(workers=2)
    cancelled = threading.Event()

    def slow(ctx: JobContext, job: Job) -> None:
        if ctx.wait(3.0):
            cancelled.set()
            ctx.raise_if_cancelled()

    d.register_handler("slow", slow)
    enqueue_raw(redis_client, "hostile", json.dumps({"type": "slow", "timeout": 1e10}))
    d.start()
    wait_until(lambda: "hostile" in dead_letters(redis_client), DEADLINE)
    assert "MAX_DURATION" in dead_letters(redis_client)["hostile"]["error"]
    d.submit(Job("bounded", "slow", timeout=0.3, max_attempts=1))
    wait_until(lambda: d.status("bounded").state is JobState.FAILED, DEADLINE)
    assert cancelled.is_set()
    assert "timed out" in (d.status("bounded").last_error or "")


def test_error_text_that_is_not_valid_unicode_is_recorded_once(
    dispatchers: Dispatchers, redis_client: redis.Redis
) -> None:
    # Redis's JSON decoder refused the lone surrogate: the outcome was never recorded, a
    # max_attempts=1 job ran 3 times and was dead-lettered as max_deliveries, its error lost.
    runs: list[int] = []
    d = dispatchers(workers=1, max_deliveries=3)

    def undecodable(ctx: JobContext, job: Job) -> None:
        runs.append(ctx.attempt)
        raise ValueError("cannot open " + os.fsdecode(b"/srv/\xff.csv"))

    d.register_handler("t", undecodable)
    d.start()
    d.submit(Job("j", "t", max_attempts=1))
    wait_until(lambda: "j" in dead_letters(redis_client), DEADLINE)
    letter = dead_letters(redis_client)["j"]
    assert letter["reason"] == "error"
    assert letter["error"] == "ValueError: cannot open /srv/\\udcff.csv"
    assert runs == [1]


def test_an_unrecordable_outcome_releases_the_delivery(
    dispatchers: Dispatchers, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last resort: neither the outcome nor a failure can be recorded (a fault at the
    # backend boundary). The delivery is released, not kept: its lease is no longer renewed,
    # it is reclaimed and counted against max_deliveries, and the only worker slot is free.
    d = dispatchers(workers=1, max_deliveries=2)
    runs: list[str] = []
    d.register_handler("t", lambda ctx, job: runs.append(job.id))
    backend = d.backend
    real_succeed, real_fail = backend.succeed_nowait, backend.fail

    def refuse(real: Any) -> Any:
        def call(delivery: Any, *args: Any) -> Any:
            if delivery.job.id == "stuck":
                raise RuntimeError("cannot record")
            return real(delivery, *args)

        return call

    monkeypatch.setattr(backend, "succeed_nowait", refuse(real_succeed))
    monkeypatch.setattr(backend, "fail", refuse(real_fail))
    d.start()
    d.submit(Job("stuck", "t"))
    wait_until(lambda: runs == ["stuck"], DEADLINE)
    d.submit(Job("next", "t"))
    wait_until(lambda: d.status("next").state is JobState.SUCCEEDED, DEADLINE)
    wait_until(lambda: "stuck" in dead_letters(redis_client), DEADLINE)
    assert dead_letters(redis_client)["stuck"]["reason"] == "max_deliveries"
    assert runs.count("stuck") == 2  # the reclaimer handed it back once, then the cap


def test_a_queue_name_cannot_reach_other_keys(
    dispatchers: Dispatchers, redis_client: redis.Redis
) -> None:
    d = dispatchers()
    hostile = "default}:job:victim:{x"
    with pytest.raises(InvalidJob, match="queue must be"):
        d.submit(Job("j", "t", queue=hostile))
    assert redis_client.keys("*victim*") == []
    d.submit(Job("victim:{x", "t"))  # the id whose record the stream would have taken
    assert d.status("victim:{x").state is JobState.QUEUED
    for call in (
        lambda: d.status("j", queue=hostile),
        lambda: d.dead_letters(hostile),
        lambda: d.requeue_dead("1-0", hostile),
        lambda: d.purge_dead(hostile),
    ):
        with pytest.raises(InvalidJob, match="queue must be"):
            call()
    with pytest.raises(InvalidJob, match="not a dead-letter entry id"):
        d.requeue_dead("0-0 + garbage")


def test_dead_letters_are_trimmed_to_max_dead_letters(
    dispatchers: Dispatchers, redis_client: redis.Redis
) -> None:
    # The dead-letter stream grew without bound, each letter holding a whole payload.
    d = dispatchers(workers=4, max_dead_letters=10)

    def fail(ctx: JobContext, job: Job) -> None:
        raise permanent(ValueError("no"))

    d.register_handler("t", fail)
    d.start()
    total = 400
    producer = dispatchers()
    for start in range(0, total, 100):
        producer.submit_batch([Job(f"j{i}", "t", "x" * 100) for i in range(start, start + 100)])
    wait_until(lambda: d.metrics().failed == total, DEADLINE)
    kept = redis_client.xlen(KEYS.dead)
    # MAXLEN ~ trims whole nodes of the stream (100 entries by default): about the limit.
    assert 10 <= kept <= 10 + 100, kept
    newest = redis_client.xrevrange(KEYS.dead, count=1)[0][1][b"id"].decode()
    assert newest.startswith("j")
    stats = d.stats()["default"]
    assert (stats.dead, stats.max_dead_letters) == (kept, 10)


def test_a_damaged_dead_letter_is_readable(
    dispatchers: Dispatchers, redis_client: redis.Redis
) -> None:
    d = dispatchers()
    entry = redis_client.xadd(
        KEYS.dead,
        {"id": "j", "d": '{"type": "t"}', "error": "boom", "attempts": "x1", "failed_at": ""},
    ).decode()
    (letter,) = d.dead_letters()
    assert (letter.entry_id, letter.type, letter.attempts) == (entry, "t", None)
    assert letter.damaged == "attempts is not a number: 'x1'"
    assert d.requeue_dead(entry)  # still requeueable: id and data are there
    assert d.status("j").state is JobState.QUEUED


def test_renewals_refused_for_settled_entries_are_not_reported_as_lost_leases(
    dispatchers: Dispatchers, caplog: pytest.LogCaptureFixture
) -> None:
    # The heartbeat renewed a snapshot of the held entries; an entry settled meanwhile was
    # reported as "lease lost" (1 run in 3 of a fresh worker): a false alarm on the most
    # important warning.
    d = dispatchers(workers=4, heartbeat_interval=0.01, lease=5.0)
    d.register_handler("t", lambda ctx, job: None)
    producer = dispatchers()
    with caplog.at_level(logging.WARNING, logger="csjd_core"):
        d.start()
        for start in range(0, 3000, 500):
            producer.submit_batch([Job(f"j{i}", "t") for i in range(start, start + 500)])
        wait_until(lambda: d.metrics().succeeded == 3000, DEADLINE * 2)
    assert "lease lost" not in caplog.text


def test_a_lost_lease_is_still_reported(
    dispatchers: Dispatchers, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    d = dispatchers(workers=1)
    started, release = threading.Event(), threading.Event()

    def hold(ctx: JobContext, job: Job) -> None:
        started.set()
        release.wait(DEADLINE)

    d.register_handler("t", hold)
    with caplog.at_level(logging.WARNING, logger="csjd_core"):
        d.start()
        d.submit(Job("j", "t"))
        assert started.wait(DEADLINE)
        (entry,) = [e for e, _ in redis_client.xrange(KEYS.stream)]
        redis_client.xclaim(KEYS.stream, "csjd-workers", "thief", 0, [entry])  # taken away
        wait_until(lambda: "lease lost" in caplog.text, DEADLINE)
        release.set()
    assert "id='j'" in caplog.text


def test_a_redis_url_that_is_not_a_string_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"RedisConfig\.url must be a string, got int 123"):
        RedisConfig(url=123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RedisConfig.password must be a string, got int \*\*\*"):
        RedisConfig(addr="h:1", password=12345)  # type: ignore[arg-type]


def test_an_idle_consumer_sends_no_lease_warnings_over_time(
    dispatchers: Dispatchers, caplog: pytest.LogCaptureFixture
) -> None:
    # Slow-then-fast: jobs that finish right as a heartbeat renews them.
    d = dispatchers(workers=2, heartbeat_interval=0.02, lease=5.0)
    d.register_handler("t", lambda ctx, job: time.sleep(0.02))
    with caplog.at_level(logging.WARNING, logger="csjd_core"):
        d.start()
        for i in range(100):
            d.submit(Job(f"j{i}", "t"))
        wait_until(lambda: d.metrics().succeeded == 100, DEADLINE)
    assert "lease lost" not in caplog.text
