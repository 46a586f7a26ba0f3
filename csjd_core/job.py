"""Jobs, their states and status records, and the admission checks every backend shares."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from csjd_core.errors import InvalidJob

__all__ = ["Job", "JobState", "JobStatus"]

_SCALARS = (str, int, bool, type(None))


@dataclass(slots=True, eq=True)
class Job:
    """One unit of work: a handler type plus a JSON payload.

    Args:
        id: unique, non-empty id; also the idempotency key (see `DuplicateJob`).
        type: the registered handler type, e.g. ``"email"``.
        payload: any JSON-serializable value (never pickled).
        max_attempts: attempts before the job fails for good (default: the config's).
        timeout: seconds (or a `timedelta`) per attempt, or ``None`` for no timeout.
        run_at: a timezone-aware `datetime` before which the job must not start.
        queue: the queue name (distributed mode); ``None`` is the default queue.
    """

    id: str
    type: str
    payload: Any = None
    max_attempts: int | None = field(default=None, kw_only=True)
    timeout: float | timedelta | None = field(default=None, kw_only=True)
    run_at: datetime | None = field(default=None, kw_only=True)
    queue: str | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """The job as a JSON-ready mapping (the wire and storage format)."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "max_attempts": self.max_attempts,
            "timeout": timeout_seconds(self.timeout),
            "run_at": self.run_at.timestamp() if self.run_at is not None else None,
            "queue": self.queue,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job from `to_dict` output.

        Raises:
            InvalidJob: a required field is missing or has the wrong type.
        """
        if not isinstance(data, dict):
            raise InvalidJob(f"malformed job record: expected an object, got {type(data).__name__}")
        try:
            run_at = data.get("run_at")
            job = cls(
                data["id"],
                data["type"],
                data.get("payload"),
                max_attempts=data.get("max_attempts"),
                timeout=data.get("timeout"),
                run_at=(datetime.fromtimestamp(run_at, tz=UTC) if run_at is not None else None),
                queue=data.get("queue"),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidJob(f"malformed job record: {exc!r}") from exc
        validate_job(job)
        return job


class JobState(StrEnum):
    """Where a job is in its life. Values map onto Django's ``TaskResultStatus``."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """True for the terminal states."""
        return self in (JobState.SUCCEEDED, JobState.FAILED)

    @property
    def django_status(self) -> str:
        """The matching ``django.tasks.TaskResultStatus`` name."""
        return _DJANGO_STATUS[self]


_DJANGO_STATUS = {
    JobState.QUEUED: "READY",
    JobState.SCHEDULED: "READY",
    JobState.RUNNING: "RUNNING",
    JobState.SUCCEEDED: "SUCCESSFUL",
    JobState.FAILED: "FAILED",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatus:
    """What is known about one job, as returned by ``status(job_id)``."""

    id: str
    type: str
    state: JobState
    attempts: int
    max_attempts: int
    queue: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    run_at: datetime | None = None
    last_error: str | None = None
    last_traceback: str | None = None
    result: Any = None
    worker_id: str | None = None
    payload: Any = None


def utc_from_timestamp(ts: float | None) -> datetime | None:
    """A UTC datetime from a Unix timestamp, passing ``None`` through."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def timeout_seconds(value: float | timedelta | None) -> float | None:
    """Normalise a timeout given as seconds or a `timedelta`."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _plain_json(value: Any, depth: int = 0) -> bool:
    """True for values built only of dict/list/str/int/bool/None/finite float.

    A fast path: it never calls the encoder. False means "not sure" (subclasses, tuples,
    deep nesting, non-str keys), and `check_json` then asks `json.dumps`.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > 32:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain_json(item, depth + 1):
                return False
        return True
    if kind is list:
        return all(_plain_json(item, depth + 1) for item in value)
    return False


def check_json(value: Any, what: str) -> None:
    """Raise `InvalidJob` unless ``value`` is JSON-serializable (strict: no NaN)."""
    if isinstance(value, _SCALARS) or _plain_json(value):
        return
    if isinstance(value, float):
        if math.isfinite(value):
            return
        raise InvalidJob(f"{what} is not JSON-serializable: {value!r} is not a finite number")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidJob(f"{what} is not JSON-serializable: {exc}") from exc


def validate_job(job: Job) -> None:
    """The admission checks shared by every mode.

    Raises:
        InvalidJob: naming the field and the problem.
    """
    if not isinstance(job, Job):
        raise InvalidJob(f"expected a Job, got {type(job).__name__}")
    if not isinstance(job.id, str) or not job.id:
        raise InvalidJob(f"job id must be a non-empty string, got {job.id!r}")
    if not isinstance(job.type, str) or not job.type:
        raise InvalidJob(f"job type must be a non-empty string, got {job.type!r} (id={job.id!r})")
    if job.payload is not None:
        check_json(job.payload, f"payload of job {job.id!r}")
    if job.max_attempts is not None and (
        not isinstance(job.max_attempts, int)
        or isinstance(job.max_attempts, bool)
        or job.max_attempts < 1
    ):
        raise InvalidJob(f"max_attempts must be an int >= 1, got {job.max_attempts!r}")
    if job.timeout is not None:
        if isinstance(job.timeout, bool) or not isinstance(job.timeout, int | float | timedelta):
            raise InvalidJob(f"timeout must be seconds or a timedelta, got {job.timeout!r}")
        seconds = timeout_seconds(job.timeout)
        if seconds is None or not seconds > 0 or not math.isfinite(seconds):
            raise InvalidJob(f"timeout must be positive, got {job.timeout!r}")
    if job.run_at is not None:
        if not isinstance(job.run_at, datetime):
            raise InvalidJob(f"run_at must be a datetime, got {type(job.run_at).__name__}")
        if job.run_at.tzinfo is None or job.run_at.utcoffset() is None:
            raise InvalidJob(
                f"run_at must be timezone-aware (got naive {job.run_at.isoformat()}); "
                "use datetime.now(timezone.utc) + timedelta(...)"
            )
    if job.queue is not None and (not isinstance(job.queue, str) or not job.queue):
        raise InvalidJob(f"queue must be a non-empty string or None, got {job.queue!r}")
