"""``manage.py csjd_stats``: queue lengths, in flight, scheduled, dead letters, consumers."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core.cli import main as csjd_cli
from csjd_django.management import redis_app


class Command(BaseCommand):
    help = "Cluster-wide figures of this project's Redis queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queues", help="Comma-separated queues.")
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        redis_app("manage.py csjd_stats")
        argv = ["stats", "csjd_django.management.commands.csjd_replay:redis_app"]
        if options["queues"]:
            argv += ["--queues", options["queues"]]
        if options["json"]:
            argv.append("--json")
        try:
            csjd_cli.main(args=argv, prog_name="manage.py csjd_stats", standalone_mode=False)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
