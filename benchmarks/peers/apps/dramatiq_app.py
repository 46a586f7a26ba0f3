"""Dramatiq with its Redis broker and default middleware; workers run with ``dramatiq``."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from apps import probe

dramatiq.set_broker(RedisBroker(url=probe.URL))


@dramatiq.actor
def noop(ts: float) -> None:
    """No-op."""
    probe.noop(ts)


@dramatiq.actor
def incr(ts: float) -> None:
    """One Redis INCR."""
    probe.incr(ts)


@dramatiq.actor
def latency(ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)
