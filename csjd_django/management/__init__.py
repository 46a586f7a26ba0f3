"""What the ``manage.py csjd_*`` commands share."""

from __future__ import annotations

from django.core.management.base import CommandError

from csjd_core.errors import CSJDError
from csjd_django.app import DjangoApp

__all__ = ["redis_app"]


def redis_app(command: str) -> DjangoApp:
    """This project's app, configured from settings, which ``command`` needs in Redis mode.

    Raises:
        CommandError: naming the command, when CSJD_MODE is not 'redis'.
    """
    from csjd_django import app  # noqa: PLC0415 - settings are read on first use

    app.configure_from_settings()
    try:
        app.require_redis(command)
    except CSJDError as exc:
        raise CommandError(str(exc)) from exc
    return app
