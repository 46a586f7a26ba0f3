"""The schedule part of the backend seam (`Backend.admit_slot`, `schedule_state`, `set_paused`,
`record_outcome`): one contract over memory, the file store and Redis, with the factories of
`test_backend_contract`. Each test counts the jobs a step admitted (``pending``, ``status``),
not only the verdicts. Then what only the file store promises: marks survive close, reopen,
compaction and a SIGKILL, written in one log write with the job they admit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_backend_contract import CAP, FACTORIES, SETTINGS, fetch

from csjd_core import DuplicateJob, Job, JobState, QueueFull
from csjd_core.backends.base import Backend, SlotOp, SlotRequest, SlotVerdict
from csjd_core.backends.file import FileJobStore
from csjd_core.periodic import manual_id, slot_id
from csjd_core.stats import ScheduleState

NAME = "sched"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    instance = FACTORIES[request.param](request)
    assert instance.open(SETTINGS) == 0
    try:
        yield instance
    finally:
        instance.wake()
        instance.close(clean=True)


def request_for(
    op: SlotOp,
    slot: float,
    *,
    max_running: int = 0,
    misfired: int = 0,
    after: float | None = None,
    name: str = NAME,
) -> SlotRequest:
    job = None
    if op is SlotOp.SLOT:
        job = Job(slot_id(name, slot), "t", {"args": [], "kwargs": {}})
    elif op is SlotOp.MANUAL:
        job = Job(manual_id(name), "t", {"args": [], "kwargs": {}})
    return SlotRequest(
        op, name, None, slot, job, max_running=max_running, misfired=misfired, after=after
    )


def admit(backend: Backend, op: SlotOp, slot: float, **options: Any) -> SlotVerdict:
    """One step, planned (as a ticker plans) from the mark as it is now."""
    if "after" not in options:
        state = backend.schedule_state(options.get("name", NAME), None)
        options["after"] = None if state is None else state.mark
    return backend.admit_slot(request_for(op, slot, **options))


def mark_of(backend: Backend, name: str = NAME) -> ScheduleState:
    state = backend.schedule_state(name, None)
    assert state is not None
    return state


def finish(backend: Backend, job_id: str) -> None:
    """Run ``job_id`` to success (the next delivery must be it)."""
    delivery = fetch(backend)
    assert delivery.job.id == job_id
    backend.started(delivery, "w")
    assert backend.succeed(delivery, None)


# -- INIT, SLOT, DONE ------------------------------------------------------------------------


def test_a_schedule_has_no_mark_until_init_and_init_happens_once(backend: Backend) -> None:
    assert backend.schedule_state(NAME, None) is None
    assert admit(backend, SlotOp.INIT, 1000) is SlotVerdict.INIT
    assert admit(backend, SlotOp.INIT, 2000) is SlotVerdict.DONE  # another ticker was first
    state = mark_of(backend)
    assert (state.name, state.mark, state.enqueued, state.paused) == (NAME, 1000, 0, False)
    assert backend.pending() == 0
    assert backend.schedule_state("other", None) is None


def test_a_slot_is_enqueued_once_and_never_again(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.ENQUEUED
    job_id = slot_id(NAME, 1060)
    status = backend.status(job_id)
    assert status is not None and status.state is JobState.QUEUED
    assert backend.pending() == 1
    # Another ticker with the same slot, or an earlier one: the mark says it is accounted for.
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.DONE
    assert admit(backend, SlotOp.SLOT, 1030) is SlotVerdict.DONE
    assert backend.status(slot_id(NAME, 1030)) is None
    assert backend.pending() == 1
    state = mark_of(backend)
    assert (state.mark, state.enqueued, state.last_enqueued) == (1060, 1, job_id)
    assert (state.duplicates, state.overlaps, state.paused_skips, state.misfires) == (0, 0, 0, 0)
    # Once the run finished its id is free again (no dedupe window here): the mark alone keeps
    # the slot from running a second time.
    finish(backend, job_id)
    assert backend.pending() == 0
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.DONE
    assert backend.pending() == 0
    assert backend.status(job_id).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_a_slot_without_init_is_enqueued(backend: Backend) -> None:
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.ENQUEUED
    assert mark_of(backend).mark == 1060
    assert backend.pending() == 1


def test_a_slot_whose_id_is_taken_is_a_duplicate_and_the_mark_moves(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    backend.enqueue([Job(slot_id(NAME, 1060), "t")])  # e.g. submitted by hand, unfinished
    assert admit(backend, SlotOp.SLOT, 1060, misfired=2) is SlotVerdict.DUPLICATE
    assert backend.pending() == 1
    state = mark_of(backend)
    assert (state.mark, state.duplicates, state.enqueued, state.misfires) == (1060, 1, 0, 2)
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.DONE
    assert mark_of(backend).duplicates == 1


# -- max_running, pause, SKIP, MANUAL --------------------------------------------------------


def test_an_unfinished_run_makes_the_next_slot_an_overlap(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    assert admit(backend, SlotOp.SLOT, 1060, max_running=1) is SlotVerdict.ENQUEUED
    first = slot_id(NAME, 1060)
    assert mark_of(backend).running == (first,)
    assert admit(backend, SlotOp.SLOT, 1120, max_running=1) is SlotVerdict.OVERLAP
    assert backend.status(slot_id(NAME, 1120)) is None
    assert backend.pending() == 1
    state = mark_of(backend)
    assert (state.mark, state.overlaps, state.enqueued) == (1120, 1, 1)
    # Still queued, then running: both unfinished.
    delivery = fetch(backend)
    backend.started(delivery, "w")
    assert admit(backend, SlotOp.SLOT, 1180, max_running=1) is SlotVerdict.OVERLAP
    assert backend.succeed(delivery, None)
    # Finished: the next slot runs.
    assert admit(backend, SlotOp.SLOT, 1240, max_running=1) is SlotVerdict.ENQUEUED
    state = mark_of(backend)
    assert (state.mark, state.overlaps, state.enqueued) == (1240, 2, 2)
    assert state.running == (slot_id(NAME, 1240),)
    assert backend.pending() == 1


def test_max_running_two_allows_two_unfinished_runs(backend: Backend) -> None:
    assert admit(backend, SlotOp.SLOT, 60, max_running=2) is SlotVerdict.ENQUEUED
    assert admit(backend, SlotOp.SLOT, 120, max_running=2) is SlotVerdict.ENQUEUED
    assert admit(backend, SlotOp.SLOT, 180, max_running=2) is SlotVerdict.OVERLAP
    assert backend.pending() == 2
    # Without a limit slots are enqueued whatever is unfinished.
    assert admit(backend, SlotOp.SLOT, 240) is SlotVerdict.ENQUEUED
    assert backend.pending() == 3


def test_a_paused_schedule_records_its_slots_as_skipped(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    backend.set_paused(NAME, None, True)
    assert mark_of(backend).paused
    assert admit(backend, SlotOp.SLOT, 1060, misfired=1) is SlotVerdict.PAUSED
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.DONE  # accounted for
    assert backend.pending() == 0 and backend.status(slot_id(NAME, 1060)) is None
    state = mark_of(backend)
    assert (state.mark, state.paused_skips, state.misfires, state.enqueued) == (1060, 1, 1, 0)
    backend.set_paused(NAME, None, False)
    assert not mark_of(backend).paused
    assert admit(backend, SlotOp.SLOT, 1120) is SlotVerdict.ENQUEUED
    assert backend.pending() == 1


def test_pausing_a_schedule_no_ticker_saw_yet_keeps_it_paused(backend: Backend) -> None:
    backend.set_paused(NAME, None, True)
    state = mark_of(backend)
    assert state.paused and state.mark is None
    assert admit(backend, SlotOp.INIT, 1000) is SlotVerdict.INIT
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.PAUSED
    assert backend.pending() == 0


def test_skip_moves_the_mark_and_counts_misfires(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    assert admit(backend, SlotOp.SKIP, 1300, misfired=5) is SlotVerdict.SKIPPED
    state = mark_of(backend)
    assert (state.mark, state.misfires) == (1300, 5)
    assert admit(backend, SlotOp.SKIP, 1200, misfired=9) is SlotVerdict.DONE  # behind the mark
    assert admit(backend, SlotOp.SLOT, 1240) is SlotVerdict.DONE
    assert admit(backend, SlotOp.SLOT, 1360, misfired=3) is SlotVerdict.ENQUEUED
    state = mark_of(backend)
    assert (state.mark, state.misfires, state.enqueued) == (1360, 8, 1)
    assert backend.pending() == 1


def test_run_now_enqueues_without_moving_the_mark(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    first = request_for(SlotOp.MANUAL, 0, max_running=1)
    assert backend.admit_slot(first) is SlotVerdict.ENQUEUED
    assert first.job is not None
    assert backend.status(first.job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    state = mark_of(backend)
    assert (state.mark, state.manual, state.enqueued) == (1000, 1, 0)
    assert state.last_enqueued == first.job.id
    assert state.running == (first.job.id,)
    # A run-now counts as running: with max_running=1 the next slot overlaps.
    assert admit(backend, SlotOp.SLOT, 1060, max_running=1) is SlotVerdict.OVERLAP
    # Run now is not a slot: it is enqueued while paused, and whatever max_running says.
    backend.set_paused(NAME, None, True)
    second = request_for(SlotOp.MANUAL, 0, max_running=1)
    assert backend.admit_slot(second) is SlotVerdict.ENQUEUED
    assert backend.pending() == 2
    state = mark_of(backend)
    assert (state.mark, state.manual, state.overlaps, state.paused_skips) == (1060, 2, 1, 0)


def test_run_now_before_any_ticker_leaves_the_mark_unset(backend: Backend) -> None:
    assert admit(backend, SlotOp.MANUAL, 0) is SlotVerdict.ENQUEUED
    state = mark_of(backend)
    assert (state.mark, state.manual, state.enqueued) == (None, 1, 0)
    assert admit(backend, SlotOp.INIT, 1000) is SlotVerdict.INIT  # the first ticker still sets it
    assert mark_of(backend).mark == 1000
    assert backend.pending() == 1


def test_run_now_whose_id_is_taken_is_refused_and_changes_nothing(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.ENQUEUED
    before = mark_of(backend)
    taken = Job(manual_id(NAME), "t")
    backend.enqueue([taken])  # unfinished, under the id the run would take
    request = SlotRequest(SlotOp.MANUAL, NAME, None, 0, Job(taken.id, "t"), after=1060)
    with pytest.raises(DuplicateJob):
        backend.admit_slot(request)
    assert mark_of(backend) == before  # the mark never moves back
    assert backend.pending() == 2


def test_run_now_keeps_tracking_an_unfinished_slot_run(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    assert admit(backend, SlotOp.SLOT, 1060, max_running=1) is SlotVerdict.ENQUEUED
    assert admit(backend, SlotOp.MANUAL, 0, max_running=1) is SlotVerdict.ENQUEUED
    manual = mark_of(backend).last_enqueued
    assert manual is not None
    # The slot's run and the manual one are both unfinished: both tracked.
    assert set(mark_of(backend).running) == {slot_id(NAME, 1060), manual}
    finish(backend, slot_id(NAME, 1060))
    assert admit(backend, SlotOp.SLOT, 1120, max_running=1) is SlotVerdict.OVERLAP  # manual runs
    finish(backend, manual)
    assert admit(backend, SlotOp.SLOT, 1180, max_running=1) is SlotVerdict.ENQUEUED


def test_a_gap_is_counted_once_when_tickers_race(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    # Two tickers planned from mark 1000: one keeps 1300 (4 missed), the other, later, 1360.
    assert admit(backend, SlotOp.SLOT, 1300, misfired=4, after=1000) is SlotVerdict.ENQUEUED
    assert admit(backend, SlotOp.SLOT, 1360, misfired=5, after=1000) is SlotVerdict.ENQUEUED
    assert mark_of(backend).misfires == 4


def test_resume_counts_the_paused_slots_and_unpauses_in_one_step(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    # Resuming a schedule that is not paused changes nothing (a due slot is not skipped).
    assert admit(backend, SlotOp.RESUME, 1300, misfired=5) is SlotVerdict.DONE
    assert mark_of(backend).mark == 1000
    backend.set_paused(NAME, None, True)
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.PAUSED
    assert admit(backend, SlotOp.RESUME, 1300, misfired=4) is SlotVerdict.RESUMED
    state = mark_of(backend)
    assert (state.mark, state.paused, state.paused_skips) == (1300, False, 5)
    assert admit(backend, SlotOp.RESUME, 1400, misfired=1) is SlotVerdict.DONE  # not paused
    assert admit(backend, SlotOp.SLOT, 1360) is SlotVerdict.ENQUEUED
    # A resume whose slot is behind the mark keeps the mark.
    backend.set_paused(NAME, None, True)
    assert admit(backend, SlotOp.RESUME, 1200) is SlotVerdict.RESUMED
    assert mark_of(backend).mark == 1360


def test_a_resume_planned_from_an_older_mark_counts_nothing_twice(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    backend.set_paused(NAME, None, True)
    # The resume read mark 1000 and counts 5 paused slots; a ticker records one first.
    assert admit(backend, SlotOp.SLOT, 1060) is SlotVerdict.PAUSED
    assert admit(backend, SlotOp.RESUME, 1300, misfired=5, after=1000) is SlotVerdict.RESUMED
    state = mark_of(backend)
    assert (state.mark, state.paused, state.paused_skips) == (1300, False, 1)


def test_a_full_queue_changes_nothing(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000)
    backend.enqueue([Job(f"filler-{i}", "t") for i in range(CAP)])
    before = mark_of(backend)
    with pytest.raises(QueueFull):
        admit(backend, SlotOp.SLOT, 1060, max_running=1, misfired=4)
    with pytest.raises(QueueFull):
        admit(backend, SlotOp.MANUAL, 0, max_running=1)
    assert mark_of(backend) == before
    assert backend.status(slot_id(NAME, 1060)) is None
    assert backend.pending() == CAP
    # Room again: the same slot is tried again and enqueued.
    finish(backend, "filler-0")
    assert admit(backend, SlotOp.SLOT, 1060, max_running=1, misfired=4) is SlotVerdict.ENQUEUED
    state = mark_of(backend)
    assert (state.mark, state.enqueued, state.misfires) == (1060, 1, 4)


def test_schedules_have_marks_of_their_own(backend: Backend) -> None:
    admit(backend, SlotOp.INIT, 1000, name="a")
    assert backend.admit_slot(request_for(SlotOp.SLOT, 1060, name="a")) is SlotVerdict.ENQUEUED
    assert backend.admit_slot(request_for(SlotOp.SLOT, 1060, name="b")) is SlotVerdict.ENQUEUED
    assert mark_of(backend, "a").enqueued == mark_of(backend, "b").enqueued == 1
    assert backend.pending() == 2


def test_the_last_outcome_is_recorded_on_the_mark(backend: Backend) -> None:
    admit(backend, SlotOp.SLOT, 1060)
    backend.record_outcome(NAME, None, slot_id(NAME, 1060), "succeeded")
    state = mark_of(backend)
    assert (state.last_outcome, state.last_outcome_id) == ("succeeded", slot_id(NAME, 1060))
    assert state.last_outcome_at is not None and state.last_outcome_at > 1_600_000_000
    assert (state.mark, state.enqueued) == (1060, 1)  # the rest is untouched


def test_the_counters_add_up_over_a_sequence_of_steps(backend: Backend) -> None:
    verdicts = [
        admit(backend, SlotOp.INIT, 0),
        admit(backend, SlotOp.SLOT, 10, max_running=1),  # enqueued
        admit(backend, SlotOp.SLOT, 20, max_running=1),  # overlap
        admit(backend, SlotOp.SLOT, 20, max_running=1),  # done
        admit(backend, SlotOp.SKIP, 50, misfired=2),  # skipped
        admit(backend, SlotOp.MANUAL, 0),  # enqueued (manual)
    ]
    finish(backend, slot_id(NAME, 10))
    backend.set_paused(NAME, None, True)
    verdicts.append(admit(backend, SlotOp.SLOT, 60, max_running=1))  # paused
    backend.set_paused(NAME, None, False)
    verdicts.append(admit(backend, SlotOp.SLOT, 70, misfired=1))  # enqueued
    assert [str(v) for v in verdicts] == [
        "init",
        "enqueued",
        "overlap",
        "done",
        "skipped",
        "enqueued",
        "paused",
        "enqueued",
    ]
    state = mark_of(backend)
    assert state.mark == 70
    assert (state.enqueued, state.manual, state.duplicates) == (2, 1, 0)
    assert (state.overlaps, state.paused_skips, state.misfires) == (1, 1, 3)
    assert state.last_enqueued == slot_id(NAME, 70)
    assert backend.pending() == 2  # the manual run and slot 70


# -- the file store: durable marks -----------------------------------------------------------


def reopened(path: Path) -> FileJobStore:
    store = FileJobStore(path, fsync="never")
    store.open(SETTINGS)
    return store


def test_file_store_marks_survive_close_reopen_and_compaction(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    store = reopened(path)
    store.admit_slot(request_for(SlotOp.INIT, 1000))
    store.admit_slot(request_for(SlotOp.SLOT, 1060, max_running=1, misfired=2, after=1000))
    store.admit_slot(request_for(SlotOp.SLOT, 1120, max_running=1))  # overlap
    store.set_paused(NAME, None, True)
    store.record_outcome(NAME, None, "periodic:sched:earlier", "failed")
    before = mark_of(store)
    store.close(clean=True)

    store = reopened(path)
    assert mark_of(store) == before
    assert store.status(slot_id(NAME, 1060)).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.admit_slot(request_for(SlotOp.SLOT, 1120)) is SlotVerdict.DONE
    store.compact()
    # A record after the snapshot:
    store.admit_slot(request_for(SlotOp.SKIP, 1500, misfired=1, after=1120))
    after_compaction = mark_of(store)
    store.close(clean=True)

    store = reopened(path)
    try:
        assert mark_of(store) == after_compaction
        assert (after_compaction.mark, after_compaction.misfires) == (1500, 3)
        assert after_compaction.paused and after_compaction.last_outcome == "failed"
        assert store.pending() == 1
        assert store.admit_slot(request_for(SlotOp.SLOT, 1500)) is SlotVerdict.DONE
        store.compact()  # a snapshot alone holds the marks
    finally:
        store.close(clean=True)
    store = reopened(path)
    try:
        assert mark_of(store) == after_compaction
        assert store.status(slot_id(NAME, 1060)) is not None
    finally:
        store.close(clean=True)


SLOT_CHILD = """
import json, sys
from csjd_core.backends.base import BackendSettings, SlotOp, SlotRequest
from csjd_core.backends.file import FileJobStore
from csjd_core import Job
path, name, slot, job_id = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
store = FileJobStore(path, fsync="always")
store.open(BackendSettings(max_pending_jobs=10, default_max_attempts=3, result_ttl=60.0,
                           max_results=100, worker_id="child:1"))
request = SlotRequest(SlotOp.SLOT, name, None, slot, Job(job_id, "t"), max_running=1)
verdict = store.admit_slot(request)
print(json.dumps({"verdict": str(verdict), "pid": __import__("os").getpid()}), flush=True)
sys.stdin.read()  # held open until the parent kills this process
"""


def test_file_store_mark_and_job_survive_a_sigkill_together(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    store = reopened(path)
    store.admit_slot(request_for(SlotOp.INIT, 1000))
    store.close(clean=True)
    job_id = slot_id(NAME, 1060)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", SLOT_CHILD, str(path), NAME, "1060", job_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        assert json.loads(line)["verdict"] == "enqueued"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    assert child.returncode == -signal.SIGKILL

    store = reopened(path)
    try:
        state = mark_of(store)
        assert (state.mark, state.enqueued, state.running) == (1060, 1, (job_id,))
        status = store.status(job_id)
        assert status is not None and status.state is JobState.QUEUED
        assert store.pending() == 1
        assert store.admit_slot(request_for(SlotOp.SLOT, 1060)) is SlotVerdict.DONE
        assert store.admit_slot(request_for(SlotOp.SLOT, 1120, max_running=1)) is (
            SlotVerdict.OVERLAP
        )
    finally:
        store.close(clean=True)
