"""FileJobStore: the disk's fsync latency, group commit, end-to-end throughput per fsync policy,
and recovery of a 1,000,000-record log.

Run: ``python benchmarks/bench_file_store.py [--dir DIR] [--repeat R] [--quick] [--only SECTION...]
[--json F]`` (``--json``: the figures for ``benchmarks/compare.py``, which interleaves the runs of
two checkouts: ``compare.py BEFORE AFTER --runs 5 -- bench_file_store.py --only targets``).

1. fsync latency: median and p90 of N fsyncs, each after a 150-byte append (the size of a
   submitted record), on a file in ``--dir`` (default: a temporary directory; put it on the
   disk your store will use).
2. Durable submits/s: 8 threads submitting with ``fsync="always"`` (workers not started, so only
   admission is measured), and the fsyncs per submit (group commit shares one fsync); against
   the group-commit ceiling measured in the same run, interleaved: 8 threads appending fixed
   150-byte records to a file with one ``fdatasync`` per batch and nothing else.
3. End to end: N jobs submitted from one thread and run by 8 workers with a no-op handler,
   jobs/s for no store and for each policy, and the ratio to the no-store run of the same
   process; for ``interval`` also the µs of wall time per job the store adds (median over
   no-store / interval pairs run one after the other). ``always`` is also run with 8
   submitting threads (one fsync per submit otherwise).
   Then the two sides alone: µs per submit with no worker running, and µs per job to drain what
   was submitted, with 1 and with 8 workers, without a store and under ``never``.
4. Recovery: ``FileJobStore.open()`` of a log of 1,000,000 records (500,000 jobs submitted, half
   of them started and finished: 250,000 recovered), and of 1,000,000 submitted records (all
   recovered); then the compaction of what was recovered (``close()``).

Each throughput figure is the median of ``--repeat`` runs (best in brackets). The machine's
other load shows in the spread: compare figures from the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from csjd_core import Config, Dispatcher, FileJobStore, Job
from csjd_core.backends._records import FINISHED, STARTED, SUBMITTED, finished, started, submitted
from csjd_core.backends._wal import encode
from csjd_core.backends.memory import Entry
from csjd_core.job import JobState

THREADS = 8
WORKERS = 8


def runs(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    values = [fn() for _ in range(repeat)]
    return statistics.median(values), max(values)


def fresh_store(base: Path, policy: str, **kwargs: object) -> FileJobStore:
    return FileJobStore(Path(tempfile.mkdtemp(dir=base)) / "jobs.json", fsync=policy, **kwargs)  # type: ignore[arg-type]


# -- 1 -------------------------------------------------------------------------------------------
def fsync_latency(base: Path, n: int) -> tuple[float, float]:
    fd = os.open(base / "fsync-probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 150)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.9)]


# -- 2 -------------------------------------------------------------------------------------------
def durable_submits(base: Path, total: int) -> tuple[float, float]:
    """(submits/s, fsyncs per submit) for 8 threads under ``always``."""
    store = fresh_store(base, "always", compact_bytes=1 << 40)
    dispatcher = Dispatcher(Config(workers=1, store=store, max_pending_jobs=total + 1))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    dispatcher.submit(Job("open", "noop"))
    each = total // THREADS
    batches = [[Job(f"{k}-{i}", "noop") for i in range(each)] for k in range(THREADS)]
    barrier = threading.Barrier(THREADS + 1)

    def submitter(jobs: list[Job]) -> None:
        barrier.wait()
        submit = dispatcher.submit
        for job in jobs:
            submit(job)

    threads = [threading.Thread(target=submitter, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    fsyncs = store.fsync_count
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    fsyncs = store.fsync_count - fsyncs
    assert dispatcher.metrics().accepted == each * THREADS + 1
    dispatcher.stop()
    durable_submits.ratio = fsyncs / (each * THREADS)  # type: ignore[attr-defined]
    return each * THREADS / elapsed, fsyncs / (each * THREADS)


def group_commit_ceiling(base: Path, total: int) -> float:
    """Records/s for 8 threads appending fixed records with one fdatasync per batch.

    The leanest group commit in Python: each thread appends its record (``write(2)``) and
    blocks on a gate of its own; one syncing thread runs ``fdatasync`` for every record
    appended so far and opens the gates of the records it covered. No encoding, no index.
    """
    fd = os.open(base / "ceiling", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    record = b"x" * 150
    waiting: list[threading.Lock] = []
    ready = threading.Semaphore(0)
    stop = [False]
    barrier = threading.Barrier(THREADS + 1)

    def syncer() -> None:
        while True:
            ready.acquire()
            if stop[0]:
                return
            batch = waiting[:]
            del waiting[: len(batch)]
            for _ in range(len(batch) - 1):  # one fsync covers them all
                ready.acquire()
            os.fdatasync(fd)
            for gate in batch:
                gate.release()

    def appender(count: int) -> None:
        barrier.wait()
        for _ in range(count):
            gate = threading.Lock()
            gate.acquire()
            os.write(fd, record)
            waiting.append(gate)
            ready.release()
            gate.acquire()

    each = total // THREADS
    sync_thread = threading.Thread(target=syncer)
    sync_thread.start()
    threads = [threading.Thread(target=appender, args=(each,)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    stop[0] = True
    ready.release()
    sync_thread.join()
    os.close(fd)
    return each * THREADS / elapsed


# -- 3 -------------------------------------------------------------------------------------------
def end_to_end(base: Path, policy: str | None, n: int, submitters: int = 1) -> float:
    store = None if policy is None else fresh_store(base, policy)
    dispatcher = Dispatcher(Config(workers=WORKERS, max_pending_jobs=n + 1, store=store))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    jobs = [Job(f"job-{i}", "noop") for i in range(n)]
    dispatcher.start()
    start = time.perf_counter()
    if submitters == 1:
        submit = dispatcher.submit
        for job in jobs:
            submit(job)
    else:
        threads = [
            threading.Thread(
                target=lambda part: [dispatcher.submit(j) for j in part],
                args=(jobs[k::submitters],),
            )
            for k in range(submitters)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    dispatcher.join()
    elapsed = time.perf_counter() - start
    report = dispatcher.stop()
    assert dispatcher.metrics().succeeded == n, dispatcher.metrics()
    assert report.clean, report
    return n / elapsed


def phases(base: Path, policy: str | None, workers: int, n: int) -> tuple[float, float]:
    """(µs per submit, µs per drained job): N jobs submitted from one thread before the workers
    start, then drained by ``workers`` — each side timed alone, without the other contending."""
    gc.collect()  # not the garbage of earlier runs
    store = None if policy is None else fresh_store(base, policy)
    dispatcher = Dispatcher(Config(workers=workers, max_pending_jobs=n + 1, store=store))
    dispatcher.register_handler("noop", lambda ctx, job: None)
    jobs = [Job(f"job-{i}", "noop") for i in range(n)]
    submit = dispatcher.submit
    start = time.perf_counter()
    for job in jobs:
        submit(job)
    submitted = time.perf_counter() - start
    start = time.perf_counter()
    dispatcher.start()
    dispatcher.join()
    drained = time.perf_counter() - start
    dispatcher.stop()
    assert dispatcher.metrics().succeeded == n, dispatcher.metrics()
    return submitted / n * 1e6, drained / n * 1e6


# -- 4 -------------------------------------------------------------------------------------------
def build_log(path: Path, records: int, finished_share: float) -> int:
    """Write a log of ``records`` records as the store writes them; return the unfinished count.

    Jobs are submitted, and a ``finished_share`` of them started and finished (3 records).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    seq = 0
    unfinished = 0
    chunks: list[bytes] = []
    i = 0
    with open(f"{path}.log", "wb") as f:
        while seq < records:
            job = Job(f"job-{i:07d}", "noop", {"n": i})
            seq += 1
            chunks.append(encode(SUBMITTED, seq, submitted([Entry(job, 3, now)])))
            if seq + 2 <= records and (i * finished_share) % 1 + finished_share >= 1:
                seq += 1
                chunks.append(encode(STARTED, seq, started(job.id, 1, now)))
                seq += 1
                chunks.append(encode(FINISHED, seq, finished(job.id, JobState.SUCCEEDED, now)))
            else:
                unfinished += 1
            i += 1
            if len(chunks) >= 10_000:
                f.write(b"".join(chunks))
                chunks.clear()
        f.write(b"".join(chunks))
    return unfinished


def recovery(base: Path, records: int, finished_share: float) -> tuple[int, float, float, int]:
    """(recovered, open seconds, close/compaction seconds, log MiB)."""
    path = Path(tempfile.mkdtemp(dir=base)) / "jobs.json"
    expected = build_log(path, records, finished_share)
    size = os.path.getsize(f"{path}.log")
    gc.collect()
    store = FileJobStore(path, fsync="never", compact_bytes=1 << 40)
    start = time.perf_counter()
    recovered = store.open()
    opened = time.perf_counter() - start
    assert recovered == expected, (recovered, expected)
    start = time.perf_counter()
    store.close()
    closed = time.perf_counter() - start
    return recovered, opened, closed, size >> 20


SECTIONS = ("fsync", "commit", "interval", "policies", "phases", "recovery")
#: The issue's three targets: durable submits against the ceiling, µs/job interval adds, recovery.
TARGETS = ("commit", "interval", "recovery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help="where to put the stores (a disk, not tmpfs)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--only", nargs="+", choices=(*SECTIONS, "targets"), default=None, help="these sections"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    only = set(args.only or SECTIONS)
    if "targets" in only:
        only |= set(TARGETS)
    scale = 10 if args.quick else 1
    base = Path(tempfile.mkdtemp(prefix="csjd-bench-", dir=args.dir))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, stores in {base}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows: list[tuple[str, str, str]] = []
    figures: list[dict[str, object]] = []  # for --json: {"section", "name", "value", "base"}

    if "fsync" in only:
        median, p90 = fsync_latency(base, 1000 // scale)
        rows.append(
            (
                "fsync latency (150-byte append + fsync)",
                f"median {median * 1e3:.3f} ms, p90 {p90 * 1e3:.3f} ms",
                "",
            )
        )

    if "commit" in only:
        ceilings, values = [], []
        for _ in range(args.repeat):  # interleaved: the same moments of the machine's load
            ceilings.append(group_commit_ceiling(base, 40_000 // scale))
            values.append(durable_submits(base, 40_000 // scale))
        rates = sorted(v[0] for v in values)
        ratio = statistics.median(v[1] for v in values)
        shares = [v[0] / c for v, c in zip(values, ceilings, strict=True)]
        rows.append(
            (
                f"group-commit ceiling, {THREADS} threads (append + fdatasync per batch)",
                f"{statistics.median(ceilings):,.0f}/s [best {max(ceilings):,.0f}]",
                "",
            )
        )
        rows.append(
            (
                f"durable submits/s, {THREADS} threads, always",
                f"{statistics.median(rates):,.0f}/s [best {rates[-1]:,.0f}]",
                f"{statistics.median(shares):.2f} of the ceiling (target >= 0.8); "
                f"{ratio:.3f} fsyncs/submit",
            )
        )
        figures.append(
            {
                "section": "always",
                "name": "durable submits, share of the group-commit ceiling",
                "value": statistics.median(shares),
                "base": None,
            }
        )
        figures.append(
            {
                "section": "always",
                "name": "durable submits/s (base: the ceiling)",
                "value": statistics.median(rates),
                "base": statistics.median(ceilings),
            }
        )

    n = 60_000 // scale
    baseline = 0.0
    if "interval" in only or "policies" in only:
        pairs = [
            (end_to_end(base, None, n), end_to_end(base, "interval", n)) for _ in range(args.repeat)
        ]
        baseline = statistics.median(p[0] for p in pairs)
        best = max(p[0] for p in pairs)
        added = statistics.median((1 / p[1] - 1 / p[0]) * 1e6 for p in pairs)
        interval = statistics.median(p[1] for p in pairs)
        rows.append(("end to end, no store", f"{baseline:,.0f} jobs/s [best {best:,.0f}]", "1.00"))
        rows.append(
            (
                "end to end, interval (paired with no store)",
                f"{interval:,.0f} jobs/s [best {max(p[1] for p in pairs):,.0f}]",
                f"{interval / baseline:.2f} of no store; adds {added:.1f} µs/job (target <= 6)",
            )
        )
        figures.append(
            {
                "section": "interval",
                "name": "µs/job the store adds (paired with no store)",
                "value": added,
                "base": None,
            }
        )
        figures.append(
            {
                "section": "interval",
                "name": "jobs/s (base: no store)",
                "value": interval,
                "base": baseline,
            }
        )
    if "policies" in only:
        for policy, jobs, submitters in (
            ("never", n, 1),
            ("always", n // 10, 1),
            ("always", n // 2, THREADS),
        ):
            rate, best = runs(
                lambda p=policy, j=jobs, s=submitters: end_to_end(base, p, j, s), args.repeat
            )
            label = f"end to end, {policy}" + (
                f", {submitters} submitting threads" if submitters > 1 else ""
            )
            note = f"{rate / baseline:.2f} of no store"
            rows.append((label, f"{rate:,.0f} jobs/s [best {best:,.0f}]", note))

    if "phases" in only:
        for policy, workers in ((None, 1), ("never", 1), (None, WORKERS), ("never", WORKERS)):
            submit_us, drain_us = phases(base, policy, workers, n // 2)
            rows.append(
                (
                    f"phases alone, {policy or 'no store'}, {workers} worker{'s' * (workers > 1)}",
                    f"submit {submit_us:.1f} µs/job, drain {drain_us:.1f} µs/job",
                    "each side timed without the other running",
                )
            )

    if "recovery" in only:
        records = args.records // scale
        for share, what in ((0.5, "half finished"), (0.0, "all submitted")):
            recovered, opened, closed, mib = recovery(base, records, share)
            rows.append(
                (
                    f"recovery, {records:,}-record log ({what}, {mib} MiB)",
                    f"{opened:.2f} s to open",
                    f"{recovered:,} jobs recovered; compaction at close {closed:.2f} s"
                    + " (target < 5 s to open)",
                )
            )
            figures.append(
                {
                    "section": "recovery",
                    "name": f"s to open a {records:,}-record log ({what})",
                    "value": opened,
                    "base": None,
                }
            )

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    print()
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:<{value_width}}  {note}")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": figures}, indent=1))


if __name__ == "__main__":
    main()
