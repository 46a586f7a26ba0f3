"""Immediate mode: every job runs at enqueue, in the caller's thread (for users' tests)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from csjd_core.backends.memory import MemoryBackend
from csjd_core.config import Config
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.engine.pool import Worker
from csjd_core.engine.registry import HandlerRegistry
from csjd_core.job import Job
from csjd_core.retry import RetryPolicy

if TYPE_CHECKING:
    from csjd_core.periodic import Schedule

__all__ = ["ImmediateDispatcher"]


class ImmediateDispatcher(BaseDispatcher):
    """Like Celery's ``task_always_eager`` and Django's ``ImmediateBackend``.

    ``submit`` returns once the job has finished: every attempt runs back to back (retries do
    not wait for their backoff), ``run_at`` / countdowns are not waited for, and failures are
    recorded in the job's status (``handle.result()`` raises `JobFailed`) rather than raised
    from ``submit``. A job enqueued by a running job runs after it, still inside ``submit``.
    """

    def __init__(self, config: Config | None = None, *, registry: HandlerRegistry | None = None):
        self.config = config = config if config is not None else Config()
        super().__init__(
            MemoryBackend(),
            # One thread (the caller's), retries back to back, nothing to detach.
            dataclasses.replace(
                config,
                workers=1,
                max_detached_handlers=0,
                retry=RetryPolicy(base_delay=0, max_delay=0, jitter=None),
                store=None,
            ),
            registry=registry,
            max_results=config.max_results,
        )
        assert isinstance(self._backend, MemoryBackend)
        self._memory = self._backend
        self._local = threading.local()

    def start(self) -> None:
        """Open the backend; immediate mode has no worker threads."""
        self._ensure_open()
        with self._lifecycle:
            self._started = True

    def submit(self, job: Job) -> None:
        """Admit the job and run it (and anything it enqueues) to the end."""
        super().submit(job)
        self._drain()

    def submit_batch(self, jobs: Iterable[Job]) -> None:
        """Admit all jobs (all or none), then run them."""
        super().submit_batch(jobs)
        self._drain()

    def run_now(self, schedule: Schedule) -> str:
        """Run ``schedule``'s job now, before returning (see `BaseDispatcher.run_now`)."""
        job_id = super().run_now(schedule)
        self._drain()
        return job_id

    def _drain(self) -> None:
        local = self._local
        if getattr(local, "draining", False):
            return  # a job enqueued from a running job: the outer loop runs it next
        local.draining = True
        worker = Worker(0, f"{self._engine.worker_prefix}:immediate", self._counters.tally())
        try:
            backend = self._memory
            while True:
                backend.promote_all()
                delivery = backend.fetch(0.0)
                if delivery is None:
                    break
                self._engine.attempt(delivery, worker)
        finally:
            local.draining = False
            worker.close_loop()
            self._counters.retire(worker.tally)
