"""CSJD for Django: ``import csjd_django as csjd`` then ``@csjd.job("email")``.

Add ``"csjd_django"`` to ``INSTALLED_APPS``; ``jobs.py`` (and ``tasks.py``) modules of installed
apps are imported at startup so every process knows every job type. Settings are the
``CSJD_*`` names (see docs/django.md).
"""

from __future__ import annotations

from typing import Any

from csjd_django.app import DjangoApp, DjangoJobFunction

__all__ = ["DjangoJobFunction", "app", "cancel", "job", "status", "wait"]

#: The project's CSJD app: one per process, configured from settings on first use.
app = DjangoApp()

#: ``@csjd.job("email", max_attempts=5, timeout=30, queue=..., takes_context=False)``
job = app.job


def status(job_id: str, queue: str | None = None) -> Any:
    """The `JobStatus` of a job enqueued by this project."""
    return app.status(job_id, queue)


def cancel(job_id: str, queue: str | None = None) -> bool:
    """Cancel a job enqueued by this project (`csjd_core.App.cancel`): True when it was
    cancelled or its cancellation requested of a running attempt, False when it had already
    ended; `JobNotFound` when no record exists."""
    return app.cancel(job_id, queue)


def wait(timeout: float | None = None) -> bool:
    """Block until every enqueued job finished (tests in in-process mode)."""
    return app.wait(timeout)
