"""Configuration of the in-process dispatcher."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from csjd_core.backends.base import Backend
from csjd_core.limits import (
    DEFAULT_MAX_DEAD_LETTERS,
    DEFAULT_MAX_RESULT_BYTES,
    MAX_ATTEMPTS,
    MAX_JOB_BYTES,
    MAX_WORKERS,
    brief,
    name_problem,
)
from csjd_core.retry import RetryPolicy, seconds

__all__ = ["Config", "DistributedConfig", "RedisConfig"]


def check_int(value: object, name: str, minimum: int, maximum: int | None = None) -> int:
    """Validate an integer setting.

    Raises:
        ValueError: naming the field and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {brief(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {brief(value)}")
    return value


def check_timeout(value: float | timedelta | None, name: str) -> float | None:
    """Validate an optional positive duration in seconds."""
    if value is None:
        return None
    result = seconds(value, name)
    if result == 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {brief(value)}")
    return result


def retry_policy(value: RetryPolicy | Mapping[str, Any], name: str) -> RetryPolicy:
    """A `RetryPolicy` from an instance or a mapping of its fields (unknown keys are errors)."""
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(RetryPolicy)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{name} has unknown keys {unknown}; known: {sorted(known)}")
        return RetryPolicy(**value)
    raise ValueError(f"{name} must be a RetryPolicy or a dict of its fields, got {brief(value)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Settings of an in-process `Dispatcher`.

    Args:
        workers: handlers that may run at once (worker threads).
        max_pending_jobs: cap on unfinished jobs (queued, scheduled, running, retrying);
            past it `submit` raises `QueueFull`.
        max_detached_handlers: how many timed-out handlers that ignore cancellation may be
            abandoned (their slot given a fresh worker); 0 keeps strict non-overlap.
        store: a durable backend such as `FileJobStore`; ``None`` keeps jobs in memory only.
        default_max_attempts: attempts for jobs that do not set ``max_attempts``.
        default_timeout: seconds per attempt for jobs that do not set ``timeout``.
        retry: the backoff policy (a `RetryPolicy` or a dict of its fields).
        hooks: `Hooks` objects called around each job.
        result_ttl: seconds a finished job's status and result stay queryable.
        max_results: at most this many finished jobs are remembered (oldest dropped first).
        max_result_bytes: the largest return value kept, as JSON; a larger one fails the job.
    """

    workers: int = 4
    max_pending_jobs: int = 10_000
    max_detached_handlers: int = 0
    store: Backend | None = None
    default_max_attempts: int = 3
    default_timeout: float | timedelta | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    hooks: Sequence[object] = ()
    result_ttl: float | timedelta = 600.0
    max_results: int = 100_000
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    def __post_init__(self) -> None:
        check_int(self.workers, "Config.workers", 1, MAX_WORKERS)
        check_int(self.max_pending_jobs, "Config.max_pending_jobs", 1)
        check_int(self.max_detached_handlers, "Config.max_detached_handlers", 0)
        check_int(self.default_max_attempts, "Config.default_max_attempts", 1, MAX_ATTEMPTS)
        check_int(self.max_results, "Config.max_results", 0)
        check_int(self.max_result_bytes, "Config.max_result_bytes", 0, MAX_JOB_BYTES)
        object.__setattr__(
            self, "default_timeout", check_timeout(self.default_timeout, "Config.default_timeout")
        )
        object.__setattr__(self, "result_ttl", seconds(self.result_ttl, "Config.result_ttl"))
        object.__setattr__(self, "retry", retry_policy(self.retry, "Config.retry"))
        if isinstance(self.hooks, str | bytes) or not isinstance(self.hooks, Sequence):
            raise ValueError(
                f"Config.hooks must be a sequence of hook objects, got {brief(self.hooks)}"
            )
        object.__setattr__(self, "hooks", tuple(self.hooks))
        if self.store is not None and (
            not isinstance(self.store, Backend) or not self.store.durable
        ):
            raise ValueError(
                "Config.store must be a durable store such as FileJobStore, "
                f"got {brief(self.store)}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """How to reach Redis (or Valkey). Give ``url`` or ``addr``, not both.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS.
        addr: ``"host:port"``.
        username, password: ACL credentials (never logged).
        db: database number.
        ssl: use TLS (implied by ``rediss://``).
        socket_timeout: seconds for a command's reply.
        connect_timeout: seconds to connect.
    """

    url: str | None = None
    addr: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    ssl: bool = False
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if (self.url is None) == (self.addr is None):
            raise ValueError("RedisConfig needs exactly one of url= or addr=")
        for name in ("url", "addr", "username", "password"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                shown = "***" if name == "password" else brief(value)
                raise ValueError(
                    f"RedisConfig.{name} must be a string, got {type(value).__name__} {shown}"
                )
        if not isinstance(self.ssl, bool):
            raise ValueError(f"RedisConfig.ssl must be True or False, got {brief(self.ssl)}")
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"RedisConfig.url must start with redis://, rediss:// or unix://, got "
                f"{redact_url(self.url)!r}"
            )
        if self.addr is not None:
            host, sep, port = self.addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"RedisConfig.addr must be 'host:port', got {brief(self.addr)}")
        check_int(self.db, "RedisConfig.db", 0)
        for name in ("socket_timeout", "connect_timeout"):
            if check_timeout(getattr(self, name), f"RedisConfig.{name}") is None:
                raise ValueError(f"RedisConfig.{name} must be positive seconds")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisConfig:
        """A config from a ``redis://`` / ``rediss://`` URL plus keyword options."""
        return cls(url=url, **options)

    @property
    def display(self) -> str:
        """Where this points, without the password (safe to log)."""
        if self.url is not None:
            return redact_url(self.url)
        scheme = "rediss" if self.ssl else "redis"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.addr}/{self.db}"

    def __repr__(self) -> str:
        return f"RedisConfig({self.display!r})"


#: Query parameters whose values are hidden: redis-py passes every one to the connection
#: (``?password=``, ``?ssl_password=``...), so any of them may carry a credential.
_SECRET_PARAMETER = re.compile(r"pass|secret|token|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``: the password of the user part
    (``redis://user:pw@host``, ``unix://:pw@/path``) and secret query parameters
    (``?password=``, ``?ssl_password=``...). Everything else is kept as written."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user, colon, _ = creds.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{creds}@{host}"
    query = "&".join(_redact_parameter(pair) for pair in parts.query.split("&"))
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def _redact_parameter(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    if equals and _SECRET_PARAMETER.search(unquote_plus(name)):
        return f"{name}=***"
    return pair


@dataclass(frozen=True, slots=True, kw_only=True)
class DistributedConfig:
    """Settings of a `RedisDistributedDispatcher`.

    Args:
        workers: handlers that may run at once in this process.
        stream: key prefix of the queues; queue ``q`` lives under ``{stream}:{q}`` (with
            ``{q}`` the Redis Cluster hash tag, so every key of one queue shares a slot).
        group: the consumer group.
        consumer: this process's consumer name; ``None`` makes one unique to the process
            (host, pid, random suffix). A stable name reads its own pending entries first.
        queues: the queues this process consumes (and the default queue is the first).
        max_pending_jobs: cap on unfinished jobs per queue, across all processes.
        default_max_attempts, default_timeout, retry, max_detached_handlers, hooks: as in
            `Config`.
        lease: seconds an entry may stay unrenewed before another consumer reclaims it.
        claim_interval: seconds between reclaimer runs.
        heartbeat_interval: seconds between heartbeats (and lease renewals).
        max_deliveries: an entry delivered this many times without an outcome is dead-lettered.
        dedupe_window: seconds a finished job's id stays taken.
        max_payload_bytes: largest accepted job (id + type + payload, as JSON).
        result_ttl: seconds a finished job's status and result are kept.
        max_result_bytes: the largest return value kept, as JSON; a larger one fails the job.
        max_dead_letters: dead letters kept per queue (about: the oldest are trimmed).
        prefetch: entries read ahead; ``None`` reads only as many as workers are idle.
        block: seconds one blocking read waits for new entries.
    """

    workers: int = 8
    stream: str = "csjd:jobs"
    group: str = "csjd-workers"
    consumer: str | None = None
    queues: tuple[str, ...] = ("default",)
    max_pending_jobs: int = 20_000
    default_max_attempts: int = 3
    default_timeout: float | timedelta | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_detached_handlers: int = 0
    lease: float | timedelta = 30.0
    claim_interval: float | timedelta = 5.0
    heartbeat_interval: float | timedelta = 5.0
    max_deliveries: int = 5
    dedupe_window: float | timedelta = 600.0
    max_payload_bytes: int = 1024 * 1024
    result_ttl: float | timedelta = 600.0
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS
    prefetch: int | None = None
    block: float | timedelta = 1.0
    hooks: Sequence[object] = ()

    def __post_init__(self) -> None:
        check_int(self.workers, "DistributedConfig.workers", 1, MAX_WORKERS)
        check_int(self.max_pending_jobs, "DistributedConfig.max_pending_jobs", 1)
        check_int(
            self.default_max_attempts, "DistributedConfig.default_max_attempts", 1, MAX_ATTEMPTS
        )
        check_int(self.max_detached_handlers, "DistributedConfig.max_detached_handlers", 0)
        check_int(self.max_deliveries, "DistributedConfig.max_deliveries", 1, MAX_ATTEMPTS)
        check_int(self.max_payload_bytes, "DistributedConfig.max_payload_bytes", 64, MAX_JOB_BYTES)
        check_int(self.max_result_bytes, "DistributedConfig.max_result_bytes", 0, MAX_JOB_BYTES)
        check_int(self.max_dead_letters, "DistributedConfig.max_dead_letters", 1)
        if self.prefetch is not None:
            check_int(self.prefetch, "DistributedConfig.prefetch", 1, MAX_WORKERS)
        for name in ("stream", "group", "consumer"):
            value = getattr(self, name)
            problem = None if value is None and name == "consumer" else name_problem(value, name)
            if problem is not None:
                raise ValueError(f"DistributedConfig.{problem}")
        if isinstance(self.queues, str):
            queues: tuple[Any, ...] = (self.queues,)
        elif isinstance(self.queues, Sequence):
            queues = tuple(self.queues)
        else:
            raise ValueError(
                f"DistributedConfig.queues must be a list of queue names, got {brief(self.queues)}"
            )
        if not queues:
            raise ValueError("DistributedConfig.queues must name at least one queue")
        for queue in queues:
            problem = name_problem(queue, "queues")
            if problem is not None:
                raise ValueError(f"DistributedConfig.{problem}")
        object.__setattr__(self, "queues", queues)
        object.__setattr__(
            self,
            "default_timeout",
            check_timeout(self.default_timeout, "DistributedConfig.default_timeout"),
        )
        object.__setattr__(self, "retry", retry_policy(self.retry, "DistributedConfig.retry"))
        for name in ("lease", "claim_interval", "heartbeat_interval", "block"):
            value = check_timeout(getattr(self, name), f"DistributedConfig.{name}")
            if value is None:
                raise ValueError(f"DistributedConfig.{name} must be positive seconds")
            object.__setattr__(self, name, value)
        for name in ("dedupe_window", "result_ttl"):
            value = seconds(getattr(self, name), f"DistributedConfig.{name}")
            object.__setattr__(self, name, value)
        if self.heartbeat_interval >= self.lease:  # type: ignore[operator]
            raise ValueError(
                f"DistributedConfig.heartbeat_interval ({self.heartbeat_interval}) must be "
                f"shorter than lease ({self.lease}): leases are renewed at each heartbeat"
            )
        if isinstance(self.hooks, str | bytes) or not isinstance(self.hooks, Sequence):
            raise ValueError(f"DistributedConfig.hooks must be a sequence, got {brief(self.hooks)}")
        object.__setattr__(self, "hooks", tuple(self.hooks))
