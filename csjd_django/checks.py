"""``manage.py check``: the ``CSJD_*`` settings, validated with clear messages."""

from __future__ import annotations

from typing import Any

from django.core import checks

from csjd_core.app import Mode
from csjd_core.errors import SettingsError
from csjd_django.conf import options_from_settings

__all__ = ["check_settings"]


@checks.register("csjd")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """csjd.E001 bad value, csjd.E002 unknown setting, csjd.W001 in-process without a store."""
    try:
        options = options_from_settings()
    except SettingsError as exc:
        unknown = "unknown setting" in str(exc)
        return [
            checks.Error(
                str(exc),
                hint=(
                    "Check the spelling; CSJD settings are listed in docs/django.md."
                    if unknown
                    else "Fix the value of this setting."
                ),
                obj=exc.setting,
                id="csjd.E002" if unknown else "csjd.E001",
            )
        ]
    messages: list[checks.CheckMessage] = []
    if options["mode"] is Mode.INPROCESS and options["config"].store is None:
        messages.append(
            checks.Warning(
                "CSJD_MODE='inprocess' without CSJD_STORE_PATH keeps jobs in memory only: a "
                "restart or crash of the web process loses every job that has not run",
                hint="Set CSJD_STORE_PATH for a durable file store (one process), or use "
                "CSJD_MODE='redis' for several processes.",
                id="csjd.W001",
            )
        )
    return messages
