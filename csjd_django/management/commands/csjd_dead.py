"""``manage.py csjd_dead list|show|requeue|purge``: this project's dead letters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core.cli import main as csjd_cli
from csjd_django.management import redis_app


class Command(BaseCommand):
    help = "Dead letters: list, show ENTRY, requeue ENTRY... | --all, purge."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "show", "requeue", "purge"])
        parser.add_argument("entry_ids", nargs="*")
        parser.add_argument("--queue")
        parser.add_argument("--all", action="store_true", help="requeue: every dead letter.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args: Any, **options: Any) -> None:
        redis_app("manage.py csjd_dead")
        action = options["action"]
        argv = [
            "dead",
            action,
            "csjd_django.management.commands.csjd_replay:redis_app",
            *options["entry_ids"],
        ]
        if options["queue"]:
            argv += ["--queue", options["queue"]]
        if options["all"] and action == "requeue":
            argv.append("--all")
        if options["yes"] and action in ("requeue", "purge"):
            argv.append("--yes")
        try:
            csjd_cli.main(args=argv, prog_name="manage.py csjd_dead", standalone_mode=False)
        except Exception as exc:
            raise CommandError(str(exc)) from exc
