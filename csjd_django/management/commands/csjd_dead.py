"""``manage.py csjd_dead list|show|requeue|purge``: this project's dead letters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core import reports
from csjd_django.management import confirmation, project_app, reported

COMMAND = "manage.py csjd_dead"


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = "Dead letters: list, show ENTRY, requeue ENTRY... | --all, purge."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "show", "requeue", "purge"])
        parser.add_argument("entry_ids", nargs="*")
        parser.add_argument("--queue", help="Queue (default: the first of CSJD_QUEUES).")
        parser.add_argument("--count", type=_count, default=50, help="list: how many (50).")
        parser.add_argument("--all", action="store_true", help="requeue: every dead letter.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args: Any, **options: Any) -> None:
        action, queue, ids = options["action"], options["queue"], options["entry_ids"]
        if action == "show" and len(ids) != 1:
            raise CommandError("show takes one dead-letter entry id")
        if action == "requeue" and bool(ids) == bool(options["all"]):
            raise CommandError("give dead-letter entry ids or --all (not both)", returncode=2)
        app = project_app()
        needed_by = f"{COMMAND} {action}"
        confirm = self._confirmation(options["yes"])
        echo = self.stdout.write
        with reported():
            if action == "list":
                reports.dead_list(app, queue, options["count"], needed_by=needed_by, echo=echo)
            elif action == "show":
                reports.dead_show(app, ids[0], queue, needed_by=needed_by, echo=echo)
            elif action == "requeue":
                reports.dead_requeue(
                    app,
                    None if options["all"] else ids,
                    queue,
                    confirm=confirm,
                    needed_by=needed_by,
                    echo=echo,
                    warn=self.stderr.write,
                )
            else:
                reports.dead_purge(app, queue, confirm=confirm, needed_by=needed_by, echo=echo)

    @staticmethod
    def _confirmation(yes: bool) -> reports.Confirm:
        return confirmation(yes)
