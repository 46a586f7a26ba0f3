"""``CSJD_*`` settings -> an `App`: the one parser Django (``settings.CSJD_*``) and Flask
(``app.config["CSJD_*"]``) share."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from csjd_core.app import App, Mode
from csjd_core.backends.file import FileJobStore
from csjd_core.config import Config, DistributedConfig, EngineConfig, RedisConfig
from csjd_core.errors import InvalidConfig, SettingsError
from csjd_core.limits import names

__all__ = ["SETTINGS", "SettingsError", "app_from_settings", "app_options"]

PREFIX = "CSJD_"

_ENGINE = [f.name for f in dataclasses.fields(EngineConfig) if f.name != "hooks"]
_ONLY = {
    "config": [
        f.name for f in dataclasses.fields(Config) if f.name not in {*_ENGINE, "hooks", "store"}
    ],
    "distributed": [
        f.name for f in dataclasses.fields(DistributedConfig) if f.name not in {*_ENGINE, "hooks"}
    ],
}

#: Setting (without ``CSJD_``) -> (target, field). "app": an `App` argument; "both": an
#: `EngineConfig` field, given to `Config` and to `DistributedConfig`; "config" / "distributed":
#: a field of that config only. Derived from the configs: a field added there is a setting.
SETTINGS: dict[str, tuple[str, str]] = {
    "MODE": ("app", "mode"),
    "REDIS_URL": ("app", "redis_url"),
    "STORE_PATH": ("app", "store_path"),
    "STORE_FSYNC": ("app", "store_fsync"),
    **{name.upper(): ("both", name) for name in _ENGINE},
    **{name.upper(): (target, name) for target, names in _ONLY.items() for name in names},
}


def app_from_settings(
    settings: Mapping[str, Any], *, name: str = "csjd", hooks: tuple[object, ...] = ()
) -> App:
    """Build an `App` from the ``CSJD_*`` keys of ``settings`` (other keys are ignored).

    Raises:
        SettingsError: an unknown ``CSJD_*`` key, or a bad value, naming the setting.
    """
    return App(name=name, **app_options(settings, hooks=hooks))


def app_options(
    settings: Mapping[str, Any],
    *,
    hooks: tuple[object, ...] = (),
    framework: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``mode``/``config``/``redis``/``distributed`` arguments that ``CSJD_*`` settings give
    (for `App` or `App.configure`). ``framework`` names the settings a framework reads itself
    (``CSJD_SCHEDULE``, ``CSJD_OUTBOX``...): left out here, but known.

    Raises:
        SettingsError: an unknown ``CSJD_*`` key, or a bad value, naming the setting.
    """
    values = {
        k[len(PREFIX) :]: v
        for k, v in settings.items()
        if k.startswith(PREFIX) and k not in framework
    }
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        known = [PREFIX + k for k in SETTINGS] + list(framework)
        raise SettingsError(PREFIX + unknown[0], f"unknown setting; known: {', '.join(known)}")
    try:
        mode = Mode.parse(values.get("MODE", Mode.INPROCESS))
    except InvalidConfig as exc:
        raise SettingsError(_setting_of(exc), str(exc)) from None
    config_kwargs: dict[str, Any] = {"hooks": hooks}
    distributed_kwargs: dict[str, Any] = {"hooks": hooks}
    for key, raw in values.items():
        target, field = SETTINGS[key]
        value = raw
        if key == "QUEUES" and isinstance(raw, str):
            value = tuple(names(raw))
        if target in ("config", "both"):
            config_kwargs[field] = value
        if target in ("distributed", "both"):
            distributed_kwargs[field] = value
    store_path = values.get("STORE_PATH")
    redis_url = values.get("REDIS_URL")
    if mode is Mode.REDIS and not redis_url:
        raise SettingsError("CSJD_REDIS_URL", "required when CSJD_MODE='redis'")
    try:
        if store_path and mode is Mode.INPROCESS:
            config_kwargs["store"] = FileJobStore(
                store_path, fsync=values.get("STORE_FSYNC", "always")
            )
        config = Config(**config_kwargs)
        distributed = DistributedConfig(**distributed_kwargs) if mode is Mode.REDIS else None
        redis = RedisConfig.from_url(redis_url) if redis_url else None
    except InvalidConfig as exc:
        raise SettingsError(_setting_of(exc), str(exc)) from exc
    return {"mode": mode, "config": config, "redis": redis, "distributed": distributed}


def _setting_of(error: InvalidConfig) -> str:
    """The ``CSJD_*`` setting behind a config error (``Config.workers`` -> ``CSJD_WORKERS``)."""
    if error.owner == "RetryPolicy":
        return PREFIX + "RETRY"
    if error.owner == "RedisConfig":
        return PREFIX + "REDIS_URL"
    if error.owner == "FileJobStore":
        return PREFIX + ("STORE_FSYNC" if error.field == "fsync" else "STORE_PATH")
    return PREFIX + error.field.upper()
