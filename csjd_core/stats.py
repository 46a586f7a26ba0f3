"""What the backends report about queues and schedules: typed records every front end reads
(the ``csjd`` commands, ``manage.py``, ``flask csjd``, the Django dashboard), never dict keys.

Plain dataclasses with no tie to redis-py, so a front end can import them without the extra.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ConsumerStats",
    "DeadLetter",
    "QueueCounters",
    "QueueGauges",
    "QueueStats",
    "ScheduleState",
]


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One consumer of a queue's group.

    Attributes:
        name: the consumer name (``host:pid:suffix`` unless configured).
        pending: entries delivered to it and not acknowledged.
        idle_ms: milliseconds since it last read or claimed (Redis's ``XINFO`` idle).
        heartbeat_age: seconds since its last heartbeat, ``None`` once that expired (the
            consumer stopped or died; its entries are reclaimed after the lease).
    """

    name: str
    pending: int
    idle_ms: int
    heartbeat_age: float | None

    @property
    def live(self) -> bool:
        """True while its heartbeat is fresh."""
        return self.heartbeat_age is not None


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """Cluster-wide counters of a queue since its keys were created: attempts recorded
    (``processed``) and how they ended."""

    processed: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    #: Jobs ended ``cancelled`` (by `cancel`, or expired before they started).
    cancelled: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's figures, read from Redis at one moment.

    Attributes:
        name: the queue.
        stream_length: entries in the stream: waiting ones and delivered, unacknowledged ones.
        in_flight: entries delivered to a consumer and not acknowledged.
        scheduled: jobs waiting for their ``run_at`` or a retry's backoff.
        unfinished: jobs queued, scheduled or running (the pending cap counts these).
        dead: dead letters kept; ``max_dead_letters``: about how many are kept.
        consumers: the consumers of the queue's group.
        counters: the cluster-wide counters.
    """

    name: str
    stream_length: int
    in_flight: int
    scheduled: int
    unfinished: int
    dead: int
    max_dead_letters: int
    consumers: tuple[ConsumerStats, ...]
    counters: QueueCounters

    @property
    def waiting(self) -> int:
        """Entries no consumer has taken yet."""
        return max(0, self.stream_length - self.in_flight)

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON-ready values (``csjd stats --json``)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """One queue's current levels, read from Redis in two pipelined round trips (the figures a
    metrics scrape needs; `QueueStats` is the fuller, slower view).

    Attributes:
        name: the queue.
        stream_length, in_flight, scheduled, unfinished, dead: as in `QueueStats`.
        consumers: consumers of the queue's group whose heartbeat is fresh.
        oldest_waiting_age: seconds (Redis's clock) since the oldest entry no consumer has
            taken yet entered the stream; 0.0 when none waits.
    """

    name: str
    stream_length: int
    in_flight: int
    scheduled: int
    unfinished: int
    dead: int
    consumers: int
    oldest_waiting_age: float

    @property
    def waiting(self) -> int:
        """Entries no consumer has taken yet."""
        return max(0, self.stream_length - self.in_flight)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered job. ``damaged`` says what is wrong with a letter whose fields could not
    all be read (``attempts`` / ``failed_at`` are then ``None``); it can still be requeued or
    deleted."""

    entry_id: str
    queue: str
    job_id: str
    type: str | None
    error: str
    reason: str
    attempts: int | None
    failed_at: float | None
    traceback: str
    data: str
    damaged: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The letter as JSON-ready values (``csjd dead show``)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule's mark as its backend holds it: the fleet's view, shared by every ticker.

    Attributes:
        name: the schedule.
        mark: the Unix time through which its slots are accounted for (enqueued, skipped or
            missed); ``None`` before a ticker first saw it.
        paused: tickers record its slots as skipped instead of enqueuing them.
        running: ids of its runs that may still be unfinished (for ``max_running``).
        last_enqueued: the id of the last run enqueued (a slot, or "run now").
        enqueued: slots enqueued; ``manual``: runs enqueued by "run now".
        duplicates: slots whose job id was taken (recorded, not enqueued again).
        overlaps: slots skipped because ``max_running`` runs were unfinished.
        paused_skips: slots skipped while paused.
        misfires: slots missed while no ticker ran and not caught up (``catch_up``).
        last_outcome: how the last run that ended, ended (an `OutcomeKind` value), with
            ``last_outcome_id`` and ``last_outcome_at`` (Unix time).
    """

    name: str
    mark: float | None = None
    paused: bool = False
    running: tuple[str, ...] = ()
    last_enqueued: str | None = None
    enqueued: int = 0
    manual: int = 0
    duplicates: int = 0
    overlaps: int = 0
    paused_skips: int = 0
    misfires: int = 0
    last_outcome: str | None = None
    last_outcome_id: str | None = None
    last_outcome_at: float | None = None

    @property
    def last_outcome_time(self) -> datetime | None:
        """``last_outcome_at`` as a UTC `datetime`."""
        at = self.last_outcome_at
        return None if at is None else datetime.fromtimestamp(at, UTC)

    def to_json(self) -> dict[str, Any]:
        """The state as JSON-ready values (``csjd schedule --json``)."""
        return asdict(self)
