"""``manage.py outbox_status_race JOB_ID``: ``status()`` of a job that a relay moves from the
outbox to the queue while ``status`` looks for it (tests/outbox/).

`App.status` looks in the queue, then in the outboxes. Here the outbox's ``find`` first lets a
real `Relay` relay the row (claim, admit to Redis, delete, commit) — the relay of another
process committing between the two looks — then looks. Prints the state, or ``JobNotFound``.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

import csjd_django
from csjd_core import JobNotFound
from csjd_core.operations import worker_dispatcher
from csjd_core.outbox import Found, Relay
from csjd_django.outbox import DjangoOutbox


class RelayedMeanwhile(DjangoOutbox):
    def find(self, job_id: str) -> Found | None:
        dispatcher = worker_dispatcher(csjd_django.app, needed_by="outbox_status_race")
        relay = Relay(DjangoOutbox(), dispatcher)
        relay.relay_once()
        dispatcher.close()
        sys.stdout.write(f"relayed meanwhile {relay.counters.relayed}\n")
        return super().find(job_id)


class Command(BaseCommand):
    help = "status() of a job relayed between the queue's look and the outbox's."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id")

    def handle(self, *args: Any, **options: Any) -> None:
        app = csjd_django.app
        app.configure_from_settings()
        app.outboxes = (RelayedMeanwhile(),)
        try:
            state = app.status(options["job_id"]).state.value
        except JobNotFound:
            state = "JobNotFound"
        sys.stdout.write(f"status {state}\n")
