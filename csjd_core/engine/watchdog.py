"""Timeouts: one thread, one heap of deadlines, for every attempt that has a timeout.

At the deadline the attempt's context is cancelled (and an async handler's task cancelled).
A handler still running ``DETACH_GRACE`` seconds later is detached when the budget allows.
Attempts without a timeout never touch this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from csjd_core.backends.base import Delivery
    from csjd_core.context import JobContext

__all__ = ["DETACH_GRACE", "Attempt", "Watchdog"]

logger = logging.getLogger(__name__)

#: Seconds after the deadline before a handler that ignores cancellation is detached.
DETACH_GRACE = 0.1

#: Longest single wait of the watchdog (seconds): far below ``threading.TIMEOUT_MAX``.
_MAX_WAIT = 60.0


class Attempt:
    """A running attempt that has a deadline."""

    __slots__ = ("ctx", "delivery", "done", "loop", "settled", "task", "worker")

    def __init__(self, delivery: Delivery, ctx: JobContext, worker: Any) -> None:
        self.delivery = delivery
        self.ctx = ctx
        self.worker = worker
        self.done = False  # the handler returned (set by the worker)
        self.settled = False  # the outcome is claimed (by the worker or by a detach)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        """Cancel the context and, for a coroutine, its task."""
        self.ctx.cancel(timed_out=True)
        loop, task = self.loop, self.task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(task.cancel)


class Watchdog:
    """Fires deadlines; asks ``on_overrun`` whether to detach handlers that ignore them."""

    def __init__(self, on_overrun: Callable[[Attempt], bool]) -> None:
        self._on_overrun = on_overrun
        self._heap: list[tuple[float, int, int, Attempt]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def watch(self, attempt: Attempt) -> None:
        """Start timing ``attempt`` (its ``ctx.deadline`` must be set)."""
        deadline = attempt.ctx.deadline
        assert deadline is not None
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="csjd-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (deadline, next(self._seq), 0, attempt))
            if self._heap[0][3] is attempt:
                self._cond.notify()

    def stop(self) -> None:
        """Stop the thread (pending deadlines are dropped)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        # Nothing may end this thread but stop(): every later timeout of the process depends
        # on it. Deadlines are bounded at admission (MAX_DURATION); the wait is clamped anyway.
        while True:
            try:
                if not self._cycle():
                    return
            except Exception:
                logger.exception("watchdog cycle failed; carrying on")
                time.sleep(0.05)  # whatever failed, never a hot loop

    def _cycle(self) -> bool:
        """Wait for the next deadline, fire what is due. Returns False once stopped."""
        heap = self._heap
        overruns: list[Attempt] = []
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                if heap and heap[0][0] <= now:
                    break
                self._cond.wait(min(heap[0][0] - now, _MAX_WAIT) if heap else _MAX_WAIT)
            if self._stopped:
                return False
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, phase, attempt = heapq.heappop(heap)
                if attempt.done or attempt.settled:
                    continue
                if phase == 0:
                    attempt.cancel()
                    heapq.heappush(heap, (now + DETACH_GRACE, next(self._seq), 1, attempt))
                else:
                    overruns.append(attempt)
        for attempt in overruns:
            try:
                recheck = self._on_overrun(attempt)
            except Exception:
                logger.exception("detach failed job id=%r", attempt.delivery.job.id)
                recheck = False
            if recheck:
                with self._cond:
                    heapq.heappush(
                        heap, (time.monotonic() + DETACH_GRACE, next(self._seq), 1, attempt)
                    )
        return True
