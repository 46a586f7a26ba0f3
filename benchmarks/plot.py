"""Draw CSJD beside its limits — the hand-written Streams loop, the lean executor — from the JSON
that bench_redis.py and bench_inprocess.py write, as the PNGs in docs/img/.

Run: ``python benchmarks/plot.py [--results DIR] [--out DIR]`` (needs matplotlib: a benchmarks-only
dependency, in benchmarks/peers/requirements.txt). ``benchmarks/publish.sh`` runs the benchmarks
and this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "img"


def load(path: Path) -> dict[str, dict[str, Any]]:
    """``{"section name": row}`` of one benchmark's JSON."""
    rows = json.loads(path.read_text())["rows"]
    return {f"{row['section']} {row['name']}": row for row in rows}


def redis_figure(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """Drain rates and CPU per job, CSJD beside the raw XREADGROUP + XACK loop."""
    drains = [k for k in rows if k.startswith("drain ")]
    labels = [k.removeprefix("drain ").replace("worker proc", "proc") for k in drains]
    fig, (rate, cpu) = plt.subplots(1, 2, figsize=(12, 4.8), width_ratios=[3, 2])
    xs = range(len(drains))
    mine = [rows[k]["value"] for k in drains]
    base = [rows[k]["base"] for k in drains]
    for offset, values, label in ((-0.2, mine, "CSJD"), (0.2, base, "raw XREADGROUP + XACK loop")):
        bars = rate.bar([x + offset for x in xs], values, 0.4, label=label)
        rate.bar_label(bars, fmt="{:,.0f}", fontsize=7, padding=2)
    rate.set_yscale("log")
    rate.set_xticks(list(xs), labels, fontsize=8)
    rate.set_ylabel("jobs per second (log scale, higher is better)")
    rate.set_title("Drain of preloaded jobs, one local redis-server")
    rate.legend(fontsize=8)
    rate.grid(axis="y", alpha=0.3)
    key = next(k for k in drains if "1 worker proc, noop" in k)
    detail, base_detail = rows[key]["detail"], rows[key]["base_detail"]
    sides = ("worker process", "redis-server")
    fields = ("worker_cpu_us", "server_cpu_us")
    for offset, d, label in ((-0.2, detail, "CSJD"), (0.2, base_detail, "raw loop")):
        bars = cpu.bar([i + offset for i in range(2)], [d[f] for f in fields], 0.4, label=label)
        cpu.bar_label(bars, fmt="{:.1f}", fontsize=8, padding=2)
    cpu.set_xticks(range(2), sides)
    cpu.set_ylabel("CPU µs per job (lower is better)")
    cpu.set_title("CPU per no-op job, 1 worker process")
    cpu.legend(fontsize=8)
    cpu.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "redis.png", dpi=110)
    plt.close(fig)


def inprocess_figure(rows: dict[str, dict[str, Any]], out: Path) -> None:
    """Throughput beside the lean ThreadPoolExecutor, and the per-phase cost of one job."""
    fig, (rate, phases) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[3, 2])
    runs = [k for k in rows if k.startswith("throughput")]
    labels = [rows[k]["name"].replace(" baseline", "") for k in runs]
    bars = rate.barh(labels, [rows[k]["value"] for k in runs], color=["grey", "C0", "C1"])
    rate.bar_label(bars, fmt="{:,.0f}", fontsize=8, padding=3)
    rate.invert_yaxis()
    rate.set_xlabel("no-op jobs per second, 8 worker threads (higher is better)")
    rate.set_title("In-process, end to end")
    rate.margins(x=0.2)
    steps = [k for k in rows if k.startswith("phase")]
    left = 0.0
    for i, key in enumerate(steps):
        value = rows[key]["value"]
        phases.barh(["one job"], [value], left=left, color=f"C{i}", label=rows[key]["name"])
        phases.text(left + value / 2, 0, f"{value:.2f}", ha="center", va="center", fontsize=8)
        left += value
    phases.set_xlabel("µs per job, each phase alone on one thread")
    phases.set_title("Where a job's time goes")
    phases.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    fig.savefig(out / "inprocess.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    redis_figure(load(args.results / "redis.json"), args.out)
    inprocess_figure(load(args.results / "inprocess.json"), args.out)


if __name__ == "__main__":
    main()
