"""The in-process dispatcher: a bounded worker pool over memory or a durable file store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from csjd_core.backends.memory import MemoryBackend
from csjd_core.config import Config
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.engine.registry import HandlerRegistry

if TYPE_CHECKING:
    from csjd_core.outbox import Outbox
    from csjd_core.periodic import Schedule

__all__ = ["Dispatcher"]


class Dispatcher(BaseDispatcher):
    """Runs jobs on ``config.workers`` threads of this process.

    Jobs live in memory, or in ``config.store`` (a `FileJobStore`) to survive crashes. With
    ``schedules`` it ticks them while started (marks kept by the store, or in memory).

    Example:
        >>> with Dispatcher(Config(workers=4)) as d:
        ...     d.register_handler("email", send_email)
        ...     d.submit(Job("welcome-42", "email", {"to": "a@example.com"}))
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: HandlerRegistry | None = None,
        schedules: Mapping[str, Schedule] | None = None,
        tick: bool = True,
        outboxes: Sequence[Outbox] = (),
    ):
        self.config = config = config if config is not None else Config()
        super().__init__(
            config.store if config.store is not None else MemoryBackend(),
            config,
            registry=registry,
            max_results=config.max_results,
            schedules=schedules,
            tick=tick,
            outboxes=outboxes,
        )
