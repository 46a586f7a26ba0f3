"""``CSJD_*`` settings -> an `App`: the one parser Django (``settings.CSJD_*``) and Flask
(``app.config["CSJD_*"]``) share."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from csjd_core.app import MODES, App
from csjd_core.backends.file import FileJobStore
from csjd_core.config import Config, DistributedConfig, RedisConfig
from csjd_core.errors import SettingsError
from csjd_core.limits import brief

__all__ = ["SETTINGS", "SettingsError", "app_from_settings", "app_options"]

PREFIX = "CSJD_"

# Setting -> (target, field): "config" is Config, "distributed" DistributedConfig, "both" both.
SETTINGS: dict[str, tuple[str, str]] = {
    "MODE": ("app", "mode"),
    "REDIS_URL": ("app", "redis_url"),
    "STORE_PATH": ("app", "store_path"),
    "STORE_FSYNC": ("app", "store_fsync"),
    "WORKERS": ("both", "workers"),
    "MAX_PENDING_JOBS": ("both", "max_pending_jobs"),
    "DEFAULT_MAX_ATTEMPTS": ("both", "default_max_attempts"),
    "DEFAULT_TIMEOUT": ("both", "default_timeout"),
    "RETRY": ("both", "retry"),
    "MAX_DETACHED_HANDLERS": ("both", "max_detached_handlers"),
    "RESULT_TTL": ("both", "result_ttl"),
    "MAX_RESULTS": ("config", "max_results"),
    **{
        f.name.upper(): ("distributed", f.name)
        for f in dataclasses.fields(DistributedConfig)
        if f.name
        not in {
            "workers",
            "max_pending_jobs",
            "default_max_attempts",
            "default_timeout",
            "retry",
            "max_detached_handlers",
            "result_ttl",
            "hooks",
        }
    },
}


def app_from_settings(
    settings: Mapping[str, Any], *, name: str = "csjd", hooks: tuple[object, ...] = ()
) -> App:
    """Build an `App` from the ``CSJD_*`` keys of ``settings`` (other keys are ignored).

    Raises:
        SettingsError: an unknown ``CSJD_*`` key, or a bad value, naming the setting.
    """
    return App(name=name, **app_options(settings, hooks=hooks))


def app_options(settings: Mapping[str, Any], *, hooks: tuple[object, ...] = ()) -> dict[str, Any]:
    """The ``mode``/``config``/``redis``/``distributed`` arguments that ``CSJD_*`` settings give
    (for `App` or `App.configure`).

    Raises:
        SettingsError: an unknown ``CSJD_*`` key, or a bad value, naming the setting.
    """
    values = {k[len(PREFIX) :]: v for k, v in settings.items() if k.startswith(PREFIX)}
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise SettingsError(
            PREFIX + unknown[0],
            f"unknown setting; known: {', '.join(PREFIX + k for k in SETTINGS)}",
        )
    mode = values.get("MODE", "inprocess")
    if mode not in MODES:
        raise SettingsError("CSJD_MODE", f"must be one of {MODES}, got {brief(mode)}")
    config_kwargs: dict[str, Any] = {"hooks": hooks}
    distributed_kwargs: dict[str, Any] = {"hooks": hooks}
    for key, raw in values.items():
        target, field = SETTINGS[key]
        value = raw
        if key == "QUEUES" and isinstance(raw, str):
            value = tuple(q.strip() for q in raw.split(",") if q.strip())
        if target in ("config", "both"):
            config_kwargs[field] = value
        if target in ("distributed", "both"):
            distributed_kwargs[field] = value
    store_path = values.get("STORE_PATH")
    redis_url = values.get("REDIS_URL")
    if mode == "redis" and not redis_url:
        raise SettingsError("CSJD_REDIS_URL", "required when CSJD_MODE='redis'")
    try:
        if store_path and mode == "inprocess":
            config_kwargs["store"] = FileJobStore(
                store_path, fsync=values.get("STORE_FSYNC", "always")
            )
        config = Config(**config_kwargs)
        distributed = DistributedConfig(**distributed_kwargs) if mode == "redis" else None
        redis = RedisConfig.from_url(redis_url) if redis_url else None
    except (ValueError, TypeError) as exc:
        raise SettingsError(_setting_named(str(exc)), str(exc)) from exc
    return {"mode": mode, "config": config, "redis": redis, "distributed": distributed}


def _setting_named(message: str) -> str:
    """Map ``Config.workers must ...`` back to ``CSJD_WORKERS``."""
    head = message.split(" ", 1)[0]
    for prefix in (
        "Config.",
        "DistributedConfig.",
        "RedisConfig.",
        "RetryPolicy.",
        "FileJobStore.",
    ):
        if head.startswith(prefix):
            field = head[len(prefix) :].rstrip(":")
            if prefix == "RetryPolicy.":
                return "CSJD_RETRY"
            if prefix == "RedisConfig.":
                return "CSJD_REDIS_URL"
            if prefix == "FileJobStore.":
                return "CSJD_STORE_FSYNC" if field == "fsync" else "CSJD_STORE_PATH"
            return PREFIX + field.upper()
    if "url" in message.lower():
        return "CSJD_REDIS_URL"
    return "CSJD_*"
