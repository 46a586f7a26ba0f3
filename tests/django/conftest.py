"""Fixtures for the csjd_django tests (Django itself is configured by pytest-django)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import csjd_django


@pytest.fixture(autouse=True)
def fresh_csjd_app() -> Iterator[None]:
    """Each test starts with the app unconfigured and ends with its dispatcher stopped."""
    csjd_django.app.reset()
    yield
    csjd_django.app.reset()
