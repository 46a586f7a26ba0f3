"""Reading ``settings.CSJD_*`` (validated by system checks, applied on first use)."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from csjd_core.app import Mode
from csjd_core.settings import app_options
from csjd_core.web_metrics import SETTINGS as METRICS_SETTINGS
from csjd_django.hooks import CloseOldConnections, TaskSignals

__all__ = ["DJANGO_ONLY", "csjd_settings", "in_memory", "options_from_settings"]


#: ``CSJD_*`` settings of Django's own, not `App` options (read by `csjd_django.schedules`,
#: `csjd_django.outbox` and, for the metrics view, `csjd_core.web_metrics`).
DJANGO_ONLY = frozenset(
    {"CSJD_SCHEDULE", "CSJD_OUTBOX", "CSJD_OUTBOX_NOTIFY", "CSJD_OUTBOX_POLL_INTERVAL"}
) | frozenset(METRICS_SETTINGS)


def csjd_settings() -> dict[str, Any]:
    """Every ``CSJD_*`` name defined in the Django settings."""
    return {name: getattr(settings, name) for name in dir(settings) if name.startswith("CSJD_")}


def in_memory(options: dict[str, Any]) -> bool:
    """Whether `options_from_settings` keep jobs in memory only (in-process, no store)."""
    return options["mode"] is Mode.INPROCESS and options["config"].store is None


def options_from_settings() -> dict[str, Any]:
    """`App.configure` arguments from the settings, with Django's connection hook added.

    Raises:
        SettingsError: a bad or unknown ``CSJD_*`` setting (also reported by ``manage.py check``
            as ``csjd.E001``).
    """
    hooks = (CloseOldConnections(), TaskSignals())
    return app_options(csjd_settings(), hooks=hooks, framework=sorted(DJANGO_ONLY))
