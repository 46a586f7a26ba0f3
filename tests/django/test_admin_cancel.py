"""The dashboard's Cancel action (issue 18): POST a job id (and its queue in Redis mode), the
manage permission, the CSRF token, a message after the redirect and a log line naming the
user; in Redis mode and in process."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from factories import StaffFactory

from csjd_core import JobState
from csjd_django.models import MANAGE_PERMISSION, VIEW_PERMISSION
from testapp import jobs

pytestmark = pytest.mark.django_db


def dashboard_url() -> str:
    return reverse("admin:csjd_django_dashboard_changelist")


def cancel_url() -> str:
    return reverse("admin:csjd_django_dashboard_cancel")


@pytest.fixture
def manager() -> Any:
    return StaffFactory(permissions=[VIEW_PERMISSION, MANAGE_PERMISSION])


def test_cancel_a_queued_job_then_again_with_messages_and_log_lines(
    client: Client, manager: Any, redis_mode: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client.force_login(manager)
    caplog.set_level(logging.INFO, logger="csjd_core.dashboard")
    page = client.get(dashboard_url()).content.decode()
    assert 'id="csjd-cancel"' in page and '<option value="default">default</option>' in page
    handle = jobs.order_number.delay(7)

    response = client.post(cancel_url(), {"job_id": handle.id, "queue": "default"}, follow=True)
    assert response.redirect_chain == [(dashboard_url(), 302)]
    assert f"Job {handle.id} cancelled: it will not run." in response.content.decode()
    assert handle.status().state is JobState.CANCELLED

    again = client.post(cancel_url(), {"job_id": handle.id}, follow=True)
    assert f"Job {handle.id} had already ended: nothing changed." in again.content.decode()
    missing = client.post(cancel_url(), {"job_id": "<b>nobody</b>"}, follow=True).content
    assert "No job &lt;b&gt;nobody&lt;/b&gt; (never submitted" in missing.decode()  # escaped
    lines = [r.getMessage() for r in caplog.records if r.name == "csjd_core.dashboard"]
    user = manager.get_username()
    assert f"job cancel id={handle.id!r} queue=default user={user} verdict=cancelled" in lines
    assert f"job cancel id={handle.id!r} queue=None user={user} verdict=ended" in lines


@pytest.mark.django_db(transaction=True)
def test_cancel_in_process_acts_on_this_web_process(client: Client, manager: Any) -> None:
    client.force_login(manager)
    with override_settings(CSJD_MODE="inprocess"):
        handle = jobs.order_number.apply_async(args=[1], countdown=3600)
        page = client.get(dashboard_url()).content.decode()
        assert "only this web process's jobs can be cancelled here" in page
        assert 'id="csjd-cancel-queue"' not in page  # one memory: no queue to choose
        response = client.post(cancel_url(), {"job_id": handle.id}, follow=True)
        assert f"Job {handle.id} cancelled" in response.content.decode()
        assert handle.status().state is JobState.CANCELLED
        assert client.post(cancel_url(), {"job_id": "x", "queue": "default"}).status_code == 400


def test_viewers_see_no_form_and_get_403(client: Client, redis_mode: Any) -> None:
    client.force_login(StaffFactory(permissions=[VIEW_PERMISSION]))
    handle = jobs.order_number.delay(2)
    assert 'id="csjd-cancel"' not in client.get(dashboard_url()).content.decode()
    assert client.post(cancel_url(), {"job_id": handle.id}).status_code == 403
    client.force_login(StaffFactory(permissions=[MANAGE_PERMISSION]))  # manage without view
    assert client.post(cancel_url(), {"job_id": handle.id}).status_code == 403
    assert handle.status().state is JobState.QUEUED


def test_cancel_needs_post_and_the_csrf_token(manager: Any, redis_mode: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    handle = jobs.order_number.delay(3)
    assert client.get(cancel_url()).status_code == 405
    assert client.post(cancel_url(), {"job_id": handle.id}).status_code == 403
    token = client.get(dashboard_url()).context["csrf_token"]
    response = client.post(cancel_url(), {"job_id": handle.id, "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
    assert handle.status().state is JobState.CANCELLED


def test_bad_references_are_400(client: Client, manager: Any, redis_mode: Any) -> None:
    client.force_login(manager)
    assert client.post(cancel_url(), {}).status_code == 400
    assert client.post(cancel_url(), {"job_id": "x", "queue": "nope"}).status_code == 400


def test_redis_unavailable_is_a_message_not_a_crash(
    client: Client, manager: Any, redis_mode: Any
) -> None:
    client.force_login(manager)
    with override_settings(CSJD_REDIS_URL="redis://127.0.0.1:1/0"):
        response = client.post(cancel_url(), {"job_id": "x"}, follow=True)
        assert "Job x was not cancelled: " in response.content.decode()
