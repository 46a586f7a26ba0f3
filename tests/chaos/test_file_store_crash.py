"""FileJobStore against real process deaths: SIGKILL at random moments, crashes inside
compaction, a file-size limit, the lock across processes and ``fork``, and recovery of attempts.

Every child is ``tests/chaos/store_proc.py``. The parent never sleeps to synchronise: it waits
for files the child writes (``wait_until``) or for the child's exit. Set ``CSJD_CHAOS_SEED`` to
replay a run of the random-kill test; the seed is in every failure message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from csjd_core import Config, Dispatcher, FileJobStore, JobState, JobStoreLocked
from csjd_core.testing import wait_until

SCRIPT = Path(__file__).with_name("store_proc.py")
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def spawn(*args: object, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def run_ok(*args: object, timeout: float = 60) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"child {args[0]} exited {proc.returncode}:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_exit(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )


def lines(path: Path) -> list[str]:
    """Complete lines of a file the child appends to (a missing file has none)."""
    try:
        data = path.read_text()
    except FileNotFoundError:
        return []
    return data.split("\n")[:-1]  # the part after the last newline is not a complete line


def kill(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"exited {proc.returncode} before the kill"
    return stderr


def alive_or_fail(proc: subprocess.Popen[str], cond: Callable[[], bool]) -> Callable[[], bool]:
    """A condition that also fails the test at once if the child died on its own."""

    def check() -> bool:
        if cond():
            return True
        if proc.poll() is not None:
            _, stderr = proc.communicate()
            pytest.fail(f"child exited {proc.returncode} before the kill:\n{stderr}")
        return False

    return check


# -- 1. SIGKILL at random moments ------------------------------------------------------------
WORKERS = 4
THREADS = 2
JOBS_PER_RUN = 1000


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("fsync", "kills"), [("always", 20), ("interval", 10), ("never", 10)])
def test_sigkill_at_random_moments_loses_no_accepted_job(
    tmp_path: Path, fsync: str, kills: int
) -> None:
    seed = int(os.environ.get("CSJD_CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    store = tmp_path / "data" / "jobs.json"
    executed = tmp_path / "executed.txt"
    accepted: set[str] = set()
    per_kill: list[tuple[str, int, int]] = []
    # A quarter of the kills land as the child starts, the rest in the middle of its work.
    triggers = [("accepted", "started", "accepted", "executed")[i % 4] for i in range(kills)]
    rng.shuffle(triggers)
    for it, trigger in enumerate(triggers):
        accepted_file = tmp_path / f"accepted-{it}.txt"
        marker = tmp_path / f"started-{it}"
        ran_before = len(lines(executed))
        proc = spawn(
            "run", "--store", store, "--fsync", fsync, "--executed", executed,
            "--accepted", accepted_file, "--marker", marker, "--prefix", f"r{it}",
            "--jobs", JOBS_PER_RUN, "--workers", WORKERS, "--threads", THREADS,
        )  # fmt: skip
        k = rng.randint(1, 400)
        conditions: dict[str, Callable[[], bool]] = {
            "started": marker.exists,
            "accepted": lambda f=accepted_file, k=k: len(lines(f)) >= k,  # type: ignore[misc]
            "executed": lambda k=k, b=ran_before: len(lines(executed)) >= b + k,  # type: ignore[misc]
        }
        wait_until(
            alive_or_fail(proc, conditions[trigger]),
            timeout=60,
            message=f"child never reached {trigger} (seed {seed}, iteration {it})",
        )
        stderr = kill(proc)
        assert "Traceback" not in stderr, f"seed {seed}, iteration {it}:\n{stderr}"
        got = set(lines(accepted_file))
        per_kill.append((trigger, k, len(got)))
        accepted |= got

    final = run_ok(
        "drain", "--store", store, "--fsync", fsync, "--executed", executed, "--workers", WORKERS
    )
    context = f"seed {seed}, kills {per_kill}, drain {final}"
    assert final["idle"] and final["failed"] == 0 and final["left"] == 0, context
    ran = Counter(lines(executed))
    missing = accepted - ran.keys()
    assert not missing, (
        f"{len(missing)} accepted jobs never ran, e.g. {sorted(missing)[:5]}; {context}"
    )
    # A job runs twice only if it was in flight at a kill: at most `WORKERS` per kill.
    duplicates = sum(n - 1 for n in ran.values())
    assert duplicates <= WORKERS * kills, f"{duplicates} duplicate runs; {context}"
    # A job may run without being recorded as accepted only if its submit was cut short by the
    # kill (its record was written, `submit` had not returned): one per submitting thread.
    unconfirmed = set(ran) - accepted
    assert len(unconfirmed) <= THREADS * kills, f"{sorted(unconfirmed)[:10]}; {context}"
    known = {f"r{it}-{i}" for it in range(kills) for i in range(JOBS_PER_RUN)}
    assert set(ran) <= known, context
    # The kills landed in the middle of work, not only before or after it.
    assert sum(1 for _, _, n in per_kill if 0 < n < JOBS_PER_RUN) >= kills // 2, context
    assert len(accepted) >= 100 * (kills // 2), context
    with FileJobStore(store, fsync=fsync) as reopened:
        assert reopened.jobs() == []
    print(
        f"seed={seed} accepted={len(accepted)} runs={sum(ran.values())} "
        f"duplicates={duplicates} unconfirmed={len(unconfirmed)} kills={per_kill}"
    )


# -- 4. a crash inside compaction ------------------------------------------------------------
def _unfinished(path: Path) -> dict[str, tuple[Any, ...]]:
    """What a store recovers, job by job, comparable across two stores."""
    with FileJobStore(path) as store:
        result = {}
        for status in store.jobs():
            job = store.job(status.id)
            result[status.id] = (
                str(status.state),
                status.attempts,
                status.max_attempts,
                job.to_dict(),
                status.run_at,
                status.last_error,
            )
        return result


CRASH_POINTS = [
    "before-snapshot-fsync",
    "before-snapshot-replace",
    "before-rotate",
    "before-log-replace",
    "before-log-dir-fsync",
]


@pytest.mark.parametrize("compact_first", [False, True], ids=["first", "second"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_inside_compaction_loses_and_duplicates_nothing(
    tmp_path: Path, point: str, compact_first: bool
) -> None:
    store = tmp_path / "data" / "jobs.json"
    image = tmp_path / "image"
    proc = run_exit(
        "compact",
        "--store",
        store,
        "--copy",
        image,
        "--point",
        point,
        *(["--compact-first"] if compact_first else []),
    )
    assert proc.returncode == 17, f"the crash point was not reached:\n{proc.stderr}"
    # The copy taken just before `compact` is what a crash without compaction would leave.
    expected = _unfinished(image / "jobs.json")
    assert len(expected) == 30 + 2 - 10  # 10 of the 32 jobs succeeded
    states = Counter(state for state, *_ in expected.values())
    assert states == {"queued": 16, "scheduled": 6}, states  # 2 crashed runs requeued
    crashed = [v for v in expected.values() if v[5] and "crashed" in v[5]]
    assert len(crashed) == 2 and all(v[1] == 1 for v in crashed)
    # Opening also writes (the crashed attempts' bookkeeping), so compare on fresh copies.
    got = _unfinished(store)
    assert got == expected
    # Reopening again (a stale temporary file may be left over) changes nothing either.
    assert _unfinished(store) == expected


# -- 5. the disk fills up during submit (RLIMIT_FSIZE) ------------------------------------------
def test_file_size_limit_refuses_the_job_and_keeps_the_store_consistent(tmp_path: Path) -> None:
    store = tmp_path / "data" / "jobs.json"
    executed = tmp_path / "executed.txt"
    out = run_ok("fsize", "--store", store, "--executed", executed, "--room", 300)
    error = out["error"]
    assert error, "no submit failed under the file-size limit"
    assert error["type"] == "StoreFailed"
    assert error["errno"] == 27  # EFBIG, after a short write up to the limit
    assert "not accepted" in error["message"] and str(store) in error["message"]
    assert error["status"] == "JobNotFound"
    assert error["accepted_after"] == error["accepted_before"]
    assert error["log_size"] <= error["limit"]
    accepted = out["accepted"]
    assert len(accepted) >= 6 and error["id"] not in accepted
    assert out["idle"] and out["succeeded"] == len(accepted)
    ran = Counter(lines(executed))
    assert set(ran) == set(accepted) and max(ran.values()) == 1
    with FileJobStore(store) as reopened:
        assert reopened.jobs() == []


# -- 7. the lock across processes and fork -----------------------------------------------------
@pytest.mark.parametrize("release", ["close", "sigkill"])
def test_second_process_gets_jobstorelocked_until_the_holder_goes(
    tmp_path: Path, release: str
) -> None:
    store = tmp_path / "data" / "jobs.json"
    holder = spawn("hold", "--store", store, stdin=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    info = json.loads(holder.stdout.readline())
    assert info["pid"] == holder.pid
    mine = FileJobStore(store)
    with pytest.raises(JobStoreLocked) as caught:
        mine.open()
    assert caught.value.holder_pid == holder.pid
    assert caught.value.path == str(store)
    assert str(holder.pid) in str(caught.value) and str(store) in str(caught.value)
    if release == "close":
        _, stderr = holder.communicate(timeout=30)  # closes its stdin: it closes the store
        assert holder.returncode == 0, stderr
    else:
        kill(holder)
    # The same object that was refused may open now.
    assert mine.open() == 0
    assert (tmp_path / "data" / "jobs.json.lock").read_text() == f"{os.getpid()}\n"
    mine.close()


def test_forked_child_cannot_use_or_release_the_parents_store(tmp_path: Path) -> None:
    store = tmp_path / "data" / "jobs.json"
    out = run_ok("fork", "--store", store)
    parent = out["parent"]
    assert out["child_exit"] == 0
    for action in ("submit", "enqueue", "open", "new_store", "compact"):
        got = out["child"][action]
        assert isinstance(got, dict) and got["locked"], (action, got)
        assert got["holder"] == parent and got["path"] == str(store), (action, got)
    assert out["child"]["close"] == 0  # the child's close does nothing
    assert out["log_unchanged_by_child"]
    # The child closed its copies of the descriptors without dropping the parent's lock.
    assert out["second_opener_after_child"] == f"locked by {parent}"
    # The child dropped its inherited copy of the lock: once the parent closed, the store
    # opens although the child (a pre-forked worker, say) is still alive.
    assert out["reopen_while_child_lives"] == "opened"
    assert out["succeeded"] == 2
    with FileJobStore(store) as reopened:
        assert reopened.jobs() == []


# -- 8. recovery preserves attempts and due times ----------------------------------------------
def test_retry_counts_and_due_times_survive_sigkill(tmp_path: Path) -> None:
    store = tmp_path / "data" / "jobs.json"
    events = tmp_path / "events.txt"
    run_at = time.time() + 3.0
    proc = spawn("retry", "--store", store, "--events", events, "--run-at", run_at)
    # Attempt 1 fails (retry in 0.05 s), attempt 2 fails (retry in 30 s): kill after that.
    wait_until(
        alive_or_fail(proc, lambda: any(e.startswith("retry flaky 2 ") for e in lines(events))),
        timeout=30,
    )
    killed_at = time.time()
    kill(proc)
    assert "ran later" not in lines(events)

    ran: dict[str, tuple[float, int]] = {}
    store_obj = FileJobStore(store)
    with store_obj:
        statuses = {s.id: s for s in store_obj.jobs()}
    flaky = statuses["flaky"]
    assert flaky.state is JobState.SCHEDULED and flaky.attempts == 2
    assert flaky.last_error == "RuntimeError: attempt 2 fails"
    assert flaky.run_at is not None and flaky.run_at.timestamp() >= killed_at + 20
    later = statuses["later"]
    assert later.state is JobState.SCHEDULED
    assert later.run_at is not None and abs(later.run_at.timestamp() - run_at) < 1e-3

    # A new process: the due times hold (the flaky job is not run early), the run_at job runs
    # at its time, not at start.
    dispatcher = Dispatcher(Config(workers=2, store=FileJobStore(store)))
    dispatcher.register_handler(
        "flaky", lambda ctx, job: ran.setdefault(job.id, (time.time(), ctx.attempt))
    )
    dispatcher.register_handler(
        "t", lambda ctx, job: ran.setdefault(job.id, (time.time(), ctx.attempt))
    )
    dispatcher.start()
    try:
        assert dispatcher.status("flaky").attempts == 2
        wait_until(lambda: "later" in ran, timeout=30)
        assert ran["later"][0] >= run_at
        assert "flaky" not in ran
        assert dispatcher.status("flaky").state is JobState.SCHEDULED
    finally:
        report = dispatcher.stop(timeout=10)
    assert report.left_pending == 1
    with FileJobStore(store) as again:
        [status] = again.jobs()
    assert status.id == "flaky" and status.attempts == 2 and status.state is JobState.SCHEDULED


def test_a_crash_during_an_attempt_counts_as_an_attempt(tmp_path: Path) -> None:
    store = tmp_path / "data" / "jobs.json"
    events = tmp_path / "events.txt"
    for attempt in (1, 2):
        proc = spawn(
            "block", "--store", store, "--events", events, *(["--no-submit"] if attempt > 1 else [])
        )
        wait_until(
            alive_or_fail(proc, lambda a=attempt: f"running stuck {a}" in lines(events)), timeout=30
        )
        kill(proc)
        with FileJobStore(store) as reopened:
            [status] = reopened.jobs()
        assert status.state is JobState.QUEUED
        assert status.attempts == attempt
        assert status.last_error == f"process crashed during attempt {attempt}"
    assert lines(events) == ["running stuck 1", "running stuck 2"]


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_recovery_never_runs_a_cancelled_job(tmp_path: Path, fsync: str) -> None:
    """SIGKILL after cancelling a running job (whose handler ignores it), a queued one and a
    scheduled one: the reopened store holds only the jobs that were not cancelled (the log
    recorded each cancellation before ``cancel`` returned; a crash of the process loses no
    write under any fsync policy)."""
    store = tmp_path / "data" / "jobs.json"
    events = tmp_path / "events.txt"
    proc = spawn("cancel", "--store", store, "--events", events, "--fsync", fsync)
    wait_until(
        alive_or_fail(proc, lambda: any(e.startswith("cancelled ") for e in lines(events))),
        timeout=30,
    )
    kill(proc)
    [answers] = [json.loads(e.split(" ", 1)[1]) for e in lines(events) if e.startswith("cancel")]
    assert answers == {
        "cancelled-queued": True,
        "cancelled-running": True,
        "cancelled-scheduled": True,
    }
    with FileJobStore(store) as reopened:
        kept = {(s.id, s.state) for s in reopened.jobs()}
        assert kept == {("kept-running", JobState.QUEUED), ("kept-queued", JobState.QUEUED)}
        reopened.compact()  # folded into a snapshot: still gone
    with FileJobStore(store) as again:
        assert {s.id for s in again.jobs()} == {"kept-running", "kept-queued"}
    assert sorted(e for e in lines(events) if e.startswith("running")) == [
        "running cancelled-running 1",
        "running kept-running 1",
    ]


def test_a_job_that_kills_its_process_fails_after_max_attempts(tmp_path: Path) -> None:
    store = tmp_path / "data" / "jobs.json"
    events = tmp_path / "events.txt"
    restarts = 0
    first = True
    while True:
        proc = run_exit(
            "suicide", "--store", store, "--events", events, *(["--submit"] if first else [])
        )
        first = False
        if proc.returncode == 0:
            break
        assert proc.returncode == 3, proc.stderr
        restarts += 1
        assert restarts <= 10, "the poison job loops"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert restarts == 3
    assert out["state"] == "failed" and out["attempts"] == 3
    assert out["error"] == "process crashed during attempt 3"
    assert ("poison", "failed", 3) in [tuple(r) for r in out["recovered"]]
    attempts = [e for e in lines(events) if e.startswith("attempt poison")]
    assert attempts == ["attempt poison 1", "attempt poison 2", "attempt poison 3"]
    assert lines(events).count("ran innocent") == 1
    with FileJobStore(store) as reopened:
        assert reopened.jobs() == []
