"""The distributed dispatcher: the shared engine over the Redis Streams backend."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from csjd_core.backends.redis import RedisStreamsBackend
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.engine.registry import HandlerRegistry
from csjd_core.errors import BackendUnavailable, InvalidJob
from csjd_core.job import Job
from csjd_core.metrics import StopReport
from csjd_core.stats import DeadLetter, QueueStats

if TYPE_CHECKING:
    from csjd_core.outbox import Outbox
    from csjd_core.periodic import Schedule

__all__ = ["DeadLetter", "RedisDistributedDispatcher"]

T = TypeVar("T")


class RedisDistributedDispatcher(BaseDispatcher):
    """Many worker processes on many machines sharing queues on Redis Streams.

    A process that only submits (a web server) never calls `start`; a worker process registers
    its handlers and calls `start` (or runs ``csjd worker``), ticking ``schedules`` if given
    (and ``tick``).
    Delivery is at-least-once: see docs/distributed.md for when a job can run twice.
    """

    def __init__(
        self,
        redis: RedisConfig,
        config: DistributedConfig | None = None,
        *,
        registry: HandlerRegistry | None = None,
        schedules: Mapping[str, Schedule] | None = None,
        tick: bool = True,
        outboxes: Sequence[Outbox] = (),
    ) -> None:
        self.config = config = config if config is not None else DistributedConfig()
        self.redis_config = redis
        self.backend = RedisStreamsBackend(redis, config)
        super().__init__(
            self.backend,
            config,
            registry=registry,
            schedules=schedules,
            tick=tick,
            outboxes=outboxes,
        )

    @property
    def consumer(self) -> str:
        """This process's consumer name."""
        return self.backend.consumer

    def _check_batch(self, batch: list[Job]) -> None:
        queues = {job.queue or self.backend.default_queue for job in batch}
        if len(queues) > 1:
            raise InvalidJob(
                f"a batch must target one queue (atomic per queue); got {sorted(queues)}"
            )

    def close(self, timeout: float | timedelta | None = None) -> StopReport:
        """Stop consuming (if started) and close the connections."""
        return self.stop(timeout)

    def _admin(self, call: Callable[..., T], *args: Any) -> T:
        """Run an operator call; Redis errors become `BackendUnavailable`."""
        try:
            return call(*args)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis at {self.redis_config.display} failed: {exc}") from exc

    def stats(self) -> dict[str, QueueStats]:
        """Cluster-wide figures per queue: lengths, in flight, scheduled, dead, consumers.

        Raises:
            BackendUnavailable: Redis could not be reached.
        """
        return self._admin(self.backend.stats)

    def dead_letters(self, queue: str | None = None, count: int = 100) -> list[DeadLetter]:
        """The oldest dead letters of ``queue``."""
        return self._admin(self.backend.dead_letters, queue, count)

    def dead_letter(self, entry_id: str, queue: str | None = None) -> DeadLetter | None:
        """One dead letter by its entry id, or ``None``."""
        return self._admin(self.backend.dead_letter, entry_id, queue)

    def requeue_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Move one dead letter back to its queue (attempts reset)."""
        return self._admin(self.backend.requeue_dead, entry_id, queue)

    def delete_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Delete one dead letter; False if it was already gone."""
        return self._admin(self.backend.delete_dead, entry_id, queue)

    def dead_count(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds."""
        return self._admin(self.backend.dead_count, queue)

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete the dead letters of ``queue``; returns how many."""
        return self._admin(self.backend.purge_dead, queue)
