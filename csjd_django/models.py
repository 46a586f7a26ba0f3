"""No tables: one unmanaged model that carries the admin dashboard's permissions.

Django attaches permissions to models, and the admin lists models, so the dashboard is an
unmanaged model (``managed = False``: no table is ever created, nothing queries it) whose
``Meta.permissions`` are the two permissions the page checks.
"""

from __future__ import annotations

from django.db import models

__all__ = ["MANAGE_PERMISSION", "VIEW_PERMISSION", "Dashboard"]

#: Needed to open the dashboard (figures, queues, consumers, dead letters and their errors).
VIEW_PERMISSION = "csjd_django.view_csjd_dashboard"
#: Needed to requeue or delete a dead letter from the dashboard.
MANAGE_PERMISSION = "csjd_django.manage_dead_letters"


class Dashboard(models.Model):
    """The CSJD page of the Django admin (no rows, no table)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_csjd_dashboard", "Can view the CSJD dashboard"),
            ("manage_dead_letters", "Can requeue and delete CSJD dead letters"),
        ]
        verbose_name = "jobs dashboard"
        verbose_name_plural = "jobs dashboard"

    def __str__(self) -> str:
        return "CSJD jobs dashboard"
