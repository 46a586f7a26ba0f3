"""Periodic jobs in Django: ``@csjd.job(schedule=...)``, ``CSJD_SCHEDULE`` for Tasks functions,
their system checks, in-process ticking from the first request, ``manage.py csjd_schedule``
and ``csjd_worker --no-schedule``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

import csjd_django as csjd
from csjd_core import JobState
from csjd_core.engine.ticker import Ticker
from csjd_core.periodic import Schedule, slot_id
from csjd_core.testing import wait_until
from csjd_django.checks import check_settings
from csjd_django.compat import TaskResultStatus, task_finished
from csjd_django.schedules import TaskJobFunction
from testapp import tasks

ADDER = {"task": "testapp.tasks.add", "schedule": {"hours": 1}, "kwargs": {"a": 2, "b": 3}}


@pytest.fixture
def periodic_job() -> Iterator[ModuleType]:
    """``testapp.periodic``'s ``@csjd.job(schedule=every(hours=1))``, in the app for this test."""
    from testapp import periodic  # noqa: PLC0415

    csjd.app.schedules[periodic.NAME] = periodic.SCHEDULE
    periodic.RUNS.clear()
    yield periodic
    csjd.app.schedules.pop(periodic.NAME, None)


def tick_to_next_slot(schedule: Schedule) -> str:
    """Tick ``schedule`` once now (its mark is set) and once just after its next slot, with a
    clock of our own (so nothing depends on waiting an hour); returns the slot's job id."""
    dispatcher = csjd.app.dispatcher
    now = dispatcher.clock()
    ticker = Ticker({schedule.name: schedule}, dispatcher, clock=lambda: now)
    ticker.tick(now)
    slot = schedule.next_slot(now)
    ticker.tick(slot + 1)
    assert ticker.counters.enqueued == 1
    return slot_id(schedule.name, slot)


# -- @csjd.job(schedule=...) ----------------------------------------------------------------
def test_a_scheduled_job_decorator_makes_a_schedule_that_a_worker_runs(
    periodic_job: ModuleType, redis_mode: Any
) -> None:
    schedule = csjd.app.schedules[periodic_job.NAME]
    assert schedule.job is periodic_job.build_report
    assert schedule.describe() == "every 1h"
    job_id = tick_to_next_slot(schedule)
    assert job_id.startswith(f"periodic:{periodic_job.NAME}:")

    call_command("csjd_worker", "--burst", "--no-schedule")

    assert periodic_job.RUNS == ["hourly"]
    status = csjd.status(job_id)
    assert status.state is JobState.SUCCEEDED and status.result == "report:hourly"


# -- CSJD_SCHEDULE: Django Tasks -------------------------------------------------------------
def test_a_task_schedule_enqueues_what_the_tasks_backend_enqueues(redis_mode: Any) -> None:
    with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
        csjd.app.configure_from_settings()
        schedule = csjd.app.schedules["adder"]
        assert isinstance(schedule.job, TaskJobFunction)
        backend = tasks.add.get_backend()
        slot_job = schedule.build("periodic:adder:x")
        enqueued_job = backend.build_job(tasks.add, [], {"a": 2, "b": 3}, job_id="periodic:adder:x")
        assert slot_job.to_dict() == enqueued_job.to_dict()
        assert slot_job.type == "django.tasks:testapp.tasks.add" and slot_job.max_attempts == 2


def test_a_task_schedule_runs_as_a_django_task_with_its_result(redis_mode: Any) -> None:
    finished: list[Any] = []

    def on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
        finished.append(task_result)

    task_finished.connect(on_finished)
    try:
        with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
            csjd.app.configure_from_settings()
            job_id = tick_to_next_slot(csjd.app.schedules["adder"])
            call_command("csjd_worker", "--burst", "--no-schedule")
            result = tasks.add.get_result(job_id)
    finally:
        task_finished.disconnect(on_finished)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert [(r.id, r.status) for r in finished] == [(job_id, TaskResultStatus.SUCCESSFUL)]


def test_setting_schedules_are_replaced_when_the_setting_changes(redis_mode: Any) -> None:
    with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
        csjd.app.configure_from_settings()
        assert "adder" in csjd.app.schedules
    with override_settings(CSJD_SCHEDULE={"adder-2": ADDER}):
        csjd.app.configure_from_settings()
        assert "adder-2" in csjd.app.schedules and "adder" not in csjd.app.schedules
    csjd.app.configure_from_settings()
    assert not {"adder", "adder-2"} & set(csjd.app.schedules)


def test_a_bad_setting_fails_the_first_use_and_installs_nothing() -> None:
    bad = {"adder": ADDER, "broken": {**ADDER, "schedule": "61 * * * *"}}
    with override_settings(CSJD_SCHEDULE=bad):
        with pytest.raises(ValueError, match=r"CSJD_SCHEDULE\['broken'\]: .*bad cron"):
            csjd.app.configure_from_settings()
        assert "adder" not in csjd.app.schedules


# -- system checks ----------------------------------------------------------------------------
def schedule_checks(setting: object) -> dict[str, str]:
    """The csjd.E02x errors for ``setting``: object -> "id: message"."""
    with override_settings(CSJD_SCHEDULE=setting):
        return {
            str(m.obj): f"{m.id}: {m.msg}" for m in check_settings() if m.id.startswith("csjd.E02")
        }


def test_checks_report_each_bad_entry_with_its_id(periodic_job: ModuleType) -> None:
    found = schedule_checks(
        {
            "ok": ADDER,
            "cron": {**ADDER, "schedule": "0 25 * * *"},
            "zone": {**ADDER, "schedule": "0 3 * * *", "timezone": "Mars/Olympus"},
            "period": {**ADDER, "schedule": {"fortnights": 1}},
            "every-tz": {**ADDER, "timezone": "Europe/Paris"},
            "missing": {**ADDER, "task": "testapp.tasks.nope"},
            "not-a-task": {**ADDER, "task": "testapp.periodic.RUNS"},
            "policy": {**ADDER, "catch_up": "sometimes"},
            "running": {**ADDER, "max_running": 0},
            "typo": {**ADDER, "kwarg": {}},
            "args": {**ADDER, "kwargs": {"a": 1, "c": 2}},
            "not-dict": "0 3 * * *",
            periodic_job.NAME: ADDER,
        }
    )
    expected = {
        "cron": ("csjd.E021", "bad cron expression"),
        "zone": ("csjd.E021", "unknown timezone 'Mars/Olympus'"),
        "period": ("csjd.E021", "unknown every() part 'fortnights'"),
        "every-tz": ("csjd.E020", "timezone applies to cron expressions"),
        "missing": ("csjd.E022", "cannot import task 'testapp.tasks.nope'"),
        "not-a-task": ("csjd.E022", "not a function decorated with @task"),
        "policy": ("csjd.E020", "catch_up must be one of"),
        "running": ("csjd.E020", "max_running must be an int >= 1"),
        "typo": ("csjd.E020", "unknown key 'kwarg'"),
        "args": ("csjd.E020", "missing a required argument: 'b'"),
        "not-dict": ("csjd.E020", "an entry must be a dict"),
        periodic_job.NAME: ("csjd.E023", "an @csjd.job(schedule=...) schedule has this name"),
    }
    assert set(found) == {f"CSJD_SCHEDULE[{name!r}]" for name in expected}
    for name, (check_id, text) in expected.items():
        message = found[f"CSJD_SCHEDULE[{name!r}]"]
        assert message.startswith(check_id) and text in message, message


def test_manage_py_check_fails_on_a_bad_schedule() -> None:
    bad = {"adder": {**ADDER, "schedule": "0 3 * *"}}
    with override_settings(CSJD_SCHEDULE=bad), pytest.raises(Exception, match=r"csjd\.E021"):
        call_command("check")
    assert schedule_checks("0 3 * * *") == {
        "CSJD_SCHEDULE": "csjd.E020: must be a dict of schedule name -> entry, got '0 3 * * *'"
    }


def test_in_process_memory_with_schedules_is_warned_about() -> None:
    def warnings() -> list[str]:
        return [m.id for m in check_settings() if m.id.startswith("csjd.W")]

    with override_settings(CSJD_MODE="inprocess"):
        assert warnings() == ["csjd.W001"]
        with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
            assert warnings() == ["csjd.W001", "csjd.W002"]
        with override_settings(CSJD_SCHEDULE={"adder": ADDER}, CSJD_STORE_PATH="unused.log"):
            assert warnings() == []
    with override_settings(CSJD_MODE="immediate", CSJD_SCHEDULE={"adder": ADDER}):
        assert warnings() == []


# -- in-process mode: ticking from the first request -----------------------------------------
@pytest.mark.django_db
def test_in_process_schedules_tick_from_the_first_request_not_in_commands(
    client: Client,
) -> None:
    every_second = {**ADDER, "schedule": {"seconds": 1}}
    with override_settings(CSJD_MODE="inprocess", CSJD_SCHEDULE={"adder": every_second}):
        call_command("csjd_schedule")  # a management command: lists, never starts
        call_command("check")
        assert not csjd.app.dispatcher.started

        client.get("/admin/login/")
        assert csjd.app.dispatcher.started
        state = wait_until(
            lambda: (
                (s := csjd.app.dispatcher.schedule_state("adder", "default"))
                and s.last_outcome == "succeeded"
                and s
            ),
            timeout=5,
            message="a slot of 'adder' ran",
        )
        assert tasks.add.get_result(state.last_outcome_id).return_value == 5


@pytest.mark.django_db
def test_requests_start_nothing_without_schedules_or_outside_in_process_mode(
    client: Client, redis_mode: Any
) -> None:
    with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
        client.get("/admin/login/")
        assert csjd.app.start_in_process() is False  # Redis mode: the workers tick
    with override_settings(CSJD_MODE="inprocess"):
        client.get("/admin/login/")
        assert csjd.app._dispatcher is None  # no schedule: nothing built, nothing started


# -- manage.py csjd_schedule ------------------------------------------------------------------
def test_csjd_schedule_lists_pauses_resumes_and_runs(
    periodic_job: ModuleType, redis_mode: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    name = periodic_job.NAME
    with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
        call_command("csjd_schedule")
        listing = capsys.readouterr().out
        assert f"schedule {name}: every 1h job=report.build" in listing
        assert "schedule adder: every 1h job=django.tasks:testapp.tasks.add" in listing

        call_command("csjd_schedule", "pause", name)
        assert capsys.readouterr().out == f"schedule {name} paused\n"
        call_command("csjd_schedule", "--json")
        rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
        assert rows[name]["state"]["paused"] is True
        assert rows["adder"]["state"] is None

        call_command("csjd_schedule", "resume", name)
        assert capsys.readouterr().out == f"schedule {name} resumed\n"
        assert csjd.app.dispatcher.schedule_state(name, None).paused is False  # type: ignore[union-attr]

        call_command("csjd_schedule", "run", "adder")
        job_id = capsys.readouterr().out.removeprefix("enqueued ").strip()
        assert job_id.startswith("periodic:adder:manual-")
        call_command("csjd_worker", "--burst", "--no-schedule")
        assert tasks.add.get_result(job_id).return_value == 5


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["pause"], "pause takes the name of a schedule"),
        (["run", "nope"], "no schedule named 'nope' (schedules: adder)"),
        (["--json", "run", "adder"], "--json is for the listing"),
    ],
)
def test_csjd_schedule_usage_errors(argv: list[str], error: str, redis_mode: Any) -> None:
    with (
        override_settings(CSJD_SCHEDULE={"adder": ADDER}),
        pytest.raises(CommandError, match=re.escape(error)),
    ):
        call_command("csjd_schedule", *argv)


def test_csjd_schedule_refuses_actions_on_another_processs_memory() -> None:
    with override_settings(CSJD_MODE="inprocess", CSJD_SCHEDULE={"adder": ADDER}):
        with pytest.raises(CommandError, match="admin dashboard"):
            call_command("csjd_schedule", "pause", "adder")
        assert not csjd.app.dispatcher.started


# -- csjd_worker --no-schedule ----------------------------------------------------------------
def test_csjd_worker_ticks_unless_no_schedule(
    periodic_job: ModuleType, redis_mode: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    schedule = periodic_job.SCHEDULE
    dispatcher = csjd.app.dispatcher
    now = dispatcher.clock()
    # The schedule's mark two hours back: any ticker catches up its latest slot at once.
    Ticker({schedule.name: schedule}, dispatcher).tick(now - 7200)

    call_command("csjd_worker", "--burst", "--no-schedule")
    assert "schedules=off (--no-schedule)" in capsys.readouterr().err
    state = dispatcher.schedule_state(schedule.name, None)
    assert state is not None and state.enqueued == 0 and periodic_job.RUNS == []

    call_command("csjd_worker", "--burst")
    assert f"schedules={schedule.name}" in capsys.readouterr().err


def test_a_worker_without_checks_reports_a_bad_setting_as_a_command_error(
    redis_mode: Any,
) -> None:
    bad = {"adder": {**ADDER, "schedule": "61 * * * *"}}
    with override_settings(CSJD_SCHEDULE=bad), pytest.raises(CommandError, match="CSJD_SCHEDULE"):
        call_command("csjd_worker", "--burst", skip_checks=True)
