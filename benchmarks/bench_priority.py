"""Priorities: drain throughput with one priority and with mixed priorities, and how long a
high-priority job waits behind a backlog — in process and on Redis, in the same run.

Run: ``python benchmarks/bench_priority.py [--jobs N] [--repeat R] [--only inprocess,redis]
[--json F]``

- drain: N queued no-op jobs run by 8 workers, timed from the start of the workers until none is
  unfinished: every job priority 0 (today's path), then priorities cycling -10, 0, 10 (three
  Redis bands, three in-process priorities), runs interleaved, median of R.
- wait behind a backlog: N jobs of 2 ms (priority -10) are queued and 8 workers start; once a
  tenth of them ran, one more job is submitted, of priority 50, then (another run) of priority
  -10: the seconds from its submit to its start, and how many backlog jobs started before it.
  In process the order is exact (the ready queue); on Redis by band, after what the consumer
  holds (its running jobs and its read-ahead).

Redis: a throwaway ``redis-server`` (bench_redis.py's), the worker a `RedisDistributedDispatcher`
in this process (8 threads), the producer another one. The package measured is whichever
``csjd_core`` imports first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, load_test_module

try:
    import csjd_core  # noqa: F401 - the installed one, if any
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))

from csjd_core import Config, Dispatcher, Job
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher

MIXED = (-10, 0, 10)
BACKLOG_MS = 2.0


class Side:
    """One mode: builds a worker (started by `run`) and a producer, and cleans up."""

    def __init__(self, name: str, url: str | None) -> None:
        self.name = name
        self.url = url
        self.seq = 0

    def make(self, handlers: dict[str, Callable[..., Any]]) -> tuple[Any, Any]:
        """(worker dispatcher, producer) on a fresh queue; the worker not started yet."""
        self.seq += 1
        if self.url is None:
            worker = Dispatcher(Config(workers=8, max_pending_jobs=1_000_000))
            for job_type, fn in handlers.items():
                worker.register_handler(job_type, fn)
            worker._ensure_open()  # admission works before the workers start
            return worker, worker
        config = DistributedConfig(stream=f"bench{self.seq}", workers=8, max_pending_jobs=1_000_000)
        worker = RedisDistributedDispatcher(RedisConfig(url=self.url), config)
        for job_type, fn in handlers.items():
            worker.register_handler(job_type, fn)
        producer = RedisDistributedDispatcher(RedisConfig(url=self.url), config)
        return worker, producer

    def close(self, worker: Any, producer: Any) -> None:
        worker.stop(30)
        if producer is not worker:
            producer.close()


def submit_all(producer: Any, jobs: list[Job]) -> None:
    for i in range(0, len(jobs), 1000):
        producer.submit_batch(jobs[i : i + 1000])


def drain_once(side: Side, n: int, mixed: bool) -> float:
    """Jobs/s draining ``n`` queued no-op jobs."""
    worker, producer = side.make({"noop": lambda ctx, job: None})
    jobs = [Job(f"j{i}", "noop", priority=MIXED[i % 3] if mixed else 0) for i in range(n)]
    submit_all(producer, jobs)
    start = time.perf_counter()
    worker.start()
    while producer.pending():
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    side.close(worker, producer)
    return n / elapsed


def wait_once(side: Side, n: int, priority: int) -> tuple[float, int]:
    """(seconds from submit to start, backlog jobs started before it) of one job of
    ``priority`` submitted once a tenth of ``n`` backlog jobs of priority -10 ran."""
    started = [0]
    seen: dict[str, float] = {}
    count_lock = threading.Lock()

    def backlog(ctx: Any, job: Job) -> None:
        with count_lock:
            started[0] += 1
        time.sleep(BACKLOG_MS / 1000)

    def probe(ctx: Any, job: Job) -> None:
        seen["at"] = time.perf_counter()
        seen["before"] = started[0]

    worker, producer = side.make({"backlog": backlog, "probe": probe})
    submit_all(producer, [Job(f"b{i}", "backlog", priority=-10) for i in range(n)])
    worker.start()
    while started[0] < n // 10:
        time.sleep(0.001)
    submitted_after = started[0]
    sent = time.perf_counter()
    producer.submit(Job("probe", "probe", priority=priority))
    while "at" not in seen:
        time.sleep(0.0005)
    side.close(worker, producer)
    return seen["at"] - sent, int(seen["before"]) - submitted_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per drain run")
    parser.add_argument("--backlog", type=int, default=2_000, help="backlog of the wait test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="inprocess,redis")
    parser.add_argument("--server", default="/usr/bin/redis-server")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-priority-"))
    server = None
    try:
        sides = []
        if "inprocess" in sections:
            sides.append(Side("in-process", None))
        if "redis" in sections:
            server = load_test_module("redis_server").RedisServerProcess(args.server, tmp / "r")
            server.start()
            sides.append(Side("redis", server.url))
        print(f"priorities: {args.jobs:,} no-op jobs per drain, 8 workers, median of {args.repeat}")
        print(f"{'mode':<12}{'measure':<52}{'value':>12}")
        for side in sides:
            drain_once(side, min(args.jobs, 2_000), True)  # warm up (imports, scripts)
            one: list[float] = []
            mixed: list[float] = []
            for _ in range(args.repeat):  # interleaved: the machine's load falls on both
                one.append(drain_once(side, args.jobs, False))
                mixed.append(drain_once(side, args.jobs, True))
            base = statistics.median(one)
            for label, values in (("one priority (0)", one), ("mixed -10/0/10", mixed)):
                rate = statistics.median(values)
                print(f"{side.name:<12}{'drain jobs/s, ' + label:<52}{rate:>12,.0f}")
                rows.append(_row(side.name, f"drain jobs/s, {label}", rate, base, values))
            for priority in (50, -10):
                waits = [wait_once(side, args.backlog, priority) for _ in range(args.repeat)]
                seconds = statistics.median(w[0] for w in waits)
                ahead = statistics.median(w[1] for w in waits)
                label = f"job of priority {priority} behind {args.backlog:,} at -10"
                print(f"{side.name:<12}{label + ', wait ms':<52}{seconds * 1000:>12,.1f}")
                print(f"{side.name:<12}{label + ', started before it':<52}{ahead:>12,.0f}")
                rows.append(_row(side.name, f"{label}, wait ms", seconds * 1000, None, []))
                rows.append(_row(side.name, f"{label}, started before it", ahead, None, []))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))


def _row(section: str, name: str, value: float, base: float | None, runs: list[float]) -> Any:
    return {"section": section, "name": name, "value": value, "base": base, "runs": runs}


if __name__ == "__main__":
    main()
