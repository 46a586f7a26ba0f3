"""Fixtures of the Redis tests: fast dispatchers and worker subprocesses.

Every fixture that talks to the session server depends on `redis_client` (it FLUSHALLs first),
so tests never see each other's keys. Helpers live in ``redis_support.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_support import Consumers, Dispatchers, Workers


@pytest.fixture
def consumers(redis_client: object, redis_url: str) -> Iterator[Consumers]:
    """`Consumers` on the session server (flushed first)."""
    made = Consumers(redis_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def server_url(request: pytest.FixtureRequest) -> str:
    """Where `dispatchers` and `workers` go: the session server, flushed first; a test
    parametrized with ``@pytest.mark.parametrize("server_url", ["redis", "cluster"],
    indirect=True)`` also runs on the session's 3-master Redis Cluster (flushed too)."""
    if getattr(request, "param", "redis") == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    request.getfixturevalue("redis_client")
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def dispatchers(server_url: str) -> Iterator[Dispatchers]:
    """A factory of fast dispatchers on a freshly flushed server (see `server_url`)."""
    made = Dispatchers(server_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def workers(tmp_path: Path, server_url: str) -> Iterator[Workers]:
    """A factory of worker subprocesses on a freshly flushed server (see `server_url`)."""
    made = Workers(tmp_path, server_url)
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
