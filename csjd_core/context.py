"""The context every handler attempt receives: identity, deadline, cancellation, progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from csjd_core.errors import JobCancelled, JobTimeout
from csjd_core.limits import MAX_DURATION
from csjd_core.progress import Progress, make_progress

if TYPE_CHECKING:
    from csjd_core.backends.base import Backend, Delivery

__all__ = ["JobContext"]

_EVENT_LOCK = threading.Lock()


class JobContext:
    """Given to each handler attempt.

    Attributes:
        job_id: the job's id.
        attempt: this attempt's number, 1-based.
        deadline: a `time.monotonic()` value when the attempt times out, or ``None``.
        queue: the queue the job came from (``None`` for the default queue).
        progress: the last `Progress` this attempt reported (`set_progress`), or ``None``.
    """

    __slots__ = (
        "_backend",
        "_cancelled",
        "_delivery",
        "_event",
        "_stop",
        "attempt",
        "cancel_reason",
        "deadline",
        "job_id",
        "progress",
        "queue",
        "timed_out",
    )

    def __init__(
        self,
        job_id: str,
        attempt: int,
        deadline: float | None = None,
        queue: str | None = None,
        backend: Backend | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.deadline = deadline
        self.queue = queue
        self.timed_out = False
        self.progress: Progress | None = None
        #: Why the context is cancelled: ``"timed_out"`` (its deadline passed) or
        #: ``"cancelled"`` (the job's cancellation was requested); ``None`` while it is not.
        self.cancel_reason: str | None = None
        self._cancelled = False
        # Set by the engine while an async handler runs: cancels its task (a cancellation).
        self._stop: Callable[[], None] | None = None
        # Created on first wait(): most handlers never wait, and an Event per attempt costs.
        self._event: threading.Event | None = None
        # Where set_progress writes (the engine passes them); without them (a context built
        # in a test) it only keeps the value in `progress`.
        self._backend = backend
        self._delivery = delivery

    @property
    def cancelled(self) -> bool:
        """True once the attempt is cancelled: its timeout passed, or the job's cancellation
        was requested (`cancel_reason` says which)."""
        return self._cancelled

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None`` without a timeout."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True as soon as the context is cancelled.

        Returns:
            True if cancelled (now or during the wait), False if the time elapsed.
        """
        event = self._event
        if event is None:
            with _EVENT_LOCK:
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
        if self._cancelled:
            return True
        # Clamped: a wait past threading.TIMEOUT_MAX would raise OverflowError in the handler.
        return event.wait(min(seconds, MAX_DURATION))

    def raise_if_cancelled(self) -> None:
        """Raise `JobCancelled` if the job's cancellation was requested, `JobTimeout` if the
        attempt timed out."""
        if self._cancelled:
            if self.cancel_reason == "cancelled":
                raise JobCancelled(f"job {self.job_id!r} was cancelled (attempt {self.attempt})")
            raise JobTimeout(f"job {self.job_id!r} attempt {self.attempt} was cancelled")

    def set_progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report how far the job has come; ``status(job_id).progress`` shows it.

        Cheap enough to call in a tight loop: in-process it is stored at once; in Redis mode
        the last value is written about once a second (and with the outcome), so
        ``status()`` in another process may lag by that much. Progress is advisory: a value
        from an attempt that lost its claim, or that arrives after the job finished, is
        dropped. The job's status keeps the last value, whatever the outcome (a retry's next
        attempt starts from it until it reports its own).

        Args:
            current: work done so far: a finite number >= 0.
            total: the work there is, if known (>= ``current``).
            message: what the handler is doing; cut to
                `csjd_core.limits.MAX_PROGRESS_MESSAGE` characters.

        Raises:
            TypeError: a number that is not a number, a message that is not a str.
            ValueError: a negative or non-finite number, or ``current`` greater than ``total``.
        """
        progress = make_progress(current, total, message)
        self.progress = progress
        backend = self._backend
        if backend is not None and self._delivery is not None:
            backend.set_progress(self._delivery, progress)

    def cancel(self, *, timed_out: bool = False, reason: str | None = None) -> None:
        """Cancel the attempt (called by the engine; handlers observe it): ``timed_out`` at
        its deadline, or with ``reason="cancelled"`` when the job's cancellation is requested.
        The first reason stays."""
        if timed_out:
            self.timed_out = True
        if self.cancel_reason is None:
            self.cancel_reason = "timed_out" if timed_out else (reason or "cancelled")
        self._cancelled = True
        stop = self._stop
        if stop is not None and not timed_out:  # (a timeout cancels the task itself)
            stop()
        event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, attempt={self.attempt})"
