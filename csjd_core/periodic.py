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
gap (03:00 local, 01:00 UTC); on the day they fall back, a fixed time that exists twice (minute
and hour given) runs once, at its first occurrence, while an expression matching several times
in the repeated hour (``*/15 2 * * *``) matches in both occurrences. Cron fields are matched in
the schedule's ``timezone`` (default UTC).

The ticker that drives schedules is `csjd_core.engine.ticker.Ticker`.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from csjd_core.errors import CSJDError
from csjd_core.limits import brief, name_problem
from csjd_core.limits import seconds as duration

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from csjd_core.job import Job
    from csjd_core.jobs import JobFunction

__all__ = [
    "CATCH_UP",
    "Cron",
    "Every",
    "Plan",
    "Schedule",
    "Trigger",
    "every",
    "make_schedule",
    "manual_id",
    "schedule_of",
    "slot_id",
    "zone",
]

#: The misfire policies: what a ticker does with slots whose time passed while none ticked.
CATCH_UP = ("latest", "none", "all")
#: How a slot is spelled in its job id (UTC).
SLOT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: Slots a tick looks at at most, twice (an outage of a year of a per-minute schedule is
#: 525,600 slots): beyond them, the earliest missed slots are passed over uncounted.
MAX_SLOTS_PER_TICK = 10_000


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
        if expression.startswith("@"):
            raise ValueError(
                f"cron macros such as {expression!r} are not supported: write the fields "
                "('@daily' is '0 0 * * *', '@hourly' is '0 * * * *')"
            )
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
    def job_type(self) -> str:
        """The type of its runs (for templates, which would call ``job``, a function)."""
        return self.job.type

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
    if catch_up == "all" and max_running is not None and max_running < catch_up_limit:
        raise ValueError(
            f"schedule {name!r}: catch_up='all' enqueues up to catch_up_limit={catch_up_limit} "
            f"missed slots together, which max_running={max_running} would skip as overlaps: "
            "give max_running=None (or at least catch_up_limit)"
        )
    spread = 0.0 if jitter is None else duration(jitter, f"schedule {name!r}: jitter")
    if isinstance(trigger, Every) and spread >= trigger.period:
        # Due times would no longer follow the slots' order, and slots wait for earlier ones.
        raise ValueError(
            f"schedule {name!r}: jitter must be shorter than the period "
            f"({trigger.period} s), got {spread:g} s"
        )
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
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ValueError(f"schedule {name!r}: its kwargs must be a dict, got {brief(kwargs)}")
    try:
        made.build(slot_id(name, 0.0))  # the fixed kwargs fit the function and are JSON
    except TypeError as exc:
        raise TypeError(
            f"schedule {name!r}: its kwargs {sorted(made.kwargs)} do not fit the function: {exc}"
        ) from None
    return made


def _positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {brief(value)}")


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
