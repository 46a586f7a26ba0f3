"""Fixtures of the Redis tests: fast dispatchers and worker subprocesses.

Every fixture that talks to the session server depends on `redis_client` (it FLUSHALLs first),
so tests never see each other's keys. Helpers live in ``redis_support.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import Dispatchers, Workers


@pytest.fixture
def dispatchers(redis_client: Any, redis_url: str) -> Iterator[Dispatchers]:
    """A factory of fast dispatchers on a freshly flushed session server."""
    made = Dispatchers(redis_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def workers(tmp_path: Path, redis_client: Any, redis_url: str) -> Iterator[Workers]:
    """A factory of worker subprocesses on the session server (flushed first)."""
    made = Workers(tmp_path, redis_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def private_workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker subprocesses for a private server (pass ``url=`` to each)."""
    made = Workers(tmp_path, "")
    try:
        yield made
    finally:
        made.close()
