"""The transactional outbox of a Flask app: ``CSJD(app, outbox=db)``, ``db`` a Flask-SQLAlchemy
``SQLAlchemy`` extension (see docs/flask.md, "Transactional outbox").

``job.delay_on_commit(...)`` writes the job into the caller's session (default ``db.session``)
with `csjd_core.sqlalchemy_outbox.SQLAlchemyOutbox`; the app's own ``db.session.commit()``
commits it, a rollback discards it. Relays (`csjd_core.outbox.Relay`) move the committed rows to
the queue: every ``flask csjd run`` (``--no-relay`` opts out), ``flask csjd relay``, and in
in-process mode (with a file store) the web process itself, woken at the commit.
Immediate mode (tests) writes no row: the job runs when the session commits.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Flask

from csjd_core.app import App, Mode
from csjd_core.errors import CSJDError, SettingsError
from csjd_core.job import Job
from csjd_core.limits import brief
from csjd_core.outbox import relay_settings

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, SessionTransaction

    from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox

__all__ = [
    "OUTBOX_IN_MEMORY",
    "SETTINGS",
    "FlaskOutbox",
    "NoOutbox",
    "on_commit",
]

logger = logging.getLogger("csjd_flask")

#: The outbox's ``app.config`` keys (the extension's own: not `App` options).
SETTINGS = ("CSJD_OUTBOX_NOTIFY", "CSJD_OUTBOX_POLL_INTERVAL")
#: Why an outbox is refused in in-process mode without a store.
OUTBOX_IN_MEMORY = (
    "CSJD(app, outbox=db) needs a queue that survives a crash: with CSJD_MODE='inprocess' and "
    "no CSJD_STORE_PATH the relay would hand committed jobs to memory, which a crash empties; "
    "set CSJD_STORE_PATH (one process) or CSJD_MODE='redis'"
)


class NoOutbox(CSJDError, RuntimeError):
    """``delay_on_commit`` / ``apply_async_on_commit`` on an app configured without an outbox."""


class FlaskOutbox:
    """What ``CSJD(app, outbox=db)`` set up for one Flask app: the Flask-SQLAlchemy extension
    ``db`` and, except in immediate mode, the `SQLAlchemyOutbox` on its tables (the engine is
    ``db.engine`` of this app, looked up on first use), which the core `App` relays.

    Raises:
        TypeError: ``db`` is not a Flask-SQLAlchemy extension.
        SettingsError: in-process mode without a store, or a bad outbox key.
    """

    def __init__(self, app: Flask, core: App, db: SQLAlchemy, config: Mapping[str, Any]) -> None:
        from sqlalchemy import MetaData  # noqa: PLC0415

        from csjd_core.sqlalchemy_outbox import SQLAlchemyOutbox, outbox_tables  # noqa: PLC0415

        # Not ``hasattr(db, "engine")``: outside an application context that raises.
        metadata = getattr(db, "metadata", None)
        if not (isinstance(metadata, MetaData) and hasattr(type(db), "engine")):
            raise TypeError(
                f"outbox= takes a Flask-SQLAlchemy extension (db = SQLAlchemy()), got {brief(db)}"
            )
        notify, poll_interval = relay_settings(config)  # checked before anything is made
        if core.mode is Mode.INPROCESS and core.config.store is None:
            raise SettingsError("CSJD_STORE_PATH", OUTBOX_IN_MEMORY)
        self.db = db
        self.core = core
        #: The outbox's tables, on ``db.metadata`` (``db.create_all()``, Flask-Migrate).
        self.jobs_table, self.relays_table = outbox_tables(db.metadata)
        #: The outbox relays read (``None`` in immediate mode: jobs run at the commit).
        self.outbox: SQLAlchemyOutbox | None = None
        if core.mode is not Mode.IMMEDIATE:
            self.outbox = SQLAlchemyOutbox(
                _engine_of(app, db),
                self.jobs_table,
                self.relays_table,
                notify=notify,
                poll_interval=poll_interval,
                name=f"flask:{app.name}",
            )

    def enqueue_on_commit(self, job: Job, session: Any = None) -> None:
        """Write ``job`` into ``session`` (default ``db.session``), to be relayed once it
        commits; in immediate mode, run it when the session commits instead.

        Raises:
            TypeError: ``session`` is not a SQLAlchemy session.
            InvalidJob: a malformed job (nothing is written).
        """
        session = self._session(session)
        if self.outbox is None:  # immediate mode: no row, the job runs at the commit
            traced = self.core.traced(job)  # the trace of this call, not of the commit
            on_commit(session, lambda: self._run(traced))
            return
        self.outbox.add(session, self.core.outbox_job(job))
        if self.core.mode is Mode.INPROCESS:  # this process relays: tell it at the commit
            on_commit(session, self._relay_now)

    def _session(self, session: Any) -> Session:
        from sqlalchemy.orm import Session, scoped_session  # noqa: PLC0415

        if session is None:
            session = self.db.session
        if isinstance(session, scoped_session):
            session = session()  # this application context's session
        if not isinstance(session, Session):
            raise TypeError(f"session must be a SQLAlchemy Session, got {brief(session)}")
        return session

    def _run(self, job: Job) -> None:
        try:
            self.core.enqueue(job)
        except Exception:  # the commit is done: the caller is gone, this log line is all
            logger.exception("job not run at the commit id=%r type=%r", job.id, job.type)

    def _relay_now(self) -> None:
        dispatcher = self.core.dispatcher
        if not dispatcher.started:
            dispatcher.start()
        dispatcher.wake_relays()


def _engine_of(app: Flask, db: SQLAlchemy) -> Callable[[], Engine]:
    """A function returning ``db.engine`` of ``app`` (inside an application context of it:
    the relay thread has none). Weak: the outbox never keeps the app alive."""
    app_ref = weakref.ref(app)

    def engine() -> Engine:
        flask_app = app_ref()
        if flask_app is None:
            raise CSJDError("the Flask app of this outbox was garbage-collected")
        with flask_app.app_context():
            return db.engine

    return engine


# -- after the commit ------------------------------------------------------------------------
_PENDING = "csjd.on_commit"


def on_commit(session: Session, callback: Callable[[], object]) -> None:
    """Call ``callback`` once the transaction under way in ``session`` commits (one is begun
    if none is); never if it rolls back — nor if the savepoint under way when it was
    registered rolls back, nor if the session is closed without a commit. A callback's error
    is logged (the commit is done)."""
    from sqlalchemy import event  # noqa: PLC0415

    pending: list[tuple[SessionTransaction, Callable[[], object]]] | None = session.info.get(
        _PENDING
    )
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_soft_rollback", _after_soft_rollback)
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    pending.append((transaction, callback))


def _root(transaction: SessionTransaction) -> SessionTransaction:
    while transaction.parent is not None:
        transaction = transaction.parent
    return transaction


def _after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # a savepoint released: its callbacks wait for the outer commit
    root = session.get_transaction()
    pending = session.info.get(_PENDING) or []
    # Those of another root were registered in a transaction closed without a commit.
    due = [callback for transaction, callback in pending if _root(transaction) is root]
    pending.clear()
    for callback in due:
        try:
            callback()
        except Exception:
            logger.exception("a callback after the commit failed callback=%r", callback)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    pending = session.info.get(_PENDING)
    if pending:
        pending[:] = [
            (transaction, callback)
            for transaction, callback in pending
            if not _within(transaction, previous_transaction)
        ]


def _within(transaction: SessionTransaction, outer: SessionTransaction) -> bool:
    """Whether ``transaction`` is ``outer`` or one begun inside it."""
    current: SessionTransaction | None = transaction
    while current is not None:
        if current is outer:
            return True
        current = current.parent
    return False
