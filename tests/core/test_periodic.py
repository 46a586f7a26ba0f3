"""Periodic job definitions and their time rules (`csjd_core.periodic`): `every`, cron
expressions through cronsim (time zones, DST, leap days), slot ids, `Schedule.plan` (catch-up,
misfires, jitter) and the ``@app.job(schedule=...)`` decorator. No backend: pure functions of
the time given."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import csjd_core
from csjd_core import App, InvalidJob, every
from csjd_core.periodic import (
    MAX_SLOTS_PER_TICK,
    Cron,
    Every,
    Schedule,
    make_schedule,
    schedule_of,
    slot_id,
)

HOUR = 3600.0
DAY = 86400.0


@pytest.fixture
def app() -> App:
    return App(mode="inprocess", name="periodic-tests")


@pytest.fixture
def tick_job(app: App):
    @app.job("tick")
    def tick(n: int = 0) -> int:
        return n

    return tick


def utc(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()  # type: ignore[misc]


def take(iterator, n: int) -> list[float]:
    return list(itertools.islice(iterator, n))


# -- every() ---------------------------------------------------------------------------------


def test_every_adds_its_parts_up() -> None:
    assert every(seconds=1).period == 1
    assert every(minutes=5).period == 300
    assert every(days=1, hours=1, minutes=1, seconds=1).period == 86400 + 3600 + 60 + 1
    assert every(minutes=0.5).period == 30  # a fraction of a minute that is whole seconds
    assert every(hours=1, seconds=0).period == 3600
    assert every(days=1, hours=2, minutes=3, seconds=4).describe() == "every 1d2h3m4s"


@pytest.mark.parametrize("after", [0.0, 1.0, 299.999, 300.0, 1_700_000_123.456, 1_700_000_400.0])
def test_every_is_anchored_to_the_epoch_whatever_the_start(after: float) -> None:
    slots = take(every(minutes=5).slots_after(after), 5)
    assert all(slot % 300 == 0 for slot in slots)
    assert slots[0] > after and slots[0] - after <= 300  # the first slot strictly after
    assert [b - a for a, b in itertools.pairwise(slots)] == [300.0] * 4
    # Every process computes the same slots, whenever it started.
    later = take(every(minutes=5).slots_after(after + 7), 4)
    assert set(later) <= set(slots) | set(take(every(minutes=5).slots_after(slots[-1]), 2))


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({}, "every() needs seconds=, minutes=, hours= or days="),
        ({"seconds": 0}, "whole number of seconds >= 1, got 0 s"),
        ({"seconds": 0.5}, "whole number of seconds >= 1, got 0.5 s"),
        ({"seconds": 1.5}, "whole number of seconds >= 1, got 1.5 s"),
        ({"minutes": 0.001}, "whole number of seconds >= 1"),
        ({"seconds": -1}, "every(seconds=...) must be a number >= 0, got -1"),
        ({"hours": 1, "minutes": -1}, "every(minutes=...) must be a number >= 0"),
        ({"seconds": True}, "every(seconds=...) must be a number >= 0, got True"),
        ({"minutes": "5"}, "every(minutes=...) must be a number >= 0, got '5'"),
        ({"seconds": float("nan")}, "every(seconds=...) must be a number >= 0, got nan"),
        ({"days": 3651}, "ten years"),
        ({"days": 3650, "seconds": 1}, "ten years"),
        ({"seconds": float("inf")}, "ten years"),
        ({"days": 10**9}, "ten years"),
        ({"days": 10**30}, "ten years"),
    ],
)
def test_every_refusals_are_clear_value_errors(parts: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        every(**parts)
    assert message in str(caught.value)


def test_every_of_exactly_ten_years_is_accepted() -> None:
    assert every(days=3650).period == 3650 * 86400


# -- cron ------------------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["61 * * * *", "* * *", "nonsense", "* * * * * * *", ""])
def test_a_bad_cron_expression_names_the_schedule(tick_job, expression: str) -> None:
    with pytest.raises(ValueError, match=r"schedule 'nightly': bad cron expression"):
        make_schedule(tick_job, expression, name="nightly")


def test_an_unknown_time_zone_names_the_schedule(tick_job) -> None:
    with pytest.raises(ValueError, match=r"schedule 'nightly': unknown timezone 'Mars/Olympus'"):
        make_schedule(tick_job, "0 3 * * *", name="nightly", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match=r"schedule 'nightly': timezone must be an IANA name"):
        make_schedule(tick_job, "0 3 * * *", name="nightly", timezone="")


def test_a_cron_string_is_matched_in_its_time_zone() -> None:
    paris = Cron("0 3 * * *", "Europe/Paris")
    first = next(paris.slots_after(utc(2024, 6, 1)))
    assert first == utc(2024, 6, 1, 1)  # 03:00 CEST
    assert next(Cron("0 3 * * *").slots_after(utc(2024, 6, 1))) == utc(2024, 6, 1, 3)  # UTC
    assert paris.describe() == "0 3 * * * (Europe/Paris)"


def slots_on_local_day(cron: Cron, zone: str, year: int, month: int, day: int) -> list[datetime]:
    tz = ZoneInfo(zone)
    start = datetime(year, month, day, tzinfo=tz)
    end = start + timedelta(days=1, hours=1)  # wall time: the next day's midnight, and then some
    found = []
    for slot in cron.slots_after(start.timestamp() - 1):
        moment = datetime.fromtimestamp(slot, tz)
        if moment >= end:
            break
        if moment.date() == start.date():
            found.append(moment)
    return found


@pytest.mark.parametrize(
    ("zone", "spring", "gap_end_utc"),
    [
        ("Europe/Paris", (2024, 3, 31), utc(2024, 3, 31, 1)),  # 02:00 CET -> 03:00 CEST
        ("America/New_York", (2024, 3, 10), utc(2024, 3, 10, 7)),  # 02:00 EST -> 03:00 EDT
    ],
)
def test_spring_forward_runs_a_missing_time_once_at_the_end_of_the_gap(
    zone: str, spring: tuple[int, int, int], gap_end_utc: float
) -> None:
    cron = Cron("30 2 * * *", zone)
    slots = slots_on_local_day(cron, zone, *spring)
    assert len(slots) == 1
    (slot,) = slots
    assert (slot.hour, slot.minute) == (3, 0)  # the first instant after the gap, local time
    assert slot.timestamp() == gap_end_utc
    # The days around it are ordinary.
    day = datetime(*spring)
    before = slots_on_local_day(cron, zone, *(day - timedelta(days=1)).timetuple()[:3])
    after = slots_on_local_day(cron, zone, *(day + timedelta(days=1)).timetuple()[:3])
    assert [(s.hour, s.minute) for s in before + after] == [(2, 30), (2, 30)]


@pytest.mark.parametrize(
    ("zone", "expression", "fall", "first_utc"),
    [
        # 03:00 CEST -> 02:00 CET: 02:30 exists twice (00:30 and 01:30 UTC); the first runs.
        ("Europe/Paris", "30 2 * * *", (2024, 10, 27), utc(2024, 10, 27, 0, 30)),
        # 02:00 EDT -> 01:00 EST: 01:30 exists twice (05:30 and 06:30 UTC); 02:30 once.
        ("America/New_York", "30 1 * * *", (2024, 11, 3), utc(2024, 11, 3, 5, 30)),
        ("America/New_York", "30 2 * * *", (2024, 11, 3), utc(2024, 11, 3, 7, 30)),
    ],
)
def test_fall_back_runs_a_repeated_time_once_at_its_first_occurrence(
    zone: str, expression: str, fall: tuple[int, int, int], first_utc: float
) -> None:
    cron = Cron(expression, zone)
    slots = slots_on_local_day(cron, zone, *fall)
    assert [s.timestamp() for s in slots] == [first_utc]


@pytest.mark.parametrize(
    ("zone", "expression", "repeated_hour_utc"),
    [
        ("Europe/Paris", "30 2 * * *", utc(2024, 10, 27, 1)),
        ("America/New_York", "30 1 * * *", utc(2024, 11, 3, 6)),
        ("Europe/Paris", "*/15 * * * *", utc(2024, 10, 27, 1)),
    ],
)
def test_cron_slots_are_strictly_after_any_start_in_the_repeated_hour(
    zone: str, expression: str, repeated_hour_utc: float
) -> None:
    # A ticker's mark can fall in the second pass of a repeated hour (a ticker started then):
    # the next slot must be after it, never the first pass's slot again.
    cron = Cron(expression, zone)
    for offset in range(-3600, 3600 + 1, 300):
        after = repeated_hour_utc + offset
        slots = take(cron.slots_after(after), 3)
        assert slots[0] > after, (expression, datetime.fromtimestamp(after, UTC), slots)
        assert slots == sorted(slots)


def test_a_leap_day_schedule_runs_every_four_years() -> None:
    slots = take(Cron("0 0 29 2 *").slots_after(utc(2023, 1, 1)), 3)
    assert slots == [utc(2024, 2, 29), utc(2028, 2, 29), utc(2032, 2, 29)]


def test_slot_ids_are_the_slot_in_utc() -> None:
    assert slot_id("nightly", utc(2024, 3, 31, 1)) == "periodic:nightly:2024-03-31T01:00:00Z"
    assert slot_id("a.b", 0.0) == "periodic:a.b:1970-01-01T00:00:00Z"
    # A Paris cron slot is spelled in UTC, not local time.
    paris = next(Cron("30 2 * * *", "Europe/Paris").slots_after(utc(2024, 7, 1)))
    assert slot_id("n", paris) == "periodic:n:2024-07-01T00:30:00Z"


def test_schedule_of_picks_the_schedule_whose_run_an_id_is() -> None:
    names = ["a", "a:b", "nightly"]
    assert schedule_of(slot_id("a", 0.0), names) == "a"
    assert schedule_of(slot_id("a:b", 0.0), names) == "a:b"
    assert schedule_of(slot_id("a:b", 0.0), list(reversed(names))) == "a:b"
    assert schedule_of("periodic:nightly:manual-abc", names) == "nightly"
    assert schedule_of("periodic:other:2024-01-01T00:00:00Z", names) is None
    assert schedule_of("plain-job", names) is None


# -- plan() ----------------------------------------------------------------------------------


def ten_second(job, **options) -> Schedule:
    if options.get("catch_up") == "all":
        options.setdefault("max_running", None)
    return make_schedule(job, every(seconds=10), name="ten", **options)


def test_plan_before_the_next_slot_does_nothing(tick_job) -> None:
    plan = ten_second(tick_job).plan(1000.0, 1009.999)
    assert (plan.slots, plan.passed_over, plan.through, plan.next_due) == ([], 0, None, 1010.0)


def test_plan_on_time_enqueues_the_slot_under_every_policy(tick_job) -> None:
    for policy in ("latest", "none", "all"):
        plan = ten_second(tick_job, catch_up=policy).plan(1000.0, 1010.0)
        assert (plan.slots, plan.passed_over, plan.through, plan.next_due) == (
            [1010.0],
            0,
            1010.0,
            1020.0,
        ), policy


def test_plan_latest_runs_the_most_recent_missed_slot(tick_job) -> None:
    plan = ten_second(tick_job, catch_up="latest").plan(1000.0, 1100.5)
    assert plan.slots == [1100.0]
    assert plan.passed_over == 9  # 1010 ... 1090
    assert (plan.through, plan.next_due) == (1100.0, 1110.0)


def test_plan_none_runs_a_slot_only_within_its_grace(tick_job) -> None:
    schedule = ten_second(tick_job, catch_up="none")
    assert schedule.grace == 10.0  # a period, shorter than a minute
    late = schedule.plan(1000.0, 1105.0)  # 1100 is 5 s late: within grace
    assert (late.slots, late.passed_over) == ([1100.0], 9)
    missed = schedule.plan(1000.0, 1100.0 + 9.999)
    assert (missed.slots, missed.passed_over) == ([1100.0], 9)
    # Slots come every 10 s, so the latest is always within 10 s: a cron's grace is a minute.
    hourly = make_schedule(tick_job, "0 * * * *", name="hourly", catch_up="none")
    assert hourly.grace == 60.0
    gone = hourly.plan(utc(2024, 1, 1), utc(2024, 1, 1, 3, 1, 1))
    assert (gone.slots, gone.passed_over, gone.through) == ([], 3, utc(2024, 1, 1, 3))
    kept = hourly.plan(utc(2024, 1, 1), utc(2024, 1, 1, 3, 1))
    assert (kept.slots, kept.passed_over) == ([utc(2024, 1, 1, 3)], 2)


def test_plan_all_runs_the_last_catch_up_limit_slots_in_order(tick_job) -> None:
    schedule = ten_second(tick_job, catch_up="all", catch_up_limit=3)
    plan = schedule.plan(1000.0, 1100.0)
    assert plan.slots == [1080.0, 1090.0, 1100.0]
    assert plan.passed_over == 7
    few = schedule.plan(1000.0, 1020.0)
    assert (few.slots, few.passed_over) == ([1010.0, 1020.0], 0)
    default = ten_second(tick_job, catch_up="all")
    assert default.catch_up_limit == 100
    many = default.plan(0.0, 10_000.0)
    assert len(many.slots) == 100 and many.slots[-1] == 10_000.0
    assert many.passed_over == 900


@pytest.mark.parametrize("policy", ["latest", "none", "all"])
def test_an_outage_longer_than_a_tick_looks_at_still_finds_the_latest_slot(
    tick_job,
    policy: str,
) -> None:
    schedule = make_schedule(
        tick_job, every(seconds=1), name="s", catch_up=policy, catch_up_limit=5, max_running=None
    )
    missed = int(MAX_SLOTS_PER_TICK * 2.5)
    now = float(missed) + 0.5
    plan = schedule.plan(0.0, now)
    expected = {"latest": [missed], "none": [missed], "all": list(range(missed - 4, missed + 1))}
    assert plan.slots == [float(s) for s in expected[policy]]
    assert plan.through == float(missed)
    assert plan.next_due == float(missed + 1)
    # Beyond what one tick looks at, earliest slots are passed over uncounted (documented).
    assert MAX_SLOTS_PER_TICK <= plan.passed_over <= missed - len(plan.slots)


def test_jitter_is_deterministic_bounded_and_varies_by_slot(tick_job) -> None:
    schedule = make_schedule(tick_job, every(minutes=1), name="j", jitter=30)
    again = make_schedule(tick_job, every(minutes=1), name="j", jitter=timedelta(seconds=30))
    other = make_schedule(tick_job, every(minutes=1), name="k", jitter=30)
    slots = [60.0 * i for i in range(1, 201)]
    offsets = [schedule.due(s) - s for s in slots]
    assert all(0 <= o <= 30 for o in offsets)
    assert offsets == [again.due(s) - s for s in slots]  # every ticker computes the same
    assert len(set(offsets)) > 150  # differs across slots
    assert offsets != [other.due(s) - s for s in slots]  # and across schedules
    assert make_schedule(tick_job, every(minutes=1), name="z").due(60.0) == 60.0  # no jitter


def test_a_jittered_slot_is_due_at_its_offset(tick_job) -> None:
    schedule = make_schedule(tick_job, every(minutes=1), name="j", jitter=30)
    slot = 600.0
    due = schedule.due(slot)
    assert due > slot  # (this slot's offset is not 0)
    assert schedule.plan(590.0, due - 0.001).slots == []
    assert schedule.plan(590.0, due - 0.001).next_due == due
    assert schedule.plan(590.0, due).slots == [slot]


def test_a_later_slot_never_goes_before_an_earlier_one_not_yet_due(tick_job) -> None:
    # Slots at :00 and :01 of every hour, a jitter longer than the minute between them (a
    # cron's gaps vary, so this is allowed there, and documented).
    schedule = make_schedule(
        tick_job, "0,1 * * * *", name="j", jitter=110, catch_up="all", max_running=None
    )
    # Find an hour whose :00 slot is jittered later than its :01 slot: at a moment between
    # their due times, the later slot is due but must wait for the earlier.
    first, second = next(
        (s, s + 60)
        for s in (3600.0 * i for i in range(1, 1000))
        if schedule.due(s) > schedule.due(s + 60)
    )
    now = (schedule.due(second) + schedule.due(first)) / 2
    assert schedule.due(second) <= now < schedule.due(first)
    plan = schedule.plan(first - 60, now)
    assert plan.slots == []
    assert plan.next_due == schedule.due(first)
    assert schedule.plan(first - 10, schedule.due(first)).slots[:2] == [first, second]


# -- the decorator ---------------------------------------------------------------------------


def test_job_with_a_schedule_registers_it_by_name(app: App) -> None:
    @app.job("report", schedule=every(hours=1), max_running=2, catch_up="all", catch_up_limit=2)
    def report() -> None: ...

    @app.job(
        "cleanup",
        schedule="0 3 * * *",
        timezone="Europe/Paris",
        schedule_name="nightly-cleanup",
        schedule_kwargs={"days": 30},
        schedule_jitter=timedelta(minutes=1),
    )
    def cleanup(days: int) -> None: ...

    assert sorted(app.schedules) == ["nightly-cleanup", "report"]
    hourly = app.schedules["report"]
    assert hourly.job is report and hourly.trigger == Every(3600)
    assert (hourly.max_running, hourly.catch_up, hourly.catch_up_limit) == (2, "all", 2)
    nightly = app.schedules["nightly-cleanup"]
    assert nightly.job is cleanup and dict(nightly.kwargs) == {"days": 30}
    assert isinstance(nightly.trigger, Cron) and nightly.trigger.timezone.key == "Europe/Paris"
    assert nightly.jitter == 60.0
    built = nightly.build(slot_id(nightly.name, 0.0))
    assert (built.id, built.type) == ("periodic:nightly-cleanup:1970-01-01T00:00:00Z", "cleanup")
    assert built.payload["kwargs"] == {"days": 30}


def test_two_schedules_with_one_name_are_refused(app: App) -> None:
    @app.job("a", schedule=every(minutes=5))
    def a() -> None: ...

    with pytest.raises(ValueError, match=r"two schedules are named 'a'"):

        @app.job("b", schedule=every(minutes=5), schedule_name="a")
        def b() -> None: ...

    assert "b" not in app.jobs  # refused before anything was registered
    with pytest.raises(ValueError, match=r"two schedules are named 'a'"):
        app.add_schedule(a, every(hours=1))
    app.add_schedule(a, every(hours=1), name="a-hourly")
    assert sorted(app.schedules) == ["a", "a-hourly"]
    with pytest.raises(ValueError, match=r"two schedules are named 'a-hourly'"):
        app.add_schedule(a, "0 * * * *", name="a-hourly")


def test_add_schedule_needs_a_job_of_this_registry(app: App) -> None:
    other = App(mode="inprocess", name="other")

    @other.job("foreign")
    def foreign() -> None: ...

    with pytest.raises(ValueError, match=r"is not a job of this registry"):
        app.add_schedule(foreign, every(minutes=1))
    assert app.schedules == {}


@pytest.mark.parametrize(
    "option",
    [
        {"timezone": "UTC"},
        {"schedule_name": "x"},
        {"schedule_kwargs": {"n": 1}},
        {"schedule_jitter": 5},
    ],
)
def test_schedule_options_without_a_schedule_are_refused(app: App, option: dict) -> None:
    with pytest.raises(ValueError, match=rf"{next(iter(option))} needs schedule="):

        @app.job("lonely", **option)
        def lonely(n: int = 0) -> None: ...

    assert "lonely" not in app.jobs


def test_schedule_kwargs_must_fit_the_signature(app: App) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'zzz'"):

        @app.job("k", schedule=every(minutes=1), schedule_kwargs={"zzz": 1})
        def k(n: int = 0) -> None: ...

    with pytest.raises(TypeError):

        @app.job("k2", schedule=every(minutes=1))  # ``n`` is required, and never given
        def k2(n: int) -> None: ...

    assert "k" not in app.jobs and "k2" not in app.jobs and app.schedules == {}


def test_schedule_kwargs_must_be_json(app: App) -> None:
    with pytest.raises(InvalidJob, match=r"argument 'when' of job 'j' is not JSON-serializable"):

        @app.job("j", schedule=every(minutes=1), schedule_kwargs={"when": datetime.now(UTC)})
        def j(when: object) -> None: ...

    assert issubclass(InvalidJob, ValueError)
    assert app.schedules == {}


def test_a_time_zone_with_every_is_refused(app: App) -> None:
    with pytest.raises(ValueError, match=r"schedule 'e': timezone applies to cron expressions"):

        @app.job("e", schedule=every(minutes=5), timezone="Europe/Paris")
        def e() -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": 5}, "schedule= takes a cron string or every(...), got 5"),
        ({"schedule": "* * * * *", "catch_up": "some"}, "catch_up must be one of"),
        ({"schedule": "* * * * *", "catch_up_limit": 0}, "catch_up_limit must be an int >= 1"),
        ({"schedule": "* * * * *", "max_running": 0}, "max_running must be an int >= 1"),
        ({"schedule": "* * * * *", "max_running": True}, "max_running must be an int >= 1"),
        ({"schedule": "* * * * *", "schedule_jitter": -1}, "jitter must be a number"),
        ({"schedule": "* * * * *", "schedule_name": "a b"}, "schedule_name must be"),
        ({"schedule": "* * * * *", "schedule_name": "x" * 161}, "at most 160 characters"),
    ],
)
def test_bad_schedule_options_are_refused_naming_them(
    app: App, options: dict, message: str
) -> None:
    with pytest.raises(ValueError) as caught:

        @app.job("bad", **options)
        def bad() -> None: ...

    assert message in str(caught.value)
    assert "bad" not in app.jobs and app.schedules == {}


def test_every_and_schedule_are_exported() -> None:
    assert csjd_core.every is every
    assert csjd_core.Schedule is Schedule
    assert {"every", "Schedule", "ScheduleState"} <= set(csjd_core.__all__)
