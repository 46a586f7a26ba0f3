"""Routes: enqueue a greeting, then poll its status."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from csjd_core import JobNotFound
from flask_example.extensions import csjd
from flask_example.jobs import greet

bp = Blueprint("example", __name__)


@bp.post("/greet")
def enqueue_greeting() -> tuple[dict[str, Any], int]:
    """``POST /greet`` with ``name`` (form or JSON): enqueue ``example.greet``, answer 202."""
    data = request.get_json(silent=True) or request.form
    name = str(data.get("name") or "world")
    handle = greet.delay(name)
    return {"job_id": handle.id, "status": url_for("example.job_status", job_id=handle.id)}, 202


@bp.get("/jobs/<job_id>")
def job_status(job_id: str) -> tuple[dict[str, Any], int]:
    """``GET /jobs/ID``: the job's state and, once it succeeded, its result."""
    try:
        status = csjd.status(job_id)
    except JobNotFound:
        return {"error": f"no job {job_id}"}, 404
    return {
        "id": status.id,
        "state": str(status.state),
        "result": status.result,
        "last_error": status.last_error,
    }, 200
