"""RQ: plain functions enqueued on a `Queue`; workers run with ``rq worker``."""

from __future__ import annotations

from redis import Redis
from rq import Queue

from apps import probe

QUEUE = "peers"


def queue() -> Queue:
    """The queue the jobs go to."""
    return Queue(QUEUE, connection=Redis.from_url(probe.URL))


def noop(ts: float) -> None:
    """No-op."""
    probe.noop(ts)


def incr(ts: float) -> None:
    """One Redis INCR."""
    probe.incr(ts)


def latency(ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)
