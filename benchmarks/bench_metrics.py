"""What watching costs: throughput with the Prometheus exporter on, and with every attempt's
log record written (the successes' DEBUG ones too, as JSON lines to a file), against both off —
in the same process and run, alternating, for an in-process `Dispatcher` and a Redis worker
(`RedisDistributedDispatcher` consuming in this process).

Run: ``python benchmarks/bench_metrics.py [--jobs N] [--repeat R] [--json PATH]``
(a throwaway redis-server is started; ``--redis-url`` uses yours, flushing it).

Each run drains N no-op jobs (submitted before the workers start) and reports jobs/s; a ratio
is on/off of the medians (issue 19's bar for metrics: at least 0.9). No-op jobs are the worst
case: a real handler's own work dilutes the cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import ROOT, load_test_module

try:
    import csjd_core  # noqa: F401 - the installed one, if any
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))

import redis

from csjd_core import Config, Dispatcher, Job
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.logs import JsonFormatter
from csjd_core.prometheus import PrometheusExporter

SIDES = ("off", "metrics", "logs")


def noop(ctx: object, job: Job) -> None:
    return None


@contextmanager
def watching(side: str, log_path: Path) -> Iterator[tuple[object, ...]]:
    """The hooks of ``side``, with every attempt's record on (DEBUG, JSON lines to a file) for
    ``logs``."""
    if side != "logs":
        yield (PrometheusExporter(["noop"], ["default"]),) if side == "metrics" else ()
        return
    engine = logging.getLogger("csjd_core.engine")
    handler = logging.FileHandler(log_path)
    handler.setFormatter(JsonFormatter())
    engine.addHandler(handler)
    engine.setLevel(logging.DEBUG)
    try:
        yield ()
    finally:
        engine.removeHandler(handler)
        engine.setLevel(logging.NOTSET)
        handler.close()
        log_path.unlink()


def inprocess(jobs: int, side: str, log_path: Path) -> float:
    with watching(side, log_path) as hooks:
        dispatcher = Dispatcher(Config(workers=8, max_pending_jobs=jobs + 10, hooks=hooks))
        dispatcher.register_handler("noop", noop)
        batch = [Job(str(i), "noop") for i in range(jobs)]
        began = time.perf_counter()
        with dispatcher:
            dispatcher.submit_batch(batch)
            assert dispatcher.join(120)
        return jobs / (time.perf_counter() - began)


def redis_worker(url: str) -> Callable[[int, str, Path], float]:
    def run(jobs: int, side: str, log_path: Path) -> float:
        redis.Redis.from_url(url).flushall()
        producer = RedisDistributedDispatcher(RedisConfig(url=url), DistributedConfig())
        for start in range(0, jobs, 500):
            producer.submit_batch(Job(str(i), "noop") for i in range(start, min(jobs, start + 500)))
        producer.close()
        with watching(side, log_path) as hooks:
            config = DistributedConfig(
                workers=8, max_pending_jobs=jobs + 10, dedupe_window=0, hooks=hooks
            )
            worker = RedisDistributedDispatcher(RedisConfig(url=url), config)
            worker.register_handler("noop", noop)
            began = time.perf_counter()
            worker.start()
            while worker.metrics().processed < jobs:
                time.sleep(0.005)
            elapsed = time.perf_counter() - began
            worker.stop(10)
        return jobs / elapsed

    return run


def compare(
    name: str, run: Callable[[int, str, Path], float], jobs: int, repeat: int, tmp: Path
) -> dict[str, float]:
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(repeat):
        for side in SIDES:  # alternating: a drift of the machine hits every side alike
            rates[side].append(run(jobs, side, tmp / "attempts.log"))
    medians = {side: statistics.median(values) for side, values in rates.items()}
    figures = {f"{side}_jobs_per_s": round(medians[side]) for side in SIDES}
    for side in SIDES[1:]:
        figures[f"{side}_ratio"] = round(medians[side] / medians["off"], 3)
        figures[f"{side}_us_per_job"] = round(1e6 / medians[side] - 1e6 / medians["off"], 2)
    print(
        f"{name:<24} off {medians['off']:>9,.0f} jobs/s | metrics {medians['metrics']:>9,.0f} "
        f"({figures['metrics_ratio']:.2f}, {figures['metrics_us_per_job']:+.1f} us/job) | "
        f"logs {medians['logs']:>9,.0f} ({figures['logs_ratio']:.2f}, "
        f"{figures['logs_us_per_job']:+.1f} us/job)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", help="use this Redis (it is flushed) instead of a new one")
    parser.add_argument("--server", default="/usr/bin/redis-server")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    results: dict[str, object] = {"jobs": args.jobs, "repeat": args.repeat, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        results["inprocess"] = compare(
            "in-process Dispatcher", inprocess, args.jobs, args.repeat, tmp
        )
        server = None
        url = args.redis_url
        if url is None:
            server = load_test_module("redis_server").RedisServerProcess(args.server, tmp / "r")
            server.start()
            url = server.url
        try:
            results["redis"] = compare(
                "Redis worker", redis_worker(url), args.jobs // 2, args.repeat, tmp
            )
        finally:
            if server is not None:
                server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
