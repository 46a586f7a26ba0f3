"""The ticker: the thread of a dispatcher that enqueues its schedules' due slots
(`csjd_core.periodic`), and the hook that records how their runs ended."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from csjd_core.backends.base import SlotOp, SlotVerdict
from csjd_core.errors import CSJDError, DispatcherClosed
from csjd_core.hooks import Hooks
from csjd_core.periodic import Schedule, schedule_of, slot_id

if TYPE_CHECKING:
    from csjd_core.engine.dispatcher import BaseDispatcher
    from csjd_core.engine.outcome import AttemptOutcome

__all__ = ["MAX_TICK", "RETRY_TICK", "Ticker", "TickerCounters"]

logger = logging.getLogger("csjd_core.periodic")

#: The longest sleep of a ticker between two looks at the clock (it sleeps until the next slot
#: is due; a change of Redis's clock is noticed within this).
MAX_TICK = 60.0
#: How soon a ticker tries a schedule again after a failed step (Redis unreachable, the queue
#: full, a bug).
RETRY_TICK = 1.0


@dataclass(slots=True)
class TickerCounters:
    """What this process's ticker did (the fleet's totals are in each schedule's mark)."""

    ticks: int = 0
    enqueued: int = 0
    refused: int = 0  # slots another ticker had accounted for, or whose id was taken
    overlaps: int = 0
    paused: int = 0
    misfires: int = 0
    errors: int = 0


#: The counter each verdict adds to.
_COUNTED = {
    SlotVerdict.ENQUEUED: "enqueued",
    SlotVerdict.DONE: "refused",
    SlotVerdict.DUPLICATE: "refused",
    SlotVerdict.OVERLAP: "overlaps",
    SlotVerdict.PAUSED: "paused",
}


class Ticker(Hooks):
    """Ticks schedules in this process: a thread that, whenever a slot is due, reads the
    schedule's mark and enqueues the due slots through ``dispatcher`` (whose backend owns the
    atomic mark-and-admit step). It is also a hook: the final outcome of a periodic job is
    written to its schedule's mark (the listing's "last outcome").

    Args:
        schedules: the schedules to tick, by name.
        dispatcher: enqueues the slots.
        clock: the Unix time every ticker agrees on (default: the backend's: Redis ``TIME``,
            this host's clock for a local backend); tests inject one.
    """

    def __init__(
        self,
        schedules: Mapping[str, Schedule],
        dispatcher: BaseDispatcher,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.schedules = dict(schedules)
        self.dispatcher = dispatcher
        self.clock = clock if clock is not None else dispatcher.clock
        self.counters = TickerCounters()
        self._next_due: dict[str, float] = {}
        self._failing: dict[str, str] = {}  # schedule -> the error last logged for it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start ticking in a thread (nothing to do without schedules)."""
        if self._thread is not None or not self.schedules:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="csjd-ticker", daemon=True)
        self._thread.start()
        logger.info("ticking schedules names=%s", ",".join(sorted(self.schedules)))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking: wait up to ``timeout`` seconds for a step under way (an atomic step
        is never half done: one cut short by the deadline simply did not happen, or did)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = RETRY_TICK
            try:
                now = self.clock()
                wait = min(MAX_TICK, max(0.01, self.tick(now) - now))
            except DispatcherClosed:
                return  # stopping
            except CSJDError as exc:  # the clock: Redis unreachable
                self.counters.errors += 1
                logger.warning("tick failed: cannot read the clock; trying again error=%s", exc)
            except Exception:  # a bug (in an injected clock...): logged, and tried again
                self.counters.errors += 1
                logger.exception("tick failed; trying again")
            self._stop.wait(wait)

    # -- one tick --------------------------------------------------------------------------
    def tick(self, now: float) -> float:
        """Enqueue every schedule's due slots at ``now`` (a Unix time by `clock`). A schedule
        whose step fails is logged and tried again `RETRY_TICK` later; the others go on.

        Returns:
            When the next slot of any schedule is due (or a failed one is tried again).

        Raises:
            DispatcherClosed: the dispatcher is stopping.
        """
        self.counters.ticks += 1
        soonest = math.inf
        for schedule in self.schedules.values():
            try:
                due = self.tick_schedule(schedule, now)
            except DispatcherClosed:
                raise
            except Exception as exc:  # one schedule must not stop the others
                self._failed(schedule, exc)
                self._next_due.pop(schedule.name, None)
                due = now + RETRY_TICK
            else:
                if self._failing.pop(schedule.name, None) is not None:
                    logger.info("schedule ticks again name=%s", schedule.name)
            soonest = min(soonest, due)
        return soonest

    def _failed(self, schedule: Schedule, exc: Exception) -> None:
        """Log a failed step: once per schedule and error (it is tried every second), with the
        traceback when it is not a `CSJDError` (a bug, not an outage)."""
        self.counters.errors += 1
        text = f"{type(exc).__name__}: {exc}"
        # An outage's message changes (a queue's count...): its class is the same failure.
        key = type(exc).__name__ if isinstance(exc, CSJDError) else text
        if self._failing.get(schedule.name) == key:
            logger.debug("schedule tick failed again name=%s error=%s", schedule.name, text)
            return
        self._failing[schedule.name] = key
        if isinstance(exc, CSJDError):
            logger.warning(
                "schedule tick failed; trying again every %.0f s name=%s error=%s",
                RETRY_TICK,
                schedule.name,
                text,
            )
        else:
            logger.error(
                "schedule tick failed; trying again every %.0f s name=%s",
                RETRY_TICK,
                schedule.name,
                exc_info=exc,
            )

    def tick_schedule(self, schedule: Schedule, now: float) -> float:
        """One schedule's part of a tick; returns when its next slot is due."""
        known = self._next_due.get(schedule.name)
        if known is not None and now < known:
            return known
        dispatcher = self.dispatcher
        state = dispatcher.schedule_state(schedule.name, schedule.queue)
        mark = None if state is None else state.mark
        if mark is None:
            # First sight of this schedule: its slots start after now (none is run for the
            # past). Every ticker may race to record it; the backend takes the first.
            mark = float(math.floor(now))
            dispatcher.admit_slot(schedule, SlotOp.INIT, mark)
        plan = schedule.plan(mark, now)
        # The slots missed before the first one kept are added to the mark's misfires by the
        # one step that finds the mark still where this plan started from.
        misfired = plan.passed_over
        for slot in plan.slots:
            self._admit(schedule, SlotOp.SLOT, slot, misfired, mark, len(plan.slots))
            misfired = 0
        if misfired and plan.through is not None:  # none kept: the mark still moves past them
            self._admit(schedule, SlotOp.SKIP, plan.through, misfired, mark, 0)
        self._next_due[schedule.name] = plan.next_due
        return plan.next_due

    def _admit(
        self,
        schedule: Schedule,
        op: SlotOp,
        slot: float,
        misfired: int,
        after: float,
        caught_up: int,
    ) -> None:
        verdict = self.dispatcher.admit_slot(schedule, op, slot, misfired=misfired, after=after)
        counter = _COUNTED.get(verdict)
        if counter is not None:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        if misfired and verdict is not SlotVerdict.DONE:
            # Logged by a ticker whose step moved the mark past them, not by those that found
            # the slot taken (the mark counts a gap once; two racing tickers may both log it).
            self.counters.misfires += misfired
            logger.warning(
                "schedule slots missed while no ticker ran name=%s not_enqueued=%d "
                "enqueued=%d catch_up=%s",
                schedule.name,
                misfired,
                caught_up,
                schedule.catch_up,
            )
        if verdict is SlotVerdict.ENQUEUED:
            logger.info(
                "schedule enqueued name=%s id=%s", schedule.name, slot_id(schedule.name, slot)
            )
        elif verdict is SlotVerdict.OVERLAP:
            logger.info(
                "schedule slot skipped: the previous run is unfinished name=%s id=%s "
                "max_running=%s",
                schedule.name,
                slot_id(schedule.name, slot),
                schedule.max_running,
            )

    # -- the outcome event -----------------------------------------------------------------
    def after_attempt(self, outcome: AttemptOutcome) -> None:
        """Write a periodic job's final outcome to its schedule's mark."""
        job_id = outcome.job.id
        if not outcome.terminal or not job_id.startswith("periodic:"):
            return
        name = schedule_of(job_id, self.schedules)
        if name is None:
            return
        try:
            self.dispatcher.record_schedule_outcome(self.schedules[name], job_id, str(outcome.kind))
        except CSJDError as exc:  # BackendUnavailable included: the listing shows the older one
            logger.warning("could not record a schedule's last outcome name=%s error=%s", name, exc)
