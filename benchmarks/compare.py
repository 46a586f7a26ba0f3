"""Before/after figures of one benchmark from interleaved runs: the median of each measure.

Run: ``python benchmarks/compare.py BEFORE AFTER [--runs 5] -- bench_redis.py --only drain``

``BEFORE`` and ``AFTER`` are checkouts (e.g. ``git worktree add /tmp/before <commit>``). Each run
puts one of them first on ``PYTHONPATH`` and runs the benchmark script that sits next to this
file with ``--json``, alternating before, after, before, ... so the machine's changing load
falls on both sides alike. Prints, per measure, the median of each side, their ratio and each
side's range, and the median of each side's own same-run baseline (the raw Streams loop, the
lean executor): when the baseline moved between the sides, so did the machine. Keep runs
short: a full bench_redis.py takes 10 minutes (``--only drain`` about one).

The script must write ``{"rows": [{"section", "name", "value", "base", "detail"}...]}``
(bench_redis.py and bench_inprocess.py do); a row's ``detail`` adds its CPU per job, when it has
one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIDES = ("before", "after")
DETAILS = {"worker_cpu_us": "worker CPU µs/job", "server_cpu_us": "redis-server CPU µs/job"}


def measures(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """``{measure: (value, baseline)}`` of one run."""
    out: dict[str, tuple[float, float | None]] = {}
    for row in rows:
        name = f"{row['section']} {row['name']}"
        out[name] = (float(row["value"]), row.get("base"))
        for field, label in DETAILS.items():
            detail, base = row.get("detail") or {}, row.get("base_detail") or {}
            if field in detail:
                out[f"{name}: {label}"] = (float(detail[field]), base.get(field))
    return out


def run_once(tree: Path, bench: list[str]) -> dict[str, tuple[float, float | None]]:
    path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        subprocess.run(
            [sys.executable, str(HERE / bench[0]), *bench[1:], "--json", str(out)],
            env={**os.environ, "PYTHONPATH": path},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return measures(json.loads(out.read_text())["rows"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], usage="%(prog)s BEFORE AFTER [--runs N] -- SCRIPT ..."
    )
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    bench = argv[split + 1 :]
    if not bench:
        parser.error("name the benchmark after --, e.g. -- bench_redis.py --only drain")
    runs: dict[str, dict[str, list[float]]] = {
        "before": defaultdict(list),
        "after": defaultdict(list),
    }
    baselines: dict[str, dict[str, list[float]]] = {side: defaultdict(list) for side in SIDES}
    names: list[str] = []
    for i in range(args.runs):
        for side, tree in zip(SIDES, (args.before, args.after), strict=True):
            print(f"run {i + 1}/{args.runs}: {side} ({tree})", file=sys.stderr, flush=True)
            for name, (value, base) in run_once(tree.resolve(), bench).items():
                if name not in names:
                    names.append(name)
                runs[side][name].append(value)
                if base:
                    baselines[side][name].append(float(base))
    print(
        f"{'measure':<60} {'before':>9} {'after':>9} {'ratio':>6}  {'baseline before/after':>21}"
        "  ranges"
    )
    for name in names:
        before, after = runs["before"][name], runs["after"][name]
        if not before or not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        base_b, base_a = baselines["before"][name], baselines["after"][name]
        base = (
            f"{statistics.median(base_b):>10,.1f}/{statistics.median(base_a):<10,.1f}"
            if base_b and base_a
            else " " * 21
        )
        print(
            f"{name[:60]:<60} {b:>9,.1f} {a:>9,.1f} {a / b if b else float('nan'):>6.2f}  {base}"
            f"  {min(before):,.1f}..{max(before):,.1f} | {min(after):,.1f}..{max(after):,.1f}"
        )


if __name__ == "__main__":
    main()
