"""Tickers (`csjd_core.engine.ticker.Ticker`) over real dispatchers: memory, the file store and
Redis (the suite's server). Tests drive ``ticker.tick(now)`` with fake times (no thread, no
sleep) and count what was enqueued by id; jobs run only where a test starts a dispatcher to run
them.
The last test runs a dispatcher started with its schedules: its own ticker thread on the real
clock, and the outcome hook writing each run's outcome to the mark."""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csjd_core import (
    App,
    Config,
    Dispatcher,
    DispatcherClosed,
    FileJobStore,
    JobNotFound,
    JobState,
    every,
)
from csjd_core.backends.base import SlotOp
from csjd_core.backends.redis import QueueKeys
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.engine.dispatcher import BaseDispatcher
from csjd_core.engine.ticker import Ticker
from csjd_core.periodic import Schedule, slot_id
from csjd_core.stats import ScheduleState
from csjd_core.testing import wait_until

KINDS = ["file", "memory", "redis"]
BASE = 1_699_999_800.0  # a fake "now": a multiple of 5 minutes, in the past
DEADLINE = 15.0


class Rig:
    """One test's app (handlers, schedules), dispatchers on one backend, and what ran."""

    def __init__(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.kind = kind
        self.request = request
        self.tmp_path = tmp_path
        self.app = App(mode="inprocess", name=f"ticker-{kind}")
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.dispatchers: list[BaseDispatcher] = []
        self.store: FileJobStore | None = None
        if kind == "redis":
            request.getfixturevalue("redis_client")  # flushed
            self.url = request.getfixturevalue("redis_url")

        @self.app.job("work", takes_context=True)
        def work(ctx: Any) -> None:
            self.ran.append(ctx.job_id)
            assert self.gate.wait(DEADLINE)

        self.work = work

    def schedule(self, trigger: Any = None, **options: Any) -> Schedule:
        options.setdefault("max_running", None)
        return self.app.add_schedule(
            self.work, trigger if trigger is not None else every(seconds=1), **options
        )

    def dispatcher(self, **overrides: Any) -> BaseDispatcher:
        """A dispatcher on this rig's backend (one file store: a second call shares it)."""
        made: BaseDispatcher
        schedules = overrides.pop("schedules", None)
        if self.kind == "redis":
            config = DistributedConfig(
                workers=2, block=0.2, lease=5.0, heartbeat_interval=0.5, **overrides
            )
            made = RedisDistributedDispatcher(
                RedisConfig.from_url(self.url),
                config,
                registry=self.app.registry,
                schedules=schedules,
            )
        else:
            if self.dispatchers:  # one process's backend: its tickers share its dispatcher
                return self.dispatchers[0]
            store = None
            if self.kind == "file":
                store = self.store = FileJobStore(self.tmp_path / "jobs.json", fsync="never")
            made = Dispatcher(
                Config(workers=2, store=store, **overrides),
                registry=self.app.registry,
                schedules=schedules,
            )
        self.dispatchers.append(made)
        return made

    def exists(self, job_id: str) -> bool:
        try:
            self.dispatchers[0].status(job_id)
        except JobNotFound:
            return False
        return True

    def accepted(self) -> int:
        """Jobs admitted by all of this rig's dispatchers (a refused slot is not counted)."""
        return sum(d.metrics().accepted for d in {id(d): d for d in self.dispatchers}.values())

    def stream_ids(self) -> Counter[str]:
        """Redis: how many times each id was added to the default queue's stream."""
        client = self.request.getfixturevalue("redis_client")
        entries = client.xrange(QueueKeys("csjd:jobs", "default").stream)
        return Counter(fields[b"id"].decode() for _, fields in entries)

    def close(self) -> None:
        self.gate.set()
        for dispatcher in {id(d): d for d in self.dispatchers}.values():
            dispatcher.stop(timeout=5.0)


@pytest.fixture(params=KINDS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(request.param, request, tmp_path)
    try:
        yield made
    finally:
        made.close()


def state_of(dispatcher: BaseDispatcher, schedule: Schedule) -> ScheduleState:
    state = dispatcher.schedule_state(schedule.name, schedule.queue)
    assert state is not None
    return state


def ids(schedule: Schedule, slots: Any) -> list[str]:
    return [slot_id(schedule.name, float(s)) for s in slots]


def job_state(dispatcher: BaseDispatcher, job_id: str) -> JobState | None:
    try:
        return dispatcher.status(job_id).state
    except JobNotFound:
        return None


def wait_for(condition: Callable[[], Any], what: str) -> None:
    wait_until(condition, DEADLINE, message=what)


# -- many tickers, one backend ---------------------------------------------------------------


def test_interleaved_tickers_enqueue_each_slot_exactly_once(rig: Rig) -> None:
    schedule = rig.schedule(every(seconds=1), catch_up="all")
    count = 3 if rig.kind == "redis" else 2  # the file store: two tickers, one dispatcher
    tickers = [Ticker(rig.app.schedules, rig.dispatcher()) for _ in range(count)]
    rng = random.Random(7)
    # Every ticker looks at every fake moment of 60 s, in a shuffled order, some of them late
    # (a ticker whose clock lags sees a mark ahead of its time).
    moments = [(t, n) for t in range(61) for n in range(count)]
    order = sorted(moments, key=lambda m: m[0] + rng.uniform(-2.5, 2.5))
    verdicts = Counter[str]()
    for second, n in order:
        tickers[n].tick(BASE + second + 0.25)
    for ticker in tickers:
        verdicts["enqueued"] += ticker.counters.enqueued
        verdicts["refused"] += ticker.counters.refused
        assert ticker.counters.errors == 0
    state = state_of(rig.dispatchers[0], schedule)
    last = int(state.mark) - int(BASE)  # type: ignore[arg-type]
    assert 55 <= last <= 60  # the fake clocks reached the end (the first INIT: a few s in)
    first = next(s for s in range(1, 61) if rig.exists(slot_id(schedule.name, BASE + s)))
    expected = ids(schedule, range(int(BASE) + first, int(BASE) + last + 1))
    assert all(rig.exists(job_id) for job_id in expected)
    assert rig.accepted() == len(expected) == state.enqueued == verdicts["enqueued"]
    assert (state.duplicates, state.overlaps, state.misfires) == (0, 0, 0)
    if rig.kind == "redis":
        assert rig.stream_ids() == Counter(expected)


# -- outages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "caught_up"),
    [("latest", [12]), ("none", []), ("all", [8, 9, 10, 11, 12])],
)
def test_an_outage_longer_than_the_dedupe_window_never_runs_a_slot_twice(
    rig: Rig, policy: str, caught_up: list[int]
) -> None:
    # Slots every 5 minutes, run by a started dispatcher; then every record of them is gone
    # (Redis: dedupe_window 0, the records deleted as their expiry would) and the clock is an
    # hour later: 12 slots were missed, the latest 61 s late (beyond catch_up="none"'s grace).
    period = 300
    schedule = rig.schedule(every(minutes=5), catch_up=policy, catch_up_limit=5)
    overrides: dict[str, Any] = {"result_ttl": 1.0}
    if rig.kind == "redis":
        overrides["dedupe_window"] = 0.0
    dispatcher = rig.dispatcher(**overrides)
    dispatcher.start()
    ticker = Ticker(rig.app.schedules, dispatcher)
    ticker.tick(BASE)  # INIT
    before = ids(schedule, (BASE + period * n for n in (1, 2, 3)))
    for n, job_id in enumerate(before, 1):
        ticker.tick(BASE + period * n)
        wait_for(lambda i=job_id: job_state(dispatcher, i) is JobState.SUCCEEDED, f"{job_id} ran")
    assert rig.ran == before
    if rig.kind == "redis":
        client = rig.request.getfixturevalue("redis_client")
        k = QueueKeys("csjd:jobs", "default")
        client.delete(*(k.job(i) for i in before))
        for job_id in before:  # without the mark, nothing would stop these ids now
            assert not rig.exists(job_id)

    # A new ticker (a restarted fleet) an hour later, and another one lagging behind it.
    outage_end = BASE + 3 * period
    later = Ticker(rig.app.schedules, dispatcher)
    later.tick(outage_end + 12 * period + 61)
    Ticker(rig.app.schedules, dispatcher).tick(outage_end + 12 * period - 30)
    expected = ids(schedule, (outage_end + period * n for n in caught_up))
    for job_id in expected:
        wait_for(lambda i=job_id: job_state(dispatcher, i) is JobState.SUCCEEDED, f"{job_id} ran")
    assert Counter(rig.ran) == Counter(before + expected)
    state = state_of(dispatcher, schedule)
    assert state.mark == outage_end + 12 * period
    assert state.enqueued == len(before) + len(expected)
    assert state.misfires == later.counters.misfires == 12 - len(expected)
    assert rig.accepted() == len(before) + len(expected)


# -- overlap, pause, run now -----------------------------------------------------------------


def test_a_slow_run_makes_the_next_slots_overlaps(rig: Rig) -> None:
    schedule = rig.schedule(every(seconds=1), max_running=1)
    dispatcher = rig.dispatcher()
    dispatcher.start()
    ticker = Ticker(rig.app.schedules, dispatcher)
    rig.gate.clear()
    ticker.tick(BASE)  # INIT
    ticker.tick(BASE + 1)
    slow = slot_id(schedule.name, BASE + 1)
    wait_for(lambda: rig.ran == [slow], "the slow run started")
    for second in (2, 3, 4):
        ticker.tick(BASE + second)
    assert ticker.counters.overlaps == 3
    state = state_of(dispatcher, schedule)
    assert (state.mark, state.overlaps, state.enqueued, state.running) == (
        BASE + 4,
        3,
        1,
        (slow,),
    )
    rig.gate.set()
    wait_for(lambda: dispatcher.join(DEADLINE), "the slow run finished")
    ticker.tick(BASE + 5)
    wait_for(lambda: len(rig.ran) == 2, "the next slot ran")
    assert rig.ran == [slow, slot_id(schedule.name, BASE + 5)]
    for second in (2, 3, 4):
        assert not rig.exists(slot_id(schedule.name, BASE + second))
    assert rig.accepted() == 2


def test_slots_due_while_paused_are_skipped_even_if_no_ticker_ran(rig: Rig) -> None:
    schedule = rig.schedule(every(seconds=1), catch_up="all", catch_up_limit=100)
    dispatcher = rig.dispatcher()
    ticker = Ticker(rig.app.schedules, dispatcher)
    # Resuming accounts for the paused time by the dispatcher's clock, the real one: fake times
    # start an hour before it.
    base = float(int(dispatcher.clock())) - 3600
    for second in range(6):
        ticker.tick(base + second)
    assert ticker.counters.enqueued == 5
    dispatcher.set_schedule_paused(schedule, True)
    assert state_of(dispatcher, schedule).paused
    for second in range(6, 9):  # a ticker runs while paused: each slot recorded as skipped
        ticker.tick(base + second)
    assert ticker.counters.paused == 3
    # Then no ticker runs for the rest of the hour; the schedule is resumed now.
    dispatcher.set_schedule_paused(schedule, False)
    state = state_of(dispatcher, schedule)
    assert not state.paused
    resumed = state.mark
    assert resumed is not None and resumed >= base + 3600
    # The 3 slots the ticker skipped, and every slot after them up to now, counted by resume.
    skipped = 3 + int(resumed - (base + 8))
    assert (state.paused_skips, state.enqueued, state.misfires) == (skipped, 5, 0)
    ticker.tick(resumed + 0.5)
    assert rig.accepted() == 5  # none of the paused hour's slots, though catch_up="all"
    ticker.tick(resumed + 1)
    assert rig.accepted() == 6
    assert rig.exists(slot_id(schedule.name, resumed + 1))
    for second in range(6, 3600):
        assert not rig.exists(slot_id(schedule.name, base + second)), second


def test_run_now_counts_as_running_for_max_running(rig: Rig) -> None:
    schedule = rig.schedule(every(seconds=1), max_running=1)
    dispatcher = rig.dispatcher()  # not started: runs stay unfinished
    ticker = Ticker(rig.app.schedules, dispatcher)
    ticker.tick(BASE)
    manual = dispatcher.run_now(schedule)
    assert manual.startswith(f"periodic:{schedule.name}:manual-")
    assert dispatcher.status(manual).state is JobState.QUEUED
    ticker.tick(BASE + 1)
    assert ticker.counters.overlaps == 1
    again = dispatcher.run_now(schedule)  # run now is not limited by max_running
    assert again != manual
    state = state_of(dispatcher, schedule)
    assert (state.mark, state.manual, state.enqueued, state.overlaps) == (BASE + 1, 2, 0, 1)
    assert state.last_enqueued == again
    assert rig.accepted() == 2
    # Paused: slots are skipped, run now still enqueues.
    dispatcher.set_schedule_paused(schedule, True)
    dispatcher.run_now(schedule)
    assert state_of(dispatcher, schedule).manual == 3
    assert rig.accepted() == 3


# -- the outcome hook ------------------------------------------------------------------------


def test_a_started_dispatcher_ticks_and_records_each_runs_outcome(rig: Rig) -> None:
    @rig.app.job("flaky", max_attempts=1)
    def flaky(fail: bool) -> None:
        if fail:
            raise RuntimeError("flaky failed")

    good = rig.schedule(every(seconds=1), name="every-second")
    bad = rig.app.add_schedule(
        flaky, every(seconds=1), name="failing", kwargs={"fail": True}, max_running=None
    )
    yearly = rig.schedule("0 0 1 1 *", name="yearly")
    dispatcher = rig.dispatcher(schedules=rig.app.schedules)
    assert dispatcher.ticker is not None
    dispatcher.start()

    def outcome(schedule: Schedule) -> str | None:
        state = dispatcher.schedule_state(schedule.name, schedule.queue)
        return None if state is None else state.last_outcome

    wait_for(lambda: outcome(good) == "succeeded", "a run of every-second succeeded")
    wait_for(lambda: outcome(bad) == "failed", "a run of failing failed")
    state = state_of(dispatcher, good)
    assert state.last_outcome_id in rig.ran
    assert state.last_outcome_id.startswith("periodic:every-second:")  # type: ignore[union-attr]
    assert state.last_outcome_at is not None and state.enqueued >= 1
    failed = state_of(dispatcher, bad)
    assert failed.last_outcome_id.startswith("periodic:failing:")  # type: ignore[union-attr]
    assert dispatcher.status(failed.last_outcome_id).state is JobState.FAILED  # type: ignore[arg-type]
    # Run now goes through the same hook (a yearly schedule: no slot overwrites its outcome).
    manual = dispatcher.run_now(yearly)
    wait_for(lambda: state_of(dispatcher, yearly).last_outcome_id == manual, "run now's outcome")
    assert state_of(dispatcher, yearly).last_outcome == "succeeded"
    dispatcher.stop(timeout=5.0)
    assert dispatcher.ticker.counters.errors == 0


def test_a_schedule_that_fails_is_logged_once_and_the_others_keep_ticking(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App()

    @app.job("healthy")
    def healthy() -> None:
        return None

    @app.job("broken")
    def broken() -> None:
        return None

    good = app.add_schedule(healthy, every(seconds=1), max_running=None)  # nothing runs here
    bad = app.add_schedule(broken, every(seconds=1))

    def build_job(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in building the job")

    monkeypatch.setattr(broken, "build_job", build_job)  # the bug, injected
    dispatcher = Dispatcher(Config(), registry=app.registry)
    ticker = Ticker({bad.name: bad, good.name: good}, dispatcher)  # the broken one first
    try:
        with caplog.at_level(logging.WARNING, logger="csjd_core.periodic"):
            for second in range(6):
                ticker.tick(BASE + second)
        enqueued = [slot_id(good.name, BASE + s) for s in range(1, 6)]
        assert all(dispatcher.status(job_id) for job_id in enqueued)
        assert ticker.counters.enqueued == 5
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 1  # once, with its traceback, not once a tick
        assert failures[0].exc_info is not None and "broken" in failures[0].getMessage()
        assert ticker.counters.errors == 5
    finally:
        dispatcher.stop(5)


def test_a_mark_that_is_not_a_number_is_started_afresh(redis_client: Any, redis_url: str) -> None:
    app = App()

    @app.job("tick")
    def tick() -> None:
        return None

    app.add_schedule(tick, every(seconds=1), max_running=None)
    config = DistributedConfig(dedupe_window=0)
    dispatcher = RedisDistributedDispatcher(RedisConfig(url=redis_url), config)
    key = QueueKeys(config.stream, "default").schedule("tick")
    redis_client.hset(key, mapping={"mark": "garbage", "enqueued": 3})
    ticker = Ticker(app.schedules, dispatcher)
    try:
        ticker.tick(BASE)  # the mark is read as none: a first sight
        ticker.tick(BASE + 1)
        state = dispatcher.schedule_state("tick")
        assert state is not None and (state.mark, state.enqueued) == (BASE + 1, 4)
        assert dispatcher.status(slot_id("tick", BASE + 1)).state is JobState.QUEUED
        assert ticker.counters.errors == 0
    finally:
        dispatcher.stop(5)


def test_steps_after_stop_are_refused() -> None:
    app = App()

    @app.job("tick")
    def tick() -> None:
        return None

    schedule = app.add_schedule(tick, every(seconds=1))
    dispatcher = Dispatcher(Config(), registry=app.registry)
    dispatcher.admit_slot(schedule, SlotOp.INIT, BASE)
    dispatcher.stop(5)
    for op in (SlotOp.INIT, SlotOp.SKIP, SlotOp.SLOT):
        with pytest.raises(DispatcherClosed):
            dispatcher.admit_slot(schedule, op, BASE + 10)
