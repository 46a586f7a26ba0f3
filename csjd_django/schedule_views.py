"""The dashboard's Schedules section: each schedule's row (`csjd_core.operations.schedule_rows`,
as ``manage.py csjd_schedule`` lists them) and its Pause / Resume / Run-now actions.

Wired into the admin by `csjd_django.admin.DashboardAdmin`: the actions are POST-only,
CSRF-checked, and need the permission the dead-letter actions need
(``csjd_django.manage_dead_letters``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from csjd_core import operations
from csjd_core.errors import CSJDError
from csjd_core.operations import ScheduleRow
from csjd_core.stats import ScheduleState
from csjd_django.views import back_to_dashboard, configured_app

if TYPE_CHECKING:
    from csjd_core.app import App
    from csjd_django.admin import DashboardAdmin

__all__ = ["ScheduleFigures", "schedule_action", "schedule_figures"]

logger = logging.getLogger("csjd_django.admin")


@dataclass
class ScheduleFigures:
    """The Schedules section: its rows (each with a state: all zero before a ticker saw it),
    whether their state is shared by every process, and the error that kept them from being
    read."""

    rows: list[ScheduleRow] = field(default_factory=list)
    shared: bool = True
    error: str | None = None


def schedule_figures(app: App) -> ScheduleFigures | None:
    """Read every schedule's row now (``None``: the project has no schedule). Never raises
    for an unreachable Redis or a locked store: the section shows the error instead."""
    if not app.schedules:
        return None
    try:
        rows = operations.schedule_rows(app)
    except CSJDError as exc:  # BackendUnavailable, JobStoreLocked
        logger.warning("dashboard could not read the schedules error=%s", exc)
        return ScheduleFigures(error=f"The schedules could not be read: {exc}")
    rows = [replace(row, state=row.state or ScheduleState(row.schedule.name)) for row in rows]
    return ScheduleFigures(rows=rows, shared=operations.schedules_shared(app))


class ScheduleForm(forms.Form):
    """Which schedule an action is for."""

    name = forms.CharField(max_length=200)


def schedule_action(request: HttpRequest, model_admin: DashboardAdmin, action: str) -> HttpResponse:
    """POST ``name``: ``action`` (``"pause"``, ``"resume"`` or ``"run"``) on that schedule,
    then back to the dashboard with a message. (GET is refused with 405 by the URL's
    ``require_POST``.)

    Raises:
        PermissionDenied: the user lacks ``csjd_django.manage_dead_letters`` (403).
    """
    if not model_admin.has_manage_permission(request):
        raise PermissionDenied
    if action not in operations.SCHEDULE_ACTIONS:
        return HttpResponseBadRequest("unknown action")
    form = ScheduleForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("bad schedule reference")
    name = form.cleaned_data["name"]
    back = back_to_dashboard(model_admin)
    app = configured_app(request)
    if app is None:
        return back
    if name not in app.schedules:
        return HttpResponseBadRequest("unknown schedule")
    user = request.user.get_username()
    try:
        done = operations.schedule_action(app, action, name, from_command=False)
    except CSJDError as exc:  # BackendUnavailable, QueueFull, JobStoreLocked
        logger.warning("schedule %s failed name=%s user=%s error=%s", action, name, user, exc)
        messages.error(request, f"Schedule {name} was not changed: {exc}")
        return back
    if done.job_id is not None:
        logger.info("schedule run now name=%s id=%s user=%s", name, done.job_id, user)
        messages.success(request, f"Schedule {name}: a run was enqueued now ({done.job_id}).")
    elif done.changed:
        past = "paused" if action == "pause" else "resumed"
        logger.info("schedule %s name=%s user=%s", past, name, user)
        messages.success(request, f"Schedule {name} {past}.")
    else:
        state = "was already paused" if action == "pause" else "is not paused"
        messages.info(request, f"Schedule {name} {state}: nothing changed.")
    return back
