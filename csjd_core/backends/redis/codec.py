"""The wire format (docs/distributed.md, "Wire format"): jobs to stream entries and back, job
records to `JobStatus`, dead-letter entries to `DeadLetter`, outcomes to settle.lua's ops.
Pure functions: no connection, no state."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from csjd_core.backends.base import AttemptError, Delivery
from csjd_core.errors import InvalidJob
from csjd_core.job import (
    Job,
    JobState,
    JobStatus,
    timeout_seconds,
    utc_from_timestamp,
    validate_job,
)
from csjd_core.limits import MAX_PRIORITY, MIN_PRIORITY, clip_text, clip_traceback
from csjd_core.progress import from_json as progress_from_json
from csjd_core.stats import DeadLetter, QueueCounters, ScheduleState

__all__ = [
    "COUNTERS",
    "check_entry_id",
    "dead_letter",
    "decode",
    "encode",
    "entry_order",
    "error_fields",
    "fields",
    "is_entry_id",
    "op",
    "priority",
    "result_json",
    "run_at_ms",
    "status",
    "stream_replies",
    "text",
]

#: The counters a queue's stats hash holds (settle.lua and reclaim.lua count them).
COUNTERS = frozenset(f.name for f in dataclasses.fields(QueueCounters))

_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def text(value: Any) -> str:
    """A reply's bytes as text (undecodable bytes replaced), ``None`` as ``""``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def encode(job: Job, default_max_attempts: int, max_payload_bytes: int) -> tuple[str, int]:
    """A job's entry data (the ``d`` field) and its effective max_attempts. ``priority`` is
    written only when it is not 0, and ``headers`` only when the job has some: a default
    job's data is what releases before them wrote, and theirs ignore the keys.

    Raises:
        InvalidJob: the job is larger than ``max_payload_bytes`` as JSON.
    """
    max_attempts = job.max_attempts or default_max_attempts
    fields: dict[str, Any] = {}
    if job.expires is not None:
        # First, as an integer of ms: read_start.lua reads it with one anchored match (a
        # payload's own "expires" key can never be first). Absent without an expiry, so
        # entries stay byte for byte what releases before expiry wrote.
        fields["expires"] = int(expires_ms(job))
    fields |= {
        "type": job.type,
        "payload": job.payload,
        "max_attempts": max_attempts,
        "timeout": timeout_seconds(job.timeout),
        "queue": job.queue,
    }
    if job.priority:
        fields["priority"] = job.priority
    if job.headers:
        fields["headers"] = job.headers
    data = json.dumps(fields, separators=(",", ":"), allow_nan=False)
    if len(data) + len(job.id) > max_payload_bytes:
        raise InvalidJob(
            f"job {job.id!r} is {len(data) + len(job.id)} bytes as JSON; "
            f"max_payload_bytes={max_payload_bytes}"
        )
    return data, max_attempts


def expires_ms(job: Job) -> str:
    """The job's ``expires`` in ms, as its entry holds it (``""``: none)."""
    return "" if job.expires is None else str(math.floor(job.expires.timestamp() * 1000))


def run_at_ms(job: Job) -> str:
    """The job's ``run_at`` in ms for enqueue.lua (``""``: none), rounded up: a job must not
    start before its ``run_at``."""
    return "" if job.run_at is None else str(math.ceil(job.run_at.timestamp() * 1000))


def decode(
    raw_id: bytes | None, raw: bytes | None, max_payload_bytes: int
) -> tuple[Job | None, str, str | None]:
    """(job, data, None), or (None, data, why it is poison). Never raises: an entry that cannot
    be decoded is dead-lettered alone, never its batch."""
    if raw_id is None or raw is None:
        missing = b"id" if raw_id is None else b"d"
        return None, "", f"malformed entry: missing field {missing!r}"
    try:
        job_id = raw_id.decode()
        data = raw.decode()
    except UnicodeDecodeError:
        return None, "", "malformed entry: not UTF-8"
    if len(raw) + len(job_id) > max_payload_bytes:
        return (
            None,
            "",
            f"oversized entry: {len(raw)} bytes > max_payload_bytes={max_payload_bytes}",
        )
    try:
        d = json.loads(data)
        expires = d.get("expires")
        job = Job(
            job_id,
            d["type"],
            d.get("payload"),
            max_attempts=d.get("max_attempts"),
            timeout=d.get("timeout"),
            queue=d.get("queue"),
            expires=None if expires is None else datetime.fromtimestamp(expires / 1000, UTC),
            priority=d.get("priority", 0),
            headers=d.get("headers") or None,
        )
        validate_job(job)  # the admission limits: what a producer could not submit
    except InvalidJob as exc:
        return None, data, f"malformed entry: {clip_text(str(exc), 500)}"
    except Exception as exc:  # RecursionError, AttributeError...: never the batch's fault
        return None, data, f"malformed entry: {clip_text(repr(exc), 500)}"
    return job, data, None


def priority(data: str) -> int:
    """The priority in a job's entry data (0 when it has none, or an invalid one: the worker
    that reads it then dead-letters it as poison, whatever its band)."""
    if '"priority"' not in data:  # the usual job: no need to parse it
        return 0
    try:
        return _valid_priority(json.loads(data).get("priority", 0))
    except (ValueError, AttributeError, RecursionError):
        return 0


def _valid_priority(value: Any) -> int:
    """``value`` if it is a priority, else 0."""
    return value if type(value) is int and MIN_PRIORITY <= value <= MAX_PRIORITY else 0


def op(delivery: Delivery, kind: str, **extra: Any) -> dict[str, Any]:
    """An outcome for settle.lua, fenced by the delivery's entry and token (``a``: the attempt
    it records; ``d``: the entry's data, which a compact record takes with the outcome)."""
    return {
        "k": kind,
        "e": delivery.ref[1],
        "id": delivery.job.id,
        "n": delivery.token,
        "a": delivery.attempt,
        "d": delivery.ref[2],
        **extra,
    }


def error_fields(error: AttemptError) -> dict[str, str]:
    """An attempt's error as settle.lua's op fields: clipped and encodable whoever built it
    (Redis's JSON decoder refuses a lone surrogate, and would refuse the whole batch)."""
    return {"err": clip_text(error.message), "tb": clip_traceback(error.traceback or "")}


def result_json(result: Any) -> str:
    """A success's result as stored."""
    return "null" if result is None else json.dumps(result, separators=(",", ":"))


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def is_entry_id(entry_id: object) -> bool:
    """True if ``entry_id`` is a stream entry id (``1712345678901-0``)."""
    return isinstance(entry_id, str) and _ENTRY_ID.fullmatch(entry_id) is not None


def check_entry_id(entry_id: str) -> None:
    """Raise `InvalidJob` unless ``entry_id`` is a stream entry id (``1712345678901-0``)."""
    if not is_entry_id(entry_id):
        raise InvalidJob(f"not a dead-letter entry id (like 1712345678901-0): {entry_id!r:.80}")


def fields(raw: Any) -> Any:
    """An entry's fields as a mapping (a script returns them as a flat list)."""
    if raw is None or isinstance(raw, dict):
        return raw
    return {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}


def stream_replies(reply: Any) -> list[tuple[str, list[Any]]]:
    """(stream, entries) pairs of an XREADGROUP reply, RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [(text(k), v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(text(stream), entries) for stream, entries in reply]


def status(job_id: str, queue: str, f: dict[str, str]) -> JobStatus:
    """A `JobStatus` from a job record's fields."""

    def ms(name: str) -> float | None:
        value = f.get(name)
        return int(value) / 1000 if value else None

    try:
        data = json.loads(f.get("data") or "{}")
    except ValueError:
        data = {}
    state = JobState(f.get("state", "queued"))
    result = None
    if state in (JobState.SUCCEEDED, JobState.CANCELLED) and f.get("result"):
        result = json.loads(f["result"])
    return JobStatus(
        id=job_id,
        type=data.get("type", ""),
        state=state,
        attempts=int(f.get("attempts") or 0),
        max_attempts=int(data.get("max_attempts") or f.get("max") or 0),
        queue=queue,
        enqueued_at=utc_from_timestamp(ms("enqueued_at")),
        started_at=utc_from_timestamp(ms("started_at")),
        finished_at=utc_from_timestamp(ms("finished_at")),
        run_at=utc_from_timestamp(ms("run_at")) if state is JobState.SCHEDULED else None,
        last_error=f.get("error") or None,
        last_traceback=f.get("traceback") or None,
        result=result,
        worker_id=f.get("worker") or None,
        payload=data.get("payload"),
        progress=progress_from_json(f.get("progress")),  # written only once a handler sets it
        cancel_reason=f.get("cancel") or None,
        priority=_valid_priority(data.get("priority", 0)),
    )


def schedule_state(name: str, f: dict[str, str]) -> ScheduleState:
    """A `ScheduleState` from a mark hash's fields (written by enqueue.lua)."""

    def number(field: str) -> int:
        try:
            return int(f.get(field) or 0)
        except ValueError:
            return 0

    def moment(field: str) -> float | None:
        try:
            return float(f[field]) if f.get(field) else None
        except ValueError:
            return None

    return ScheduleState(
        name=name,
        mark=moment("mark"),
        paused=f.get("paused") == "1",
        running=tuple(f.get("running", "").split()),
        last_enqueued=f.get("last_enqueued") or None,
        enqueued=number("enqueued"),
        manual=number("manual"),
        duplicates=number("duplicates"),
        overlaps=number("overlaps"),
        paused_skips=number("paused_skips"),
        misfires=number("misfires"),
        last_outcome=f.get("last_outcome") or None,
        last_outcome_id=f.get("last_outcome_id") or None,
        last_outcome_at=moment("last_outcome_at"),
    )


def dead_letter(queue: str, entry_id: str, raw: Any) -> DeadLetter:
    """A dead letter from its stream entry; fields that cannot be read make it ``damaged``."""
    f = {text(k): text(v) for k, v in (raw or {}).items()}
    problems = []
    numbers: dict[str, int | None] = {}
    for name in ("attempts", "failed_at"):
        try:
            numbers[name] = int(f.get(name) or 0)
        except ValueError:
            numbers[name] = None
            problems.append(f"{name} is not a number: {f[name]!r:.40}")
    try:
        data = json.loads(f.get("d") or "null")
        job_type = data.get("type") if isinstance(data, dict) else None
    except (ValueError, RecursionError):
        job_type = None
    failed_ms = numbers["failed_at"]
    return DeadLetter(
        entry_id=entry_id,
        queue=queue,
        job_id=f.get("id", ""),
        type=job_type if isinstance(job_type, str) else None,
        error=f.get("error", ""),
        reason=f.get("reason", ""),
        attempts=numbers["attempts"],
        failed_at=None if failed_ms is None else failed_ms / 1000,
        traceback=f.get("traceback", ""),
        data=f.get("d", ""),
        damaged="; ".join(problems) or None,
    )
