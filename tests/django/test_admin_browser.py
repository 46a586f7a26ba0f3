"""The admin dashboard in a real headless Chromium: log in, open it from the admin index, see the
figures and a dead letter, requeue it, then cancel the requeued job with the Cancel button.

The browser is the system's Chromium driven by Playwright (tests/browser.py: without it the test
is skipped locally with the reason, and fails under ``CI=true``).

Playwright's sync API runs an asyncio event loop in this thread while a browser is open, and
Django refuses ORM calls from a thread with a running loop (``SynchronousOnlyOperation``). So the
test does all its database work (users, jobs) before the browser starts and checks Redis, not the
database, while it runs; the live server answers the browser from its own thread, which has no
loop. No ``DJANGO_ALLOW_ASYNC_UNSAFE`` is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM_ARGS, require_chromium
from django.core.management import call_command
from factories import PASSWORD, StaffFactory

import csjd_django as csjd
from csjd_core import JobState
from csjd_core.dashboard import collect_figures, throughput_samples
from csjd_django.models import MANAGE_PERMISSION, VIEW_PERMISSION
from testapp import jobs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture
def chromium() -> str:
    """The system Chromium's path (skipped locally, failed under CI=true, without it)."""
    return require_chromium()


@pytest.fixture
def every_view_samples() -> Iterator[None]:
    """Record a throughput sample on every page view (the default keeps one a second)."""
    throughput_samples.clear()
    throughput_samples.min_interval = 0.0
    yield
    throughput_samples.min_interval = 1.0
    throughput_samples.clear()


def test_staff_logs_in_sees_the_dashboard_and_requeues_a_dead_letter(
    chromium: str,
    live_server: Any,
    redis_mode: Any,
    every_view_samples: None,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    # -- everything that touches the database, before the browser's event loop runs ----------
    user = StaffFactory(permissions=[VIEW_PERMISSION, MANAGE_PERMISSION])
    jobs.always_fails.delay()  # its error holds "<script>alert(1)</script>"
    call_command("csjd_worker", "--burst")
    [letter] = csjd.app.dispatcher.dead_letters()  # type: ignore[attr-defined]
    collect_figures(csjd.app)  # a first throughput sample; the jobs below make a second one differ
    for n in range(5):
        jobs.flaky.delay(n % 2)
    call_command("csjd_worker", "--burst")
    collect_figures(csjd.app)
    shots = Path(os.environ.get("CSJD_TEST_SCREENSHOTS") or tmp_path)
    backend = csjd.app.dispatcher.backend  # type: ignore[attr-defined]
    keys = backend.keys_for(None)

    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

            # Log in through the admin's own form.
            page.goto(live_server.url + "/admin/")
            assert "/admin/login/" in page.url
            page.fill("#id_username", user.username)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(live_server.url + "/admin/")

            # Open the dashboard from the admin index.
            page.get_by_role("link", name="Jobs dashboard").click()
            page.wait_for_url("**/admin/csjd_django/dashboard/")
            assert page.locator("h1").inner_text() == "CSJD jobs"
            assert "Redis mode" in page.locator("#csjd-scope").inner_text()
            counters = page.locator("#csjd-counters").inner_text()
            assert "Failed" in counters and "Processed" in counters
            assert page.locator("#csjd-queues tbody tr").count() == 1
            assert page.locator("#csjd-consumers tbody tr").count() >= 1
            assert page.locator("#csjd-throughput svg polyline").count() == 2
            assert "Dead letters (1)" in page.locator("#csjd-dead-letters caption").text_content()
            # The error's markup is shown as text, never run.
            error = page.locator(".csjd-dead-letter .csjd-error").inner_text()
            assert "bad input <script>alert(1)</script>" in error
            page.screenshot(path=str(shots / "csjd-dashboard.png"), full_page=True)

            # Requeue it.
            page.get_by_role("button", name=f"Requeue dead letter {letter.entry_id}").click()
            page.wait_for_url("**/admin/csjd_django/dashboard/")
            message = page.locator("ul.messagelist li.success").inner_text()
            assert f"Dead letter {letter.entry_id} of queue default requeued" in message
            assert "No dead letters." in page.locator("#csjd-dead-letters").inner_text()
            page.screenshot(path=str(shots / "csjd-dashboard-requeued.png"), full_page=True)

            # Cancel the requeued job (queued: it will never run).
            page.fill("#csjd-cancel-job-id", letter.job_id)
            page.select_option("#csjd-cancel-queue", "default")
            page.get_by_role("button", name="Cancel the job with this id").click()
            page.wait_for_url("**/admin/csjd_django/dashboard/")
            message = page.locator("ul.messagelist li.success").inner_text()
            assert f"Job {letter.job_id} cancelled: it will not run." in message
            page.screenshot(path=str(shots / "csjd-dashboard-cancelled.png"), full_page=True)
        finally:
            browser.close()

    assert dialogs == []  # no injected script ever ran
    assert redis_mode.xlen(keys.dead) == 0
    assert redis_mode.xlen(keys.stream) == 0  # back on its queue, then cancelled: gone
    status = csjd.status(letter.job_id)
    assert (status.state, status.cancel_reason) == (JobState.CANCELLED, "cancelled")
