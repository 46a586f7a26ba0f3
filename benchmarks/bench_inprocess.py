"""End-to-end in-process throughput, per-phase cost and memory, against a lean
ThreadPoolExecutor.

Run: ``python benchmarks/bench_inprocess.py [--jobs N] [--repeat R] [--memory-jobs M] [--json F]``

Throughput: N jobs submitted and completed through a `Dispatcher` with 8 workers and a no-op
handler (``payload=None``, then a small dict payload), as jobs/s and as a ratio to
``concurrent.futures.ThreadPoolExecutor(8)`` running the same no-op callables in the same process
and run. Both sides time the same things: the work is built inside the timed loop (each `Job`;
each executor call), nothing is kept per job (no list of futures), and the end is included (the
dispatcher's drain; the executor's shutdown). Runs alternate (executor, payload None, dict).

Phases: µs per job of each step alone, on one thread with the workers stopped: submit (build the
`Job` and admit it), hand-over (fetch), run (the attempt without its outcome) and outcome
(`succeed_nowait` and the counters). End to end is more than their sum: the threads hand jobs to
each other. Memory: RSS of a fresh process holding M queued jobs (``payload=None``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csjd_core import Config, Dispatcher, Job
from csjd_core.engine.pool import Worker


def noop() -> None:
    return None


def bench_executor(n: int) -> float:
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        submit = pool.submit
        for _ in range(n):
            submit(noop)
    return n / (time.perf_counter() - start)


def bench_dispatcher(n: int, payload: object) -> float:
    dispatcher = Dispatcher(Config(workers=8, max_pending_jobs=n + 1))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    dispatcher.start()
    submit = dispatcher.submit
    start = time.perf_counter()
    for i in range(n):
        submit(Job(f"job-{i}", "noop", payload))
    dispatcher.join()
    elapsed = time.perf_counter() - start
    report = dispatcher.stop()
    metrics = dispatcher.metrics()
    if metrics.succeeded != n or not report.clean:
        raise SystemExit(f"benchmark run lost jobs: {metrics} {report}")
    return n / elapsed


def bench_phases(n: int) -> dict[str, float]:
    """µs per job of each phase alone, on this thread (no worker thread runs)."""
    dispatcher = Dispatcher(Config(workers=8, max_pending_jobs=n + 1))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    dispatcher._ensure_open()  # admission works; no worker thread is started
    backend, engine = dispatcher._backend, dispatcher._engine
    worker = Worker(0, "bench", dispatcher._counters.tally())
    submit, fetch, attempt = dispatcher.submit, backend.fetch, engine.attempt
    timings: dict[str, float] = {}
    with _gc_paused():
        start = time.perf_counter()
        for i in range(n):
            submit(Job(f"job-{i}", "noop"))
        timings["submit"] = time.perf_counter() - start
        start = time.perf_counter()
        deliveries = [fetch(0) for _ in range(n)]
        timings["hand-over"] = time.perf_counter() - start - _list_cost(n)
        half = deliveries[: n // 2]
        start = time.perf_counter()
        for delivery in half:
            attempt(delivery, worker)
        attempts = (time.perf_counter() - start) / len(half)
        rest = deliveries[n // 2 :]
        for delivery in rest:
            backend.started(delivery, worker.id)
        tally, succeed_nowait = worker.tally, backend.succeed_nowait
        start = time.perf_counter()
        for delivery in rest:  # what run_attempt does after the handler returned
            if succeed_nowait(delivery, None) is not False:
                tally.seq += 1
                tally.processed += 1
                tally.succeeded += 1
                tally.seq += 1
        outcome = (time.perf_counter() - start) / len(rest)
    dispatcher.stop()
    us = {name: seconds / n * 1e6 for name, seconds in timings.items()}
    us["run"] = (attempts - outcome) * 1e6
    us["outcome"] = outcome * 1e6
    return us


def _list_cost(n: int) -> float:
    """What building a list of ``n`` items costs (taken out of the hand-over figure)."""
    start = time.perf_counter()
    [None for _ in range(n)]
    return time.perf_counter() - start


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    out: list[dict[str, Any]] = []
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
    print(f"in-process throughput, {n:,} no-op jobs, 8 workers, median of {args.repeat}")
    print(f"{'run':<34}{'jobs/s':>12}{'ratio':>8}{'µs/job':>8}")
    labels = {
        "executor": "ThreadPoolExecutor(8) baseline",
        "csjd-none": "Dispatcher, payload=None",
        "csjd-dict": "Dispatcher, small dict payload",
    }
    for name, values in rows.items():
        rate = statistics.median(values)
        print(f"{labels[name]:<34}{rate:>12,.0f}{rate / base:>8.2f}{1e6 / rate:>8.2f}")
        out.append(_row("throughput jobs/s", labels[name], rate, base, values))
    phases = [bench_phases(min(n, 100_000)) for _ in range(args.repeat)]
    print("\nphases alone, one thread, µs per job (median)")
    total = 0.0
    for name in ("submit", "hand-over", "run", "outcome"):
        value = statistics.median(p[name] for p in phases)
        total += value
        print(f"  {name:<12}{value:>6.2f}")
        out.append(_row("phase µs/job", name, value, None, [p[name] for p in phases]))
    end_to_end = 1e6 / statistics.median(rows["csjd-none"])
    print(f"  {'sum':<12}{total:>6.2f}   (end to end, 8 workers: {end_to_end:.2f})")
    if args.memory_jobs:
        mem = bench_memory(args.memory_jobs)
        peak, base = mem["peak_kib"] / 1024, mem["base_kib"] / 1024
        print(
            f"\nmemory: {mem['pending']:,} queued jobs (payload=None): peak RSS "
            f"{peak:.0f} MiB (interpreter + import: {base:.0f} MiB)"
        )
        out.append(_row("memory MiB", f"{mem['pending']:,} queued jobs, peak RSS", peak, None, []))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": out}, indent=1))


def _row(section: str, name: str, value: float, base: float | None, runs: list[float]) -> Any:
    return {"section": section, "name": name, "value": value, "base": base, "runs": runs}


if __name__ == "__main__":
    main()
