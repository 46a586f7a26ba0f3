"""A Redis-mode app with periodic jobs for the schedule tests (imported by ``csjd worker``
subprocesses started in this directory).

Everything comes from the environment, so each test points it at its own Redis and files:
``CSJD_TEST_REDIS_URL`` (the server), ``CSJD_SCHED_LOG`` (each run appends ``job_id pid``, one
``O_APPEND`` write per run, so lines of concurrent processes never interleave and a SIGKILL
never tears one), ``CSJD_SCHED_CATCH_UP`` (``tick``'s policy, default ``latest``) and
``CSJD_SCHED_HOURLY`` (``1``: also an ``every(hours=1)`` schedule).
"""

from __future__ import annotations

import os

from csjd_core import App, JobContext, every
from csjd_core.config import DistributedConfig, RedisConfig

app = App(
    mode="redis",
    name="schedapp",
    redis=RedisConfig.from_url(os.environ["CSJD_TEST_REDIS_URL"]),
    distributed=DistributedConfig(
        workers=2,
        queues=("default",),
        lease=1.0,
        heartbeat_interval=0.2,
        claim_interval=0.2,
        block=0.2,
        retry={"base_delay": 0.05, "max_delay": 0.2},
    ),
)


def _record(ctx: JobContext) -> None:
    line = f"{ctx.job_id} {os.getpid()}\n".encode()
    fd = os.open(os.environ["CSJD_SCHED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# No max_running: a slot is never skipped because an earlier run is unfinished (a run on a
# SIGKILLed worker stays "running" until its lease ends), so every slot must be enqueued.
@app.job(
    "tick",
    takes_context=True,
    schedule=every(seconds=1),
    catch_up=os.environ.get("CSJD_SCHED_CATCH_UP", "latest"),
    max_running=None,
)
def tick(ctx: JobContext) -> None:
    """Record this run."""
    _record(ctx)


if os.environ.get("CSJD_SCHED_HOURLY") == "1":

    @app.job("hourly", takes_context=True, schedule=every(hours=1), max_running=None)
    def hourly(ctx: JobContext) -> None:
        """Record this run."""
        _record(ctx)
