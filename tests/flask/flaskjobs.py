"""Jobs the csjd_flask tests run, defined at module level on one extension object, as an
application would (the fixtures build a fresh Flask app per test and call ``init_app``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from flask import current_app, g

from csjd_core import JobContext, permanent
from csjd_flask import CSJD

csjd = CSJD()

#: Set by the tests that hold a job running (e.g. to see the in-process workers start).
release = threading.Event()


@csjd.job("flask.greet")
def greet(name: str) -> str:
    return f"hello {name}"


@csjd.job("flask.whoami")
def whoami() -> dict[str, Any]:
    """Where the job ran: the app, its config, a fresh ``g``."""
    seen_before = getattr(g, "marker", None)
    g.marker = "set-by-job"
    return {
        "app": current_app.name,
        "greeting": current_app.config.get("GREETING"),
        "g_before": seen_before,
        "thread": threading.current_thread().name,
    }


@csjd.job("flask.async_whoami")
async def async_whoami() -> str:
    return current_app.name


@csjd.job("flask.attempt", takes_context=True)
def attempt(ctx: JobContext, label: str) -> dict[str, Any]:
    return {"label": label, "attempt": ctx.attempt, "app": current_app.name}


@csjd.job("flask.fails", max_attempts=2)
def fails() -> None:
    raise permanent(ValueError("bad input"))


@csjd.job("flask.flaky", max_attempts=3)
def flaky(succeed_on: int) -> int:
    """Fails until attempt ``succeed_on`` (counted per app in ``app.config``)."""
    count = current_app.config["FLAKY_CALLS"] = current_app.config.get("FLAKY_CALLS", 0) + 1
    if count < succeed_on:
        raise RuntimeError(f"attempt {count} fails")
    return count


@csjd.job("flask.blocks")
def blocks() -> str:
    release.wait(10)
    return "released"


@csjd.job("flask.naps")
def naps(seconds: float, started: str) -> str:
    """Creates the file ``started``, then sleeps (a job still running when its worker process
    is told to stop; in Redis mode a status says "running" from delivery, before the handler
    starts, hence the file)."""
    Path(started).touch()
    time.sleep(seconds)
    return f"slept {seconds}"


@csjd.job("flask.progress", takes_context=True)
def report_progress(ctx: JobContext, total: int) -> int:
    """Reports progress up to ``total``, the last step with a message."""
    for step in range(1, total + 1):
        ctx.set_progress(step, total, f"item {step} of {total}")
    return total
