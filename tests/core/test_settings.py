"""CSJD_* settings -> App: the parser Django and Flask share."""

from __future__ import annotations

from typing import Any

import pytest

from csjd_core import FileJobStore, RetryPolicy
from csjd_core.settings import SETTINGS, SettingsError, app_from_settings, app_options


def test_defaults_give_an_inprocess_app_and_ignore_other_keys() -> None:
    app = app_from_settings({"DEBUG": True, "SECRET_KEY": "x"})
    assert app.mode == "inprocess"
    assert app.config.workers == 4
    assert app.redis is None


def test_values_reach_the_configs() -> None:
    app = app_from_settings(
        {
            "CSJD_WORKERS": 2,
            "CSJD_MAX_PENDING_JOBS": 50,
            "CSJD_DEFAULT_TIMEOUT": 3,
            "CSJD_RETRY": {"base_delay": 0.5, "jitter": None},
            "CSJD_STORE_PATH": "/tmp/csjd-settings-test/jobs.json",
            "CSJD_STORE_FSYNC": "interval",
        }
    )
    assert app.config.workers == 2
    assert app.config.max_pending_jobs == 50
    assert app.config.default_timeout == 3.0
    assert app.config.retry == RetryPolicy(base_delay=0.5, jitter=None)
    assert isinstance(app.config.store, FileJobStore)
    assert app.config.store.fsync == "interval"


def test_redis_mode_builds_distributed_settings() -> None:
    app = app_from_settings(
        {
            "CSJD_MODE": "redis",
            "CSJD_REDIS_URL": "redis://user:secret@localhost:6379/1",
            "CSJD_QUEUES": "emails, reports",
            "CSJD_LEASE": 60,
            "CSJD_WORKERS": 16,
        }
    )
    assert app.mode == "redis"
    assert app.distributed.queues == ("emails", "reports")
    assert app.distributed.lease == 60.0
    assert app.distributed.workers == 16
    assert "secret" not in repr(app.redis)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"CSJD_WORKERS": 0}, "CSJD_WORKERS"),
        ({"CSJD_WORKRS": 2}, "CSJD_WORKRS"),
        ({"CSJD_MODE": "celery"}, "CSJD_MODE"),
        ({"CSJD_MODE": "redis"}, "CSJD_REDIS_URL"),
        ({"CSJD_MODE": "redis", "CSJD_REDIS_URL": "http://localhost"}, "CSJD_REDIS_URL"),
        ({"CSJD_RETRY": {"base": 1}}, "CSJD_RETRY"),
        ({"CSJD_RETRY": {"factor": 0.5}}, "CSJD_RETRY"),
        ({"CSJD_DEFAULT_TIMEOUT": -1}, "CSJD_DEFAULT_TIMEOUT"),
        ({"CSJD_STORE_PATH": "/tmp/x.json", "CSJD_STORE_FSYNC": "sometimes"}, "CSJD_STORE_FSYNC"),
        ({"CSJD_MODE": "redis", "CSJD_REDIS_URL": "redis://h:1", "CSJD_LEASE": 0}, "CSJD_LEASE"),
        ({"CSJD_MODE": "redis", "CSJD_REDIS_URL": "redis://h:1", "CSJD_QUEUES": ""}, "CSJD_QUEUES"),
    ],
)
def test_bad_settings_are_clear_errors_naming_the_setting(settings: dict, named: str) -> None:
    with pytest.raises(SettingsError) as info:
        app_from_settings(settings)
    assert info.value.setting == named
    assert str(info.value).startswith(named)


def test_every_distributed_field_has_a_setting() -> None:
    expected = {
        "LEASE",
        "CLAIM_INTERVAL",
        "HEARTBEAT_INTERVAL",
        "MAX_DELIVERIES",
        "DEDUPE_WINDOW",
        "MAX_PAYLOAD_BYTES",
        "PREFETCH",
        "STREAM",
        "GROUP",
        "CONSUMER",
        "QUEUES",
    }
    assert expected <= set(SETTINGS)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("mode", ["inprocess", "redis"])
def test_a_value_of_any_wrong_type_is_a_settings_error_naming_its_setting(
    setting: str, mode: str
) -> None:
    # Was: CSJD_REDIS_URL=123 raised AttributeError (a 500 on the dashboard).
    bad_values: list[Any] = [object(), [1], {"a": 1}, -1, 1e300, 10**400, "\udcff", "", None]
    for bad in bad_values:
        settings = {"CSJD_MODE": mode, "CSJD_REDIS_URL": "redis://localhost:6379/0"}
        settings[f"CSJD_{setting}"] = bad
        # Accepted is fine too (an empty CSJD_STORE_PATH means none): never another error.
        named = None
        try:
            app_options(settings)
        except SettingsError as exc:
            named = exc.setting
        assert named in (None, f"CSJD_{setting}"), bad


def test_every_engine_setting_reaches_both_configs() -> None:
    # CSJD_MAX_RESULT_BYTES once reached only the Redis config: the table is derived now.
    options = app_options({"CSJD_MAX_RESULT_BYTES": 2048, "CSJD_RESULT_TTL": 5})
    assert (options["config"].max_result_bytes, options["config"].result_ttl) == (2048, 5.0)
    redis = app_options(
        {"CSJD_MODE": "redis", "CSJD_REDIS_URL": "redis://h/0", "CSJD_MAX_RESULT_BYTES": 2048}
    )
    assert redis["distributed"].max_result_bytes == 2048
