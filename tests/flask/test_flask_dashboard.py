"""The Flask dashboard blueprint: refused without an authorisation callback, 403 when it says
no, CSRF on every action, everything escaped, and actions counted against the real backend
(Redis for dead letters, cancel and schedules; in process for cancel) — as the Django admin
page is tested (tests/django/test_admin*.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from dashjobs import SCRIPT, dash, digest, order, rejects
from flask import Flask, request
from werkzeug.test import TestResponse

from csjd_core import JobState
from csjd_core.app import App
from csjd_core.dashboard import throughput_samples
from csjd_flask import CSJD, DashboardRefused

PREFIX = "/admin/jobs"
ESCAPED_SCRIPT = "&lt;script&gt;alert(1)&lt;/script&gt;"
PAYLOAD_MARKER = "<b>payload-marker</b>"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Dashboard:
    """A Flask app with the dashboard at ``PREFIX``; ``allowed`` says what the callbacks
    answer, ``calls`` counts ``authorize()``."""

    app: Flask
    allowed: dict[str, bool] = field(default_factory=lambda: {"view": True, "act": True})
    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = self.app.test_client()

    @property
    def core(self) -> App:
        return dash.core_app(self.app)

    def page(self, query: str = "") -> str:
        response = self.client.get(f"{PREFIX}/{query}")
        assert response.status_code == 200, response.status_code
        return response.get_data(as_text=True)

    def token(self) -> str:
        match = TOKEN.search(self.page())
        assert match is not None, "no form on the page"
        return match.group(1)

    def post(self, path: str, data: dict[str, str], *, token: str | None = "page") -> TestResponse:
        form = dict(data)
        if token == "page":
            form["csrf_token"] = self.token()
        elif token is not None:
            form["csrf_token"] = token
        return self.client.post(f"{PREFIX}{path}", data=form)

    def run_workers(self) -> None:
        result = self.app.test_cli_runner().invoke(args=["csjd", "run", "--burst", "--no-schedule"])
        assert result.exit_code == 0, result.output

    def dead_letters(self) -> list[Any]:
        return self.core.dispatcher.dead_letters()  # type: ignore[attr-defined, no-any-return]


MakeDashboard = Callable[..., Dashboard]


@pytest.fixture
def make_dashboard() -> Iterator[MakeDashboard]:
    """``make_dashboard(**config)``: a fresh app (immediate mode unless ``CSJD_MODE`` is
    given) with the dashboard registered; dispatchers stopped at teardown."""
    built: list[Dashboard] = []

    def build(**config: Any) -> Dashboard:
        app = Flask(f"dash-{len(built)}")
        app.config.update(TESTING=True, SECRET_KEY="test-secret", CSJD_MODE="immediate")
        app.config.update(config)
        dash.init_app(app)
        board = Dashboard(app)

        def authorize() -> bool:
            board.calls.append(request.path)
            return board.allowed["view"]

        blueprint = dash.dashboard_blueprint(
            authorize=authorize, authorize_actions=lambda: board.allowed["act"]
        )
        app.register_blueprint(blueprint, url_prefix=PREFIX)
        built.append(board)
        return board

    yield build
    for board in built:
        dash.stop(timeout=2.0, app=board.app)


@pytest.fixture
def redis_dashboard(make_dashboard: MakeDashboard, redis_config: dict[str, Any]) -> Dashboard:
    return make_dashboard(**redis_config)


def make_dead_letters(board: Dashboard) -> list[Any]:
    """Two real dead letters made by a real worker: one with markup in its error, one with
    markup in its job id and its payload."""
    with board.app.app_context():
        rejects.delay()
        rejects.apply_async(args=[PAYLOAD_MARKER], job_id=f"id-{SCRIPT}")
    board.run_workers()
    letters = board.dead_letters()
    assert len(letters) == 2
    return letters


# -- refused without an authorisation callback ----------------------------------------------
def test_a_dashboard_without_an_authorisation_callback_is_refused() -> None:
    with pytest.raises(DashboardRefused, match="needs an authorisation callback"):
        dash.dashboard_blueprint()
    with pytest.raises(DashboardRefused, match="authorize=True"):
        dash.dashboard_blueprint(authorize=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="authorize_actions must be a callable"):
        dash.dashboard_blueprint(authorize=lambda: True, authorize_actions="staff")  # type: ignore[arg-type]


def test_registration_is_refused_without_a_secret_key_or_the_extension() -> None:
    app = Flask("no-secret")
    app.config.update(CSJD_MODE="immediate")
    dash.init_app(app)
    with pytest.raises(DashboardRefused, match="needs SECRET_KEY"):
        app.register_blueprint(dash.dashboard_blueprint(authorize=lambda: True))
    other = Flask("other")
    other.config.update(CSJD_MODE="immediate", SECRET_KEY="s")
    CSJD(other)  # another extension object: not the one whose jobs the page would show
    with pytest.raises(DashboardRefused, match="not initialised with its extension"):
        other.register_blueprint(dash.dashboard_blueprint(authorize=lambda: True))


# -- who may see and act ---------------------------------------------------------------------
def test_authorize_is_asked_on_every_request_and_false_is_403(
    make_dashboard: MakeDashboard,
) -> None:
    board = make_dashboard()
    board.page()
    board.page("?refresh=5")
    assert board.calls == [f"{PREFIX}/", f"{PREFIX}/"]
    board.allowed["view"] = False
    assert board.client.get(f"{PREFIX}/").status_code == 403
    assert len(board.calls) == 3


def test_no_action_without_permission_nothing_changes(redis_dashboard: Dashboard) -> None:
    board = redis_dashboard
    letter = make_dead_letters(board)[0]
    with board.app.app_context():
        handle = order.delay(1)
    token = board.token()
    forms = {
        "/dead-letters/requeue": {"queue": letter.queue, "entry_id": letter.entry_id},
        "/dead-letters/delete": {"queue": letter.queue, "entry_id": letter.entry_id},
        "/jobs/cancel": {"job_id": handle.id},
        "/schedules/pause": {"name": "digest"},
    }
    # May view, may not act: no buttons, every action 403.
    board.allowed["act"] = False
    page = board.page()
    assert 'id="csjd-cancel"' not in page and "csrf_token" not in page
    assert "Requeue" not in page and "Pause" not in page
    for path, form in forms.items():
        assert board.post(path, form, token=token).status_code == 403, path
    # May not even view: 403 too.
    board.allowed.update(view=False, act=True)
    for path, form in forms.items():
        assert board.post(path, form, token=token).status_code == 403, path
    assert len(board.dead_letters()) == 2
    assert handle.status().state is JobState.QUEUED
    state = board.core.dispatcher.schedule_state("digest", "default")
    assert state is None or not state.paused


def test_actions_need_post_and_a_valid_csrf_token(
    redis_dashboard: Dashboard, redis_client: Any
) -> None:
    board = redis_dashboard
    letter = make_dead_letters(board)[0]
    with board.app.app_context():
        handle = order.delay(2)
    form = {"queue": letter.queue, "entry_id": letter.entry_id}
    assert board.client.get(f"{PREFIX}/dead-letters/requeue").status_code == 405
    assert board.client.get(f"{PREFIX}/jobs/cancel").status_code == 405
    for token in (None, "", "forged-token", board.token() + "x"):
        for action in ("requeue", "delete"):
            response = board.post(f"/dead-letters/{action}", form, token=token)
            assert response.status_code == 400, (token, action)
            assert "CSRF" in response.get_data(as_text=True)
        assert board.post("/jobs/cancel", {"job_id": handle.id}, token=token).status_code == 400
        assert board.post("/schedules/run", {"name": "digest"}, token=token).status_code == 400
    assert len(board.dead_letters()) == 2  # nothing happened
    assert handle.status().state is JobState.QUEUED
    keys = board.core.dispatcher.backend.keys_for(None)  # type: ignore[attr-defined]
    assert redis_client.xlen(keys.stream) == 1  # handle's: no schedule run was enqueued
    response = board.post("/dead-letters/delete", form)  # the page's token
    assert response.status_code == 302
    assert len(board.dead_letters()) == 1


# -- Redis mode: figures and escaping --------------------------------------------------------
def test_redis_mode_shows_queues_consumers_counters_and_everything_escaped(
    redis_dashboard: Dashboard, redis_client: Any
) -> None:
    board = redis_dashboard
    letters = make_dead_letters(board)
    dead_key = board.core.dispatcher.backend.keys_for(None).dead  # type: ignore[attr-defined]
    redis_client.xadd(  # a dead letter whose type holds markup (written as a poison entry)
        dead_key, {"id": "poison", "d": f'{{"type": "{SCRIPT}"}}', "error": "e", "attempts": 1}
    )
    page = board.page()
    assert "Redis mode: cluster-wide figures" in page
    assert 'id="csjd-queues"' in page and 'id="csjd-consumers"' in page
    assert re.search(r"Failed</th><td class=\"num\">2</td>", page)  # cluster-wide
    assert "Dead letters (3)" in page
    assert "expired" in page  # the burst worker's heartbeat
    assert SCRIPT not in page
    assert page.count(ESCAPED_SCRIPT) >= 4  # two errors, a job id, a type
    assert f"<code>id-{ESCAPED_SCRIPT}</code>" in page
    assert f"<strong>{ESCAPED_SCRIPT}</strong>" in page
    assert "payload-marker" not in page and "Show payloads" in page
    shown = board.page("?payload=1")
    assert PAYLOAD_MARKER not in shown and "&lt;b&gt;payload-marker&lt;/b&gt;" in shown
    assert "Hide payloads" in shown
    assert all(f'data-entry="{letter.entry_id}"' in page for letter in letters)


def test_the_lookup_and_a_missing_job_are_escaped(make_dashboard: MakeDashboard) -> None:
    board = make_dashboard()
    page = board.page(f"?job={SCRIPT}")
    assert "No such job" in page and SCRIPT not in page and ESCAPED_SCRIPT in page
    with board.app.app_context():
        handle = order.apply_async(args=[3], job_id=f"o-{SCRIPT}")
    page = board.page("?" + f"job=o-{SCRIPT}".replace("<", "%3C").replace(">", "%3E"))
    assert 'id="csjd-lookup-state">succeeded<' in page and SCRIPT not in page
    assert handle.status().state is JobState.SUCCEEDED


def test_redis_unavailable_is_shown_on_the_page(make_dashboard: MakeDashboard) -> None:
    board = make_dashboard(CSJD_MODE="redis", CSJD_REDIS_URL="redis://:SECRET@127.0.0.1:1/0")
    page = board.page()
    assert "is unavailable" in page and "SECRET" not in page


# -- actions, counted against the backend ----------------------------------------------------
def test_requeue_and_delete_act_on_redis(redis_dashboard: Dashboard, redis_client: Any) -> None:
    board = redis_dashboard
    first, second = make_dead_letters(board)
    keys = board.core.dispatcher.backend.keys_for(None)  # type: ignore[attr-defined]
    response = board.post(
        "/dead-letters/requeue", {"queue": first.queue, "entry_id": first.entry_id}
    )
    assert (response.status_code, response.location) == (302, f"{PREFIX}/")
    page = board.page()
    assert f"Dead letter {first.entry_id} of queue default requeued." in page
    assert [d.entry_id for d in board.dead_letters()] == [second.entry_id]
    assert redis_client.xlen(keys.stream) == 1
    assert board.core.status(first.job_id).state is JobState.QUEUED

    board.post("/dead-letters/delete", {"queue": second.queue, "entry_id": second.entry_id})
    assert f"Dead letter {second.entry_id} of queue default deleted." in board.page()
    assert redis_client.xlen(keys.dead) == 0
    board.post("/dead-letters/delete", {"queue": second.queue, "entry_id": second.entry_id})
    assert "is gone" in board.page()
    assert redis_client.xlen(keys.stream) == 1  # the requeued job, untouched

    unknown = {"queue": "nope", "entry_id": "1-0"}
    assert board.post("/dead-letters/delete", unknown).status_code == 400
    bad = {"queue": "default", "entry_id": "1-0 OR 1"}
    assert board.post("/dead-letters/requeue", bad).status_code == 400


def test_cancel_in_redis_mode(redis_dashboard: Dashboard) -> None:
    board = redis_dashboard
    with board.app.app_context():
        handle = order.delay(7)
    page = board.page()
    assert '<option value="default">default</option>' in page
    board.post("/jobs/cancel", {"job_id": handle.id, "queue": "default"})
    assert f"Job {handle.id} cancelled: it will not run." in board.page()
    assert handle.status().state is JobState.CANCELLED
    board.post("/jobs/cancel", {"job_id": handle.id})
    assert f"Job {handle.id} had already ended: nothing changed." in board.page()
    board.post("/jobs/cancel", {"job_id": "<b>nobody</b>"})
    assert "No job &lt;b&gt;nobody&lt;/b&gt; (never submitted" in board.page()
    assert board.post("/jobs/cancel", {"job_id": "x", "queue": "nope"}).status_code == 400
    assert board.post("/jobs/cancel", {}).status_code == 400


def test_cancel_in_process_acts_on_this_web_process(make_dashboard: MakeDashboard) -> None:
    board = make_dashboard(CSJD_MODE="inprocess", CSJD_WORKERS=2)
    page = board.page()
    assert "figures of this web process only" in page and "not started" in page
    assert "Dead letters are kept in Redis mode" in page
    with board.app.app_context():
        handle = order.apply_async(args=[1], countdown=3600)
    page = board.page()
    assert "2 threads" in page and 'id="csjd-cancel-queue"' not in page
    board.post("/jobs/cancel", {"job_id": handle.id})
    assert f"Job {handle.id} cancelled" in board.page()
    assert handle.status().state is JobState.CANCELLED
    assert board.post("/jobs/cancel", {"job_id": "x", "queue": "default"}).status_code == 400


def test_schedules_pause_resume_and_run_now(redis_dashboard: Dashboard, redis_client: Any) -> None:
    board = redis_dashboard
    page = board.page()
    assert 'data-schedule="digest"' in page and "dash.digest on queue default" in page
    board.post("/schedules/pause", {"name": "digest"})
    assert "Schedule digest paused." in board.page()
    assert board.core.dispatcher.schedule_state("digest", "default").paused
    board.post("/schedules/resume", {"name": "digest"})
    assert "Schedule digest resumed." in board.page()
    assert not board.core.dispatcher.schedule_state("digest", "default").paused
    board.post("/schedules/run", {"name": "digest"})
    assert "Schedule digest: a run was enqueued now" in board.page()
    keys = board.core.dispatcher.backend.keys_for(None)  # type: ignore[attr-defined]
    assert redis_client.xlen(keys.stream) == 1
    assert board.post("/schedules/pause", {"name": "nope"}).status_code == 400
    assert digest() == "sent"  # (called inline: the function is a plain job)


# -- the chart -------------------------------------------------------------------------------
@pytest.fixture
def every_view_samples() -> Iterator[None]:
    throughput_samples.clear()
    throughput_samples.min_interval = 0.0
    yield
    throughput_samples.min_interval = 1.0
    throughput_samples.clear()


def test_the_page_draws_the_chart_after_two_samples(
    make_dashboard: MakeDashboard, every_view_samples: None
) -> None:
    board = make_dashboard()
    assert "Not enough samples" in board.page()
    with board.app.app_context():
        order.delay(1)
    board.page()  # a second sample: one rate; a third: a line
    page = board.page()
    assert page.count("<polyline") == 2 and 'class="csjd-throughput"' in page
    assert "<script" not in page


def test_flask_wtf_is_imported_only_with_the_dashboard() -> None:
    code = (
        "import sys, csjd_flask\n"
        "assert 'flask_wtf' not in sys.modules and 'csjd_flask.dashboard' not in sys.modules\n"
        "csjd_flask.CSJD().dashboard_blueprint(authorize=lambda: True)\n"
        "assert 'flask_wtf' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
