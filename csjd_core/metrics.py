"""Counters every dispatcher keeps, and the reports it returns."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["MetricsSnapshot", "StopReport"]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A consistent view of one dispatcher's counters since it was created.

    ``submitted``: jobs offered to submit/submit_batch; ``accepted``: admitted (plus jobs
    recovered at start); ``processed``: attempts finished with any outcome; ``retried``: retries
    scheduled; ``succeeded`` / ``failed``: jobs that ended so; ``panics``: attempts that raised a
    `BaseException` that is not an `Exception`; ``detached``: handlers abandoned after their
    timeout. When idle, ``processed == succeeded + failed + retried``.
    """

    submitted: int = 0
    accepted: int = 0
    processed: int = 0
    retried: int = 0
    succeeded: int = 0
    failed: int = 0
    panics: int = 0
    detached: int = 0


@dataclass(frozen=True, slots=True)
class StopReport:
    """What ``stop()`` achieved.

    ``finished``: attempts that completed while stopping; ``abandoned``: jobs that had not run
    and are lost (no durable backend; each is logged); ``left_pending``: jobs that had not run and
    stay in the store or in Redis for the next start; ``still_running``: handlers still running at
    the deadline (their jobs stay unfinished: requeued by the store on restart, reclaimed after
    the lease in Redis); ``timed_out``: the deadline passed before everything drained.
    """

    finished: int
    abandoned: int
    left_pending: int
    still_running: int
    timed_out: bool

    @property
    def clean(self) -> bool:
        """True when nothing was abandoned and nothing is still running."""
        return not self.abandoned and not self.still_running


class Counters:
    """Mutable counters behind one lock; `snapshot` is consistent."""

    __slots__ = (
        "accepted",
        "detached",
        "failed",
        "lock",
        "panics",
        "processed",
        "retried",
        "submitted",
        "succeeded",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted = 0
        self.accepted = 0
        self.processed = 0
        self.retried = 0
        self.succeeded = 0
        self.failed = 0
        self.panics = 0
        self.detached = 0

    def snapshot(self) -> MetricsSnapshot:
        """Copy the counters under the lock."""
        with self.lock:
            return MetricsSnapshot(
                self.submitted,
                self.accepted,
                self.processed,
                self.retried,
                self.succeeded,
                self.failed,
                self.panics,
                self.detached,
            )
