"""Progress in Redis mode (``ctx.set_progress``, issue 18): progress.lua's fence, a worker
subprocess's progress seen by a producer while the job runs and kept with its outcome, and the
coalescing that turns a tight loop of calls into about one write per interval.

The contract suite (tests/core/test_backend_contract.py) covers the `Backend` side on every
backend; these tests are about what only Redis has: other processes and the wire.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis_support import DEADLINE, Dispatchers, Workers

from csjd_core import Job, JobState
from csjd_core.backends.redis.connection import _load_script
from csjd_core.backends.redis.maintenance import PROGRESS_INTERVAL
from csjd_core.progress import from_json, make_progress, to_json
from csjd_core.testing import wait_until

STREAM = "csjd:jobs:{default}"
RECORD = "csjd:jobs:{default}:job:"
GROUP = "csjd-workers"


def _progress_script(client: redis.Redis) -> Any:
    return client.register_script(_load_script("progress"))


def test_progress_lua_writes_only_for_the_owner_of_a_running_record(
    redis_client: redis.Redis,
) -> None:
    script = _progress_script(redis_client)
    redis_client.xgroup_create(STREAM, GROUP, "0", mkstream=True)
    entry = redis_client.xadd(STREAM, {"id": "j", "d": "{}"}).decode()
    redis_client.xreadgroup(GROUP, "owner", {STREAM: ">"})  # delivered once to "owner"
    key = RECORD + "j"
    value = to_json(make_progress(1, 4, "a quarter"))

    def write(consumer: str, deliveries: int) -> int:
        (flag,) = script(keys=[STREAM, key], args=[GROUP, consumer, entry, deliveries, value])
        return int(flag)

    # No record (expired, or never written): never recreated.
    assert write("owner", 1) == 0
    assert not redis_client.exists(key)
    # Finished records are never changed.
    for finished in ("succeeded", "failed"):
        redis_client.hset(key, mapping={"state": finished})
        assert write("owner", 1) == 0
        assert not redis_client.hexists(key, "progress")
    redis_client.hset(key, "state", "running")
    # Another consumer, or the owner with another delivery count (reclaimed meanwhile): refused.
    assert write("thief", 1) == 0
    assert write("owner", 2) == 0
    assert not redis_client.hexists(key, "progress")
    assert write("owner", 1) == 1
    written = from_json(redis_client.hget(key, "progress").decode())
    assert written is not None and (written.current, written.total) == (1, 4)
    # Claimed by another consumer (a lost lease): the old owner's value is refused.
    redis_client.xclaim(STREAM, GROUP, "thief", 0, [entry])
    redis_client.hdel(key, "progress")
    assert write("owner", 1) == 0
    assert not redis_client.hexists(key, "progress")


def test_an_attempt_that_lost_its_lease_cannot_write_progress(dispatchers: Dispatchers) -> None:
    """A running attempt whose entry another consumer claimed: its value is refused by
    progress.lua (the fence) and by settle.lua with its outcome; the record keeps none."""
    release, flushed, running = threading.Event(), threading.Event(), threading.Event()
    d = dispatchers(heartbeat_interval=0.2, lease=30.0)

    @d.handler("hold")
    def hold(ctx: Any, job: Job) -> None:
        running.set()
        release.wait(DEADLINE)
        ctx.set_progress(1, 1, "after the lease was lost")
        flushed.wait(DEADLINE)

    d.start()
    d.submit(Job("j", "hold"))
    assert running.wait(DEADLINE)
    client = d.backend.client
    wait_until(lambda: d.status("j").state is JobState.RUNNING, DEADLINE)
    (pending,) = client.xpending_range(STREAM, GROUP, "-", "+", 1)
    client.xclaim(STREAM, GROUP, "thief", 0, [pending["message_id"]])
    holdings = d.backend.holdings
    release.set()
    wait_until(lambda: holdings.progress or d.status("j").progress, DEADLINE)
    d.backend.maintenance.flush_progress()  # refused by progress.lua
    assert not holdings.progress  # refused for good: not sent again
    flushed.set()
    wait_until(lambda: not holdings.owned, DEADLINE)  # its outcome was refused too
    status = d.status("j")
    assert status.state is JobState.RUNNING  # the thief's now
    assert status.progress is None
    assert d.metrics().succeeded == 0  # its success was refused (lost claim)


def test_a_worker_process_reports_progress_the_producer_sees(
    workers: Workers, dispatchers: Dispatchers, tmp_path: Path
) -> None:
    """A handler in another process sets progress and waits: the producer sees the value while
    the job runs (written by the worker's maintenance thread, not by the outcome), and after
    the outcome the final value."""
    worker = workers("w", heartbeat=0.5, lease=5.0)
    producer = dispatchers()
    go = tmp_path / "go"
    producer.submit(Job("p", "progress", {"calls": 10, "go": str(go)}))
    wait_until(lambda: "p" in worker.started(), DEADLINE)
    began = time.monotonic()

    def seen() -> bool:
        status = producer.status("p")
        return status.progress is not None and status.progress.current == 10

    wait_until(seen, DEADLINE)
    latency = time.monotonic() - began
    running = producer.status("p")
    assert running.state is JobState.RUNNING, f"seen after {latency:.2f} s"
    assert running.progress is not None
    assert (running.progress.total, running.progress.message) == (10, "call 10")
    go.touch()
    wait_until(lambda: producer.status("p").state is JobState.SUCCEEDED, DEADLINE)
    final = producer.status("p").progress
    assert final is not None
    assert (final.current, final.total, final.message) == (10, 10, "finished")


def test_a_tight_loop_of_set_progress_costs_about_one_write_per_interval(
    workers: Workers, dispatchers: Dispatchers, redis_url: str
) -> None:
    """10,000 and more calls for 2 s: progress.lua runs about once per interval (the worker's
    heartbeat_interval, 0.5 s here, as it is shorter than PROGRESS_INTERVAL), counted with
    MONITOR."""
    interval = min(PROGRESS_INTERVAL, 0.5)
    sha = hashlib.sha1(_load_script("progress").encode()).hexdigest()
    worker = workers("w", heartbeat=interval, lease=5.0)
    producer = dispatchers()
    monitor = redis.Redis.from_url(redis_url).connection_pool.get_connection()
    monitor.send_command("MONITOR")
    assert monitor.read_response() in (b"OK", "OK")
    calls: list[str] = []
    writes: list[str] = []

    def watch() -> None:
        while True:
            try:
                line = monitor.read_response()
            except (redis.ConnectionError, OSError, ValueError):
                return
            text = line.decode() if isinstance(line, bytes) else line
            if sha in text:
                calls.append(text)
            elif '"HSET"' in text and '"progress"' in text:
                writes.append(text)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    seconds = 2.0
    began = time.monotonic()
    producer.submit(Job("loop", "progress", {"calls": 10_000, "seconds": seconds}))
    wait_until(lambda: producer.status("loop").state is JobState.SUCCEEDED, DEADLINE)
    elapsed = time.monotonic() - began
    monitor.disconnect()
    thread.join(5)
    status = producer.status("loop")
    assert status.result >= 10_000
    assert status.progress is not None and status.progress.message == "finished"
    # One call per interval while it ran (plus one for the edges); the final value went with
    # the outcome (settle.lua's HSET), never as a call of its own.
    most = elapsed / interval + 2
    assert 1 <= len(calls) <= most, (len(calls), most, status.result)
    assert len(writes) <= len(calls) + 1, writes[:5]
    assert "loop" in worker.done()
