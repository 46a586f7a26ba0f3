"""CSJD beside seven Python job queues on one private Redis: drain, enqueue and latency.

Run: ``python benchmarks/peers/run.py [--repeat R] [--only csjd,celery] [--quick] [--jobs N]
[--samples S]``; then ``python benchmarks/peers/plot.py`` draws ``docs/img/peers/*.png``.

Starts a throwaway ``redis-server`` (persistence off, a free port, a temporary directory; the
helper of ``tests/redis_server.py``), runs every scenario on every system round-robin (each
repeat goes through all systems before the next), ``FLUSHALL`` between runs, and writes
``results.json`` beside this file: every run, and the median, min and max of each figure.
The method, the way each system is run and what each one guarantees: README.md beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from bench_redis import load_server_module  # noqa: E402  (tests/redis_server.py, loaded once)

sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from drivers import DRIVERS, Driver  # noqa: E402

DRAINS = {  # scenario: (job kind, worker processes)
    "drain_noop_1p": ("noop", 1),
    "drain_noop_2p": ("noop", 2),
    "drain_incr_1p": ("incr", 1),
    "drain_incr_2p": ("incr", 2),
}
FIGURES = (*DRAINS, "enqueue_single", "enqueue_bulk", "latency_p50_ms", "latency_p99_ms")
#: Exit status when some runs failed (recorded in results.json): not a crash of the harness.
RUNS_FAILED = 3
RATE = 200.0  # jobs/s sent in the latency scenario
WARMUP = 20  # latency jobs run (and discarded) before the measured ones
SLOW_DIVISOR = {"rq": 10, "arq": 5}  # systems that run fewer jobs (README.md says why)
POLL = 0.02
KEYS = ("peers:done", "peers:first", "peers:last", "peers:lat")  # what a warm-up leaves


class RunFailed(Exception):
    """A run that did not finish its jobs in time (reported, never averaged in)."""


# ------------------------------------------------------------------------------ the workers
class Workers:
    """The worker processes of one run, each in its own session (killed as a group)."""

    def __init__(self, driver: Driver, processes: int, logdir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(HERE), PYTHONUNBUFFERED="1")
        if driver.direct_probe:
            env["PEERS_PROBE"] = "direct"
        self.log_path = logdir / f"{driver.name}-{processes}p-{time.time_ns()}.log"
        self._log = self.log_path.open("wb")
        self.procs = [
            subprocess.Popen(
                argv,
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for argv in driver.worker_commands(processes)
        ]

    def alive(self) -> bool:
        """True while any of the started processes runs."""
        return any(proc.poll() is None for proc in self.procs)

    def stop(self) -> None:
        """SIGTERM each process group, SIGKILL what is left after 10 s."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        self._signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        self._log.close()

    def log_tail(self, chars: int = 1500) -> str:
        """The end of the workers' combined output."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def _signal(self, sig: int) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)


@contextlib.contextmanager
def workers(driver: Driver, processes: int, logdir: Path) -> Iterator[Workers]:
    """Run the system's workers for the duration of the block."""
    started = Workers(driver, processes, logdir)
    try:
        yield started
    finally:
        started.stop()


def open_gate(client: redis.Redis, processes: int, timeout: float, running: Workers) -> None:
    """Say go once ``processes`` worker processes wait at the probe's gate (apps/probe.py)."""
    deadline = time.monotonic() + timeout
    while client.hlen("peers:arrived") < processes:
        if not running.alive():
            raise RunFailed(f"workers exited before starting a job:\n{running.log_tail()}")
        if time.monotonic() > deadline:
            raise RunFailed(
                f"fewer than {processes} processes started a job:\n{running.log_tail()}"
            )
        time.sleep(POLL)
    client.set("peers:go", "1")


def wait_done(client: redis.Redis, count: int, timeout: float, running: Workers) -> None:
    """Wait until the probe has counted ``count`` jobs; raise `RunFailed` otherwise."""
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = int(client.get("peers:done") or 0)
        if done >= count:
            time.sleep(0.2)  # let a duplicate delivery show up
            done = int(client.get("peers:done") or 0)
            if done != count:
                raise RunFailed(f"{done} jobs ran, {count} were enqueued")
            return
        if not running.alive():
            raise RunFailed(f"workers exited after {done}/{count} jobs:\n{running.log_tail()}")
        time.sleep(POLL)
    raise RunFailed(f"{done}/{count} jobs after {timeout:.0f} s:\n{running.log_tail()}")


def span(client: redis.Redis) -> float:
    """Seconds from the first job's start (any process) to the last job's end."""
    first = min(float(v) for v in client.hvals("peers:first"))
    last = max(float(v) for v in client.hvals("peers:last"))
    return last - first


# ----------------------------------------------------------------------------- scenarios
class Bench:
    """One benchmark session: the server, the options, and every run's result."""

    def __init__(self, args: argparse.Namespace, client: redis.Redis, logdir: Path) -> None:
        self.args = args
        self.client = client
        self.logdir = logdir
        self.runs: list[dict[str, Any]] = []

    def jobs(self, driver: Driver) -> int:
        """How many jobs a drain or enqueue run of this system uses."""
        return max(1, self.args.jobs // SLOW_DIVISOR.get(driver.name, 1))

    def record(self, system: str, figure: str, repeat: int, **fields: Any) -> None:
        """Keep one run's result and print it."""
        self.runs.append({"system": system, "figure": figure, "repeat": repeat, **fields})
        shown = fields.get("value", fields.get("error", "")).__str__().splitlines()[0]
        print(f"  [{repeat}] {system:9} {figure:16} {shown}", flush=True)

    def attempt(
        self, system: str, figures: tuple[str, ...], repeat: int, run: Callable[[], list[float]]
    ) -> None:
        """Run one measurement; record its figures, or the failure for each of them."""
        self.client.flushall()
        try:
            values = run()
        except (RunFailed, redis.RedisError, OSError, RuntimeError) as exc:
            for figure in figures:
                self.record(system, figure, repeat, error=f"{type(exc).__name__}: {exc}")
        else:
            for figure, value in zip(figures, values, strict=True):
                self.record(system, figure, repeat, value=round(value, 3))
        finally:
            self.client.flushall()

    def preload(self, driver: Driver, kind: str, count: int, bulk: bool) -> float:
        """Enqueue ``count`` jobs with no worker running; return jobs/s."""
        elapsed = driver.send_bulk(kind, count) if bulk else driver.send(kind, count)
        return count / elapsed

    def drain(self, driver: Driver, scenario: str, repeat: int) -> None:
        """Preload N jobs, start the workers, time them through the N jobs.

        The no-op drains' preloads are the enqueue figures: one by one before the 1-process
        drain, with the bulk API (when the system has one) before the 2-process drain.
        """
        kind, processes = DRAINS[scenario]
        count = self.jobs(driver)
        has_bulk = driver.bulk_api is not None
        figures: tuple[str, ...] = (scenario,)
        bulk = has_bulk and scenario != "drain_noop_1p"
        if scenario == "drain_noop_1p":
            figures = ("enqueue_single", scenario)
        elif scenario == "drain_noop_2p" and has_bulk:
            figures = ("enqueue_bulk", scenario)

        def run() -> list[float]:
            enqueued = self.preload(driver, kind, count, bulk)
            with workers(driver, processes, self.logdir) as running:
                open_gate(self.client, processes, self.args.timeout, running)
                wait_done(self.client, count, self.args.timeout, running)
            drained = count / span(self.client)
            return [enqueued, drained] if len(figures) == 2 else [drained]

        self.attempt(driver.name, figures, repeat, run)

    def latency(self, driver: Driver, repeat: int) -> None:
        """One worker process; jobs sent at `RATE`/s carry their enqueue time."""
        samples = max(1, self.args.samples // SLOW_DIVISOR.get(driver.name, 1))

        def run() -> list[float]:
            self.client.set("peers:go", "1")
            with workers(driver, 1, self.logdir) as running:
                driver.send("latency", WARMUP)
                wait_done(self.client, WARMUP, self.args.timeout, running)
                self.client.delete(*KEYS)
                driver.send("latency", samples, rate=RATE)
                wait_done(self.client, samples, self.args.timeout, running)
            lat = sorted(float(v) for v in self.client.lrange("peers:lat", 0, -1))
            return [1000 * percentile(lat, 50), 1000 * percentile(lat, 99)]

        self.attempt(driver.name, ("latency_p50_ms", "latency_p99_ms"), repeat, run)


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of an ascending list."""
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ------------------------------------------------------------------------------- reporting
def summarize(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    """``{system: {figure: {median, min, max, runs, failed}}}`` over the successful runs."""
    summary: dict[str, Any] = {}
    for system in systems:
        for figure in FIGURES:
            mine = [r for r in runs if r["system"] == system and r["figure"] == figure]
            if not mine:
                continue
            values = [r["value"] for r in mine if "value" in r]
            entry: dict[str, Any] = {"runs": len(mine), "failed": len(mine) - len(values)}
            if values:
                entry |= {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
            summary.setdefault(system, {})[figure] = entry
    return summary


def table(summary: dict[str, Any]) -> str:
    """A markdown table of the medians (jobs/s; latencies in ms)."""
    head = "| system | " + " | ".join(FIGURES) + " |"
    lines = [head, "|" + " --- |" * (len(FIGURES) + 1)]
    for system, figures in summary.items():
        cells = []
        for figure in FIGURES:
            entry = figures.get(figure)
            if entry is None:
                cells.append("none" if figure == "enqueue_bulk" else "")
            elif "median" not in entry:
                cells.append("failed")
            else:
                digits = 1 if figure.startswith("latency") else 0
                cells.append(f"{entry['median']:,.{digits}f}")
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions(systems: list[str]) -> dict[str, str]:
    """Installed versions of the systems and of the shared clients."""
    names = [DRIVERS[s].distribution for s in systems]
    if "taskiq" in systems:
        names.append("taskiq-redis")
    if "celery" in systems:
        names.append("kombu")
    return {n: importlib.metadata.version(n) for n in [*names, "redis", "hiredis"]}


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated systems (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all systems")
    parser.add_argument("--jobs", type=int, default=5_000, help="jobs per drain/enqueue run")
    parser.add_argument("--samples", type=int, default=2_000, help="latency samples per run")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take")
    parser.add_argument("--quick", action="store_true", help="--jobs 1000 --samples 200")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.samples = 1_000, 200
    args.systems = args.only.split(",") if args.only else list(DRIVERS)
    unknown = set(args.systems) - set(DRIVERS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(DRIVERS)}")
    return args


def run_all(bench: Bench, drivers: list[Driver]) -> None:
    """Every scenario, each round-robin over the systems, `--repeat` times."""
    for repeat in range(1, bench.args.repeat + 1):
        for scenario in DRAINS:
            print(f"repeat {repeat}: {scenario}", flush=True)
            for driver in drivers:
                bench.drain(driver, scenario, repeat)
        print(f"repeat {repeat}: latency", flush=True)
        for driver in drivers:
            bench.latency(driver, repeat)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results."""
    args = parse_args(argv)
    server_module = load_server_module()
    with tempfile.TemporaryDirectory(prefix="csjd-peers-") as tmp:
        server = server_module.RedisServerProcess(
            server_module.find_server_binary("redis"), Path(tmp) / "redis"
        ).start()
        try:
            os.environ["PEERS_REDIS_URL"] = server.url
            client = redis.Redis.from_url(server.url)
            bench = Bench(args, client, Path(tmp))
            started = time.monotonic()
            run_all(bench, [DRIVERS[name]() for name in args.systems])
            elapsed = time.monotonic() - started
            server_version = str(server.version())
        finally:
            server.stop()
    summary = summarize(bench.runs, args.systems)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "server": server_version,
        "versions": versions(args.systems),
        "bulk_api": {s: DRIVERS[s].bulk_api for s in args.systems},
        "jobs": {s: bench.jobs(DRIVERS[s]()) for s in args.systems},
        "samples": {s: max(1, args.samples // SLOW_DIVISOR.get(s, 1)) for s in args.systems},
        "rate": RATE,
        "repeat": args.repeat,
        "seconds": round(elapsed),
    }
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": bench.runs},
                                   indent=1) + "\n")  # fmt: skip
    print(f"\n{table(summary)}\n\nwrote {args.out} ({elapsed:.0f} s)")
    failed = [r for r in bench.runs if "error" in r]
    return RUNS_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
