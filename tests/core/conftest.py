"""Fixtures of the core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core_support import Harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()
