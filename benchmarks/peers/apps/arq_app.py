"""arq: coroutines listed in ``WorkerSettings``; workers run with ``arq``, default settings."""

from __future__ import annotations

from typing import Any, ClassVar

from arq.connections import RedisSettings

from apps import probe

REDIS = RedisSettings.from_dsn(probe.URL)


async def noop(ctx: dict[str, Any], ts: float) -> None:
    """No-op."""
    probe.noop(ts)


async def incr(ctx: dict[str, Any], ts: float) -> None:
    """One Redis INCR."""
    await probe.aincr(ts)


async def latency(ctx: dict[str, Any], ts: float) -> None:
    """Records enqueue-to-start latency."""
    probe.latency(ts)


class WorkerSettings:
    """What ``arq apps.arq_app.WorkerSettings`` runs."""

    functions: ClassVar[list[Any]] = [noop, incr, latency]
    redis_settings = REDIS
