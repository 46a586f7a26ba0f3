"""The text every front end prints for an operation's result (``csjd``, ``manage.py csjd_*``,
``flask csjd``): one rendering, so the three read the same."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from csjd_core import operations
from csjd_core.app import App
from csjd_core.errors import CSJDError, StoreCorrupted
from csjd_core.job import JobStatus
from csjd_core.metrics import MetricsSnapshot
from csjd_core.operations import CancelReport, RequeueReport, ScheduleRow
from csjd_core.stats import DeadLetter, QueueStats, ScheduleState

Echo = Callable[[str], object]
#: Asks the operator; raises to abort (``click.confirm(..., abort=True)``).
Confirm = Callable[[str], object]

__all__ = [
    "dead_letter_line",
    "dead_list",
    "dead_purge",
    "dead_requeue",
    "dead_show",
    "health_lines",
    "replay",
    "requeue_lines",
    "run_line",
    "schedule_action",
    "schedule_lines",
    "schedules",
    "stats",
    "stats_lines",
    "store_lines",
]

#: Stored jobs a listing shows before saying how many more there are.
LISTED_JOBS = 50
#: ``csjd stats --json``: the key listing the outboxes (braces never appear in a queue's name).
OUTBOX_KEY = "{outbox}"


def stats_lines(stats: dict[str, QueueStats]) -> list[str]:
    """``csjd stats``: per queue its figures, counters and consumers."""
    lines = []
    for name, queue in stats.items():
        lines.append(
            f"queue {name}: stream={queue.stream_length} in_flight={queue.in_flight} "
            f"scheduled={queue.scheduled} unfinished={queue.unfinished} dead={queue.dead} "
            f"(kept: about {queue.max_dead_letters})"
        )
        counters = queue.counters
        lines.append(
            f"  counters: processed={counters.processed} succeeded={counters.succeeded} "
            f"retried={counters.retried} failed={counters.failed} "
            f"cancelled={counters.cancelled}"
        )
        for consumer in queue.consumers:
            age = "expired" if consumer.heartbeat_age is None else f"{consumer.heartbeat_age:.1f}s"
            lines.append(
                f"  consumer {consumer.name}: pending={consumer.pending} "
                f"idle={consumer.idle_ms}ms heartbeat={age}"
            )
    return lines


def _utc(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def schedule_lines(rows: Sequence[ScheduleRow], *, shared: bool = True) -> list[str]:
    """``csjd schedule``: each schedule, its next slot, last run and the fleet's counts
    (``shared``: whether every process shares the marks, `operations.schedules_shared`)."""
    if not rows:
        return ["no schedules (declare one with @app.job(..., schedule=...))"]
    lines = []
    for row in rows:
        schedule, state = row.schedule, row.state
        lines.append(
            f"schedule {schedule.name}: {schedule.describe()} job={schedule.job.type} "
            f"queue={row.queue or '-'}" + (" PAUSED" if state is not None and state.paused else "")
        )
        jitter = (row.next_due - row.next_slot).total_seconds()
        due = f" (due {jitter:+.0f}s: jitter)" if jitter >= 0.5 else ""
        lines.append(f"  next={_utc(row.next_slot.timestamp())}{due}")
        if state is None:
            lines.append("  not ticked yet")
            continue
        outcome = state.last_outcome or "-"
        if state.last_outcome_at is not None:
            outcome += f" at {_utc(state.last_outcome_at)} ({state.last_outcome_id})"
        lines.append(f"  last_enqueued={state.last_enqueued or '-'} last_outcome={outcome}")
        lines.append(
            f"  counts: enqueued={state.enqueued} manual={state.manual} "
            f"duplicates={state.duplicates} overlaps={state.overlaps} "
            f"paused_skips={state.paused_skips} misfires={state.misfires}"
        )
    if not shared:
        lines.append(
            "note: in-process mode without a file store: each process ticks and keeps its own "
            "schedule state (this process's is shown); use Redis or a store in production"
        )
    return lines


def _state_json(state: ScheduleState) -> dict[str, object]:
    """A mark as JSON, its times in ISO 8601 like the listing's other times."""
    data = state.to_json()
    for field in ("mark", "last_outcome_at"):
        at = data[field]
        data[field] = None if at is None else datetime.fromtimestamp(at, UTC).isoformat()
    return data


def schedules(app: App, as_json: bool, *, echo: Echo) -> None:
    """``csjd schedule``: list the app's schedules."""
    rows = operations.schedule_rows(app)
    if as_json:
        payload = [
            {
                "name": row.schedule.name,
                "job": row.schedule.job.type,
                "schedule": row.schedule.describe(),
                "queue": row.queue,
                "next_slot": row.next_slot.isoformat(),
                "next_due": row.next_due.isoformat(),
                "state": None if row.state is None else _state_json(row.state),
            }
            for row in rows
        ]
        echo(json.dumps(payload, indent=2))
        return
    for line in schedule_lines(rows, shared=operations.schedules_shared(app)):
        echo(line)


def schedule_action(app: App, action: str, name: str, *, echo: Echo) -> str | None:
    """``csjd schedule APP pause|resume|run NAME``: `operations.schedule_action` from a
    command's process, and say what it did.

    Returns:
        The job id of a ``run`` (``None`` for pause and resume).

    Raises:
        The errors of `operations.schedule_action`.
    """
    done = operations.schedule_action(app, action, name, from_command=True)
    if done.job_id is not None:
        echo(f"enqueued {done.job_id}")
    elif done.changed:
        echo(f"schedule {name} {'paused' if action == 'pause' else 'resumed'}")
    else:
        echo(f"schedule {name} {'was already paused' if action == 'pause' else 'is not paused'}")
    return done.job_id


def health_lines(live: dict[str, int], host: str | None = None) -> list[str]:
    """``csjd health``: live workers per queue (``host``: counted on that host only)."""
    where = f" on {host}" if host else ""
    return [f"queue {name}: {count} live worker(s){where}" for name, count in live.items()]


def dead_letter_line(letter: DeadLetter) -> str:
    """One row of ``csjd dead list``."""
    when = (
        "?"
        if letter.failed_at is None
        else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(letter.failed_at))
    )
    attempts = "?" if letter.attempts is None else letter.attempts
    damaged = f"  DAMAGED ({letter.damaged})" if letter.damaged else ""
    return (
        f"{letter.entry_id}  {letter.job_id}  {letter.type}  attempts={attempts}  {when}  "
        f"{letter.reason}: {letter.error[:120]}{damaged}"
    )


def requeue_lines(report: RequeueReport, asked: int, queue: str) -> tuple[list[str], list[str]]:
    """``csjd dead requeue``: (lines for standard output, lines for standard error)."""
    errors = [f"skipped {entry_id} (queue {queue}): {why}" for entry_id, why in report.skipped]
    return [f"requeued {len(report.requeued)} of {asked}"], errors


def store_lines(path: str, statuses: Sequence[JobStatus]) -> list[str]:
    """``csjd replay PATH``: the counts per state, then the first jobs."""
    counts = Counter(str(s.state) for s in statuses)
    lines = [
        f"{path}: {_count(len(statuses), 'unfinished job')}"
        + "".join(f", {n} {state}" for state, n in sorted(counts.items()))
    ]
    for status in statuses[:LISTED_JOBS]:
        lines.append(
            f"  {status.id}  {status.type}  {status.state}  attempts={status.attempts}"
            + (f"  last_error={status.last_error}" if status.last_error else "")
        )
    if len(statuses) > LISTED_JOBS:
        lines.append(f"  ... and {len(statuses) - LISTED_JOBS} more (use --export)")
    return lines


def run_line(metrics: MetricsSnapshot) -> str:
    """``csjd replay PATH --run``: what the run did."""
    return (
        f"ran {_count(metrics.accepted, 'job')}: {metrics.succeeded} succeeded, "
        f"{metrics.failed} failed, {metrics.retried} retries"
    )


def stats(app: App, queues: str | None, as_json: bool, *, needed_by: str, echo: Echo) -> None:
    """Print the queues' figures (``csjd stats``, ``manage.py csjd_stats``, ``flask csjd
    stats``), as text or JSON.

    Raises:
        InvalidConfig: a bad ``--queues``.
        RedisModeRequired, BackendUnavailable: see `operations.queue_stats`.
    """
    figures = operations.queue_stats(app, operations.queue_list(queues), needed_by=needed_by)
    outboxes = operations.outbox_stats(app)
    now = datetime.now(UTC)
    if as_json:
        document: dict[str, Any] = {n: q.to_json() for n, q in figures.items()}
        if outboxes:  # braces are never part of a queue's name
            document[OUTBOX_KEY] = [
                {"name": name, "error": s} if isinstance(s, str) else s.to_json(name, now)
                for name, s in outboxes.items()
            ]
        echo(json.dumps(document, indent=2, sort_keys=True))
        return
    for line in stats_lines(figures):
        echo(line)
    for name, outbox in outboxes.items():
        echo(f"outbox {name}: {outbox}" if isinstance(outbox, str) else outbox.line(name, now))


def replay(
    path: str,
    app: App | None,
    action: str,
    *,
    repair: bool,
    echo: Echo,
    needed_by: str = "csjd replay --into-redis",
) -> None:
    """Do and print a replay (``csjd replay``, ``manage.py csjd_replay``, ``flask csjd
    replay``): ``action`` is ``"list"``, ``"export"``, ``"run"`` or ``"into-redis"`` (the
    last two with ``app``).

    Raises:
        CSJDError: no store, a locked or damaged one, missing handlers, or a move interrupted.
    """
    try:
        _replay(path, app, action, repair=repair, echo=echo, needed_by=needed_by)
    except StoreCorrupted as exc:
        if repair:
            raise
        raise StoreCorrupted(
            f"{exc} (the --repair option does that)", path=exc.path, offset=exc.offset
        ) from exc


def _replay(
    path: str, app: App | None, action: str, *, repair: bool, echo: Echo, needed_by: str
) -> None:
    if action == "into-redis":
        assert app is not None
        moved, already = operations.move_into_redis(path, app, repair=repair, needed_by=needed_by)
        echo(f"moved {_count(moved, 'job')} into Redis ({already} were already there)")
    elif action == "export":
        for record in operations.export_store(path, repair=repair):
            echo(json.dumps(record))
    else:
        lines = store_lines(path, operations.store_jobs(path, repair=repair))
        if action == "run":
            assert app is not None
            echo(lines[0])  # what is about to run
            echo(run_line(operations.run_store(path, app)))
            return
        for line in lines:
            echo(line)


# -- dead letters: the flows of ``csjd dead``, ``manage.py csjd_dead`` and ``flask csjd dead``
def dead_list(app: App, queue: str | None, count: int, *, needed_by: str, echo: Echo) -> None:
    """Print the oldest ``count`` dead letters of ``queue``."""
    letters = operations.dead_letters(
        app, operations.queue_option(queue), count, needed_by=needed_by
    )
    if not letters:
        echo(f"no dead letters in queue {queue or app.distributed.queues[0]}")
    for letter in letters:
        echo(dead_letter_line(letter))


def dead_show(app: App, entry_id: str, queue: str | None, *, needed_by: str, echo: Echo) -> None:
    """Print one dead letter with its traceback and payload.

    Raises:
        CSJDError: there is no such dead letter.
    """
    letter = operations.dead_letter(
        app, entry_id, operations.queue_option(queue), needed_by=needed_by
    )
    if letter is None:
        raise CSJDError(
            f"no dead letter {entry_id} in queue {queue or app.distributed.queues[0]} "
            "(--queue names another)"
        )
    echo(json.dumps(letter.to_json(), indent=2))


def dead_requeue(
    app: App,
    entry_ids: Sequence[str] | None,
    queue: str | None,
    *,
    confirm: Confirm,
    needed_by: str,
    echo: Echo,
    warn: Echo,
) -> None:
    """Requeue dead letters (``entry_ids=None``: all of ``queue``'s) once ``confirm`` agrees;
    the skipped ones are told to ``warn``.

    Raises:
        CSJDError: some were not requeued (after saying which and why).
    """
    queue = operations.queue_option(queue)
    if entry_ids is None:
        asked = operations.dead_count(app, queue, needed_by=needed_by)
        if not asked:
            echo("no dead letters to requeue")
            return
    else:
        asked = len(entry_ids)
    confirm(f"requeue {asked} dead letter(s)?")
    report = operations.requeue_dead(app, entry_ids, queue, needed_by=needed_by)
    out, errors = requeue_lines(report, asked, queue or app.distributed.queues[0])
    for line in errors:
        warn(line)
    for line in out:
        echo(line)
    if report.skipped:
        raise CSJDError(f"{len(report.skipped)} of {asked} dead letter(s) not requeued")


def dead_purge(
    app: App, queue: str | None, *, confirm: Confirm, needed_by: str, echo: Echo
) -> None:
    """Delete every dead letter of ``queue`` once ``confirm`` agrees."""
    queue = operations.queue_option(queue)
    count = operations.dead_count(app, queue, needed_by=needed_by)
    if not count:
        echo(f"no dead letters to purge in queue {queue or app.distributed.queues[0]}")
        return
    confirm(f"delete {count} dead letter(s)?")
    echo(f"purged {operations.purge_dead(app, queue, needed_by=needed_by)}")


def _count(count: int, noun: str) -> str:
    """``1 job``, ``2 jobs``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def cancel_lines(report: CancelReport) -> tuple[list[str], list[str]]:
    """``csjd cancel`` by id: what to print (standard output, standard error)."""
    out = [f"cancelled {job_id}" for job_id in report.cancelled]
    out += [
        f"cancellation requested {job_id} (running: it is told, and ends cancelled)"
        for job_id in report.requested
    ]
    out += [f"not cancelled {job_id}: it had already ended" for job_id in report.ended]
    out += [f"not cancelled {job_id}: it had started (left running)" for job_id in report.running]
    errors = [
        f"no job {job_id} (never submitted, or its result expired)" for job_id in report.missing
    ]
    return out, errors


def cancel(
    app: App,
    job_ids: Sequence[str],
    queue: str | None,
    *,
    job_type: str | None = None,
    confirm: Confirm,
    needed_by: str,
    echo: Echo,
    warn: Echo,
) -> CancelReport:
    """``csjd cancel APP ID... | --type T | --all``: cancel the jobs by id, or (no id) every
    waiting job of ``queue`` (of ``job_type`` if given) once ``confirm`` agrees.

    Raises:
        CSJDError: an id had no record (after saying which); the errors of
            `operations.cancel_jobs`.
    """
    queue = operations.queue_option(queue)
    if job_ids:
        report = operations.cancel_jobs(app, job_ids, queue, from_command=True, needed_by=needed_by)
    else:
        waiting = operations.waiting_jobs(
            app, job_type, queue, from_command=True, needed_by=needed_by
        )
        what = f"waiting job(s) of type {job_type}" if job_type else "waiting job(s)"
        where = f" in queue {queue}" if queue else ""
        if not waiting:
            echo(f"no {what.replace('(s)', 's')}{where} to cancel")
            return CancelReport()
        confirm(f"cancel {len(waiting)} {what}{where}?")
        report = operations.cancel_jobs(
            app, waiting, queue, waiting_only=True, from_command=True, needed_by=needed_by
        )
        echo(
            f"cancelled {len(report.cancelled)} {what}{where}"
            + (f"; {len(report.running)} had started (left running)" if report.running else "")
            + (f"; {len(report.ended)} had ended" if report.ended else "")
        )
        return report
    out, errors = cancel_lines(report)
    for line in errors:
        warn(line)
    for line in out:
        echo(line)
    if report.missing:
        raise CSJDError(f"{len(report.missing)} of {len(job_ids)} job(s) not found")
    return report
