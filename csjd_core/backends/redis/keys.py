"""Every Redis key of a queue, built in one place, under one prefix, with the queue name as the
Redis Cluster hash tag (``csjd:jobs:{q}...``): every key of one queue lives in one slot.

A queue has a stream per priority band (`BANDS`): the default band's is the queue's stream of
old (``csjd:jobs:{q}``), the others beside it (``csjd:jobs:{q}:high``, ``...:low``). A
`QueueKeys` is one band's view of its queue: its ``stream`` is the band's, every other key the
queue's (one pending counter, delayed set, dead-letter stream... for all bands). Scripts that
work on one stream (start, settle, renew, release, reclaim) take a band's `QueueKeys`; the
queue-level ones (enqueue, promote, read_start) the default band's, which names every band.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from csjd_core.errors import InvalidJob
from csjd_core.limits import name_problem

__all__ = ["BANDS", "DEFAULT_BAND", "QueueKeys", "Queues", "band_of", "by_queue"]

T = TypeVar("T")

#: A queue's priority bands, highest first: each band's stream suffix (docs/distributed.md,
#: "Priorities"). A reader reads them in this order; FIFO within a band.
BANDS = (":high", "", ":low")
#: The band of priority 0, whose stream is the queue's stream (what releases before priorities
#: read and write).
DEFAULT_BAND = 1


def band_of(priority: int) -> int:
    """The band (an index of `BANDS`) of a job of ``priority``: high above 0, the default band
    at 0, low below 0."""
    return 0 if priority > 0 else DEFAULT_BAND if priority == 0 else 2


class QueueKeys:
    """Every Redis key of one queue. ``{name}`` is the Cluster hash tag."""

    __slots__ = (
        "band",
        "bands",
        "collected",
        "dead",
        "delayed",
        "heartbeat_prefix",
        "job_prefix",
        "maintainer",
        "name",
        "pending",
        "schedule_prefix",
        "stats",
        "stream",
    )

    def __init__(self, prefix: str, name: str) -> None:
        problem = name_problem(name, "queue")
        if problem is not None:  # the one place keys are built from a name: refuse it here
            raise InvalidJob(problem)
        base = f"{prefix}:{{{name}}}"
        self.name = name
        self.stream = base
        self.delayed = base + ":delayed"
        self.pending = base + ":pending"
        self.dead = base + ":dead"
        self.stats = base + ":stats"
        self.maintainer = base + ":maintainer"  # the consumer elected to maintain the queue
        self.collected = base + ":collected"  # set while expired consumers count as collected
        self.job_prefix = base + ":job:"
        self.heartbeat_prefix = base + ":hb:"
        self.schedule_prefix = base + ":schedule:"
        self.band = DEFAULT_BAND
        # The bands' views share this one's keys but their stream (and `bands`).
        bands = []
        for index, suffix in enumerate(BANDS):
            if index == DEFAULT_BAND:
                bands.append(self)
                continue
            view = object.__new__(QueueKeys)
            for slot in QueueKeys.__slots__:
                if slot != "bands":
                    setattr(view, slot, getattr(self, slot))
            view.stream, view.band = base + suffix, index
            bands.append(view)
        #: Every band's view, highest first (``bands[DEFAULT_BAND]`` is the queue's own).
        self.bands: tuple[QueueKeys, ...] = tuple(bands)
        for view in bands:
            view.bands = self.bands

    @property
    def queue(self) -> QueueKeys:
        """The queue's own keys (its default band's view)."""
        return self.bands[DEFAULT_BAND]

    @property
    def streams(self) -> list[str]:
        """Every band's stream, highest first."""
        return [view.stream for view in self.bands]

    def for_priority(self, priority: int) -> QueueKeys:
        """The view of the band a job of ``priority`` goes to."""
        return self.bands[band_of(priority)]

    def job(self, job_id: str) -> str:
        """The hash holding one job's record."""
        return self.job_prefix + job_id

    def schedule(self, name: str) -> str:
        """The hash holding a schedule's mark (csjd_core.periodic)."""
        return self.schedule_prefix + name

    def heartbeat(self, consumer: str) -> str:
        """A consumer's heartbeat key."""
        return self.heartbeat_prefix + consumer

    # The KEYS of each script that takes more than the stream (see its header in lua/).
    def enqueue(
        self, job_ids: Iterable[str], schedule: str | None = None, *, banded: bool = False
    ) -> list[str]:
        """enqueue.lua: the queue's stream, delayed set, pending counter, [a schedule's mark,]
        then each job's record, [then every band's stream if a job goes to another band than
        the default (``banded``)]."""
        marks = [] if schedule is None else [self.schedule(schedule)]
        bands = self.streams if banded else []
        return [
            self.queue.stream,
            self.delayed,
            self.pending,
            *marks,
            *map(self.job, job_ids),
            *bands,
        ]

    def band_argument(self, priority: int) -> str:
        """A job's band as enqueue.lua and requeue_dead.lua take it: ``""`` for the default
        band, else its 1-based index among the band streams (`streams`; the job record keeps
        it for promote.lua)."""
        band = band_of(priority)
        return "" if band == DEFAULT_BAND else str(band + 1)

    def band_stream(self, argument: str) -> str:
        """The stream a job record's ``band`` field names (`band_argument`; the queue's
        stream when it names none)."""
        if argument.isdigit() and 1 <= int(argument) <= len(BANDS):
            return self.bands[int(argument) - 1].stream
        return self.queue.stream

    def settle(self) -> list[str]:
        """settle.lua (before each op's job record): the band's stream, delayed set, pending
        counter, dead letters, stats."""
        return [self.stream, self.delayed, self.pending, self.dead, self.stats]

    def cancel(self, job_id: str) -> list[str]:
        """cancel.lua: the queue's stream, delayed set, pending counter, stats, the job's
        record, then every band's stream (the record names its band)."""
        return [
            self.queue.stream,
            self.delayed,
            self.pending,
            self.stats,
            self.job(job_id),
            *self.streams,
        ]

    def start(self, job_ids: Iterable[str]) -> list[str]:
        """start.lua: stream, pending counter, stats, then each job's record."""
        return [self.stream, self.pending, self.stats, *map(self.job, job_ids)]

    def promote(self) -> list[str]:
        """promote.lua: the queue's stream, delayed set, every band's stream (a job of another
        band than the default names its band in its record)."""
        return [self.queue.stream, self.delayed, *self.streams]

    def reclaim(self) -> list[str]:
        """reclaim.lua: the band's stream, pending counter, dead letters, stats."""
        return [self.stream, self.pending, self.dead, self.stats]

    def requeue(self, job_id: str) -> list[str]:
        """requeue_dead.lua: the band's stream, dead letters, pending counter, the job's
        record."""
        return [self.stream, self.dead, self.pending, self.job(job_id)]


def by_queue(
    items: Iterable[T], keys_of: Callable[[T], QueueKeys]
) -> list[tuple[QueueKeys, list[T]]]:
    """``items`` grouped by queue band (stream), in first-seen order: a script call that works
    on a stream is one band's (and so one slot's)."""
    groups: dict[str, tuple[QueueKeys, list[T]]] = {}
    for item in items:
        keys = keys_of(item)
        groups.setdefault(keys.stream, (keys, []))[1].append(item)
    return list(groups.values())


class Queues:
    """The queues a backend knows: those it consumes (``consumed``, in configuration order,
    the first the default) and those it only submits to (built on first use)."""

    def __init__(self, prefix: str, consumed: tuple[str, ...]) -> None:
        self.prefix = prefix
        self.consumed = {name: QueueKeys(prefix, name) for name in consumed}
        self.default = consumed[0]
        self._others: dict[str, QueueKeys] = {}  # never consumed, never maintained
        self._by_stream = {
            view.stream: view for keys in self.consumed.values() for view in keys.bands
        }

    def keys_for(self, queue: str | None) -> QueueKeys:
        """The keys of ``queue`` (``None``: the default queue).

        Raises:
            InvalidJob: ``queue`` is not a queue name.
        """
        name = queue or self.default
        keys = self.consumed.get(name) or self._others.get(name)
        if keys is None:
            keys = self._others.setdefault(name, QueueKeys(self.prefix, name))
        return keys

    def of_stream(self, stream: str) -> QueueKeys:
        """The band of a consumed queue a stream key belongs to.

        Raises:
            KeyError: not a consumed queue's stream.
        """
        return self._by_stream[stream]
