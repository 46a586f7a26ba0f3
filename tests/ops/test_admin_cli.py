"""``csjd stats``, ``csjd health`` and ``csjd dead`` against a real server."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ops_support import APP, Cli, keys, states

from csjd_core.testing import wait_until
from csjd_core.worker import EXIT_FORCED


def test_stats_and_health_with_and_without_a_live_worker(cli: Cli, redis_client: Any) -> None:
    cli.enqueue(["bad0", "bad1"], type="explode", args=["stats"], max_attempts=1)
    done = cli.run("worker", APP, "--burst")
    assert done.returncode == 0, done.stderr
    unhealthy = cli.run("health", APP)
    assert unhealthy.returncode == 1
    assert "queue default: 0 live worker(s)" in unhealthy.stdout
    assert "unhealthy: no live worker for default" in unhealthy.stderr
    # A live worker on another host serves the queue, but not this host (this container).
    other = "elsewhere:1:abcdef"
    redis_client.xgroup_createconsumer(keys().stream, "csjd-workers", other)
    redis_client.set(keys().heartbeat_prefix + other, str(time.time()), px=60_000)
    assert cli.run("health", APP).returncode == 0
    local = cli.run("health", APP, "--this-host")
    assert local.returncode == 1
    assert f"queue default: 0 live worker(s) on {socket.gethostname()}" in local.stdout
    redis_client.delete(keys().heartbeat_prefix + other)

    cli.enqueue(["busy"], args=[0, 60])
    cli.enqueue(["q0", "q1"])
    cli.enqueue(["later"], run_at=datetime.now(UTC) + timedelta(hours=1))
    worker = cli.start("worker", APP, "--workers", "1")
    worker.wait_for(lambda: states(redis_client, ["busy"]) == {"running": 1}, what="busy running")

    healthy = cli.run("health", APP, "--this-host")
    assert healthy.returncode == 0, healthy.stderr
    assert f"queue default: 1 live worker(s) on {socket.gethostname()}" in healthy.stdout

    figures = json.loads(cli.run("stats", APP, "--json").stdout)
    q = figures["default"]
    assert q["stream_length"] == 3  # busy (delivered, not acked), q0, q1
    assert q["in_flight"] == 1
    assert q["scheduled"] == 1
    assert q["dead"] == 2
    assert q["unfinished"] == 4
    assert q["counters"] == {
        "processed": 2,
        "succeeded": 0,
        "retried": 0,
        "failed": 2,
        "cancelled": 0,
    }
    live = [c for c in q["consumers"] if c["heartbeat_age"] is not None]
    assert len(live) == 1
    assert live[0]["pending"] == 1
    # (A few ms below 0 when the heartbeat lands after stats() read the clock: reported.)
    assert -1 < live[0]["heartbeat_age"] < 5
    assert live[0]["idle_ms"] >= 0
    assert f":{worker.pid}:" in live[0]["name"]

    text = cli.run("stats", APP).stdout
    assert "queue default: stream=3 in_flight=1 scheduled=1 unfinished=4 dead=2" in text
    assert "counters: processed=2 succeeded=0 retried=0 failed=2 cancelled=0" in text
    assert re.search(
        rf"consumer \S+:{worker.pid}:\S+: pending=1 idle=\d+ms heartbeat=-?\d+\.\ds", text
    ), text

    worker.signal(signal.SIGTERM)
    worker.wait_for_line("signal received; draining")
    worker.signal(signal.SIGTERM)  # don't wait 60 s for "busy"
    assert worker.wait() == EXIT_FORCED
    # Killed without cleaning up: its heartbeat lapses after 3 heartbeat intervals.
    heartbeat = keys().heartbeat_prefix + live[0]["name"]
    wait_until(lambda: not redis_client.exists(heartbeat), timeout=10)
    assert cli.run("health", APP).returncode == 1


def test_dead_letter_list_show_requeue_purge(cli: Cli, redis_client: Any) -> None:
    ids = cli.enqueue(["d0", "d1", "d2"], type="explode", args=["dl"], max_attempts=1)
    assert cli.run("worker", APP, "--burst").returncode == 0
    listed = cli.run("dead", APP, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert sorted(row[1] for row in rows) == ids
    assert all(row[2] == "explode" and "RuntimeError: boom: dl" in " ".join(row) for row in rows)
    entry = {row[1]: row[0] for row in rows}

    shown = cli.run("dead", APP, "show", entry["d0"])
    letter = json.loads(shown.stdout)
    assert letter["job_id"] == "d0"
    assert letter["attempts"] == 1
    assert "RuntimeError: boom: dl" in letter["traceback"]
    assert json.loads(letter["data"])["payload"] == {"args": ["dl"], "kwargs": {}}
    missing = cli.run("dead", APP, "show", "1-1")
    assert missing.returncode == 1
    assert "no dead letter 1-1" in missing.stderr

    one = cli.run("dead", APP, "requeue", entry["d0"], "--yes")
    assert "requeued 1 of 1" in one.stdout, one.stderr
    assert redis_client.xlen(keys().dead) == 2
    assert states(redis_client, ["d0"]) == {"queued": 1}

    refused = cli.run("dead", APP, "requeue", "--all", input="n\n")
    assert refused.returncode == 1
    assert "requeue 2 dead letter(s)? [y/N]" in refused.stdout
    assert "Aborted" in refused.stderr
    assert redis_client.xlen(keys().dead) == 2

    everything = cli.run("dead", APP, "requeue", "--all", "--yes")
    assert "requeued 2 of 2" in everything.stdout, everything.stderr
    assert redis_client.xlen(keys().dead) == 0
    assert states(redis_client, ids) == {"queued": 3}

    # They fail again; the older argument order (used by manage.py csjd_dead) still works.
    assert cli.run("worker", APP, "--burst").returncode == 0
    assert len(cli.run("dead", "list", APP).stdout.splitlines()) == 3

    kept = cli.run("dead", APP, "purge", input="n\n")
    assert kept.returncode == 1
    assert "delete 3 dead letter(s)? [y/N]" in kept.stdout
    assert redis_client.xlen(keys().dead) == 3
    purged = cli.run("dead", APP, "purge", "--yes")
    assert "purged 3" in purged.stdout, purged.stderr
    assert redis_client.xlen(keys().dead) == 0
