"""What the ``manage.py csjd_*`` commands share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from django.core.management.base import CommandError, CommandParser

from csjd_core.cli_options import LOG_FORMAT_HELP, LOG_FORMATS, LOG_LEVELS
from csjd_core.errors import CSJDError, InvalidConfig
from csjd_core.operations import OPTIONS
from csjd_django.app import DjangoApp

__all__ = ["add_log_arguments", "confirmation", "project_app", "redis_app", "reported"]


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """A `CSJDError` becomes a `CommandError` (its message, status 1); a bad option value
    (`InvalidConfig` of `operations.OPTIONS`) a usage error, status 2, as argparse gives."""
    try:
        yield
    except InvalidConfig as exc:
        raise CommandError(str(exc), returncode=2 if exc.owner == OPTIONS else 1) from exc
    except CSJDError as exc:
        raise CommandError(str(exc)) from exc


def add_log_arguments(parser: CommandParser) -> None:
    """``--log-level`` and ``--log-format``, as every long-running ``manage.py csjd_*``
    command takes them."""
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="The csjd loggers' lines on stderr, unless LOGGING configures them (INFO).",
    )
    parser.add_argument(
        "--log-format", default="text", choices=LOG_FORMATS, help=f"{LOG_FORMAT_HELP} (text)"
    )


def project_app() -> DjangoApp:
    """This project's app, configured from settings."""
    from csjd_django import app  # noqa: PLC0415 - settings are read on first use

    app.configure_from_settings()
    return app


def redis_app(command: str) -> DjangoApp:
    """`project_app`, which ``command`` needs in Redis mode (checked before anything starts).

    Raises:
        CommandError: naming the command, when CSJD_MODE is not 'redis'.
    """
    with reported():  # a bad CSJD_* setting too (manage.py --skip-checks gets here)
        app = project_app()
        app.require_redis(command)
    return app


def confirmation(yes: bool) -> Callable[[str], None]:
    """Asks on the terminal before a command acts (no terminal: no), unless ``--yes``.

    Raises:
        CommandError: the answer was not yes (status 1).
    """

    def confirm(question: str) -> None:
        if yes:
            return
        try:
            answer = input(f"{question} [y/N]: ")
        except EOFError:  # no terminal (cron, CI): no is the answer
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandError("Aborted (--yes answers yes)")

    return confirm
