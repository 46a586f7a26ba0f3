"""An example application for the ``csjd`` command-line tests (imported by worker subprocesses).

Everything comes from the environment, so each test points the CLI at its own Redis and files:
``CSJD_TEST_REDIS_URL`` (the server), ``CSJD_OPS_LOG`` (a file each handler appends
``job_id pid`` to, one line per execution; ``record`` also appends to ``<log>.started`` as it
begins), ``CSJD_OPS_LEASE`` (seconds, default 1),
``CSJD_OPS_MAX_PENDING`` (the per-queue cap) and ``CSJD_OPS_QUEUES`` (the queues, comma
separated; default ``default``).
"""

from __future__ import annotations

import os
import time

from csjd_core import App, JobContext
from csjd_core.config import DistributedConfig, RedisConfig

LEASE = float(os.environ.get("CSJD_OPS_LEASE", "1"))

app = App(
    mode="redis",
    name="opsapp",
    redis=RedisConfig.from_url(os.environ["CSJD_TEST_REDIS_URL"]),
    distributed=DistributedConfig(
        workers=2,
        queues=tuple(os.environ.get("CSJD_OPS_QUEUES", "default").split(",")),
        lease=LEASE,
        heartbeat_interval=LEASE / 5,
        claim_interval=LEASE / 5,
        block=0.2,
        max_deliveries=10,
        max_pending_jobs=int(os.environ.get("CSJD_OPS_MAX_PENDING", "20000")),
        retry={"base_delay": 0.05, "max_delay": 0.2},
    ),
)


def _record(ctx: JobContext, suffix: str = "") -> None:
    # One short O_APPEND write per execution: lines from concurrent processes never interleave.
    line = f"{ctx.job_id} {os.getpid()}\n".encode()
    path = os.environ["CSJD_OPS_LOG"] + suffix
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.job("record", takes_context=True)
def record(ctx: JobContext, pause: float = 0.0, pause_first: float = 0.0) -> str:
    """Sleep ``pause`` seconds (``pause_first`` more on the first attempt), then append this
    job's id to the log (and, before sleeping, to the log of started attempts)."""
    _record(ctx, ".started")
    time.sleep(pause + (pause_first if ctx.attempt == 1 else 0.0))
    _record(ctx)
    return ctx.job_id


@app.job("record_b", queue="b", takes_context=True)
def record_b(ctx: JobContext) -> None:
    """`record` for queue ``b``."""
    _record(ctx)


@app.job("explode", max_attempts=1)
def explode(reason: str) -> None:
    """Always fails (dead-lettered on its only attempt)."""
    raise RuntimeError(f"boom: {reason}")


@app.job("flaky", takes_context=True)
def flaky(ctx: JobContext) -> None:
    """Fails its first attempt, succeeds on the second (a retry, then a success)."""
    if ctx.attempt == 1:
        raise ConnectionError("try again")
    _record(ctx)


def make_app() -> App:
    """A zero-argument factory (``opsapp:make_app``)."""
    return app


inprocess = App(mode="inprocess", name="inproc")


def needs_arguments(url: str) -> App:
    """Not a zero-argument factory: ``csjd`` cannot call it."""
    return app


if os.environ.get("CSJD_OPS_OUTBOX_DB"):  # a SQLite outbox, for `csjd relay` (SQLAlchemy)
    from sqlalchemy import MetaData, create_engine

    from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox, outbox_tables

    OUTBOX_METADATA = MetaData()
    app.outboxes = (
        SQLAlchemyOutbox(
            create_engine(f"sqlite:///{os.environ['CSJD_OPS_OUTBOX_DB']}"),
            *outbox_tables(OUTBOX_METADATA),
            name="sqlite:ops",
        ),
    )
