"""Jobs, their states and status records, and the admission checks every backend shares."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from csjd_core.errors import InvalidJob
from csjd_core.limits import (
    MAX_DURATION,
    MAX_INT_BITS,
    MAX_JOB_BYTES,
    MAX_NAME_LENGTH,
    MAX_NESTING,
    MAX_PRIORITY,
    MIN_PRIORITY,
    brief,
    headers,
    is_text,
    job_options,
    name_problem,
    priority,
)
from csjd_core.progress import Progress

__all__ = ["Job", "JobState", "JobStatus"]


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
        expires: a timezone-aware `datetime`: a job not started by then never runs (it ends
            ``cancelled``, ``cancel_reason="expired"``). ``None``: it never expires.
        priority: an int from -100 to 100 (Django's range): a higher one starts first, FIFO
            among equals (in Redis mode by band: docs/distributed.md, "Priorities").
            Retries keep it.
        headers: ``None``, or a small dict of text to text carried with the job and never
            read by CSJD's admission (`csjd_core.limits.headers` bounds it): the W3C trace
            context (``traceparent``, ``tracestate``) of the call that enqueued it, when
            tracing is on (docs/observability.md). Retries, dead-letter requeues, replays and
            outbox rows keep it; workers before it ignore it.
    """

    id: str
    type: str
    payload: Any = None
    max_attempts: int | None = field(default=None, kw_only=True)
    timeout: float | timedelta | None = field(default=None, kw_only=True)
    run_at: datetime | None = field(default=None, kw_only=True)
    queue: str | None = field(default=None, kw_only=True)
    expires: datetime | None = field(default=None, kw_only=True)  # (issue 18: expiry)
    priority: int = field(default=0, kw_only=True)
    headers: dict[str, str] | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """The job as a JSON-ready mapping (the wire and storage format); ``priority``,
        ``expires`` and ``headers`` only when set, so a default job's mapping is what releases
        before them wrote (and read: they ignore the keys)."""
        data = {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "max_attempts": self.max_attempts,
            "timeout": timeout_seconds(self.timeout),
            "run_at": self.run_at.timestamp() if self.run_at is not None else None,
            "queue": self.queue,
        }
        if self.expires is not None:  # only when set: readers before expiry never see it
            data["expires"] = self.expires.timestamp()
        if self.priority:
            data["priority"] = self.priority
        if self.headers:
            data["headers"] = dict(self.headers)
        return data

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
            expires = data.get("expires")
            job = cls(
                data["id"],
                data["type"],
                data.get("payload"),
                max_attempts=data.get("max_attempts"),
                timeout=data.get("timeout"),
                run_at=(datetime.fromtimestamp(run_at, tz=UTC) if run_at is not None else None),
                queue=data.get("queue"),
                expires=(datetime.fromtimestamp(expires, tz=UTC) if expires is not None else None),
                priority=data.get("priority", 0),
                headers=data.get("headers") or None,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidJob(f"malformed job record: {exc!r}") from exc
        validate_job(job)
        return job


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Ended by `cancel` (or, never started, by its ``expires``): see `JobStatus.cancel_reason`.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the terminal states."""
        return self in _FINISHED_STATES


_FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: `JobStatus.cancel_reason` values: cancelled by a request, or never started before ``expires``.
CANCEL_REASONS = ("cancelled", "expired")


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
    #: The last `Progress` a handler reported (``ctx.set_progress``), or ``None``.
    progress: Progress | None = None
    #: Why a ``cancelled`` job was cancelled: ``"cancelled"`` (a request) or ``"expired"``;
    #: also set on a running job whose cancellation was requested. ``None`` otherwise.
    cancel_reason: str | None = None
    #: The job's priority (-100 to 100, higher first; see `Job`).
    priority: int = 0


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


class _Refused(Exception):
    """Why a value is not JSON that CSJD accepts (the walk below found it)."""


_INT_LIMIT = 1 << MAX_INT_BITS
_INT64 = 1 << 63  # at most 19 digits and a sign
_LONE_SURROGATE = (
    "holds text that is not valid Unicode (a lone surrogate, as os.fsdecode makes of "
    "undecodable bytes)"
)


def _json_size(value: Any, depth: int) -> int:
    """An upper bound of ``value``'s length as compact ASCII JSON, checking every limit.

    The hot path of admission: exact types first, and the usual members of a container (ASCII
    text, 64-bit integers, None, booleans) sized inline, without a call each. Subclasses of the
    JSON types are accepted as `json` accepts them.

    Raises:
        _Refused: naming the problem.
    """
    kind = type(value)
    if kind is dict or kind is list or kind is tuple:
        if depth >= MAX_NESTING:
            raise _Refused(
                f"nests lists and objects deeper than {MAX_NESTING} levels "
                "(csjd_core.limits.MAX_NESTING), or refers to itself"
            )
        depth += 1
        size = 2 + 2 * len(value)  # brackets, commas and colons
        items = value
        if kind is dict:
            for key in value:
                if type(key) is str and key.isascii():  # isascii: constant time in CPython
                    size += 6 * len(key) + 2
                else:
                    size += _key_size(key, depth)
            items = value.values()
        for item in items:
            kind = type(item)
            if kind is str and item.isascii():
                size += 6 * len(item) + 2  # each character at most a \u00XX escape
            elif kind is int and -_INT64 < item < _INT64:
                size += 20
            elif item is None or kind is bool:
                size += 5
            else:
                size += _json_size(item, depth)
        return size
    if kind is str:
        if value.isascii():
            return 6 * len(value) + 2
        if not is_text(value):
            raise _Refused(_LONE_SURROGATE)
        return 12 * len(value) + 2  # a surrogate pair of escapes at most
    if kind is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return int(value.bit_length()) // 3 + 2
        raise _Refused(
            f"holds an integer of {value.bit_length()} bits; at most {MAX_INT_BITS} "
            "(csjd_core.limits.MAX_INT_BITS: the range of a JSON number read as a double)"
        )
    if kind is bool or value is None:
        return 5
    if kind is float:
        if math.isfinite(value):
            return 24
        raise _Refused(f"is not JSON-serializable: {value!r} is not a finite number")
    # Subclasses (StrEnum, IntEnum, OrderedDict...), written by `json` as their base type.
    if isinstance(value, str):
        return _json_size(str.__str__(value), depth)
    if isinstance(value, int):
        return _json_size(int.__int__(value), depth)
    if isinstance(value, float):
        return _json_size(float.__float__(value), depth)
    if isinstance(value, dict):
        return _json_size(dict(value.items()), depth)
    if isinstance(value, list | tuple):
        return _json_size(list(value), depth)
    raise _Refused(f"is not JSON-serializable: {kind.__name__} {brief(value)}")


def _key_size(key: Any, depth: int) -> int:
    """Bound of a non-str object key, which `json` writes as a string (``{1: x}``)."""
    if isinstance(key, str):
        return _json_size(str.__str__(key), depth)
    if isinstance(key, int | float) or key is None:
        return _json_size(key, depth) + 2
    raise _Refused(f"is not JSON-serializable: keys must be strings, got {brief(key)}")


_encode_compact = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def check_json(
    value: Any, what: str, *, max_bytes: int = MAX_JOB_BYTES, limit_name: str = ""
) -> None:
    """Raise `InvalidJob` unless ``value`` is JSON that CSJD accepts.

    JSON types only (no NaN or infinity), integers below ``2**MAX_INT_BITS`` in magnitude, text
    without lone surrogates, nesting at most `MAX_NESTING` deep, and at most ``max_bytes`` as
    compact JSON. The same rules in every mode, so a job that one mode accepts every mode can
    store.

    Args:
        value: the payload, an argument or a result.
        what: names it in the error ("payload of job 'x'").
        max_bytes: the size limit; ``limit_name`` names it in the error.
    """
    try:
        if _json_size(value, 0) <= max_bytes:
            return
        size = len(_encode_compact(value))  # the bound is loose: measure
    except _Refused as refused:
        raise InvalidJob(f"{what} {refused}") from None
    except (TypeError, ValueError) as exc:  # a subclass's own methods, the encoder
        raise InvalidJob(f"{what} is not JSON-serializable: {exc}") from exc
    if size > max_bytes:
        name = limit_name or "csjd_core.limits.MAX_JOB_BYTES"
        raise InvalidJob(f"{what} is {size} bytes as JSON; at most {max_bytes} ({name})")


def check_name(value: Any, what: str, where: str = "") -> None:
    """Raise `InvalidJob` unless ``value`` can be a job id or type: a non-empty string of at
    most `MAX_NAME_LENGTH` characters of valid Unicode."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise InvalidJob(
            f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} characters, "
            f"got {brief(value)}{where}"
        )
    if not is_text(value):
        raise InvalidJob(f"{what} {_LONE_SURROGATE}: {brief(value)}{where}")


def validate_job(job: Job) -> None:
    """The admission checks shared by every mode (see `csjd_core.limits`).

    Raises:
        InvalidJob: naming the field and the problem.
    """
    if not isinstance(job, Job):
        raise InvalidJob(f"expected a Job, got {type(job).__name__}")
    job_id, job_type = job.id, job.type
    # The usual ASCII names inline (this runs at every submit); `check_name` says what is wrong.
    if not (type(job_id) is str and 0 < len(job_id) <= MAX_NAME_LENGTH and job_id.isascii()):
        check_name(job_id, "job id")
    if not (type(job_type) is str and 0 < len(job_type) <= MAX_NAME_LENGTH and job_type.isascii()):
        check_name(job_type, "job type", f" (id={job_id!r})")
    if job.payload is not None:
        check_json(job.payload, f"payload of job {job.id!r}")
    if job.max_attempts is not None or job.timeout is not None:
        try:
            job_options(job.max_attempts, job.timeout)
        except ValueError as exc:
            raise InvalidJob(f"{exc} (job id={job_id!r})") from None
    if job.run_at is not None:
        check_run_at(job.run_at)
    if job.expires is not None:
        check_run_at(job.expires, "expires")
    if job.queue is not None:
        problem = name_problem(job.queue, "queue")
        if problem is not None:
            raise InvalidJob(problem)
    rank = job.priority
    if type(rank) is not int or not MIN_PRIORITY <= rank <= MAX_PRIORITY:  # bool, None too
        try:
            priority(job.priority)
        except ValueError as exc:
            raise InvalidJob(f"{exc} (job id={job_id!r})") from None
    if job.headers is not None:
        try:
            headers(job.headers)
        except ValueError as exc:
            raise InvalidJob(f"{exc} (job id={job_id!r})") from None


def check_run_at(run_at: Any, name: str = "run_at") -> None:
    """Raise `InvalidJob` unless ``run_at`` (or the moment ``name`` names: ``expires``) is a
    timezone-aware datetime at most `MAX_DURATION` ahead."""
    if not isinstance(run_at, datetime):
        raise InvalidJob(f"{name} must be a datetime, got {type(run_at).__name__}")
    if run_at.tzinfo is None or run_at.utcoffset() is None:
        raise InvalidJob(
            f"{name} must be timezone-aware (got naive {run_at.isoformat()}); "
            "use datetime.now(timezone.utc) + timedelta(...)"
        )
    if run_at.timestamp() - time.time() > MAX_DURATION:
        raise InvalidJob(
            f"{name} {run_at.isoformat()} is more than {MAX_DURATION:.0f} seconds ahead "
            "(ten years, csjd_core.limits.MAX_DURATION)"
        )
