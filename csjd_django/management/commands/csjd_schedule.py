"""``manage.py csjd_schedule [--json] [pause NAME | resume NAME | run NAME]``: this project's
periodic jobs (``@csjd.job(schedule=...)`` and ``CSJD_SCHEDULE``), as ``csjd schedule`` prints
them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core import operations, reports
from csjd_django.management import project_app, reported


class Command(BaseCommand):
    help = (
        "Periodic jobs: list them (no action), pause NAME, resume NAME, or run NAME now "
        "(outside its slots)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", nargs="?", choices=operations.SCHEDULE_ACTIONS)
        parser.add_argument("name", nargs="?", help="The schedule (its name in the listing).")
        parser.add_argument("--json", action="store_true", help="List as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        action, name = options["action"], options["name"]
        if action is not None and name is None:
            raise CommandError(f"{action} takes the name of a schedule", returncode=2)
        if action is None and name is not None:
            raise CommandError("give an action (pause, resume, run) before the name", returncode=2)
        if action is not None and options["json"]:
            raise CommandError("--json is for the listing (no action)", returncode=2)
        echo = self.stdout.write
        with reported():
            app = project_app()
            if action is None:
                reports.schedules(app, options["json"], echo=echo)
            else:
                reports.schedule_action(app, action, name, echo=echo)
