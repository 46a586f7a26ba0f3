"""The configuration core: `EngineConfig` (what the engine needs, in every mode), extended by
`Config` (in-process) and `DistributedConfig` (Redis); and `RedisConfig`.

Frozen, keyword-only dataclasses validated once, at construction: a bad value raises
`InvalidConfig` naming its ``owner`` and ``field``; after validation every duration is plain
seconds (a `timedelta` is accepted and converted), every sequence a tuple.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload
from urllib.parse import SplitResult, unquote_plus, urlsplit

from csjd_core.backends.base import Backend
from csjd_core.errors import InvalidConfig
from csjd_core.limits import (
    DEFAULT_MAX_DEAD_LETTERS,
    DEFAULT_MAX_RESULT_BYTES,
    MAX_ATTEMPTS,
    MAX_JOB_BYTES,
    MAX_WORKERS,
    attempts,
    brief,
    name_problem,
    positive_seconds,
    seconds,
)
from csjd_core.retry import RetryPolicy

__all__ = ["Config", "DistributedConfig", "EngineConfig", "RedisConfig"]

D = TypeVar("D", float, float | None)

#: `DistributedConfig.record_format`'s values: the default first.
RECORD_FORMATS = ("compact", "full")


class Duration(Generic[D]):
    """A duration field: given as seconds or a `timedelta`, read as plain seconds.

    A data descriptor, so type checkers see both sides: the constructor takes
    ``float | timedelta`` (what `__set__` accepts) and reading gives ``float`` (what `__get__`
    returns). The owner's validation (`_Fields.seconds`) stores the converted value.
    """

    def __init__(self, default: D) -> None:
        self.default: D = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type) -> D: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> D: ...
    def __get__(self, obj: object | None, objtype: type | None = None) -> D:
        if obj is None:
            return self.default  # the dataclass's default
        value: D = obj.__dict__[self.name]  # seconds, once the owner validated it
        return value

    def __set__(self, obj: object, value: D | timedelta) -> None:
        obj.__dict__[self.name] = value


class _Fields:
    """Validates and normalises the fields of one config object (frozen: set through
    ``object.__setattr__``); every error is an `InvalidConfig` naming the field."""

    __slots__ = ("config", "owner")

    def __init__(self, config: object) -> None:
        self.config = config
        self.owner = type(config).__name__

    def fail(self, name: str, message: str) -> InvalidConfig:
        return InvalidConfig(f"{self.owner}.{name} {message}", owner=self.owner, field=name)

    def integer(self, name: str, minimum: int, maximum: int | None = None) -> None:
        value = getattr(self.config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(name, f"must be an int >= {minimum}, got {brief(value)}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be at most {maximum}, got {brief(value)}")

    def attempts(self, name: str) -> None:
        try:
            attempts(getattr(self.config, name), f"{self.owner}.{name}")
        except ValueError as exc:
            raise InvalidConfig(str(exc), owner=self.owner, field=name) from None

    def seconds(self, name: str, *, positive: bool = False, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if value is None and optional:
            return
        check = positive_seconds if positive else seconds
        try:
            object.__setattr__(self.config, name, check(value, f"{self.owner}.{name}"))
        except ValueError as exc:
            raise InvalidConfig(str(exc), owner=self.owner, field=name) from None

    def name(self, name: str, *, optional: bool = False) -> None:
        value = getattr(self.config, name)
        if value is None and optional:
            return
        self.name_of(name, value)

    def name_of(self, name: str, value: object) -> None:
        """``value``, held in field ``name``, must be a queue-like name (it builds keys)."""
        problem = name_problem(value, name)
        if problem is not None:
            raise InvalidConfig(f"{self.owner}.{problem}", owner=self.owner, field=name)

    def choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self.config, name)
        if not isinstance(value, str) or value not in choices:
            raise self.fail(
                name, f"must be one of {', '.join(map(repr, choices))}, got {brief(value)}"
            )

    def sequence(self, name: str, what: str) -> tuple[Any, ...]:
        value = getattr(self.config, name)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise self.fail(name, f"must be a sequence of {what}, got {brief(value)}")
        result = tuple(value)
        object.__setattr__(self.config, name, result)
        return result


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """What the engine needs in every mode; `Config` and `DistributedConfig` extend it.

    Args:
        workers: handlers that may run at once (worker threads of this process).
        max_pending_jobs: cap on unfinished jobs (queued, scheduled, running, retrying);
            past it `submit` raises `QueueFull` (in Redis mode per queue, across processes).
        max_detached_handlers: how many timed-out handlers that ignore cancellation may be
            abandoned (their slot given a fresh worker); 0 keeps strict non-overlap.
        default_max_attempts: attempts for jobs that do not set ``max_attempts``.
        default_timeout: seconds per attempt for jobs that do not set ``timeout``.
        retry: the backoff policy (a `RetryPolicy` or a dict of its fields).
        hooks: `Hooks` objects called around each job.
        result_ttl: seconds a finished job's status and result stay queryable.
        max_result_bytes: the largest return value kept, as JSON; a larger one fails the job.
        tracing: ``True`` for OpenTelemetry traces (a producer span per enqueue, a consumer
            span per attempt, through the global tracer provider), or a ``TracerProvider``
            to use instead; needs ``csjd[otel]`` (docs/observability.md). ``False``: nothing
            of OpenTelemetry is imported.
    """

    workers: int = 4
    max_pending_jobs: int = 10_000
    max_detached_handlers: int = 0
    default_max_attempts: int = 3
    default_timeout: Duration[float | None] = Duration(None)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    hooks: Sequence[object] = ()
    result_ttl: Duration[float] = Duration(600.0)
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    tracing: Any = False

    def __post_init__(self) -> None:
        check = _Fields(self)
        if self.tracing is not False:
            _check_tracing(check, self.tracing)
        check.integer("workers", 1, MAX_WORKERS)
        check.integer("max_pending_jobs", 1)
        check.integer("max_detached_handlers", 0)
        check.attempts("default_max_attempts")
        check.seconds("default_timeout", positive=True, optional=True)
        check.seconds("result_ttl")
        check.integer("max_result_bytes", 0, MAX_JOB_BYTES)
        check.sequence("hooks", "hook objects")
        object.__setattr__(self, "retry", _retry_policy(self.retry, check.owner))


def _check_tracing(check: _Fields, value: object) -> None:
    """``tracing`` is True or a tracer provider, and OpenTelemetry's API is installed."""
    if value is not True and not callable(getattr(value, "get_tracer", None)):
        raise check.fail(
            "tracing", f"must be True, False or an OpenTelemetry TracerProvider, got {brief(value)}"
        )
    try:
        import opentelemetry.trace  # noqa: F401, PLC0415 - only when tracing is on
    except ImportError as exc:
        raise check.fail(
            "tracing",
            f"needs OpenTelemetry's API, which is not installed: pip install 'csjd[otel]' ({exc})",
        ) from exc


def _retry_policy(value: RetryPolicy | Mapping[str, Any], owner: str) -> RetryPolicy:
    """A `RetryPolicy` from an instance or a mapping of its fields (unknown keys are errors)."""
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, Mapping):
        known = {f.name for f in fields(RetryPolicy)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidConfig(
                f"{owner}.retry has unknown keys {unknown}; known: {sorted(known)}",
                owner=owner,
                field="retry",
            )
        return RetryPolicy(**value)
    raise InvalidConfig(
        f"{owner}.retry must be a RetryPolicy or a dict of its fields, got {brief(value)}",
        owner=owner,
        field="retry",
    )


@dataclass(frozen=True, kw_only=True)
class Config(EngineConfig):
    """Settings of an in-process `Dispatcher`: the engine's (see `EngineConfig`), and

    Args:
        store: a durable backend such as `FileJobStore`; ``None`` keeps jobs in memory only.
        max_results: at most this many finished jobs are remembered (oldest dropped first).
    """

    store: Backend | None = None
    max_results: int = 100_000

    def __post_init__(self) -> None:
        super().__post_init__()
        check = _Fields(self)
        check.integer("max_results", 0)
        if self.store is not None and (
            not isinstance(self.store, Backend) or not self.store.durable
        ):
            raise check.fail(
                "store", f"must be a durable store such as FileJobStore, got {brief(self.store)}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisConfig:
    """How to reach Redis (or Valkey). Give ``url`` or ``addr``, not both.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS; a Redis
            Cluster as ``redis+cluster://[user:password@]host:port[,host:port...]`` (or
            ``rediss+cluster://``): its startup nodes, any of the cluster's nodes.
        addr: ``"host:port"``.
        username, password: ACL credentials (never logged).
        db: database number (a cluster has only database 0).
        ssl: use TLS (implied by ``rediss://``).
        cluster: ``url`` or ``addr`` names a node of a Redis Cluster (implied by
            ``redis+cluster://``): redis-py's ``RedisCluster`` routes each key to its node.
        socket_timeout: seconds for a command's reply.
        connect_timeout: seconds to connect.
    """

    url: str | None = None
    addr: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    ssl: bool = False
    cluster: bool = False
    socket_timeout: float = 5.0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        check = _Fields(self)
        if (self.url is None) == (self.addr is None):
            raise check.fail("url", "or RedisConfig.addr: give exactly one of them")
        for name in ("url", "addr", "username", "password"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                shown = "***" if name == "password" else brief(value)
                raise check.fail(name, f"must be a string, got {type(value).__name__} {shown}")
        for name in ("ssl", "cluster"):
            if not isinstance(getattr(self, name), bool):
                raise check.fail(name, f"must be True or False, got {brief(getattr(self, name))}")
        if self.url is not None and not self.url.startswith(_URL_SCHEMES):
            raise check.fail(
                "url",
                "must start with redis://, rediss://, unix://, redis+cluster:// or "
                f"rediss+cluster://, got {redact_url(self.url)!r}",
            )
        if self.addr is not None and _host_port(self.addr) is None:
            raise check.fail("addr", f"must be 'host:port', got {brief(self.addr)}")
        check.integer("db", 0)
        check.seconds("socket_timeout", positive=True)
        check.seconds("connect_timeout", positive=True)
        if self.is_cluster:
            self._check_cluster(check)

    def _check_cluster(self, check: _Fields) -> None:
        """A cluster has one database and is reached over TCP at one or more nodes."""
        if self.db != 0:
            raise check.fail(
                "db", f"must be 0 for a Redis Cluster (it has no other), got {self.db}"
            )
        if self.url is None:
            return
        if self.url.startswith("unix://"):
            raise check.fail("url", "unix:// cannot name a Redis Cluster (its nodes are on TCP)")
        parts = split_url(self.url)
        hosts = parts.netloc.rpartition("@")[2]
        if not hosts or any(_host_port(node) is None for node in hosts.split(",")):
            raise check.fail(
                "url",
                "must name the cluster's nodes as host:port[,host:port...], got "
                f"{redact_url(self.url)!r}",
            )
        if parts.path.strip("/") not in ("", "0"):
            raise check.fail(
                "url",
                f"names database {parts.path.strip('/')!r}: a Redis Cluster has only database 0",
            )

    @property
    def is_cluster(self) -> bool:
        """Whether this names a Redis Cluster (``cluster=True`` or a ``+cluster`` URL)."""
        return self.cluster or (self.url or "").startswith(_CLUSTER_SCHEMES)

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """The cluster nodes given, as (host, port): those of the URL, or ``addr``."""
        if self.url is None:
            return [_host_port(self.addr or "") or ("", 0)]
        hosts = split_url(self.url).netloc.rpartition("@")[2]
        return [_host_port(node) or ("", 0) for node in hosts.split(",")]

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisConfig:
        """A config from a ``redis://`` / ``rediss://`` (or ``redis+cluster://`` /
        ``rediss+cluster://``) URL plus keyword options."""
        return cls(url=url, **options)

    @property
    def display(self) -> str:
        """Where this points, without the password (safe to log)."""
        if self.url is not None:
            return redact_url(self.url)
        scheme = "rediss" if self.ssl else "redis"
        user = f"{self.username}@" if self.username else ""
        if self.cluster:
            return f"{scheme}+cluster://{user}{self.addr}"
        return f"{scheme}://{user}{self.addr}/{self.db}"

    def __repr__(self) -> str:
        return f"RedisConfig({self.display!r})"


_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
_URL_SCHEMES = ("redis://", "rediss://", "unix://", *_CLUSTER_SCHEMES)


def split_url(url: str) -> SplitResult:
    """`urllib.parse.urlsplit`, with the network location taken as written: a cluster URL's
    is several ``host:port`` (``[v6]:port`` among them), which some Python builds refuse
    (Debian's 3.11 raises "Invalid IPv6 URL" for brackets that are not the whole host).

    Raises:
        ValueError: the rest of the URL cannot be parsed.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return urlsplit(url)
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    return urlsplit(f"{scheme}://{rest[end:]}")._replace(netloc=rest[:end])


def _host_port(text: str) -> tuple[str, int] | None:
    """``"host:port"`` (or ``"[v6]:port"``) as a pair, or ``None`` if it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


#: Query parameters whose values are hidden: redis-py passes every one to the connection
#: (``?password=``, ``?ssl_password=``...), so any of them may carry a credential.
_SECRET_PARAMETER = re.compile(r"pass|secret|token|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``: the password of the user part
    (``redis://user:pw@host``, ``unix://:pw@/path``) and secret query parameters
    (``?password=``, ``?ssl_password=``...). Everything else is kept as written."""
    try:
        parts = split_url(url)
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


@dataclass(frozen=True, kw_only=True)
class DistributedConfig(EngineConfig):
    """Settings of a `RedisDistributedDispatcher`: the engine's (see `EngineConfig`; here
    ``workers`` defaults to 8 and ``max_pending_jobs``, per queue, to 20,000), and

    Args:
        stream: key prefix of the queues; queue ``q`` lives under ``{stream}:{q}`` (with
            ``{q}`` the Redis Cluster hash tag, so every key of one queue shares a slot).
        group: the consumer group.
        consumer: this process's consumer name; ``None`` makes one unique to the process
            (host, pid, random suffix). A stable name reads its own pending entries first.
        queues: the queues this process consumes (and the default queue is the first).
        lease: seconds an entry may stay unrenewed before another consumer reclaims it.
        claim_interval: seconds between a consumer's stands for each queue's maintainer
            role, and the length of a maintainer's term: the maintainer runs the reclaimer
            every claim_interval and collects expired consumers every ten.
        heartbeat_interval: seconds between heartbeats (and lease renewals).
        max_deliveries: an entry delivered this many times without an outcome is dead-lettered.
        dedupe_window: seconds a finished job's id stays taken.
        max_payload_bytes: largest accepted job (id + type + payload, as JSON).
        max_dead_letters: dead letters kept per queue (about: the oldest are trimmed).
        prefetch: most entries in hand (running and held ahead, unstarted); ``None`` adapts
            the read-ahead to the handlers' speed, up to ``2 * workers`` in hand.
        block: seconds one blocking read waits for new entries.
        record_format: how job records are written: ``"compact"`` (a queued job's record
            leaves its data to its stream entry) or ``"full"`` (the record repeats it, as
            0.1.0 wrote them: what workers of 0.1.0 need to run the jobs while they share a
            queue during an upgrade; see docs/distributed.md, "Upgrading"). Both are read.
        durable_enqueue: an enqueue returns only once a replica of the master that took it
            has it too (``WAIT 1``): a failover then cannot lose an accepted job. Needs a
            replica per master; costs a replication round trip per enqueue.
        durable_timeout: seconds an enqueue waits for that replica; past it the enqueue raises
            `BackendUnavailable` (the job is on the master: submitting it again with the same
            id is safe).
    """

    workers: int = 8
    max_pending_jobs: int = 20_000
    stream: str = "csjd:jobs"
    group: str = "csjd-workers"
    consumer: str | None = None
    queues: tuple[str, ...] = ("default",)
    lease: Duration[float] = Duration(30.0)
    claim_interval: Duration[float] = Duration(5.0)
    heartbeat_interval: Duration[float] = Duration(5.0)
    max_deliveries: int = 5
    dedupe_window: Duration[float] = Duration(600.0)
    max_payload_bytes: int = 1024 * 1024
    max_dead_letters: int = DEFAULT_MAX_DEAD_LETTERS
    prefetch: int | None = None
    block: Duration[float] = Duration(1.0)
    durable_enqueue: bool = False
    durable_timeout: Duration[float] = Duration(1.0)
    record_format: str = "compact"

    def __post_init__(self) -> None:
        super().__post_init__()
        check = _Fields(self)
        check.choice("record_format", RECORD_FORMATS)
        check.integer("max_deliveries", 1, MAX_ATTEMPTS)
        if not isinstance(self.durable_enqueue, bool):
            raise check.fail(
                "durable_enqueue", f"must be True or False, got {brief(self.durable_enqueue)}"
            )
        check.integer("max_payload_bytes", 64, MAX_JOB_BYTES)
        check.integer("max_dead_letters", 1)
        if self.prefetch is not None:
            check.integer("prefetch", 1, MAX_WORKERS)
        check.name("stream")
        check.name("group")
        check.name("consumer", optional=True)
        if isinstance(self.queues, str):
            object.__setattr__(self, "queues", (self.queues,))
        queues = check.sequence("queues", "queue names")
        if not queues:
            raise check.fail("queues", "must name at least one queue")
        for queue in queues:
            check.name_of("queues", queue)
        for name in ("lease", "claim_interval", "heartbeat_interval", "block", "durable_timeout"):
            check.seconds(name, positive=True)
        check.seconds("dedupe_window")
        if self.heartbeat_interval >= self.lease:
            raise check.fail(
                "heartbeat_interval",
                f"({self.heartbeat_interval}) must be shorter than lease ({self.lease}): "
                "leases are renewed at each heartbeat",
            )
