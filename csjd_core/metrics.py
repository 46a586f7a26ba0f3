"""Counters every dispatcher keeps, and the reports it returns."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

__all__ = ["MetricsSnapshot", "StopReport"]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A consistent view of one dispatcher's counters since it was created.

    ``submitted``: jobs offered to submit/submit_batch; ``accepted``: admitted (plus jobs
    recovered at start); ``processed``: attempts finished with any outcome; ``retried``: retries
    scheduled; ``succeeded`` / ``failed``: jobs that ended so; ``panics``: attempts that raised a
    `BaseException` that is not an `Exception`; ``detached``: handlers abandoned after their
    timeout; ``cancelled``: jobs this dispatcher ended cancelled — by `cancel` (of a job that
    was waiting, or an attempt of its workers that ended after the request) or because they
    expired before they started. When idle, ``processed == succeeded + failed + retried +``
    the cancelled jobs whose attempt ran (``cancelled`` also counts those that never ran).
    """

    submitted: int = 0
    accepted: int = 0
    processed: int = 0
    retried: int = 0
    succeeded: int = 0
    failed: int = 0
    panics: int = 0
    detached: int = 0
    cancelled: int = 0


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


class Tally:
    """Outcome counters written by one thread only (a worker, or the watchdog).

    Single-writer blocks need no lock on the hot path; ``seq`` is a sequence lock so a reader
    never sees half of an update: the writer makes it odd, updates, makes it even again.
    """

    __slots__ = ("cancelled", "failed", "panics", "processed", "retried", "seq", "succeeded")

    def __init__(self) -> None:
        self.seq = 0
        self.processed = 0
        self.retried = 0
        self.succeeded = 0
        self.failed = 0
        self.panics = 0
        self.cancelled = 0

    def read(self) -> tuple[int, int, int, int, int, int]:
        """(processed, retried, succeeded, failed, panics, cancelled), read consistently."""
        while True:
            seq = self.seq
            if not seq & 1:
                values = (
                    self.processed,
                    self.retried,
                    self.succeeded,
                    self.failed,
                    self.panics,
                    self.cancelled,
                )
                if self.seq == seq:
                    return values
            time.sleep(0)  # the writer is mid-update: let it finish


class Counters:
    """A dispatcher's counters; `snapshot` is consistent.

    ``submitted``/``accepted``/``detached`` change under ``lock``; attempt outcomes go to
    per-thread `Tally` blocks so workers never contend for a lock on the hot path.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # next() on itertools.count is atomic under the GIL: submitters never contend.
        self.submitted = itertools.count()
        self.accepted = itertools.count()
        self.detached = 0
        self.lost_successes = 0  # counted by a worker, then refused by the backend (lost claim)
        # Counted as successes by a worker, then recorded as cancelled (a cancel came first).
        self.cancelled_successes = 0
        self.cancelled = 0  # jobs ended cancelled without an attempt of this dispatcher's
        self._bulk: dict[int, int] = {}  # batch increments, keyed by id() of the count
        self._tallies: list[Tally] = []
        self._retired = (0, 0, 0, 0, 0, 0)

    def add(self, counter: itertools.count[int], n: int) -> None:
        """Add ``n`` to ``submitted`` or ``accepted`` (batches, recovery)."""
        with self.lock:
            self._bulk[id(counter)] = self._bulk.get(id(counter), 0) + n

    def tally(self) -> Tally:
        """A new single-writer block for the calling thread."""
        block = Tally()
        with self.lock:
            self._tallies.append(block)
        return block

    def retire(self, block: Tally) -> None:
        """Fold a block whose thread is exiting into the totals."""
        with self.lock:
            values = block.read()
            self._retired = tuple(a + b for a, b in zip(self._retired, values, strict=True))  # type: ignore[assignment]
            self._tallies.remove(block)

    def snapshot(self) -> MetricsSnapshot:
        """Copy the counters."""
        with self.lock:
            processed, retried, succeeded, failed, panics, cancelled = self._retired
            processed -= self.lost_successes
            succeeded -= self.lost_successes + self.cancelled_successes
            cancelled += self.cancelled + self.cancelled_successes
            for block in self._tallies:
                p, r, s, f, x, c = block.read()
                processed += p
                retried += r
                succeeded += s
                failed += f
                panics += x
                cancelled += c
            return MetricsSnapshot(
                _count_value(self.submitted) + self._bulk.get(id(self.submitted), 0),
                _count_value(self.accepted) + self._bulk.get(id(self.accepted), 0),
                processed,
                retried,
                succeeded,
                failed,
                panics,
                self.detached,
                cancelled,
            )


def _count_value(counter: itertools.count[int]) -> int:
    """The next value an `itertools.count` would return, without advancing it."""
    return int(repr(counter)[6:-1])
