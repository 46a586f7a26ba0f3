"""Periodic jobs: schedules declared where the job is (``@app.job(schedule=...)``), ticked by
every worker process, with no leader and no lock.

Each schedule has a *mark* in the backend: the time through which its slots are accounted for
(enqueued, skipped or passed over). A ticker enqueues a slot with one atomic step that compares
and advances the mark together with the job's admission (Redis: inside the admission script;
the file store: one log write holding both), so any number of tickers enqueue each slot at most
once for the schedule's lifetime — job-id de-duplication alone would only refuse a slot while
its record lives. Whether a slot is due is judged by the backend's clock (Redis ``TIME``), one
clock for every ticker.

Cron expressions are parsed by ``cronsim`` (the ``csjd[cron]`` extra): on the day clocks spring
forward, a time that does not exist (02:30 in Europe/Paris) runs at the first instant after the
gap (03:00 local, 01:00 UTC); on the day they fall back, a time that exists twice runs once, at
its first occurrence. Cron fields are matched in the schedule's ``timezone`` (default UTC).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from csjd_core.backends.base import SlotOp, SlotVerdict
from csjd_core.errors import BackendUnavailable, CSJDError, QueueFull
from csjd_core.hooks import Hooks
from csjd_core.limits import brief, name_problem
from csjd_core.limits import seconds as duration

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from csjd_core.engine.dispatcher import BaseDispatcher
    from csjd_core.engine.outcome import AttemptOutcome
    from csjd_core.job import Job
    from csjd_core.jobs import JobFunction

__all__ = [
    "CATCH_UP",
    "Cron",
    "Every",
    "Plan",
    "Schedule",
    "Ticker",
    "TickerCounters",
    "Trigger",
    "every",
    "make_schedule",
    "manual_id",
    "schedule_of",
    "slot_id",
    "zone",
]

logger = logging.getLogger("csjd_core.periodic")

#: The misfire policies: what a ticker does with slots whose time passed while none ticked.
CATCH_UP = ("latest", "none", "all")
#: How a slot is spelled in its job id (UTC).
SLOT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Slots a tick looks at at most, twice (an outage of a year of a per-minute schedule is
#: 525,600 slots): beyond them, the earliest missed slots are passed over uncounted.
MAX_SLOTS_PER_TICK = 10_000
#: The longest sleep of a ticker between two looks at the clock (it sleeps until the next slot
#: is due; a change of Redis's clock is noticed within this).
MAX_TICK = 60.0
#: How soon a ticker tries again after a failed tick (Redis unreachable, the queue full).
RETRY_TICK = 1.0


@dataclass(frozen=True, slots=True)
class Every:
    """Slots every ``period`` seconds, anchored to the Unix epoch (so every ticker, started
    whenever, computes the same slots): ``every(hours=1)`` is on the hour in UTC."""

    period: int

    def slots_after(self, after: float) -> Iterator[float]:
        """The slots strictly after ``after`` (a Unix time), in order."""
        slot = (math.floor(after / self.period) + 1) * self.period
        while True:
            yield float(slot)
            slot += self.period

    def describe(self) -> str:
        parts = []
        rest = self.period
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if rest >= size:
                parts.append(f"{rest // size}{unit}")
                rest %= size
        return "every " + "".join(parts)


def every(
    *,
    seconds: float | None = None,
    minutes: float | None = None,
    hours: float | None = None,
    days: float | None = None,
) -> Every:
    """A schedule with a slot every given period (the parts add up), anchored to the Unix
    epoch: ``every(minutes=5)`` runs at :00, :05, :10... of every hour, in every process.

    Raises:
        ValueError: no part, a negative or non-number part, or a period that is not a whole
            number of seconds of at least one second (or is longer than ten years).
    """
    parts = {"seconds": seconds, "minutes": minutes, "hours": hours, "days": days}
    given = {k: v for k, v in parts.items() if v is not None}
    if not given:
        raise ValueError("every() needs seconds=, minutes=, hours= or days=")
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"every({name}=...) must be a number >= 0, got {brief(value)}")
    try:
        span: float | timedelta = timedelta(**given)
    except OverflowError:  # inf, or more days than a timedelta holds: far beyond ten years
        span = math.inf
    total = duration(span, "every()")
    if total < 1 or total != int(total):
        raise ValueError(f"every() must be a whole number of seconds >= 1, got {total:g} s")
    return Every(int(total))


class Cron:
    """A cron expression (five fields, or six with seconds first: cronsim's syntax) matched in
    ``timezone``.

    Raises:
        ValueError: the expression is not one cronsim accepts, or the time zone is unknown.
        CSJDError: cronsim is not installed (``pip install 'csjd[cron]'``).
    """

    __slots__ = ("_sim", "expression", "timezone")

    def __init__(self, expression: str, timezone: str | None = None) -> None:
        try:
            from cronsim import CronSim, CronSimError  # noqa: PLC0415 - an optional extra
        except ImportError as exc:
            raise CSJDError(
                f"cron schedules need the cron extra: pip install 'csjd[cron]' ({exc})"
            ) from exc
        if not isinstance(expression, str):
            raise ValueError(
                f"a schedule must be a cron string or every(...), got {brief(expression)}"
            )
        self.expression = expression
        self.timezone = zone(timezone)
        try:
            CronSim(expression, datetime.now(self.timezone))
        except CronSimError as exc:
            raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
        self._sim = CronSim

    def slots_after(self, after: float) -> Iterator[float]:
        """The slots strictly after ``after`` (a Unix time), in order, as Unix times."""
        start = datetime.fromtimestamp(math.floor(after), self.timezone)
        for moment in self._sim(self.expression, start):
            at = moment.timestamp()
            # cronsim reads a start in the repeated hour of a fall-back day as its first
            # occurrence, so it can answer a time before ``after``.
            if at > after:
                yield at

    def describe(self) -> str:
        return f"{self.expression} ({self.timezone.key})"


Trigger = Every | Cron


def zone(name: str | None) -> ZoneInfo:
    """The time zone called ``name`` (``None``: UTC).

    Raises:
        ValueError: not a time zone the system's (or ``tzdata``'s) database knows.
    """
    # Imported here: zoneinfo imports sysconfig, which reads the environment, and importing
    # csjd_core reads none (tests/core/test_exports.py).
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    if name is None:
        return ZoneInfo("UTC")
    if not isinstance(name, str) or not name:
        raise ValueError(f"timezone must be an IANA name such as 'Europe/Paris', got {brief(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown timezone {name!r} (an IANA name such as 'Europe/Paris'; "
            f"install tzdata if the system has no zone database): {exc}"
        ) from None


def slot_id(name: str, slot: float) -> str:
    """The job id of schedule ``name``'s slot at ``slot`` (a Unix time)."""
    return f"periodic:{name}:{datetime.fromtimestamp(slot, UTC).strftime(SLOT_FORMAT)}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one tick of one schedule should do."""

    slots: list[float]  # to enqueue, oldest first
    passed_over: int  # slots missed and not enqueued (misfires)
    through: float | None  # the latest slot that is due (None: none is)
    next_due: float  # when the next slot after these is due (the Unix time)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A periodic job: when (``trigger``), what (``job`` with fixed ``kwargs``), and how missed
    slots and overlaps are handled.

    Attributes:
        name: unique among the app's schedules (default: the job type); part of slot ids.
        catch_up: ``"latest"`` (after an outage enqueue the most recent missed slot),
            ``"none"`` (enqueue a slot only if it is less than ``grace`` late), or ``"all"``
            (every missed slot, the last ``catch_up_limit`` of them).
        max_running: slots skipped while this many of the schedule's jobs are unfinished
            (``None``: no limit). A skipped slot is recorded against the mark.
        jitter: a slot is due this many seconds after its time at most; the offset is derived
            from (name, slot), so every ticker computes the same one.
    """

    name: str
    job: JobFunction[Any, Any]
    trigger: Trigger
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    catch_up: str = "latest"
    catch_up_limit: int = 100
    max_running: int | None = 1
    jitter: float = 0.0

    @property
    def queue(self) -> str | None:
        return self.job.queue

    @property
    def grace(self) -> float:
        """How late a slot may be enqueued under ``catch_up="none"``: a minute, or less for
        a schedule whose slots come more often."""
        return 60.0 if not isinstance(self.trigger, Every) else min(60.0, self.trigger.period)

    def describe(self) -> str:
        return self.trigger.describe()

    def build(self, job_id: str) -> Job:
        """The job of one run (validated, not enqueued)."""
        return self.job.build_job((), self.kwargs, job_id=job_id)

    def due(self, slot: float) -> float:
        """When ``slot`` is due: its time plus its jitter."""
        if not self.jitter:
            return slot
        digest = hashlib.sha256(f"{self.name}\0{slot:.0f}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2**64
        return slot + round(fraction * self.jitter, 3)

    def next_slot(self, after: float) -> float:
        return next(self.trigger.slots_after(after))

    def plan(self, mark: float, now: float) -> Plan:
        """The slots after ``mark`` that are due at ``now``, by the catch-up policy."""
        due_slots: list[float] = []
        upcoming = None
        seen = 0
        for slot in self.trigger.slots_after(mark):
            if self.due(slot) > now or seen >= MAX_SLOTS_PER_TICK:
                upcoming = slot
                break
            due_slots.append(slot)
            seen += 1
        if upcoming is not None and seen >= MAX_SLOTS_PER_TICK and self.due(upcoming) <= now:
            # A longer outage than a tick looks at: jump to the recent past and look again.
            recent = self.plan(max(due_slots[-1], now - (due_slots[-1] - mark)), now)
            return Plan(recent.slots, seen + recent.passed_over, recent.through, recent.next_due)
        assert upcoming is not None  # slots_after never ends
        if self.catch_up == "all":
            keep = due_slots[-self.catch_up_limit :]
        elif self.catch_up == "latest":
            keep = due_slots[-1:]
        else:
            keep = [s for s in due_slots[-1:] if now - self.due(s) <= self.grace]
        through = due_slots[-1] if due_slots else None
        return Plan(keep, len(due_slots) - len(keep), through, self.due(upcoming))


def make_schedule(
    job: JobFunction[Any, Any],
    schedule: str | Every,
    *,
    name: str | None = None,
    timezone: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    catch_up: str = "latest",
    catch_up_limit: int = 100,
    max_running: int | None = 1,
    jitter: float | timedelta | None = None,
) -> Schedule:
    """A checked `Schedule` for ``job`` (bad values fail here, at start-up).

    Raises:
        ValueError: a bad expression, time zone, policy or bound, naming it.
        TypeError: ``kwargs`` do not fit the job function's signature.
    """
    name = job.type if name is None else name
    problem = name_problem(name, "schedule_name")
    if problem is not None or len(name) > 160:
        raise ValueError(problem or f"schedule_name must be at most 160 characters, got {name!r}")
    if isinstance(schedule, Every):
        if timezone is not None:
            raise ValueError(
                f"schedule {name!r}: timezone applies to cron expressions; every() slots are "
                "counted from the Unix epoch"
            )
        trigger: Trigger = schedule
    elif isinstance(schedule, str):
        try:
            trigger = Cron(schedule, timezone)
        except ValueError as exc:
            raise ValueError(f"schedule {name!r}: {exc}") from None
    else:
        raise ValueError(
            f"schedule {name!r}: schedule= takes a cron string or every(...), got {brief(schedule)}"
        )
    if catch_up not in CATCH_UP:
        raise ValueError(
            f"schedule {name!r}: catch_up must be one of {CATCH_UP}, got {brief(catch_up)}"
        )
    _positive_int(catch_up_limit, f"schedule {name!r}: catch_up_limit")
    if catch_up_limit > MAX_SLOTS_PER_TICK:
        raise ValueError(
            f"schedule {name!r}: catch_up_limit must be at most {MAX_SLOTS_PER_TICK}, "
            f"got {catch_up_limit}"
        )
    if max_running is not None:
        _positive_int(max_running, f"schedule {name!r}: max_running")
    spread = 0.0 if jitter is None else duration(jitter, f"schedule {name!r}: jitter")
    made = Schedule(
        name=name,
        job=job,
        trigger=trigger,
        kwargs=dict(kwargs or {}),
        catch_up=catch_up,
        catch_up_limit=catch_up_limit,
        max_running=max_running,
        jitter=spread,
    )
    made.build(slot_id(name, 0.0))  # the fixed kwargs fit the function and are JSON
    return made


def _positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {brief(value)}")


# -- ticking ---------------------------------------------------------------------------------
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
        """Stop ticking (a tick under way finishes its atomic steps first)."""
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
            except Exception as exc:  # Redis down or the queue full: tried again next tick
                self.counters.errors += 1
                logger.warning("tick failed; trying again error=%s", exc)
            self._stop.wait(wait)

    # -- one tick --------------------------------------------------------------------------
    def tick(self, now: float) -> float:
        """Enqueue every schedule's due slots at ``now`` (a Unix time by `clock`).

        Returns:
            When the next slot of any schedule is due.

        Raises:
            BackendUnavailable, QueueFull: the first such failure, after every schedule was
                tried (a failed slot is tried again at the next tick).
        """
        self.counters.ticks += 1
        soonest = math.inf
        failure: BaseException | None = None
        for schedule in self.schedules.values():
            try:
                soonest = min(soonest, self.tick_schedule(schedule, now))
            except (BackendUnavailable, QueueFull, CSJDError) as exc:
                failure = failure or exc
                self._next_due.pop(schedule.name, None)
                soonest = min(soonest, now + RETRY_TICK)
        if failure is not None:
            raise failure
        return soonest

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
        misfired = plan.passed_over
        for slot in plan.slots:
            self._admit(schedule, SlotOp.SLOT, slot, misfired)
            misfired = 0
        if misfired and plan.through is not None:  # none kept: the mark still moves past them
            self._admit(schedule, SlotOp.SKIP, plan.through, misfired)
        self._next_due[schedule.name] = plan.next_due
        return plan.next_due

    def _admit(self, schedule: Schedule, op: SlotOp, slot: float, misfired: int) -> None:
        verdict = self.dispatcher.admit_slot(schedule, op, slot, misfired=misfired)
        counter = _COUNTED.get(verdict)
        if counter is not None:
            setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        if misfired and verdict is not SlotVerdict.DONE:
            # Counted and logged by the one ticker whose step added them to the mark: every
            # ticker that planned from the same mark saw the same missed slots.
            self.counters.misfires += misfired
            logger.warning(
                "schedule missed slots name=%s missed=%d catch_up=%s",
                schedule.name,
                misfired,
                schedule.catch_up,
            )
        if verdict is SlotVerdict.ENQUEUED:
            logger.info(
                "schedule enqueued name=%s id=%s", schedule.name, slot_id(schedule.name, slot)
            )
        elif verdict is SlotVerdict.OVERLAP:
            logger.info(
                "schedule slot skipped: max_running runs unfinished name=%s id=%s",
                schedule.name,
                slot_id(schedule.name, slot),
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


def schedule_of(job_id: str, names: Iterable[str]) -> str | None:
    """The schedule (among ``names``) whose run ``job_id`` is, or ``None``."""
    # Longest name first: names may hold ':', so "a:b"'s ids also start with "periodic:a:".
    for name in sorted(names, key=len, reverse=True):
        if job_id.startswith(f"periodic:{name}:"):
            return name
    return None


def manual_id(name: str) -> str:
    """A job id for a "run now" of schedule ``name``."""
    return f"periodic:{name}:manual-{uuid.uuid4().hex}"
