"""The project's CSJD `App`, configured from ``settings.CSJD_*`` on first use."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction

from csjd_core.app import App, JobFunction, JobHandle, Mode
from csjd_core.engine.dispatcher import BaseDispatcher

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
        """`apply_async` deferred to ``transaction.on_commit``.

        The job is built and validated now (bad arguments fail here, inside the transaction);
        it is admitted after the commit. If that admission fails (Redis down, queue full),
        the error is logged with the job id — the transaction has committed and cannot be
        undone, so the caller is no longer there to see an exception.
        """
        options.setdefault("job_id", uuid.uuid4().hex)
        job = self.build_job(args, kwargs, **options)

        def enqueue() -> None:
            try:
                self.app.enqueue(job)
            except Exception:  # any error: the caller is gone, this log line is all there is
                logger.exception(
                    "enqueue after commit failed; job not enqueued id=%r type=%r", job.id, job.type
                )

        transaction.on_commit(enqueue, using=using, robust=True)
        return JobHandle(self.app, job.id, job.queue)


class DjangoApp(App):
    """An `App` whose settings come from Django's, read when the dispatcher is first built."""

    job_class = DjangoJobFunction

    def __init__(self) -> None:
        super().__init__(name="django")
        self._configured = False
        #: The schedules that ``CSJD_SCHEDULE`` put in `schedules` (replaced on `reset`).
        self.setting_schedules: frozenset[str] = frozenset()
        self._ticking: tuple[int, bool] | None = None  # (pid, ticks) once decided
        self._ticking_failed: tuple[int, float] | None = None  # (pid, monotonic time)

    def configure_from_settings(self) -> None:
        """Apply ``settings.CSJD_*`` once (until `reset`), ``CSJD_SCHEDULE`` included.

        Raises:
            SettingsError: a bad or unknown ``CSJD_*`` setting (``manage.py check`` lists
                them all).
        """
        from csjd_django.conf import options_from_settings  # noqa: PLC0415 - needs settings
        from csjd_django.schedules import install_schedules  # noqa: PLC0415

        with self._lock:
            if not self._configured:
                self.configure(**options_from_settings())
                self.setting_schedules = install_schedules(self, self.setting_schedules)
                self._configured = True

    def start_ticking(self) -> bool:
        """In in-process mode, start this process's dispatcher if the project has schedules
        (they tick only while it runs); Redis mode's workers tick, and immediate mode never
        does. Called on each request (``request_started``): only the first one in a process
        does anything (after a failure, the first one a minute later tries again).

        Returns:
            Whether the dispatcher ticks schedules now.

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
                ticks = self.mode is Mode.INPROCESS and bool(self.schedules)
                if ticks and not self.dispatcher.started:
                    self.dispatcher.start()
                    logger.info(
                        "in-process dispatcher started to tick schedules pid=%d names=%s",
                        pid,
                        ",".join(sorted(self.schedules)),
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
