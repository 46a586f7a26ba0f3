"""``manage.py csjd_relay``: relay this project's outbox (``CSJD_OUTBOX``) to its Redis queues."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from csjd_core import operations
from csjd_core.cli_options import announcer, log_to_stderr
from csjd_django.management import add_log_arguments, project_app, redis_app, reported

COMMAND = "manage.py csjd_relay"


class Command(BaseCommand):
    help = (
        "Relay the jobs that CSJD_OUTBOX wrote in transactions to the Redis queues, running "
        "none (csjd_worker relays too, unless --no-relay). SIGTERM/SIGINT stops it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--burst", action="store_true", help="Exit once no outbox row is due.")
        add_log_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        redis_app(COMMAND)
        with log_to_stderr(options["log_level"], options["log_format"]), reported():
            code = operations.run_relay(
                project_app(),
                announce=announcer(options["log_format"], self.stderr.write),
                burst=options["burst"],
                needed_by=COMMAND,
            )
        if code:
            sys.exit(code)
