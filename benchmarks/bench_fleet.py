"""Fleet maintenance: Redis commands per second against the number of live consumers.

Run: ``python benchmarks/bench_fleet.py [--consumers 20,50,100,200] [--scenarios idle,busy]
[--window S] [--procs P] [--quick] [--json PATH] [--record LABEL]``

For each number of consumers N, a fresh throwaway ``redis-server`` (persistence off, a free port,
a temporary directory; never 127.0.0.1:6379) and N real consumers: `RedisDistributedDispatcher`
instances, each with its own reader and maintenance threads and connections, spread over
``--procs`` child processes (2 cores: hundreds of processes would measure the scheduler, not
Redis). Time is compressed: ``claim_interval`` and ``heartbeat_interval`` 1 s (the defaults are
5 s), so consumer collection runs every 10 s. After a warm-up of one collection period the
server's ``INFO commandstats`` is read twice, ``--window`` seconds apart; the deltas are the
figures.

Scenarios:

- ``idle``: ``workers=1``, no jobs: what an idle fleet costs Redis.
- ``busy``: ``workers=2`` and N jobs that run until the end (their leases renewed), so the
  group's pending list holds N entries and most consumers have an idle worker: the reclaim
  scan walks the whole pending list (``XAUTOCLAIM`` scans ``COUNT * 10`` entries per call).

Figures, per N: ``all`` = every command Redis ran (top-level and inside scripts, the
benchmark's own ``INFO`` left out); ``maintenance`` = the commands of the maintenance thread
that can be told apart in ``commandstats``: ``SET`` (heartbeats, the maintainer election),
``EXISTS`` and ``XINFO CONSUMERS`` (consumer collection), ``XGROUP DELCONSUMER``
(delete_consumer.lua), ``XAUTOCLAIM`` (one per reclaim.lua call) and ``ZRANGEBYSCORE`` (one per
promote.lua call). Lease renewals (renew.lua, O(entries held) per consumer) run commands other
scripts run too: they are in ``all`` only. Linear cost means a constant figure per consumer.

``--record LABEL`` stores the run under LABEL in ``benchmarks/results/fleet.json`` (``before``:
the code on main, measured by putting a copy of it first on PYTHONPATH; ``after``: this
branch). The package measured is whichever ``csjd_core`` imports first; the header prints its
path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "fleet.json"
try:
    import csjd_core
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))
    import csjd_core

import redis  # noqa: E402
from _common import load_test_module  # noqa: E402

from csjd_core import Job  # noqa: E402
from csjd_core.config import DistributedConfig, RedisConfig  # noqa: E402
from csjd_core.distributed import RedisDistributedDispatcher  # noqa: E402

TYPE = "hold"
GROUP = "csjd-workers"
STREAM = "csjd:jobs:{default}"
#: The maintenance thread's commands that commandstats can attribute (see the module doc).
MAINTENANCE = (
    "set",
    "exists",
    "xinfo|consumers",
    "xgroup|delconsumer",
    "xautoclaim",
    "zrangebyscore",
)
#: The benchmark's own commands (parent polls), left out of every figure.
OWN = {"info", "config|resetstat", "xinfo|consumers:parent"}


def commandstats(client: redis.Redis) -> dict[str, int]:
    """``{command: calls}`` from ``INFO commandstats``."""
    return {
        key.removeprefix("cmdstat_"): int(value["calls"])
        for key, value in client.info("commandstats").items()
    }


# ------------------------------------------------------------------------------ children
def child_main(spec: dict[str, Any]) -> None:
    """Start ``count`` consumers, say "ready", and exit at the first line on stdin."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    hold = threading.Event()  # never set: a busy consumer's jobs run until the process exits
    made = []
    for _ in range(spec["count"]):
        d = RedisDistributedDispatcher(
            RedisConfig(url=spec["url"]), DistributedConfig(**spec["config"])
        )
        d.register_handler(TYPE, lambda ctx, job: hold.wait())
        made.append(d)
    for d in made:
        d.start()
    print("ready", flush=True)
    sys.stdin.readline()
    os._exit(0)  # the server is thrown away: no need to stop N consumers one by one


class Child:
    """A child process running some of the consumers."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"a child did not start: {line!r}\n{self.log_path.read_text()}")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------------ the bench
def measure(
    args: argparse.Namespace, server_mod: Any, tmp: Path, scenario: str, n: int
) -> dict[str, Any]:
    """One figure: N consumers of ``scenario`` on a fresh server."""
    server = server_mod.RedisServerProcess(args.server, tmp / f"redis-{scenario}-{n}")
    server.start()
    client = redis.Redis.from_url(server.url)
    config = {
        "workers": 2 if scenario == "busy" else 1,
        "claim_interval": args.interval,
        "heartbeat_interval": args.interval,
        "lease": 10 * args.interval,
    }
    procs = min(args.procs, n)
    children = [
        Child(
            {"url": server.url, "count": n // procs + (i < n % procs), "config": config},
            tmp / f"child-{scenario}-{n}-{i}.log",
        )
        for i in range(procs)
    ]
    try:
        for child in children:
            child.wait_ready()
        if scenario == "busy":
            producer = RedisDistributedDispatcher(RedisConfig(url=server.url))
            producer.submit_batch([Job(f"j{i}", TYPE) for i in range(n)])
            producer.close()
            deadline = time.monotonic() + 60
            while client.xpending(STREAM, GROUP)["pending"] < n:
                if time.monotonic() > deadline:
                    raise RuntimeError("the busy fleet never took every job")
                time.sleep(0.1)
        time.sleep(args.warmup)
        before, start = commandstats(client), time.monotonic()
        time.sleep(args.window)
        after, seconds = commandstats(client), time.monotonic() - start
        consumers = len(client.xinfo_consumers(STREAM, GROUP))
        pending = client.xpending(STREAM, GROUP)["pending"]
    finally:
        for child in children:
            child.stop()
        client.close()
        server.stop()
    rates = {
        name: (after[name] - before.get(name, 0)) / seconds
        for name in after
        if name not in OWN and after[name] > before.get(name, 0)
    }
    total = sum(rates.values())
    maintenance = sum(rates.get(name, 0.0) for name in MAINTENANCE)
    return {
        "section": scenario,
        "name": f"{n} consumers",
        "consumers": n,
        "value": maintenance,
        "unit": "calls/s",
        "detail": {
            "maintenance_per_consumer": maintenance / n,
            "all": total,
            "all_per_consumer": total / n,
            "consumers_in_group": consumers,
            "pending_entries": pending,
            "seconds": seconds,
            "commands": {name: round(rate, 2) for name, rate in sorted(rates.items())},
        },
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<8} {'N':>4} {'maint/s':>9} {'/consumer':>9} {'all/s':>9} "
        f"{'/consumer':>9} {'xinfo':>7} {'exists':>8} {'xautoclaim':>10} {'set':>7}"
    )
    out = [head, "-" * len(head)]
    for row in rows:
        d = row["detail"]
        c = d["commands"]
        out.append(
            f"{row['section']:<8} {row['consumers']:>4} {row['value']:>9.1f} "
            f"{d['maintenance_per_consumer']:>9.2f} {d['all']:>9.1f} "
            f"{d['all_per_consumer']:>9.2f} {c.get('xinfo|consumers', 0):>7.1f} "
            f"{c.get('exists', 0):>8.1f} {c.get('xautoclaim', 0):>10.1f} {c.get('set', 0):>7.1f}"
        )
    for scenario in dict.fromkeys(row["section"] for row in rows):
        mine = [row for row in rows if row["section"] == scenario]
        if len(mine) > 1:
            low, high = mine[0], mine[-1]
            out.append(
                f"{scenario}: maintenance per consumer at N={high['consumers']} / at "
                f"N={low['consumers']}: "
                f"{high['detail']['maintenance_per_consumer'] / low['detail']['maintenance_per_consumer']:.2f}"  # noqa: E501
                f"; calls/s ratio {high['value'] / low['value']:.1f} for "
                f"{high['consumers'] / low['consumers']:.1f}x the consumers"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", default="20,50,100,200")
    parser.add_argument("--scenarios", default="idle,busy")
    parser.add_argument("--procs", type=int, default=4, help="child processes")
    parser.add_argument("--interval", type=float, default=None, help="claim/heartbeat (s)")
    parser.add_argument("--window", type=float, default=None, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before measuring")
    parser.add_argument("--quick", action="store_true", help="0.5 s intervals, short windows")
    parser.add_argument("--server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--record", default=None, help=f"store under this label in {RESULTS}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child_main(json.loads(args.child))
        return
    args.interval = args.interval or (0.5 if args.quick else 1.0)
    args.warmup = args.warmup if args.warmup is not None else 10 * args.interval
    args.window = args.window or (6.0 if args.quick else 20.0)
    server_mod = load_test_module("redis_server")
    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-fleet-"))
    header = (
        f"csjd_core: {Path(csjd_core.__file__).parent}  redis-py {redis.__version__}  "
        f"interval={args.interval}s window={args.window}s warmup={args.warmup}s "
        f"procs={args.procs} cpus={os.cpu_count()}"
    )
    print(header, file=sys.stderr, flush=True)
    rows = []
    try:
        for scenario in args.scenarios.split(","):
            for n in (int(x) for x in args.consumers.split(",")):
                row = measure(args, server_mod, tmp, scenario, n)
                print(
                    f"{scenario} N={n}: {row['value']:.1f} maintenance calls/s "
                    f"({row['detail']['maintenance_per_consumer']:.2f} per consumer), "
                    f"{row['detail']['all']:.1f} calls/s in all",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
    if args.record is not None:
        recorded = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        recorded[args.record] = {
            "csjd_core": str(Path(csjd_core.__file__).parent),
            "settings": {
                "interval": args.interval,
                "window": args.window,
                "warmup": args.warmup,
                "procs": args.procs,
                "cpus": os.cpu_count(),
            },
            "rows": rows,
        }
        RESULTS.write_text(json.dumps(recorded, indent=1) + "\n")


if __name__ == "__main__":
    main()
