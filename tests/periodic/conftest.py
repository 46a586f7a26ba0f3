"""Fixtures of the periodic-job tests (helpers in ``periodic_support.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from periodic_support import Fleet


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """``fleets(url, **env)``: worker processes on the server at ``url``; all killed at the
    end of the test."""
    made: list[Fleet] = []

    def make(url: str, **env: str) -> Fleet:
        fleet = Fleet(tmp_path / f"fleet{len(made)}", url, **env)
        made.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in made:
            fleet.close()
