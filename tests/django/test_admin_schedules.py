"""The dashboard's Schedules section: its rows, and Pause / Resume / Run now (POST, CSRF,
the manage permission, a message after the redirect, a log line)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse
from factories import StaffFactory

import csjd_django as csjd
from csjd_django.models import MANAGE_PERMISSION, VIEW_PERMISSION
from testapp import tasks

pytestmark = pytest.mark.django_db

ADDER = {"task": "testapp.tasks.add", "schedule": "30 3 * * *", "kwargs": {"a": 2, "b": 3}}
ADDER_ROW = 'tr class="csjd-schedule" data-schedule="adder"'


def dashboard_url() -> str:
    return reverse("admin:csjd_django_dashboard_changelist")


def action_url(action: str) -> str:
    return reverse(f"admin:csjd_django_dashboard_schedule_{action}")


@pytest.fixture
def adder(redis_mode: Any) -> Iterator[None]:
    """Redis mode with one ``CSJD_SCHEDULE`` schedule, "adder"."""
    with override_settings(CSJD_SCHEDULE={"adder": ADDER}):
        yield


@pytest.fixture
def manager() -> Any:
    return StaffFactory(permissions=[VIEW_PERMISSION, MANAGE_PERMISSION])


def paused() -> bool:
    state = csjd.app.dispatcher.schedule_state("adder", "default")
    return state is not None and state.paused


def test_the_section_lists_each_schedule_with_buttons_for_managers(
    client: Client, manager: Any, adder: None
) -> None:
    client.force_login(manager)
    page = client.get(dashboard_url()).content.decode()
    assert 'id="csjd-schedules"' in page and "Schedules (1)" in page
    assert ADDER_ROW in page
    assert "30 3 * * * (UTC)" in page
    assert "django.tasks:testapp.tasks.add on queue default" in page
    assert " 03:30:00 UTC</time>" in page  # in UTC whatever the project's TIME_ZONE
    assert "not ticked yet" in page
    assert 'aria-label="Pause schedule adder"' in page
    assert 'aria-label="Run schedule adder now"' in page
    assert "Resume schedule" not in page


def test_no_section_without_schedules(client: Client, manager: Any, redis_mode: Any) -> None:
    client.force_login(manager)
    assert 'id="csjd-schedules"' not in client.get(dashboard_url()).content.decode()


def test_pause_then_resume_with_messages_and_log_lines(
    client: Client, manager: Any, adder: None, caplog: pytest.LogCaptureFixture
) -> None:
    client.force_login(manager)
    caplog.set_level(logging.INFO, logger="csjd_core.dashboard")

    response = client.post(action_url("pause"), {"name": "adder"}, follow=True)
    assert response.redirect_chain == [(dashboard_url(), 302)]
    page = response.content.decode()
    assert "Schedule adder paused." in page
    assert 'aria-label="Resume schedule adder"' in page and "Pause schedule" not in page
    assert paused()

    response = client.post(action_url("resume"), {"name": "adder"}, follow=True)
    assert "Schedule adder resumed." in response.content.decode()
    assert not paused()
    lines = [r.getMessage() for r in caplog.records if r.name == "csjd_core.dashboard"]
    user = manager.get_username()
    assert f"schedule paused name=adder user={user}" in lines
    assert f"schedule resumed name=adder user={user}" in lines


def test_run_now_enqueues_a_tasks_run(client: Client, manager: Any, adder: None) -> None:
    client.force_login(manager)
    response = client.post(action_url("run"), {"name": "adder"}, follow=True)
    page = response.content.decode()
    assert "Schedule adder: a run was enqueued now (periodic:adder:manual-" in page
    job_id = "periodic:adder:manual-" + page.split("periodic:adder:manual-", 1)[1].split(")")[0]
    call_command("csjd_worker", "--burst")  # a ticking worker records the run's outcome
    assert tasks.add.get_result(job_id).return_value == 5
    page = client.get(dashboard_url()).content.decode()
    assert f"<code>{job_id}</code>" in page  # its last enqueued run
    assert re.search(r"succeeded at <time datetime=\"[^\"]+\">[-0-9: ]+ UTC</time>", page), page
    state = csjd.app.dispatcher.schedule_state("adder", "default")
    assert state is not None and state.manual == 1


def test_viewers_see_no_buttons_and_get_403(client: Client, adder: None) -> None:
    client.force_login(StaffFactory(permissions=[VIEW_PERMISSION]))
    page = client.get(dashboard_url()).content.decode()
    assert ADDER_ROW in page and "Pause schedule" not in page
    for action in ("pause", "resume", "run"):
        assert client.post(action_url(action), {"name": "adder"}).status_code == 403
    assert not paused()


def test_actions_need_post_and_the_csrf_token(manager: Any, adder: None) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    assert client.get(action_url("pause")).status_code == 405
    assert client.post(action_url("pause"), {"name": "adder"}).status_code == 403
    assert not paused()


def test_unknown_or_missing_schedule_names_are_400(
    client: Client, manager: Any, adder: None
) -> None:
    client.force_login(manager)
    assert client.post(action_url("pause"), {"name": "nope"}).status_code == 400
    assert client.post(action_url("run"), {}).status_code == 400


def test_redis_unavailable_is_a_message_not_a_crash(
    client: Client, manager: Any, adder: None
) -> None:
    client.force_login(manager)
    with override_settings(CSJD_REDIS_URL="redis://127.0.0.1:1/0", CSJD_SCHEDULE={"adder": ADDER}):
        page = client.get(dashboard_url()).content.decode()
        assert "is unavailable" in page  # the page's error; the schedules are not tried again
        assert 'id="csjd-schedules"' not in page
        response = client.post(action_url("pause"), {"name": "adder"}, follow=True)
        assert "Schedule adder was not changed" in response.content.decode()


def test_in_process_memory_says_the_figures_are_this_processs(client: Client, manager: Any) -> None:
    client.force_login(manager)
    with override_settings(CSJD_MODE="inprocess", CSJD_SCHEDULE={"adder": ADDER}):
        page = client.get(dashboard_url()).content.decode()
        assert ADDER_ROW in page
        assert "each web process ticks its own schedules" in page
        response = client.post(action_url("pause"), {"name": "adder"}, follow=True)
        assert "Schedule adder paused." in response.content.decode()
        assert paused()
