"""Config: defaults, validation of every field, RetryPolicy from a mapping."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from csjd_core import (
    Config,
    DistributedConfig,
    EngineConfig,
    FileJobStore,
    Hooks,
    InvalidConfig,
    RedisConfig,
    RetryPolicy,
)
from csjd_core.backends.memory import MemoryBackend
from csjd_core.config import split_url


def test_defaults_match_the_spec() -> None:
    config = Config()
    assert config.workers == 4
    assert config.max_pending_jobs == 10_000
    assert config.max_detached_handlers == 0
    assert config.store is None
    assert config.default_max_attempts == 3
    assert config.default_timeout is None
    assert config.retry == RetryPolicy()
    assert config.hooks == ()


def test_is_frozen_and_keyword_only() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config(4)  # type: ignore[misc]


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(TypeError, match="worker"):
        Config(worker=4)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("workers", 0),
        ("workers", -1),
        ("workers", 2.0),
        ("workers", True),
        ("workers", "4"),
        ("max_pending_jobs", 0),
        ("max_pending_jobs", None),
        ("max_detached_handlers", -1),
        ("max_detached_handlers", 1.5),
        ("default_max_attempts", 0),
        ("default_max_attempts", False),
        ("max_results", -1),
        ("default_timeout", 0),
        ("default_timeout", -1),
        ("default_timeout", float("nan")),
        ("default_timeout", float("inf")),
        ("default_timeout", "30"),
        ("default_timeout", timedelta(0)),
        ("result_ttl", -1),
        ("result_ttl", float("inf")),
        ("result_ttl", "600"),
        ("hooks", "not-hooks"),
        ("hooks", Hooks()),
        ("hooks", None),
        ("retry", None),
        ("retry", 5),
    ],
)
def test_bad_value_names_the_field_and_the_value(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Config\.{field}") as info:
        Config(**{field: value})
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_durations_accept_timedelta_and_become_seconds() -> None:
    config = Config(default_timeout=timedelta(milliseconds=200), result_ttl=timedelta(minutes=1))
    assert config.default_timeout == 0.2
    assert config.result_ttl == 60.0


def test_zero_is_allowed_where_it_means_something() -> None:
    config = Config(max_detached_handlers=0, max_results=0, result_ttl=0)
    assert (config.max_detached_handlers, config.max_results, config.result_ttl) == (0, 0, 0.0)


def test_retry_from_a_mapping() -> None:
    config = Config(retry={"base_delay": 0.001, "max_delay": 0.01, "jitter": None})
    assert config.retry == RetryPolicy(base_delay=0.001, max_delay=0.01, jitter=None)


def test_retry_mapping_with_unknown_keys_is_an_error_naming_them() -> None:
    with pytest.raises(ValueError, match=r"Config\.retry has unknown keys \['base', 'maximum'\]"):
        Config(retry={"base": 1, "maximum": 2, "factor": 2})


def test_retry_mapping_with_a_bad_value_names_the_policy_field() -> None:
    with pytest.raises(ValueError, match=r"RetryPolicy\.factor"):
        Config(retry={"factor": 0.1})


def test_hooks_become_a_tuple() -> None:
    hook = Hooks()
    config = Config(hooks=[hook])
    assert config.hooks == (hook,)


def test_store_must_be_durable() -> None:
    with pytest.raises(ValueError, match=r"Config\.store must be a durable store"):
        Config(store=MemoryBackend())
    with pytest.raises(ValueError, match=r"Config\.store"):
        Config(store="jobs.db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://h/9?password=SECRET", "redis://h/9?password=***"),
        ("redis://u:SECRET@h:6379/0", "redis://u:***@h:6379/0"),
        ("redis://:SECRET@h", "redis://:***@h"),
        (
            "rediss://u:p%40SECRET@h/0?ssl_password=SECRET&db=1",
            "rediss://u:***@h/0?ssl_password=***&db=1",
        ),
        ("unix:///run/redis.sock?db=2&password=SECRET", "unix:///run/redis.sock?db=2&password=***"),
        ("unix://:SECRET@/run/redis.sock", "unix://:***@/run/redis.sock"),
        ("redis://h/0?Pass%77ord=SECRET", "redis://h/0?Pass%77ord=***"),
        ("redis://u:a@SECRET@h/0", "redis://u:***@h/0"),
        ("redis://h:6379/0?socket_timeout=5", "redis://h:6379/0?socket_timeout=5"),
    ],
)
def test_every_credential_form_redis_py_accepts_is_redacted(url: str, shown: str) -> None:
    # Was: only the user part was redacted; ?password= (which redis-py accepts) was shown.
    config = RedisConfig.from_url(url)
    assert config.display == shown
    assert "SECRET" not in repr(config) and "SECRET" not in str(config)


@pytest.mark.parametrize(
    ("build", "owner", "field"),
    [
        (lambda: Config(workers=0), "Config", "workers"),
        (lambda: DistributedConfig(lease=-1), "DistributedConfig", "lease"),
        (lambda: DistributedConfig(queues=("a b",)), "DistributedConfig", "queues"),
        (lambda: RetryPolicy(factor=0.5), "RetryPolicy", "factor"),
        (lambda: RedisConfig(addr="nope"), "RedisConfig", "addr"),
        (lambda: FileJobStore("x.json", fsync="sometimes"), "FileJobStore", "fsync"),
    ],
)
def test_config_errors_carry_their_owner_and_field(
    build: Callable[[], object], owner: str, field: str
) -> None:
    with pytest.raises(InvalidConfig) as error:
        build()
    assert (error.value.owner, error.value.field) == (owner, field)
    assert str(error.value).startswith(f"{owner}.{field} ")
    assert isinstance(error.value, ValueError)  # what it was before: callers still catch it


def test_the_engine_fields_are_shared_and_durations_are_plain_seconds() -> None:
    shared = {f.name for f in dataclasses.fields(EngineConfig)}
    assert shared <= {f.name for f in dataclasses.fields(Config)}
    assert shared <= {f.name for f in dataclasses.fields(DistributedConfig)}
    assert (Config().workers, DistributedConfig().workers) == (4, 8)  # defaults per mode
    config = DistributedConfig(lease=timedelta(minutes=1), default_timeout=timedelta(seconds=3))
    assert (type(config.lease), config.lease, config.default_timeout) == (float, 60.0, 3.0)


def test_a_cluster_url_names_its_startup_nodes_and_hides_the_password() -> None:
    config = RedisConfig.from_url("rediss+cluster://app:SECRET@10.0.0.1:7000,[::1]:7001/0")
    assert config.is_cluster and not config.cluster  # the scheme says it
    assert config.startup_nodes == [("10.0.0.1", 7000), ("::1", 7001)]
    assert config.display == "rediss+cluster://app:***@10.0.0.1:7000,[::1]:7001/0"
    assert "SECRET" not in repr(config)
    by_flag = RedisConfig(addr="10.0.0.1:7000", cluster=True, username="app", password="SECRET")
    assert by_flag.is_cluster and by_flag.startup_nodes == [("10.0.0.1", 7000)]
    assert by_flag.display == "redis+cluster://app@10.0.0.1:7000"
    assert not RedisConfig.from_url("redis://h:6379/0").is_cluster


@pytest.mark.parametrize(
    ("build", "field", "message"),
    [
        (
            lambda: RedisConfig.from_url("redis+cluster://h:7000/2"),
            "url",
            "names database '2': a Redis Cluster has only database 0",
        ),
        (
            lambda: RedisConfig(url="redis://h:7000/0", cluster=True, db=3),
            "db",
            "must be 0 for a Redis Cluster",
        ),
        (
            lambda: RedisConfig.from_url("redis+cluster://h:7000,h2"),
            "url",
            "must name the cluster's nodes as host:port",
        ),
        (lambda: RedisConfig.from_url("redis+cluster://"), "url", "must name the cluster's nodes"),
        (
            lambda: RedisConfig(url="unix:///run/redis.sock", cluster=True),
            "url",
            "unix:// cannot name a Redis Cluster",
        ),
        (lambda: RedisConfig(addr="h:1", cluster="yes"), "cluster", "must be True or False"),
        (lambda: RedisConfig.from_url("cluster://h:7000"), "url", "redis+cluster://"),
    ],
)
def test_a_bad_cluster_config_is_refused_naming_the_field(
    build: Callable[[], object], field: str, message: str
) -> None:
    with pytest.raises(InvalidConfig, match=re.escape(message)) as error:
        build()
    assert (error.value.owner, error.value.field) == ("RedisConfig", field)


def test_durable_enqueue_is_a_flag_with_a_positive_timeout() -> None:
    assert (DistributedConfig().durable_enqueue, DistributedConfig().durable_timeout) == (
        False,
        1.0,
    )
    config = DistributedConfig(durable_enqueue=True, durable_timeout=timedelta(milliseconds=250))
    assert (config.durable_enqueue, config.durable_timeout) == (True, 0.25)
    with pytest.raises(InvalidConfig, match="durable_enqueue must be True or False"):
        DistributedConfig(durable_enqueue=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match="durable_timeout"):
        DistributedConfig(durable_timeout=0)


def test_record_format_is_compact_or_full() -> None:
    assert DistributedConfig().record_format == "compact"
    assert DistributedConfig(record_format="full").record_format == "full"
    for bad in ("legacy", "", None, 1):
        with pytest.raises(InvalidConfig, match="record_format must be one of 'compact', 'full'"):
            DistributedConfig(record_format=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["redis://u:p@h:6379/2?ssl_cert_reqs=none#x", "rediss://h", "unix:///tmp/r.sock?db=1", "h:1"],
)
def test_split_url_is_urlsplit_for_one_host(url: str) -> None:
    assert split_url(url) == urlsplit(url)


def test_split_url_keeps_a_cluster_netloc_as_written() -> None:
    # Debian's Python 3.11 refuses it in urlsplit ("Invalid IPv6 URL"): the [v6] is not first.
    parts = split_url("rediss+cluster://a:b@10.0.0.1:7000,[::1]:7001/0?x=1")
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == (
        "rediss+cluster",
        "a:b@10.0.0.1:7000,[::1]:7001",
        "/0",
        "x=1",
    )
