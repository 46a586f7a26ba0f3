"""Child processes for the file-store fault tests: run as a script, never imported by pytest.

Every command prints one JSON line on success. Files the parent reads while the child runs
are written with ``os.write`` on ``O_APPEND`` descriptors, one line per call, so a SIGKILL can
only ever lose a line that was not written yet, never tear one.

Commands:
  run      submit jobs from threads and run them; the parent SIGKILLs it at a random moment.
  hold     open a store, print its pid, wait for stdin to close (or to be killed).
  fork     open a store, fork, and report what the child could do with the parent's store.
  compact  build a store with jobs in every state, copy it, then crash inside ``compact``.
  fsize    submit under RLIMIT_FSIZE until the disk is "full", then keep running.
  retry    jobs that fail and wait for a retry, and one scheduled for later; killed meanwhile.
  block    a handler that blocks forever (the parent kills the process mid-attempt).
  suicide  a handler that kills its own process with ``os._exit``.
  cancel   two blocking handlers running, a queued and a scheduled job; cancel one running job,
           the queued and the scheduled one, then wait to be killed (issue 18).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from csjd_core import (
    Config,
    Dispatcher,
    FileJobStore,
    Hooks,
    Job,
    JobNotFound,
    JobStoreLocked,
    RetryPolicy,
    StoreFailed,
)
from csjd_core.backends import _wal
from csjd_core.backends.base import AttemptError

APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def line_writer(path: str) -> Any:
    """A function appending one line to ``path`` with a single ``os.write``."""
    fd = os.open(path, APPEND, 0o644)

    def write(text: str) -> None:
        os.write(fd, f"{text}\n".encode())

    return write


def done(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def cmd_run(args: argparse.Namespace) -> None:
    store = FileJobStore(args.store, fsync=args.fsync, compact_bytes=args.compact_bytes)
    dispatcher = Dispatcher(Config(workers=args.workers, store=store, max_pending_jobs=10**6))
    executed = line_writer(args.executed)
    dispatcher.register_handler("t", lambda ctx, job: executed(job.id))
    dispatcher.start()
    with open(args.marker, "w"):
        pass  # started: recovered jobs are running now
    accepted = line_writer(args.accepted)

    def submit(first: int) -> None:
        for i in range(first, args.jobs, args.threads):
            job_id = f"{args.prefix}-{i}"
            # Crash-counted attempts are tested on their own: here a job may be in flight at
            # several kills in a row and must still run.
            dispatcher.submit(Job(job_id, "t", {"i": i}, max_attempts=10_000))
            accepted(job_id)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dispatcher.join()
    report = dispatcher.stop()
    done(accepted=dispatcher.metrics().accepted, left=report.left_pending)


def cmd_drain(args: argparse.Namespace) -> None:
    store = FileJobStore(args.store, fsync=args.fsync)
    dispatcher = Dispatcher(Config(workers=args.workers, store=store, max_pending_jobs=10**6))
    executed = line_writer(args.executed)
    dispatcher.register_handler("t", lambda ctx, job: executed(job.id))
    dispatcher.start()
    recovered = len(store.recovered)
    idle = dispatcher.join(60)
    report = dispatcher.stop()
    m = dispatcher.metrics()
    done(
        recovered=recovered,
        idle=idle,
        accepted=m.accepted,
        succeeded=m.succeeded,
        failed=m.failed,
        left=report.left_pending,
    )


def cmd_hold(args: argparse.Namespace) -> None:
    store = FileJobStore(args.store)
    store.open()
    done(pid=os.getpid(), holding=store.path)
    sys.stdin.read()  # until the parent closes our stdin (or kills us)
    store.close()


def cmd_fork(args: argparse.Namespace) -> None:
    store = FileJobStore(args.store, fsync="always")
    dispatcher = Dispatcher(Config(workers=1, store=store))
    dispatcher.register_handler("t", lambda ctx, job: None)
    dispatcher.submit(Job("before-fork", "t"))
    log_before = _read(store.log_path)
    report_read, report_write = os.pipe()
    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: try every way of using the parent's store
        os.close(report_read)
        os.close(release_write)
        outcome: dict[str, Any] = {}
        for name, action in (
            ("submit", lambda: dispatcher.submit(Job("from-child", "t"))),
            ("enqueue", lambda: store.enqueue([Job("from-child-2", "t")])),
            ("open", store.open),
            ("new_store", lambda: FileJobStore(args.store).open()),
            ("compact", store.compact),
        ):
            try:
                action()
                outcome[name] = "succeeded"
            except JobStoreLocked as exc:
                outcome[name] = {
                    "locked": True,
                    "holder": exc.holder_pid,
                    "path": exc.path,
                    "message": str(exc),
                }
            except Exception as exc:  # reported, judged by the parent
                outcome[name] = f"{type(exc).__name__}: {exc}"
        outcome["close"] = len(store.close())
        os.write(report_write, json.dumps(outcome).encode())
        os.close(report_write)
        os.read(release_read, 1)  # stay alive (like a pre-forked worker) until released
        os._exit(0)
    os.close(report_write)
    os.close(release_read)
    with os.fdopen(report_read) as f:
        child = json.loads(f.read())
    log_after_child = _read(store.log_path)
    # The parent's store still works, and its lock still holds.
    dispatcher.submit(Job("after-fork", "t"))
    try:
        FileJobStore(args.store).open()
        second = "opened"
    except JobStoreLocked as exc:
        second = f"locked by {exc.holder_pid}"
    dispatcher.start()
    dispatcher.join(30)
    dispatcher.stop()
    # The child is still alive: had it kept its copy of the lock descriptor, the lock would
    # outlive the parent's close and nobody could open the store.
    try:
        with FileJobStore(args.store):
            reopen_while_child_lives = "opened"
    except JobStoreLocked as exc:
        reopen_while_child_lives = f"locked by {exc.holder_pid}"
    os.write(release_write, b"x")
    _, status = os.waitpid(pid, 0)
    done(
        parent=os.getpid(),
        child_pid=pid,
        child_exit=status,
        child=child,
        log_unchanged_by_child=log_before == log_after_child,
        second_opener_after_child=second,
        reopen_while_child_lives=reopen_while_child_lives,
        succeeded=dispatcher.metrics().succeeded,
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _die(*_: Any, **__: Any) -> None:
    os._exit(17)


def cmd_compact(args: argparse.Namespace) -> None:
    """Jobs in every state, a crash image copied to ``args.copy``, then a crash in compact."""
    store = FileJobStore(args.store, fsync="always", compact_bytes=1 << 30)
    store.open()
    store.enqueue([Job(f"j{i}", "t", {"i": i}, max_attempts=5) for i in range(30)])
    later = datetime.now(UTC) + timedelta(hours=1)
    store.enqueue([Job("later", "t", run_at=later)])
    if args.compact_first:
        store.compact()  # a snapshot exists already: the crash is in the second compaction
    deliveries = [store.fetch(0) for _ in range(17)]
    for delivery in deliveries:
        assert delivery is not None
        store.started(delivery, "w")
    for delivery in deliveries[:10]:
        store.succeed(delivery, {"ok": delivery.job.id})
    for delivery in deliveries[10:15]:
        store.retry(delivery, AttemptError("error", "boom"), 3600.0)
    # deliveries[15:17] stay running: recovery counts the crash as their attempt.
    store.enqueue([Job("last", "t")])
    os.makedirs(args.copy)
    for name in (store.path, store.log_path):
        if os.path.exists(name):
            shutil.copy(name, os.path.join(args.copy, os.path.basename(name)))
    real_replace = os.replace
    real_fsync = os.fsync
    point = args.point
    if point == "before-snapshot-fsync":

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}").endswith(".json.tmp"):
                os._exit(17)
            real_fsync(fd)

        os.fsync = fsync
    elif point == "before-snapshot-replace":

        def replace(src: Any, dst: Any) -> None:
            if str(src).endswith(".json.tmp"):
                os._exit(17)
            real_replace(src, dst)

        os.replace = replace
    elif point == "before-rotate":
        _wal.WriteAheadLog.rotate = _die  # type: ignore[method-assign]
    elif point == "before-log-replace":

        def replace_log(src: Any, dst: Any) -> None:
            if str(src).endswith(".log.tmp"):
                os._exit(17)
            real_replace(src, dst)

        os.replace = replace_log
    elif point == "before-log-dir-fsync":
        _wal.fsync_directory = _die
    elif point == "none":
        pass
    else:
        raise SystemExit(f"unknown crash point {point}")
    store.compact()
    done(compacted=True)  # only reached with point "none"
    os._exit(0)


def cmd_fsize(args: argparse.Namespace) -> None:
    store = FileJobStore(args.store, fsync="always", compact_bytes=1 << 30)
    dispatcher = Dispatcher(Config(workers=2, store=store))
    executed = line_writer(args.executed)
    dispatcher.register_handler("t", lambda ctx, job: executed(job.id))
    accepted = []
    for i in range(5):
        dispatcher.submit(Job(f"early-{i}", "t", {"i": i}))
        accepted.append(f"early-{i}")
    size = os.path.getsize(store.log_path)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write fails with EFBIG instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + args.room, hard))
    error: dict[str, Any] = {}
    for i in range(1000):
        job_id = f"late-{i}"
        before = dispatcher.metrics().accepted
        try:
            dispatcher.submit(Job(job_id, "t", {"i": i, "pad": "x" * 40}))
        except StoreFailed as exc:
            cause = exc.__cause__
            try:
                dispatcher.status(job_id)
                status = "found"
            except JobNotFound:
                status = "JobNotFound"
            error = {
                "id": job_id,
                "type": type(exc).__name__,
                "message": str(exc),
                "errno": getattr(cause, "errno", None),
                "status": status,
                "accepted_before": before,
                "accepted_after": dispatcher.metrics().accepted,
                "log_size": os.path.getsize(store.log_path),
                "limit": size + args.room,
            }
            break
        accepted.append(job_id)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # The same dispatcher keeps working: stored jobs run, new submits succeed.
    dispatcher.submit(Job("after", "t"))
    accepted.append("after")
    dispatcher.start()
    idle = dispatcher.join(30)
    dispatcher.stop()
    done(error=error, accepted=accepted, idle=idle, succeeded=dispatcher.metrics().succeeded)


class RetryMarker(Hooks):
    def __init__(self, write: Any) -> None:
        self.write = write

    def after_retry_scheduled(self, job: Job, attempt: int, delay: float) -> None:
        self.write(f"retry {job.id} {attempt} {delay}")


def cmd_retry(args: argparse.Namespace) -> None:
    events = line_writer(args.events)
    store = FileJobStore(args.store, fsync="always")
    dispatcher = Dispatcher(
        Config(
            workers=2,
            store=store,
            hooks=[RetryMarker(events)],
            retry=RetryPolicy(base_delay=0.05, factor=600.0, max_delay=30.0, jitter=None),
        )
    )

    def flaky(ctx: Any, job: Job) -> None:
        events(f"attempt {job.id} {ctx.attempt}")
        raise RuntimeError(f"attempt {ctx.attempt} fails")

    dispatcher.register_handler("flaky", flaky)
    dispatcher.register_handler("t", lambda ctx, job: events(f"ran {job.id}"))
    dispatcher.submit(Job("flaky", "flaky", max_attempts=4))
    dispatcher.submit(Job("later", "t", run_at=datetime.fromtimestamp(args.run_at, UTC)))
    dispatcher.start()
    threading.Event().wait()  # until killed


def cmd_block(args: argparse.Namespace) -> None:
    events = line_writer(args.events)
    store = FileJobStore(args.store, fsync="always")
    dispatcher = Dispatcher(Config(workers=1, store=store))

    def block(ctx: Any, job: Job) -> None:
        events(f"running {job.id} {ctx.attempt}")
        threading.Event().wait()

    dispatcher.register_handler("block", block)
    if not args.no_submit:
        dispatcher.submit(Job("stuck", "block", max_attempts=5))
    dispatcher.start()
    threading.Event().wait()  # until killed


def cmd_suicide(args: argparse.Namespace) -> None:
    events = line_writer(args.events)
    store = FileJobStore(args.store, fsync="always")
    dispatcher = Dispatcher(Config(workers=1, store=store))

    def suicide(ctx: Any, job: Job) -> None:
        events(f"attempt {job.id} {ctx.attempt}")
        os._exit(3)

    dispatcher.register_handler("suicide", suicide)
    dispatcher.register_handler("t", lambda ctx, job: events(f"ran {job.id}"))
    if args.submit:  # before start: the first attempt kills the process at once
        dispatcher.submit(Job("poison", "suicide", max_attempts=3))
        dispatcher.submit(Job("innocent", "t"))
    dispatcher.start()
    dispatcher.join(30)
    status = dispatcher.status("poison")
    dispatcher.stop()
    done(
        state=str(status.state),
        attempts=status.attempts,
        error=status.last_error,
        recovered=[(s.id, str(s.state), s.attempts) for s in store.recovered],
    )


def cmd_cancel(args: argparse.Namespace) -> None:
    events = line_writer(args.events)
    store = FileJobStore(args.store, fsync=args.fsync)
    dispatcher = Dispatcher(Config(workers=2, store=store))

    def block(ctx: Any, job: Job) -> None:
        events(f"running {job.id} {ctx.attempt}")
        threading.Event().wait()  # ignores its cancellation: only the kill ends it

    dispatcher.register_handler("block", block)
    dispatcher.submit(Job("cancelled-running", "block"))
    dispatcher.submit(Job("kept-running", "block"))
    dispatcher.start()
    seen = set()
    while len(seen) < 2:  # both running before anything else is submitted
        with open(args.events) as f:
            seen = {line.split()[1] for line in f if line.startswith("running")}
        threading.Event().wait(0.01)
    dispatcher.submit(Job("cancelled-queued", "block"))
    dispatcher.submit(Job("kept-queued", "block"))
    later = datetime.now(UTC) + timedelta(hours=1)
    dispatcher.submit(Job("cancelled-scheduled", "block", run_at=later))
    answers = {
        job_id: dispatcher.cancel(job_id)
        for job_id in ("cancelled-running", "cancelled-queued", "cancelled-scheduled")
    }
    events(f"cancelled {json.dumps(answers, sort_keys=True)}")
    threading.Event().wait()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    for p in (run, sub.add_parser("drain")):
        p.add_argument("--store", required=True)
        p.add_argument("--fsync", default="always")
        p.add_argument("--executed", required=True)
        p.add_argument("--workers", type=int, default=4)
    run.add_argument("--accepted", required=True)
    run.add_argument("--marker", required=True)
    run.add_argument("--prefix", required=True)
    run.add_argument("--jobs", type=int, default=1000)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--compact-bytes", type=int, default=32 * 1024)
    sub.add_parser("hold").add_argument("--store", required=True)
    sub.add_parser("fork").add_argument("--store", required=True)
    compact = sub.add_parser("compact")
    compact.add_argument("--store", required=True)
    compact.add_argument("--copy", required=True)
    compact.add_argument("--point", required=True)
    compact.add_argument("--compact-first", action="store_true")
    fsize = sub.add_parser("fsize")
    fsize.add_argument("--store", required=True)
    fsize.add_argument("--executed", required=True)
    fsize.add_argument("--room", type=int, default=300)
    retry = sub.add_parser("retry")
    retry.add_argument("--store", required=True)
    retry.add_argument("--events", required=True)
    retry.add_argument("--run-at", type=float, required=True)
    block = sub.add_parser("block")
    block.add_argument("--store", required=True)
    block.add_argument("--events", required=True)
    block.add_argument("--no-submit", action="store_true")
    suicide = sub.add_parser("suicide")
    suicide.add_argument("--store", required=True)
    suicide.add_argument("--events", required=True)
    suicide.add_argument("--submit", action="store_true")
    cancel = sub.add_parser("cancel")
    cancel.add_argument("--store", required=True)
    cancel.add_argument("--events", required=True)
    cancel.add_argument("--fsync", default="always")
    args = parser.parse_args()
    globals()[f"cmd_{args.command}"](args)


if __name__ == "__main__":
    main()
