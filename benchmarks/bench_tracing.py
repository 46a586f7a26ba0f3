"""What OpenTelemetry tracing costs per job, in process: throughput of submit + run with tracing
off, on with the no-op provider (``tracing=True``, no SDK configured) and on with the SDK (a
``TracerProvider`` whose BatchSpanProcessor hands every span to an exporter that drops it), as
ratios against tracing off in the same run.

Run: ``python benchmarks/bench_tracing.py [--jobs 20000] [--repeat 5] [--workers 4]
[--json PATH]``

Each run submits ``--jobs`` trivial jobs to a memory `Dispatcher` and waits until they have all
run: a producer span and a consumer span per job (both ended) when tracing is on. The cases are
interleaved and each figure is the median of ``--repeat`` runs. The memory backend leaves the
most of a job's cost to tracing: against Redis or a file store the ratio is closer to 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import csjd_core  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(ROOT))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from csjd_core import Config, Dispatcher, Job  # noqa: E402


class DropExporter(SpanExporter):
    """Counts the spans and keeps none (the cost of exporting is the exporter's, not ours)."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def run(tracing: Any, jobs: int, workers: int) -> float:
    """Jobs per second of one run (submit every job, wait until all ran)."""
    dispatcher = Dispatcher(Config(workers=workers, max_pending_jobs=jobs + 1, tracing=tracing))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    dispatcher.start()
    try:
        started = time.perf_counter()
        for index in range(jobs):
            dispatcher.submit(Job(f"j{index}", "noop"))
        assert dispatcher.join(600), "jobs did not finish"
        elapsed = time.perf_counter() - started
        assert dispatcher.metrics().succeeded == jobs
    finally:
        dispatcher.stop(10)
    return jobs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    exporter = DropExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000))
    cases: dict[str, Any] = {"off": False, "noop": True, "sdk": sdk}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    run(False, min(args.jobs, 2000), args.workers)  # warm up
    for _ in range(args.repeat):
        for name, tracing in cases.items():
            rates[name].append(run(tracing, args.jobs, args.workers))
    sdk.shutdown()  # flushes: every span reached the exporter
    expected = 2 * args.jobs * args.repeat
    assert exporter.count == expected, f"{exporter.count} spans exported, expected {expected}"

    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["off"]
    print(f"jobs={args.jobs} repeat={args.repeat} workers={args.workers} (memory backend)")
    results = {}
    for name, rate in medians.items():
        per_job_us = (1 / rate - 1 / base) * 1e6
        results[name] = {"jobs_per_s": rate, "ratio": rate / base, "extra_us_per_job": per_job_us}
        print(
            f"  tracing={name:<5} {rate:>10,.0f} jobs/s  ratio {rate / base:.2f}  "
            f"+{per_job_us:.1f} us/job"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
