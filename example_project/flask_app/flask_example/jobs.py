"""The example's jobs. ``example.greet`` is registered by the Django example too: either app
can hand one to the other's workers by sending it to their queue (the same wire format):
``greet.apply_async(["Ada"], queue="shop")`` from here runs on the shop's ``csjd_worker``."""

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
