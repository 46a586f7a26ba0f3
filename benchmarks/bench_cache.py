"""TTLCache figures: cost of a hit next to a plain dict lookup, and loads saved in a stampede.

Run: ``python benchmarks/bench_cache.py [--number N] [--repeat R] [--threads T]``.
Timings are the best of R interleaved repeats of N calls (the least disturbed run), with the
cost of an empty loop subtracted; ratios compare against ``d[key]`` measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csjd_core.utilities.cache import TTLCache


def hit_costs(number: int, repeat: int) -> list[tuple[str, float]]:
    """Best nanoseconds per operation for each candidate, net of the loop."""
    key = "user:42"
    plain = {key: "value"}
    lock = threading.Lock()
    cache: TTLCache[str, str] = TTLCache(ttl=3600, max_size=1024)
    cache.get_or_load(key, lambda: "value")

    def loader() -> str:
        return "value"

    def locked_lookup() -> str:
        with lock:
            return plain[key]

    namespace = {
        "d": plain,
        "key": key,
        "dget": plain.get,
        "locked": locked_lookup,
        "get_or_load": cache.get_or_load,
        "cget": cache.get,
        "loader": loader,
    }
    candidates = {
        "empty loop": "pass",
        "dict d[key]": "d[key]",
        "dict.get(key)": "dget(key)",
        "dict under a Lock (function)": "locked()",
        "TTLCache.get_or_load hit": "get_or_load(key, loader)",
        "TTLCache.get hit": "cget(key)",
    }
    timers = {name: timeit.Timer(stmt, globals=namespace) for name, stmt in candidates.items()}
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(repeat):  # interleaved, so a noisy moment hurts every row alike
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number) / number * 1e9)
    loop = best.pop("empty loop")
    return [(name, max(ns - loop, 0.0)) for name, ns in best.items()]


def stampede(threads: int, load_seconds: float) -> tuple[int, int]:
    """Loads made when ``threads`` threads miss one key at once: (naive, TTLCache)."""

    def run(get: Callable[[], object]) -> None:
        barrier = threading.Barrier(threads)

        def worker() -> None:
            barrier.wait()
            get()

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()

    counter_lock = threading.Lock()
    loads = {"naive": 0, "ttl": 0}

    def slow_loader(kind: str) -> Callable[[], str]:
        def load() -> str:
            with counter_lock:
                loads[kind] += 1
            time.sleep(load_seconds)  # stands for the database round trip
            return "value"

        return load

    naive: dict[str, str] = {}
    naive_loader = slow_loader("naive")

    def naive_get() -> str:
        if "k" in naive:  # check-then-load: every thread that misses loads
            return naive["k"]
        value = naive_loader()
        naive["k"] = value
        return value

    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=16)
    ttl_loader = slow_loader("ttl")
    run(naive_get)
    run(lambda: cache.get_or_load("k", ttl_loader))
    return loads["naive"], loads["ttl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=9, help="repeats; the best is kept")
    parser.add_argument("--threads", type=int, default=100, help="threads in the stampede")
    args = parser.parse_args()

    print(f"Python {sys.version.split()[0]}, {args.repeat} x {args.number:,} calls, best run\n")
    costs = hit_costs(args.number, args.repeat)
    baseline = dict(costs)["dict d[key]"]
    print(f"{'operation':<32}{'ns/op':>9}{'x dict':>9}")
    print("-" * 50)
    for name, ns in costs:
        ratio = f"{ns / baseline:.1f}" if baseline > 0 else "n/a"
        print(f"{name:<32}{ns:>9.1f}{ratio:>9}")

    naive, ttl = stampede(args.threads, load_seconds=0.02)
    print(f"\n{args.threads}-thread stampede on one missing key (loader takes 20 ms)")
    print(f"{'cache':<32}{'loads':>9}")
    print("-" * 41)
    print(f"{'naive check-then-load dict':<32}{naive:>9}")
    print(f"{'TTLCache.get_or_load':<32}{ttl:>9}")
    print(f"{'loads saved':<32}{naive - ttl:>9}")


if __name__ == "__main__":
    main()
