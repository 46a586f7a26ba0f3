"""An application with periodic jobs for the ``csjd schedule`` tests (Redis from
``CSJD_TEST_REDIS_URL``, as `opsapp`). Kept apart from `opsapp` so that the workers of the other
command-line tests tick no schedule."""

from __future__ import annotations

import os

from csjd_core import App, every
from csjd_core.config import DistributedConfig, RedisConfig

app = App(
    mode="redis",
    name="schedapp",
    redis=RedisConfig.from_url(os.environ["CSJD_TEST_REDIS_URL"]),
    distributed=DistributedConfig(workers=1, queues=("default",), block=0.2),
)


@app.job("cleanup", schedule="0 3 * * *", timezone="Europe/Paris", schedule_name="nightly")
def cleanup(days: int = 30) -> None:
    """A nightly job (never due during a test)."""


@app.job("report", schedule=every(hours=1), max_running=1)
def report() -> None:
    """An hourly job."""
