"""The seam between the engine and the places jobs live.

The engine (``csjd_core.engine``) owns execution semantics: the concurrency bound, timeouts and
detach, retry decisions, crash capture, metrics and stop. A `Backend` owns storage: admission
(duplicate ids, the pending cap), the ready queue, scheduled jobs (``run_at`` and retries), the
per-attempt records, fenced acknowledgement and status. Every backend passes the shared contract
suite in ``tests/core/test_backend_contract.py``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from csjd_core.job import Job, JobStatus
from csjd_core.progress import Progress
from csjd_core.stats import ScheduleState

__all__ = [
    "AttemptError",
    "Backend",
    "BackendSettings",
    "CancelVerdict",
    "Delivery",
    "RelayResult",
    "RelayVerdict",
    "SlotOp",
    "SlotRequest",
    "SlotVerdict",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSettings:
    """What the engine tells its backend when it opens it."""

    max_pending_jobs: int
    default_max_attempts: int
    result_ttl: float
    max_results: int
    worker_id: str
    #: Told of a success `Backend.succeed_nowait` accepted but could not record (lost claim).
    on_lost_claim: Callable[[Delivery], None] | None = None
    #: Told ``(job_id, reason)`` when the backend learns that a job one of this process's
    #: attempts may be running was cancelled (at once in process; within a heartbeat in Redis
    #: mode): the engine cancels that attempt's context.
    on_cancel: Callable[[str, str], None] | None = None
    #: Told of a success `Backend.succeed_nowait` accepted and then recorded as cancelled (the
    #: job's cancellation came first): the engine counts it so.
    on_cancelled_success: Callable[[Delivery], None] | None = None
    #: Told how many jobs the backend ended ``cancelled`` before any attempt of this process
    #: began (cancelled while waiting, or expired when fetched): the engine counts them.
    on_cancelled_unstarted: Callable[[int], None] | None = None


class Delivery:
    """One attempt of one job handed to a worker.

    ``token`` fences the attempt: a backend refuses to record an outcome for a delivery whose
    token no longer matches the job (it was re-delivered, reclaimed or recovered meanwhile).
    ``ref`` is the backend's own handle (an index entry, a stream entry id). ``cancel`` is set
    by the backend once it knows the job was cancelled (the reason): the attempt's outcome is
    then recorded as ``cancelled`` whatever the handler did.

    ``due`` is when the job became due (enqueued, or its ``run_at`` or retry time reached) as a
    ``time.monotonic()`` value of this process, computed by the backend from the queue's own
    clock (this host's wall clock in process; Redis's clock for a Redis entry), or ``None``
    when the backend cannot tell. ``started`` is set by the engine when the handler begins.
    The engine's `AttemptOutcome` derives ``lag`` and ``duration`` from them.
    """

    __slots__ = ("attempt", "cancel", "due", "job", "max_attempts", "ref", "started", "token")

    def __init__(
        self,
        job: Job,
        attempt: int,
        max_attempts: int,
        token: Any,
        ref: Any,
        due: float | None = None,
    ) -> None:
        self.job = job
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.token = token
        self.ref = ref
        self.due = due
        self.started: float | None = None
        self.cancel: str | None = None

    def __repr__(self) -> str:
        return f"Delivery(job_id={self.job.id!r}, type={self.job.type!r}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class AttemptError:
    """Why an attempt failed, in the form backends store (text, never the exception object).

    ``kind`` is one of ``"error"``, ``"timeout"``, ``"panic"``, ``"permanent"``,
    ``"unknown_type"``, ``"invalid_result"``, ``"internal"`` (the outcome could not be
    recorded). ``message`` and ``traceback`` are within `csjd_core.limits` and encodable.
    """

    kind: str
    message: str
    traceback: str | None = None


class CancelVerdict(StrEnum):
    """What `Backend.cancel` did."""

    CANCELLED = "cancelled"  # it was waiting (queued, scheduled, retry-waiting): ended now
    REQUESTED = "requested"  # it may be running: its attempt is told, and the job ends cancelled
    ENDED = "ended"  # it had finished already (or its outcome was being recorded): unchanged
    RUNNING = "running"  # ``waiting_only``: it had started (or a consumer holds it): unchanged
    NOT_FOUND = "not_found"  # no record of it (never submitted, or its result expired)


class RelayVerdict(StrEnum):
    """What `Backend.relay` (the outbox relay's admission) did with one job."""

    ADMITTED = "admitted"
    EXISTS = "exists"  # its id is taken (relayed before, or earlier in the batch): not admitted
    FULL = "full"  # admitting it would pass max_pending_jobs: not admitted, to try again later
    INVALID = "invalid"  # (the dispatcher's) a malformed job: never admitted


@dataclass(frozen=True, slots=True)
class RelayResult:
    """One job of a `BaseDispatcher.relay`: its verdict, and why an ``INVALID`` one is."""

    job_id: str
    verdict: RelayVerdict
    reason: str | None = None


class SlotOp(StrEnum):
    """What a ticker asks of a schedule's mark (`Backend.admit_slot`)."""

    INIT = "init"  # first sight: set the mark to ``slot`` if the schedule has none
    SLOT = "slot"  # enqueue the slot's job, unless the mark is at or past it
    SKIP = "skip"  # advance the mark to ``slot`` without a job (missed slots)
    MANUAL = "manual"  # "run now": enqueue a job outside the slots; the mark is unchanged
    RESUME = "resume"  # if paused: unpause, the mark moved to ``slot`` (the slots due while
    # paused, ``misfired`` of them, counted as skipped while paused)


class SlotVerdict(StrEnum):
    """What `Backend.admit_slot` did."""

    ENQUEUED = "enqueued"
    INIT = "init"  # the mark was set
    DONE = "done"  # the mark is at or past the slot: another ticker accounted for it
    DUPLICATE = "duplicate"  # the job id was taken; the mark moved past the slot
    OVERLAP = "overlap"  # ``max_running`` runs unfinished: skipped, the mark moved past it
    PAUSED = "paused"  # the schedule is paused: skipped, the mark moved past it
    SKIPPED = "skipped"  # `SlotOp.SKIP` moved the mark
    RESUMED = "resumed"  # `SlotOp.RESUME` unpaused the schedule


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """One atomic step on a schedule's mark: compare, advance, and admit ``job`` with it.

    ``slot`` is a Unix time in whole seconds. ``misfired`` slots passed over before it are
    added to the mark's misfires when it advances, if the mark is still ``after`` (the mark the
    ticker planned from: a racing ticker's plan counts the same gap); for `SlotOp.RESUME`, they
    are the slots skipped while paused. ``max_running`` (0: no limit) skips the slot while that
    many of the mark's ``running`` runs are unfinished.

    Raises:
        ValueError: ``slot`` is not a whole number of seconds.
    """

    op: SlotOp
    schedule: str
    queue: str | None
    slot: float
    job: Job | None = None
    max_running: int = 0
    misfired: int = 0
    after: float | None = None

    def __post_init__(self) -> None:
        if self.slot != int(self.slot):
            raise ValueError(f"a slot is a whole number of seconds, got {self.slot!r}")


class Backend(ABC):
    """Storage for jobs, as the engine needs it. Methods are called from many threads."""

    #: True when jobs survive a crash of this process (file store, Redis).
    durable: bool = False
    #: True when the jobs are only visible to this process (memory, file store).
    local: bool = True

    @property
    def default_queue(self) -> str | None:
        """The queue of a job that names none (``None``: this backend has no queues)."""
        return None

    @abstractmethod
    def open(self, settings: BackendSettings) -> int:
        """Prepare for use (take locks, replay logs).

        Returns:
            How many unfinished jobs were recovered and re-admitted.
        """

    def start_consuming(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Begin delivering jobs to this process (a producer-only process never calls it)."""

    @abstractmethod
    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Admit ``jobs`` atomically: all of them, or none and an error.

        Raises:
            DuplicateJob: an id is taken by an unfinished job (or repeats within ``jobs``).
            QueueFull: admitting them would exceed ``max_pending_jobs``.
            BackendUnavailable: the storage could not record them (nothing was admitted).
        """

    @abstractmethod
    def fetch(self, timeout: float) -> Delivery | None:
        """The next ready job, waiting up to ``timeout`` seconds; ``None`` if there is none."""

    @abstractmethod
    def started(self, delivery: Delivery, worker_id: str) -> str | None:
        """Record that the attempt's handler is about to run.

        Returns:
            ``None``, or the reason the job was cancelled meanwhile: then the handler must not
            run (the engine records the attempt with `cancelled`).
        """

    @abstractmethod
    def succeed(self, delivery: Delivery, result: Any) -> bool:
        """Record success with a JSON result. Returns False if the delivery lost its claim.

        A job whose cancellation was requested is recorded ``cancelled`` instead (its result
        kept) and ``delivery.cancel`` set: one of the two is the job's final state, decided
        atomically with `cancel`.
        """

    def succeed_nowait(self, delivery: Delivery, result: Any) -> bool | None:
        """Like `succeed`, but a backend may record the outcome after returning ``None``.

        The engine calls this on its hot path. A backend that batches outcomes (Redis: with its
        next read) returns ``None`` and, if the outcome is then refused, calls
        ``BackendSettings.on_lost_claim``. The default records it now.
        """
        return self.succeed(delivery, result)

    @abstractmethod
    def retry(self, delivery: Delivery, error: AttemptError, delay: float) -> bool:
        """Schedule the job's next attempt in ``delay`` seconds. False if fenced out. A job
        whose cancellation was requested is never retried: recorded as in `succeed`."""

    @abstractmethod
    def fail(self, delivery: Delivery, error: AttemptError) -> bool:
        """Record a terminal failure (dead-letter it). False if fenced out. A job whose
        cancellation was requested is recorded as in `succeed`."""

    @abstractmethod
    def cancelled(
        self, delivery: Delivery, reason: str, error: AttemptError | None, result: Any = None
    ) -> bool:
        """Record that the attempt ended with its job cancelled: never retried; the error kept
        if it raised, the result if it returned. False if fenced out."""

    @abstractmethod
    def cancel(
        self,
        job_id: str,
        queue: str | None,
        reason: str = "cancelled",
        *,
        waiting_only: bool = False,
    ) -> CancelVerdict:
        """Cancel ``job_id`` (in ``queue``, in distributed mode): a waiting job ends at once,
        a running one is asked to stop (`BackendSettings.on_cancel`, or a flag its consumer
        reads) and ends cancelled whatever its handler does — unless ``waiting_only``: then
        it is left alone (`CancelVerdict.RUNNING`). Decided atomically against the job's
        start and its outcome: the job has one final state."""

    def waiting_jobs(self, queue: str | None, job_type: str | None) -> list[str]:
        """The ids of the jobs that wait (queued or scheduled, not held by a worker) in
        ``queue`` (``None``: every queue this backend holds), of ``job_type`` if given, oldest
        first: what the bulk cancel offers to end."""
        raise NotImplementedError(f"{type(self).__name__} does not list waiting jobs")

    @abstractmethod
    def release(self, delivery: Delivery) -> None:
        """Stop holding an attempt whose outcome could not be recorded at all (the engine's
        last resort): the job runs again later, within the limits of its attempts."""

    def set_progress(self, delivery: Delivery, progress: Progress) -> bool | None:
        """Keep the progress a running attempt reported (``ctx.set_progress``), fenced: refused
        (False) when ``delivery`` lost its claim or its job is no longer running, so a late
        write never changes a finished record. A backend may write it later, coalesced
        (``None``: Redis writes the last value about once a second and with the outcome).
        The default keeps nothing."""
        return False

    def renew(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Extend the lease of running attempts; False where the claim was lost."""
        return [True for _ in deliveries]

    def relay(self, jobs: Sequence[Job]) -> list[RelayResult]:
        """Admit the ``jobs`` whose ids are free and skip the others, atomically, up to the
        pending cap: the outbox relay's admission, which must not stall on a job it relayed
        before (a crash between the enqueue and the row's deletion), on a full queue, nor on
        a job this backend cannot store.

        Returns:
            Per job, in order: `RelayVerdict.ADMITTED`, ``EXISTS`` (its id is taken, as
            `enqueue` would refuse it, or it came earlier in ``jobs``), ``FULL`` (over the
            cap: it and every later new job; nothing is admitted out of order) or ``INVALID``
            (it cannot be stored here, e.g. over Redis's payload limit; with the reason).

        Raises:
            BackendUnavailable, DispatcherClosed: nothing was admitted.
        """
        raise NotImplementedError(f"{type(self).__name__} does not relay")

    # -- schedules (csjd_core.periodic) ----------------------------------------------------
    def clock(self) -> float:
        """The Unix time every process using this backend agrees on (schedules are judged by
        it): this host's clock for a local backend."""
        return time.time()

    def admit_slot(self, request: SlotRequest) -> SlotVerdict:
        """Compare and advance a schedule's mark and admit its job, in one atomic step.

        Raises:
            QueueFull, BackendUnavailable, DispatcherClosed: nothing changed (the slot is
                tried again).
            DuplicateJob: a `SlotOp.MANUAL` job's id is taken (a slot's is `DUPLICATE`).
            InvalidJob: the job cannot be stored (e.g. over Redis's payload limit).
        """
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def schedule_state(self, name: str, queue: str | None) -> ScheduleState | None:
        """The mark of schedule ``name`` (kept under ``queue``), or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def set_paused(self, name: str, queue: str | None, paused: bool) -> None:
        """Pause or resume schedule ``name``."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    def record_outcome(self, name: str, queue: str | None, job_id: str, kind: str) -> None:
        """Record how a run of schedule ``name`` ended (its last outcome)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep schedules")

    @abstractmethod
    def status(self, job_id: str, queue: str | None = None) -> JobStatus | None:
        """What is known about ``job_id`` (in ``queue`` if given), or ``None``."""

    @abstractmethod
    def pending(self) -> int:
        """Unfinished jobs held by this backend (queued, scheduled, running)."""

    @abstractmethod
    def ready_count(self) -> int:
        """Jobs ready to run now (not scheduled for later, not running)."""

    @abstractmethod
    def wake(self) -> None:
        """Wake every thread blocked in `fetch` (used when stopping)."""

    @abstractmethod
    def close(self, *, clean: bool) -> list[Job]:
        """Release resources; ``clean`` is False when handlers were still running.

        Returns:
            The unfinished jobs that never ran to the end. A durable backend keeps them for the
            next `open`; a volatile one loses them, and the engine logs each.
        """
