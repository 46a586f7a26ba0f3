"""What the ``manage.py csjd_*`` commands share."""

from __future__ import annotations

from django.core.management.base import CommandError

from csjd_django.app import DjangoApp

__all__ = ["redis_app"]


def redis_app(command: str, purpose: str) -> DjangoApp:
    """This project's app, configured from settings, which ``command`` needs in Redis mode.

    Raises:
        CommandError: naming the command and what it does, when CSJD_MODE is not 'redis'.
    """
    from csjd_django import app  # noqa: PLC0415 - settings are read on first use

    app.configure_from_settings()
    if app.mode != "redis":
        raise CommandError(
            f"{command} {purpose}, but CSJD_MODE is {app.mode!r}: in-process mode keeps its "
            "jobs inside the web process. Set CSJD_MODE='redis' and CSJD_REDIS_URL."
        )
    return app
