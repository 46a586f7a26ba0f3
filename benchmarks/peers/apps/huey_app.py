"""Huey with `RedisHuey` and default settings; workers run with ``huey_consumer``."""

from __future__ import annotations

from huey import RedisHuey

from apps import probe

huey = RedisHuey("peers", url=probe.URL)


@huey.task()
def noop(ts: float) -> None:
    """No-op."""
    probe.noop(ts)


@huey.task()
def incr(ts: float) -> None:
    """One Redis INCR."""
    probe.incr(ts)


@huey.task()
def latency(ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)
