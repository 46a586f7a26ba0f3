"""``csjd worker --processes N``: the supervisor restarts, recycles and stops its children."""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from typing import Any

from ops_support import APP, Cli, alive, pids_started, states

from csjd_core.testing import wait_until
from csjd_core.worker import EXIT_FORCED


def ran_by(cli: Cli) -> list[tuple[str, int]]:
    """(job id, pid) for every execution, in order."""
    return [
        (job, int(pid))
        for job, pid in (line.split() for line in cli.log.read_text().splitlines() if line)
    ]


def test_a_killed_child_is_restarted_and_every_job_completes(cli: Cli, redis_client: Any) -> None:
    ids = cli.enqueue([f"k{i:02}" for i in range(60)], args=[0.1])
    sup = cli.start("worker", APP, "--processes", "2")
    sup.wait_for_line("worker child started", count=2)
    victim, survivor = pids_started(sup)
    sup.wait_for(
        lambda: cli.log.exists() and any(pid == victim for _, pid in ran_by(cli)),
        what="the first child running jobs",
    )

    os.kill(victim, signal.SIGKILL)

    sup.wait_for_line(rf"worker child died slot=\d pid={victim} code=-9; restarting")
    sup.wait_for_line("worker child started", count=3)
    replacement = pids_started(sup)[2]
    assert replacement not in (victim, survivor)
    sup.wait_for(
        lambda: states(redis_client, ids) == {"succeeded": 60},
        timeout=60,
        what="every job succeeded",
    )
    runs = ran_by(cli)
    counts = Counter(job for job, _ in runs)
    assert set(counts) == set(ids)
    # At-least-once: only a job the killed child was running may have run twice.
    extra = {job for job, n in counts.items() if n > 1 and not (n == 2 and (job, victim) in runs)}
    assert not extra, f"{extra}\nruns={runs}\n{sup.err()}"
    # The replacement is a live consumer of the queue.
    stats = json.loads(cli.run("stats", APP, "--json").stdout)
    live = [c["name"] for c in stats["default"]["consumers"] if c["heartbeat_age"] is not None]
    assert any(f":{replacement}:" in name for name in live), live

    sup.signal(signal.SIGTERM)
    assert sup.wait() == 0, sup.err()
    assert not any(alive(pid) for pid in pids_started(sup))


def test_max_jobs_recycles_children_without_losing_or_duplicating_work(cli: Cli) -> None:
    ids = cli.enqueue([f"r{i:02}" for i in range(60)], args=[0.02])

    sup = cli.start("worker", APP, "--processes", "2", "--max-jobs", "5", "--burst")

    assert sup.wait(timeout=80) == 0, sup.err()
    err = sup.err()
    ran = cli.ran()
    assert set(ran) == set(ids), err  # nothing lost
    assert ran == Counter(dict.fromkeys(ids, 1)), f"{ran_by(cli)}\n{err}"
    # The supervisor logs "recycled" only for a child that exited with EXIT_RECYCLE.
    recycled = re.findall(r"worker child recycled slot=\d pid=(\d+)", err)
    assert len(recycled) >= 2, err
    assert err.count("recycling worker process reason=max_jobs=5") >= len(recycled)
    assert len(pids_started(sup)) >= 2 + len(recycled)
    assert "worker child died" not in err


def test_supervisor_second_sigterm_kills_the_children(cli: Cli, redis_client: Any) -> None:
    ids = cli.enqueue([f"s{i}" for i in range(4)], args=[0, 60])
    sup = cli.start("worker", APP, "--processes", "2")
    # Handlers entered, not only read (a read entry not yet taken is handed back at the drain).
    sup.wait_for(lambda: cli.began() == Counter(ids), what="4 handlers running")

    sup.signal(signal.SIGTERM)
    sup.wait_for_line("stopping: draining 2 worker children")
    sup.signal(signal.SIGTERM)

    assert sup.wait(timeout=15) == EXIT_FORCED, sup.err()
    assert "second signal: killing worker children" in sup.err()
    assert not any(alive(pid) for pid in pids_started(sup))
    assert cli.ran() == Counter()
    assert states(redis_client, ids) == {"running": 4}  # reclaimed by the next worker


def test_ctrl_c_in_a_terminal_drains_the_children_once(cli: Cli) -> None:
    ids = cli.enqueue(["t0", "t1"], args=[1.0])
    sup = cli.start("worker", APP, "--processes", "2")
    sup.wait_for(lambda: cli.began() == Counter(ids), what="2 handlers running")

    # A terminal sends SIGINT to its whole foreground process group. The children must not
    # see it as well as the supervisor's SIGTERM: two signals would stop them without draining.
    os.killpg(sup.pid, signal.SIGINT)

    assert sup.wait() == 0, sup.err()
    assert cli.ran() == Counter(dict.fromkeys(ids, 1))
    assert "second signal" not in sup.err()


def test_children_drain_and_exit_when_the_supervisor_is_killed(cli: Cli) -> None:
    sup = cli.start("worker", APP, "--processes", "2")
    sup.wait_for_line("consumer started", count=2)
    children = pids_started(sup)

    sup.popen.kill()  # SIGKILL: no chance to stop its children
    sup.popen.wait()

    wait_until(
        lambda: not any(alive(pid) for pid in children),
        timeout=20,
        message=lambda: f"orphaned children still alive:\n{sup.err()}",
    )
    assert "recycling worker process reason=supervisor_gone" in sup.err()
    assert cli.run("health", APP).returncode == 1  # they removed their heartbeats
