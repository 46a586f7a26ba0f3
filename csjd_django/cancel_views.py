"""The dashboard's Cancel action: a job id (and, in Redis mode, its queue) to cancel, as
``manage.py csjd_cancel`` does (`csjd_core.operations.cancel_jobs`).

Wired into the admin by `csjd_django.admin.DashboardAdmin`: POST-only, CSRF-checked, and it
needs the permission the dead-letter and schedule actions need
(``csjd_django.manage_dead_letters``). Every cancellation is logged with the user's name.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from csjd_core import operations
from csjd_core.app import Mode
from csjd_core.errors import CSJDError
from csjd_core.limits import MAX_NAME_LENGTH
from csjd_django.views import back_to_dashboard, configured_app

if TYPE_CHECKING:
    from csjd_django.admin import DashboardAdmin

__all__ = ["CancelForm", "cancel_action"]

logger = logging.getLogger("csjd_django.admin")


class CancelForm(forms.Form):
    """Which job to cancel (``queue``: Redis mode; empty for each of the project's queues)."""

    job_id = forms.CharField(max_length=MAX_NAME_LENGTH)
    queue = forms.CharField(max_length=200, required=False)


def cancel_action(request: HttpRequest, model_admin: DashboardAdmin) -> HttpResponse:
    """POST ``job_id`` (+ ``queue``): cancel that job, then back to the dashboard with a
    message saying what happened. (GET is refused with 405 by the URL's ``require_POST``.)

    Raises:
        PermissionDenied: the user lacks ``csjd_django.manage_dead_letters`` (403).
    """
    if not model_admin.has_manage_permission(request):
        raise PermissionDenied
    form = CancelForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("bad job reference")
    job_id, queue = form.cleaned_data["job_id"], form.cleaned_data["queue"] or None
    back = back_to_dashboard(model_admin)
    app = configured_app(request)
    if app is None:
        return back
    if queue is not None and (app.mode is not Mode.REDIS or queue not in app.distributed.queues):
        return HttpResponseBadRequest("unknown queue")
    user = request.user.get_username()
    try:
        report = operations.cancel_jobs(app, [job_id], queue, from_command=False)
    except CSJDError as exc:  # BackendUnavailable, JobStoreLocked
        logger.warning(
            "job cancel failed id=%r queue=%s user=%s error=%s", job_id, queue, user, exc
        )
        messages.error(request, f"Job {job_id} was not cancelled: {exc}")
        return back
    verdict = next(name for name in ("cancelled", "requested", "ended", "missing")
                   if getattr(report, name))  # fmt: skip
    logger.info("job cancel id=%r queue=%s user=%s verdict=%s", job_id, queue, user, verdict)
    if verdict == "cancelled":
        messages.success(request, f"Job {job_id} cancelled: it will not run.")
    elif verdict == "requested":
        messages.success(
            request,
            f"Job {job_id} is running: its cancellation was requested. Its handler is told "
            "(ctx.cancelled) and the job ends cancelled.",
        )
    elif verdict == "ended":
        messages.info(request, f"Job {job_id} had already ended: nothing changed.")
    else:
        where = "" if app.mode is Mode.REDIS else " in this web process"
        messages.error(request, f"No job {job_id}{where} (never submitted, or its result expired).")
    return back
