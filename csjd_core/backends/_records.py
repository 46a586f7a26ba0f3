"""The file store's record format: the log's record types and their payloads (retry records
are JSON; submitted, started and finished records binary, with the job's payload as JSON), the
snapshot's items, and the replay that folds snapshot and log into the jobs still unfinished.

`csjd_core.backends.file` decides when each record is written; `csjd_core.backends._wal`
frames, checksums and syncs them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from csjd_core.backends import _marks
from csjd_core.backends._wal import LogRecord, Record
from csjd_core.backends.memory import Entry
from csjd_core.errors import InvalidJob
from csjd_core.job import Job, JobState, timeout_seconds, validate_job
from csjd_core.stats import ScheduleState

SUBMITTED, STARTED, RETRY, FINISHED, MARK = 1, 2, 3, 4, 5
#: MARK records (version 3 logs, JSON) hold a schedule's whole mark (`ScheduleState`): the last
#: one of a schedule wins.
TYPES = frozenset({SUBMITTED, STARTED, RETRY, FINISHED, MARK})
#: The record types whose payload is JSON, by log version: every one in version 1; version 2
#: made started and finished records binary (two per job: JSON cost more than the rest of their
#: write), version 3 submitted records (binary fields, the job's payload alone as JSON).
JSON_TYPES = {1: TYPES, 2: frozenset({SUBMITTED, RETRY}), 3: frozenset({RETRY, MARK})}
# Started and finished records (version 2 on): these fields, then the job id in UTF-8.
_STARTED = struct.Struct("<dQ")  # started_at (NaN: unknown), attempt
_FINISHED = struct.Struct("<dB")  # finished_at (NaN: unknown), outcome (see _OUTCOMES)
# 2 (cancelled) is written for a job ended by `cancel`, and for a running job as soon as its
# cancellation is requested (recovery must never run it again). Replay drops the job on any
# finished record whatever its outcome, so logs that hold a 2 open in earlier releases too.
_OUTCOMES = {JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.CANCELLED: 2}
# A submitted record (version 3 on) holds one item per job, back to back: these fields, then
# the job's id, type and queue in UTF-8 and its payload as JSON (empty: no payload).
_SUBMITTED = struct.Struct("<dddIIHHHI")
# enqueued_at, timeout (NaN: none), run_at (NaN: none), the entry's max attempts, the job's own
# max_attempts (0: none), then the byte lengths of id, type, queue (_NO_QUEUE: none), payload.
_NO_QUEUE = 0xFFFF
SNAPSHOT_VERSION = 1
encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_json_str = json.encoder.encode_basestring_ascii
decode_json = json.JSONDecoder().decode
REPLAY_BATCH = 20_000  # records decoded per JSON call at open


def _fast_encoder() -> Callable[[Any], str]:
    """`encode` without its per-call set-up: the C encoder, built once (when there is one).

    No circular-reference check: payloads passed `check_json` at admission.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encode

    def refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    encoder = make(None, refuse, _json_str, None, ":", ",", False, False, False)
    return lambda value: "".join(encoder(value, 0))


encode_fast = _fast_encoder()


class Replayed:
    """A job met while replaying the snapshot and the log.

    Its `Job` is only built if it is still unfinished at the end: most jobs in a log are not.
    """

    __slots__ = ("attempts", "error", "item", "offset", "run_at", "started_at", "state")

    def __init__(self, item: dict[str, Any] | bytes, offset: int | None) -> None:
        # {"job": Job.to_dict(), "max": ..., "t": ...} (snapshots, logs before version 3), or
        # the job's item of a binary submitted record
        self.item = item
        self.offset = offset  # of its submitted record; None: from the snapshot
        self.state = JobState.QUEUED
        self.attempts = 0
        self.run_at: float | None = None
        self.started_at: float | None = None
        self.error: str | None = None


class BadRecord(Exception):
    """A log record (or a snapshot's item: offset None) whose checksum matched but whose
    content has the wrong shape."""

    def __init__(self, offset: int | None) -> None:
        super().__init__(
            "bad snapshot item" if offset is None else f"bad record at byte offset {offset}"
        )
        self.offset = offset


def replay(
    jobs: dict[str, Replayed], records: list[Record], marks: dict[str, ScheduleState]
) -> None:
    """Apply log records, in order, to the state read from the snapshot (``jobs`` and the
    schedules' ``marks``).

    Raises:
        BadRecord: a record does not have the expected shape.
    """
    for start in range(0, len(records), REPLAY_BATCH):
        batch = records[start : start + REPLAY_BATCH]
        _apply(jobs, batch, decode(batch), marks)


def snapshot_marks(data: dict[str, Any]) -> dict[str, ScheduleState]:
    """A snapshot's schedule marks (none in a snapshot written before schedules existed).

    Raises:
        ValueError, KeyError, TypeError: not a list of marks.
    """
    marks = [_marks.decode(item) for item in data.get("schedules", ())]
    return {mark.name: mark for mark in marks}


def snapshot_jobs(data: dict[str, Any]) -> tuple[int, dict[str, Replayed]]:
    """A snapshot's (of version `SNAPSHOT_VERSION`) sequence number (the last log record it
    folds in) and its jobs.

    Raises:
        ValueError, KeyError, TypeError: not a snapshot of this format.
    """
    jobs: dict[str, Replayed] = {}
    for item in data["jobs"]:
        job = Replayed(item, None)
        job.attempts = int(item["a"])
        job.state = JobState(item["state"])
        job.run_at = item.get("run_at")
        job.error = item.get("err")
        jobs[item["job"]["id"]] = job
    return int(data["seq"]), jobs


def decode(records: list[Record]) -> list[Any]:
    """The JSON payloads among ``records`` (see `JSON_TYPES`), decoded in one call when they
    all decode (the usual case: a call per record would cost more than the decoding itself).

    Raises:
        BadRecord: a payload is not JSON.
    """
    json_types = JSON_TYPES
    records = [r for r in records if r.type in json_types[r.version]]
    try:
        text = b"[" + b",".join(r.payload for r in records) + b"]"
        decoded = decode_json(text.decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError too
        decoded = None
    if isinstance(decoded, list) and len(decoded) == len(records):
        return decoded
    result = []
    for record in records:  # find the culprit
        try:
            result.append(decode_json(record.payload.decode()))
        except (ValueError, RecursionError) as exc:
            raise BadRecord(record.offset) from exc
    return result


def _apply(
    jobs: dict[str, Replayed],
    records: list[Record],
    decoded: list[Any],
    marks: dict[str, ScheduleState],
) -> None:
    """Apply log records to the replay state (idempotent: replaying one twice is harmless).

    ``decoded`` holds the JSON payloads (see `decode`), in order.

    Raises:
        BadRecord: a record does not have the expected shape.
    """
    running, scheduled = JobState.RUNNING, JobState.SCHEDULED
    get = jobs.get
    pop = jobs.pop
    next_json = iter(decoded).__next__
    started_size, finished_size = _STARTED.size, _FINISHED.size
    unpack_started = _STARTED.unpack_from
    unpack_submitted, submitted_size = _SUBMITTED.unpack_from, _SUBMITTED.size
    isnan = math.isnan
    json_types = JSON_TYPES
    for record in records:
        try:
            rtype = record.type
            if rtype not in json_types[record.version]:
                payload = record.payload
                if rtype == FINISHED:
                    if len(payload) < finished_size:
                        raise ValueError("short finished record")
                    pop(payload[finished_size:].decode("utf-8", "surrogatepass"), None)
                    continue
                if rtype == SUBMITTED:
                    *_, id_len, type_len, queue_len, payload_len = unpack_submitted(payload)
                    size = submitted_size + id_len + type_len + payload_len
                    if queue_len == _NO_QUEUE and size == len(payload):  # one job, no queue
                        name = payload[submitted_size : submitted_size + id_len]
                        jobs[name.decode("utf-8", "surrogatepass")] = Replayed(
                            payload, record.offset
                        )
                        continue
                    for job_id, item in _items(payload):
                        jobs[job_id] = Replayed(item, record.offset)
                    continue
                at, attempt = unpack_started(payload)
                job = get(payload[started_size:].decode("utf-8", "surrogatepass"))
                if job is None:
                    continue
                job.attempts = max(job.attempts, attempt)
                job.state = running
                job.started_at = None if isnan(at) else at
                continue
            data = next_json()
            if rtype == MARK:
                mark = _marks.decode(data)
                marks[mark.name] = mark
                continue
            if rtype == SUBMITTED:
                for item in data["jobs"]:
                    job_id = item["job"]["id"]
                    if not isinstance(job_id, str):
                        raise TypeError(f"job id {job_id!r} is not a string")
                    jobs[job_id] = Replayed(item, record.offset)
                continue
            job = get(data["id"])
            if job is None:
                continue  # finished and folded into a snapshot already, or never admitted
            if rtype == STARTED:
                job.attempts = max(job.attempts, int(data["a"]))
                job.state = running
                job.started_at = data["t"]
            elif rtype == RETRY:
                job.attempts = max(job.attempts, int(data["a"]))
                job.state = scheduled
                job.run_at = data["due"]
                job.error = data.get("err")
            elif rtype == FINISHED:
                del jobs[data["id"]]
        except (ValueError, KeyError, TypeError, struct.error) as exc:  # UnicodeDecodeError too
            raise BadRecord(record.offset) from exc


def _items(payload: bytes) -> list[tuple[str, bytes]]:
    """The (job id, item bytes) of a binary submitted record's items.

    Raises:
        ValueError, struct.error: the items do not fill the payload exactly.
    """
    unpack, head = _SUBMITTED.unpack_from, _SUBMITTED.size
    size = len(payload)
    found = []
    pos = 0
    while True:
        *_, id_len, type_len, queue_len, payload_len = unpack(payload, pos)
        end = pos + head + id_len + type_len + payload_len
        if queue_len != _NO_QUEUE:
            end += queue_len
        if end > size:
            raise ValueError("short submitted record")
        job_id = payload[pos + head : pos + head + id_len].decode("utf-8", "surrogatepass")
        if pos == 0 and end == size:
            return [(job_id, payload)]  # one job: the item is the whole payload, not a copy
        found.append((job_id, payload[pos:end]))
        if end == size:
            return found
        pos = end


def jobs_of(replayed: list[Replayed]) -> list[tuple[Job, int, float]]:
    """The jobs replayed submissions hold, each with its max attempts and its enqueue time.

    The payloads of binary items are decoded `REPLAY_BATCH` per JSON call (a call per job
    would cost more than the decoding).

    Raises:
        BadRecord: an item does not hold a valid job (the cause is chained).
    """
    result = []
    for start in range(0, len(replayed), REPLAY_BATCH):
        batch = replayed[start : start + REPLAY_BATCH]
        for job, payload in zip(batch, _payloads(batch), strict=True):
            try:
                result.append(_job_of(job.item, payload))
            except (
                InvalidJob,
                ValueError,
                KeyError,
                TypeError,
                OverflowError,
                struct.error,
            ) as exc:
                raise BadRecord(job.offset) from exc
            except RecursionError as exc:
                raise BadRecord(job.offset) from InvalidJob(f"malformed job record: {exc!r}")
    return result


def _payloads(batch: list[Replayed]) -> list[Any]:
    """The decoded payloads of binary items (None for the others), in one JSON call when all
    decode.

    Raises:
        BadRecord: a payload is not JSON.
    """
    unpack = _SUBMITTED.unpack_from
    texts = []
    for job in batch:
        item = job.item
        length = unpack(item)[-1] if isinstance(item, bytes) else 0
        # The payload ends the item.
        texts.append(item[-length:] if length and isinstance(item, bytes) else b"null")
    try:
        decoded = decode_json((b"[" + b",".join(texts) + b"]").decode())
    except (ValueError, RecursionError):  # UnicodeDecodeError too
        decoded = None
    if isinstance(decoded, list) and len(decoded) == len(texts):
        return decoded
    result = []
    for job, text in zip(batch, texts, strict=True):  # find the culprit
        try:
            result.append(decode_json(text.decode()))
        except (ValueError, RecursionError) as exc:
            raise BadRecord(job.offset) from exc
    return result


def _job_of(item: dict[str, Any] | bytes, payload: Any) -> tuple[Job, int, float]:
    if not isinstance(item, bytes):
        return Job.from_dict(item["job"]), int(item["max"]), float(item["t"])
    at, timeout, run_at, max_attempts, own_max, id_len, type_len, queue_len, _ = (
        _SUBMITTED.unpack_from(item)
    )
    pos = _SUBMITTED.size
    job_id = item[pos : pos + id_len].decode("utf-8", "surrogatepass")
    pos += id_len
    job_type = item[pos : pos + type_len].decode("utf-8", "surrogatepass")
    pos += type_len
    queue = None
    if queue_len != _NO_QUEUE:
        queue = item[pos : pos + queue_len].decode("utf-8", "surrogatepass")
    job = Job(
        job_id,
        job_type,
        payload,
        max_attempts=own_max or None,
        timeout=None if math.isnan(timeout) else timeout,
        run_at=None if math.isnan(run_at) else datetime.fromtimestamp(run_at, tz=UTC),
        queue=queue,
    )
    validate_job(job)
    return job, max_attempts, at


#: The frame version of a submitted record holding a job with a priority other than 0, an
#: ``expires`` (issue 18) or ``headers`` (issue 19): the JSON form (an item per job:
#: ``{"job": Job.to_dict(), "max": ..., "t": ...}``, those fields in the job's mapping), as
#: version 2 wrote every submitted
#: record. The binary items of version 3 have no field for them, and plain jobs keep them
#: (smaller and faster); releases before issue 18 read these records too, without the fields.
EXTENDED_VERSION = 2


def submitted_record(entries: list[Entry]) -> LogRecord:
    """The log record that admits ``entries``: binary (`submitted`), or JSON framed as
    `EXTENDED_VERSION` if one of them has a priority, an expiry or headers."""
    if len(entries) == 1:  # the usual submit: no generator
        job = entries[0].job
        extended = job.priority or job.expires is not None or job.headers
    else:
        extended = any(
            e.job.priority or e.job.expires is not None or e.job.headers for e in entries
        )
    if extended:
        items = [
            {"job": e.job.to_dict(), "max": e.max_attempts, "t": e.enqueued_at} for e in entries
        ]
        return SUBMITTED, encode({"jobs": items}).encode(), EXTENDED_VERSION
    return SUBMITTED, submitted(entries)


def submitted(entries: list[Entry]) -> bytes:
    """A submitted record's payload: an item per job (see `_SUBMITTED`)."""
    if len(entries) == 1:
        return _item(entries[0])
    return b"".join([_item(entry) for entry in entries])


def _item(entry: Entry) -> bytes:
    job = entry.job
    job_id = job.id.encode("utf-8", "surrogatepass")
    job_type = job.type.encode("utf-8", "surrogatepass")
    payload = b"" if job.payload is None else encode_fast(job.payload).encode()
    timeout, run_at, queue = job.timeout, job.run_at, job.queue
    if timeout is None and run_at is None and queue is None:  # the usual job: no options
        head = _SUBMITTED.pack(
            entry.enqueued_at, _NAN, _NAN, entry.max_attempts, job.max_attempts or 0,
            len(job_id), len(job_type), _NO_QUEUE, len(payload),
        )  # fmt: skip
        return head + job_id + job_type + payload
    seconds = timeout_seconds(timeout)
    name = b"" if queue is None else queue.encode("utf-8", "surrogatepass")
    return b"".join(
        (
            _SUBMITTED.pack(
                entry.enqueued_at,
                _NAN if seconds is None else seconds,
                _NAN if run_at is None else run_at.timestamp(),
                entry.max_attempts,
                job.max_attempts or 0,
                len(job_id),
                len(job_type),
                _NO_QUEUE if queue is None else len(name),
                len(payload),
            ),
            job_id,
            job_type,
            name,
            payload,
        )
    )


def retried(entry: Entry) -> bytes:
    """A retry record's payload: the attempts so far, when the next is due, the last error."""
    return encode(
        {
            "id": entry.job.id,
            "a": entry.attempts,
            "due": entry.get("run_at"),
            "err": entry.get("error"),
        }
    ).encode()


def started(job_id: str, attempt: int, at: float | None) -> bytes:
    """A started record's payload (binary: see `_STARTED`)."""
    return _STARTED.pack(_NAN if at is None else at, attempt) + job_id.encode(
        "utf-8", "surrogatepass"
    )


def finished(job_id: str, state: JobState, at: float | None) -> bytes:
    """A finished record's payload (binary: see `_FINISHED`)."""
    return _FINISHED.pack(_NAN if at is None else at, _OUTCOMES[state]) + job_id.encode(
        "utf-8", "surrogatepass"
    )


_NAN = float("nan")


SnapshotFields = tuple[Job, int, float, int, JobState, float | None, str | None]


def snapshot_fields(entry: Entry) -> SnapshotFields:
    get = entry.get
    return (entry.job, entry.max_attempts, entry.enqueued_at, entry.attempts, entry.state,
            get("run_at"), get("error"))  # fmt: skip


def snapshot_item(
    job: Job,
    max_attempts: int,
    enqueued_at: float,
    attempts: int,
    state: JobState,
    run_at: float | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "job": job.to_dict(),
        "max": max_attempts,
        "t": enqueued_at,
        "a": attempts,
        "state": str(state),
        "run_at": run_at,
        "err": error,
    }


def snapshot(seq: int, captured: list[SnapshotFields], marks: list[ScheduleState]) -> bytes:
    """A snapshot's content: the jobs captured by `snapshot_fields` and the schedules'
    marks, folding the log up to record ``seq``."""
    jobs = [snapshot_item(*fields) for fields in captured]
    schedules = [mark.to_json() for mark in marks]
    return encode(
        {"version": SNAPSHOT_VERSION, "seq": seq, "jobs": jobs, "schedules": schedules}
    ).encode()
