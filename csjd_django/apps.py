"""The Django app: autodiscovery and system checks only — no connections, no threads."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class CSJDConfig(AppConfig):
    """``csjd_django``: imports ``jobs.py`` / ``tasks.py`` of installed apps, registers checks."""

    name = "csjd_django"
    verbose_name = "CSJD background jobs"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed  # noqa: PLC0415

        from csjd_django import checks  # noqa: F401, PLC0415 - registers the checks

        setting_changed.connect(_reset_on_change, dispatch_uid="csjd_django.reset")

        # Every process (web or worker) must know every job type before it runs one.
        autodiscover_modules("jobs")
        autodiscover_modules("tasks")


def _reset_on_change(setting: str, **kwargs: object) -> None:
    """``override_settings(CSJD_...)`` in tests: the next enqueue reads the new settings."""
    if setting.startswith("CSJD_"):
        from csjd_django import app  # noqa: PLC0415

        app.reset()
