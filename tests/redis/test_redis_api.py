"""RedisDistributedDispatcher's public API against a real server (issue 4, SPEC section 4).

Admission (JSON, batches atomic per queue, duplicates and the dedupe window, the cross-process
cap, payload size), scheduling, retries, dead letters, queues, producer-only processes, the App
family in redis mode, secrets in logs and an unreachable server.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from redis_support import DEADLINE, Dispatchers, fast_config

from csjd_core import (
    App,
    BackendUnavailable,
    DuplicateJob,
    InvalidJob,
    Job,
    JobContext,
    JobFailed,
    JobNotFound,
    JobState,
    QueueFull,
    RetryPolicy,
    permanent,
)
from csjd_core.config import RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until


class Recorder:
    """Thread-safe log of handler calls: (job id, attempt, wall-clock time)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float]] = []
        self.lock = threading.Lock()

    def __call__(self, ctx: JobContext, job: Job) -> None:
        with self.lock:
            self.calls.append((job.id, ctx.attempt, time.time()))

    def ids(self) -> list[str]:
        with self.lock:
            return [c[0] for c in self.calls]


def wait_state(
    d: RedisDistributedDispatcher, job_id: str, state: JobState, queue: str | None = None
) -> Any:
    def reached() -> Any:
        status = d.status(job_id, queue)
        return status if status.state is state else None

    return wait_until(reached, DEADLINE, message=lambda: f"{job_id}: {d.status(job_id, queue)}")


def test_submit_status_and_json_result(dispatchers: Dispatchers) -> None:
    d = dispatchers(workers=2)
    result = {"sum": 5, "items": [1, "a", None, 2.5], "nested": {"ok": True}}
    d.register_handler("add", lambda ctx, job: {**result, "sum": sum(job.payload["xs"])})
    d.submit(Job("j-1", "add", {"xs": [2, 3]}))

    queued = d.status("j-1")
    assert queued.state is JobState.QUEUED
    assert (queued.type, queued.attempts, queued.queue) == ("add", 0, "default")
    assert queued.enqueued_at is not None
    assert queued.enqueued_at.tzinfo is not None
    assert queued.started_at is None
    with pytest.raises(JobNotFound):
        d.status("never-submitted")

    d.start()
    done = wait_state(d, "j-1", JobState.SUCCEEDED)
    assert done.result == result
    assert done.attempts == 1
    assert done.max_attempts == 3
    assert done.worker_id == d.consumer
    assert queued.enqueued_at <= done.started_at <= done.finished_at
    assert d.pending() == 0
    wait_until(lambda: d.metrics().succeeded == 1, DEADLINE)  # counted right after the ack
    m = d.metrics()
    assert (m.submitted, m.accepted, m.processed, m.succeeded) == (1, 1, 1, 1)


def test_the_first_submits_from_many_threads_at_once_are_all_accepted(
    dispatchers: Dispatchers,
) -> None:
    """A web process's first requests may submit from several threads at once: the connection
    pool and its scripts are created once, by one of them, and every submit goes through."""
    threads_per_round, rounds = 8, 20
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible inside the first use
    try:
        for r in range(rounds):
            d = dispatchers()
            barrier = threading.Barrier(threads_per_round)
            errors: list[BaseException] = []

            def submit(i: int, d: RedisDistributedDispatcher = d, r: int = r) -> None:
                barrier.wait()
                try:
                    d.submit(Job(f"first-{r}-{i}", "t"))
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            threads = [threading.Thread(target=submit, args=(i,)) for i in range(threads_per_round)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DEADLINE)
            assert errors == [], f"round {r}: {errors!r}"
            assert d.pending() == threads_per_round * (r + 1)
    finally:
        sys.setswitchinterval(interval)


def test_submit_batch_is_atomic_per_queue(dispatchers: Dispatchers, redis_client: Any) -> None:
    d = dispatchers(max_pending_jobs=10)
    d.submit(Job("taken", "t"))

    def nothing_admitted(ids: list[str]) -> None:
        for job_id in ids:
            with pytest.raises(JobNotFound):
                d.status(job_id)
        assert d.pending() == 1

    with pytest.raises(InvalidJob, match="one queue"):
        d.submit_batch([Job("a1", "t"), Job("a2", "t", queue="other")])
    nothing_admitted(["a1", "a2"])
    with pytest.raises(InvalidJob, match="twice"):
        d.submit_batch([Job("b1", "t"), Job("b2", "t"), Job("b1", "t")])
    nothing_admitted(["b1", "b2"])
    with pytest.raises(DuplicateJob):  # checked in Lua, after the first two were "fine"
        d.submit_batch([Job("c1", "t"), Job("c2", "t"), Job("taken", "t")])
    nothing_admitted(["c1", "c2"])
    with pytest.raises(QueueFull):
        d.submit_batch([Job(f"d{i}", "t") for i in range(10)])
    nothing_admitted([f"d{i}" for i in range(10)])
    with pytest.raises(InvalidJob):
        d.submit_batch([Job("e1", "t"), Job("e2", "t", {"x": object()})])
    nothing_admitted(["e1", "e2"])

    d.submit_batch([Job(f"f{i}", "t", queue="other") for i in range(4)])
    assert [d.status(f"f{i}", queue="other").state for i in range(4)] == [JobState.QUEUED] * 4
    assert redis_client.xlen("csjd:jobs:{other}") == 4
    assert redis_client.xlen("csjd:jobs:{default}") == 1


def test_duplicate_ids_and_the_dedupe_window(dispatchers: Dispatchers) -> None:
    window = 0.5
    d = dispatchers(dedupe_window=window, result_ttl=30.0)
    ran = Recorder()
    d.register_handler("t", ran)
    d.submit(Job("same", "t"))
    with pytest.raises(DuplicateJob):
        d.submit(Job("same", "t"))  # unfinished (queued)
    d.start()
    finished = wait_state(d, "same", JobState.SUCCEEDED).finished_at.timestamp()

    refused = 0
    while True:  # every submit inside the window is refused; the first accepted one is after it
        tried_at = time.time()
        try:
            d.submit(Job("same", "t"))
        except DuplicateJob:
            assert tried_at < finished + window + 0.05
            refused += 1
            assert time.time() < finished + DEADLINE
            time.sleep(0.02)  # pacing of the retries, not synchronisation
            continue
        break
    assert refused >= 1
    assert time.time() >= finished + window - 0.005  # Redis ms clock vs ours
    wait_until(lambda: ran.ids() == ["same", "same"], DEADLINE)


def test_queue_full_at_exactly_the_cap_across_dispatchers(dispatchers: Dispatchers) -> None:
    cap = 5
    one, two = dispatchers(max_pending_jobs=cap), dispatchers(max_pending_jobs=cap)
    accepted = 0
    for i in range(cap + 3):
        producer = one if i % 2 else two
        try:
            producer.submit(Job(f"j{i}", "t"))
            accepted += 1
        except QueueFull:
            pass
    assert accepted == cap
    assert one.pending() == two.pending() == cap
    with pytest.raises(QueueFull, match="max_pending_jobs=5"):
        one.submit(Job("late", "t", run_at=datetime.now(UTC) + timedelta(hours=1)))

    worker = dispatchers(max_pending_jobs=cap)
    ran = Recorder()
    worker.register_handler("t", ran)
    worker.start()
    wait_until(lambda: worker.pending() == 0, DEADLINE)
    assert len(ran.ids()) == cap
    one.submit(Job("after", "t"))  # room again
    wait_until(lambda: "after" in ran.ids(), DEADLINE)


def test_max_payload_bytes(dispatchers: Dispatchers) -> None:
    d = dispatchers(max_payload_bytes=200)
    d.submit(Job("small", "t", "x" * 50))
    with pytest.raises(InvalidJob, match="max_payload_bytes=200"):
        d.submit(Job("big", "t", "x" * 200))
    with pytest.raises(InvalidJob, match="max_payload_bytes"):
        d.submit_batch([Job("b1", "t"), Job("b2", "t", ["é" * 40])])  # 6 bytes each as JSON
    with pytest.raises(JobNotFound):
        d.status("b1")
    assert d.pending() == 1


def test_run_at_and_countdown_are_honoured(dispatchers: Dispatchers) -> None:
    d = dispatchers()
    ran = Recorder()
    d.register_handler("t", ran)
    d.start()
    run_at = datetime.now(UTC) + timedelta(seconds=0.6)
    d.submit(Job("later", "t", run_at=run_at))
    d.submit(Job("now", "t"))
    scheduled = d.status("later")
    assert scheduled.state is JobState.SCHEDULED
    assert scheduled.run_at is not None
    assert abs((scheduled.run_at - run_at).total_seconds()) < 0.002
    wait_until(lambda: "later" in ran.ids(), DEADLINE)
    times = {job_id: at for job_id, _, at in ran.calls}
    assert times["now"] < times["later"]
    assert times["later"] >= run_at.timestamp() - 0.002  # Redis TIME is in ms


def test_retries_with_backoff_then_success(dispatchers: Dispatchers) -> None:
    d = dispatchers(retry=RetryPolicy(base_delay=0.2, factor=2.0, jitter=None, max_delay=5.0))
    calls = Recorder()

    def flaky(ctx: JobContext, job: Job) -> str:
        calls(ctx, job)
        if ctx.attempt < 3:
            raise ConnectionError(f"downstream down (attempt {ctx.attempt})")
        return "finally"

    d.register_handler("flaky", flaky)
    d.start()
    d.submit(Job("f", "flaky", max_attempts=4))
    status = wait_state(d, "f", JobState.SUCCEEDED)
    assert (status.attempts, status.result) == (3, "finally")
    attempts = [(a, t) for _, a, t in calls.calls]
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert attempts[1][1] - attempts[0][1] >= 0.2 - 0.002
    assert attempts[2][1] - attempts[1][1] >= 0.4 - 0.002
    # The engine counts an outcome right after Redis recorded it: wait for the count.
    wait_until(lambda: d.metrics().succeeded == 1, DEADLINE)
    m = d.metrics()
    assert (m.processed, m.retried, m.succeeded, m.failed) == (3, 2, 1, 0)
    assert d.stats()["default"].counters.retried == 2


def test_failures_are_dead_lettered_with_error_traceback_and_attempts(
    dispatchers: Dispatchers,
) -> None:
    d = dispatchers()

    def broken(ctx: JobContext, job: Job) -> None:
        if job.payload == "permanent":
            raise permanent(ValueError("bad input 42"))
        raise RuntimeError("always fails")

    d.register_handler("broken", broken)
    d.start()
    d.submit(Job("p", "broken", "permanent", max_attempts=5))
    d.submit(Job("x", "broken", "transient", max_attempts=2))
    assert wait_state(d, "p", JobState.FAILED).attempts == 1
    failed = wait_state(d, "x", JobState.FAILED)
    assert failed.attempts == 2
    assert "always fails" in (failed.last_error or "")
    letters = {letter.job_id: letter for letter in d.dead_letters()}
    assert set(letters) == {"p", "x"}
    p, x = letters["p"], letters["x"]
    assert (p.reason, p.attempts, p.type) == ("permanent", 1, "broken")
    assert "bad input 42" in p.error
    assert "ValueError" in p.traceback
    assert "Traceback" in p.traceback
    assert (x.reason, x.attempts) == ("error", 2)
    assert "RuntimeError: always fails" in x.traceback
    assert abs(x.failed_at - time.time()) < 10
    assert d.pending() == 0
    assert d.stats()["default"].dead == 2


def test_dead_letters_list_requeue_and_purge(dispatchers: Dispatchers) -> None:
    d = dispatchers()
    healthy = threading.Event()
    ran = Recorder()

    def sometimes(ctx: JobContext, job: Job) -> str:
        ran(ctx, job)
        if not healthy.is_set():
            raise permanent(RuntimeError("not yet"))
        return "ok"

    d.register_handler("s", sometimes)
    d.start()
    d.submit_batch([Job(f"j{i}", "s") for i in range(3)])
    wait_until(lambda: len(d.dead_letters()) == 3, DEADLINE)
    letters = d.dead_letters()  # oldest first
    assert sorted(letter.job_id for letter in letters) == ["j0", "j1", "j2"]
    assert d.dead_letters(count=2) == letters[:2]

    healthy.set()
    first = letters[0]
    assert d.requeue_dead(first.entry_id) is True
    assert d.requeue_dead(first.entry_id) is False  # already moved
    assert wait_state(d, first.job_id, JobState.SUCCEEDED).result == "ok"
    assert d.dead_letters() == letters[1:]
    assert d.purge_dead() == 2
    assert d.dead_letters() == []
    assert d.pending() == 0
    assert ran.ids().count(first.job_id) == 2


def test_requeue_dead_refuses_an_id_taken_by_an_unfinished_job(dispatchers: Dispatchers) -> None:
    d = dispatchers(dedupe_window=0.0)
    d.register_handler("s", lambda ctx, job: (_ for _ in ()).throw(permanent(ValueError("no"))))
    d.start()
    d.submit(Job("j", "s"))
    wait_until(d.dead_letters, DEADLINE)
    entry = d.dead_letters()[0].entry_id
    d.submit(Job("j", "s", run_at=datetime.now(UTC) + timedelta(hours=1)))  # taken again
    with pytest.raises(DuplicateJob):
        d.requeue_dead(entry)


def test_unknown_type_at_the_consumer_is_dead_lettered(dispatchers: Dispatchers) -> None:
    producer = dispatchers()
    worker = dispatchers()
    ran = Recorder()
    worker.register_handler("known", ran)
    worker.start()
    producer.submit(Job("u", "nobody-handles-this"))
    producer.submit_batch([Job(f"k{i}", "known") for i in range(5)])
    wait_until(producer.dead_letters, DEADLINE)
    (letter,) = producer.dead_letters()
    assert (letter.job_id, letter.reason) == ("u", "unknown_type")
    assert letter.type == "nobody-handles-this"
    assert "nobody-handles-this" in letter.error
    assert wait_state(producer, "u", JobState.FAILED).attempts == 1
    wait_until(lambda: producer.pending() == 0, DEADLINE)
    assert sorted(ran.ids()) == [f"k{i}" for i in range(5)]


def test_status_with_queue_on_a_non_default_queue(dispatchers: Dispatchers) -> None:
    producer = dispatchers()  # consumes nothing; its default queue is "default"
    producer.submit(Job("e", "mail", {"to": "a@example.org"}, queue="emails"))
    with pytest.raises(JobNotFound):
        producer.status("e")  # not in the queues this dispatcher knows
    assert producer.status("e", queue="emails").state is JobState.QUEUED
    assert producer.status("e", queue="emails").queue == "emails"

    worker = dispatchers(queues=("emails",))
    seen: list[str | None] = []
    worker.register_handler("mail", lambda ctx, job: seen.append(ctx.queue) or job.payload["to"])
    worker.start()
    done = wait_state(producer, "e", JobState.SUCCEEDED, queue="emails")
    assert done.result == "a@example.org"
    assert worker.status("e").state is JobState.SUCCEEDED  # its first queue is "emails"
    assert seen == ["emails"]


def test_a_producer_never_creates_groups_or_consumers(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    producer = dispatchers()
    producer.submit_batch([Job(f"p{i}", "t") for i in range(3)])
    producer.status("p0")
    producer.stats()
    assert redis_client.xinfo_groups("csjd:jobs:{default}") == []
    redis_client.xgroup_create("csjd:jobs:{default}", "csjd-workers", id="0")
    producer.submit(Job("p3", "t"))
    producer.stats()
    assert redis_client.xinfo_consumers("csjd:jobs:{default}", "csjd-workers") == []
    report = producer.close()
    assert report.finished == 0
    assert redis_client.xinfo_consumers("csjd:jobs:{default}", "csjd-workers") == []
    assert redis_client.keys("*:hb:*") == []


def test_the_app_family_runs_unchanged_in_redis_mode(redis_client: Any, redis_url: str) -> None:
    def make() -> tuple[App, Any]:
        app = App(mode="redis", redis=RedisConfig(url=redis_url), distributed=fast_config())

        @app.job("add", max_attempts=2)
        def add(a: int, b: int) -> int:
            return a + b

        @app.job("boom", max_attempts=1)
        def boom() -> None:
            raise ValueError("kaboom")

        return app, (add, boom)

    web, (add, boom) = make()
    worker, _ = make()
    try:
        handle = add.delay(2, 3)
        assert web.status(handle.id).state is JobState.QUEUED
        worker.start()
        assert handle.result(timeout=DEADLINE) == 5
        asked = time.time()
        later = add.apply_async(args=(1,), kwargs={"b": 10}, countdown=0.4)
        assert later.status().state is JobState.SCHEDULED
        assert later.result(timeout=DEADLINE) == 11
        assert later.status().started_at.timestamp() >= asked + 0.4 - 0.01
        with pytest.raises(JobFailed, match="kaboom"):
            boom.delay().result(timeout=DEADLINE)
        assert add(1, 1) == 2  # calling the function still runs it inline
        assert web.dispatcher.started is False  # the web side never consumed
    finally:
        web.stop(5)
        worker.stop(5)


def test_redis_config_never_shows_the_password(
    redis_client: Any, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55"
    redis_client.acl_setuser(
        "csjd-user",
        enabled=True,
        passwords=[f"+{secret}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    try:
        url = f"redis://csjd-user:{secret}@{redis_server.address}/0"
        configs = [
            RedisConfig(url=url),
            RedisConfig.from_url(url),
            RedisConfig(addr=redis_server.address, username="csjd-user", password=secret),
        ]
        for config in configs:
            assert secret not in repr(config)
            assert secret not in str(config)
            assert secret not in config.display
        caplog.set_level(logging.DEBUG)
        for config in configs:
            d = RedisDistributedDispatcher(config, fast_config())
            d.register_handler("t", lambda ctx, job: None)
            d.start()
            d.submit(Job(f"j-{len(caplog.records)}", "t"))
            d.stop(5)
        wrong = RedisDistributedDispatcher(
            RedisConfig(url=f"redis://csjd-user:wrong-{secret}@{redis_server.address}/0"),
            fast_config(),
        )
        with pytest.raises(BackendUnavailable) as info:
            wrong.submit(Job("nope", "t"))
        assert secret not in str(info.value)
        assert caplog.records
        assert secret not in caplog.text
        assert all(secret not in repr(r.args) for r in caplog.records)
    finally:
        redis_client.acl_deluser("csjd-user")


def test_backend_unavailable_when_redis_is_unreachable() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        d = RedisDistributedDispatcher(
            RedisConfig(addr=f"127.0.0.1:{port}", connect_timeout=1.0), fast_config()
        )
        started = time.monotonic()
        # Refused before anything was sent: the error says so (no "may or may not").
        with pytest.raises(
            BackendUnavailable, match=r"unreachable .* the job was not enqueued"
        ) as info:
            d.submit(Job("j", "t"))
        assert time.monotonic() - started < 2.0
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        with pytest.raises(BackendUnavailable):
            d.submit_batch([Job("a", "t"), Job("b", "t")])
        with pytest.raises(BackendUnavailable):
            d.status("j")
        m = d.metrics()
        assert (m.submitted, m.accepted) == (3, 0)
        d.close()
        worker = RedisDistributedDispatcher(
            RedisConfig(addr=f"127.0.0.1:{port}", connect_timeout=1.0), fast_config()
        )
        with pytest.raises(BackendUnavailable):
            worker.start()
        worker.stop(1)


BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


def test_a_reply_that_never_comes_means_maybe_enqueued(
    dispatchers: Dispatchers, redis_client: Any, redis_url: str
) -> None:
    # A script keeps the server busy for 1.5 s: the submit is sent and its reply does not come
    # within the socket timeout. The error must say "may or may not" (the server may still run
    # it), and submitting again with the same id must leave exactly one job.
    d = dispatchers()
    keys = d.backend.keys_for(None)
    producer = RedisDistributedDispatcher(
        RedisConfig(url=redis_url, socket_timeout=0.3), fast_config()
    )

    def keep_busy() -> None:
        # Its own reply may come late on a loaded machine: redis-py's default (5 s) is too short.
        with redis.Redis.from_url(redis_url, socket_timeout=DEADLINE) as client:
            client.eval(BUSY_SCRIPT, 0, 1_500_000)

    busy = threading.Thread(target=keep_busy)
    probe = redis.Redis.from_url(redis_url, socket_timeout=0.05)

    def server_busy() -> bool:
        try:
            probe.ping()
        except redis.TimeoutError:
            return True
        probe.connection_pool.disconnect()
        return False

    try:
        producer.submit(Job("warm-up", "t"))  # connected before the server is busy
        busy.start()
        wait_until(server_busy, DEADLINE)
        with pytest.raises(BackendUnavailable, match="may or may not be enqueued"):
            producer.submit(Job("maybe", "t"))
        busy.join(DEADLINE)
        # Whether the server ran it depends on the server (Redis 7 runs a command it read
        # before the client hung up; Valkey drops it): the retry with the same id is safe
        # either way, and exactly one job exists after it.
        with contextlib.suppress(DuplicateJob):
            producer.submit(Job("maybe", "t"))
        assert redis_client.hget(keys.job("maybe"), "state") == b"queued"
        entries = redis_client.xrange(keys.stream)
        assert [fields[b"id"] for _, fields in entries].count(b"maybe") == 1
    finally:
        busy.join(DEADLINE)
        probe.close()
        producer.close()


def test_a_worker_that_submits_to_another_queue_keeps_its_maintenance(
    dispatchers: Dispatchers, redis_client: Any
) -> None:
    d = dispatchers(workers=2)
    ran = Recorder()

    def fan_out(ctx: JobContext, job: Job) -> None:
        ran(ctx, job)
        if job.payload == "fan":
            d.submit(Job("follow-up", "t", queue="elsewhere"))

    d.register_handler("t", fan_out)
    d.start()
    d.submit(Job("first", "t", "fan"))
    wait_until(lambda: d.status("first").state is JobState.SUCCEEDED, DEADLINE)
    # Promotion of scheduled jobs and lease renewal live in the maintenance thread: both still
    # work, and the worker did not start consuming the queue it only submitted to.
    d.submit(Job("scheduled", "t", run_at=datetime.now(UTC) + timedelta(seconds=0.3)))
    wait_until(lambda: "scheduled" in ran.ids(), DEADLINE)
    with pytest.raises(JobNotFound):
        d.status("follow-up")
    assert d.status("follow-up", queue="elsewhere").state is JobState.QUEUED
    assert redis_client.xinfo_groups("csjd:jobs:{elsewhere}") == []
    assert "follow-up" not in ran.ids()


def test_a_success_refused_after_a_takeover_is_not_counted(
    dispatchers: Dispatchers, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Successes ride on the reader's next round trip (or go at once while it blocks): either way
    # a success whose entry was taken over meanwhile is refused, logged and not counted.
    d = dispatchers(workers=1)
    release = threading.Event()
    d.register_handler("t", lambda ctx, job: release.wait(DEADLINE))
    d.register_handler("quick", lambda ctx, job: None)
    d.start()
    d.submit(Job("taken", "t"))
    wait_state(d, "taken", JobState.RUNNING)
    stream = "csjd:jobs:{default}"
    (row,) = redis_client.xpending_range(stream, "csjd-workers", "-", "+", 10)
    redis_client.xclaim(stream, "csjd-workers", "other", 0, [row["message_id"]])
    with caplog.at_level(logging.WARNING, logger="csjd_core.engine"):
        release.set()
        wait_until(lambda: "lost its claim" in caplog.text, DEADLINE)
    d.submit(Job("after", "quick"))  # the worker goes on
    wait_state(d, "after", JobState.SUCCEEDED)
    metrics = d.metrics()
    assert (metrics.processed, metrics.succeeded) == (1, 1)
    assert d.status("taken").state is JobState.RUNNING  # still pending, now the other's
