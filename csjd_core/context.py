"""The context every handler attempt receives: identity, deadline, cancellation, progress."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from csjd_core.errors import JobTimeout
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
        "attempt",
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
        self._cancelled = False
        # Created on first wait(): most handlers never wait, and an Event per attempt costs.
        self._event: threading.Event | None = None
        # Where set_progress writes (the engine passes them); without them (a context built
        # in a test) it only keeps the value in `progress`.
        self._backend = backend
        self._delivery = delivery

    @property
    def cancelled(self) -> bool:
        """True once the attempt is cancelled (its timeout passed)."""
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
        """Raise `JobTimeout` if the attempt has been cancelled."""
        if self._cancelled:
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

    def cancel(self, *, timed_out: bool = False) -> None:
        """Cancel the attempt (called by the engine; handlers observe it)."""
        if timed_out:
            self.timed_out = True
        self._cancelled = True
        event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, attempt={self.attempt})"
