"""The in-memory backend: an index of jobs, a ready deque and a heap of scheduled jobs.

Priorities: the ready deque holds the jobs of priority 0 (the default); jobs of another
priority wait in a deque per priority, whose non-empty priorities a small sorted list keeps.
Taking the next job looks at that list only when it is not empty, so a queue of one priority
keeps the lock-free deque path; otherwise the highest priority's oldest job comes first
(exact order, FIFO among equals).

`FileJobStore` extends it with a write-ahead log; the ``_persist_*`` methods are its seam.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from csjd_core.backends import _marks
from csjd_core.backends.base import (
    AttemptError,
    Backend,
    BackendSettings,
    CancelVerdict,
    Delivery,
    RelayResult,
    RelayVerdict,
    SlotOp,
    SlotRequest,
    SlotVerdict,
)
from csjd_core.errors import DispatcherClosed, DuplicateJob, QueueFull
from csjd_core.job import Job, JobState, JobStatus, utc_from_timestamp
from csjd_core.progress import Progress
from csjd_core.stats import ScheduleState

__all__ = ["MemoryBackend"]

_QUEUED = JobState.QUEUED
_SCHEDULED = JobState.SCHEDULED
_RUNNING = JobState.RUNNING
_SUCCEEDED = JobState.SUCCEEDED
_FAILED = JobState.FAILED
_CANCELLED = JobState.CANCELLED


class Entry:
    """A job in the index with everything `status` reports about it."""

    __slots__ = (
        "attempts",
        "cancel_reason",
        "due",
        "ending",
        "enqueued_at",
        "error",
        "finished_at",
        "job",
        "max_attempts",
        "progress",
        "result",
        "run_at",
        "started_at",
        "state",
        "stored",
        "traceback",
        "worker_id",
    )

    # Optional attributes (unset until needed; read them with `get`).
    run_at: float | None  # the same moment as a wall-clock timestamp, for status
    started_at: float | None
    finished_at: float | None
    error: str | None
    traceback: str | None
    result: Any
    worker_id: str | None
    progress: Progress | None  # the last ctx.set_progress (memory only, also in a file store)
    stored: bool  # its submitted record is in the log (durable subclasses)
    cancel_reason: str | None  # why it was cancelled (or its cancellation requested)
    ending: bool  # its success is being recorded (see `MemoryBackend.cancel`)

    def __init__(self, job: Job, max_attempts: int, enqueued_at: float) -> None:
        # Only what every job needs is set here: each attribute set costs on the submit path.
        # The others are read with getattr defaults (see `Entry.get`).
        self.job = job
        self.max_attempts = max_attempts
        self.enqueued_at = enqueued_at
        self.state = _QUEUED
        self.attempts = 0
        # time.monotonic() when it became (or, scheduled, becomes) ready: its `Delivery.due`.
        # Admitted now; a recovered job counts from its recovery (no process ran it before).
        self.due = time.monotonic()

    def get(self, name: str) -> Any:
        """An optional attribute, ``None`` until set."""
        return getattr(self, name, None)

    def to_status(self) -> JobStatus:
        """Build the public status record."""
        get = self.get
        return JobStatus(
            id=self.job.id,
            type=self.job.type,
            state=self.state,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            queue=self.job.queue,
            enqueued_at=utc_from_timestamp(self.enqueued_at),
            started_at=utc_from_timestamp(get("started_at")),
            finished_at=utc_from_timestamp(get("finished_at")),
            run_at=utc_from_timestamp(get("run_at")) if self.state is _SCHEDULED else None,
            last_error=get("error"),
            last_traceback=get("traceback"),
            result=get("result"),
            worker_id=get("worker_id"),
            payload=self.job.payload,
            progress=get("progress"),
            cancel_reason=get("cancel_reason"),
            priority=self.job.priority,
        )


class MemoryBackend(Backend):
    """Jobs in this process's memory: fast, and lost if the process dies."""

    durable = False
    local = True
    #: subclasses that write a log set this so the ``_persist_*`` hooks are called.
    _logs = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trim_lock = threading.Lock()
        # An idle worker parks on a lock of its own, not on a Condition: ringing it (a release)
        # and waking (the acquire returns) happen in C, and a woken worker does not contend
        # with submitters for `_lock`. `_parked` holds the parked fetches' locks no ring has
        # released yet (`_waiters` of them), `_rung` counts the rung fetches that have not
        # taken their wake-up yet (all under `_lock`, see `_ring`). (Not one queue.SimpleQueue
        # that all wait on: in CPython 3.11 and 3.12 its get(timeout) blocks forever when
        # another thread took the item that woke it after its deadline passed.)
        self._parked: deque[Any] = deque()
        self._parking = threading.local()
        self._rung = 0
        self._ready: deque[Entry] = deque()  # ready jobs of priority 0
        # Ready jobs of other priorities: a deque per priority, and the priorities whose deque
        # is not empty, ascending (both changed under `_lock`; see the module's docstring).
        self._ranked: dict[int, deque[Entry]] = {}
        self._ranks: list[int] = []
        self._scheduled: list[tuple[float, int, Entry]] = []
        self._seq = itertools.count()
        self._unfinished: dict[str, Entry] = {}
        # Per unfinished job id, the reason its cancellation was requested (`cancel`, under the
        # lock); `_finish` removes it. The lock-free success path decides against it without a
        # lock: see `succeed`.
        self._cancels: dict[str, str] = {}
        self._on_cancel: Callable[[str, str], None] | None = None
        self._on_unstarted: Callable[[int], None] | None = None
        self._finished: dict[str, Entry] = {}
        self._finished_order: deque[tuple[float, str, Entry]] = deque()
        self._waiters = 0
        self._wakeups = 0
        self._max_pending = 10_000
        self._default_max_attempts = 3
        self._result_ttl = 600.0
        self._max_results = 100_000
        self._opened = False
        self._closed = False  # set by `close`: admission is refused from then on
        # Schedules' marks (csjd_core.periodic), changed one step at a time under their lock
        # (taken before `_lock`, never while holding it; workers take it to record a run's
        # outcome).
        self._marks: dict[str, ScheduleState] = {}
        self._marks_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def open(self, settings: BackendSettings) -> int:
        """Apply the engine's settings; memory has nothing to recover."""
        self._max_pending = settings.max_pending_jobs
        self._default_max_attempts = settings.default_max_attempts
        self._result_ttl = settings.result_ttl
        self._max_results = settings.max_results
        self._on_cancel = settings.on_cancel
        self._on_unstarted = settings.on_cancelled_unstarted
        self._opened = True
        self._closed = False
        return 0

    def close(self, *, clean: bool) -> list[Job]:
        """Forget every unfinished job that is not running and return them."""
        with self._lock:
            # A submit that passed the dispatcher's closed check before stop() began must not
            # admit a job after this point: it would be neither run nor reported as abandoned.
            self._closed = True
            left = [e for e in self._unfinished.values() if e.state is not _RUNNING]
            self._ready.clear()
            self._ranked.clear()
            self._ranks.clear()
            self._scheduled.clear()
            for entry in left:
                del self._unfinished[entry.job.id]
            self._ring(self._waiters)
        return [e.job for e in left]

    # -- admission -------------------------------------------------------------------------
    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Admit all ``jobs`` or none (see `Backend.enqueue`)."""
        now = time.time()
        if not self._logs:
            if len(jobs) == 1 and jobs[0].run_at is None:
                self._enqueue_one(jobs[0], now)
                return
            with self._lock:
                entries = self._admit(jobs, now)
                self._publish(entries, now)
            return
        with self._lock:
            entries = self._admit(jobs, now)
        try:
            self._persist_submitted(entries)
        except BaseException:
            self._unreserve(entries)
            raise
        if len(entries) == 1 and entries[0].job.run_at is None and not entries[0].job.priority:
            # `_publish` of one job due now without the lock, unless a worker waits: the append
            # is atomic, and a fetch counts itself a waiter (under the lock) before it looks.
            self._ready.append(entries[0])
            if self._waiters and not self._rung:
                with self._lock:
                    if self._waiters and not self._rung:
                        self._ring(1)
            return
        with self._lock:
            self._publish(entries, now)

    def _enqueue_one(self, job: Job, now: float) -> None:
        """The common case, `_admit` + `_publish` for one job due now, without the loops."""
        unfinished = self._unfinished
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher stopped; submit refused")
            if len(unfinished) >= self._max_pending:
                raise QueueFull(self._max_pending)
            if job.id in unfinished:
                raise DuplicateJob(job.id)
            entry = unfinished[job.id] = Entry(
                job, job.max_attempts or self._default_max_attempts, now
            )
            if job.priority:
                self._rank(entry)
            else:
                self._ready.append(entry)
            if self._waiters and not self._rung:
                self._ring(1)

    def _rank(self, entry: Entry) -> None:
        """Make ``entry``, of a priority other than 0, ready (lock held)."""
        rank = entry.job.priority
        waiting = self._ranked.get(rank)
        if waiting is None:
            waiting = self._ranked[rank] = deque()
            bisect.insort(self._ranks, rank)
        waiting.append(entry)

    def _make_ready(self, entry: Entry) -> None:
        """Append ``entry`` to the ready jobs of its priority (lock held)."""
        if entry.job.priority:
            self._rank(entry)
        else:
            self._ready.append(entry)

    def _next_ranked(self) -> Entry | None:
        """Take the next ready entry when some have a priority other than 0 (lock held): the
        oldest of the highest priority, priority 0 (the deque) between the positive and the
        negative ones."""
        ranks = self._ranks
        if not ranks:
            try:
                return self._ready.popleft()
            except IndexError:
                return None
        top = ranks[-1]
        if top < 0 and self._ready:
            return self._ready.popleft()
        waiting = self._ranked[top]
        entry = waiting.popleft()
        if not waiting:
            del self._ranked[top]
            ranks.pop()
        return entry

    def _admit(self, jobs: Sequence[Job], now: float) -> list[Entry]:
        """Check and reserve ids (lock held). Nothing is visible to workers yet."""
        if self._closed:
            raise DispatcherClosed("the dispatcher stopped; submit refused")
        unfinished = self._unfinished
        if len(unfinished) + len(jobs) > self._max_pending:
            raise QueueFull(self._max_pending)
        if len(jobs) == 1:
            job = jobs[0]
            if job.id in unfinished:
                raise DuplicateJob(job.id)
            entry = unfinished[job.id] = Entry(
                job, job.max_attempts or self._default_max_attempts, now
            )
            return [entry]
        entries: list[Entry] = []
        default_attempts = self._default_max_attempts
        for job in jobs:
            if job.id in unfinished:
                for entry in entries:
                    del unfinished[entry.job.id]
                raise DuplicateJob(job.id)
            entry = Entry(job, job.max_attempts or default_attempts, now)
            unfinished[job.id] = entry
            entries.append(entry)
        return entries

    def relay(self, jobs: Sequence[Job]) -> list[RelayResult]:
        """Admit the jobs whose ids are free, skip the others, up to the cap (see
        `Backend.relay`); a durable subclass writes the admitted ones in one record."""
        now = time.time()
        verdicts: list[RelayResult] = []
        entries: list[Entry] = []
        with self._lock:
            if self._closed:
                raise DispatcherClosed("the dispatcher stopped; relay refused")
            unfinished = self._unfinished
            full = False
            for job in jobs:
                if job.id in unfinished:  # an unfinished job's, or admitted just before
                    verdicts.append(RelayResult(job.id, RelayVerdict.EXISTS))
                elif full or len(unfinished) >= self._max_pending:
                    full = True
                    verdicts.append(RelayResult(job.id, RelayVerdict.FULL))
                else:
                    entry = Entry(job, job.max_attempts or self._default_max_attempts, now)
                    unfinished[job.id] = entry
                    entries.append(entry)
                    verdicts.append(RelayResult(job.id, RelayVerdict.ADMITTED))
        if not entries:
            return verdicts
        try:
            self._persist_submitted(entries)
        except BaseException:
            self._unreserve(entries)
            raise
        with self._lock:
            self._publish(entries, now)
        return verdicts

    def _unreserve(self, entries: list[Entry]) -> None:
        """Take back ids `_admit` reserved for entries whose record could not be written."""
        with self._lock:
            for entry in entries:
                if self._unfinished.get(entry.job.id) is entry:
                    del self._unfinished[entry.job.id]

    def _publish(self, entries: Iterable[Entry], now: float) -> None:
        """Make reserved entries visible: ready now, or scheduled for ``run_at`` (lock held)."""
        ready = self._ready
        woken = 0
        scheduled = self._scheduled
        earliest = scheduled[0][0] if scheduled else None
        for entry in entries:
            run_at = entry.job.run_at
            if run_at is not None:
                when = run_at.timestamp()
                if when > now:
                    entry.state = _SCHEDULED
                    entry.run_at = when
                    entry.due = time.monotonic() + (when - now)
                    heapq.heappush(scheduled, (entry.due, next(self._seq), entry))
                    continue
            if entry.job.priority:
                self._rank(entry)
            else:
                ready.append(entry)
            woken += 1
        if not self._waiters:
            return
        if scheduled and (earliest is None or scheduled[0][0] < earliest):
            # A new earliest due time: blocked fetches sized their wait without it.
            self._ring(self._waiters)
        elif woken:
            self._ring(woken)

    def restore(self, entries: Iterable[Entry]) -> int:
        """Re-admit recovered entries regardless of the cap (used by durable subclasses)."""
        count = 0
        now = time.time()
        with self._lock:
            for entry in entries:
                self._unfinished[entry.job.id] = entry
                run_at = entry.get("run_at")
                if entry.state is _SCHEDULED and run_at is not None and run_at > now:
                    entry.due = time.monotonic() + (run_at - now)
                    heapq.heappush(self._scheduled, (entry.due, next(self._seq), entry))
                else:
                    entry.state = _QUEUED
                    self._make_ready(entry)
                count += 1
        return count

    # -- consumption -----------------------------------------------------------------------
    def fetch(self, timeout: float) -> Delivery | None:
        """Pop the next ready entry, promoting due scheduled ones first."""
        scheduled = self._scheduled
        if scheduled:
            try:
                due = scheduled[0][0]
            except IndexError:
                due = None
            if due is not None and due <= time.monotonic():
                with self._lock:
                    self._promote(time.monotonic())
        ready = self._ready
        if self._ranks:  # jobs of other priorities are ready: the highest first
            with self._lock:
                found = self._next_ranked()
            if found is None:
                found = self._wait_ready(timeout)
                if found is None:
                    return None
            entry = found
        else:
            try:
                entry = ready.popleft()
            except IndexError:
                found = self._wait_ready(timeout)
                if found is None:
                    return None
                entry = found
        if (ready or self._ranks) and self._waiters and not self._rung:
            # More is ready and no wake-up is on its way: wake one more worker. A submit wakes
            # one worker only when none is on its way, so a backlog wakes workers one by one
            # (each woken one wakes the next) and a trickle keeps the fewest threads switching.
            with self._lock:
                if self._waiters and not self._rung:
                    self._ring(1)
        cancels = self._cancels
        if cancels and cancels.get(entry.job.id):
            # Its cancellation was requested after this fetch took it from the ready queue.
            self._end_unstarted(entry, cancels[entry.job.id])
            return self.fetch(0.0)
        expires = entry.job.expires
        if expires is not None and not entry.attempts and expires.timestamp() <= time.time():
            self._end_unstarted(entry, "expired")  # never started before its expiry: never runs
            return self.fetch(0.0)
        entry.attempts += 1
        return Delivery(
            entry.job, entry.attempts, entry.max_attempts, entry.attempts, entry, entry.due
        )

    def promote_all(self) -> None:
        """Make every scheduled entry ready now (immediate mode does not wait)."""
        with self._lock:
            self._promote(float("inf"))

    def _promote(self, now: float) -> None:
        """Move due scheduled entries to the ready queue (lock held)."""
        scheduled = self._scheduled
        while scheduled and scheduled[0][0] <= now:
            entry = heapq.heappop(scheduled)[2]
            if entry.state is _CANCELLED:  # cancelled while it waited (left in the heap)
                continue
            entry.state = _QUEUED
            self._make_ready(entry)

    def _wait_ready(self, timeout: float) -> Entry | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            generation = self._wakeups
        park = self._park()
        woken = False
        while True:
            # Parked before looking: an entry made ready from now on rings (releases) the park,
            # and one made ready before is found by the look.
            with self._lock:
                if woken:
                    self._rung -= 1
                    woken = False
                park.acquire()  # free at rest: taken here, released by `_ring`
                self._parked.append(park)
                self._waiters += 1
                now = time.monotonic()
                if self._scheduled:
                    if self._scheduled[0][0] <= now:
                        self._promote(now)
                    due = self._scheduled[0][0] if self._scheduled else None
                else:
                    due = None
                entry = self._next_ranked() if self._ranks else None
            if entry is None:
                try:
                    entry = self._ready.popleft()
                except IndexError:
                    entry = None
            remaining = deadline - now if due is None else min(deadline, due) - now
            if entry is not None or remaining <= 0 or generation != self._wakeups:
                self._unpark(park)
                return entry
            if park.acquire(timeout=remaining):  # `_ring` released it and counted this one out
                park.release()
                woken = True
            else:
                self._unpark(park)

    def _park(self) -> Any:
        """This thread's park lock (free while it is not parked)."""
        park = getattr(self._parking, "lock", None)
        if park is None:
            park = self._parking.lock = threading.Lock()
        return park

    def _unpark(self, park: Any) -> None:
        """Count a parked fetch out: still parked, it leaves; rung meanwhile, it takes the
        wake-up (the release happened under `_lock`, so the park is free again)."""
        with self._lock:
            try:
                self._parked.remove(park)
            except ValueError:
                self._rung -= 1
            else:
                self._waiters -= 1
                park.release()

    def _ring(self, count: int) -> None:
        """Wake up to ``count`` parked fetches, the longest parked first (lock held)."""
        parked = self._parked
        count = min(count, self._waiters)
        self._waiters -= count
        self._rung += count
        for _ in range(count):
            parked.popleft().release()

    def wake(self) -> None:
        """Make every blocked `fetch` return."""
        with self._lock:
            self._wakeups += 1
            self._ring(self._waiters)

    def started(self, delivery: Delivery, worker_id: str) -> str | None:
        """Mark the entry running; the cancellation reason if one was requested meanwhile."""
        entry: Entry = delivery.ref
        entry.state = _RUNNING
        entry.started_at = time.time()
        entry.worker_id = worker_id
        if self._logs:
            self._persist_started(entry)
        cancels = self._cancels
        return (cancels.get(entry.job.id) or None) if cancels else None

    def _owns(self, delivery: Delivery) -> Entry | None:
        """The entry if ``delivery`` still holds its claim (lock held)."""
        entry: Entry = delivery.ref
        if entry.attempts != delivery.token or self._unfinished.get(entry.job.id) is not entry:
            return None
        return entry

    def succeed(self, delivery: Delivery, result: Any) -> bool:
        """Record success (fenced).

        Lock-free on purpose: only the worker that holds a delivery changes its entry, and the
        dict and deque operations used here are atomic, so the hot path never contends (with a
        log too: `_persist_finished` only queues its record, see `FileJobStore`).
        """
        entry = self._owns(delivery)
        if entry is None:
            return False
        entry.result = result
        # One winner against `cancel`, without a lock on this path: the success writes its claim
        # (``ending``) and then looks for a request; `cancel` writes its request and then looks
        # for a claim. Under the GIL one of the two sees the other's write. A cancel that sees
        # the claim withdraws its request (ENDED) under the lock, which the success then takes
        # to look again: the job ends as exactly one of them says.
        entry.ending = True
        cancels = self._cancels
        if cancels and cancels.get(entry.job.id):
            with self._lock:
                reason = cancels.get(entry.job.id)
                if reason:
                    if self._owns(delivery) is None:
                        return False
                    delivery.cancel = entry.cancel_reason = reason
                    self._finish(entry, _CANCELLED)
                    return True
        self._finish(entry, _SUCCEEDED)
        return True

    def fail(self, delivery: Delivery, error: AttemptError) -> bool:
        """Record a terminal failure (fenced); the status keeps the error."""
        with self._lock:
            entry = self._owns(delivery)
            if entry is None:
                return False
            entry.error = error.message
            entry.traceback = error.traceback
            reason = self._cancels.get(entry.job.id)
            if reason:
                delivery.cancel = entry.cancel_reason = reason
                self._finish(entry, _CANCELLED)
            else:
                self._finish(entry, _FAILED)
        return True

    def set_progress(self, delivery: Delivery, progress: Progress) -> bool:
        """Keep the attempt's progress on its entry (fenced: refused unless ``delivery``
        holds its claim and the job runs). In memory only, also in a file store: progress is
        advisory, and recovery never needs it."""
        with self._lock:  # against an outcome recorded meanwhile (a detached handler's fail)
            entry = self._owns(delivery)
            if entry is None or entry.state is not _RUNNING:
                return False
            entry.progress = progress
        return True

    def cancelled(
        self, delivery: Delivery, reason: str, error: AttemptError | None, result: Any = None
    ) -> bool:
        """Record that the attempt ended with its job cancelled (fenced)."""
        with self._lock:
            entry = self._owns(delivery)
            if entry is None:
                return False
            if result is not None:
                entry.result = result
            if error is not None:
                entry.error = error.message
                entry.traceback = error.traceback
            reason = self._cancels.get(entry.job.id) or reason
            delivery.cancel = entry.cancel_reason = reason
            self._finish(entry, _CANCELLED)
        return True

    def cancel(
        self,
        job_id: str,
        queue: str | None,
        reason: str = "cancelled",
        *,
        waiting_only: bool = False,
    ) -> CancelVerdict:
        """End a waiting job now, or ask a running attempt to stop (see `Backend.cancel`).

        A queued job is taken out of the ready queue (`deque.remove`, atomic: either it is
        there and no fetch can take it any more, or a fetch took it and the job counts as
        running: the fetch, `started` and the outcome each see the request)."""
        with self._lock:
            entry = self._unfinished.get(job_id)
            if entry is None:
                done = self._finished.get(job_id)
                if done is None or done.get("finished_at") + self._result_ttl <= time.time():
                    return CancelVerdict.NOT_FOUND
                return CancelVerdict.ENDED
            cancels = self._cancels
            if cancels.get(job_id):  # requested before: its attempt was told
                return CancelVerdict.RUNNING if waiting_only else CancelVerdict.REQUESTED
            if waiting_only and entry.state is _RUNNING:
                return CancelVerdict.RUNNING
            cancels[job_id] = prior = reason  # the request first, then look for a success's claim
            if entry.get("ending") or entry.state.finished:  # its success is being recorded
                del cancels[job_id]
                return CancelVerdict.ENDED
            if entry.state is _SCHEDULED or (entry.state is _QUEUED and self._unready(entry)):
                entry.cancel_reason = prior
                self._finish(entry, _CANCELLED)
                ended = True
            elif waiting_only:  # a fetch took it: it counts as started
                del self._cancels[job_id]
                return CancelVerdict.RUNNING
            else:
                entry.cancel_reason = prior
                if self._logs:
                    self._persist_cancel_requested(entry)
                ended = False
        if ended:
            if self._on_unstarted is not None:
                self._on_unstarted(1)
            return CancelVerdict.CANCELLED
        if self._on_cancel is not None:
            self._on_cancel(job_id, prior)
        return CancelVerdict.REQUESTED

    def waiting_jobs(self, queue: str | None, job_type: str | None) -> list[str]:
        """The queued and scheduled jobs (of ``job_type``), oldest first (``queue`` is not
        needed here)."""
        with self._lock:
            entries = [
                e
                for e in self._unfinished.values()
                if (e.state is _QUEUED or e.state is _SCHEDULED)
                and (job_type is None or e.job.type == job_type)
            ]
        entries.sort(key=lambda e: e.enqueued_at)
        return [e.job.id for e in entries]

    def _unready(self, entry: Entry) -> bool:
        """Take ``entry`` out of the ready jobs of its priority; False if a fetch took it
        first (lock held: the ranked deques change under it; the priority-0 deque's lock-free
        fetch races `remove`, atomic under the GIL)."""
        rank = entry.job.priority
        waiting = self._ranked.get(rank) if rank else self._ready
        if waiting is None:
            return False
        try:
            waiting.remove(entry)  # identity compares only
        except ValueError:
            return False
        if rank and not waiting:
            del self._ranked[rank]
            self._ranks.remove(rank)
        return True

    def _end_unstarted(self, entry: Entry, reason: str) -> None:
        """End a job taken from the ready queue before its attempt began (cancelled meanwhile,
        or expired)."""
        with self._lock:
            if self._unfinished.get(entry.job.id) is not entry:
                return
            entry.cancel_reason = reason
            self._finish(entry, _CANCELLED)
        if self._on_unstarted is not None:
            self._on_unstarted(1)

    def retry(self, delivery: Delivery, error: AttemptError, delay: float) -> bool:
        """Park the entry in the scheduled heap for ``delay`` seconds (fenced)."""
        with self._lock:
            entry = self._owns(delivery)
            if entry is None:
                return False
            entry.error = error.message
            entry.traceback = error.traceback
            reason = self._cancels.get(entry.job.id)
            if reason:  # never retried after a cancellation
                delivery.cancel = entry.cancel_reason = reason
                self._finish(entry, _CANCELLED)
                return True
            # This attempt is over: a second outcome for the same delivery is stale (after
            # succeed/fail the entry leaves `_unfinished`; here the entry stays, so fence it).
            delivery.token = None
            entry.state = _SCHEDULED
            entry.due = time.monotonic() + delay
            entry.run_at = time.time() + delay
            if self._logs:
                self._persist_retry(entry)
            heapq.heappush(self._scheduled, (entry.due, next(self._seq), entry))
            self._ring(self._waiters)  # they sized their waits without this due time
        return True

    def release(self, delivery: Delivery) -> None:
        """Requeue the job (fenced): ready again while attempts remain, else failed."""
        with self._lock:
            entry = self._owns(delivery)
            if entry is None:
                return
            delivery.token = None
            reason = self._cancels.get(entry.job.id)
            if reason:
                entry.cancel_reason = reason
                self._finish(entry, _CANCELLED)
            elif entry.attempts < entry.max_attempts:
                entry.state = _QUEUED
                entry.due = time.monotonic()  # due again now (its lag counts from here)
                self._make_ready(entry)
                self._ring(1)
            else:
                entry.error = "the outcome of its last attempt could not be recorded"
                self._finish(entry, _FAILED)

    def _finish(self, entry: Entry, state: JobState) -> None:
        """Move an entry from unfinished to the retained results (atomic steps only)."""
        entry.state = state
        entry.finished_at = now = time.time()
        job_id = entry.job.id
        if self._logs:
            self._persist_finished(entry)
        keep = self._max_results and self._result_ttl
        if keep:
            # Visible as finished before it stops being unfinished: a lock-free succeed runs
            # beside status(), which must never find the job in neither map.
            self._finished[job_id] = entry
        # Before the id is free: a new job of the same id starts with no request.
        cancels = self._cancels
        if cancels:
            cancels.pop(job_id, None)
        self._unfinished.pop(job_id, None)
        if keep:
            order = self._finished_order
            order.append((now + self._result_ttl, job_id, entry))
            if (order[0][0] <= now or len(order) > self._max_results) and (
                self._trim_lock.acquire(blocking=False)
            ):
                try:
                    self._trim_results(now)
                finally:
                    self._trim_lock.release()

    def _trim_results(self, now: float) -> None:
        order, finished = self._finished_order, self._finished
        while order and (order[0][0] <= now or len(order) > self._max_results):
            _, old_id, old = order.popleft()
            if finished.get(old_id) is old:
                finished.pop(old_id, None)

    def discard(self, job_ids: Iterable[str], reason: str) -> int:
        """Finish unfinished, not-running jobs without running them (moved elsewhere).

        For a store that no dispatcher is consuming (``csjd replay --into-redis``).

        Returns:
            How many were discarded.
        """
        wanted = set(job_ids)
        with self._lock:
            gone = [
                e
                for i in wanted
                if (e := self._unfinished.get(i)) is not None and e.state is not _RUNNING
            ]
            for entry in gone:
                entry.error = reason
                self._finish(entry, _FAILED)
            ids = {e.job.id for e in gone}
            # Filtered in place: a submit to a store appends to this deque without the lock.
            ready = self._ready
            for _ in range(len(ready)):
                try:
                    entry = ready.popleft()
                except IndexError:
                    break
                if entry.job.id not in ids:
                    ready.append(entry)
            for rank, waiting in list(self._ranked.items()):
                kept = deque(entry for entry in waiting if entry.job.id not in ids)
                if kept:
                    self._ranked[rank] = kept
                else:
                    del self._ranked[rank]
                    self._ranks.remove(rank)
            self._scheduled = [item for item in self._scheduled if item[2].job.id not in ids]
            heapq.heapify(self._scheduled)
        return len(gone)

    # -- queries ---------------------------------------------------------------------------
    def status(self, job_id: str, queue: str | None = None) -> JobStatus | None:
        """The job's status, or None if unknown or its result expired."""
        with self._lock:
            entry = self._unfinished.get(job_id)
            if entry is None:
                entry = self._finished.get(job_id)
                if entry is None or entry.get("finished_at") + self._result_ttl <= time.time():
                    return None
            return entry.to_status()

    def pending(self) -> int:
        """Unfinished jobs (queued, scheduled, running)."""
        return len(self._unfinished)

    def ready_count(self) -> int:
        """Jobs ready to run now."""
        return len(self._ready) + sum(len(waiting) for waiting in list(self._ranked.values()))

    # -- schedules -------------------------------------------------------------------------
    def admit_slot(self, request: SlotRequest) -> SlotVerdict:
        """Compare and advance a schedule's mark and admit its job, as one step (see
        `Backend.admit_slot`; the rules are `_marks.step`)."""
        name = request.schedule
        with self._marks_lock:
            before = self._marks.get(name) or ScheduleState(name)
            verdict, after = _marks.step(before, request, self._unfinished.__contains__)
            if verdict is not SlotVerdict.ENQUEUED:
                if after is not before:
                    self._keep_mark(after, [])
                return verdict
            assert request.job is not None
            now = time.time()
            with self._lock:
                try:
                    entries = self._admit([request.job], now)
                except DuplicateJob:
                    entries = None
            if entries is None:
                if request.op is not SlotOp.SLOT:  # "run now": its caller's id is refused
                    raise DuplicateJob(request.job.id)
                self._keep_mark(_marks.admitted_duplicate(before, request), [])
                return SlotVerdict.DUPLICATE
            try:
                self._keep_mark(after, entries)
            except BaseException:
                self._unreserve(entries)
                raise
            with self._lock:
                self._publish(entries, now)
            return SlotVerdict.ENQUEUED

    def _keep_mark(self, state: ScheduleState, entries: list[Entry]) -> None:
        """Make ``state`` the schedule's mark, written with the job it admits (marks lock)."""
        self._persist_mark(state, entries)
        self._marks[state.name] = state

    def schedule_state(self, name: str, queue: str | None) -> ScheduleState | None:
        """The mark of schedule ``name`` (``queue`` is not needed here)."""
        return self._marks.get(name)

    def set_paused(self, name: str, queue: str | None, paused: bool) -> None:
        """Pause or resume schedule ``name``."""
        with self._marks_lock:
            state = self._marks.get(name) or ScheduleState(name)
            self._keep_mark(dataclasses.replace(state, paused=paused), [])

    def record_outcome(self, name: str, queue: str | None, job_id: str, kind: str) -> None:
        """Record how a run of schedule ``name`` ended."""
        with self._marks_lock:
            state = self._marks.get(name) or ScheduleState(name)
            changed = dataclasses.replace(
                state, last_outcome=kind, last_outcome_id=job_id, last_outcome_at=time.time()
            )
            self._keep_mark(changed, [])

    # -- the durable subclass's seam --------------------------------------------------------
    def _persist_submitted(self, entries: list[Entry]) -> None:
        """Write submitted records durably before the jobs become visible."""

    def _persist_mark(self, state: ScheduleState, entries: list[Entry]) -> None:
        """Write a schedule's mark, and the submitted record of ``entries`` with it, in one
        write (marks lock held, index lock not)."""

    def _persist_started(self, entry: Entry) -> None:
        """Record that an attempt starts (lock not held)."""

    def _persist_retry(self, entry: Entry) -> None:
        """Record a scheduled retry (lock held)."""

    def _persist_finished(self, entry: Entry) -> None:
        """Record a terminal outcome (lock held)."""

    def _persist_cancel_requested(self, entry: Entry) -> None:
        """Record that a running job's cancellation was requested (lock held): it must not run
        again after a crash."""
