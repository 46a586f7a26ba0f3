"""The project's CSJD `App`, configured from ``settings.CSJD_*`` on first use."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, transaction

from csjd_core.app import App, JobFunction, JobHandle, Mode
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.errors import SettingsError
from csjd_core.job import Job
from csjd_core.web_metrics import WebMetrics, install_web_metrics, metrics_settings
from csjd_django.outbox import OUTBOX_IN_MEMORY, DjangoOutbox, outbox_settings

__all__ = ["DjangoApp", "DjangoJobFunction"]

logger = logging.getLogger("csjd_django")


class DjangoJobFunction(JobFunction[Any, Any]):
    """``@csjd.job`` functions: the core family plus transaction-aware enqueueing."""

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Enqueue when the current transaction commits (at once outside a transaction);
        nothing is enqueued if it rolls back."""
        return self.apply_async_on_commit(args, kwargs)

    def apply_async_on_commit(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        using: str | None = None,
        **options: Any,
    ) -> JobHandle[Any]:
        """`apply_async` when the transaction of database ``using`` commits; nothing is
        enqueued if it rolls back (`DjangoApp.enqueue_on_commit`).

        The job is built and validated now (bad arguments fail here, inside the transaction).
        With ``CSJD_OUTBOX`` it is written to the outbox in this transaction; without, it is
        admitted after the commit, and if that fails the error is only logged.
        """
        options.setdefault("job_id", uuid.uuid4().hex)
        job = self.build_job(args, kwargs, **options)
        app = self.app
        assert isinstance(app, DjangoApp)
        app.enqueue_on_commit(job, using=using)
        return JobHandle(app, job.id, job.queue)


class DjangoApp(App):
    """An `App` whose settings come from Django's, read when the dispatcher is first built."""

    job_class = DjangoJobFunction

    def __init__(self) -> None:
        super().__init__(name="django")
        self._configured = False
        #: The schedules that ``CSJD_SCHEDULE`` put in `schedules` (replaced on `reset`).
        self.setting_schedules: frozenset[str] = frozenset()
        #: The outbox of each database ``CSJD_OUTBOX`` names (none in immediate mode).
        self.outbox_by_database: dict[str, DjangoOutbox] = {}
        self._ticking: tuple[int, bool] | None = None  # (pid, ticks) once decided
        self._ticking_failed: tuple[int, float] | None = None  # (pid, monotonic time)
        #: What ``csjd_django.metrics.metrics_view`` serves (``None``: ``CSJD_METRICS`` off).
        self.web_metrics: WebMetrics | None = None

    def configure_from_settings(self) -> None:
        """Apply ``settings.CSJD_*`` once (until `reset`), ``CSJD_SCHEDULE`` included.

        Raises:
            SettingsError: a bad or unknown ``CSJD_*`` setting (``manage.py check`` lists
                them all).
        """
        from csjd_django.conf import (  # noqa: PLC0415
            csjd_settings,
            in_memory,
            options_from_settings,
        )
        from csjd_django.schedules import install_schedules  # noqa: PLC0415

        with self._lock:
            if not self._configured:
                options = options_from_settings()
                outbox = outbox_settings()
                metrics = metrics_settings(csjd_settings())
                if outbox.databases and in_memory(options):
                    raise SettingsError("CSJD_OUTBOX", OUTBOX_IN_MEMORY)
                self.configure(**options)
                self.setting_schedules = install_schedules(self, self.setting_schedules)
                # Immediate mode (tests) runs a job at the commit: no outbox, no relay.
                relayed = () if self.mode is Mode.IMMEDIATE else outbox.databases
                self.outbox_by_database = {
                    alias: DjangoOutbox(
                        alias, notify=outbox.notify, poll_interval=outbox.poll_interval
                    )
                    for alias in relayed
                }
                self.outboxes = tuple(self.outbox_by_database.values())
                # Last: in-process, its exporter joins the hooks of the dispatcher to be built.
                self.web_metrics = install_web_metrics(self, metrics)
                self._configured = True

    def enqueue_on_commit(self, job: Job, *, using: str | None = None) -> None:
        """Enqueue ``job`` if the current transaction of database ``using`` commits (at once
        outside a transaction).

        With ``CSJD_OUTBOX`` the job is written to that database's outbox in the transaction:
        once it commits, a relay admits it, whatever happens to this process or to Redis.
        Without, it is admitted by a ``transaction.on_commit`` callback: if that admission
        fails (Redis down, queue full) the error is only logged — the caller is gone.

        Raises:
            SettingsError: a bad setting, or ``CSJD_OUTBOX`` does not name ``using``.
            InvalidJob: a malformed job (nothing is written).
        """
        self.configure_from_settings()
        alias = using or DEFAULT_DB_ALIAS
        outbox = self.outbox_by_database.get(alias)
        if outbox is None and self.outbox_by_database:
            if alias not in settings.DATABASES:
                raise SettingsError("CSJD_OUTBOX", f"{alias!r} is not a database of DATABASES")
            names = ", ".join(map(repr, self.outbox_by_database))
            raise SettingsError(
                "CSJD_OUTBOX",
                f"database {alias!r} has no outbox (CSJD_OUTBOX covers {names}): list it, "
                f"e.g. CSJD_OUTBOX = [{names}, {alias!r}], and migrate --database {alias}",
            )
        if outbox is not None:
            outbox.add(self.outbox_job(job))
            if self.mode is Mode.INPROCESS:  # this process relays: tell it at the commit
                transaction.on_commit(self._relay_now, using=alias, robust=True)
            return

        traced = self.traced(job)  # the trace of this call, not of the commit

        def enqueue() -> None:
            try:
                self.enqueue(traced)
            except Exception:  # any error: the caller is gone, this log line is all there is
                logger.exception(
                    "enqueue after commit failed; job not enqueued id=%r type=%r", job.id, job.type
                )

        transaction.on_commit(enqueue, using=alias, robust=True)

    def _relay_now(self) -> None:
        dispatcher = self.dispatcher
        if not dispatcher.started:
            dispatcher.start()
        dispatcher.wake_relays()

    def start_in_process(self) -> bool:
        """In in-process mode, start this process's dispatcher if the project has schedules
        or an outbox (they tick and relay only while it runs: rows left by a crash are
        relayed at once); Redis mode's workers do both, and immediate mode neither. Called on
        each request (``request_started``): only the first one in a process does anything
        (after a failure, the first one a minute later tries again).

        Returns:
            Whether the dispatcher ticks schedules or relays an outbox now.

        Raises:
            SettingsError: a bad ``CSJD_*`` setting.
            JobStoreLocked: the file store is held by another process.
        """
        pid = os.getpid()
        decided = self._ticking
        if decided is not None and decided[0] == pid:
            return decided[1]
        failed = self._ticking_failed
        if failed is not None and failed[0] == pid and time.monotonic() - failed[1] < 60:
            return False
        with self._lock:
            try:
                self.configure_from_settings()
                ticks = self.mode is Mode.INPROCESS and bool(self.schedules or self.outboxes)
                if ticks and not self.dispatcher.started:
                    self.dispatcher.start()
                    logger.info(
                        "in-process dispatcher started pid=%d schedules=%s outbox=%s",
                        pid,
                        ",".join(sorted(self.schedules)) or "-",
                        ",".join(outbox.name for outbox in self.outboxes) or "-",
                    )
            except BaseException:
                self._ticking_failed = (pid, time.monotonic())
                raise
            self._ticking = (pid, ticks)
            return ticks

    def reset(self, timeout: float | None = 5.0) -> None:
        """Stop this process's dispatcher and forget the settings read (when a ``CSJD_*``
        setting changes, e.g. under ``override_settings``)."""
        self.stop(timeout)
        with self._lock:
            self._configured = False
            self._ticking = self._ticking_failed = None

    def _build(self) -> BaseDispatcher:
        if not self._configured:
            self.configure_from_settings()
        return super()._build()
