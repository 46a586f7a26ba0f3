"""taskiq with taskiq-redis's `RedisStreamBroker` (the one with acknowledgements).

Workers run with ``taskiq worker``, default settings. ``consumer_id="0"`` (a documented
parameter) makes the consumer group start at the stream's beginning, so jobs preloaded before
any worker started are read; the default ``$`` would skip them.
"""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker

from apps import probe

broker = RedisStreamBroker(url=probe.URL, consumer_id="0")


@broker.task
async def noop(ts: float) -> None:
    """No-op."""
    probe.noop(ts)


@broker.task
async def incr(ts: float) -> None:
    """One Redis INCR."""
    await probe.aincr(ts)


@broker.task
async def latency(ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)
