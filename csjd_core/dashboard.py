"""What the dashboards show: one data layer for the Django admin page and the Flask blueprint.

Every figure is read here, from the app's dispatcher and `csjd_core.operations` (`QueueStats`,
`DeadLetter`, schedule rows, outbox stats), into typed rows; each framework only renders them
with its own templates (and its actions go through `csjd_core.dashboard_actions`). Nothing here
raises for an unreachable Redis or bad settings: the figures carry the error for the page to
show. Framework-free: the standard library only (``redis`` is imported in Redis mode).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from csjd_core import operations
from csjd_core.app import App, Mode
from csjd_core.errors import CSJDError, JobNotFound
from csjd_core.job import JobStatus
from csjd_core.metrics import MetricsSnapshot
from csjd_core.operations import ScheduleRow
from csjd_core.outbox import OutboxStats
from csjd_core.stats import ScheduleState
from csjd_core.throughput import SVG, Sample, ThroughputSamples, throughput_svg

if TYPE_CHECKING:
    from collections.abc import Mapping

    from csjd_core.distributed import RedisDistributedDispatcher
    from csjd_core.stats import DeadLetter

__all__ = [
    "DEAD_LETTER_LIMIT",
    "REFRESH_CHOICES",
    "ConsumerRow",
    "DeadLetterRow",
    "Figures",
    "JobLookup",
    "OutboxFigures",
    "QueueRow",
    "ScheduleFigures",
    "collect_figures",
    "invalid_settings",
    "lookup_job",
    "outbox_figures",
    "page",
    "refresh_period",
    "schedule_figures",
    "throughput_samples",
]

logger = logging.getLogger(__name__)

#: Dead letters listed per queue (the oldest first, as Redis keeps them).
DEAD_LETTER_LIMIT = 50
#: Auto-refresh periods the pages offer (seconds).
REFRESH_CHOICES = (5, 15, 60)

#: This process's samples of the counters, for the throughput chart (shared by the pages of
#: every framework and app in the process: each source is keyed by its mode and dispatcher).
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
    """One consumer of a queue's group (ages in seconds; ``heartbeat_age`` ``None``: expired)."""

    queue: str
    name: str
    pending: int
    idle: float
    heartbeat_age: float | None


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One dead letter as the pages show it (``payload`` only when asked for)."""

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
    """Everything a dashboard shows at the top: the mode, what the figures cover, the
    counters (``metrics``: this process's dispatcher; ``cluster``: Redis-wide), the queues,
    consumers and dead letters (Redis mode), this process's workers (in process), the chart,
    and the error that kept the figures from being read."""

    mode: str
    scope: str
    metrics: MetricsSnapshot | None = None
    cluster: dict[str, int] | None = None
    queues: list[QueueRow] = field(default_factory=list)
    consumers: list[ConsumerRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    dead_total: int = 0
    started: bool = False
    unfinished: int | None = None
    workers: int | None = None
    store: str | None = None
    chart: SVG | None = None
    error: str | None = None
    #: The queues a Cancel form offers (Redis mode; in process there is one memory).
    cancel_queues: tuple[str, ...] = ()

    @property
    def redis_mode(self) -> bool:
        """True in Redis mode (queues, consumers and dead letters are shown)."""
        return self.mode == Mode.REDIS


def invalid_settings(exc: Exception) -> str:
    """The pages' text for settings that could not be applied."""
    return f"CSJD settings are invalid: {exc}"


def collect_figures(
    app: App, *, show_payload: bool = False, samples: ThroughputSamples | None = None
) -> Figures:
    """Read ``app``'s figures now (and record a throughput sample in ``samples``, default
    `throughput_samples`).

    Never raises for an unreachable Redis or bad settings: the figures' ``error`` says why.
    """
    samples = throughput_samples if samples is None else samples
    try:
        dispatcher = app.dispatcher  # built now: a bad setting is reported here
    except (CSJDError, ValueError) as exc:
        return Figures(mode="?", scope="", error=invalid_settings(exc))
    pid = os.getpid()
    if app.mode is Mode.REDIS:
        return _redis_figures(dispatcher, samples, show_payload=show_payload)  # type: ignore[arg-type]
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
    figures.chart = _chart(samples, source, metrics.processed, metrics.failed)
    return figures


def _redis_figures(
    dispatcher: RedisDistributedDispatcher, samples: ThroughputSamples, *, show_payload: bool
) -> Figures:
    import redis  # noqa: PLC0415 - Redis mode only

    where = dispatcher.redis_config.display
    queues = ", ".join(dispatcher.config.queues)
    figures = Figures(
        mode=Mode.REDIS,
        metrics=dispatcher.metrics(),
        scope=(
            f"Redis mode: cluster-wide figures of the queues {queues} at {where}, read now. "
            "The column 'this web process' counts only what this process submitted."
        ),
        cancel_queues=tuple(dispatcher.config.queues),
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
    figures.chart = _chart(samples, source, cluster["processed"], cluster["failed"])
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


def _chart(samples: ThroughputSamples, source: str, processed: int, failed: int) -> SVG:
    now = time.time()
    samples.record(source, Sample(now, processed, failed))
    return throughput_svg(samples.rates(source), now=now)


def refresh_period(value: str | None) -> int | None:
    """A valid auto-refresh period from a query string's value, else None."""
    if value and value.isdigit() and int(value) in REFRESH_CHOICES:
        return int(value)
    return None


# -- the job lookup --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class JobLookup:
    """A dashboard's job lookup (``?job=ID[&queue=Q]``): the job's status, or why none."""

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


def lookup_job(app: App, job_id: str, queue: str | None) -> JobLookup:
    """Look a job up (``app.status``); never raises: an unknown id, a bad queue name or an
    unreachable Redis is the lookup's error."""
    try:
        return JobLookup(job_id, queue, status=app.status(job_id, queue))
    except JobNotFound:
        return JobLookup(job_id, queue, error="No such job (or its result expired).")
    except (CSJDError, ValueError) as exc:
        return JobLookup(job_id, queue, error=f"The job could not be looked up: {exc}")


# -- schedules and outboxes ------------------------------------------------------------------
@dataclass
class ScheduleFigures:
    """The Schedules section: its rows (each with a state: all zero before a ticker saw it),
    whether their state is shared by every process, and the error that kept them from being
    read."""

    rows: list[ScheduleRow] = field(default_factory=list)
    shared: bool = True
    error: str | None = None


def schedule_figures(app: App) -> ScheduleFigures | None:
    """Read every schedule's row now (``None``: the app has no schedule). Never raises for
    an unreachable Redis or a locked store: the section shows the error instead."""
    if not app.schedules:
        return None
    try:
        rows = operations.schedule_rows(app)
    except CSJDError as exc:  # BackendUnavailable, JobStoreLocked
        logger.warning("dashboard could not read the schedules error=%s", exc)
        return ScheduleFigures(error=f"The schedules could not be read: {exc}")
    rows = [replace(row, state=row.state or ScheduleState(row.schedule.name)) for row in rows]
    return ScheduleFigures(rows=rows, shared=operations.schedules_shared(app))


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """A dashboard's row for one outbox: its stats, ages in seconds, or why it can't be read."""

    name: str
    stats: OutboxStats | None
    oldest_age: float | None = None
    last_relay_age: float | None = None
    running: int = 0
    error: str | None = None


def outbox_figures(app: App, now: datetime | None = None) -> list[OutboxFigures]:
    """One `OutboxFigures` per outbox of ``app``; a database that cannot answer is shown as
    an error."""
    now = datetime.now(UTC) if now is None else now
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


def page(app: App, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """What both dashboard pages render, from the request's query parameters (``query``: each
    name's values, as Django's ``dict(request.GET.lists())`` and Flask's
    ``request.args.to_dict(flat=False)`` give them): ``?payload=1`` shows payloads,
    ``?refresh=N`` reloads the page, ``?job=ID[&queue=Q]`` looks a job up. Each framework adds
    who may act, its CSRF token and its own context."""

    def arg(name: str) -> str:
        values = query.get(name) or [""]
        return values[-1].strip()

    def link(**changes: str | None) -> str:
        """This page's query string with ``changes`` applied (``None`` removes a name)."""
        changed = dict(query)
        for name, value in changes.items():
            if value is None:
                changed.pop(name, None)
            else:
                changed[name] = [value]
        return f"?{urlencode(changed, doseq=True)}" if changed else "?"

    show_payload = arg("payload") == "1"
    refresh = refresh_period(arg("refresh") or None)
    figures = collect_figures(app, show_payload=show_payload)
    job_id = arg("job")
    return {
        "figures": figures,
        "redis_mode": figures.redis_mode,
        "show_payload": show_payload,
        "payload_toggle_url": link(payload=None if show_payload else "1"),
        "refresh": refresh,
        "refresh_links": [
            (f"every {n} s", link(refresh=str(n)), n == refresh) for n in REFRESH_CHOICES
        ]
        + [("off", link(refresh=None), refresh is None)],
        "dead_letter_limit": DEAD_LETTER_LIMIT,
        # a job's status and progress (the lookup form)
        "lookup": (
            lookup_job(app, job_id, arg("queue") or None) if job_id and not figures.error else None
        ),
        # Bad settings or Redis down are the page's error already: no schedule is read then
        # (one connection timeout per page view is enough).
        "schedules": None if figures.error else schedule_figures(app),
        "outboxes": outbox_figures(app),
    }
