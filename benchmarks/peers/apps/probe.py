"""What every peer's jobs call: counts finished jobs and records timings in Redis.

A worker process keeps a local count, the start time of its first job, the end time of its
latest job and the latencies it saw; a background thread flushes them every 50 ms to:

- ``peers:done`` (``INCRBY``): jobs finished, across all processes;
- ``peers:first`` / ``peers:last`` (hashes keyed by pid): first job's start, latest job's end;
- ``peers:lat`` (list): seconds from the producer's ``time.time()`` to the job's start.

Each process's first job waits at a gate: the process registers in ``peers:arrived`` and waits
for ``peers:go``, which the harness sets once every worker process has arrived. So all processes
start together, and the harness computes drain time as ``max(last) - min(first)``: neither
import, start-up, a late second process nor the flush interval counts. With
``PEERS_PROBE=direct`` (RQ, whose default worker forks a child per job, so a process-local count
would die with it) every job writes at once.
"""

from __future__ import annotations

import os
import threading
import time

import redis
import redis.asyncio

URL = os.environ["PEERS_REDIS_URL"]
DIRECT = os.environ.get("PEERS_PROBE") == "direct"
DONE, FIRST, LAST, LAT, COUNTER = "peers:done", "peers:first", "peers:last", "peers:lat", "peers:n"
ARRIVED, GO = "peers:arrived", "peers:go"
GATE_POLL = 0.005
FLUSH_INTERVAL = 0.05

#: The INCR jobs' clients: module-level, as an application would keep them.
incr_client = redis.Redis.from_url(URL)
async_incr_client = redis.asyncio.Redis.from_url(URL)


class _Recorder:
    """One process's counts; flushed by a daemon thread (or at once, when DIRECT)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.client = redis.Redis.from_url(URL)
        self.lock = threading.Lock()
        self.first: float | None = None
        self.last = 0.0
        self.count = 0
        self.latencies: list[float] = []
        self.gate_lock = threading.Lock()
        self.open = False
        if not DIRECT:
            threading.Thread(target=self._loop, name="peers-probe", daemon=True).start()

    def gate(self) -> None:
        """Wait (once per process) until the harness says go; other threads wait behind."""
        if self.open:
            return
        with self.gate_lock:
            if self.open:
                return
            self.client.hset(ARRIVED, str(self.pid), "1")
            while not self.client.exists(GO):
                time.sleep(GATE_POLL)
            self.open = True

    def record(self, started: float, latency: float | None) -> None:
        """Count one finished job that started at ``started``."""
        ended = time.time()
        with self.lock:
            if self.first is None:
                self.first = started
            self.last = ended
            self.count += 1
            if latency is not None:
                self.latencies.append(latency)
        if DIRECT:
            self.flush()

    def flush(self) -> None:
        """Write what was counted since the last flush."""
        with self.lock:
            count, first, last, latencies = self.count, self.first, self.last, self.latencies
            self.count, self.latencies = 0, []
        if not count:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(FIRST, str(self.pid), repr(first))
        pipe.hset(LAST, str(self.pid), repr(last))
        if latencies:
            pipe.rpush(LAT, *map(repr, latencies))
        pipe.incrby(DONE, count)
        pipe.execute()

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.flush()


_recorder: _Recorder | None = None
_recorder_lock = threading.Lock()


def _get() -> _Recorder:
    """This process's recorder (a forked child gets its own: threads do not survive a fork)."""
    global _recorder
    recorder = _recorder
    if recorder is not None and recorder.pid == os.getpid():
        return recorder
    with _recorder_lock:
        if _recorder is None or _recorder.pid != os.getpid():
            _recorder = _Recorder()
        return _recorder


def noop(ts: float) -> None:
    """The no-op job's body."""
    recorder = _get()
    recorder.gate()
    recorder.record(time.time(), None)


def incr(ts: float) -> None:
    """The INCR job's body: one ``INCR`` with a module-level redis-py client."""
    recorder = _get()
    recorder.gate()
    started = time.time()
    incr_client.incr(COUNTER)
    recorder.record(started, None)


async def aincr(ts: float) -> None:
    """The INCR job's body for asyncio peers: one ``INCR`` with a redis.asyncio client."""
    recorder = _get()
    recorder.gate()  # blocks the event loop: nothing else may run before go either
    started = time.time()
    await async_incr_client.incr(COUNTER)
    recorder.record(started, None)


def latency(ts: float) -> None:
    """The latency job's body: records the time from enqueue (``ts``) to start."""
    recorder = _get()
    recorder.gate()
    started = time.time()
    recorder.record(started, started - ts)
