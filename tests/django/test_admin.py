"""The admin dashboard: permissions, CSRF, escaping, payloads, dead-letter actions, modes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse
from factories import PASSWORD, StaffFactory, UserFactory

import csjd_django as csjd
from csjd_core import JobState
from csjd_core.dashboard import throughput_samples
from csjd_core.throughput import Rate, Sample, ThroughputSamples, throughput_svg
from csjd_django.models import MANAGE_PERMISSION, VIEW_PERMISSION
from testapp import jobs

pytestmark = pytest.mark.django_db

SCRIPT = "<script>alert(1)</script>"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
PAYLOAD_MARKER = "<b>payload-marker</b>"


def dashboard_url() -> str:
    return reverse("admin:csjd_django_dashboard_changelist")


def action_url(action: str) -> str:
    name = "requeue" if action == "requeue" else "delete_dead_letter"
    return reverse(f"admin:csjd_django_dashboard_{name}")


@pytest.fixture
def viewer() -> Any:
    return StaffFactory(permissions=[VIEW_PERMISSION])


@pytest.fixture
def manager() -> Any:
    return StaffFactory(permissions=[VIEW_PERMISSION, MANAGE_PERMISSION])


def dead_letters() -> list[Any]:
    return csjd.app.dispatcher.dead_letters()  # type: ignore[attr-defined, no-any-return]


def make_dead_letters() -> list[Any]:
    """Two real dead letters, made by a real worker: one whose error holds a <script>, one whose
    payload holds markup."""
    jobs.always_fails.delay()  # raises permanent(ValueError("bad input <script>...")) at once
    jobs.flaky.apply_async(args=[PAYLOAD_MARKER], max_attempts=1)  # int <= str: a TypeError
    call_command("csjd_worker", "--burst")
    letters = dead_letters()
    assert len(letters) == 2
    return letters


def dead_key(redis_client: Any) -> str:
    return csjd.app.dispatcher.backend.keys_for(None).dead  # type: ignore[attr-defined, no-any-return]


# -- who may see it -------------------------------------------------------------------------
def test_anonymous_users_are_sent_to_the_login_page(client: Client) -> None:
    response = client.get(dashboard_url())
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login") + "?next=")


def test_non_staff_users_are_sent_to_the_login_page_even_with_the_permission(
    client: Client,
) -> None:
    client.force_login(UserFactory(permissions=[VIEW_PERMISSION]))
    response = client.get(dashboard_url())
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_the_permission_get_403_and_no_link(client: Client) -> None:
    client.force_login(StaffFactory())
    assert client.get(dashboard_url()).status_code == 403
    assert dashboard_url() not in client.get(reverse("admin:index")).content.decode()


def test_staff_with_the_permission_see_it_linked_from_the_admin_index(
    client: Client, viewer: Any
) -> None:
    client.force_login(viewer)
    index = client.get(reverse("admin:index")).content.decode()
    assert f'href="{dashboard_url()}"' in index
    assert "Jobs dashboard" in index
    response = client.get(dashboard_url())
    assert response.status_code == 200
    assert "CSJD jobs" in response.content.decode()


def test_login_through_the_admin_form_then_the_dashboard(client: Client, viewer: Any) -> None:
    login = reverse("admin:login") + "?next=" + dashboard_url()
    response = client.post(
        login, {"username": viewer.username, "password": PASSWORD, "next": dashboard_url()}
    )
    assert response.status_code == 302
    assert response["Location"] == dashboard_url()
    assert client.get(dashboard_url()).status_code == 200


def test_the_permissions_exist_and_the_model_has_no_pending_migration() -> None:
    codenames = set(
        Permission.objects.filter(content_type__app_label="csjd_django").values_list(
            "codename", flat=True
        )
    )
    assert codenames == {"view_csjd_dashboard", "manage_dead_letters"}
    call_command("makemigrations", "csjd_django", "--check", "--dry-run", verbosity=0)


# -- modes ----------------------------------------------------------------------------------
def test_immediate_mode_says_it_shows_this_processs_figures(client: Client, viewer: Any) -> None:
    jobs.flaky.delay(0)
    client.force_login(viewer)
    page = client.get(dashboard_url()).content.decode()
    assert "Immediate mode" in page
    assert "this process&#x27;s figures" in page
    assert re.search(r"Succeeded</th>\s*<td class=\"num\">1</td>", page)


@pytest.mark.django_db(transaction=True)
def test_inprocess_mode_says_it_shows_this_web_process_only(client: Client) -> None:
    client.force_login(StaffFactory(permissions=[VIEW_PERMISSION]))
    with override_settings(CSJD_MODE="inprocess", CSJD_WORKERS=2):
        page = client.get(dashboard_url()).content.decode()
        assert "figures of this web process only" in page
        assert "not started" in page  # the page does not start workers
        assert not csjd.app.dispatcher.started
        jobs.flaky.delay(0)
        assert csjd.wait(timeout=10)
        page = client.get(dashboard_url()).content.decode()
        assert re.search(r"Processed \(attempts finished\)</th>\s*<td class=\"num\">1</td>", page)
        assert "2 threads" in page
        assert "Dead letters are kept in Redis mode" in page


# -- Redis mode: figures, escaping, payloads -----------------------------------------------
def test_redis_mode_shows_queues_consumers_counters_and_escaped_errors(
    client: Client, viewer: Any, redis_mode: Any
) -> None:
    make_dead_letters()
    client.force_login(viewer)
    page = client.get(dashboard_url()).content.decode()
    assert "Redis mode: cluster-wide figures" in page
    assert 'id="csjd-queues"' in page and 'id="csjd-consumers"' in page
    assert re.search(r"Failed</th>\s*<td class=\"num\">2</td>", page)  # cluster-wide
    assert "Dead letters (2)" in page
    backend = csjd.app.dispatcher.backend
    [worker] = redis_mode.xinfo_consumers(backend.keys_for(None).stream, backend.config.group)
    assert f"<td>{worker['name'].decode()}</td>" in page  # the burst worker, stopped by now
    assert "expired" in page  # its heartbeat
    assert SCRIPT not in page
    assert ESCAPED_SCRIPT in page  # the error, escaped
    assert "always.fails" in page


def test_payloads_are_hidden_unless_asked_for_and_then_escaped(
    client: Client, viewer: Any, redis_mode: Any
) -> None:
    make_dead_letters()
    client.force_login(viewer)
    hidden = client.get(dashboard_url()).content.decode()
    assert "payload-marker" not in hidden
    assert "Show payloads" in hidden
    shown = client.get(dashboard_url() + "?payload=1").content.decode()
    assert PAYLOAD_MARKER not in shown
    assert "&lt;b&gt;payload-marker&lt;/b&gt;" in shown
    assert "Hide payloads" in shown


def test_redis_unavailable_is_reported_on_the_page(client: Client, viewer: Any) -> None:
    client.force_login(viewer)
    with override_settings(CSJD_MODE="redis", CSJD_REDIS_URL="redis://127.0.0.1:1/0"):
        response = client.get(dashboard_url())
    assert response.status_code == 200
    assert "is unavailable" in response.content.decode()


def test_bad_settings_are_reported_on_the_page(client: Client, viewer: Any) -> None:
    client.force_login(viewer)
    with override_settings(CSJD_WORKERS=0):
        response = client.get(dashboard_url())
    assert response.status_code == 200
    assert "CSJD settings are invalid" in response.content.decode()


# -- actions ---------------------------------------------------------------------------------
def test_get_on_the_action_urls_is_405(client: Client, manager: Any) -> None:
    client.force_login(manager)
    for action in ("requeue", "delete"):
        assert client.get(action_url(action)).status_code == 405


def test_actions_need_the_csrf_token(manager: Any, redis_mode: Any) -> None:
    letter = make_dead_letters()[0]
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    form = {"queue": letter.queue, "entry_id": letter.entry_id}
    for action in ("requeue", "delete"):
        assert client.post(action_url(action), form).status_code == 403
    assert len(dead_letters()) == 2  # nothing happened
    page = client.get(dashboard_url())  # sets the CSRF cookie, as a browser gets it
    token = page.context["csrf_token"]
    response = client.post(action_url("requeue"), {**form, "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
    assert len(dead_letters()) == 1


def test_requeue_puts_the_job_back_on_its_queue(
    client: Client, manager: Any, redis_mode: Any
) -> None:
    letter = next(d for d in make_dead_letters() if d.type == "always.fails")
    client.force_login(manager)
    response = client.post(
        action_url("requeue"), {"queue": letter.queue, "entry_id": letter.entry_id}, follow=True
    )
    assert response.redirect_chain[-1][0] == dashboard_url()
    assert f"Dead letter {letter.entry_id} of queue default requeued" in response.content.decode()
    assert [d.entry_id for d in dead_letters()] != [] and all(
        d.entry_id != letter.entry_id for d in dead_letters()
    )
    assert csjd.status(letter.job_id).state is JobState.QUEUED
    assert redis_mode.xlen(csjd.app.dispatcher.backend.keys_for(None).stream) == 1


def test_delete_removes_one_dead_letter(client: Client, manager: Any, redis_mode: Any) -> None:
    first, second = make_dead_letters()
    client.force_login(manager)
    response = client.post(
        action_url("delete"), {"queue": first.queue, "entry_id": first.entry_id}, follow=True
    )
    assert f"Dead letter {first.entry_id} of queue default deleted" in response.content.decode()
    assert [d.entry_id for d in dead_letters()] == [second.entry_id]
    assert redis_mode.xlen(dead_key(redis_mode)) == 1
    again = client.post(
        action_url("delete"), {"queue": first.queue, "entry_id": first.entry_id}, follow=True
    )
    assert "is gone" in again.content.decode()


def test_viewers_without_the_manage_permission_see_no_buttons_and_get_403(
    client: Client, viewer: Any, redis_mode: Any
) -> None:
    letter = make_dead_letters()[0]
    client.force_login(viewer)
    page = client.get(dashboard_url()).content.decode()
    assert action_url("requeue") not in page
    response = client.post(
        action_url("requeue"), {"queue": letter.queue, "entry_id": letter.entry_id}
    )
    assert response.status_code == 403
    assert len(dead_letters()) == 2


def test_managers_without_the_view_permission_cannot_act(client: Client, redis_mode: Any) -> None:
    # Was: a staff user with manage_dead_letters alone could delete a dead letter (302).
    letter = make_dead_letters()[0]
    client.force_login(StaffFactory(permissions=[MANAGE_PERMISSION]))
    form = {"queue": letter.queue, "entry_id": letter.entry_id}
    for action in ("requeue", "delete"):
        assert client.post(action_url(action), form).status_code == 403
    assert len(dead_letters()) == 2


def test_a_damaged_dead_letter_is_shown_as_damaged(
    client: Client, viewer: Any, redis_mode: Any
) -> None:
    # Was: a dead letter whose attempts field is not a number made the page answer 500.
    redis_mode.xadd(
        dead_key(redis_mode),
        {"id": "odd", "d": '{"type": "t"}', "error": "boom", "attempts": "many"},
    )
    client.force_login(viewer)
    response = client.get(dashboard_url())
    assert response.status_code == 200
    page = response.content.decode()
    assert "Damaged record:" in page and "attempts is not a number: &#x27;many&#x27;" in page


@pytest.mark.parametrize(
    ("time_zone", "shown"),
    [
        ("UTC", "2026-01-15 05:39:35 UTC"),
        ("America/Chicago", "2026-01-14 23:39:35 CST"),  # Django's default TIME_ZONE
    ],
)
def test_failure_times_name_the_time_zone_they_are_shown_in(
    client: Client, viewer: Any, redis_mode: Any, time_zone: str, shown: str
) -> None:
    # Was: converted to the active time zone by the date filter, then labelled "UTC".
    failed_at = 1768455575_000  # 2026-01-15 05:39:35 UTC, in ms as the scripts write it
    redis_mode.xadd(
        dead_key(redis_mode),
        {"id": "j", "d": '{"type": "t"}', "error": "e", "attempts": 1, "failed_at": failed_at},
    )
    client.force_login(viewer)
    with override_settings(TIME_ZONE=time_zone):
        page = client.get(dashboard_url()).content.decode()
    assert f">{shown}</time>" in page
    assert 'datetime="2026-01-1' in page  # the machine-readable instant, with its offset


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/9?password=SECRET-Q",
        "redis://:SECRET-U@127.0.0.1:1/9",
        "unix:///nowhere/redis.sock?password=SECRET-S",
    ],
)
def test_credentials_in_the_redis_url_never_show(
    client: Client, viewer: Any, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    client.force_login(viewer)
    with override_settings(CSJD_MODE="redis", CSJD_REDIS_URL=url):
        page = client.get(dashboard_url()).content.decode()
        with pytest.raises(CommandError) as stats_error:
            call_command("csjd_stats")
    assert "is unavailable" in page and "***" in page
    for text in (page, str(stats_error.value), caplog.text):
        assert "SECRET" not in text


def test_a_redis_url_that_is_not_text_is_reported_on_the_page(client: Client, viewer: Any) -> None:
    # Was: AttributeError, a 500.
    client.force_login(viewer)
    with override_settings(CSJD_MODE="redis", CSJD_REDIS_URL=123):
        response = client.get(dashboard_url())
    assert response.status_code == 200
    page = response.content.decode()
    assert "CSJD settings are invalid: CSJD_REDIS_URL: RedisConfig.url must be a string" in page


def test_bad_references_are_400(client: Client, manager: Any, redis_mode: Any) -> None:
    client.force_login(manager)
    assert (
        client.post(action_url("requeue"), {"queue": "default", "entry_id": "1-0 OR 1"}).status_code
        == 400
    )
    assert (
        client.post(action_url("delete"), {"queue": "nope", "entry_id": "1-0"}).status_code == 400
    )


def test_actions_outside_redis_mode_explain_why(client: Client, manager: Any) -> None:
    client.force_login(manager)
    response = client.post(
        action_url("requeue"), {"queue": "default", "entry_id": "1-0"}, follow=True
    )
    assert "Dead letters exist in Redis mode only" in response.content.decode()


def test_auto_refresh_is_a_meta_refresh_with_a_bounded_period(client: Client, viewer: Any) -> None:
    client.force_login(viewer)
    page = client.get(dashboard_url() + "?refresh=5").content.decode()
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "Auto-refresh off" in page
    page = client.get(dashboard_url() + "?refresh=1").content.decode()
    assert 'http-equiv="refresh"' not in page


# -- the throughput chart --------------------------------------------------------------------
def test_samples_give_rates_and_survive_counter_resets() -> None:
    samples = ThroughputSamples(size=3, min_interval=1.0)
    for at, processed in ((0, 0), (0.5, 99), (2, 10), (4, 30), (6, 4)):
        samples.record("q", Sample(at, processed, 0))
    assert [s.at for s in samples.samples("q")] == [2, 4, 6]  # too close dropped; bounded
    assert [r.processed for r in samples.rates("q")] == [10.0, 2.0]  # 30 -> 4: a reset
    samples.clear()
    assert samples.rates("q") == []


def test_samples_keep_a_bounded_number_of_sources() -> None:
    samples = ThroughputSamples(max_sources=2, min_interval=0)
    for name in "abc":
        samples.record(name, Sample(1, 1, 0))
    assert samples.samples("a") == [] and samples.samples("c")


def test_the_chart_is_inline_svg_without_scripts() -> None:
    svg = str(throughput_svg([Rate(10, 2.0, 0.5), Rate(12, 4.0, 0.0)], now=12))
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "<script" not in svg and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert "Not enough samples" in str(throughput_svg([], now=0))


def test_the_page_draws_the_chart_after_two_samples(client: Client, viewer: Any) -> None:
    throughput_samples.clear()
    throughput_samples.min_interval = 0.0
    try:
        client.force_login(viewer)
        assert "Not enough samples" in client.get(dashboard_url()).content.decode()
        jobs.flaky.delay(0)
        client.get(dashboard_url())
        page = client.get(dashboard_url()).content.decode()
        assert "<polyline" in page
    finally:
        throughput_samples.min_interval = 1.0
        throughput_samples.clear()


# -- job lookup: status and progress (issue 18) --------------------------------------------


def test_the_job_lookup_shows_a_jobs_progress_escaped(client: Client, viewer: Any) -> None:
    """Django 6.1's TaskResult has no metadata field: progress is read through csjd.status(),
    and the dashboard's lookup shows it (immediate mode: the job ran at enqueue)."""
    handle = jobs.report_progress.delay(SCRIPT)
    client.force_login(viewer)
    page = client.get(dashboard_url(), {"job": handle.id}).content.decode()
    assert 'id="csjd-lookup-state">succeeded<' in page
    assert '<progress max="100" value="75">75%</progress> 75%' in page
    assert "3 of 4" in page
    assert ESCAPED_SCRIPT in page
    assert SCRIPT not in page
    status = csjd.status(handle.id)
    assert status.progress is not None and status.progress.message == f"step 3 {SCRIPT}"


def test_the_job_lookup_says_when_a_job_is_unknown(client: Client, viewer: Any) -> None:
    client.force_login(viewer)
    page = client.get(dashboard_url(), {"job": SCRIPT}).content.decode()
    assert 'id="csjd-lookup-error"' in page
    assert "No such job" in page
    assert SCRIPT not in page


def test_the_job_lookup_shows_a_running_jobs_progress_in_process(
    client: Client, viewer: Any
) -> None:
    with override_settings(CSJD_MODE="inprocess", CSJD_WORKERS=1):
        jobs.PROGRESS_GATE.clear()
        jobs.PROGRESS_REPORTED.clear()
        try:
            handle = jobs.report_progress.delay("held", hold=True)
            assert jobs.PROGRESS_REPORTED.wait(10)
            client.force_login(viewer)
            page = client.get(dashboard_url(), {"job": handle.id}).content.decode()
            assert 'id="csjd-lookup-state">running<' in page
            assert "3 of 4" in page and "step 3 held" in page
        finally:
            jobs.PROGRESS_GATE.set()
        assert csjd.wait(timeout=10)
