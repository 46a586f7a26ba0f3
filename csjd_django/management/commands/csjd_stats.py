"""``manage.py csjd_stats``: queue lengths, in flight, scheduled, dead letters, consumers."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from csjd_core import reports
from csjd_django.management import project_app, reported


class Command(BaseCommand):
    help = "Cluster-wide figures of this project's Redis queues."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--queues", help="Comma-separated queues (default: CSJD_QUEUES).")
        parser.add_argument("--json", action="store_true", help="Print JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        with reported():
            reports.stats(
                project_app(),
                options["queues"],
                options["json"],
                needed_by="manage.py csjd_stats",
                echo=self.stdout.write,
            )
