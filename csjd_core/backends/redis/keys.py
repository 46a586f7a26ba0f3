"""Every Redis key of a queue, built in one place, under one prefix, with the queue name as the
Redis Cluster hash tag (``csjd:jobs:{q}...``): every key of one queue lives in one slot."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from csjd_core.errors import InvalidJob
from csjd_core.limits import name_problem

__all__ = ["QueueKeys", "Queues", "by_queue"]

T = TypeVar("T")


class QueueKeys:
    """Every Redis key of one queue. ``{name}`` is the Cluster hash tag."""

    __slots__ = (
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
    def enqueue(self, job_ids: Iterable[str], schedule: str | None = None) -> list[str]:
        """enqueue.lua: stream, delayed set, pending counter, [a schedule's mark,] then each
        job's record."""
        marks = [] if schedule is None else [self.schedule(schedule)]
        return [self.stream, self.delayed, self.pending, *marks, *map(self.job, job_ids)]

    def settle(self) -> list[str]:
        """settle.lua (before each op's job record): stream, delayed set, pending counter,
        dead letters, stats."""
        return [self.stream, self.delayed, self.pending, self.dead, self.stats]

    def cancel(self, job_id: str) -> list[str]:
        """cancel.lua: stream, delayed set, pending counter, stats, the job's record."""
        return [self.stream, self.delayed, self.pending, self.stats, self.job(job_id)]

    def start(self, job_ids: Iterable[str]) -> list[str]:
        """start.lua: stream, pending counter, stats, then each job's record."""
        return [self.stream, self.pending, self.stats, *map(self.job, job_ids)]

    def promote(self) -> list[str]:
        """promote.lua: stream, delayed set."""
        return [self.stream, self.delayed]

    def reclaim(self) -> list[str]:
        """reclaim.lua: stream, pending counter, dead letters, stats."""
        return [self.stream, self.pending, self.dead, self.stats]

    def requeue(self, job_id: str) -> list[str]:
        """requeue_dead.lua: stream, dead letters, pending counter, the job's record."""
        return [self.stream, self.dead, self.pending, self.job(job_id)]


def by_queue(
    items: Iterable[T], keys_of: Callable[[T], QueueKeys]
) -> list[tuple[QueueKeys, list[T]]]:
    """``items`` grouped by queue, in first-seen order: a script call is one queue's (slot's)."""
    groups: dict[str, tuple[QueueKeys, list[T]]] = {}
    for item in items:
        keys = keys_of(item)
        groups.setdefault(keys.name, (keys, []))[1].append(item)
    return list(groups.values())


class Queues:
    """The queues a backend knows: those it consumes (``consumed``, in configuration order,
    the first the default) and those it only submits to (built on first use)."""

    def __init__(self, prefix: str, consumed: tuple[str, ...]) -> None:
        self.prefix = prefix
        self.consumed = {name: QueueKeys(prefix, name) for name in consumed}
        self.default = consumed[0]
        self._others: dict[str, QueueKeys] = {}  # never consumed, never maintained
        self._by_stream = {keys.stream: keys for keys in self.consumed.values()}

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
        """The consumed queue a stream key belongs to.

        Raises:
            KeyError: not a consumed queue's stream.
        """
        return self._by_stream[stream]
