"""``manage.py csjd_worker``: consume this project's Redis queues."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import autoreload

from csjd_core import operations
from csjd_core.cli_options import (
    add_worker_arguments,
    announcer,
    log_to_stderr,
    worker_options_from,
)
from csjd_django.management import add_log_arguments, project_app, redis_app, reported

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
        add_log_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        redis_app(COMMAND)  # before a reloader starts
        with reported():
            worker_options, child = worker_options_from(options)
        logs = (options["log_level"], options["log_format"])
        if options["reload"]:
            autoreload.run_with_reloader(self._serve, worker_options, child, logs)
        else:
            self._serve(worker_options, child, logs)

    def _serve(
        self, worker_options: operations.WorkerOptions, child: bool, logs: tuple[str, str]
    ) -> None:
        level, log_format = logs
        command = [
            sys.executable,
            sys.argv[0],
            "csjd_worker",
            "--log-level",
            level,
            "--log-format",
            log_format,
        ]
        with log_to_stderr(level, log_format), reported():
            code = operations.run_workers(
                project_app(),
                worker_options,
                child_command=command,
                announce=announcer(log_format, self.stderr.write),
                child=child,
                needed_by=COMMAND,
            )
        if code:
            sys.exit(code)
