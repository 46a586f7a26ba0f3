"""The outbox on SQLAlchemy Core: `SQLAlchemyOutbox`, and `outbox_tables` to define its tables
on an application's `MetaData` (the Flask extension's form: ``CSJD(app, outbox=db)``).

The tables are those of the Django outbox (`csjd_django.models`: ``csjd_outbox`` and
``csjd_outbox_relay``, same columns), so both frameworks read one schema. `SQLAlchemyOutbox.add`
writes a row with the caller's `Session` or `Connection`, in its transaction; a relay
(`csjd_core.outbox.Relay`) claims rows in a transaction of its own: PostgreSQL and MySQL 8
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (relays share the rows), SQLite with
``BEGIN IMMEDIATE`` (no row locks: relays take turns on the database's write lock, waiting up to
its busy timeout). On PostgreSQL with psycopg 3, relays also hear commits (``LISTEN``/``NOTIFY``,
polling behind it).

Needs ``pip install "csjd[sqlalchemy]"`` (SQLAlchemy 2).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

from csjd_core.job import Job
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
)

__all__ = ["JOBS_TABLE", "RELAYS_TABLE", "SQLAlchemyOutbox", "outbox_tables"]

#: The tables' names (those of `csjd_django.models.OutboxJob` and `OutboxRelay`).
JOBS_TABLE = "csjd_outbox"
RELAYS_TABLE = "csjd_outbox_relay"
#: Heartbeats older than this are pruned.
_FORGET_RELAYS = timedelta(days=1)


def outbox_tables(metadata: MetaData) -> tuple[Table, Table]:
    """The outbox's tables (rows, relays' heartbeats), defined on ``metadata`` — so that
    ``metadata.create_all()`` (Flask-SQLAlchemy's ``db.create_all()``) and Alembic
    (Flask-Migrate) see them. Defined once: a second call returns the same tables.
    """
    jobs = metadata.tables.get(JOBS_TABLE)
    if jobs is None:
        jobs = Table(
            JOBS_TABLE,
            metadata,
            # BIGINT on servers; SQLite autoincrements only an INTEGER primary key.
            Column(
                "id",
                BigInteger().with_variant(Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            Column("job_id", String(1024), nullable=False),
            Column("queue", String(1024), nullable=True),
            Column("data", Text(), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            # Not before this time (set when the queue was full); NULL: at once.
            Column("available_at", DateTime(timezone=True), nullable=True),
            Column("attempts", Integer(), nullable=False, default=0, server_default=text("0")),
            # Why a relay set the row aside (malformed, refused); NULL: waiting.
            Column("problem", Text(), nullable=True),
            # The name Django's migration gives it: one schema, whichever framework made it.
            Index("csjd_outbox_job_id_587d99c0", "job_id"),
            sqlite_autoincrement=True,
        )
    relays = metadata.tables.get(RELAYS_TABLE)
    if relays is None:
        relays = Table(
            RELAYS_TABLE,
            metadata,
            Column("name", String(255), primary_key=True),
            Column("seen_at", DateTime(timezone=True), nullable=False),
        )
    return jobs, relays


def _utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite and MySQL return the stored UTC naive)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


class SQLAlchemyOutbox(Outbox):
    """The outbox tables of one database, through SQLAlchemy Core.

    Args:
        engine: the database's `Engine`, or a function returning it (called once, on first
            use: a framework whose engine exists only later, e.g. Flask-SQLAlchemy's
            ``db.engine`` inside an application context).
        jobs_table, relays_table: the tables `outbox_tables` defined.
        notify: on PostgreSQL, notify listening relays when a transaction that wrote rows
            commits (without it, relays find rows by polling).
        poll_interval: seconds between a relay's looks without a notification.
        name: this outbox in logs and stats (default ``sqlalchemy:BACKEND:DATABASE``; needed
            when ``engine`` is a function).
    """

    def __init__(
        self,
        engine: Engine | Callable[[], Engine],
        jobs_table: Table,
        relays_table: Table,
        *,
        notify: bool = True,
        poll_interval: float = POLL_INTERVAL,
        name: str | None = None,
    ) -> None:
        if isinstance(engine, Engine):
            self._engine: Engine | None = engine
            self._engine_factory: Callable[[], Engine] | None = None
            url = engine.url
            name = name or f"sqlalchemy:{url.get_backend_name()}:{url.database or ''}"
        else:
            if name is None:
                raise TypeError("SQLAlchemyOutbox: give a name when engine is a function")
            self._engine = None
            self._engine_factory = engine
        self.name = name
        self.jobs = jobs_table
        self.relays = relays_table
        self.notify = notify
        self.poll_interval = poll_interval
        self._concurrent: bool | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The database's engine (from the factory, on first use)."""
        engine = self._engine
        if engine is None:
            with self._lock:
                if self._engine is None:
                    assert self._engine_factory is not None
                    self._engine = self._engine_factory()
                engine = self._engine
        return engine

    @property
    def concurrent(self) -> bool:  # type: ignore[override]
        """Whether relays share rows with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL 8.0.1
        and later, MariaDB 10.6 and later)."""
        if self._concurrent is None:
            dialect = self.engine.dialect
            if dialect.name == "postgresql":
                self._concurrent = True
            elif dialect.name in ("mysql", "mariadb"):
                if dialect.server_version_info is None:  # known once connected
                    with self.engine.connect():
                        pass
                version = dialect.server_version_info or ()
                mariadb = getattr(dialect, "is_mariadb", False)
                self._concurrent = version >= ((10, 6) if mariadb else (8, 0, 1))
            else:
                self._concurrent = False
        return self._concurrent

    @property
    def _postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    # -- writing (the caller's transaction) -------------------------------------------------
    def add(self, target: Session | Connection, job: Job) -> None:
        """Write ``job`` with ``target`` (a `Session` or a `Connection` of this database), in
        its transaction — a Session begins one if none is under way; nothing is committed here.
        With ``notify``, relays hear of it at the commit (PostgreSQL).

        Raises:
            InvalidJob: a malformed job (nothing is written).
        """
        data = encode_job(job)
        target.execute(
            insert(self.jobs).values(
                job_id=job.id, queue=job.queue, data=data, created_at=_now(), attempts=0
            )
        )
        if self.notify and self._postgres:
            target.execute(select(func.pg_notify(NOTIFY_CHANNEL, "")))

    # -- the relay's side -------------------------------------------------------------------
    @contextmanager
    def _transaction(self, connection: Connection) -> Iterator[None]:
        """The claim's transaction: under READ COMMITTED on MySQL and MariaDB, whose default
        (REPEATABLE READ) locks the gaps between rows too — two relays sharing rows with
        SKIP LOCKED then deadlock on each other's gaps when they delete (Django's MySQL
        backend reads committed by default)."""
        if connection.dialect.name in ("mysql", "mariadb"):
            connection.execution_options(isolation_level="READ COMMITTED")
        with connection.begin():
            yield

    @contextmanager
    def claim(self, limit: int) -> Iterator[Claim]:
        jobs = self.jobs
        with self.engine.connect() as connection, self._transaction(connection):
            if connection.dialect.name == "sqlite":
                self._begin_immediate(connection)
            now = _now()
            due = (
                select(jobs.c.id, jobs.c.data, jobs.c.attempts)
                .where(
                    jobs.c.problem.is_(None),
                    or_(jobs.c.available_at.is_(None), jobs.c.available_at <= now),
                )
                .order_by(jobs.c.id)
                .limit(limit)
            )
            if self.concurrent:
                due = due.with_for_update(skip_locked=True)
            claim = Claim([OutboxRow(*row) for row in connection.execute(due)])
            yield claim
            if claim.done and connection.dialect.name in ("mysql", "mariadb"):
                # One row at a time: InnoDB's scan of an ``IN (...)`` list locks records
                # beside it, which are other relays' rows (two relays deadlock on each other).
                connection.execute(
                    delete(jobs).where(jobs.c.id == bindparam("key")),
                    [{"key": key} for key in sorted(claim.done)],
                )
            elif claim.done:
                connection.execute(delete(jobs).where(jobs.c.id.in_(claim.done)))
            by_delay: dict[float, list[Any]] = defaultdict(list)
            for key, delay in claim.postponed:
                by_delay[delay].append(key)
            for delay, keys in by_delay.items():
                connection.execute(
                    update(jobs)
                    .where(jobs.c.id.in_(keys))
                    .values(
                        available_at=now + timedelta(seconds=delay), attempts=jobs.c.attempts + 1
                    )
                )
            for key, reason in claim.set_aside:
                connection.execute(update(jobs).where(jobs.c.id == key).values(problem=reason))

    @staticmethod
    def _begin_immediate(connection: Connection) -> None:
        """Take SQLite's write lock before reading: the claim's read and its writes are then
        one transaction, and a second relay waits its turn (up to the busy timeout) instead of
        failing on a lock upgrade. Python's sqlite3 driver begins a transaction only before a
        write, so the read would otherwise run outside one."""
        raw = connection.connection.dbapi_connection
        if raw is not None and not getattr(raw, "in_transaction", True):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    def listener(self) -> Listener | None:
        """A `PsycopgListener` on a connection of its own (not the pool's), with ``notify``
        on PostgreSQL through psycopg 3 (``postgresql+psycopg://``); ``None`` otherwise (the
        relay polls). The connection is made from the engine's URL: ``connect_args`` given
        to ``create_engine`` do not apply to it."""
        engine = self.engine
        dialect = engine.dialect
        if not (self.notify and dialect.name == "postgresql" and dialect.driver == "psycopg"):
            return None
        args, params = dialect.create_connect_args(engine.url)
        return PsycopgListener(dialect.connect(*args, **{**params, "autocommit": True}))

    def find(self, job_id: str) -> Found | None:
        jobs = self.jobs
        query = (
            select(jobs.c.data, jobs.c.created_at, jobs.c.problem)
            .where(jobs.c.job_id == job_id)
            .order_by(jobs.c.id)
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else found_row(row[0], _utc(row[1]), row[2])

    def stats(self) -> OutboxStats:
        jobs, relays = self.jobs, self.relays
        with self.engine.connect() as connection:
            depth, oldest = connection.execute(
                select(func.count(), func.min(jobs.c.created_at)).where(jobs.c.problem.is_(None))
            ).one()
            set_aside = connection.execute(
                select(func.count()).select_from(jobs).where(jobs.c.problem.is_not(None))
            ).scalar_one()
            beats = connection.execute(select(relays.c.name, relays.c.seen_at)).all()
        return OutboxStats(
            depth,
            None if oldest is None else _utc(oldest),
            set_aside,
            {name: _utc(seen_at) for name, seen_at in beats},
        )

    def beat(self, relay: str) -> None:
        relays = self.relays
        now = _now()
        with self.engine.begin() as connection:
            upsert = self._upsert_beat(connection.dialect.name, relay, now)
            if upsert is not None:
                connection.execute(upsert)
            else:
                seen = connection.execute(
                    update(relays).where(relays.c.name == relay).values(seen_at=now)
                )
                if not seen.rowcount:
                    connection.execute(insert(relays).values(name=relay, seen_at=now))
            connection.execute(delete(relays).where(relays.c.seen_at < now - _FORGET_RELAYS))

    def _upsert_beat(self, dialect: str, relay: str, now: datetime) -> Executable | None:
        """``INSERT ... ON CONFLICT UPDATE`` where the dialect has one (two relays of one name,
        e.g. two Flask apps of one process on one database, must not fail on the key)."""
        relays = self.relays
        if dialect in ("postgresql", "sqlite"):
            module: Any = postgresql if dialect == "postgresql" else sqlite
            upsert = module.insert(relays).values(name=relay, seen_at=now)
            return upsert.on_conflict_do_update(  # type: ignore[no-any-return]
                index_elements=[relays.c.name], set_={"seen_at": upsert.excluded.seen_at}
            )
        if dialect in ("mysql", "mariadb"):
            upsert_my = mysql.insert(relays).values(name=relay, seen_at=now)
            return upsert_my.on_duplicate_key_update(seen_at=upsert_my.inserted.seen_at)
        return None

    def close(self) -> None:
        """Nothing to release: each claim returns its connection to the engine's pool, and the
        engine is the caller's (``engine.dispose()`` is theirs to call)."""

    def __repr__(self) -> str:
        return f"SQLAlchemyOutbox(name={self.name!r})"
