"""Fixtures of the outbox fault tests (helpers in ``outbox_support.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from outbox_support import Site


@pytest.fixture
def sites(tmp_path: Path, postgres_url: str) -> Iterator[Callable[..., Site]]:
    """``sites(redis_url, **env)``: the test project on this test's own PostgreSQL database
    (migrated) and the Redis at ``redis_url``; every process it started is killed at the end."""
    made: list[Site] = []

    def make(redis_url: str, **env: str) -> Site:
        site = Site(tmp_path / f"site{len(made)}", postgres_url, redis_url, **env)
        made.append(site)
        if len(made) == 1:
            site.migrate()
        return site

    try:
        yield make
    finally:
        for site in made:
            site.close()
