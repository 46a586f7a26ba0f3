"""``manage.py csjd_worker``: consume this project's Redis queues."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from csjd_core.cli_redis import serve
from csjd_django.management import redis_app


class Command(BaseCommand):
    help = (
        "Run CSJD workers for this project's Redis queues. The first SIGTERM/SIGINT drains "
        "in-flight jobs; a second one stops at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queues", help="Comma-separated queues (default: CSJD_QUEUES).")
        parser.add_argument("--workers", type=int, help="Worker threads per process.")
        parser.add_argument(
            "--processes", type=int, default=1, help="Worker processes under one supervisor."
        )
        parser.add_argument("--burst", action="store_true", help="Exit when the queues are empty.")
        parser.add_argument("--max-jobs", type=int, help="Recycle a process after N jobs.")
        parser.add_argument("--max-memory", help="Recycle a process past this RSS (e.g. 512M).")
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=30.0,
            help="Seconds to let in-flight jobs finish after SIGTERM.",
        )
        parser.add_argument(
            "--reload", action="store_true", help="Restart when code changes (development only)."
        )
        parser.add_argument("--child", action="store_true", help="(internal: a supervised child)")

    def handle(self, *args: Any, **options: Any) -> None:
        redis_app("manage.py csjd_worker")
        if options["processes"] < 1:
            raise CommandError("--processes must be >= 1")
        if options["reload"]:
            autoreload.run_with_reloader(self._serve, **options)
        else:
            self._serve(**options)

    def _serve(self, **options: Any) -> None:
        from csjd_django import app  # noqa: PLC0415

        code = serve(
            app,
            child_command=[sys.executable, sys.argv[0], "csjd_worker"],
            queues=options["queues"],
            workers=options["workers"],
            processes=options["processes"],
            burst=options["burst"],
            max_jobs=options["max_jobs"],
            max_memory=options["max_memory"],
            drain_timeout=options["drain_timeout"],
            child=options["child"],
        )
        if code:
            sys.exit(code)
