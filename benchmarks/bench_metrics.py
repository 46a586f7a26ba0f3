"""The cost of the Prometheus exporter: throughput with metrics on against metrics off, in the
same process and run, alternating, for an in-process `Dispatcher` and a Redis worker
(`RedisDistributedDispatcher` consuming in this process).

Run: ``python benchmarks/bench_metrics.py [--jobs N] [--repeat R] [--redis-url URL]``
(without ``--redis-url`` a throwaway redis-server is started, if one is on PATH).

Each run drains N no-op jobs (submitted before the workers start) and reports jobs/s; the
ratio is on/off of the medians (the issue's bar: at least 0.9).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import redis

from csjd_core import Config, Dispatcher, Job
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.prometheus import PrometheusExporter


def noop(ctx: object, job: Job) -> None:
    return None


def exporter() -> PrometheusExporter:
    return PrometheusExporter(["noop"], ["default"])


def inprocess(jobs: int, metrics: bool) -> float:
    hooks = (exporter(),) if metrics else ()
    dispatcher = Dispatcher(Config(workers=8, max_pending_jobs=jobs + 10, hooks=hooks))
    dispatcher.register_handler("noop", noop)
    began = time.perf_counter()
    with dispatcher:
        for i in range(jobs):
            dispatcher.submit(Job(str(i), "noop"))
        assert dispatcher.join(120)
    return jobs / (time.perf_counter() - began)


def redis_worker(url: str) -> Callable[[int, bool], float]:
    def run(jobs: int, metrics: bool) -> float:
        redis.Redis.from_url(url).flushall()
        hooks = (exporter(),) if metrics else ()
        config = DistributedConfig(
            workers=8, max_pending_jobs=jobs + 10, dedupe_window=0, hooks=hooks
        )
        producer = RedisDistributedDispatcher(RedisConfig(url=url), DistributedConfig())
        for start in range(0, jobs, 500):
            producer.submit_batch(Job(str(i), "noop") for i in range(start, min(jobs, start + 500)))
        producer.close()
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


def compare(name: str, run: Callable[[int, bool], float], jobs: int, repeat: int) -> float:
    off: list[float] = []
    on: list[float] = []
    for _ in range(repeat):
        off.append(run(jobs, False))
        on.append(run(jobs, True))
    ratio = statistics.median(on) / statistics.median(off)
    print(
        f"{name:<28} off {statistics.median(off):>10,.0f} jobs/s   on "
        f"{statistics.median(on):>10,.0f} jobs/s   ratio {ratio:.2f}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    compare("in-process Dispatcher", inprocess, args.jobs, args.repeat)
    url, server, tmp = args.redis_url, None, None
    if url is None and shutil.which("redis-server"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        tmp = tempfile.mkdtemp()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    try:
        if url is not None:
            compare("Redis worker", redis_worker(url), args.jobs // 2, args.repeat)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
