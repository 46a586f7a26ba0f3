"""The Django app: autodiscovery, system checks and signals only — no connections, no threads
(in-process schedules start ticking on a process's first request, not here)."""

from __future__ import annotations

import logging

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

from csjd_core.errors import CSJDError

logger = logging.getLogger("csjd_django")


class CSJDConfig(AppConfig):
    """``csjd_django``: imports ``jobs.py`` / ``tasks.py`` of installed apps, registers checks."""

    name = "csjd_django"
    verbose_name = "CSJD background jobs"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from django.core.signals import request_started, setting_changed  # noqa: PLC0415

        from csjd_django import checks  # noqa: F401, PLC0415 - registers the checks

        setting_changed.connect(_reset_on_change, dispatch_uid="csjd_django.reset")
        # In-process schedules tick and outboxes relay in web processes, from their first
        # request (never in `migrate` or another management command, which serve none).
        request_started.connect(_start_on_first_request, dispatch_uid="csjd_django.tick")

        # Every process (web or worker) must know every job type before it runs one.
        autodiscover_modules("jobs")
        autodiscover_modules("tasks")


def _reset_on_change(setting: str, **kwargs: object) -> None:
    """``override_settings(CSJD_...)`` in tests: the next enqueue reads the new settings."""
    if setting.startswith("CSJD_"):
        from csjd_django import app  # noqa: PLC0415

        app.reset()


def _start_on_first_request(**kwargs: object) -> None:
    """In-process mode with schedules or an outbox: start the dispatcher (it ticks and relays)
    on this process's first request. A failure is logged, never raised into the request: the
    same error reaches the first enqueue, and ``manage.py check`` reports bad settings."""
    from csjd_django import app  # noqa: PLC0415

    try:
        app.start_in_process()
    except (CSJDError, ValueError) as exc:
        logger.error("schedules not ticking, outbox not relayed in this process error=%s", exc)
