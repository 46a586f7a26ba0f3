"""``csjd demo``: a realistic mix of jobs on the in-process engine, with live progress."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter
from typing import TextIO

from csjd_core.app import App
from csjd_core.backends.file import FileJobStore
from csjd_core.config import Config
from csjd_core.context import JobContext
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.errors import permanent
from csjd_core.retry import RetryPolicy

__all__ = ["build_demo_app", "run_demo"]

_DRAIN_TIMEOUT = 10.0  # seconds Ctrl-C lets running and ready jobs finish


def build_demo_app(config: Config, *, slow: float = 0.0) -> App:
    """An `App` with the demo's job types registered."""
    app = App(config=config, name="demo")
    flaky_failures: Counter[str] = Counter()
    lock = threading.Lock()

    @app.job("email.send", max_attempts=3)
    def send_email(to: str, subject: str) -> dict[str, str]:
        time.sleep(slow + random.uniform(0.005, 0.03))  # talking to an SMTP server
        return {"to": to, "status": "sent"}

    @app.job("api.sync", max_attempts=4, takes_context=True)
    def sync_account(ctx: JobContext, account: int) -> str:
        # A flaky downstream: the first one or two calls for an account fail.
        with lock:
            flaky_failures[str(account)] += 1
            calls = flaky_failures[str(account)]
        if calls <= account % 3:
            raise ConnectionError(f"upstream 503 for account {account}")
        return f"account {account} synced on attempt {ctx.attempt}"

    @app.job("payment.charge", max_attempts=5)
    def charge(card: str, cents: int) -> str:
        if card.startswith("0000"):
            raise permanent(ValueError(f"card {card[:4]}… declined: invalid number"))
        return f"charged {cents} cents"

    @app.job("report.build", timeout=0.2, max_attempts=2, takes_context=True)
    def build_report(ctx: JobContext, rows: int) -> int:
        # Cooperative: checks for cancellation while it works, so the timeout stops it.
        for _ in range(rows):
            if ctx.wait(0.01):
                ctx.raise_if_cancelled()
        return rows

    @app.job("legacy.import", max_attempts=2)
    def legacy_import(path: str) -> None:
        raise SystemExit(f"legacy importer called exit() on {path}")  # a panic, captured

    @app.job("digest.weekly")
    def weekly_digest(user: int) -> str:
        return f"digest for user {user}"

    return app


def _plan(app: App, jobs: int) -> None:
    j = app.jobs
    for i in range(jobs):
        j["email.send"].delay(f"user{i}@example.com", "Welcome!")
        if i % 2 == 0:
            j["api.sync"].delay(i)
        if i % 5 == 0:
            j["payment.charge"].delay("4242424242424242" if i % 10 else "0000111122223333", 1999)
    j["report.build"].delay(10)  # finishes within its timeout
    j["report.build"].delay(500)  # runs past its 0.2 s timeout twice, then fails
    j["legacy.import"].delay("/srv/legacy/users.csv")
    j["digest.weekly"].apply_async(args=[7], countdown=1.0)  # scheduled for later


def _interrupted(dispatcher: BaseDispatcher, store: str | None, out: TextIO) -> int:
    """Ctrl-C: stop like a worker does on SIGTERM (a second Ctrl-C exits at once)."""
    print(
        f"\ninterrupted: draining for up to {_DRAIN_TIMEOUT:.0f} s (Ctrl-C again to exit now)",
        file=out,
    )
    try:
        report = dispatcher.stop(timeout=_DRAIN_TIMEOUT)
    except KeyboardInterrupt:
        print("second Ctrl-C: exiting without draining", file=out)
        os._exit(130)  # like kill -9: a file store recovers its jobs on the next run
    print(f"stop report: {report}", file=out)
    if store and report.left_pending:
        print(
            f"{report.left_pending} unfinished jobs stay in {store}: run the same command to "
            "finish them",
            file=out,
        )
    return 130


def run_demo(
    *,
    jobs: int = 20,
    workers: int = 4,
    store: str | None = None,
    slow: float = 0.0,
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo and print progress and a final metrics table.

    Args:
        jobs: users to simulate (each gets an email, some a sync and a charge).
        workers: worker threads.
        store: a `FileJobStore` path for the durable mode; kill the demo and run it again to
            see the jobs it recovers.
        slow: extra seconds each email takes, to leave time for a kill.

    Returns:
        The process exit code (0 when every job reached the state the demo expects).
    """
    config = Config(
        workers=workers,
        retry=RetryPolicy(base_delay=0.05, max_delay=0.4),
        store=FileJobStore(store) if store else None,
    )
    app = build_demo_app(config, slow=slow)
    where = f"durable file store {store}" if store else "memory"
    print(f"csjd demo: {workers} workers, in-process ({where}), {jobs} users", file=out)
    if store:
        print(
            f"pid {os.getpid()}: `kill -9 {os.getpid()}` while it runs, then run the same "
            "command again to see what it recovers (--slow SECONDS makes each email slower: "
            "a longer window)",
            file=out,
        )
    started = time.monotonic()
    dispatcher = app.dispatcher
    dispatcher.start()
    recovered = config.store.recovered if isinstance(config.store, FileJobStore) else []
    if recovered:
        kinds = Counter(f"{s.type} ({s.state})" for s in recovered)
        print(f"recovered {len(recovered)} unfinished jobs from the previous run:", file=out)
        for kind, count in sorted(kinds.items()):
            print(f"  {count:4d} x {kind}", file=out)
        print("running them; no new jobs are planned this time", file=out)
    else:
        _plan(app, jobs)
    try:
        while not app.wait(0.25):
            m = dispatcher.metrics()
            print(
                f"  t={time.monotonic() - started:4.1f}s pending={dispatcher.pending():3d} "
                f"succeeded={m.succeeded:3d} retried={m.retried:3d} failed={m.failed:3d} "
                f"panics={m.panics}",
                file=out,
            )
    except KeyboardInterrupt:
        return _interrupted(dispatcher, store, out)
    m = dispatcher.metrics()
    report = dispatcher.stop(timeout=5)
    elapsed = time.monotonic() - started
    print(f"\nall jobs done in {elapsed:.2f}s; stop report: {report}\n", file=out)
    width = max(len(name) for name in m.__slots__)
    print("metric".ljust(width) + "  value", file=out)
    for name in m.__slots__:
        print(f"{name.ljust(width)}  {getattr(m, name):5d}", file=out)
    ok = m.processed == m.succeeded + m.failed + m.retried and report.clean
    if not recovered:
        ok = ok and m.accepted == m.succeeded + m.failed
    print(
        "\nexpected: payment.charge with card 0000… fails at once (permanent error); "
        "report.build(500) times out twice; legacy.import panics twice (SystemExit captured); "
        "everything else succeeds, some after retries.",
        file=out,
    )
    return 0 if ok else 1
