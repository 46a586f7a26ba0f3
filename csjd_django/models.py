"""The outbox's tables, and an unmanaged model that carries the dashboard's permissions.

`OutboxJob` holds the jobs written in the callers' transactions until a relay admits them
(``CSJD_OUTBOX``: `csjd_django.outbox`); `OutboxRelay` the relays' heartbeats.

Django attaches permissions to models, and the admin lists models, so the dashboard is an
unmanaged model (``managed = False``: no table is ever created, nothing queries it) whose
``Meta.permissions`` are the two permissions the page checks.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

__all__ = ["MANAGE_PERMISSION", "VIEW_PERMISSION", "Dashboard", "OutboxJob", "OutboxRelay"]

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


class OutboxJob(models.Model):
    """A job written in its caller's transaction, waiting for a relay.

    ``data`` is the whole job in its wire form (JSON), so a later field of the job needs no
    migration; ``job_id`` and ``queue`` are copies for lookups. A row a relay could not admit
    (malformed, or over the payload limit) stays with the reason in ``problem``.
    """

    id = models.BigAutoField(primary_key=True)
    job_id = models.CharField(max_length=1024, db_index=True)
    queue = models.CharField(max_length=1024, null=True, blank=True)
    data = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    #: Not before this time (set when the queue was full); ``NULL``: at once.
    available_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    problem = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "csjd_outbox"
        default_permissions = ()
        verbose_name = "outbox job"

    def __str__(self) -> str:
        return f"outbox job {self.job_id}"


class OutboxRelay(models.Model):
    """A relay's heartbeat: what the ``csjd.W003`` check and the stats read."""

    name = models.CharField(max_length=255, primary_key=True)
    seen_at = models.DateTimeField()

    class Meta:
        db_table = "csjd_outbox_relay"
        default_permissions = ()
        verbose_name = "outbox relay"

    def __str__(self) -> str:
        return f"outbox relay {self.name}"
