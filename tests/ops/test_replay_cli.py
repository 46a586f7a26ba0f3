"""``csjd replay``: list, export and run a file store, and move it into Redis exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ops_support import APP, Cli, keys

from csjd_core import FileJobStore, Job
from csjd_core.testing import wait_until


def make_store(path: Path, ids: list[str], batch: int = 500) -> None:
    """A file store holding ``ids`` as queued ``record`` jobs (as a crashed app leaves it)."""
    store = FileJobStore(path, fsync="never")
    store.open()
    for start in range(0, len(ids), batch):
        store.enqueue(
            [Job(i, "record", {"args": [], "kwargs": {}}) for i in ids[start : start + batch]]
        )
    store.close()


def in_redis(client: Any) -> tuple[Counter[str], int]:
    """(job id -> stream entries carrying it, number of job hashes) of the default queue."""
    k = keys()
    entries = Counter(fields[b"id"].decode() for _, fields in client.xrange(k.stream))
    hashes = sum(1 for _ in client.scan_iter(match=k.job_prefix + "*", count=1000))
    return entries, hashes


def test_replay_lists_exports_and_runs_a_small_store(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    ids = ["s0", "s1", "s2"]
    make_store(path, ids)

    listed = cli.run("replay", path)
    assert listed.returncode == 0, listed.stderr
    assert f"{path}: 3 unfinished jobs, 3 queued" in listed.stdout
    for job_id in ids:
        assert f"  {job_id}  record  queued  attempts=0" in listed.stdout

    exported = cli.run("replay", path, "--export")
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert sorted(row["id"] for row in rows) == ids
    assert {(row["type"], row["state"], row["attempts"]) for row in rows} == {
        ("record", "queued", 0)
    }

    ran = cli.run("replay", path, "--run", APP)
    assert ran.returncode == 0, ran.stderr
    assert "ran 3 jobs: 3 succeeded, 0 failed, 0 retries" in ran.stdout
    assert cli.ran() == Counter(dict.fromkeys(ids, 1))
    assert f"{path}: 0 unfinished jobs" in cli.run("replay", path).stdout

    missing = cli.run("replay", tmp_path / "nothing.json")
    assert missing.returncode == 1
    assert "no job store at" in missing.stderr
    both = cli.run("replay", path, "--export", "--into-redis", APP)
    assert both.returncode == 2
    assert "at most one of --run, --export, --into-redis" in both.stderr


def test_replay_into_redis_killed_halfway_then_rerun_moves_each_job_once(
    cli: Cli, tmp_path: Path, redis_client: Any
) -> None:
    path = tmp_path / "jobs.json"
    ids = [f"m{i:05}" for i in range(4000)]
    make_store(path, ids)

    mover = cli.start("replay", path, "--into-redis", APP)
    wait_until(
        lambda: int(redis_client.get(keys().pending) or 0) >= 1200,
        timeout=60,
        interval=0.001,
        message=lambda: f"jobs moving into Redis; {mover.err()}",
    )
    mover.signal(signal.SIGKILL)
    assert mover.wait() == -signal.SIGKILL
    before, _ = in_redis(redis_client)
    assert 1200 <= len(before) < len(ids), "the move was not interrupted halfway"

    again = cli.run("replay", path, "--into-redis", APP)

    assert again.returncode == 0, again.stderr
    entries, hashes = in_redis(redis_client)
    assert entries == Counter(dict.fromkeys(ids, 1))  # every job exactly once in the stream
    assert hashes == len(ids)
    assert int(redis_client.get(keys().pending)) == len(ids)
    moved = len(ids) - len(before)
    assert f"moved {moved} jobs into Redis (" in again.stdout, again.stdout
    assert f"{path}: 0 unfinished jobs" in cli.run("replay", path).stdout  # the store is empty
    third = cli.run("replay", path, "--into-redis", APP)
    assert "moved 0 jobs into Redis (0 were already there)" in third.stdout
    assert in_redis(redis_client)[0] == entries


def test_replay_into_redis_stopped_by_a_full_queue_resumes_exactly_once(
    cli: Cli, tmp_path: Path, redis_client: Any
) -> None:
    path = tmp_path / "jobs.json"
    ids = [f"q{i:04}" for i in range(1200)]
    make_store(path, ids)

    full = cli.run("replay", path, "--into-redis", APP, env={"CSJD_OPS_MAX_PENDING": "700"})

    assert full.returncode == 1
    assert "move interrupted" in full.stderr
    assert "max_pending_jobs=700" in full.stderr
    assert "run the same command again" in full.stderr
    assert "Traceback" not in full.stderr
    assert int(redis_client.get(keys().pending)) == 700
    # What reached Redis left the store, including the partial batch (500 + 200).
    assert f"{path}: 500 unfinished jobs" in cli.run("replay", path).stdout

    resumed = cli.run("replay", path, "--into-redis", APP)

    assert "moved 500 jobs into Redis (0 were already there)" in resumed.stdout, resumed.stderr
    entries, hashes = in_redis(redis_client)
    assert entries == Counter(dict.fromkeys(ids, 1))
    assert hashes == len(ids)
    assert f"{path}: 0 unfinished jobs" in cli.run("replay", path).stdout


def test_replay_run_repairs_a_log_damaged_in_the_middle_only_when_asked(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.json"
    crashed = (  # a process that stores three jobs, one record each, and dies (no compaction)
        "import os, sys; from csjd_core import FileJobStore, Job; "
        "s = FileJobStore(sys.argv[1]); s.open(); "
        "[s.enqueue([Job(i, 'record', {'args': [], 'kwargs': {}})]) for i in ('s0', 's1', 's2')]; "
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", crashed, str(path)], check=True, timeout=60)
    log = Path(f"{path}.log")
    damaged = bytearray(log.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # inside s1's record: not a torn tail
    log.write_bytes(bytes(damaged))

    refused = cli.run("replay", path, "--run", APP)
    assert refused.returncode == 1
    assert "corrupt" in refused.stderr and "--repair" in refused.stderr, refused.stderr
    assert cli.ran() == Counter()

    repaired = cli.run("replay", path, "--run", APP, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"{path}: 1 unfinished job, 1 queued" in repaired.stdout  # what is about to run
    assert "ran 1 job: 1 succeeded" in repaired.stdout
    assert cli.ran() == Counter({"s0": 1})
    assert [p for p in tmp_path.iterdir() if ".log.broken-" in p.name]


def test_replay_into_redis_refusals_before_anything_moves_are_not_interruptions(
    cli: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.json"
    make_store(path, ["s0"])
    wrong_mode = cli.run("replay", path, "--into-redis", "opsapp:inprocess")
    assert wrong_mode.returncode == 1
    assert "csjd replay --into-redis works on Redis queues" in wrong_mode.stderr
    assert "interrupted" not in wrong_mode.stderr
    with FileJobStore(path):  # held by another store: locked
        locked = cli.run("replay", path, "--into-redis", APP)
    assert locked.returncode == 1
    assert "locked" in locked.stderr and "interrupted" not in locked.stderr
    assert f"{path}: 1 unfinished job" in cli.run("replay", path).stdout
