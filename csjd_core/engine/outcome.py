"""The outcome of an attempt: decided here, once, and told to every subscriber.

The engine is the only place that decides whether a failed attempt ends its job or is retried
(`decide`). Every recorded attempt then becomes one `AttemptOutcome` event: the metrics count
it, and hooks (``Hooks.after_attempt``, and the older ``after_succeeded``,
``after_retry_scheduled`` and ``after_failed``), the Django Tasks backend and future exporters
subscribe to it instead of deciding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from csjd_core.backends.base import AttemptError, Delivery
    from csjd_core.job import Job

__all__ = ["TERMINAL_REASONS", "AttemptOutcome", "OutcomeKind", "decide"]


class OutcomeKind(StrEnum):
    """How an attempt ended."""

    SUCCEEDED = "succeeded"
    RETRIED = "retried"  # it raised; another attempt is scheduled
    FAILED = "failed"  # it raised (or could not run); the job failed for good
    PANICKED = "panicked"  # a BaseException that is not an Exception (retried or not)
    TIMED_OUT = "timed_out"  # ran past its timeout (retried or not)
    # The job was cancelled (or expired before it started): always terminal, never retried.
    # An attempt that ran is told; so is a job ended before any attempt (``attempt`` 0).
    CANCELLED = "cancelled"


#: Reasons (`AttemptError.kind`) that end a job whatever attempts remain.
TERMINAL_REASONS = frozenset({"permanent", "unknown_type", "invalid_result", "internal"})


def decide(delivery: Delivery, error: AttemptError) -> tuple[OutcomeKind, bool]:
    """The kind of a failed attempt and whether it ends the job (``terminal``): the one place
    this is decided."""
    terminal = error.kind in TERMINAL_REASONS or delivery.attempt >= delivery.max_attempts
    if error.kind == "panic":
        return OutcomeKind.PANICKED, terminal
    if error.kind == "timeout":
        return OutcomeKind.TIMED_OUT, terminal
    return (OutcomeKind.FAILED if terminal else OutcomeKind.RETRIED), terminal


# Not frozen: a frozen dataclass sets each of its ten fields through object.__setattr__, which
# tripled the cost of the event (built per attempt whenever a hook, the metrics or the Django
# Tasks backend subscribes). Subscribers read it; none may change it.
@dataclass(slots=True)
class AttemptOutcome:
    """One recorded attempt, told to every subscriber (read-only by convention).

    Attributes:
        job: the job.
        kind: how the attempt ended.
        terminal: True when the job ended with it (succeeded, or failed for good).
        attempt: its number, 1-based; ``max_attempts``: the job's.
        error: why it failed (message, traceback and reason, as stored), or ``None``.
        exception: the exception the handler raised, when the event is told on the worker
            thread that ran it (``None`` for a detached timeout).
        result: the JSON return value of a success.
        retry_in: seconds until the retry, for a retried attempt.
        duration: seconds the handler ran (``time.monotonic``), ``None`` when it never ran
            (cancelled before it began, unknown type); for a detached handler, until it was
            detached.
        lag: seconds from the job's due time (enqueued, or its ``run_at`` or retry reached)
            to the start of this attempt's handler, measured against the queue's own clock
            (see `Delivery.due`); ``None`` when the handler never ran or the backend could not
            tell (a reclaimed Redis entry).
    """

    job: Job
    kind: OutcomeKind
    terminal: bool
    attempt: int
    max_attempts: int
    error: AttemptError | None = None
    exception: BaseException | None = None
    result: Any = None
    retry_in: float | None = None
    duration: float | None = None
    lag: float | None = None
