"""The outbox on the Django ORM (``CSJD_OUTBOX``): `DjangoOutbox`, one per database.

With ``CSJD_OUTBOX = True`` (or a list of database aliases), ``delay_on_commit``,
``apply_async_on_commit`` and the Tasks backend's ``enqueue`` write the job as a row of
`OutboxJob` in the caller's transaction (on the database ``using=`` names); every worker
relays the rows to the queue (`csjd_core.outbox.Relay`). PostgreSQL and MySQL 8 claim rows
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (relays share them); PostgreSQL also notifies the
relays at commit (``LISTEN``/``NOTIFY``), with polling behind it. SQLite has no row locks: its
relays take turns (one is enough; see docs/django.md).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Count, F, Min, Q
from django.utils import timezone

from csjd_core.errors import SettingsError
from csjd_core.job import Job
from csjd_core.limits import brief
from csjd_core.outbox import (
    NOTIFY_CHANNEL,
    POLL_INTERVAL,
    Claim,
    Found,
    Listener,
    Outbox,
    OutboxRow,
    OutboxStats,
    PsycopgListener,
    encode_job,
    found_row,
    relay_settings,
)

__all__ = ["OUTBOX_IN_MEMORY", "SETTINGS", "DjangoOutbox", "OutboxSettings", "outbox_settings"]

logger = logging.getLogger("csjd_django")

#: The outbox's settings (Django's own: not `App` options).
SETTINGS = ("CSJD_OUTBOX", "CSJD_OUTBOX_NOTIFY", "CSJD_OUTBOX_POLL_INTERVAL")
#: Why ``CSJD_OUTBOX`` is refused in in-process mode without a store.
OUTBOX_IN_MEMORY = (
    "the outbox needs a queue that survives a crash: with CSJD_MODE='inprocess' and no "
    "CSJD_STORE_PATH the relay would hand committed jobs to memory, which a crash empties"
)
#: Heartbeats older than this are pruned.
_FORGET_RELAYS = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """``CSJD_OUTBOX`` (the databases with an outbox, none when off), ``CSJD_OUTBOX_NOTIFY``
    and ``CSJD_OUTBOX_POLL_INTERVAL``."""

    databases: tuple[str, ...] = ()
    notify: bool = True
    poll_interval: float = POLL_INTERVAL


def outbox_settings() -> OutboxSettings:
    """The outbox settings, validated.

    Raises:
        SettingsError: a bad value, naming the setting.
    """
    raw = getattr(settings, "CSJD_OUTBOX", False)
    if raw is True:
        databases: tuple[str, ...] = (DEFAULT_DB_ALIAS,)
    elif raw is False or raw is None:
        databases = ()
    elif isinstance(raw, list | tuple) and not raw:
        raise SettingsError("CSJD_OUTBOX", "an empty list names no database (False: no outbox)")
    elif isinstance(raw, list | tuple) and all(isinstance(a, str) for a in raw):
        databases = tuple(dict.fromkeys(raw))
        unknown = [alias for alias in databases if alias not in settings.DATABASES]
        if unknown:
            raise SettingsError(
                "CSJD_OUTBOX", f"{unknown[0]!r} is not a database of settings.DATABASES"
            )
    else:
        raise SettingsError(
            "CSJD_OUTBOX", f"must be True, False or a list of database aliases, got {brief(raw)}"
        )
    given = {name: getattr(settings, name) for name in SETTINGS[1:] if hasattr(settings, name)}
    return OutboxSettings(databases, *relay_settings(given))


class DjangoOutbox(Outbox):
    """The outbox table of one database (`csjd_django.models.OutboxJob`).

    Args:
        using: the database alias.
        notify: on PostgreSQL, notify listening relays when a transaction that wrote rows
            commits (``NOTIFY`` is sent with the commit; without it relays find rows by
            polling).
        poll_interval: seconds between a relay's looks without a notification.
    """

    def __init__(
        self,
        using: str = DEFAULT_DB_ALIAS,
        *,
        notify: bool = True,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.using = using
        self.name = f"django:{using}"
        self.notify = notify
        self.poll_interval = poll_interval

    @property
    def _connection(self) -> Any:
        return connections[self.using]

    @property
    def concurrent(self) -> bool:  # type: ignore[override]
        return bool(self._connection.features.has_select_for_update_skip_locked)

    @property
    def _postgres(self) -> bool:
        return self._connection.vendor == "postgresql"

    # -- writing (the caller's transaction) -------------------------------------------------
    def add(self, job: Job) -> None:
        """Write ``job`` in the current transaction of this database (committed at once
        outside one); with ``notify``, relays hear of it at the commit.

        Raises:
            InvalidJob: a malformed job (nothing is written).
        """
        from csjd_django.models import OutboxJob  # noqa: PLC0415 - needs the app registry

        data = encode_job(job)
        with transaction.atomic(using=self.using):
            OutboxJob.objects.using(self.using).create(job_id=job.id, queue=job.queue, data=data)
            if self.notify and self._postgres:
                with self._connection.cursor() as cursor:
                    cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])

    # -- the relay's side -------------------------------------------------------------------
    @contextmanager
    def claim(self, limit: int) -> Iterator[Claim]:
        from csjd_django.models import OutboxJob  # noqa: PLC0415

        self._reconnect_after_errors()
        rows = OutboxJob.objects.using(self.using)
        with transaction.atomic(using=self.using):
            now = timezone.now()
            due = rows.filter(
                Q(available_at__isnull=True) | Q(available_at__lte=now), problem__isnull=True
            ).order_by("id")
            if self.concurrent:
                due = due.select_for_update(skip_locked=True)
            claim = Claim(
                [OutboxRow(*fields) for fields in due.values_list("id", "data", "attempts")[:limit]]
            )
            yield claim
            if claim.done and self._connection.vendor == "mysql":
                # One row at a time: InnoDB's scan of an ``IN (...)`` list locks records
                # beside it, which are other relays' rows (two relays deadlock on each other;
                # seen on MariaDB with the SQLAlchemy outbox).
                for key in sorted(claim.done):
                    rows.filter(id=key).delete()
            elif claim.done:
                rows.filter(id__in=claim.done).delete()
            by_delay: dict[float, list[Any]] = defaultdict(list)
            for key, delay in claim.postponed:
                by_delay[delay].append(key)
            for delay, keys in by_delay.items():
                rows.filter(id__in=keys).update(
                    available_at=now + timedelta(seconds=delay), attempts=F("attempts") + 1
                )
            for key, reason in claim.set_aside:
                rows.filter(id=key).update(problem=reason)

    def _reconnect_after_errors(self) -> None:
        """Close this thread's connection if an error broke it (a database restart): the
        relay's next query reconnects. (Not `close_if_unusable_or_obsolete`, which also closes
        it after each batch under the default ``CONN_MAX_AGE = 0``: the relay is no request.)"""
        connection = self._connection
        if connection.connection is not None and connection.errors_occurred:
            if not connection.is_usable():
                connection.close()
            connection.errors_occurred = False

    def listener(self) -> Listener | None:
        if not (self.notify and self._postgres):
            return None
        connection = self._connection
        if connection.Database.__name__ != "psycopg":  # psycopg2 cannot wait with a timeout
            return None
        raw = connection.Database.connect(**connection.get_connection_params(), autocommit=True)
        return PsycopgListener(raw)

    def find(self, job_id: str) -> Found | None:
        from csjd_django.models import OutboxJob  # noqa: PLC0415

        row = (
            OutboxJob.objects.using(self.using)
            .filter(job_id=job_id)
            .order_by("id")
            .values_list("data", "created_at", "problem")
            .first()
        )
        return None if row is None else found_row(*row)

    def stats(self) -> OutboxStats:
        from csjd_django.models import OutboxJob, OutboxRelay  # noqa: PLC0415

        waiting = Q(problem__isnull=True)
        figures = OutboxJob.objects.using(self.using).aggregate(
            depth=Count("id", filter=waiting),
            oldest=Min("created_at", filter=waiting),
            set_aside=Count("id", filter=~waiting),
        )
        relays = dict(OutboxRelay.objects.using(self.using).values_list("name", "seen_at"))
        return OutboxStats(figures["depth"], figures["oldest"], figures["set_aside"], relays)

    def beat(self, relay: str) -> None:
        from csjd_django.models import OutboxRelay  # noqa: PLC0415

        now = timezone.now()
        relays = OutboxRelay.objects.using(self.using)
        relays.update_or_create(name=relay, defaults={"seen_at": now})
        relays.filter(seen_at__lt=now - _FORGET_RELAYS).delete()

    def close(self) -> None:
        """Close this thread's connection to the database (the relay thread's, at its end)."""
        self._connection.close()

    def __repr__(self) -> str:
        return f"DjangoOutbox(using={self.using!r})"
