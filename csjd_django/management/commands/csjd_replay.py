"""``manage.py csjd_replay PATH``: list, export, run or move into Redis a file store's jobs."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core import reports
from csjd_django.management import project_app, reported


class Command(BaseCommand):
    help = "List, export (--export), run (--run) or move into Redis (--into-redis) a store's jobs."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", help="The store (default: CSJD_STORE_PATH).")
        actions = parser.add_mutually_exclusive_group()
        actions.add_argument("--export", action="store_true", help="Print jobs as JSON lines.")
        actions.add_argument(
            "--run", action="store_true", help="Run the stored jobs with this project's handlers."
        )
        actions.add_argument(
            "--into-redis",
            action="store_true",
            help="Move them into the Redis queues of CSJD_REDIS_URL.",
        )
        parser.add_argument(
            "--repair",
            action="store_true",
            help="Open a log corrupted in the middle (keeps a copy).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings  # noqa: PLC0415

        path = options["path"] or getattr(settings, "CSJD_STORE_PATH", None)
        if not path:
            raise CommandError("give a store path or set CSJD_STORE_PATH")
        action = "list"
        if options["into_redis"]:
            action = "into-redis"
        elif options["run"]:
            action = "run"
        elif options["export"]:
            action = "export"
        with reported():
            reports.replay(
                str(path),
                project_app() if action in ("run", "into-redis") else None,
                action,
                repair=options["repair"],
                echo=self.stdout.write,
                needed_by="manage.py csjd_replay --into-redis",
            )
