"""The jobs dashboard for Flask apps: a blueprint the app registers at a prefix of its choice.

``app.register_blueprint(csjd.dashboard_blueprint(authorize=is_admin), url_prefix="/jobs")``

It shows what the Django admin page shows — counters, queues, consumers, the throughput chart,
dead letters (requeue / delete), the Cancel form, schedules (pause / resume / run now), the
outbox and a job lookup — read by the same core data layer (`csjd_core.dashboard`) and acted on
by the same core actions (`csjd_core.dashboard_actions`); only the Jinja templates in
``csjd_flask/templates/csjd_flask/`` are Flask's own.

Who may do what is the app's to say: ``authorize()`` is called on every request of the
blueprint (False: 403), ``authorize_actions()`` as well on every action (default: the same
as ``authorize``). Actions are POST only and need the CSRF token of Flask-WTF
(``flask_wtf.csrf``; the app needs a ``SECRET_KEY``); everything shown is autoescaped by Jinja.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from wtforms import ValidationError

from csjd_core import dashboard, dashboard_actions
from csjd_core.app import App
from csjd_core.dashboard_actions import InvalidReference, Notice
from csjd_core.errors import CSJDError
from csjd_core.operations import SCHEDULE_ACTIONS
from csjd_flask.extension import DashboardRefused

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from csjd_flask.extension import CSJD

__all__ = ["DEFAULT_NAME", "DashboardRefused", "dashboard_blueprint"]

logger = logging.getLogger(__name__)

#: The blueprint's default name (its endpoints are ``csjd_dashboard.index`` ...).
DEFAULT_NAME = "csjd_dashboard"
#: Methods that change nothing: everything else needs the action permission and CSRF token.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def dashboard_blueprint(
    extension: CSJD,
    *,
    authorize: Callable[[], bool] | None,
    authorize_actions: Callable[[], bool] | None = None,
    user_name: Callable[[], str] | None = None,
    name: str = DEFAULT_NAME,
) -> Blueprint:
    """The dashboard of the apps ``extension`` is initialised on, as a blueprint
    (`csjd_flask.CSJD.dashboard_blueprint` calls this).

    Args:
        authorize: called on every request (in the request context): True lets the user see
            the page; False answers 403. Required: a dashboard without one is refused.
        authorize_actions: called as well on every action (requeue, delete, cancel, pause,
            resume, run now): False answers 403 and hides the buttons. Default: ``authorize``.
        user_name: names the user in the actions' log lines (default: the client's address).
        name: the blueprint's name (its endpoints' prefix).

    Raises:
        DashboardRefused: ``authorize`` is missing or not callable (here), and, when the
            blueprint is registered, an app without ``SECRET_KEY`` or without ``extension``.
        TypeError: ``authorize_actions`` or ``user_name`` is not callable.
    """
    if authorize is None or not callable(authorize):
        raise DashboardRefused(
            "the CSJD dashboard needs an authorisation callback: "
            "csjd.dashboard_blueprint(authorize=lambda: current_user.is_admin) — called on "
            f"every request, False answers 403 (got authorize={authorize!r}; see docs/flask.md)"
        )
    for option, value in (("authorize_actions", authorize_actions), ("user_name", user_name)):
        if value is not None and not callable(value):
            raise TypeError(f"{option} must be a callable or None, got {value!r}")
    may_act = authorize_actions or authorize
    who = user_name or _client_address
    blueprint = Blueprint(name, __name__, template_folder="templates")
    blueprint.record(lambda state: _check_app(state, extension))

    @blueprint.before_request
    def guard() -> None:
        """Permission first (403), then, for an action, the CSRF token (400)."""
        if not authorize():
            abort(403)
        if request.method in _SAFE_METHODS:
            return
        if not may_act():
            abort(403)
        try:
            validate_csrf(request.form.get("csrf_token"))
        except ValidationError as exc:
            logger.warning("dashboard action refused: %s user=%s", exc, who())
            raise CSRFError(str(exc)) from None

    def core() -> App:
        return extension.state().core

    @blueprint.get("/")
    def index() -> str:
        return render_template(
            "csjd_flask/dashboard.html",
            **dashboard.page(core(), request.args.to_dict(flat=False)),
            can_manage=may_act(),
            csrf_token=generate_csrf(),
            schedule_actions=SCHEDULE_ACTIONS,
            utc=_utc,
        )

    def perform(act: Callable[[App, str], Notice]) -> Response:
        try:
            notice = act(core(), who())
        except InvalidReference as exc:
            abort(400, description=str(exc))
        flash(notice.text, notice.level)
        return redirect(url_for(".index"))

    @blueprint.post("/dead-letters/<any(requeue, delete):action>")
    def dead_letter(action: str) -> Response:
        queue, entry_id = request.form.get("queue"), request.form.get("entry_id")
        return perform(
            lambda app, user: dashboard_actions.dead_letter_action(
                app, action, queue, entry_id, user=user
            )
        )

    @blueprint.post("/jobs/cancel")
    def cancel() -> Response:
        job_id, queue = request.form.get("job_id"), request.form.get("queue")
        return perform(
            lambda app, user: dashboard_actions.cancel_action(app, job_id, queue, user=user)
        )

    @blueprint.post("/schedules/<any(pause, resume, run):action>")
    def schedule(action: str) -> Response:
        schedule_name = request.form.get("name")
        return perform(
            lambda app, user: dashboard_actions.schedule_action(
                app, action, schedule_name, user=user
            )
        )

    return blueprint


def _check_app(state: BlueprintSetupState, extension: CSJD) -> None:
    """At registration: the app has the extension and a secret key."""
    app = cast(Flask, state.app)  # typed as Flask's sans-IO base class
    try:
        extension.state(app)
    except CSJDError as exc:
        raise DashboardRefused(
            f"the CSJD dashboard is registered on Flask app {app.name!r}, which is not "
            f"initialised with its extension: call csjd.init_app(app) first ({exc})"
        ) from exc
    if not app.config.get("SECRET_KEY"):
        raise DashboardRefused(
            f"the CSJD dashboard needs SECRET_KEY on Flask app {app.name!r}: its actions' "
            "CSRF tokens (Flask-WTF) and its messages live in the signed session"
        )


def _client_address() -> str:
    return f"client:{request.remote_addr or '-'}"


def _utc(value: datetime | None, iso: bool = False) -> str:
    """A time as the page shows it (``2026-01-15 05:39:35 UTC``), or ISO 8601 (``iso``)."""
    if value is None:
        return ""
    value = value.astimezone(UTC)
    return value.isoformat() if iso else value.strftime("%Y-%m-%d %H:%M:%S UTC")
