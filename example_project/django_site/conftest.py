"""Test settings for the example shop: how a project tests code that enqueues CSJD jobs."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def csjd_immediate(settings: Any) -> None:
    """Run every job at enqueue, in the test's thread: ``handle.result()`` is ready at once, and
    failures are in the job's status. (pytest-django's ``settings`` fixture restores the mode
    after the test; csjd_django rebuilds its dispatcher whenever a ``CSJD_*`` setting changes.)
    """
    settings.CSJD_MODE = "immediate"
