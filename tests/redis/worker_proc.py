"""Child processes for the Redis fault tests: run as a script, never imported by pytest.

Every file the parent reads while a child runs is appended to with one ``os.write`` on an
``O_APPEND`` descriptor per line, so a SIGKILL can only lose a line that was not written yet,
never tear one (the kernel keeps a completed write(2) whatever happens to the process; only an
OS crash could lose it, which no test simulates, so no fsync is needed).

Commands:
  worker   a `RedisDistributedDispatcher` run by `run_worker` (SIGTERM drains, a second signal
           exits with EXIT_FORCED). Files in --dir, named after --name:
             NAME.ready     written once every worker thread has started (the group exists)
             NAME.started   one job id per line, before the handler does its work
             NAME.done      one job id per line, after the handler did its work
             NAME.die       one job id per line, written by a ``die`` job right before os._exit
             NAME.stats     JSON {consumer, read_calls, deleted_entries, pid}, rewritten often
           Job types: ``work`` (payload {"ms": N}: sleep N ms), ``sleep`` (payload {"s": N}),
           ``die`` (os._exit(17) every time), ``flaky`` (like ``work``, but its first attempt
           raises after writing NAME.started), ``fail`` (raises every time), ``progress`` (calls
           ctx.set_progress in a tight loop, see the handler), ``patient`` (waits up to payload
           {"s": N} on ``ctx.wait``; when woken by a cancellation it appends "ID UNIX-TIME" to
           NAME.noticed and returns). --queues: the
           queues it consumes. Only what every release of the package has is used: the upgrade
           tests run this file on 0.1.0's package too (--record-format is passed only when
           given).
  produce  wait until --go exists, then submit jobs (to --queue); one line per job in --out:
           ``ok ID``, ``full ID``, ``dup ID`` or ``down ID``. With --until-stored a job
           refused with BackendUnavailable is submitted again with the same id until Redis
           answers (one ``down ID`` line per refusal, on stderr the error); a DuplicateJob
           after a refusal means the refused attempt stored it: ``stored ID``. --mix: every
           tenth job is delayed (run_at 0.5-2 s ahead) and every tenth ``flaky``; --pause:
           seconds between submits (spreads them over a window of the test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import csjd_core
from csjd_core import DuplicateJob, Hooks, Job, JobContext, QueueFull, RetryPolicy
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.errors import BackendUnavailable
from csjd_core.worker import run_worker

APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def line_writer(path: Path) -> Any:
    """A function appending one line to ``path`` with a single ``os.write``."""
    fd = os.open(path, APPEND, 0o644)

    def write(text: str) -> None:
        os.write(fd, f"{text}\n".encode())

    return write


class ReadyHook(Hooks):
    """Writes NAME.ready once every worker thread has started (after the groups exist)."""

    def __init__(self, path: Path, workers: int) -> None:
        self.path = path
        self.left = workers
        self.lock = threading.Lock()

    def worker_started(self, worker_id: str) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.path.write_text(f"{os.getpid()}\n")


def write_stats(dispatcher: RedisDistributedDispatcher, path: Path) -> None:
    """Rewrite NAME.stats atomically every 50 ms (read by the parent)."""
    tmp = path.with_suffix(".stats.tmp")
    backend = dispatcher.backend
    while True:
        tmp.write_text(
            json.dumps(
                {
                    "consumer": backend.consumer,
                    "read_calls": backend.read_calls,
                    "deleted_entries": backend.deleted_entries,
                    "pid": os.getpid(),
                    "package": str(Path(csjd_core.__file__).parent),
                }
            )
        )
        os.replace(tmp, path)
        time.sleep(0.05)


def worker(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    name = args.name
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s %(message)s",
    )
    started = line_writer(directory / f"{name}.started")
    done = line_writer(directory / f"{name}.done")
    die = line_writer(directory / f"{name}.die")
    config = DistributedConfig(
        workers=args.workers,
        consumer=args.consumer,
        lease=args.lease,
        heartbeat_interval=args.heartbeat,
        claim_interval=args.claim,
        block=args.block,
        max_deliveries=args.max_deliveries,
        prefetch=args.prefetch,
        max_pending_jobs=args.cap,
        retry=RetryPolicy(base_delay=0.05, max_delay=0.2),
        hooks=(ReadyHook(directory / f"{name}.ready", args.workers),),
        **({"record_format": args.record_format} if args.record_format else {}),
    )
    if args.queues:
        config = dataclasses.replace(config, queues=tuple(args.queues.split(",")))
    dispatcher = RedisDistributedDispatcher(RedisConfig(url=args.url), config)

    @dispatcher.handler("work")
    def work(ctx: JobContext, job: Job) -> str:
        started(job.id)
        time.sleep(job.payload.get("ms", 0) / 1000)
        done(job.id)
        return name

    @dispatcher.handler("sleep")
    def sleep(ctx: JobContext, job: Job) -> str:
        started(job.id)
        time.sleep(job.payload["s"])
        done(job.id)
        return name

    @dispatcher.handler("flaky")
    def flaky(ctx: JobContext, job: Job) -> str:
        started(job.id)
        if ctx.attempt == 1:
            raise RuntimeError("flaky: fails its first attempt")
        time.sleep(job.payload.get("ms", 0) / 1000)
        done(job.id)
        return name

    @dispatcher.handler("fail")
    def fail(ctx: JobContext, job: Job) -> None:
        started(job.id)
        raise RuntimeError("fail: every attempt fails")

    @dispatcher.handler("progress")
    def progress(ctx: JobContext, job: Job) -> int:
        # payload {"calls": N, "seconds": S, "go": path}: ctx.set_progress in a tight loop, at
        # least N times and for at least S seconds; then wait for the file ``go`` (if given);
        # then a final value right before returning. Returns how many calls it made.
        started(job.id)
        total = job.payload["calls"]
        calls, until = 0, time.monotonic() + job.payload.get("seconds", 0)
        while calls < total or time.monotonic() < until:
            calls += 1
            ctx.set_progress(min(calls, total), total, f"call {calls}")
        go = job.payload.get("go")
        while go and not os.path.exists(go):
            time.sleep(0.01)
        ctx.set_progress(total, total, "finished")
        done(job.id)
        return calls

    noticed = line_writer(directory / f"{name}.noticed")

    @dispatcher.handler("patient")
    def patient(ctx: JobContext, job: Job) -> str:
        started(job.id)
        if ctx.wait(job.payload["s"]):
            noticed(f"{job.id} {time.time()}")
            return "stopped"
        done(job.id)
        return name

    @dispatcher.handler("die")
    def crash(ctx: JobContext, job: Job) -> None:
        started(job.id)
        die(job.id)
        os._exit(17)

    threading.Thread(
        target=write_stats, args=(dispatcher, directory / f"{name}.stats"), daemon=True
    ).start()
    report = run_worker(dispatcher, drain_timeout=args.drain_timeout)
    print(
        json.dumps(
            {
                "finished": report.finished,
                "still_running": report.still_running,
                "timed_out": report.timed_out,
            }
        ),
        flush=True,
    )
    return 0


def produce(args: argparse.Namespace) -> int:
    config = DistributedConfig(max_pending_jobs=args.cap)
    dispatcher = RedisDistributedDispatcher(RedisConfig(url=args.url), config)
    out = line_writer(Path(args.out))
    ids = args.ids.split(",") if args.ids else [f"{args.prefix}-{i}" for i in range(args.count)]
    dispatcher.backend.client.ping()  # connected: ready to burst
    Path(f"{args.out}.ready").touch()
    go = Path(args.go)
    while not go.exists():  # a start line for every producer: they burst together
        time.sleep(0.001)
    counts = {"ok": 0, "full": 0, "dup": 0, "down": 0, "stored": 0}
    for index, job_id in enumerate(ids):
        job = (
            mixed_job(job_id, index, args.queue)
            if args.mix
            else Job(job_id, "work", {"ms": 0}, queue=args.queue)
        )
        refused = False
        while True:
            try:
                dispatcher.submit(job)
                verdict = "ok"
            except QueueFull:
                verdict = "full"
            except DuplicateJob:
                verdict = "stored" if refused else "dup"
            except BackendUnavailable as exc:
                verdict = "down"
                if args.until_stored:
                    counts[verdict] += 1
                    out(f"{verdict} {job_id}")
                    print(f"down id={job_id} error={exc}", file=sys.stderr, flush=True)
                    refused = True
                    time.sleep(0.01)
                    continue
            break
        counts[verdict] += 1
        out(f"{verdict} {job_id}")
        if args.pause:
            time.sleep(args.pause)
    dispatcher.close()
    print(json.dumps(counts), flush=True)
    return 0


def mixed_job(job_id: str, index: int, queue: str | None) -> Job:
    """The ``index``-th job of a --mix producer: mostly ``work`` of 1-3 ms; every tenth
    delayed (promoted later), every tenth ``flaky`` (retried once through the delayed set)."""
    payload = {"ms": 1 + index % 3}
    if index % 10 == 3:
        run_at = datetime.now(UTC) + timedelta(seconds=0.5 + (index % 7) / 4)
        return Job(job_id, "work", payload, run_at=run_at, queue=queue)
    return Job(job_id, "flaky" if index % 10 == 7 else "work", payload, queue=queue)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--dir", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--consumer", default=None)
    w.add_argument("--workers", type=int, default=4)
    w.add_argument("--lease", type=float, default=1.0)
    w.add_argument("--heartbeat", type=float, default=0.2)
    w.add_argument("--claim", type=float, default=0.2)
    w.add_argument("--block", type=float, default=0.2)
    w.add_argument("--max-deliveries", type=int, default=5)
    w.add_argument("--prefetch", type=int, default=None)
    w.add_argument("--cap", type=int, default=20_000)
    w.add_argument("--drain-timeout", type=float, default=10.0)
    w.add_argument("--queues", default="")
    w.add_argument("--record-format", default=None)
    p = sub.add_parser("produce")
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("--cap", type=int, default=20_000)
    p.add_argument("--ids", default="")
    p.add_argument("--prefix", default="job")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--queue", default=None)
    p.add_argument("--mix", action="store_true")
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--until-stored", action="store_true")
    args = parser.parse_args()
    return worker(args) if args.command == "worker" else produce(args)


if __name__ == "__main__":
    sys.exit(main())
