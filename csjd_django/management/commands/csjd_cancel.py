"""``manage.py csjd_cancel JOB_ID... [--queue Q]`` or ``manage.py csjd_cancel --type T | --all
[--queue Q] [--yes]``: cancel jobs, as ``csjd cancel`` does (and prints)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from csjd_core import reports
from csjd_django.management import confirmation, project_app, reported


class Command(BaseCommand):
    help = (
        "Cancel jobs by id (a waiting job never runs; a running one is told to stop and ends "
        "cancelled), or with --type T / --all every waiting (queued or scheduled) job of the "
        "queue, after a confirmation."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_ids", nargs="*", metavar="JOB_ID")
        parser.add_argument("--queue", default=None, help="The jobs' queue (default: each).")
        parser.add_argument("--type", dest="job_type", help="Bulk: every waiting job of a type.")
        parser.add_argument(
            "--all", dest="everything", action="store_true", help="Bulk: every waiting job."
        )
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args: Any, **options: Any) -> None:
        job_ids = tuple(options["job_ids"])
        bulk = bool(options["job_type"] or options["everything"])
        if job_ids and bulk:
            raise CommandError(
                "give job ids, or --type / --all for the bulk form (not both)", returncode=2
            )
        if not job_ids and not bulk:
            raise CommandError(
                "give job ids, or --type TYPE / --all to cancel waiting jobs", returncode=2
            )
        with reported():
            reports.cancel(
                project_app(),
                job_ids,
                options["queue"],
                job_type=options["job_type"],
                confirm=confirmation(options["yes"]),
                needed_by="manage.py csjd_cancel",
                echo=self.stdout.write,
                warn=self.stderr.write,
            )
