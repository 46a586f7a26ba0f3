"""Draw results.json (from run.py) as the PNGs in docs/img/peers/.

Run: ``python benchmarks/peers/plot.py [--results PATH] [--out DIR]``. Each bar is the median of
the repeats; the whisker spans their min and max.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "docs" / "img" / "peers"

DRAIN = {
    "drain_noop_1p": "no-op, 1 process",
    "drain_noop_2p": "no-op, 2 processes",
    "drain_incr_1p": "INCR, 1 process",
    "drain_incr_2p": "INCR, 2 processes",
}
ENQUEUE = {"enqueue_single": "one by one", "enqueue_bulk": "bulk API, 1,000 per call"}
LATENCY = {"latency_p50_ms": "p50", "latency_p99_ms": "p99"}


def bars(ax: Axes, summary: dict[str, Any], figures: dict[str, str], label_fmt: str) -> None:
    """Grouped bars: one group per system, one bar per figure, min-max whiskers."""
    systems = list(summary)
    width = 0.8 / len(figures)
    for i, (figure, label) in enumerate(figures.items()):
        xs, heights, low, high = [], [], [], []
        for j, system in enumerate(systems):
            entry = summary[system].get(figure)
            x = j + (i - (len(figures) - 1) / 2) * width
            if entry is None or "median" not in entry:
                word = "none" if entry is None else "failed"
                ax.text(x, 0, word, rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            xs.append(x)
            heights.append(entry["median"])
            low.append(entry["median"] - entry["min"])
            high.append(entry["max"] - entry["median"])
        drawn = ax.bar(xs, heights, width, label=label, yerr=[low, high], capsize=2)
        ax.bar_label(drawn, fmt=label_fmt, rotation=90, padding=3, fontsize=7)
    ax.set_xticks(range(len(systems)), systems)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.25)


def subtitle(meta: dict[str, Any]) -> str:
    """What the figures were measured on."""
    return (
        f"{meta['machine']}, Python {meta['python']}, {meta['server']}; median of "
        f"{meta['repeat']} interleaved runs, whiskers min-max"
    )


def save(fig: Any, name: str, out: Path) -> None:
    """Write one PNG."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    print(f"wrote {out / name}")


def drain(summary: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    """Drain throughput, four scenarios per system."""
    fig, ax = plt.subplots(figsize=(11, 5))
    bars(ax, summary, DRAIN, "%.0f")
    jobs = ", ".join(f"{s} {n:,}" for s, n in meta["jobs"].items())
    ax.set_title(
        f"Drain: jobs/s through N preloaded jobs (N: {jobs})\n{subtitle(meta)}", fontsize=9
    )
    ax.set_ylabel("jobs per second (higher is better)")
    ax.legend(fontsize=8)
    save(fig, "drain.png", out)


def enqueue(summary: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    """Enqueue throughput from one thread, one by one and with each bulk API."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    bars(ax, summary, ENQUEUE, "%.0f")
    ax.set_title(f"Enqueue: jobs/s from one producer thread\n{subtitle(meta)}", fontsize=9)
    ax.set_ylabel("jobs per second (higher is better)")
    ax.legend(fontsize=8)
    save(fig, "enqueue.png", out)


def latency(summary: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    """Enqueue-to-start latency at a fixed rate, log scale."""
    fig, ax = plt.subplots(figsize=(11, 4.5))
    bars(ax, summary, LATENCY, "%.1f")
    ax.set_yscale("log")
    ax.set_title(
        f"Latency: enqueue to handler start at {meta['rate']:.0f} jobs/s, 1 worker process\n"
        f"{subtitle(meta)}",
        fontsize=9,
    )
    ax.set_ylabel("milliseconds, log scale (lower is better)")
    ax.legend(fontsize=8)
    save(fig, "latency.png", out)


def main(argv: list[str] | None = None) -> None:
    """Read the results and write every PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for draw in (drain, enqueue, latency):
        draw(data["summary"], data["meta"], args.out)


if __name__ == "__main__":
    main()
