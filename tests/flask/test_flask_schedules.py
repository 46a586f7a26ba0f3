"""Periodic jobs in Flask: ``@csjd.job(schedule=...)`` on the extension reaches the core `App`
of every Flask app it is initialised on; ``flask csjd schedule`` lists, pauses, resumes and
runs; ``flask csjd run`` ticks unless ``--no-schedule``.

The jobs here are on an extension of their own, so that no other test's app has schedules."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, current_app

from csjd_core import JobState, every
from csjd_core.engine.ticker import Ticker
from csjd_core.periodic import slot_id
from csjd_flask import CSJD

ext = CSJD()
NAME = "digest.hourly"


@ext.job("digest.build", schedule=every(hours=1), schedule_name=NAME, schedule_kwargs={"to": "ops"})
def build_digest(to: str) -> str:
    return f"{current_app.name}:{to}"


MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(name, **config)``: a Flask app initialised with ``ext``."""
    apps: list[Flask] = []

    def build(name: str = "sched-app", **config: Any) -> Flask:
        app = Flask(name)
        app.config.update({"TESTING": True, "CSJD_MODE": "immediate", **config})
        ext.init_app(app)
        apps.append(app)
        return app

    yield build
    for app in apps:
        ext.stop(timeout=2.0, app=app)


def invoke(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["csjd", *args])


def test_schedules_reach_every_apps_core_app_before_and_after_init_app(
    make_app: MakeApp,
) -> None:
    first = make_app("first")
    core = ext.core_app(first)
    assert core.schedules[NAME].job is build_digest
    assert set(ext.schedules) == {NAME}

    @ext.job("digest.late", schedule="0 6 * * 1", timezone="Europe/Paris")
    def late() -> None: ...

    second = make_app("second")
    for app in (first, second):
        schedules = ext.core_app(app).schedules
        assert set(schedules) == {NAME, "digest.late"}
        assert schedules["digest.late"].describe() == "0 6 * * 1 (Europe/Paris)"
    ext._definitions.schedules.pop("digest.late")  # keep the module's extension as it was
    for app in (first, second):
        ext.core_app(app).schedules.pop("digest.late")


def test_bad_or_duplicate_schedules_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match=r"two schedules are named 'digest\.hourly'"):
        ext.job("digest.other", schedule=every(hours=2), schedule_name=NAME)(lambda: None)
    with pytest.raises(ValueError, match="bad cron expression"):
        ext.job("digest.bad", schedule="0 3 * *")(lambda: None)
    with pytest.raises(ValueError, match="timezone needs schedule="):
        ext.job("digest.tz", timezone="Europe/Paris")(lambda: None)
    assert "digest.other" not in ext.jobs and "digest.bad" not in ext.jobs


def test_a_slot_runs_in_the_app_context_of_a_worker(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    app = make_app("digest-app", **redis_config)
    core = ext.core_app(app)
    schedule = core.schedules[NAME]
    now = core.dispatcher.clock()
    ticker = Ticker(core.schedules, core.dispatcher, clock=lambda: now)
    ticker.tick(now)
    slot = schedule.next_slot(now)
    ticker.tick(slot + 1)

    result = invoke(app, "run", "--burst", "--no-schedule")
    assert result.exit_code == 0, result.output
    status = core.status(slot_id(NAME, slot))
    assert status.state is JobState.SUCCEEDED and status.result == "digest-app:ops"


def test_flask_csjd_schedule_lists_pauses_resumes_and_runs(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    app = make_app(**redis_config)
    result = invoke(app, "schedule")
    assert result.exit_code == 0, result.output
    assert f"schedule {NAME}: every 1h job=digest.build queue=default" in result.output
    assert "not ticked yet" in result.output

    assert invoke(app, "schedule", "pause", NAME).output == f"schedule {NAME} paused\n"
    [row] = json.loads(invoke(app, "schedule", "--json").output)
    assert (row["name"], row["state"]["paused"]) == (NAME, True)
    assert invoke(app, "schedule", "resume", NAME).output == f"schedule {NAME} resumed\n"
    [row] = json.loads(invoke(app, "schedule", "--json").output)
    assert row["state"]["paused"] is False

    result = invoke(app, "schedule", "run", NAME)
    assert result.exit_code == 0, result.output
    job_id = result.output.removeprefix("enqueued ").strip()
    assert job_id.startswith(f"periodic:{NAME}:manual-")
    assert invoke(app, "run", "--burst", "--no-schedule").exit_code == 0
    assert ext.status(job_id, app=app).result == "sched-app:ops"

    result = invoke(app, "schedule", "run", "nope")
    assert result.exit_code == 1
    assert f"Error: no schedule named 'nope' (schedules: {NAME})" in result.output


def test_flask_csjd_run_ticks_unless_no_schedule(
    make_app: MakeApp, redis_config: dict[str, Any]
) -> None:
    app = make_app(**redis_config)
    core = ext.core_app(app)

    result = invoke(app, "run", "--burst", "--no-schedule")
    assert result.exit_code == 0, result.output
    assert "schedules=off (--no-schedule)" in result.output
    assert core.dispatcher.schedule_state(NAME, None) is None  # no ticker ever saw it

    result = invoke(app, "run", "--burst")
    assert result.exit_code == 0, result.output
    assert f"schedules={NAME}" in result.output
