"""Fixtures for the csjd_django tests (Django itself is configured by pytest-django)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

import csjd_django


@pytest.fixture(autouse=True)
def fresh_csjd_app() -> Iterator[None]:
    """Each test starts with the app unconfigured and ends with its dispatcher stopped."""
    csjd_django.app.reset()
    yield
    csjd_django.app.reset()


@pytest.fixture
def redis_mode(redis_url: str, redis_client: Any) -> Iterator[Any]:
    """The project in Redis mode on the suite's (flushed) server; yields a redis client."""
    with override_settings(
        CSJD_MODE="redis",
        CSJD_REDIS_URL=redis_url,
        CSJD_BLOCK=0.2,
        CSJD_HEARTBEAT_INTERVAL=0.3,
        CSJD_CLAIM_INTERVAL=0.3,
        CSJD_LEASE=2.0,
    ):
        yield redis_client
