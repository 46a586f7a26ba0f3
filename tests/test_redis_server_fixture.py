"""The throwaway Redis server fixtures do what the rest of the suite relies on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from redis_server import (
    SERVER_ENV,
    RedisServerError,
    RedisServerProcess,
    ServerBinaryNotFound,
    binary_version,
    find_server_binary,
)

ServerFactory = Callable[..., RedisServerProcess]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_client_can_ping_set_and_get(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    redis_client.set("csjd:test:key", "value")
    assert redis_client.get("csjd:test:key") == b"value"


def test_each_test_starts_with_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_session_server_listens_on_loopback_without_persistence(
    redis_server: RedisServerProcess, redis_url: str, redis_client: redis.Redis
) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_client.config_get("save") == {"save": ""}
    assert redis_client.config_get("appendonly") == {"appendonly": "no"}
    assert redis_server.info("server")["process_id"] == str(redis_server.pid)


def test_version_matches_the_selected_binary(redis_server: RedisServerProcess) -> None:
    running = redis_server.version()
    assert running == binary_version(redis_server.binary)
    assert running.major >= 7  # Streams commands the backend uses (XAUTOCLAIM ...) need 6.2+
    expected = {"redis": "redis", "valkey": "valkey"}.get(os.environ.get(SERVER_ENV, ""))
    if expected is not None:
        assert running.server == expected


def test_killed_server_with_fsync_always_aof_keeps_an_acknowledged_write(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    client = redis.Redis.from_url(server.url)
    try:
        client.set("survivor", "1")
    finally:
        client.close()
    port, old_pid = server.port, server.pid
    assert old_pid is not None

    server.kill()
    assert not server.running
    assert not _pid_exists(old_pid)
    server.restart()

    assert (server.port, server.running) == (port, True)
    assert server.pid != old_pid
    client = redis.Redis.from_url(server.url)
    try:
        assert client.get("survivor") == b"1"
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()


def test_killed_server_without_persistence_loses_its_data(
    redis_server_factory: ServerFactory,
) -> None:
    server = redis_server_factory()
    client = redis.Redis.from_url(server.url)
    try:
        client.set("ephemeral", "1")
        server.kill()
        server.restart()
        assert client.get("ephemeral") is None  # redis-py reconnects to the new process
    finally:
        client.close()


def test_stop_ends_the_process_by_pid_and_is_idempotent(tmp_path: Path) -> None:
    server = RedisServerProcess(find_server_binary(os.environ.get(SERVER_ENV)), tmp_path)
    server.start()
    pid = server.pid
    assert pid is not None
    assert _pid_exists(pid)
    server.stop()
    assert not _pid_exists(pid)
    assert server.returncode is not None
    server.stop()


def test_a_server_that_cannot_start_reports_its_log(redis_server_factory: ServerFactory) -> None:
    with pytest.raises(RedisServerError, match="exited with status") as excinfo:
        redis_server_factory(extra_args=["--no-such-option", "1"])
    assert "no-such-option" in str(excinfo.value)


def test_an_unknown_server_choice_is_an_error() -> None:
    with pytest.raises(ServerBinaryNotFound, match="not understood"):
        find_server_binary("memcached")
    with pytest.raises(ServerBinaryNotFound, match="not an executable file"):
        find_server_binary("/nonexistent/redis-server")
