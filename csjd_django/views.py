"""The admin dashboard's views: figures, the throughput chart, dead letters and their actions.

Wired into the admin by `csjd_django.admin.DashboardAdmin` (its URLs, the login redirect, CSRF
protection and the permission checks). Everything shown passes through template autoescaping or
`format_html`; job payloads are shown only on request (``?payload=1``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from csjd_core import operations
from csjd_core.app import Mode
from csjd_core.errors import CSJDError, DuplicateJob, InvalidJob, JobNotFound, SettingsError
from csjd_core.job import JobStatus
from csjd_core.outbox import OutboxStats
from csjd_django.throughput import Sample, ThroughputSamples, throughput_svg

if TYPE_CHECKING:
    from csjd_core.distributed import RedisDistributedDispatcher
    from csjd_core.stats import DeadLetter
    from csjd_django.admin import DashboardAdmin
    from csjd_django.app import DjangoApp

__all__ = [
    "DEAD_LETTER_LIMIT",
    "collect_figures",
    "dashboard",
    "dead_letter_action",
    "lookup_job",
    "throughput_samples",
]

logger = logging.getLogger("csjd_django.admin")

#: Dead letters listed per queue (the oldest first, as Redis keeps them).
DEAD_LETTER_LIMIT = 50
#: Auto-refresh periods the page offers (seconds).
REFRESH_CHOICES = (5, 15, 60)

#: This web process's samples of the counters, for the throughput chart.
throughput_samples = ThroughputSamples()


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One Redis queue's figures."""

    name: str
    length: int
    waiting: int
    in_flight: int
    scheduled: int
    unfinished: int
    dead: int
    processed: int
    failed: int


@dataclass(frozen=True, slots=True)
class ConsumerRow:
    """One consumer of a queue's group."""

    queue: str
    name: str
    pending: int
    idle: float
    heartbeat_age: float | None


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter as the page shows it (``payload`` only when asked for)."""

    queue: str
    entry_id: str
    job_id: str
    type: str
    error: str
    reason: str
    attempts: int | None
    failed_at: datetime | None
    traceback: str
    payload: str | None
    damaged: str | None = None


@dataclass
class Figures:
    """Everything the dashboard shows."""

    mode: str
    scope: str
    metrics: Any = None
    cluster: dict[str, int] | None = None
    queues: list[QueueRow] = field(default_factory=list)
    consumers: list[ConsumerRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    dead_total: int = 0
    started: bool = False
    unfinished: int | None = None
    workers: int | None = None
    store: str | None = None
    chart: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class JobLookup:
    """The dashboard's job lookup (``?job=ID[&queue=Q]``): the job's status, or why none."""

    job_id: str
    queue: str | None
    status: JobStatus | None = None
    error: str | None = None

    @property
    def percent(self) -> int | None:
        """The status's progress as a whole percentage, if it has a total."""
        progress = self.status.progress if self.status is not None else None
        fraction = progress.fraction if progress is not None else None
        return None if fraction is None else int(fraction * 100)


def lookup_job(job_id: str, queue: str | None) -> JobLookup:
    """Look a job up through the configured app (``csjd.status``); never raises: an unknown
    id, a bad queue name or an unreachable Redis is the lookup's error."""
    from csjd_django import app  # noqa: PLC0415 - the app module imports settings lazily

    try:
        return JobLookup(job_id, queue, status=app.status(job_id, queue))
    except JobNotFound:
        return JobLookup(job_id, queue, error="No such job (or its result expired).")
    except (CSJDError, SettingsError, ValueError) as exc:
        return JobLookup(job_id, queue, error=f"The job could not be looked up: {exc}")


# -- figures -------------------------------------------------------------------------------
def collect_figures(*, show_payload: bool = False) -> Figures:
    """Read this project's figures now (and record a throughput sample).

    Never raises for an unreachable Redis or bad settings: the page shows the error instead.
    """
    from csjd_django import app  # noqa: PLC0415 - the app module imports settings lazily

    try:
        app.configure_from_settings()
        dispatcher = app.dispatcher
    except (SettingsError, CSJDError, ValueError) as exc:
        return Figures(mode="?", scope="", error=f"CSJD settings are invalid: {exc}")
    pid = os.getpid()
    if app.mode is Mode.REDIS:
        return _redis_figures(dispatcher, show_payload=show_payload)  # type: ignore[arg-type]
    if app.mode is Mode.IMMEDIATE:
        scope = (
            f"Immediate mode: jobs run when they are enqueued, in the caller's thread "
            f"(tests and development). These are this process's figures (pid {pid})."
        )
    else:
        scope = (
            f"In-process mode: these are the figures of this web process only (pid {pid}). "
            "Each web process runs its own workers and keeps its own counters; jobs of "
            "other processes are not shown here."
        )
    metrics = dispatcher.metrics()
    started = dispatcher.started
    store = app.config.store
    figures = Figures(
        mode=app.mode,
        scope=scope,
        metrics=metrics,
        started=started,
        unfinished=dispatcher.pending() if started else None,
        workers=app.config.workers if app.mode is Mode.INPROCESS else None,
        store=str(getattr(store, "path", store)) if store is not None else None,
    )
    source = f"{app.mode} pid={pid} dispatcher={id(dispatcher)}"
    figures.chart = _chart(source, metrics.processed, metrics.failed)
    return figures


def _redis_figures(dispatcher: RedisDistributedDispatcher, *, show_payload: bool) -> Figures:
    import redis  # noqa: PLC0415 - Redis mode only

    where = dispatcher.redis_config.display
    queues = ", ".join(dispatcher.config.queues)
    figures = Figures(
        mode="redis",
        metrics=dispatcher.metrics(),
        scope=(
            f"Redis mode: cluster-wide figures of the queues {queues} at {where}, read now. "
            "The column 'this web process' counts only what this process submitted."
        ),
    )
    try:
        stats = dispatcher.stats()
        letters = {name: dispatcher.dead_letters(name, DEAD_LETTER_LIMIT) for name in stats}
    except (redis.RedisError, CSJDError, OSError) as exc:
        logger.warning("dashboard could not read Redis url=%s error=%s", where, exc)
        figures.error = f"Redis at {where} is unavailable: {exc}"
        return figures
    cluster = dict.fromkeys(("processed", "succeeded", "retried", "failed", "cancelled"), 0)
    for name, queue in stats.items():
        counters = queue.counters
        for key in cluster:
            cluster[key] += getattr(counters, key)
        figures.queues.append(
            QueueRow(
                name=name,
                length=queue.stream_length,
                waiting=queue.waiting,
                in_flight=queue.in_flight,
                scheduled=queue.scheduled,
                unfinished=queue.unfinished,
                dead=queue.dead,
                processed=counters.processed,
                failed=counters.failed,
            )
        )
        figures.consumers.extend(
            ConsumerRow(
                queue=name,
                name=c.name,
                pending=c.pending,
                idle=c.idle_ms / 1000,
                heartbeat_age=c.heartbeat_age,
            )
            for c in queue.consumers
        )
        figures.dead_total += queue.dead
        figures.dead_letters.extend(_dead_letter_row(d, show_payload) for d in letters[name])
    figures.cluster = cluster
    source = f"redis {where} {dispatcher.config.stream} {queues}"
    figures.chart = _chart(source, cluster["processed"], cluster["failed"])
    return figures


def _dead_letter_row(letter: DeadLetter, show_payload: bool) -> DeadLetterRow:
    payload = None
    if show_payload:
        try:
            payload = json.dumps(
                json.loads(letter.data).get("payload"), indent=2, ensure_ascii=False
            )
        except (ValueError, AttributeError):
            payload = letter.data  # a poison entry: show what is there, escaped like the rest
    return DeadLetterRow(
        queue=letter.queue,
        entry_id=letter.entry_id,
        job_id=letter.job_id,
        type=letter.type or "?",
        error=letter.error,
        reason=letter.reason,
        attempts=letter.attempts,
        failed_at=datetime.fromtimestamp(letter.failed_at, UTC) if letter.failed_at else None,
        traceback=letter.traceback,
        payload=payload,
        damaged=letter.damaged,
    )


def _chart(source: str, processed: int, failed: int) -> Any:
    now = time.time()
    throughput_samples.record(source, Sample(now, processed, failed))
    return throughput_svg(throughput_samples.rates(source), now=now)


# -- views ---------------------------------------------------------------------------------
def dashboard(request: HttpRequest, model_admin: DashboardAdmin) -> HttpResponse:
    """The dashboard page (GET ``?payload=1`` shows payloads, ``?refresh=N`` reloads it).

    Raises:
        PermissionDenied: the user lacks ``csjd_django.view_csjd_dashboard`` (403).
    """
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    show_payload = request.GET.get("payload") == "1"
    refresh = _refresh(request.GET.get("refresh"))
    figures = collect_figures(show_payload=show_payload)
    job_id = request.GET.get("job", "").strip()
    queue = request.GET.get("queue", "").strip() or None
    lookup = lookup_job(job_id, queue) if job_id and not figures.error else None
    from csjd_django import app  # noqa: PLC0415 - the app reads settings lazily
    from csjd_django.schedule_views import schedule_figures  # noqa: PLC0415 - it imports this

    context = {
        **model_admin.admin_site.each_context(request),
        "title": "CSJD jobs",
        "opts": model_admin.opts,
        "app_label": model_admin.opts.app_label,
        "figures": figures,
        "show_payload": show_payload,
        "payload_toggle_url": _query(request, payload=None if show_payload else "1"),
        "refresh": refresh,
        "refresh_links": [
            (f"every {n} s", _query(request, refresh=str(n)), n == refresh) for n in REFRESH_CHOICES
        ]
        + [("off", _query(request, refresh=None), refresh is None)],
        "can_manage": model_admin.has_manage_permission(request),
        "dead_letter_limit": DEAD_LETTER_LIMIT,
        "redis_mode": figures.mode == Mode.REDIS,
        "lookup": lookup,  # a job's status and progress (the lookup form)
        # The Cancel form's queue choices (Redis mode; in process there is one memory).
        "cancel_queues": app.distributed.queues if figures.mode == Mode.REDIS else (),
        # Bad settings or Redis down are the page's error already: no schedule is read then
        # (one connection timeout per page view is enough).
        "schedules": None if figures.error else schedule_figures(app),
        "outboxes": outbox_figures(app),
    }
    return TemplateResponse(request, "csjd_django/dashboard.html", context)


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """The dashboard's row for one outbox (``CSJD_OUTBOX``): its stats, ages in seconds."""

    name: str
    stats: OutboxStats | None
    oldest_age: float | None = None
    last_relay_age: float | None = None
    running: int = 0
    error: str | None = None


def outbox_figures(app: DjangoApp) -> list[OutboxFigures]:
    """One `OutboxFigures` per outbox; a database that cannot answer is shown as an error."""
    now = timezone.now()
    rows = []
    for name, stats in operations.outbox_stats(app).items():
        if isinstance(stats, str):  # the database's error: the page still shows the rest
            rows.append(OutboxFigures(name, None, error=stats))
            continue
        last = stats.last_relay()
        rows.append(
            OutboxFigures(
                name,
                stats,
                stats.oldest_age(now),
                None if last is None else (now - last).total_seconds(),
                stats.live_relays(now),
            )
        )
    return rows


def _query(request: HttpRequest, **changes: str | None) -> str:
    """This page's query string with ``changes`` applied (``None`` removes a parameter)."""
    query = request.GET.copy()
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return f"?{query.urlencode()}" if query else "?"


def _refresh(value: str | None) -> int | None:
    """A valid auto-refresh period from the query string, else None."""
    if value and value.isdigit() and int(value) in REFRESH_CHOICES:
        return int(value)
    return None


def back_to_dashboard(model_admin: DashboardAdmin) -> HttpResponseRedirect:
    """Where an action returns to: the dashboard (its message shown there)."""
    opts = model_admin.opts
    return HttpResponseRedirect(
        reverse(
            f"admin:{opts.app_label}_{opts.model_name}_changelist",
            current_app=model_admin.admin_site.name,
        )
    )


def configured_app(request: HttpRequest) -> DjangoApp | None:
    """The project's app, configured from settings with its dispatcher built, for an action;
    ``None`` once a message on the page says why it cannot be."""
    from csjd_django import app  # noqa: PLC0415 - the app reads settings lazily

    try:
        app.configure_from_settings()
        app.dispatcher  # noqa: B018 - built now: a bad setting is reported here
    except (CSJDError, ValueError) as exc:
        messages.error(request, f"CSJD settings are invalid: {exc}")
        return None
    return app


class DeadLetterForm(forms.Form):
    """Which dead letter an action is for."""

    queue = forms.CharField(max_length=200)
    entry_id = forms.RegexField(regex=re.compile(r"^\d{1,20}-\d{1,20}$"), max_length=41)


def dead_letter_action(
    request: HttpRequest, model_admin: DashboardAdmin, action: str
) -> HttpResponse:
    """POST ``queue`` + ``entry_id``: ``action`` is ``"requeue"`` or ``"delete"``; then back to
    the dashboard with a message. (GET is refused with 405 by the URL's ``require_POST``.)

    Raises:
        PermissionDenied: the user lacks ``csjd_django.manage_dead_letters`` (403).
    """
    if not model_admin.has_manage_permission(request):
        raise PermissionDenied
    form = DeadLetterForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("bad dead-letter reference")
    queue, entry_id = form.cleaned_data["queue"], form.cleaned_data["entry_id"]
    back = back_to_dashboard(model_admin)
    app = configured_app(request)
    if app is None:
        return back
    dispatcher = app.dispatcher
    if app.mode is not Mode.REDIS:
        messages.error(request, "Dead letters exist in Redis mode only.")
        return back
    if queue not in dispatcher.config.queues:  # type: ignore[attr-defined]
        return HttpResponseBadRequest("unknown queue")
    _act(request, dispatcher, action, queue, entry_id)  # type: ignore[arg-type]
    return back


def _act(
    request: HttpRequest,
    dispatcher: RedisDistributedDispatcher,
    action: str,
    queue: str,
    entry_id: str,
) -> None:
    import redis  # noqa: PLC0415 - Redis mode only

    user = request.user.get_username()
    try:
        if action == "requeue":
            done = dispatcher.requeue_dead(entry_id, queue)
        else:
            done = dispatcher.delete_dead(entry_id, queue)
    except DuplicateJob as exc:
        messages.error(
            request,
            f"Dead letter {entry_id} not requeued: its job id is taken by a "
            f"job that is queued or running again ({exc}).",
        )
        return
    except InvalidJob as exc:
        messages.error(
            request, f"Dead letter {entry_id} cannot be requeued: {exc}. Delete it instead."
        )
        return
    except (redis.RedisError, CSJDError, OSError) as exc:
        logger.warning(
            "dead letter %s failed queue=%s entry=%s error=%s", action, queue, entry_id, exc
        )
        messages.error(request, f"Redis is unavailable, nothing was changed: {exc}")
        return
    if not done:
        messages.warning(
            request,
            f"Dead letter {entry_id} is gone (requeued or deleted meanwhile): nothing was changed.",
        )
        return
    past = "requeued" if action == "requeue" else "deleted"
    logger.info("dead letter %s queue=%s entry=%s user=%s", past, queue, entry_id, user)
    messages.success(request, f"Dead letter {entry_id} of queue {queue} {past}.")
