"""``csjd cancel`` against a real server: by id (waiting, running in a worker process,
finished, unknown), and the bulk form (every waiting job of a type or of a queue) with its
confirmation. ``manage.py csjd_cancel`` and ``flask csjd cancel`` print the same: their tests
compare with these lines (tests/django/test_front_ends.py, tests/flask/test_flask_cli.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ops_support import APP, Cli, states


def test_cancel_by_id(cli: Cli, redis_client: Any) -> None:
    cli.enqueue(["busy"], args=[2.5])  # (`record` sleeps through its cancellation)
    cli.enqueue(["waiting", "later-one"])
    cli.enqueue(["later"], run_at=datetime.now(UTC) + timedelta(hours=1))
    worker = cli.start("worker", APP, "--workers", "1")
    worker.wait_for(lambda: states(redis_client, ["busy"]) == {"running": 1}, what="busy running")

    done = cli.run("cancel", APP, "waiting", "later")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cancelled waiting", "cancelled later"]
    running = cli.run("cancel", APP, "busy")
    assert running.stdout.splitlines() == [
        "cancellation requested busy (running: it is told, and ends cancelled)"
    ]
    worker.wait_for(lambda: states(redis_client, ["busy"]) == {"cancelled": 1}, what="busy ends")
    again = cli.run("cancel", APP, "busy", "--queue", "default")
    assert again.returncode == 0
    assert again.stdout.splitlines() == ["not cancelled busy: it had already ended"]
    missing = cli.run("cancel", APP, "nobody")
    assert missing.returncode == 1
    assert "no job nobody (never submitted, or its result expired)" in missing.stderr
    assert "Error: 1 of 1 job(s) not found" in missing.stderr
    worker.wait_for(lambda: "later-one" in cli.ran(), what="later-one ran")
    assert "waiting" not in cli.ran() and "later" not in cli.ran()
    stats = json.loads(cli.run("stats", APP, "--json").stdout)["default"]
    assert stats["counters"]["cancelled"] == 3


def test_bulk_cancel_of_a_type_and_of_a_queue(cli: Cli, redis_client: Any) -> None:
    cli.enqueue([f"r{i}" for i in range(5)])
    cli.enqueue(["x0", "x1"], type="explode", args=["bulk"])
    cli.enqueue(["rl"], run_at=datetime.now(UTC) + timedelta(hours=1))

    refused = cli.run("cancel", APP, "--type", "record", input="n\n")
    assert refused.returncode == 1
    assert "cancel 6 waiting job(s) of type record? [y/N]" in refused.stdout
    assert "Aborted" in refused.stderr
    assert states(redis_client, ["r0", "rl"]) == {"queued": 1, "scheduled": 1}

    typed = cli.run("cancel", APP, "--type", "record", "--yes")
    assert typed.returncode == 0, typed.stderr
    assert typed.stdout.splitlines() == ["cancelled 6 waiting job(s) of type record"]
    assert states(redis_client, ["x0", "x1"]) == {"queued": 2}

    everything = cli.run("cancel", APP, "--all", "--queue", "default", input="y\n")
    assert "cancel 2 waiting job(s) in queue default? [y/N]" in everything.stdout
    assert "cancelled 2 waiting job(s) in queue default" in everything.stdout
    assert cli.run("cancel", APP, "--all", "--yes").stdout.splitlines() == [
        "no waiting jobs to cancel"
    ]
    assert redis_client.get("csjd:jobs:{default}:pending") == b"0"
    assert cli.run("worker", APP, "--burst").returncode == 0
    assert not cli.ran()


def test_usage_errors(cli: Cli) -> None:
    both = cli.run("cancel", APP, "a", "--all")
    assert both.returncode == 2
    assert "give job ids, or --type / --all for the bulk form (not both)" in both.stderr
    neither = cli.run("cancel", APP)
    assert neither.returncode == 2
    assert "give job ids, or --type TYPE / --all to cancel waiting jobs" in neither.stderr
