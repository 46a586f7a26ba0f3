"""SAQ with its Redis queue; workers run with ``saq``, default settings (concurrency 10)."""

from __future__ import annotations

from typing import Any

from saq import Queue

from apps import probe


def queue() -> Queue:
    """A queue object on the benchmark's Redis."""
    return Queue.from_url(probe.URL)


async def noop(ctx: dict[str, Any], *, ts: float) -> None:
    """No-op."""
    probe.noop(ts)


async def incr(ctx: dict[str, Any], *, ts: float) -> None:
    """One Redis INCR."""
    await probe.aincr(ts)


async def latency(ctx: dict[str, Any], *, ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)


settings = {"queue": queue(), "functions": [noop, incr, latency]}
