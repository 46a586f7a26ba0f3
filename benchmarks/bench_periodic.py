"""What periodic jobs cost: a slot's admission beside a plain submit, a fleet of tickers per
slot, and planning a catch-up after a long outage.

Run: ``python benchmarks/bench_periodic.py [--slots N] [--repeat R] [--json PATH]``

Starts its own throwaway ``redis-server`` (as bench_redis.py does) and measures, in one run:

- admission: slots admitted per second by ``admit_slot`` (enqueue.lua comparing and advancing
  the mark with the admission) beside ``submit`` one by one of the same job: the baseline of
  the same run. Memory and file store (``fsync="never"``) too.
- fleet: 1, 3 and 10 tickers (each its own dispatcher and connection pool, as worker processes
  have) driven through the same every-second slots by a shared fake clock (so no ``TIME``
  call: a real ticker adds one per slot): round trips and redis-server time per slot (``INFO
  commandstats``: the time of the commands, those scripts run included), and how many times
  each slot was enqueued (must be exactly once).
- catch-up: the time `Schedule.plan` takes after an outage of one day and of one year, for a
  per-minute cron and an every-second schedule (the tick that follows an outage pays it once).

Figures are medians of ``--repeat`` runs, interleaved; ratios are to the baseline of the same
run (the machine's other load moves both alike).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import statistics
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
from _common import load_test_module  # noqa: E402
from bench_redis import commandstats, stats_delta  # noqa: E402

from csjd_core import App, Config, FileJobStore, every  # noqa: E402
from csjd_core.backends.base import SlotOp, SlotVerdict  # noqa: E402
from csjd_core.config import DistributedConfig, RedisConfig  # noqa: E402
from csjd_core.dispatcher import Dispatcher  # noqa: E402
from csjd_core.distributed import RedisDistributedDispatcher  # noqa: E402
from csjd_core.engine.dispatcher import BaseDispatcher  # noqa: E402
from csjd_core.engine.ticker import Ticker  # noqa: E402
from csjd_core.periodic import Schedule, make_schedule  # noqa: E402

BIG_CAP = 10**9
START = 1_900_000_000.0  # the fake clock's first second (2030)


def definitions() -> tuple[App, Schedule, Any]:
    app = App()

    @app.job("bench.tick")
    def tick() -> None:
        return None

    # No overlap rule: no worker runs the slots here, and each must be a real admission.
    return app, make_schedule(tick, every(seconds=1), max_running=None), tick


def redis_dispatcher(url: str, app: App) -> RedisDistributedDispatcher:
    config = DistributedConfig(max_pending_jobs=BIG_CAP, dedupe_window=0, result_ttl=60)
    return RedisDistributedDispatcher(RedisConfig(url=url), config, registry=app.registry)


def rate(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t0)


def admission(
    dispatcher: BaseDispatcher, schedule: Schedule, tick: Any, n: int, rep: int
) -> dict[str, float]:
    """Slots admitted per second beside submits of the same job per second."""
    offset = [0]

    def slots(count: int) -> None:
        base = START + offset[0]
        offset[0] += count
        for i in range(count):
            verdict = dispatcher.admit_slot(schedule, SlotOp.SLOT, base + i)
            assert verdict is SlotVerdict.ENQUEUED, verdict

    def submits(count: int) -> None:
        for _ in range(count):
            dispatcher.submit(tick.build_job())

    runs: dict[str, list[float]] = {"slot": [], "submit": []}
    submits(10)  # connections and scripts loaded before anything is timed
    slots(10)
    for _ in range(rep):
        runs["submit"].append(rate(submits, n))
        runs["slot"].append(rate(slots, n))
    return {k: statistics.median(v) for k, v in runs.items()}


def fleet(url: str, tickers: int, slots: int) -> dict[str, float]:
    """``tickers`` tickers through ``slots`` every-second slots of one schedule."""
    client = redis.Redis.from_url(url)
    client.flushall()
    app, schedule, _ = definitions()
    dispatchers = [redis_dispatcher(url, app) for _ in range(tickers)]
    clock = [START]
    fleet_tickers = [
        Ticker({schedule.name: schedule}, d, clock=lambda: clock[0]) for d in dispatchers
    ]
    for ticker in fleet_tickers:  # first sight: the mark starts at START
        ticker.tick(clock[0])
    before = commandstats(client)
    t0 = time.perf_counter()
    for second in range(1, slots + 1):
        clock[0] = START + second
        for ticker in fleet_tickers:
            ticker.tick(clock[0])
    elapsed = time.perf_counter() - t0
    delta = stats_delta(before, commandstats(client))
    delta.pop("info", None)
    # The ticker's calls (the fake clock spares it a TIME each; enqueue.lua's own TIME is not one).
    round_trips = sum(delta.get(c, (0, 0))[0] for c in ("evalsha", "hgetall"))
    server_us = sum(usec for _, usec in delta.values())
    ids = [k.decode() for k in client.scan_iter("csjd:jobs:{default}:job:periodic:*", count=1000)]
    enqueued = sum(t.counters.enqueued for t in fleet_tickers)
    for d in dispatchers:
        d.stop(1)
    assert len(ids) == len(set(ids)) == enqueued, (len(ids), enqueued)
    return {
        "slots": slots,
        "enqueued": enqueued,
        "refused": sum(t.counters.refused for t in fleet_tickers),
        "round_trips_per_slot": round_trips / slots,
        "server_us_per_slot": server_us / slots,
        "ms_per_slot": elapsed / slots * 1e3,
    }


def catch_up() -> list[tuple[str, float, int]]:
    app = App()

    @app.job("bench.minutely")
    def minutely() -> None:
        return None

    rows = []
    cron = make_schedule(minutely, "* * * * *")
    second = make_schedule(minutely, every(seconds=1), name="bench.second")
    for label, schedule, outage in (
        ("per-minute cron, 1 day", cron, 86400),
        ("per-minute cron, 1 year", cron, 365 * 86400),
        ("every second, 1 day", second, 86400),
        ("every second, 1 year", second, 365 * 86400),
    ):
        t0 = time.perf_counter()
        plan = schedule.plan(START, START + outage)
        rows.append((label, (time.perf_counter() - t0) * 1e3, plan.passed_over))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as the text docs/performance.md quotes."""
    lines = ["admission (jobs/s, median of interleaved runs)"]
    lines.append(f"  {'backend':<12}{'admit_slot':>12}{'submit':>12}{'ratio':>8}")
    for row in (r for r in rows if r["section"] == "admission"):
        backend = row["name"].split(":")[0]
        ratio = row["detail"]["ratio"]
        lines.append(f"  {backend:<12}{row['value']:>12,.0f}{row['base']:>12,.0f}{ratio:>8.2f}")
    lines.append("fleet (per slot; every slot enqueued exactly once)")
    header = ("tickers", "enqueued", "refused", "trips", "server µs", "ms")
    lines.append("  " + "".join(f"{h:>10}" for h in header))
    for row in (r for r in rows if r["section"] == "fleet"):
        f = row["detail"]
        values = (row["name"].split()[0], f["enqueued"], f["refused"])
        cells = [f"{v:>10}" for v in values]
        cells += [f"{f['round_trips_per_slot']:>10.1f}", f"{f['server_us_per_slot']:>10.1f}"]
        cells.append(f"{f['ms_per_slot']:>10.2f}")
        lines.append("  " + "".join(cells))
    lines.append("catch-up planning after an outage (the tick that follows pays it once)")
    for row in (r for r in rows if r["section"] == "catch-up"):
        missed = row["detail"]["passed_over"]
        lines.append(f"  {row['name']:<26}{row['value']:>9.1f} ms   passed over {missed:,}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=2000, help="slots per admission run")
    parser.add_argument("--fleet-slots", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--server", default="/usr/bin/redis-server")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the unrun slots are "abandoned" at each stop

    server_mod = load_test_module("redis_server")
    tmp = Path(tempfile.mkdtemp(prefix="csjd-bench-periodic-"))
    server = server_mod.RedisServerProcess(args.server, tmp / "redis")
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        print(
            f"csjd_core: {Path(csjd_core.__file__).parent}  server {server.version()}",
            file=sys.stderr,
        )
        app, schedule, tick = definitions()
        for label, make in (
            ("redis", lambda: redis_dispatcher(server.url, app)),
            ("memory", lambda: Dispatcher(Config(max_pending_jobs=BIG_CAP), registry=app.registry)),
            (
                "file store",
                lambda: Dispatcher(
                    Config(
                        max_pending_jobs=BIG_CAP,
                        store=FileJobStore(tmp / "store.json", fsync="never"),
                    ),
                    registry=app.registry,
                ),
            ),
        ):
            dispatcher = make()
            try:
                figures = admission(dispatcher, schedule, tick, args.slots, args.repeat)
            finally:
                dispatcher.stop(1)
            rows.append(
                {
                    "section": "admission",
                    "name": f"{label}: admit_slot",
                    "value": figures["slot"],
                    "base": figures["submit"],
                    "detail": {"ratio": figures["slot"] / figures["submit"]},
                }
            )
        fleet_rows = {n: fleet(server.url, n, args.fleet_slots) for n in (1, 3, 10)}
        for n, figures in fleet_rows.items():
            rows.append(
                {
                    "section": "fleet",
                    "name": f"{n} tickers",
                    "value": figures["round_trips_per_slot"],
                    "base": None,
                    "detail": figures,
                }
            )
        plans = catch_up()
        for label, ms, missed in plans:
            rows.append(
                {
                    "section": "catch-up",
                    "name": label,
                    "value": ms,
                    "base": None,
                    "detail": {"passed_over": missed},
                }
            )
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)

    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
