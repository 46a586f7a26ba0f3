"""One Redis against a 3-master Redis Cluster: the same jobs, the same workers, the same run.

Run: ``python benchmarks/bench_cluster.py [--jobs N] [--repeat R] [--quick]``

Starts its own throwaway servers (persistence off, free ports, a temporary directory): one
``redis-server``, and a cluster of three masters joined by ``tests/redis_cluster.py``. Three
queues, ``b``, ``default`` and ``a``, hash to the slots of the first, second and third master,
so on the cluster each queue is one shard. For each target, in the same run (interleaved,
median of ``--repeat``):

- enqueue: this process submits ``N`` jobs to each queue with ``submit_batch`` of 1,000 (jobs/s).
- drain, one worker process per queue ("per-queue", the layout docs/scaling.md recommends) and
  three worker processes each consuming the three queues ("all"): timed from the "go" sent to
  the already-connected processes until every queue's unfinished counter reads 0. Per queue:
  ``N`` / the time its counter reached 0. CPU: the worker processes' and each server's
  (``/proc/<pid>/stat``), in microseconds per job.

The machine's cores bound the totals: three servers and three workers share them. The figures
to read are the ratios and the CPU per job (what a shard costs), not jobs/s on their own.
Results go to ``benchmarks/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import csjd_core
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))
    import csjd_core

import redis  # noqa: E402
from _common import load_test_module, proc_cpu  # noqa: E402

from csjd_core import Job  # noqa: E402
from csjd_core.config import DistributedConfig, RedisConfig  # noqa: E402
from csjd_core.distributed import RedisDistributedDispatcher  # noqa: E402
from csjd_core.worker import run_worker  # noqa: E402

QUEUES = ("b", "default", "a")  # slots 3300, 5718, 15495: one per master of three
TYPE = "bench"
BIG_CAP = 10**9


def config(queues: tuple[str, ...]) -> DistributedConfig:
    return DistributedConfig(queues=queues, max_pending_jobs=BIG_CAP, dedupe_window=0)


# -- the worker child ---------------------------------------------------------------------
def child_main(spec: dict[str, Any]) -> None:
    dispatcher = RedisDistributedDispatcher(
        RedisConfig.from_url(spec["url"]), config(tuple(spec["queues"]))
    )
    dispatcher.register_handler(TYPE, lambda ctx, job: None)
    dispatcher.pending()  # connect before "go"
    print("ready", flush=True)
    sys.stdin.readline()
    run_worker(dispatcher, burst=True, install_signals=False, drain_timeout=30)
    print("RESULT " + json.dumps({"processed": dispatcher.metrics().processed}), flush=True)


class Child:
    def __init__(self, url: str, queues: tuple[str, ...]) -> None:
        spec = json.dumps({"url": url, "queues": queues})
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"worker did not start: {line!r}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        out: dict[str, Any] = {}
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                out = json.loads(line[7:])
        self.proc.wait(60)
        return out


# -- one target ------------------------------------------------------------------------------
class Target:
    """A server or a cluster: its URL, its server processes, a flush."""

    def __init__(self, name: str, url: str, pids: list[int], nodes: list[tuple[str, int]]):
        self.name, self.url, self.pids, self.nodes = name, url, pids, nodes

    def flush(self) -> None:
        for host, port in self.nodes:
            with redis.Redis(host, port) as client:
                client.flushall()

    def unfinished(self, dispatcher: RedisDistributedDispatcher) -> dict[str, int]:
        client = dispatcher.backend.client
        return {q: int(client.get(dispatcher.backend.keys_for(q).pending) or 0) for q in QUEUES}


def enqueue(target: Target, jobs: int, run: int) -> tuple[float, RedisDistributedDispatcher]:
    producer = RedisDistributedDispatcher(RedisConfig.from_url(target.url), config(QUEUES))
    started = time.perf_counter()
    for queue in QUEUES:
        for first in range(0, jobs, 1000):
            producer.submit_batch(
                Job(f"r{run}-{queue}-{i}", TYPE, None, queue=queue)
                for i in range(first, min(jobs, first + 1000))
            )
    return time.perf_counter() - started, producer


def drain(target: Target, jobs: int, layout: str, run: int) -> dict[str, Any]:
    target.flush()
    enqueue_seconds, producer = enqueue(target, jobs, run)
    groups = [(q,) for q in QUEUES] if layout == "per-queue" else [QUEUES] * 3
    children = [Child(target.url, group) for group in groups]
    server_cpu0 = [proc_cpu(pid) for pid in target.pids]
    worker_cpu0 = [proc_cpu(c.proc.pid) for c in children]
    started = time.perf_counter()
    for child in children:
        child.go()
    finished: dict[str, float] = {}
    while len(finished) < len(QUEUES):
        now = time.perf_counter()
        for queue, left in target.unfinished(producer).items():
            if left == 0 and queue not in finished:
                finished[queue] = now - started
        time.sleep(0.005)
    elapsed = max(finished.values())
    worker_cpu = sum(proc_cpu(c.proc.pid) - c0 for c, c0 in zip(children, worker_cpu0, strict=True))
    server_cpu = [proc_cpu(pid) - c0 for pid, c0 in zip(target.pids, server_cpu0, strict=True)]
    processed = sum(child.result().get("processed", 0) for child in children)
    producer.close()
    total = jobs * len(QUEUES)
    assert processed == total, f"{target.name} {layout}: processed {processed} of {total}"
    return {
        "enqueue_jobs_per_s": round(total / enqueue_seconds),
        "jobs_per_s": round(total / elapsed),
        "per_queue_jobs_per_s": {q: round(jobs / t) for q, t in finished.items()},
        "worker_cpu_us_per_job": round(worker_cpu / total * 1e6, 1),
        "server_cpu_us_per_job": [round(c / total * 1e6, 1) for c in server_cpu],
        "server_cpu_share": [round(c / elapsed, 2) for c in server_cpu],
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the runs (lists and dicts figure by figure)."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
        elif isinstance(value, list):
            out[key] = [statistics.median(r[key][i] for r in runs) for i in range(len(value))]
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per queue")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3,000 jobs per queue, one run")
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.quick:
        args.jobs, args.repeat = 3000, 1
    server_module = load_test_module("redis_server")
    cluster_module = load_test_module("redis_cluster")
    binary = server_module.find_server_binary(os.environ.get(server_module.SERVER_ENV))
    with tempfile.TemporaryDirectory(prefix="csjd-bench-cluster-") as tmp:
        server = server_module.RedisServerProcess(binary, Path(tmp) / "single").start()
        cluster = cluster_module.RedisClusterProcess(binary, Path(tmp) / "cluster").start()
        try:
            targets = [
                Target("1 node", server.url, [server.pid], [(server.host, server.port)]),
                Target(
                    "3-master cluster",
                    cluster.url,
                    [m.pid for m in cluster.masters],
                    [(m.host, m.port) for m in cluster.masters],
                ),
            ]
            results: dict[str, dict[str, Any]] = {}
            for layout in ("per-queue", "all"):
                runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
                for run in range(args.repeat):
                    for target in targets:  # interleaved: the same conditions for both
                        runs[target.name].append(drain(target, args.jobs, layout, run))
                for name, figures in runs.items():
                    results[f"{name}, {layout}"] = median_of(figures)
        finally:
            cluster.stop()
            server.stop()
    document = {
        "benchmark": "bench_cluster",
        "jobs_per_queue": args.jobs,
        "queues": list(QUEUES),
        "repeat": args.repeat,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "server": str(server_module.binary_version(binary)),
        "csjd_core": str(Path(csjd_core.__file__).parent),
        "results": results,
    }
    for name, figures in results.items():
        print(f"{name:32} {json.dumps(figures)}")
    out = ROOT / "benchmarks" / "results" / "cluster.json"
    if not args.quick:
        out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"written {out}")


if __name__ == "__main__":
    main()
