"""End-to-end in-process throughput and memory, against a bare ThreadPoolExecutor.

Run: ``python benchmarks/bench_inprocess.py [--jobs N] [--repeat R] [--memory-jobs M]``

Throughput: N jobs submitted and completed through a `Dispatcher` with 8 workers and a no-op
handler (``payload=None``, then a small dict payload), as jobs/s and as a ratio to
``concurrent.futures.ThreadPoolExecutor(8)`` running the same no-op callables in the same
process, same run. Memory: RSS of a fresh process holding M queued jobs (``payload=None``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import statistics
import subprocess
import sys
import time

from csjd_core import Config, Dispatcher, Job


def noop() -> None:
    return None


def bench_executor(n: int) -> float:
    with cf.ThreadPoolExecutor(8) as pool:
        start = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(n)]
        cf.wait(futures)
        elapsed = time.perf_counter() - start
    return n / elapsed


def bench_dispatcher(n: int, payload: object) -> float:
    dispatcher = Dispatcher(Config(workers=8, max_pending_jobs=n + 1))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    jobs = [Job(f"job-{i}", "noop", payload) for i in range(n)]
    dispatcher.start()
    submit = dispatcher.submit
    start = time.perf_counter()
    for job in jobs:
        submit(job)
    dispatcher.join()
    elapsed = time.perf_counter() - start
    report = dispatcher.stop()
    metrics = dispatcher.metrics()
    if metrics.succeeded != n or not report.clean:
        raise SystemExit(f"benchmark run lost jobs: {metrics} {report}")
    return n / elapsed


MEMORY_CHILD = """
import sys, json
from csjd_core import Config, Dispatcher, Job

def rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

n = int(sys.argv[1])
d = Dispatcher(Config(workers=8, max_pending_jobs=n))
d.register_handler("noop", lambda ctx, job: None)
base = rss_kib()
for i in range(n):
    d.submit(Job(f"job-{i}", "noop"))
print(json.dumps({"base_kib": base, "peak_kib": rss_kib("VmHWM"), "pending": d.pending()}))
"""


def bench_memory(n: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(n)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.jobs
    rows: dict[str, list[float]] = {"executor": [], "csjd-none": [], "csjd-dict": []}
    for _ in range(args.repeat):
        for name, fn in (
            ("executor", lambda: bench_executor(n)),
            ("csjd-none", lambda: bench_dispatcher(n, None)),
            ("csjd-dict", lambda: bench_dispatcher(n, {"user_id": 42, "template": "welcome"})),
        ):
            gc.collect()
            rows[name].append(fn())
    base = statistics.median(rows["executor"])
    print(f"in-process throughput, {n} no-op jobs, 8 workers, median of {args.repeat}")
    print(f"{'run':<34}{'jobs/s':>12}{'ratio':>8}")
    labels = {
        "executor": "ThreadPoolExecutor(8) baseline",
        "csjd-none": "Dispatcher, payload=None",
        "csjd-dict": "Dispatcher, small dict payload",
    }
    for name, values in rows.items():
        rate = statistics.median(values)
        print(f"{labels[name]:<34}{rate:>12,.0f}{rate / base:>8.2f}")
    if args.memory_jobs:
        mem = bench_memory(args.memory_jobs)
        peak, base = mem["peak_kib"] / 1024, mem["base_kib"] / 1024
        print(
            f"\nmemory: {mem['pending']:,} queued jobs (payload=None): peak RSS "
            f"{peak:.0f} MiB (interpreter + import: {base:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
