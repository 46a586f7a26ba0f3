"""Helpers of the csjd_flask tests that start worker processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLE_PROJECT = HERE.parents[1] / "example_project"
FLASK_EXAMPLE = EXAMPLE_PROJECT / "flask_app"
DJANGO_EXAMPLE = EXAMPLE_PROJECT / "django_site"

#: Seconds to wait for a job's result once its worker has exited.
DEADLINE = 5.0


def flask_env(config: dict[str, Any]) -> dict[str, str]:
    """The environment of a Flask worker process: ``CSJD_*`` keys as ``FLASK_CSJD_*`` variables
    (read by ``app.config.from_prefixed_env()`` in the apps' factories)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "CSJD_"))}
    env.update({f"FLASK_{key}": str(value) for key, value in config.items()})
    return env


def worker_pid(worker_id: str | None) -> int:
    """The pid in a Redis consumer name (``host:pid:suffix``)."""
    assert worker_id is not None
    return int(worker_id.split(":")[1])
