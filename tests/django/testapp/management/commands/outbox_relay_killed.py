"""``manage.py outbox_relay_killed``: a relay that dies at the worst moment (tests/outbox/).

It relays one batch of the project's outbox with the real `Relay` and the real Redis admission,
through a `DjangoOutbox` whose claim SIGKILLs this process once the block's body ran — the batch
was admitted to Redis (``dispatcher.relay``) — but before the rows are deleted and the claim's
transaction commits. It prints ``admitted N`` (the rows the relay accounted for) just before.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand

import csjd_django
from csjd_core.operations import worker_dispatcher
from csjd_core.outbox import Claim, Relay
from csjd_django.outbox import DjangoOutbox


class DiesBeforeTheDelete(DjangoOutbox):
    @contextmanager
    def claim(self, limit: int) -> Iterator[Claim]:
        with super().claim(limit) as claim:
            yield claim
            # The relay's body ran: Redis admitted the batch; the DELETE and the COMMIT follow.
            sys.stdout.write(f"admitted {len(claim.done)} of {len(claim.rows)}\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class Command(BaseCommand):
    help = "Relay one outbox batch and die (SIGKILL) before its rows are deleted."

    def handle(self, *args: Any, **options: Any) -> None:
        app = csjd_django.app
        app.configure_from_settings()
        dispatcher = worker_dispatcher(app, needed_by="outbox_relay_killed")
        relay = Relay(DiesBeforeTheDelete(), dispatcher)
        relay.relay_once()
        sys.stdout.write("not killed\n")  # only when no row was due
