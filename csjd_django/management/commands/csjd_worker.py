"""``manage.py csjd_worker``: consume this project's Redis queues."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from csjd_core import operations
from csjd_core.cli_options import add_worker_arguments, worker_options_from
from csjd_core.errors import CSJDError
from csjd_django.management import redis_app

COMMAND = "manage.py csjd_worker"


class Command(BaseCommand):
    help = (
        "Run CSJD workers for this project's Redis queues. The first SIGTERM/SIGINT drains "
        "in-flight jobs; a second one stops at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_worker_arguments(parser)  # the options of `csjd worker` and `flask csjd run`
        parser.add_argument(
            "--reload", action="store_true", help="Restart when code changes (development only)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        redis_app(COMMAND)
        try:
            worker_options, child = worker_options_from(options)
        except CSJDError as exc:
            raise CommandError(str(exc)) from exc
        if options["reload"]:
            autoreload.run_with_reloader(self._serve, worker_options, child)
        else:
            self._serve(worker_options, child)

    def _serve(self, worker_options: operations.WorkerOptions, child: bool) -> None:
        from csjd_django import app  # noqa: PLC0415

        try:
            code = operations.run_workers(
                app,
                worker_options,
                child_command=[sys.executable, sys.argv[0], "csjd_worker"],
                child=child,
                needed_by=COMMAND,
            )
        except CSJDError as exc:
            raise CommandError(str(exc)) from exc
        if code:
            sys.exit(code)
