"""Connections to Redis and the Lua scripts: two clients (commands, and blocking reads) made on
first use, every script registered once and run straight on a pooled connection.

A Redis Cluster gets redis-py's own ``RedisCluster``: it keeps the slot table and follows
``MOVED``/``ASK``. Our fast path (a script or a pipeline sent straight on a pooled connection)
asks it for the node that serves the key and uses that node's pool; a redirection reply means
the command did not run there, so it is sent again through ``RedisCluster``, which follows it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError
from redis.retry import Retry

from csjd_core.config import RedisConfig, split_url

_hiredis_pack: Any
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py without hiredis: its own packer
    _hiredis_pack = None

__all__ = [
    "REDIRECTED",
    "REDIS_DOWN",
    "SCRIPTS",
    "SLOT_MIGRATING",
    "Connection",
    "NotReplicated",
    "NotSent",
    "packed",
]

#: The errors that mean "Redis could not be reached" (as opposed to a refusal); a cluster
#: that lost a master is down for its slots until a replica takes over.
REDIS_DOWN = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterUnreachableError,
)

#: A cluster node's answer "not here (or not now)": the command did not run.
REDIRECTED = (MovedError, AskError, TryAgainError)

#: A slot being migrated (resharding), as the callers of `Connection.run` see it: ``TRYAGAIN``
#: (a script's keys are split between the two nodes, or one is missing: Redis refuses it until
#: the migration ends), or redis-py giving up after following redirections for about 0.4 s
#: (``ClusterError: TTL exhausted``). The command did not run: it may be sent again later.
SLOT_MIGRATING = (TryAgainError, redis.exceptions.ClusterError)

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
    "resign",
    "requeue_dead",
    "progress",
    "cancel",
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


class NotReplicated(redis.RedisError):
    """The command ran on the master, but no replica acknowledged it in time."""


#: Seconds between two readings of a cluster's slot table made after a node could not be
#: reached (each one is a CLUSTER SLOTS round trip; a failover takes seconds).
SLOT_REFRESH_INTERVAL = 0.25


def _load_script(name: str) -> str:
    return resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()


class Connection:
    """The command client (`client`) and the reader's (`reader`), created on first use: each a
    ``redis.Redis`` (one pool), or for a cluster a ``RedisCluster`` (a pool per node)."""

    def __init__(self, redis_config: RedisConfig, block: float) -> None:
        self.redis_config = redis_config
        self.cluster = redis_config.is_cluster
        self._block = block
        self._client: Any = None  # redis.Redis | RedisCluster
        self._reader: Any = None
        self._scripts: dict[str, Any] = {}
        self._init_lock = threading.Lock()  # creates the two clients, once each
        self._refresh_lock = threading.Lock()
        self._next_refresh: dict[int, float] = {}  # id(client) -> monotonic time

    def _make_client(self, socket_timeout: float) -> Any:
        rc = self.redis_config
        # No blind client retries: a timed-out XREADGROUP or XADD must surface to our code.
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": rc.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if self.cluster:
            return self._make_cluster(options)
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

    def _make_cluster(self, options: dict[str, Any]) -> RedisCluster:
        """A ``RedisCluster`` over the startup nodes. Redirections are followed whatever the
        retry setting; a node that cannot be reached is reported at once (the slot table is
        read again on the next command), as a single Redis is."""
        rc = self.redis_config
        make_node: Any = ClusterNode  # redis-py leaves it untyped
        nodes = [make_node(host, port) for host, port in rc.startup_nodes]
        for name, value in (("username", rc.username), ("password", rc.password)):
            if value is not None:
                options[name] = value
        if rc.url is None:
            return RedisCluster(startup_nodes=nodes, ssl=rc.ssl, **options)
        # redis-py reads the credentials, TLS and query options from a plain URL of one node.
        parts = split_url(rc.url)
        scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
        user = parts.netloc.rpartition("@")[0]
        host = f"[{nodes[0].host}]" if ":" in nodes[0].host else nodes[0].host  # IPv6
        url = f"{scheme}://{user + '@' if user else ''}{host}:{nodes[0].port}" + (
            f"?{parts.query}" if parts.query else ""
        )
        return RedisCluster(url=url, startup_nodes=nodes[1:], **options)

    @property
    def client(self) -> Any:
        """The command client (created on first use, by one thread: the first submits of a
        web process may come from several at once)."""
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
    def reader(self) -> Any:
        """The reader's client: blocking reads wait longer than its socket timeout."""
        reader = self._reader
        if reader is None:
            with self._init_lock:
                if self._reader is None:
                    self._reader = self._make_client(self._block + self.redis_config.socket_timeout)
                reader = self._reader
        return reader

    def load_scripts(self) -> None:
        """Load every script into Redis, or into every master of a cluster (pipelined calls
        use EVALSHA without a fallback)."""
        client = self.client
        for script in self._scripts.values():
            client.script_load(script.script)

    def pool_for(self, client: Any, key: str) -> Any:
        """The connection pool of ``client`` that serves ``key``: its only one, or that of the
        cluster node holding the key's slot (from redis-py's slot table)."""
        if not self.cluster:
            return client.connection_pool
        return client.get_redis_connection(client.get_node_from_key(key)).connection_pool

    def node_unreachable(self, client: Any, *, moved: bool = False) -> None:
        """A node of ``client`` could not be reached on our fast path (`pool_for`), or
        answered ``MOVED`` (``moved``): read a cluster's slot table again — at most every
        `SLOT_REFRESH_INTERVAL` seconds for an unreachable node, at once after ``MOVED``.

        ``RedisCluster`` does this for the commands it sends itself, never for ours: without
        it a killed master's slots stay with its dead address after a replica took them
        over, and every script and reader cycle for them fails for good. Until the replica
        is promoted the table still names the dead master, so this runs again on the next
        failure. A failed reading is ignored: the caller raises its own error (or retries).
        """
        if not self.cluster:
            return
        now = time.monotonic()
        with self._refresh_lock:
            if not moved and now < self._next_refresh.get(id(client), 0.0):
                return
            self._next_refresh[id(client)] = now + SLOT_REFRESH_INTERVAL
        with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
            client.nodes_manager.initialize()

    def slot_groups(self, keys: list[str]) -> list[list[str]]:
        """``keys`` grouped by slot, in first-seen order: one multi-key command (an
        ``XREADGROUP`` over several streams) per group. One group on a single Redis."""
        if not self.cluster:
            return [keys] if keys else []
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(self.client.keyslot(key), []).append(key)
        return list(groups.values())

    def redirected(self, command: tuple[Any, ...]) -> Any:
        """Run ``command`` (an ``EVALSHA``) through ``RedisCluster``, which follows ``MOVED``
        and ``ASK`` and waits out ``TRYAGAIN``: a redirected command did not run, so sending it
        again is safe. The node it lands on is given the script if it lacks it."""
        client = self.client
        try:
            return client.execute_command(*command)
        except NoScriptError:
            self.load_scripts()
            return client.execute_command(*command)

    def evalsha(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        """The EVALSHA command of script ``name``, to send or to pipeline."""
        return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    def run(self, name: str, keys: list[str], args: list[Any], *, wait_replica: float = 0.0) -> Any:
        """Run a script in one round trip on a pooled connection.

        Straight on the connection: redis-py's command path (events, retries, observability)
        costs as much as the round trip itself on a small machine. A server that lost its
        scripts (restarted) is given them again (SCRIPT LOAD: the worker ACL has no EVAL).

        Args:
            wait_replica: if positive, seconds to wait (``WAIT 1``, on the same connection)
                for a replica to acknowledge the script's writes.

        Raises:
            NotSent: no connection could be made (nothing was sent).
            NotReplicated: ``wait_replica`` passed without a replica's acknowledgement (the
                script ran on the master).
            redis.RedisError: Redis refused it, or the connection failed after sending.
        """
        client = self.client  # registers the scripts on first use
        command = self.evalsha(name, keys, args)
        if wait_replica > 0:
            return self._run_replicated(name, keys[0], command, wait_replica)
        try:
            pool = self.pool_for(client, keys[0])
            conn: Any = pool.get_connection()  # redis-py leaves its methods untyped
        except REDIS_DOWN as exc:
            self.node_unreachable(client)
            raise NotSent(str(exc)) from exc
        try:
            conn.send_packed_command(packed(conn, [command]))
            try:
                return conn.read_response()
            except NoScriptError:
                self._load_on(conn, name)
                conn.send_packed_command(packed(conn, [command]))
                return conn.read_response()
        except REDIRECTED:
            pool.release(conn)  # a reply: in step, and free again before the slow path
            conn = None
            return self.redirected(command)
        except redis.ResponseError:
            raise  # a reply: the connection is in step
        except BaseException as exc:
            conn.disconnect()
            if isinstance(exc, REDIS_DOWN):  # the node died or is cut off: a failover?
                self.node_unreachable(client)
            raise
        finally:
            if conn is not None:
                pool.release(conn)

    def _run_replicated(self, name: str, key: str, command: tuple[Any, ...], timeout: float) -> Any:
        """`run` followed by ``WAIT 1`` on the same connection (WAIT counts the writes of its
        own connection): a redirection is followed here, on our own connection — ``MOVED``
        by reading the slot table again, ``ASK``/``TRYAGAIN`` (a slot migrating) by waiting
        for the migration to end — until ``socket_timeout`` has passed."""
        client = self.client
        wait = ("WAIT", 1, max(1, int(timeout * 1000)))
        deadline = time.monotonic() + self.redis_config.socket_timeout
        while True:
            try:
                pool = self.pool_for(client, key)
                conn: Any = pool.get_connection()
            except REDIS_DOWN as exc:
                self.node_unreachable(client)
                raise NotSent(str(exc)) from exc
            try:
                conn.send_packed_command(packed(conn, [command, wait]))
                replies: list[Any] = []
                for _ in range(2):
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:  # a reply: the connection is in step
                        replies.append(exc)
            except BaseException as exc:
                conn.disconnect()
                if isinstance(exc, REDIS_DOWN):
                    self.node_unreachable(client)
                raise
            finally:
                pool.release(conn)
            reply, acknowledged = replies
            if isinstance(reply, NoScriptError):
                self.load_scripts()
                continue
            if isinstance(reply, REDIRECTED) and time.monotonic() < deadline:
                if isinstance(reply, MovedError):
                    self.node_unreachable(client, moved=True)
                else:
                    time.sleep(0.05)
                continue
            if isinstance(reply, Exception):
                raise reply
            if isinstance(acknowledged, Exception) or int(acknowledged) < 1:
                raise NotReplicated(
                    f"no replica acknowledged {name} within {timeout:g} s"
                    + (f" ({acknowledged})" if isinstance(acknowledged, Exception) else "")
                )
            return reply

    def _load_on(self, conn: Any, name: str) -> None:
        """Give the server behind ``conn`` the script ``name`` (it restarted without it)."""
        conn.send_packed_command(conn.pack_command("SCRIPT", "LOAD", self._scripts[name].script))
        conn.read_response()

    def close(self) -> None:
        """Close both clients; a later call makes new ones (a closed ``RedisCluster``, unlike
        a closed pool, cannot be used again)."""
        with self._init_lock:
            clients, self._reader, self._client = (self._reader, self._client), None, None
        for client in clients:
            if client is not None:
                client.close()
