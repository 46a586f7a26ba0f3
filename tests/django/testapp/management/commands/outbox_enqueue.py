"""``manage.py outbox_enqueue N``: a web process of the outbox fault tests (tests/outbox/).

It writes N ``outbox.counted`` jobs with ``delay_on_commit`` in one ``transaction.atomic()``
(``CSJD_OUTBOX``: rows in that transaction, nothing sent to Redis), then prints each committed
job id on a line of its own and ``committed N at=<time.time()>`` last. ``--transactions T``
commits them in T transactions one after the other (the lines after each commit).
``--rollback`` raises inside the block instead (and prints ``rolled back N``);
``--kill-after-commit`` SIGKILLs this process right after the (last) commit, once printed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from testapp.jobs import counted


class RolledBack(Exception):
    pass


class Command(BaseCommand):
    help = "Commit N counted jobs in one transaction through the outbox (tests/outbox/)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("count", type=int)
        parser.add_argument("--seconds", type=float, default=0.0, help="Each job sleeps this.")
        parser.add_argument("--kill-after-commit", action="store_true")
        parser.add_argument("--rollback", action="store_true")
        parser.add_argument("--transactions", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> None:
        count, transactions = options["count"], options["transactions"]
        for number in range(transactions):
            size = count // transactions + (number < count % transactions)
            if not self.commit(size, options["seconds"], rollback=options["rollback"]):
                return
        if options["kill_after_commit"]:
            os.kill(os.getpid(), signal.SIGKILL)

    def commit(self, count: int, seconds: float, *, rollback: bool) -> bool:
        ids: list[str] = []
        try:
            with transaction.atomic():
                for _ in range(count):
                    ids.append(counted.delay_on_commit(seconds).id)
                if rollback:
                    raise RolledBack
        except RolledBack:
            sys.stdout.write(f"rolled back {count}\n")
            sys.stdout.flush()
            return False
        committed_at = time.time()
        sys.stdout.write("".join(f"{job_id}\n" for job_id in ids))
        sys.stdout.write(f"committed {count} at={committed_at:.6f}\n")
        sys.stdout.flush()
        return True
