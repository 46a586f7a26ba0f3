"""The Flask dashboard in a real headless Chromium, served by a real WSGI server: refused
without the app's permission, then the figures, the chart and an escaped dead letter; requeue
it, then cancel the requeued job with the Cancel button (as tests/django/test_admin_browser.py
does for the admin page).

The browser is the system's Chromium driven by Playwright (tests/browser.py: without it the test
is skipped locally with the reason, and fails under ``CI=true``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM_ARGS, require_chromium
from dashjobs import dash, order, rejects
from flask import Flask, request
from werkzeug.serving import make_server

from csjd_core import JobState
from csjd_core.dashboard import collect_figures, throughput_samples

pytestmark = pytest.mark.timeout(120)

#: The app's own rule, for the test: the dashboard is for requests with this cookie.
ADMIN_COOKIE = {"name": "role", "value": "admin"}


@pytest.fixture
def served_app(redis_config: dict[str, Any]) -> Iterator[tuple[Flask, str]]:
    """A Redis-mode app with the dashboard at /admin/jobs, served on a free local port."""
    app = Flask("dash-browser")
    app.config.update(SECRET_KEY="browser-secret", **redis_config)
    dash.init_app(app)
    blueprint = dash.dashboard_blueprint(
        authorize=lambda: request.cookies.get("role") == "admin",
        user_name=lambda: "browser-admin",
    )
    app.register_blueprint(blueprint, url_prefix="/admin/jobs")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dash-server", daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        dash.stop(timeout=2.0, app=app)


@pytest.fixture
def every_view_samples() -> Iterator[None]:
    """Record a throughput sample on every page view (the default keeps one a second)."""
    throughput_samples.clear()
    throughput_samples.min_interval = 0.0
    yield
    throughput_samples.min_interval = 1.0
    throughput_samples.clear()


def run_workers(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["csjd", "run", "--burst", "--no-schedule"])
    assert result.exit_code == 0, result.output


def test_an_admin_sees_the_dashboard_requeues_a_dead_letter_and_cancels_the_job(
    served_app: tuple[Flask, str],
    every_view_samples: None,
    redis_client: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    chromium = require_chromium()
    app, base = served_app
    core = dash.core_app(app)
    with app.app_context():
        rejects.delay()  # its error holds "<script>alert(1)</script>"
    run_workers(app)
    [letter] = core.dispatcher.dead_letters()  # type: ignore[attr-defined]
    collect_figures(core)  # a first throughput sample; the jobs below make a second one differ
    with app.app_context():
        for n in range(5):
            order.delay(n)
    run_workers(app)
    collect_figures(core)
    keys = core.dispatcher.backend.keys_for(None)  # type: ignore[attr-defined]
    shots = Path(os.environ.get("CSJD_TEST_SCREENSHOTS") or tmp_path)
    url = f"{base}/admin/jobs/"

    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

            # Without the app's permission: 403.
            response = page.goto(url)
            assert response is not None and response.status == 403

            context.add_cookies([{**ADMIN_COOKIE, "url": base}])
            response = page.goto(url)
            assert response is not None and response.status == 200
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
            page.screenshot(path=str(shots / "csjd-flask-dashboard.png"), full_page=True)

            # Requeue it.
            page.get_by_role("button", name=f"Requeue dead letter {letter.entry_id}").click()
            page.wait_for_load_state()
            message = page.locator("ul.messagelist li.success").inner_text()
            assert f"Dead letter {letter.entry_id} of queue default requeued" in message
            assert page.url == url
            assert "No dead letters." in page.locator("#csjd-dead-letters").inner_text()

            # Cancel the requeued job (queued: it will never run).
            page.fill("#csjd-cancel-job-id", letter.job_id)
            page.select_option("#csjd-cancel-queue", "default")
            page.get_by_role("button", name="Cancel the job with this id").click()
            page.wait_for_load_state()
            message = page.locator("ul.messagelist li.success").inner_text()
            assert f"Job {letter.job_id} cancelled: it will not run." in message
            page.screenshot(path=str(shots / "csjd-flask-dashboard-cancelled.png"), full_page=True)
        finally:
            browser.close()

    assert dialogs == []  # no injected script ever ran
    assert redis_client.xlen(keys.dead) == 0
    assert redis_client.xlen(keys.stream) == 0  # back on its queue, then cancelled: gone
    status = core.status(letter.job_id)
    assert (status.state, status.cancel_reason) == (JobState.CANCELLED, "cancelled")
