"""Fixtures of the operations tests (helpers in ``ops_support.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_support import Cli


@pytest.fixture
def cli(tmp_path: Path, redis_client: Any, redis_url: str) -> Iterator[Cli]:
    """``csjd`` commands against the (flushed) session server."""
    made = Cli(tmp_path, redis_url)
    try:
        yield made
    finally:
        made.close()
