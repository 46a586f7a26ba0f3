"""Several ``csjd worker`` processes ticking one every-second schedule, two of them SIGKILLed
mid-run (RELIABILITY.md, second wave: "several processes ticking one schedule; some kill -9'd:
each slot enqueued once; none missed within the horizon").

The schedule uses ``catch_up="all"`` and no ``max_running``, so a slot may be absent for no
reason the contract allows: a stall of every ticker is caught up, a run left on a killed worker
does not skip the next slot. What is counted, per slot between the first and the last enqueued:
the job records in Redis (one per slot), the mark's ``enqueued`` counter (one increment per
admission: a second admission of a slot would show), every ticker's "enqueued" log line (at
most one per slot, across the fleet), and the runs (one per slot; a run repeated only for a
slot a killed process had started, the at-least-once rule for jobs in flight at a kill).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from periodic_support import STARTUP, Fleet, gaps, mark, redis_time, slot_records, slot_time

from csjd_core.testing import wait_until

WORKER_THREADS = 2  # schedapp's workers per process: the runs a SIGKILL can leave half done


@pytest.mark.soak  # the default tier's fleet tests: test_schedule_workers.py
@pytest.mark.timeout(240)
@pytest.mark.parametrize("seconds", [pytest.param(8, id="8s"), pytest.param(30, id="30s")])
def test_fleet_enqueues_and_runs_each_slot_once_through_kills(
    fleets: Callable[..., Fleet], redis_client: Any, redis_url: str, seconds: int
) -> None:
    fleet = fleets(redis_url, CSJD_SCHED_CATCH_UP="all")
    procs = [fleet.worker() for _ in range(3)]
    for proc in procs:
        proc.wait_for(lambda p=proc: "ticking schedules names=tick" in p.err(), what="ticking")
    half = seconds // 2

    # Phase 1: all three tick, for half the slots.
    wait_until(
        lambda: len(slot_records(redis_client)) >= half,
        timeout=half + STARTUP,
        message=lambda: f"{half} slots not enqueued; seen {slot_records(redis_client)}",
    )
    assert all(proc.alive() for proc in procs)
    killed, survivor = procs[:2], procs[2]
    for proc in killed:
        proc.kill()
    killed_at = redis_time(redis_client)
    killed_pids = {proc.pid for proc in killed}

    # Phase 2: the survivor alone, for the other half (slots due after the kill).
    def after_kill() -> list[str]:
        return [j for j in slot_records(redis_client) if slot_time(j) > killed_at]

    survivor.wait_for(
        lambda: len(after_kill()) >= half, timeout=half + STARTUP, what=f"{half} slots after kill"
    )
    seen = records = slot_records(redis_client)
    # Every slot recorded has run (a run left on a killed worker is reclaimed after the lease).
    survivor.wait_for(
        lambda: set(records) <= set(fleet.ran()), timeout=STARTUP, what="every slot run"
    )
    assert survivor.terminate() == 0, survivor.err()

    records = slot_records(redis_client)
    slots = [slot_time(j) for j in records]
    state = mark(redis_client, "tick")
    logged = fleet.enqueued()
    ran = fleet.ran()
    first_run_by = {}
    for job_id, pid in fleet.runs():
        first_run_by.setdefault(job_id, pid)
    repeated = {j: n for j, n in ran.items() if n > 1}
    winners = {proc.name: len(proc.enqueued()) for proc in procs}
    print(
        f"\nfleet {seconds}s: slots {len(records)} from {records[0]} to {records[-1]} "
        f"(expected {slots[-1] - slots[0] + 1}); gaps {gaps(slots)}; mark enqueued "
        f"{state.get('enqueued')} misfires {state.get('misfires')} duplicates "
        f"{state.get('duplicates', '0')} overlaps {state.get('overlaps', '0')}; "
        f"logged by ticker {winners} (twice: {[j for j, n in logged.items() if n > 1]}); "
        f"after the kill {len(after_kill())}; runs {sum(ran.values())} of {len(ran)} ids, "
        f"repeated {repeated}"
    )

    # Enqueued: every slot between the first and the last, once.
    assert gaps(slots) == []
    assert int(state["enqueued"]) == len(records)  # no slot admitted twice
    assert int(state.get("duplicates", 0)) == 0  # no ticker even reached the id check late
    assert int(state.get("misfires", 0)) == 0
    assert all(n == 1 for n in logged.values()), logged
    assert set(logged) <= set(records)
    # The fleet covered the whole run, and the survivor everything after the kill.
    assert len(records) >= 2 * half
    assert state["mark"] == str(slots[-1])
    survivor_slots = set(survivor.enqueued())
    late = [j for j in records if slot_time(j) > killed_at + 1]  # past any tick under way
    assert set(late) <= survivor_slots, f"after the kill, not from the survivor: {late}"
    # Ran: every slot, once; a repeat only for a slot a killed process had started.
    # A slot enqueued between the last look and the SIGTERM may be left queued (the ticker
    # stops first, then the workers stop fetching): at most one, and it stays in Redis.
    assert set(seen) <= set(ran) <= set(records)
    assert len(set(records) - set(ran)) <= 1
    assert all(first_run_by[j] in killed_pids for j in repeated), (repeated, first_run_by)
    assert sum(n - 1 for n in repeated.values()) <= len(killed) * WORKER_THREADS
