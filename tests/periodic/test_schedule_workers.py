"""What one ``csjd worker`` process ticks: judged by Redis ``TIME``, not its host's clock, and
nothing at all under ``--no-schedule``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from periodic_support import (
    STARTUP,
    Fleet,
    enqueued_at,
    mark,
    redis_time,
    slot_records,
    slot_time,
)

from csjd_core import Job
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.distributed import RedisDistributedDispatcher
from csjd_core.testing import wait_until

HOUR = 3600


def test_a_worker_whose_host_clock_is_an_hour_fast_enqueues_no_slot_early(
    fleets: Callable[..., Fleet], redis_client: Any, redis_url: str
) -> None:
    # Were the host clock used, the fast worker would see the slots of the next hour as due:
    # the latest of them (catch_up="latest") enqueued at once, an hour before its time, and
    # the mark moved an hour ahead; the hourly schedule's next slot enqueued too.
    fleet = fleets(redis_url, CSJD_SCHED_HOURLY="1")
    normal = fleet.worker()
    normal.wait_for(lambda: mark(redis_client, "hourly"), what="hourly's mark initialised")
    normal.wait_for(lambda: mark(redis_client, "tick"), what="tick's mark initialised")
    assert normal.terminate() == 0, normal.err()
    hourly_mark = int(mark(redis_client, "hourly")["mark"])
    before = set(slot_records(redis_client))

    fast = fleet.worker(fast_by=HOUR)
    fast.wait_for(lambda: len(fast.enqueued()) >= 4, what="4 slots enqueued by the fast worker")
    assert fast.terminate() == 0, fast.err()
    ended = redis_time(redis_client)

    mine = sorted(set(slot_records(redis_client)) - before)
    late_by = {j: round(enqueued_at(redis_client, j) - slot_time(j), 3) for j in mine}
    hourly = slot_records(redis_client, "hourly")
    print(
        f"\nfast clock: {len(mine)} slots by the fast worker, enqueued this late (s) "
        f"{late_by}; tick mark {mark(redis_client, 'tick')['mark']} vs Redis TIME {ended:.0f}; "
        f"hourly slots {hourly}"
    )
    assert set(fast.enqueued()) == set(mine)  # the fast worker ran alone: these are its
    assert len(mine) >= 4
    assert all(late >= 0 for late in late_by.values()), late_by  # none before its time
    assert all(late < 60 for late in late_by.values()), late_by  # ... nor an hour after it
    assert int(mark(redis_client, "tick")["mark"]) <= ended
    # The hourly slot is enqueued only if an hour began (by Redis TIME) during the test.
    expected_hourly = [
        f"periodic:hourly:{s}" for s in range(hourly_mark + HOUR, int(ended) + 1, HOUR)
    ]
    assert [slot_time(j) for j in hourly] == [slot_time(j) for j in expected_hourly]
    assert int(mark(redis_client, "hourly")["mark"]) <= ended


def test_no_schedule_worker_consumes_and_enqueues_nothing(
    fleets: Callable[..., Fleet], redis_client: Any, redis_url: str
) -> None:
    fleet = fleets(redis_url)
    quiet = fleet.worker("--no-schedule")
    quiet.wait_for(lambda: "schedules=off (--no-schedule)" in quiet.err(), what="the banner")
    started = redis_time(redis_client)
    producer = RedisDistributedDispatcher(
        RedisConfig.from_url(redis_url), DistributedConfig(queues=("default",))
    )
    try:
        producer.submit(Job("by-hand-1", "tick", {"args": [], "kwargs": {}}))
    finally:
        producer.close()
    quiet.wait_for(fleet.runs, what="by-hand-1 run")
    # Three slots' worth of time by Redis TIME (a ticker would have enqueued two or three).
    quiet.wait_for(lambda: redis_time(redis_client) >= started + 3, what="three seconds")
    print(f"\n--no-schedule: runs {dict(fleet.ran())}, slot records {slot_records(redis_client)}")
    assert [job_id for job_id, _ in fleet.runs()] == ["by-hand-1"]
    assert slot_records(redis_client) == []
    assert mark(redis_client, "tick") == {}
    assert "ticking schedules" not in quiet.err()
    assert quiet.enqueued() == []

    # The same set-up without the flag ticks within a few seconds: the checks above can fail.
    ticking = fleet.worker()
    ticking.wait_for(lambda: slot_records(redis_client), timeout=STARTUP, what="a slot")
    wait_until(fleet.ran, timeout=STARTUP)
    assert int(mark(redis_client, "tick")["enqueued"]) >= 1
    assert quiet.enqueued() == []  # the slots are the ticking worker's
    assert quiet.terminate() == 0
    assert ticking.terminate() == 0


def test_supervised_children_tick_and_their_supervisor_does_not(
    fleets: Callable[..., Fleet], redis_client: Any, redis_url: str
) -> None:
    fleet = fleets(redis_url)
    supervisor = fleet.worker("--processes", "2")
    # The children write to the supervisor's standard error: two tickers there, not three.
    supervisor.wait_for(
        lambda: supervisor.err().count("ticking schedules names=tick") >= 2, what="2 tickers"
    )
    supervisor.wait_for(lambda: len(slot_records(redis_client)) >= 4, what="4 slots")
    records = slot_records(redis_client)
    supervisor.wait_for(lambda: set(records) <= set(fleet.ran()), what="every slot run")
    assert supervisor.terminate() == 0, supervisor.err()
    records = slot_records(redis_client)
    state = mark(redis_client, "tick")
    print(
        f"\n--processes 2: slots {len(records)}; mark enqueued {state['enqueued']}; logged "
        f"{dict(fleet.enqueued())}; runs {dict(fleet.ran())}"
    )
    assert supervisor.err().count("ticking schedules names=tick") == 2
    assert int(state["enqueued"]) == len(records)
    assert all(n == 1 for n in fleet.enqueued().values())
    assert set(fleet.enqueued()) == set(records)
    assert all(n == 1 for n in fleet.ran().values())
