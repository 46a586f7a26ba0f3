"""Distributed mode (Redis Streams) figures, each beside a hand-written redis-py Streams loop.

Run: ``python benchmarks/bench_redis.py [--jobs N] [--quick] [--repeat R] [--only a,b] [--sweep]``

Starts its own throwaway ``redis-server`` (persistence off, a free port, a temporary directory;
never 127.0.0.1:6379) and measures, against that server in the same run:

- enqueue: ``submit`` one by one and ``submit_batch`` of 100 / 1000, in jobs/s; the baseline is
  one ``XADD`` per call and ``XADD`` pipelined 1000 at a time (same JSON body).
- drain: N queued jobs run by one and by two worker processes (``run_worker(burst=True)``),
  timed from the "go" sent to the already-imported processes until the queue's unfinished
  counter reads 0; with a no-op handler and with a handler doing one Redis ``INCR`` (its own
  client). Baseline: ``XREADGROUP COUNT 100`` + one ``XACK`` per batch, done when the group has
  read N entries and none is pending. Also worker CPU and redis-server CPU per job (from
  /proc/<pid>/stat) and server commands per job (``INFO commandstats``).
- latency: enqueue-to-start p50/p99 at a steady 200 jobs/s over ``--latency-samples`` jobs
  (default 20,000; the producer stamps ``time.time()``, the handler records ``time.time() -
  ts``), no-op and INCR handler; baseline: ``XADD`` per job, ``XREADGROUP BLOCK`` loop.
- idle: CPU% of a core used by a worker process idle on an empty queue, and Redis commands/s it
  sends.

Each enqueue and drain figure is the median of ``--repeat`` runs, CSJD's and the baseline's
interleaved; each latency figure is one run of ``--latency-samples`` jobs. The table ends with
the targets (see ``TARGETS``).

``--sweep`` adds a drain sweep over ``DistributedConfig(workers=..., prefetch=...)``.
``--profile DIR`` writes py-spy (if installed) collapsed stacks and cProfile dumps of the
drain worker and of the submit path, with a short summary.

The package measured is whichever ``csjd_core`` imports first (put a private copy first on
PYTHONPATH to measure a change); the header prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import json
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
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
from csjd_core.backends.redis import QueueKeys  # noqa: E402
from csjd_core.config import DistributedConfig, RedisConfig  # noqa: E402
from csjd_core.distributed import RedisDistributedDispatcher  # noqa: E402
from csjd_core.worker import run_worker  # noqa: E402

GROUP = "bench-group"
DEFAULT = "default"  # a workers/prefetch value meaning "DistributedConfig's default"
TYPE = "bench"
BIG_CAP = 10**9

#: The targets (docs/performance.md): CPU per job, and ratios or differences to the baseline of
#: the same run — figures that the machine's other load moves much less than jobs/s. They are
#: measured, never asserted. With --quick (3,000 jobs, 10 ms clock ticks) the CPU figures are
#: too coarse to judge.
TARGETS = {
    "enqueue_single_ratio": 0.9,  # submit one by one / one XADD per call
    "latency_p99_over_raw_ms": 0.3,  # p99 enqueue-to-start minus the raw loop's p99
    "worker_cpu_us": 15.0,  # per no-op job, 1 worker process, defaults
    "server_cpu_us": 12.0,  # redis-server CPU per no-op job, the same drain
    "idle_cpu_pct": 1.0,
}


# ------------------------------------------------------------------------------ helpers
def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """``{command: (calls, usec)}`` from ``INFO commandstats``."""
    out = {}
    for key, value in client.info("commandstats").items():
        out[key.removeprefix("cmdstat_")] = (int(value["calls"]), int(value["usec"]))
    return out


def stats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    out = {}
    for key, (calls, usec) in after.items():
        c0, u0 = before.get(key, (0, 0))
        if calls - c0:
            out[key] = (calls - c0, usec - u0)
    return out


# Commands each side's client sends itself (the rest of commandstats ran inside Lua scripts).
# The handler's INCR and the parent's polls are left out of "round trips per job".
TOP_LEVEL_CSJD = {
    "evalsha",
    "eval",
    "script|load",
    "xreadgroup",
    "get",
    "set",
    "xgroup|create",
    "xinfo|consumers",
    "exists",
    "del",
    "ping",
    "hello",
    "select",
    "client|setinfo",
}
TOP_LEVEL_BASE = {"xreadgroup", "xack", "xadd", "ping", "hello", "select", "client|setinfo"}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def body(payload: Any) -> str:
    """The JSON the baseline puts in its ``d`` field (the same shape CSJD writes)."""
    return json.dumps(
        {"type": TYPE, "payload": payload, "max_attempts": 3, "timeout": None, "queue": None},
        separators=(",", ":"),
    )


# ------------------------------------------------------------------------------ children
class Child:
    """A worker subprocess: imported and connected, waiting for "go" on stdin."""

    def __init__(self, spec: dict[str, Any], logdir: Path, profile: str | None = None) -> None:
        self.spec = spec
        self.log_path = logdir / f"child-{spec['role']}-{os.getpid()}-{id(self)}.log"
        self._log = self.log_path.open("w")
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
        env = None
        if spec.get("pythonpath"):  # measure another copy of csjd_core (A/B experiments)
            env = dict(os.environ, PYTHONPATH=spec["pythonpath"])
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            env=env,
        )
        self.spy: subprocess.Popen[bytes] | None = None
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"child {spec['role']} did not start: {line!r}\n{self.log()}")
        if profile:
            spy = shutil.which("py-spy")
            if spy:
                self.spy = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--pid",
                        str(self.proc.pid),
                        "--rate",
                        "500",
                        "--threads",
                        "--format",
                        "raw",
                        "--output",
                        profile,
                        "--nonblocking",
                        "--gil",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)  # let py-spy attach

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            out = {}
            for line in self.proc.stdout:
                if line.startswith("RESULT "):
                    out = json.loads(line[7:])
            self.proc.wait()
        finally:
            timer.cancel()
            self._log.close()
        if self.spy is not None:
            self.spy.wait(timeout=30)
        if self.proc.returncode != 0 or not out:
            raise RuntimeError(
                f"child {self.spec['role']} failed rc={self.proc.returncode}:\n{self.log()}"
            )
        return out

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""


def child_main(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    role = spec["role"]
    url = spec["url"]
    if spec.get("switch_interval"):  # experiment knob: the GIL switch interval of the worker
        sys.setswitchinterval(spec["switch_interval"])
    side = redis.Redis.from_url(url)  # the handler's own client (INCR handler)
    latencies: list[float] = []
    incr = side.incr

    # CSJD calls handler(ctx, job); the baseline calls handler(None, payload).
    csjd = role == "csjd"
    if spec.get("latency"):

        def handler(ctx: Any, job: Any) -> None:
            payload = job.payload if csjd else job
            if not payload.get("w"):
                latencies.append(time.time() - payload["ts"])
            if spec["handler"] == "incr":
                incr("bench:incr")
    elif spec["handler"] == "incr":

        def handler(ctx: Any, job: Any) -> None:
            incr("bench:incr")
    else:

        def handler(ctx: Any, job: Any) -> None:
            return None

    if spec.get("cprofile"):
        install_thread_profiler()
    if role == "csjd":
        csjd_child(spec, handler, latencies)
    else:
        baseline_child(spec, handler, latencies)


_PROFILERS: list[Any] = []


def install_thread_profiler() -> None:
    """cProfile every thread started from now on (cProfile alone sees only its own thread)."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        _PROFILERS.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]


def dump_thread_profiles(path: str) -> None:
    if not _PROFILERS:
        return
    stats = pstats.Stats(_PROFILERS[0])
    for prof in _PROFILERS[1:]:
        stats.add(prof)
    stats.dump_stats(path)


def csjd_child(spec: dict[str, Any], handler: Any, latencies: list[float]) -> None:
    tuning = {k: spec[k] for k in ("workers", "prefetch") if spec.get(k, DEFAULT) != DEFAULT}
    config = DistributedConfig(
        stream=spec["stream"], group=GROUP, max_pending_jobs=BIG_CAP, **tuning
    )
    dispatcher = RedisDistributedDispatcher(RedisConfig(url=spec["url"]), config)
    dispatcher.register_handler(TYPE, handler)
    dispatcher.pending()  # connect and open before "go"
    print("ready", flush=True)
    sys.stdin.readline()  # go
    cpu0 = time.process_time()
    if spec["mode"] == "drain":
        run_worker(dispatcher, burst=True, install_signals=False, drain_timeout=30)
    else:  # latency / idle: run until "stop"
        dispatcher.start()
        sys.stdin.readline()
        dispatcher.stop(30)
    cpu = time.process_time() - cpu0
    if spec.get("cprofile"):
        dump_thread_profiles(spec["cprofile"])
    m = dispatcher.metrics()
    backend = dispatcher.backend
    print(
        "RESULT "
        + json.dumps(
            {
                "processed": m.processed,
                "succeeded": m.succeeded,
                "cpu": cpu,
                "latencies": latencies,
                "read_calls": backend.read_calls,
            }
        ),
        flush=True,
    )


def baseline_child(spec: dict[str, Any], handler: Any, latencies: list[float]) -> None:
    """The minimal hand-written Streams consumer: XREADGROUP COUNT 100, one XACK per batch."""
    r = redis.Redis.from_url(spec["url"], socket_timeout=10)
    stream = spec["stream"]
    consumer = f"c{os.getpid()}"
    r.ping()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    stop = threading.Event()
    if spec["mode"] != "drain":
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    cpu0 = time.process_time()
    done = reads = 0
    loads = json.loads
    while not stop.is_set():
        reply = r.xreadgroup(GROUP, consumer, {stream: ">"}, count=100, block=100)
        reads += 1
        if not reply:
            if spec["mode"] == "drain":
                break
            continue
        ids = []
        for entry_id, fields in reply[0][1]:
            handler(None, loads(fields[b"d"])["payload"])
            ids.append(entry_id)
        r.xack(stream, GROUP, *ids)
        done += len(ids)
    cpu = time.process_time() - cpu0
    print(
        "RESULT "
        + json.dumps({"processed": done, "cpu": cpu, "latencies": latencies, "read_calls": reads}),
        flush=True,
    )


# ------------------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, args: argparse.Namespace, url: str, server_pid: int, tmp: Path) -> None:
        self.args = args
        self.url = url
        self.server_pid = server_pid
        self.tmp = tmp
        self.r = redis.Redis.from_url(url)
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.seq = 0

    def fresh(self, tag: str) -> str:
        self.r.flushall()
        self.seq += 1
        return f"b{self.seq}{tag}"

    def producer(self, stream: str) -> RedisDistributedDispatcher:
        return RedisDistributedDispatcher(
            RedisConfig(url=self.url),
            DistributedConfig(stream=stream, group=GROUP, max_pending_jobs=BIG_CAP),
        )

    # -- enqueue --------------------------------------------------------------------------
    def enqueue(self) -> None:
        n = self.args.jobs
        rep = self.args.repeat
        payload = {"n": 1, "user": "alice"}

        def single() -> float:
            stream = self.fresh("es")
            d = self.producer(stream)
            jobs = [Job(f"j{i}", TYPE, payload) for i in range(n)]
            d.submit(Job("warm", TYPE, payload))
            submit = d.submit
            t0 = time.perf_counter()
            for job in jobs:
                submit(job)
            dt = time.perf_counter() - t0
            assert int(self.r.get(QueueKeys(stream, "default").pending)) == n + 1
            d.close()
            return n / dt

        def batch(size: int) -> float:
            stream = self.fresh(f"eb{size}")
            d = self.producer(stream)
            jobs = [Job(f"j{i}", TYPE, payload) for i in range(n)]
            d.submit(Job("warm", TYPE, payload))
            t0 = time.perf_counter()
            for i in range(0, n, size):
                d.submit_batch(jobs[i : i + size])
            dt = time.perf_counter() - t0
            d.close()
            return n / dt

        def base_single() -> float:
            stream = self.fresh("bs")
            r = redis.Redis.from_url(self.url)
            r.xadd(stream, {"d": "warm"})
            xadd = r.xadd
            t0 = time.perf_counter()
            for i in range(n):
                xadd(stream, {"id": f"j{i}", "d": body(payload)})
            dt = time.perf_counter() - t0
            return n / dt

        def base_pipe(size: int = 1000) -> float:
            stream = self.fresh("bp")
            r = redis.Redis.from_url(self.url)
            r.xadd(stream, {"d": "warm"})
            t0 = time.perf_counter()
            for i in range(0, n, size):
                pipe = r.pipeline(transaction=False)
                for j in range(i, min(n, i + size)):
                    pipe.xadd(stream, {"id": f"j{j}", "d": body(payload)})
                pipe.execute()
            dt = time.perf_counter() - t0
            return n / dt

        b1, bp, mine1, mine100, mine1000 = interleaved(
            [base_single, base_pipe, single, lambda: batch(100), lambda: batch(1000)], rep
        )
        self.row(
            "enqueue",
            "submit one by one",
            mine1,
            b1,
            "XADD per call",
            target=TARGETS["enqueue_single_ratio"] * b1,
        )
        self.row(
            "enqueue",
            "submit_batch(100)",
            mine100,
            bp,
            "pipelined XADD x1000",
        )
        self.row(
            "enqueue",
            "submit_batch(1000)",
            mine1000,
            bp,
            "pipelined XADD x1000",
        )

    # -- drain ----------------------------------------------------------------------------
    def preload(self, stream: str, n: int, csjd: bool) -> None:
        payload = {"n": 1, "user": "alice"}
        if csjd:
            d = self.producer(stream)
            for i in range(0, n, 1000):
                d.submit_batch([Job(f"j{j}", TYPE, payload) for j in range(i, min(n, i + 1000))])
            d.close()
        else:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            for i in range(0, n, 1000):
                pipe = self.r.pipeline(transaction=False)
                for j in range(i, min(n, i + 1000)):
                    pipe.xadd(stream, {"id": f"j{j}", "d": body(payload)})
                pipe.execute()

    def drain_once(
        self,
        csjd: bool,
        procs: int,
        handler: str,
        workers: Any = DEFAULT,
        prefetch: Any = DEFAULT,
        profile: str | None = None,
        pythonpath: str | None = None,
        switch_interval: float | None = None,
    ) -> dict[str, Any]:
        n = self.args.jobs
        stream = self.fresh("d")
        self.preload(stream, n, csjd)
        spec = {
            "role": "csjd" if csjd else "baseline",
            "mode": "drain",
            "url": self.url,
            "stream": stream,
            "handler": handler,
            "workers": workers,
            "prefetch": prefetch,
            "pythonpath": pythonpath,
            "switch_interval": switch_interval,
        }
        children = []
        for i in range(procs):
            s = dict(spec)
            spy = None
            if profile:
                s["cprofile"] = profile + f".{i}.cprof" if self.args.cprofile else None
                spy = profile + f".{i}.pyspy.txt"
            children.append(Child(s, self.tmp, spy))
        if csjd:
            key = QueueKeys(stream, "default").pending
            get = self.r.get

            def done() -> bool:
                return int(get(key) or 0) == 0
        else:

            def done() -> bool:
                info = self.r.xinfo_groups(stream)[0]
                return int(info["pending"]) == 0 and int(info.get("entries-read") or 0) >= n

        stats0 = commandstats(self.r)
        scpu0 = proc_cpu(self.server_pid)
        wcpu0 = [c.cpu() for c in children]
        t0 = time.perf_counter()
        for c in children:
            c.send("go")
        polls = 0
        deadline = t0 + max(120.0, n / 200)
        while not done():
            polls += 1
            if time.perf_counter() > deadline:
                raise RuntimeError("drain did not finish: " + children[0].log())
            time.sleep(0.002)
        dt = time.perf_counter() - t0
        wcpu = sum(c.cpu() - c0 for c, c0 in zip(children, wcpu0, strict=True))
        scpu = proc_cpu(self.server_pid) - scpu0
        stats = stats_delta(stats0, commandstats(self.r))
        results = [c.result() for c in children]
        processed = sum(r["processed"] for r in results)
        if processed < n:
            raise RuntimeError(f"only {processed}/{n} processed")
        top_level = TOP_LEVEL_CSJD if csjd else TOP_LEVEL_BASE
        # The parent polled GET (csjd) or XINFO GROUPS (baseline) `polls + 1` times.
        if csjd:
            calls, usec = stats.get("get", (0, 0))
            stats["get"] = (calls - polls - 1, usec)
        inner = {
            k: v
            for k, v in stats.items()
            if k not in top_level and k not in ("info", "xinfo|groups", "incr")
        }
        top_calls = sum(c for k, (c, _) in stats.items() if k in top_level)
        return {
            "rate": n / dt,
            "seconds": dt,
            "worker_cpu_us": wcpu / n * 1e6,
            "server_cpu_us": scpu / n * 1e6,
            "roundtrips_per_job": top_calls / n,
            "inner_cmds_per_job": sum(c for c, _ in inner.values()) / n,
            "lua_us_per_job": sum(u for k, (_, u) in stats.items() if k in ("evalsha", "eval")) / n,
            "commands": dict(sorted(stats.items(), key=lambda kv: -kv[1][0])),
            "read_calls": sum(r["read_calls"] for r in results),
            "processed": processed,
        }

    def drain(self) -> None:
        rep = self.args.repeat
        for handler in ("noop", "incr"):
            for procs in (1, 2):
                base, mine = interleaved(
                    [
                        lambda p=procs, h=handler: self.drain_once(False, p, h),
                        lambda p=procs, h=handler: self.drain_once(True, p, h),
                    ],
                    rep,
                )
                self.row(
                    "drain",
                    f"{procs} worker proc, {handler}",
                    mine["rate"],
                    base["rate"],
                    f"XREADGROUP 100 + XACK, {procs} proc",
                    detail=mine,
                    base_detail=base,
                )

    def sweep(self) -> None:
        rep = self.args.repeat
        (base,) = interleaved([lambda: self.drain_once(False, 1, "noop")], rep)
        for workers, prefetch in (
            (8, None),
            (8, 8),
            (8, 32),
            (8, 64),
            (8, 128),
            (8, 256),
            (8, 1000),
            (1, None),
            (4, None),
            (16, None),
            (32, None),
            (2, 128),
            (4, 128),
            (16, 128),
            (32, 128),
        ):
            (mine,) = interleaved(
                [lambda w=workers, p=prefetch: self.drain_once(True, 1, "noop", w, p)], rep
            )
            self.row(
                "sweep",
                f"1 proc noop workers={workers} prefetch={prefetch}",
                mine["rate"],
                base["rate"],
                "XREADGROUP 100 + XACK, 1 proc",
                detail=mine,
            )

    # -- latency --------------------------------------------------------------------------
    def latency_once(
        self, csjd: bool, handler: str, pythonpath: str | None = None, prefetch: Any = DEFAULT
    ) -> dict[str, Any]:
        rate, seconds_ = 200, self.args.latency_samples / 200
        stream = self.fresh("l")
        if not csjd:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        spec = {
            "role": "csjd" if csjd else "baseline",
            "mode": "latency",
            "url": self.url,
            "stream": stream,
            "handler": handler,
            "workers": DEFAULT,
            "prefetch": prefetch,
            "latency": True,
            "pythonpath": pythonpath,
        }
        child = Child(spec, self.tmp)
        child.send("go")
        time.sleep(0.3)  # consumer group made, threads started
        if csjd:
            d = self.producer(stream)
            d.pending()

            def send(i: int, warm: bool) -> None:
                p = {"ts": time.time()}
                if warm:
                    p["w"] = 1
                d.submit(Job(f"l{i}", TYPE, p))
        else:
            r = redis.Redis.from_url(self.url)
            xadd = r.xadd

            def send(i: int, warm: bool) -> None:
                p = {"ts": time.time()}
                if warm:
                    p["w"] = 1
                xadd(stream, {"id": f"l{i}", "d": body(p)})

        total = int(rate * (seconds_ + 0.5))
        warm_n = rate // 2
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            send(i, i < warm_n)
        time.sleep(0.3)
        child.send("stop")
        out = child.result()
        lat = out["latencies"]
        if len(lat) < total - warm_n:
            raise RuntimeError(f"latency: {len(lat)} of {total - warm_n} jobs ran")
        return {
            "p50": percentile(lat, 50) * 1000,
            "p99": percentile(lat, 99) * 1000,
            "max": max(lat) * 1000,
            "n": len(lat),
        }

    def latency(self) -> None:
        for handler in ("noop", "incr"):
            base = self.latency_once(False, handler)
            mine = self.latency_once(True, handler)
            self.rows.append(
                {
                    "section": "latency",
                    "name": f"200/s {handler} p50 ms",
                    "value": mine["p50"],
                    "base": base["p50"],
                    "unit": "ms",
                    "base_name": "XADD + XREADGROUP BLOCK",
                    "target": None,
                }
            )
            self.rows.append(
                {
                    "section": "latency",
                    "name": f"200/s {handler} p99 ms",
                    "value": mine["p99"],
                    "base": base["p99"],
                    "unit": "ms",
                    "base_name": "XADD + XREADGROUP BLOCK",
                    "target": base["p99"] + TARGETS["latency_p99_over_raw_ms"],
                    "lower_better": True,
                    "detail": {"csjd": mine, "baseline": base},
                }
            )

    # -- idle -----------------------------------------------------------------------------
    def idle_once(self, csjd: bool) -> tuple[float, float]:
        stream = self.fresh("i")
        if not csjd:
            self.r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        spec = {
            "role": "csjd" if csjd else "baseline",
            "mode": "idle",
            "url": self.url,
            "stream": stream,
            "handler": "noop",
            "workers": DEFAULT,
            "prefetch": DEFAULT,
        }
        child = Child(spec, self.tmp)
        child.send("go")
        time.sleep(1.0)
        c0 = child.cpu()
        s0 = commandstats(self.r)
        t0 = time.perf_counter()
        time.sleep(self.args.idle_seconds)
        c1 = child.cpu()
        dt = time.perf_counter() - t0
        delta = stats_delta(s0, commandstats(self.r))
        s1 = sum(c for k, (c, _) in delta.items() if k != "info")
        self.extra.setdefault("idle_commands", {})["csjd" if csjd else "baseline"] = delta
        child.send("stop")
        child.result()
        return (c1 - c0) / dt * 100, s1 / dt

    def idle(self) -> None:
        base_cpu, base_cmds = self.idle_once(False)
        cpu, cmds = self.idle_once(True)
        self.rows.append(
            {
                "section": "idle",
                "name": "idle worker CPU % of a core",
                "value": cpu,
                "base": base_cpu,
                "unit": "%",
                "base_name": "XREADGROUP BLOCK 100 loop",
                "target": TARGETS["idle_cpu_pct"],
                "lower_better": True,
            }
        )
        self.rows.append(
            {
                "section": "idle",
                "name": "idle worker Redis cmds/s",
                "value": cmds,
                "base": base_cmds,
                "unit": "/s",
                "base_name": "XREADGROUP BLOCK 100 loop",
                "target": None,
                "lower_better": True,
            }
        )

    # -- profile --------------------------------------------------------------------------
    def profile(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        out = self.drain_once(True, 1, "noop", profile=str(directory / "drain"))
        self.extra["profile_drain"] = {k: v for k, v in out.items() if k != "commands"}
        # submit path, in this process
        stream = self.fresh("ps")
        d = self.producer(stream)
        jobs = [Job(f"j{i}", TYPE, {"n": 1, "user": "alice"}) for i in range(self.args.jobs)]
        d.submit(Job("warm", TYPE, None))
        prof = cProfile.Profile()
        prof.enable()
        for job in jobs:
            d.submit(job)
        prof.disable()
        prof.dump_stats(str(directory / "submit.cprof"))
        with open(directory / "submit.txt", "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(30)
        spy = directory / "drain.0.pyspy.txt"
        if spy.exists():
            print(summarise_pyspy(spy), file=sys.stderr)
        print(f"profiles written to {directory}", file=sys.stderr)

    # -- output ---------------------------------------------------------------------------
    def row(
        self,
        section: str,
        name: str,
        value: float,
        base: float,
        base_name: str,
        *,
        target: float | None = None,
        detail: dict[str, Any] | None = None,
        base_detail: dict[str, Any] | None = None,
    ) -> None:
        self.rows.append(
            {
                "section": section,
                "name": name,
                "value": value,
                "base": base,
                "unit": "jobs/s",
                "base_name": base_name,
                "target": target,
                "detail": detail,
                "base_detail": base_detail,
            }
        )
        print(
            f"  {section:8} {name:44} {value:>11,.0f}  base {base:>11,.0f}",
            file=sys.stderr,
            flush=True,
        )

    def table(self) -> str:
        lines = [
            f"{'section':8} {'measure':44} {'CSJD':>11} {'baseline':>11} {'ratio':>6} "
            f"{'target':>9} {'':4}  baseline is"
        ]
        for row in self.rows:
            value, base = row["value"], row["base"]
            ratio = value / base if base else float("nan")
            target = row.get("target")
            verdict = ""
            if target is not None:
                ok = value <= target if row.get("lower_better") else value >= target
                verdict = "MET" if ok else "MISS"
            fmt = "{:>11,.0f}" if row["unit"] in ("jobs/s", "/s") else "{:>11.2f}"
            tfmt = (
                ""
                if target is None
                else (f"{target:>9,.0f}" if target >= 100 else f"{target:>9.2f}")
            )
            lines.append(
                f"{row['section']:8} {row['name']:44} {fmt.format(value)} "
                f"{fmt.format(base)} {ratio:>6.2f} {tfmt:>9} {verdict:4}  "
                f"{row['base_name']}"
            )
        details = [r for r in self.rows if r["section"] in ("drain", "sweep") and r.get("detail")]
        if details:
            lines.append("")
            lines.append(
                f"{'drain detail':54} {'s':>6} {'wCPU us/job':>11} "
                f"{'rCPU us/job':>11} {'rt/job':>7} {'inner/job':>9} "
                f"{'lua us/job':>10} {'reads':>7}"
            )
            for r in details:
                for label, d in (("csjd", r["detail"]), ("base", r.get("base_detail"))):
                    if not d:
                        continue
                    lines.append(
                        f"{(label + ' ' + r['name'])[:54]:54} {d['seconds']:>6.2f} "
                        f"{d['worker_cpu_us']:>11.1f} {d['server_cpu_us']:>11.1f} "
                        f"{d['roundtrips_per_job']:>7.3f} "
                        f"{d['inner_cmds_per_job']:>9.2f} {d['lua_us_per_job']:>10.1f} "
                        f"{d['read_calls']:>7}"
                    )
        cpu = [r for r in self.rows if r["section"] == "drain" and r["name"].endswith("proc, noop")]
        if cpu:
            lines.append("")
            lines.append("CPU per no-op job (defaults), against the targets")
            for r in cpu:
                for field, label in (("worker_cpu_us", "worker"), ("server_cpu_us", "server")):
                    value, bound = r["detail"][field], TARGETS[field]
                    verdict = "MET" if value <= bound else "MISS"
                    lines.append(
                        f"  {r['name']:28} {label:7} {value:>6.1f} µs  (target <= {bound:.0f}) "
                        f"{verdict}   raw loop {r['base_detail'][field]:.1f} µs"
                    )
        return "\n".join(lines)


def interleaved(fns: list[Any], repeat: int) -> list[Any]:
    """Run every function ``repeat`` times, round-robin (the machine's changing load falls on
    each alike); per function, the run with the median rate (a drain's dict gets every rate)."""
    runs: list[list[Any]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            runs[i].append(fn())
    out = []
    for results in runs:

        def rate(result: Any) -> float:
            return float(result["rate"] if isinstance(result, dict) else result)

        median = sorted(results, key=rate)[(len(results) - 1) // 2]
        if isinstance(median, dict):
            median["all_rates"] = [round(rate(r)) for r in results]
        out.append(median)
    return out


def summarise_pyspy(path: Path, top: int = 30) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    selfc: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        selfc[frames[-1]] = selfc.get(frames[-1], 0) + n
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
    out = [f"py-spy {path.name}: {total} samples"]
    out.append("  self%  function")
    for name, n in sorted(selfc.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total * 100:5.1f}  {name}")
    out.append("  incl%  function")
    for name, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {n / total * 100:5.1f}  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs per enqueue/drain run")
    parser.add_argument("--quick", action="store_true", help="small N, one repeat, short runs")
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per figure, interleaved (median kept)"
    )
    parser.add_argument(
        "--only",
        default="enqueue,drain,latency,idle",
        help="comma list of: enqueue, drain, latency, idle, sweep",
    )
    parser.add_argument("--sweep", action="store_true", help="add the workers/prefetch sweep")
    parser.add_argument(
        "--latency-samples",
        type=int,
        default=None,
        help="jobs timed per latency figure, at 200/s (default 20,000: 100 s each)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write profiles to DIR")
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="with --profile: also cProfile every worker thread (slow)",
    )
    parser.add_argument("--server", default="/usr/bin/redis-server")
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    args.jobs = args.jobs or (3_000 if args.quick else 20_000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.latency_samples = args.latency_samples or (400 if args.quick else 20_000)
    args.idle_seconds = 2.0 if args.quick else 5.0
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if args.sweep and "sweep" not in sections:
        sections.append("sweep")

    server_mod = load_test_module("redis_server")
    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-redis-"))
    server = server_mod.RedisServerProcess(args.server, tmp / "redis")
    server.start()
    try:
        defaults = DistributedConfig()
        print(
            f"DistributedConfig defaults: workers={defaults.workers} prefetch={defaults.prefetch}",
            file=sys.stderr,
        )
        print(
            f"csjd_core: {Path(csjd_core.__file__).parent}  redis-py {redis.__version__}  "
            f"hiredis {'yes' if _has_hiredis() else 'no'}  server {server.version()} "
            f"at {server.url}  jobs={args.jobs} repeat={args.repeat}  cpus={os.cpu_count()}",
            file=sys.stderr,
            flush=True,
        )
        bench = Bench(args, server.url, server.pid, tmp)
        for section in sections:
            getattr(bench, section)()
        if args.profile is not None:
            bench.profile(args.profile)
        print(bench.table())
        if args.json is not None:
            args.json.write_text(
                json.dumps({"rows": bench.rows, "extra": bench.extra}, indent=1, default=str)
            )
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)


def _has_hiredis() -> bool:
    return importlib.util.find_spec("hiredis") is not None


if __name__ == "__main__":
    main()
