"""The real-browser tests' Chromium: the system's (Debian's ``chromium``, installed by
``.ci/run``) driven by Playwright's Python package; ``playwright install`` is never needed.

Without that browser (or without Playwright) a test is skipped locally with the reason, and
fails under ``CI=true``. Used by the Django admin page's and the Flask dashboard's tests.
"""

from __future__ import annotations

import os

import pytest

CHROMIUM = os.environ.get("CSJD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_chromium() -> str:
    """The system Chromium's path; skip (locally) or fail (CI) without it or without
    Playwright."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401, PLC0415
    except ImportError:
        problem = "the playwright package is not installed (pip install -e '.[dev]')"
    if problem is None and not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        problem = (
            f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or point "
            "CSJD_TEST_CHROMIUM at one)"
        )
    if problem is not None:
        if _in_ci():
            pytest.fail(
                f"CI=true and {problem}: .ci/run installs Debian's chromium, check its "
                "output above",
                pytrace=False,
            )
        pytest.skip(f"real-browser test skipped: {problem}")
    return CHROMIUM
