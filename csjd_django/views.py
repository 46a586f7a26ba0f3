"""The admin dashboard's views: the page and its actions (dead letters, cancel, schedules).

The figures and the actions are the core's (`csjd_core.dashboard`,
`csjd_core.dashboard_actions`), shared with the Flask blueprint; these views only check the
admin permissions, render ``csjd_django/dashboard.html`` and turn an action's notice into a
Django message. Wired into the admin by `csjd_django.admin.DashboardAdmin` (its URLs, the login
redirect, CSRF protection). Everything shown passes through template autoescaping; job
payloads are shown only on request (``?payload=1``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from csjd_core import dashboard, dashboard_actions
from csjd_core.app import App
from csjd_core.dashboard_actions import InvalidReference, Notice

if TYPE_CHECKING:
    from csjd_django.admin import DashboardAdmin

__all__ = ["cancel_action", "dashboard_view", "dead_letter_action", "schedule_action"]

#: A notice's level as a Django message level.
_LEVELS = {
    "success": messages.SUCCESS,
    "info": messages.INFO,
    "warning": messages.WARNING,
    "error": messages.ERROR,
}


def dashboard_view(request: HttpRequest, model_admin: DashboardAdmin) -> HttpResponse:
    """The dashboard page (GET ``?payload=1`` shows payloads, ``?refresh=N`` reloads it,
    ``?job=ID[&queue=Q]`` looks a job up).

    Raises:
        PermissionDenied: the user lacks ``csjd_django.view_csjd_dashboard`` (403).
    """
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    from csjd_django import app  # noqa: PLC0415 - the app reads settings lazily

    context = {
        **model_admin.admin_site.each_context(request),
        "title": "CSJD jobs",
        "opts": model_admin.opts,
        "app_label": model_admin.opts.app_label,
        **dashboard.page(app, dict(request.GET.lists())),
        "can_manage": model_admin.has_manage_permission(request),
    }
    return TemplateResponse(request, "csjd_django/dashboard.html", context)


# -- actions ---------------------------------------------------------------------------------
def _perform(
    request: HttpRequest, model_admin: DashboardAdmin, act: Callable[[App, str], Notice]
) -> HttpResponse:
    """Run an action for a user with both permissions, show its notice as a message, and
    go back to the dashboard (a bad reference is a 400). GET is refused with 405 by the
    URLs' ``require_POST``; CSRF is checked by the admin's ``admin_view``.

    Raises:
        PermissionDenied: the user lacks ``csjd_django.manage_dead_letters`` (or the view
            permission) (403).
    """
    if not model_admin.has_manage_permission(request):
        raise PermissionDenied
    from csjd_django import app  # noqa: PLC0415 - the app reads settings lazily

    try:
        notice = act(app, request.user.get_username())
    except InvalidReference as exc:
        return HttpResponseBadRequest(str(exc))
    messages.add_message(request, _LEVELS[notice.level], notice.text)
    opts = model_admin.opts
    return HttpResponseRedirect(
        reverse(
            f"admin:{opts.app_label}_{opts.model_name}_changelist",
            current_app=model_admin.admin_site.name,
        )
    )


def dead_letter_action(
    request: HttpRequest, model_admin: DashboardAdmin, action: str
) -> HttpResponse:
    """POST ``queue`` + ``entry_id``: ``action`` (``"requeue"`` or ``"delete"``) that dead
    letter (`csjd_core.dashboard_actions.dead_letter_action`)."""
    queue, entry_id = request.POST.get("queue"), request.POST.get("entry_id")
    return _perform(
        request,
        model_admin,
        lambda app, user: dashboard_actions.dead_letter_action(
            app, action, queue, entry_id, user=user
        ),
    )


def cancel_action(request: HttpRequest, model_admin: DashboardAdmin) -> HttpResponse:
    """POST ``job_id`` (+ ``queue``): cancel that job
    (`csjd_core.dashboard_actions.cancel_action`)."""
    job_id, queue = request.POST.get("job_id"), request.POST.get("queue")
    return _perform(
        request,
        model_admin,
        lambda app, user: dashboard_actions.cancel_action(app, job_id, queue, user=user),
    )


def schedule_action(request: HttpRequest, model_admin: DashboardAdmin, action: str) -> HttpResponse:
    """POST ``name``: ``action`` (``"pause"``, ``"resume"`` or ``"run"``) on that schedule
    (`csjd_core.dashboard_actions.schedule_action`)."""
    name = request.POST.get("name")
    return _perform(
        request,
        model_admin,
        lambda app, user: dashboard_actions.schedule_action(app, action, name, user=user),
    )
