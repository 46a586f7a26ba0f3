"""The file store's record format: the log's record types and their payloads (submitted and
retry records are JSON, started and finished records binary), the snapshot's items, and the
replay that folds snapshot and log into the jobs still unfinished.

`csjd_core.backends.file` decides when each record is written; `csjd_core.backends._wal`
frames, checksums and syncs them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

from csjd_core.backends._wal import Record
from csjd_core.backends.memory import Entry
from csjd_core.job import Job, JobState

SUBMITTED, STARTED, RETRY, FINISHED = 1, 2, 3, 4
TYPES = frozenset({SUBMITTED, STARTED, RETRY, FINISHED})
JSON_TYPES = frozenset({SUBMITTED, RETRY})  # in version 2; every payload of version 1
# Since log version 2, started and finished records are binary (two per job: JSON cost more
# than the rest of their write): these fields, then the job id in UTF-8.
_STARTED = struct.Struct("<dQ")  # started_at (NaN: unknown), attempt
_FINISHED = struct.Struct("<dB")  # finished_at (NaN: unknown), outcome (see _OUTCOMES)
_OUTCOMES = {JobState.SUCCEEDED: 0, JobState.FAILED: 1}
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

    def __init__(self, item: dict[str, Any], offset: int | None) -> None:
        self.item = item  # {"job": Job.to_dict(), "max": ..., "t": ...}
        self.offset = offset  # of its submitted record; None: from the snapshot
        self.state = JobState.QUEUED
        self.attempts = 0
        self.run_at: float | None = None
        self.started_at: float | None = None
        self.error: str | None = None


class BadRecord(Exception):
    """A log record whose checksum matched but whose content has the wrong shape."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"bad record at byte offset {offset}")
        self.offset = offset


def replay(jobs: dict[str, Replayed], records: list[Record]) -> None:
    """Apply log records, in order, to the state read from the snapshot (``jobs``).

    Raises:
        BadRecord: a record does not have the expected shape.
    """
    for start in range(0, len(records), REPLAY_BATCH):
        batch = records[start : start + REPLAY_BATCH]
        _apply(jobs, batch, decode(batch))


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
    """The JSON payloads among ``records`` (all but version-2 started / finished ones),
    decoded in one call when they all decode (the usual case: a call per record would cost
    more than the decoding itself).

    Raises:
        BadRecord: a payload is not JSON.
    """
    records = [r for r in records if r.version == 1 or r.type in JSON_TYPES]
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


def _apply(jobs: dict[str, Replayed], records: list[Record], decoded: list[Any]) -> None:
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
    isnan = math.isnan
    json_types = JSON_TYPES
    for record in records:
        try:
            rtype = record.type
            if record.version != 1 and rtype not in json_types:
                payload = record.payload
                if rtype == FINISHED:
                    if len(payload) < finished_size:
                        raise ValueError("short finished record")
                    pop(payload[finished_size:].decode("utf-8", "surrogatepass"), None)
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


def submitted(entries: list[Entry]) -> bytes:
    """A submitted record's payload: ``{"jobs": [{"job": ..., "max": ..., "t": ...}, ...]}``."""
    if len(entries) != 1 or type(entries[0].enqueued_at) is not float:
        return encode(
            {
                "jobs": [
                    {"job": e.job.to_dict(), "max": e.max_attempts, "t": e.enqueued_at}
                    for e in entries
                ]
            }
        ).encode()
    entry = entries[0]  # the common case, a single submit: only the job goes through json
    job = encode_fast(entry.job.to_dict())
    at = entry.enqueued_at
    return f'{{"jobs":[{{"job":{job},"max":{entry.max_attempts},"t":{at!r}}}]}}'.encode()


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


def snapshot(seq: int, captured: list[SnapshotFields]) -> bytes:
    """A snapshot's content: the jobs captured by `snapshot_fields`, folding the log up to
    record ``seq``."""
    jobs = [snapshot_item(*fields) for fields in captured]
    return encode({"version": SNAPSHOT_VERSION, "seq": seq, "jobs": jobs}).encode()
