"""The dashboards' actions: requeue or delete a dead letter, cancel a job, pause, resume or
run a schedule now — one implementation for the Django admin page and the Flask blueprint.

Each function checks the form's values, acts through the dispatcher or `csjd_core.operations`,
logs what was done with the user's name (``csjd_core.dashboard`` logger, INFO) and returns a
`Notice` for the page (Django's messages, Flask's flashes). Permission and CSRF checks are the
framework's, made before these are called. A malformed or unknown reference raises
`InvalidReference` (the front ends answer 400); Redis down, a locked store or bad settings
are a notice, never an exception.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from csjd_core import operations
from csjd_core.app import App, Mode
from csjd_core.dashboard import invalid_settings
from csjd_core.errors import CSJDError, DuplicateJob, InvalidJob
from csjd_core.limits import MAX_NAME_LENGTH

if TYPE_CHECKING:
    from csjd_core.distributed import RedisDistributedDispatcher

__all__ = [
    "DEAD_LETTER_ACTIONS",
    "InvalidReference",
    "Notice",
    "cancel_action",
    "dead_letter_action",
    "schedule_action",
]

logger = logging.getLogger("csjd_core.dashboard")

#: What can be done to a dead letter.
DEAD_LETTER_ACTIONS = ("requeue", "delete")
#: A Redis stream entry id, as a dead letter's form gives it.
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
#: The longest queue or schedule name a form may give.
_MAX_FORM_NAME = 200


class InvalidReference(CSJDError, ValueError):
    """An action's form names no valid dead letter, job, queue or schedule (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """What an action tells the user: ``level`` is a Django message level's name and a Flask
    flash category alike."""

    level: Literal["success", "info", "warning", "error"]
    text: str


def _settings_notice(app: App) -> Notice | None:
    """A notice when ``app``'s dispatcher cannot be built (bad settings), else None."""
    try:
        app.dispatcher  # noqa: B018 - built now: a bad setting is reported here
    except (CSJDError, ValueError) as exc:
        return Notice("error", invalid_settings(exc))
    return None


def _form_name(value: str | None, what: str, *, required: bool = True) -> str | None:
    value = (value or "").strip()
    if not value:
        if required:
            raise InvalidReference(f"bad {what} reference")
        return None
    if len(value) > _MAX_FORM_NAME:
        raise InvalidReference(f"bad {what} reference")
    return value


# -- dead letters ----------------------------------------------------------------------------
def dead_letter_action(
    app: App, action: str, queue: str | None, entry_id: str | None, *, user: str
) -> Notice:
    """Requeue (``action="requeue"``) or delete (``"delete"``) the dead letter ``entry_id`` of
    ``queue``.

    Raises:
        InvalidReference: an unknown action, a malformed entry id, or a queue the app does
            not have.
    """
    if action not in DEAD_LETTER_ACTIONS:
        raise InvalidReference(f"unknown dead-letter action {action!r}")
    name = _form_name(queue, "dead-letter")
    entry_id = (entry_id or "").strip()
    if name is None or not _ENTRY_ID.fullmatch(entry_id):
        raise InvalidReference("bad dead-letter reference")
    notice = _settings_notice(app)
    if notice is not None:
        return notice
    if app.mode is not Mode.REDIS:
        return Notice("error", "Dead letters exist in Redis mode only.")
    dispatcher: RedisDistributedDispatcher = app.dispatcher  # type: ignore[assignment]
    if name not in dispatcher.config.queues:
        raise InvalidReference("unknown queue")
    return _act(dispatcher, action, name, entry_id, user)


def _act(
    dispatcher: RedisDistributedDispatcher, action: str, queue: str, entry_id: str, user: str
) -> Notice:
    import redis  # noqa: PLC0415 - Redis mode only

    try:
        if action == "requeue":
            done = dispatcher.requeue_dead(entry_id, queue)
        else:
            done = dispatcher.delete_dead(entry_id, queue)
    except DuplicateJob as exc:
        return Notice(
            "error",
            f"Dead letter {entry_id} not requeued: its job id is taken by a "
            f"job that is queued or running again ({exc}).",
        )
    except InvalidJob as exc:
        return Notice(
            "error", f"Dead letter {entry_id} cannot be requeued: {exc}. Delete it instead."
        )
    except (redis.RedisError, CSJDError, OSError) as exc:
        logger.warning(
            "dead letter %s failed queue=%s entry=%s user=%s error=%s",
            action,
            queue,
            entry_id,
            user,
            exc,
        )
        return Notice("error", f"Redis is unavailable, nothing was changed: {exc}")
    if not done:
        return Notice(
            "warning",
            f"Dead letter {entry_id} is gone (requeued or deleted meanwhile): nothing was changed.",
        )
    past = "requeued" if action == "requeue" else "deleted"
    logger.info("dead letter %s queue=%s entry=%s user=%s", past, queue, entry_id, user)
    return Notice("success", f"Dead letter {entry_id} of queue {queue} {past}.")


# -- cancel ----------------------------------------------------------------------------------
_VERDICTS = ("cancelled", "requested", "ended", "missing")


def cancel_action(app: App, job_id: str | None, queue: str | None, *, user: str) -> Notice:
    """Cancel the job ``job_id`` (in ``queue``, Redis mode; ``None``: each of the app's
    queues), as ``csjd cancel`` does (`operations.cancel_jobs`), in this process.

    Raises:
        InvalidReference: no job id, or a queue the app does not have (any queue outside
            Redis mode).
    """
    job_id = (job_id or "").strip()
    if not job_id or len(job_id) > MAX_NAME_LENGTH:
        raise InvalidReference("bad job reference")
    name = _form_name(queue, "queue", required=False)
    notice = _settings_notice(app)
    if notice is not None:
        return notice
    if name is not None and (app.mode is not Mode.REDIS or name not in app.distributed.queues):
        raise InvalidReference("unknown queue")
    try:
        report = operations.cancel_jobs(app, [job_id], name, from_command=False)
    except CSJDError as exc:  # BackendUnavailable, JobStoreLocked
        logger.warning("job cancel failed id=%r queue=%s user=%s error=%s", job_id, name, user, exc)
        return Notice("error", f"Job {job_id} was not cancelled: {exc}")
    verdict = next(v for v in _VERDICTS if getattr(report, v))
    logger.info("job cancel id=%r queue=%s user=%s verdict=%s", job_id, name, user, verdict)
    if verdict == "cancelled":
        return Notice("success", f"Job {job_id} cancelled: it will not run.")
    if verdict == "requested":
        return Notice(
            "success",
            f"Job {job_id} is running: its cancellation was requested. Its handler is told "
            "(ctx.cancelled) and the job ends cancelled.",
        )
    if verdict == "ended":
        return Notice("info", f"Job {job_id} had already ended: nothing changed.")
    where = "" if app.mode is Mode.REDIS else " in this web process"
    return Notice("error", f"No job {job_id}{where} (never submitted, or its result expired).")


# -- schedules -------------------------------------------------------------------------------
def schedule_action(app: App, action: str, name: str | None, *, user: str) -> Notice:
    """Pause, resume or run now (``action``: one of `operations.SCHEDULE_ACTIONS`) the
    schedule ``name``, in this process (`operations.schedule_action`).

    Raises:
        InvalidReference: an unknown action, or no schedule of that name.
    """
    if action not in operations.SCHEDULE_ACTIONS:
        raise InvalidReference("unknown action")
    schedule = _form_name(name, "schedule")
    assert schedule is not None
    notice = _settings_notice(app)
    if notice is not None:
        return notice
    if schedule not in app.schedules:
        raise InvalidReference("unknown schedule")
    try:
        done = operations.schedule_action(app, action, schedule, from_command=False)
    except CSJDError as exc:  # BackendUnavailable, QueueFull, JobStoreLocked
        logger.warning("schedule %s failed name=%s user=%s error=%s", action, schedule, user, exc)
        return Notice("error", f"Schedule {schedule} was not changed: {exc}")
    if done.job_id is not None:
        logger.info("schedule run now name=%s id=%s user=%s", schedule, done.job_id, user)
        return Notice("success", f"Schedule {schedule}: a run was enqueued now ({done.job_id}).")
    if done.changed:
        past = "paused" if action == "pause" else "resumed"
        logger.info("schedule %s name=%s user=%s", past, schedule, user)
        return Notice("success", f"Schedule {schedule} {past}.")
    state = "was already paused" if action == "pause" else "is not paused"
    return Notice("info", f"Schedule {schedule} {state}: nothing changed.")
