"""In-process mode with a `FileJobStore`: the process holding the store ticks, and the mark
is a log record written with the slot's job. SIGKILLed and started again twice: no slot is
enqueued twice across the restarts (the mark comes back from the log), every enqueued slot
runs, and each gap is handled by ``catch_up="latest"``: the slots missed while no process
ran are passed over and counted, the latest due one enqueued once."""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from periodic_support import HERE, STARTUP, Fleet, Proc, gaps, slot_time

from csjd_core import Config, Dispatcher, FileJobStore
from csjd_core.testing import wait_until

ENQUEUED = re.compile(r"schedule enqueued name=tick id=(\S+)")
MISSED = re.compile(r"schedule slots missed while no ticker ran name=tick not_enqueued=(\d+)")
LIVES = 2  # the first start and a restart after a kill (the second life is killed too)
DOWN = 2.5  # seconds between a kill and the restart: at least two slots with nobody ticking


@pytest.mark.timeout(180)
def test_file_store_ticker_killed_and_restarted_enqueues_each_slot_once(
    fleets: Callable[..., Fleet], tmp_path: Path
) -> None:
    fleet = fleets("redis://unused")  # only its environment and its processes' cleanup
    store, runs = tmp_path / "jobs.wal", tmp_path / "runs.log"
    lives: list[Proc] = []

    def ran() -> Counter[str]:
        if not runs.exists():
            return Counter()
        return Counter(line.split()[0] for line in runs.read_text().splitlines() if line)

    for life in range(LIVES):
        ready = tmp_path / f"ready{life}"
        proc = fleet.start(
            [sys.executable, str(HERE / "store_ticker.py"), str(store), str(runs), str(ready)],
            name=f"life{life}",
        )
        lives.append(proc)
        proc.wait_for(ready.exists, what="the app started")
        had = len(ran())
        proc.wait_for(lambda h=had: len(ran()) >= h + 3, what="3 runs in this life")
        proc.kill()
        if life < LIVES - 1:  # the outage: nobody ticks for a few slots (this is the fault)
            killed = time.monotonic()
            wait_until(lambda k=killed: time.monotonic() >= k + DOWN, timeout=DOWN + 1)

    # The store read back in this process: the slots the last life enqueued but did not run
    # are recovered and run here (no schedules: this dispatcher does not tick).
    reader = Dispatcher(Config(store=FileJobStore(store)))
    reader.register_handler("tick", lambda ctx, job: _append(runs, f"{job.id} reader"))
    try:
        reader.start()
        assert reader.join(STARTUP)
        state = reader.schedule_state("tick")
    finally:
        reader.stop(timeout=5)
    assert state is not None

    logged = Counter(j for p in lives for j in ENQUEUED.findall(p.err()))
    passed_over = [[int(n) for n in MISSED.findall(p.err())] for p in lives]
    done = ran()
    slots = sorted({slot_time(j) for j in done})
    missed = gaps(slots)
    print(
        f"\nfile store: {LIVES} lives, slots {len(slots)} from {slots[0]} to {slots[-1]}; "
        f"missed {missed}; misfires logged per life {passed_over}; mark enqueued "
        f"{state.enqueued} misfires {state.misfires} duplicates {state.duplicates} mark "
        f"{state.mark:.0f}; logged twice {[j for j, n in logged.items() if n > 1]}; runs "
        f"{sum(done.values())} of {len(done)} ids (repeated "
        f"{ {j: n for j, n in done.items() if n > 1} }); run by the reader "
        f"{[line for line in runs.read_text().splitlines() if line.endswith(' reader')]}"
    )
    # No slot enqueued twice: by the tickers' logs, and by the mark's count against the slots.
    assert all(n == 1 for n in logged.values()), logged
    assert state.enqueued == len(slots)
    assert state.duplicates == 0
    assert state.mark == slots[-1]
    # Each restart: a hole of slots nobody ticked, passed over by the restarted ticker's first
    # tick and counted once; the latest due slot enqueued.
    assert passed_over[0] == []
    assert all(len(p) == 1 and p[0] >= 1 for p in passed_over[1:]), passed_over
    assert len(missed) == state.misfires == sum(map(sum, passed_over))
    # Every slot enqueued ran (a run killed midway is recovered and runs again: at most the
    # two workers' worth per kill).
    assert set(logged) <= set(done)
    assert sum(n - 1 for n in done.values()) <= 2 * LIVES


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")
