"""Connections to Redis and the Lua scripts: two pools (commands, and blocking reads) made on
first use, every script registered once and run straight on a pooled connection."""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from csjd_core.config import RedisConfig

_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py without hiredis: its own packer
    _hiredis_pack = None

__all__ = ["REDIS_DOWN", "SCRIPTS", "Connection", "NotSent", "packed"]

#: The errors that mean "Redis could not be reached" (as opposed to a refusal).
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)

#: The scripts in ``lua/``, each one atomic step of the protocol (docs/distributed.md).
SCRIPTS = (
    "enqueue",
    "start",
    "read_start",
    "started",
    "settle",
    "promote",
    "reclaim",
    "renew",
    "release",
    "delete_consumer",
    "requeue_dead",
)


def packed(conn: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in the wire protocol, for ``conn.send_packed_command``.

    Our commands hold only ``str``, ``bytes`` and ``int``: hiredis packs each in one C call,
    where redis-py's generic path encodes every argument in Python (about a fifth of a busy
    worker's CPU).
    """
    if _hiredis_pack is None:
        output: list[bytes] = conn.pack_commands(commands)
        return output
    return [b"".join(map(_hiredis_pack, commands))]


class NotSent(redis.ConnectionError):
    """No connection could be made: the command was never sent (so it certainly did not run)."""


def _load_script(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


class Connection:
    """The command pool (`client`) and the reader's pool (`reader`), created on first use."""

    def __init__(self, redis_config: RedisConfig, block: float) -> None:
        self.redis_config = redis_config
        self._block = block
        self._client: redis.Redis | None = None
        self._reader: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._init_lock = threading.Lock()  # creates the two pools, once each

    def _make_client(self, socket_timeout: float) -> redis.Redis:
        rc = self.redis_config
        # No blind client retries: a timed-out XREADGROUP or XADD must surface to our code.
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": rc.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if rc.url is not None:
            extra = {
                k: v
                for k, v in (("username", rc.username), ("password", rc.password))
                if v is not None
            }
            return redis.Redis.from_url(rc.url, **options, **extra)
        host, _, port = (rc.addr or "").rpartition(":")
        return redis.Redis(
            host=host,
            port=int(port),
            db=rc.db,
            username=rc.username,
            password=rc.password,
            ssl=rc.ssl,
            **options,
        )

    @property
    def client(self) -> redis.Redis:
        """The command connection pool (created on first use, by one thread: the first
        submits of a web process may come from several at once)."""
        client = self._client
        if client is None:
            with self._init_lock:
                if self._client is None:
                    client = self._make_client(self.redis_config.socket_timeout)
                    for name in SCRIPTS:
                        self._scripts[name] = client.register_script(_load_script(name))
                    self._client = client  # published with its scripts registered
                client = self._client
        return client

    @property
    def reader(self) -> redis.Redis:
        """The reader's connection pool: blocking reads wait longer than its socket timeout."""
        reader = self._reader
        if reader is None:
            with self._init_lock:
                if self._reader is None:
                    self._reader = self._make_client(self._block + self.redis_config.socket_timeout)
                reader = self._reader
        return reader

    def load_scripts(self) -> None:
        """Load every script into Redis (pipelined calls use EVALSHA without a fallback)."""
        client = self.client
        for script in self._scripts.values():
            client.script_load(script.script)

    def evalsha(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        """The EVALSHA command of script ``name``, to send or to pipeline."""
        return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script in one round trip on a pooled connection.

        Straight on the connection: redis-py's command path (events, retries, observability)
        costs as much as the round trip itself on a small machine. A server that lost its
        scripts (restarted) is given them again (SCRIPT LOAD: the worker ACL has no EVAL).

        Raises:
            NotSent: no connection could be made (nothing was sent).
            redis.RedisError: Redis refused it, or the connection failed after sending.
        """
        pool = self.client.connection_pool  # registers the scripts on first use
        command = self.evalsha(name, keys, args)
        try:
            conn: Any = pool.get_connection()  # redis-py leaves its methods untyped
        except REDIS_DOWN as exc:
            raise NotSent(str(exc)) from exc
        try:
            conn.send_packed_command(packed(conn, [command]))
            try:
                return conn.read_response()
            except NoScriptError:
                conn.send_packed_command(
                    conn.pack_command("SCRIPT", "LOAD", self._scripts[name].script)
                )
                conn.read_response()
                conn.send_packed_command(packed(conn, [command]))
                return conn.read_response()
        except redis.ResponseError:
            raise  # a reply: the connection is in step
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def close(self) -> None:
        """Close both pools."""
        for client in (self._reader, self._client):
            if client is not None:
                client.close()
