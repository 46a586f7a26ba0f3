"""The example's jobs. ``example.greet`` is registered by the Django example too: a job
submitted by either can be run by the other's workers (same Redis stream, same payload)."""

from __future__ import annotations

from flask import current_app

from flask_example.extensions import csjd


@csjd.job("example.greet")
def greet(name: str) -> str:
    """Greet ``name`` (the result is kept in the job's status)."""
    return f"hello {name}"


@csjd.job("example.whoami")
def whoami() -> dict[str, str]:
    """Say which Flask app ran the job: every job runs inside its app's application context."""
    return {"app": current_app.name, "mode": current_app.config["CSJD_MODE"]}
