"""``csjd schedule APP [pause|resume|run NAME]`` against a real server, as a user runs it."""

from __future__ import annotations

import json
import re
from typing import Any

from ops_support import APP, Cli, keys, states

SCHED_APP = "schedapp:app"


def listing(cli: Cli) -> list[dict[str, Any]]:
    done = cli.run("schedule", SCHED_APP, "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def test_schedule_lists_pauses_resumes_and_runs_now(cli: Cli, redis_client: Any) -> None:
    fresh = cli.run("schedule", SCHED_APP)
    assert fresh.returncode == 0, fresh.stderr
    lines = fresh.stdout.splitlines()
    assert lines[0] == ("schedule nightly: 0 3 * * * (Europe/Paris) job=cleanup queue=default")
    assert re.fullmatch(r"  next=\d{4}-\d\d-\d\d 0[12]:00:00Z", lines[1])  # 03:00 in Paris
    assert lines[2] == "  not ticked yet"
    assert lines[3] == "schedule report: every 1h job=report queue=default"
    assert re.fullmatch(r"  next=\d{4}-\d\d-\d\d \d\d:00:00Z", lines[4])
    assert lines[5] == "  not ticked yet"
    rows = listing(cli)
    assert [(r["name"], r["job"], r["schedule"], r["state"]) for r in rows] == [
        ("nightly", "cleanup", "0 3 * * * (Europe/Paris)", None),
        ("report", "report", "every 1h", None),
    ]
    assert rows[1]["next_slot"].endswith(":00:00+00:00")

    ran = cli.run("schedule", SCHED_APP, "run", "report")
    assert ran.returncode == 0, ran.stderr
    match = re.fullmatch(r"enqueued (periodic:report:manual-[0-9a-f]{32})\n", ran.stdout)
    assert match, ran.stdout
    manual = match.group(1)
    assert states(redis_client, [manual]) == {"queued": 1}

    paused = cli.run("schedule", SCHED_APP, "pause", "report")
    assert (paused.returncode, paused.stdout) == (0, "schedule report paused\n"), paused.stderr
    text = cli.run("schedule", SCHED_APP).stdout
    assert "schedule report: every 1h job=report queue=default PAUSED" in text
    assert f"  last_enqueued={manual} last_outcome=-" in text
    assert "  counts: enqueued=0 manual=1 duplicates=0 overlaps=0 paused_skips=0 misfires=0" in text
    state = listing(cli)[1]["state"]
    assert state["paused"] is True and state["manual"] == 1
    assert state["last_enqueued"] == manual and state["running"] == [manual]

    resumed = cli.run("schedule", SCHED_APP, "resume", "report")
    assert (resumed.returncode, resumed.stdout) == (0, "schedule report resumed\n")
    state = listing(cli)[1]["state"]
    assert state["paused"] is False
    assert state["mark"] is not None  # resuming accounts for the time until now
    assert "PAUSED" not in cli.run("schedule", SCHED_APP).stdout
    assert listing(cli)[0]["state"] is None  # the other schedule is untouched
    assert redis_client.xlen(keys().stream) == 1  # only the run-now job was enqueued


def test_an_unknown_schedule_is_a_one_line_error(cli: Cli) -> None:
    for action in ("pause", "resume", "run"):
        done = cli.run("schedule", SCHED_APP, action, "nope")
        assert done.returncode == 1
        assert done.stderr == ("Error: no schedule named 'nope' (schedules: nightly, report)\n"), (
            done.stderr
        )
        assert done.stdout == ""
    none = cli.run("schedule", APP, "run", "anything")
    assert none.returncode == 1
    assert none.stderr == "Error: no schedule named 'anything' (schedules: none)\n"


def test_an_app_without_schedules_says_so(cli: Cli) -> None:
    done = cli.run("schedule", APP)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no schedules (declare one with @app.job(..., schedule=...))\n"
    assert json.loads(cli.run("schedule", APP, "--json").stdout) == []
