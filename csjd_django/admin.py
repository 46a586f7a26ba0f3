"""The CSJD page of the Django admin, linked from the admin index as "Jobs dashboard".

It is registered on ``admin.site`` for the unmanaged `Dashboard` model; a project with its own
`AdminSite` registers it there too: ``my_site.register(Dashboard, DashboardAdmin)``.

Who sees what: anonymous users and non-staff are sent to the admin login page (the admin's own
``admin_view``); staff need ``csjd_django.view_csjd_dashboard`` to open the page (else 403) and
``csjd_django.manage_dead_letters`` *as well* to requeue or delete dead letters, to pause,
resume or run a schedule now, and to cancel a job (POST only, CSRF-checked).
Superusers have both.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from csjd_core.operations import SCHEDULE_ACTIONS
from csjd_django import views
from csjd_django.models import MANAGE_PERMISSION, VIEW_PERMISSION, Dashboard

__all__ = ["DashboardAdmin"]


@admin.register(Dashboard)
class DashboardAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The dashboard in place of a change list; no add, change or delete of rows."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(VIEW_PERMISSION)

    def has_manage_permission(self, request: HttpRequest) -> bool:
        """May this user requeue or delete dead letters, pause, resume or run schedules, and
        cancel jobs? Only one who may also see them."""
        return self.has_view_permission(request) and request.user.has_perm(MANAGE_PERMISSION)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        """Only the dashboard and its actions: the model has no table to list or edit."""
        wrap = self.admin_site.admin_view  # login redirect, never_cache, csrf_protect
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", wrap(self.dashboard_view), name=f"{prefix}_changelist"),
            path(
                "dead-letters/requeue/",
                wrap(require_POST(self.requeue_view)),
                name=f"{prefix}_requeue",
            ),
            path(
                "dead-letters/delete/",
                wrap(require_POST(self.delete_dead_letter_view)),
                name=f"{prefix}_delete_dead_letter",
            ),
            path("jobs/cancel/", wrap(require_POST(self.cancel_view)), name=f"{prefix}_cancel"),
            *(
                path(
                    f"schedules/{action}/",
                    wrap(require_POST(partial(self.schedule_view, action=action))),
                    name=f"{prefix}_schedule_{action}",
                )
                for action in SCHEDULE_ACTIONS
            ),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        return views.dashboard_view(request, self)

    def requeue_view(self, request: HttpRequest) -> HttpResponse:
        return views.dead_letter_action(request, self, "requeue")

    def delete_dead_letter_view(self, request: HttpRequest) -> HttpResponse:
        return views.dead_letter_action(request, self, "delete")

    def cancel_view(self, request: HttpRequest) -> HttpResponse:
        return views.cancel_action(request, self)

    def schedule_view(self, request: HttpRequest, *, action: str) -> HttpResponse:
        return views.schedule_action(request, self, action)
