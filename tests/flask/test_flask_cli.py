"""``flask csjd run|replay|stats|dead`` through ``app.test_cli_runner()``, on the suite's Redis."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.cli import ScriptInfo
from flaskjobs import csjd, fails, greet, whoami

from csjd_core import FileJobStore, Job, JobState
from csjd_core.testing import wait_until
from csjd_flask.cli import _child_command

MakeApp = Callable[..., Flask]
DEADLINE = 5.0


def invoke(app: Flask, *args: str, input: str | None = None) -> Any:
    return app.test_cli_runner().invoke(args=["csjd", *args], input=input)


@pytest.mark.parametrize("mode", ["inprocess", "immediate"])
def test_run_refuses_a_mode_without_redis(make_app: MakeApp, mode: str) -> None:
    result = invoke(make_app(CSJD_MODE=mode), "run", "--burst")
    assert result.exit_code == 1
    assert f"CSJD_MODE is {mode!r}" in result.output
    assert "in-process mode runs its workers inside the application process" in result.output


def test_run_burst_executes_the_jobs_in_the_app_context(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    app = make_app("redis-app", GREETING="hej", **redis_config)
    with app.app_context():
        handles = [greet.delay(f"n{i}") for i in range(5)]
        who = whoami.delay()
        assert who.status().state is JobState.QUEUED  # the web process only produces
    result = invoke(app, "run", "--burst", "--workers", "2", "--drain-timeout", "5")
    assert result.exit_code == 0, result.output
    assert "flask csjd run: queues=default processes=1 workers=2" in result.output
    assert "flask.greet" in result.output  # the banner lists the registered types
    assert [h.result(DEADLINE) for h in handles] == [f"hello n{i}" for i in range(5)]
    seen = who.result(DEADLINE)
    assert (seen["app"], seen["greeting"]) == ("redis-app", "hej")
    assert seen["thread"].startswith("csjd-worker")


def test_run_consumes_only_the_given_queues(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    app = make_app(**redis_config, CSJD_QUEUES="default,emails")
    with app.app_context():
        on_default = greet.delay("d")
        on_emails = greet.apply_async(args=["e"], queue="emails")
    result = invoke(app, "run", "--burst", "--queues", "emails")
    assert result.exit_code == 0, result.output
    assert on_emails.result(DEADLINE) == "hello e"
    assert on_default.status().state is JobState.QUEUED


def test_run_needs_an_import_string_to_start_child_processes(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    result = invoke(make_app(**redis_config), "run", "--burst", "--processes", "2")
    assert result.exit_code == 1
    assert "flask --app module:create_app csjd run" in result.output


def test_child_command_uses_the_app_import_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASK_APP", raising=False)
    given = ScriptInfo(app_import_path="myproject:create_app()")
    assert _child_command(given, "INFO", "json", needed=True) == [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "myproject:create_app()",
        "csjd",
        "run",
        "--log-level",
        "INFO",
        "--log-format",
        "json",
    ]
    discovered = ScriptInfo()  # `flask csjd run` next to a wsgi.py / app.py
    assert "--app" not in _child_command(discovered, "DEBUG", "text", needed=True)
    monkeypatch.setenv("FLASK_APP", "from_env:app")
    assert _child_command(discovered, "INFO", "text", needed=True)[3:5] == [
        "--app",
        "from_env:app",
    ]


def test_stats(make_app: MakeApp, redis_config: dict[str, Any]) -> None:
    app = make_app(**redis_config)
    with app.app_context():
        greet.delay("a")
        greet.apply_async(args=["b"], countdown=3600)
    result = invoke(app, "stats", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["default"]["unfinished"] == 2
    assert figures["default"]["scheduled"] == 1
    text = invoke(app, "stats")
    assert "queue default:" in text.output and "unfinished=2" in text.output


def test_stats_and_dead_refuse_a_mode_without_redis(make_app: MakeApp) -> None:
    app = make_app(CSJD_MODE="inprocess")
    for args in (["stats"], ["dead", "list"], ["dead", "purge", "--yes"]):
        result = invoke(app, *args)
        assert result.exit_code == 1
        assert f"flask csjd {' '.join(args[:2])} works on Redis queues" in result.output
        assert "CSJD_MODE is 'inprocess'" in result.output
    for args in (["dead", "--help"], ["dead", "list", "--help"]):  # help is always there
        shown = invoke(app, *args)
        assert shown.exit_code == 0, shown.output
        assert "Usage:" in shown.output


def test_dead_letters_list_show_requeue_purge(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    app = make_app(**redis_config)
    with app.app_context():
        handle = fails.delay()
    assert invoke(app, "run", "--burst").exit_code == 0
    assert handle.status().state is JobState.FAILED

    listing = invoke(app, "dead", "list")
    assert listing.exit_code == 0, listing.output
    assert "flask.fails" in listing.output and "bad input" in listing.output
    entry_id = listing.output.split()[0]

    shown = invoke(app, "dead", "show", entry_id)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["job_id"] == handle.id
    assert invoke(app, "dead", "show", "0-1").exit_code == 1

    aborted = invoke(app, "dead", "requeue", entry_id, input="n\n")
    assert aborted.exit_code == 1 and "requeue 1 dead letter(s)?" in aborted.output
    requeued = invoke(app, "dead", "requeue", entry_id, "--yes")
    assert "requeued 1 of 1" in requeued.output
    assert invoke(app, "run", "--burst").exit_code == 0  # fails again: a dead letter again
    assert "purged 1" in invoke(app, "dead", "purge", "--yes").output
    assert invoke(app, "dead", "list").output.strip() == "no dead letters in queue default"
    # Nothing to purge: said so, no question asked (no --yes, no input given).
    empty = invoke(app, "dead", "purge")
    assert (empty.exit_code, empty.output.strip()) == (
        0,
        "no dead letters to purge in queue default",
    )


def test_stats_and_dead_commands_close_their_connections(
    make_app: MakeApp, redis_config: dict[str, Any], redis_client: Any
) -> None:
    app = make_app(**redis_config)

    def clients() -> int:
        return int(redis_client.info("clients")["connected_clients"])

    before = clients()
    # Each command closes its connections itself: the collector (off here) may run much later.
    gc.disable()
    try:
        for args in (
            ["stats"],
            ["dead", "list"],
            ["dead", "show", "0-1"],
            ["dead", "requeue", "--all", "--yes"],
            ["dead", "purge", "--yes"],
        ):
            invoke(app, *args)
        wait_until(lambda: clients() == before, DEADLINE, message=f"{clients()} vs {before}")
    finally:
        gc.enable()


def _store_with_jobs(path: Path) -> None:
    with FileJobStore(str(path)) as store:
        store.enqueue(
            [
                Job("j-greet", "flask.greet", {"args": ["store"], "kwargs": {}}),
                Job("j-who", "flask.whoami", {"args": [], "kwargs": {}}),
            ]
        )


def test_replay_lists_exports_and_runs_a_store(make_app: MakeApp, tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    _store_with_jobs(path)
    app = make_app(CSJD_MODE="inprocess", CSJD_STORE_PATH=str(path))

    listing = invoke(app, "replay")  # PATH defaults to CSJD_STORE_PATH
    assert listing.exit_code == 0, listing.output
    assert "2 unfinished jobs" in listing.output and "j-greet" in listing.output

    exported = invoke(app, "replay", str(path), "--export")
    rows = [json.loads(line) for line in exported.output.splitlines()]
    assert sorted(row["id"] for row in rows) == ["j-greet", "j-who"]

    ran = invoke(app, "replay", "--run")
    assert ran.exit_code == 0, ran.output
    assert "ran 2 jobs: 2 succeeded" in ran.output
    assert "0 unfinished jobs" in invoke(app, "replay").output


def test_replay_into_redis_then_run(
    make_app: MakeApp, redis_config: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "jobs.json"
    _store_with_jobs(path)
    app = make_app(**redis_config, CSJD_STORE_PATH=str(path))
    moved = invoke(app, "replay", "--into-redis")
    assert moved.exit_code == 0, moved.output
    assert "moved 2 jobs into Redis (0 were already there)" in moved.output
    assert invoke(app, "run", "--burst").exit_code == 0
    assert csjd.status("j-greet", app=app).result == "hello store"
    assert csjd.status("j-who", app=app).result["app"] == "flask-test"


def test_replay_usage_errors(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(CSJD_MODE="inprocess")
    assert "give a store PATH or set CSJD_STORE_PATH" in invoke(app, "replay").output
    both = invoke(app, "replay", str(tmp_path / "x"), "--run", "--export")
    assert both.exit_code == 2 and "at most one of" in both.output
    missing = invoke(app, "replay", str(tmp_path / "none.json"))
    assert missing.exit_code == 1 and "no job store at" in missing.output
    _store_with_jobs(tmp_path / "jobs.json")
    into = invoke(app, "replay", str(tmp_path / "jobs.json"), "--into-redis")
    assert into.exit_code == 1 and "CSJD_MODE is 'inprocess'" in into.output


def test_the_csjd_group_needs_init_app() -> None:
    from csjd_flask.cli import csjd_group  # noqa: PLC0415

    app = Flask("no-extension")
    app.cli.add_command(csjd_group)  # added by hand, without init_app
    result = invoke(app, "stats")
    assert result.exit_code == 1
    assert "Flask app 'no-extension' is not initialised with CSJD" in result.output


def test_cancel(make_app: MakeApp, redis_config: dict[str, Any]) -> None:
    """``flask csjd cancel`` prints what ``csjd cancel`` prints (tests/ops/test_cancel_cli.py)."""
    app = make_app(**redis_config)
    with app.app_context():
        first = greet.delay("a")
        second = greet.delay("b")
        third = greet.apply_async(args=["c"], countdown=3600)
        kept = whoami.delay()
    done = invoke(app, "cancel", first.id)
    assert (done.exit_code, done.output.splitlines()) == (0, [f"cancelled {first.id}"])
    again = invoke(app, "cancel", first.id, "--queue", "default")
    assert again.output.splitlines() == [f"not cancelled {first.id}: it had already ended"]
    missing = invoke(app, "cancel", "nobody")
    assert missing.exit_code == 1 and "no job nobody" in missing.output
    aborted = invoke(app, "cancel", "--type", "flask.greet", input="n\n")
    assert aborted.exit_code == 1
    assert "cancel 2 waiting job(s) of type flask.greet? [y/N]" in aborted.output
    bulk = invoke(app, "cancel", "--type", "flask.greet", "--yes")
    assert bulk.output.splitlines() == ["cancelled 2 waiting job(s) of type flask.greet"]
    assert second.status().state is third.status().state is JobState.CANCELLED
    with app.app_context():
        assert csjd.cancel(kept.id) is True  # the extension's own method
    assert kept.status().state is JobState.CANCELLED
    usage = invoke(app, "cancel")
    assert usage.exit_code == 2


def test_cancel_refuses_a_mode_a_command_cannot_reach(make_app: MakeApp) -> None:
    app = make_app(CSJD_MODE="inprocess")
    result = invoke(app, "cancel", "x")
    assert result.exit_code == 1
    assert "own memory" in result.output
