"""``manage.py csjd_dead list|show|requeue|purge``: this project's dead letters."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core import operations, reports
from csjd_core.errors import CSJDError
from csjd_django.management import redis_app

COMMAND = "manage.py csjd_dead"


class Command(BaseCommand):
    help = "Dead letters: list, show ENTRY, requeue ENTRY... | --all, purge."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "show", "requeue", "purge"])
        parser.add_argument("entry_ids", nargs="*")
        parser.add_argument("--queue", help="Queue (default: the first of CSJD_QUEUES).")
        parser.add_argument("--count", type=int, default=50, help="list: how many (50).")
        parser.add_argument("--all", action="store_true", help="requeue: every dead letter.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args: Any, **options: Any) -> None:
        app = redis_app(COMMAND)
        action, queue, ids = options["action"], options["queue"], options["entry_ids"]
        default_queue = queue or app.distributed.queues[0]
        try:
            if action == "list":
                letters = operations.dead_letters(app, queue, options["count"], needed_by=COMMAND)
                if not letters:
                    self.stdout.write(f"no dead letters in queue {default_queue}")
                for letter in letters:
                    self.stdout.write(reports.dead_letter_line(letter))
            elif action == "show":
                if len(ids) != 1:
                    raise CommandError("show takes one dead-letter entry id")
                letter = operations.dead_letter(app, ids[0], queue, needed_by=COMMAND)
                if letter is None:
                    raise CommandError(f"no dead letter {ids[0]}")
                self.stdout.write(json.dumps(letter.to_json(), indent=2))
            elif action == "requeue":
                self._requeue(app, ids, queue, everything=options["all"], yes=options["yes"])
            else:
                count = operations.dead_count(app, queue, needed_by=COMMAND)
                if not count:
                    self.stdout.write(f"no dead letters to purge in queue {default_queue}")
                    return
                self._confirm(f"delete {count} dead letter(s)?", options["yes"])
                self.stdout.write(f"purged {operations.purge_dead(app, queue, needed_by=COMMAND)}")
        except CSJDError as exc:
            raise CommandError(str(exc)) from exc

    def _requeue(
        self, app: Any, ids: list[str], queue: str | None, *, everything: bool, yes: bool
    ) -> None:
        asked = operations.dead_count(app, queue, needed_by=COMMAND) if everything else len(ids)
        if everything and not asked:
            self.stdout.write("no dead letters to requeue")
            return
        if not asked:
            raise CommandError("give dead-letter entry ids or --all")
        self._confirm(f"requeue {asked} dead letter(s)?", yes)
        report = operations.requeue_dead(app, None if everything else ids, queue, needed_by=COMMAND)
        out, errors = reports.requeue_lines(report, asked)
        for line in errors:
            self.stderr.write(line)
        for line in out:
            self.stdout.write(line)

    def _confirm(self, question: str, yes: bool) -> None:
        if not yes and input(f"{question} [y/N]: ").strip().lower() not in ("y", "yes"):
            raise CommandError("Aborted")
