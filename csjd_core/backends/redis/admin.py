"""Reads and operator actions on the queues: job status, counts, typed stats, dead letters."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from csjd_core.backends.redis import codec
from csjd_core.backends.redis.connection import REDIS_DOWN, Connection, NotReplicated
from csjd_core.backends.redis.keys import QueueKeys, Queues
from csjd_core.config import DistributedConfig
from csjd_core.errors import BackendUnavailable, DuplicateJob, InvalidJob
from csjd_core.job import JobStatus
from csjd_core.stats import (
    ConsumerStats,
    DeadLetter,
    QueueCounters,
    QueueGauges,
    QueueStats,
    ScheduleState,
)

__all__ = ["Admin"]


class Admin:
    """What the dispatcher's queries and the operator commands read and change."""

    def __init__(
        self,
        connection: Connection,
        config: DistributedConfig,
        queues: Queues,
        durable_wait: float = 0.0,
    ) -> None:
        self.connection = connection
        self.config = config
        self.queues = queues
        self.durable_wait = durable_wait  # a requeue is an enqueue (see durable_enqueue)

    def status(self, job_id: str, queue: str | None = None) -> JobStatus | None:
        """The job's record (looked up in ``queue``, else in every configured queue)."""
        queues = self.queues
        candidates = [queues.keys_for(queue)] if queue else list(queues.consumed.values())
        for keys in candidates:
            try:
                fields = self._record(keys, job_id)
            except REDIS_DOWN as exc:
                raise BackendUnavailable(f"Redis unavailable: {exc}") from exc
            if fields:
                return codec.status(job_id, keys.name, fields)
        return None

    def _record(self, keys: QueueKeys, job_id: str) -> dict[str, str]:
        """A job record's fields (``{}``: none), its ``data`` read from its stream entry where
        the record leaves it there (a compact record of a queued or running job)."""
        client = self.connection.client
        fields: dict[str, str] = {}
        for _ in range(2):
            raw = client.hgetall(keys.job(job_id))
            fields = {codec.text(k): codec.text(v) for k, v in raw.items()}
            entry = fields.get("entry", "")
            if not fields or "data" in fields or not codec.is_entry_id(entry):
                break
            # A job of another priority band than the default: its record names the band.
            rows = client.xrange(keys.band_stream(fields.get("band", "")), entry, entry)
            found = codec.fields(rows[0][1]) if rows else None
            if found and codec.text(found.get(b"id")) == job_id and b"d" in found:
                fields["data"] = codec.text(found[b"d"])
                break
            # Gone: settled meanwhile (the data is in the record now, read it again) or deleted.
        return fields

    # -- schedules' marks (enqueue.lua changes them) -----------------------------------------
    def _on_mark(self, name: str, queue: str | None, call: Any) -> Any:
        key = self.queues.keys_for(queue).schedule(name)
        try:
            return call(self.connection.client, key)
        except redis.RedisError as exc:
            raise BackendUnavailable(
                f"Redis at {self.connection.redis_config.display} failed: {exc}"
            ) from exc

    def schedule_state(self, name: str, queue: str | None) -> ScheduleState | None:
        """A schedule's mark, or ``None``."""
        raw: dict[Any, Any] = self._on_mark(name, queue, lambda client, key: client.hgetall(key))
        if not raw:
            return None
        return codec.schedule_state(name, {codec.text(k): codec.text(v) for k, v in raw.items()})

    def set_paused(self, name: str, queue: str | None, paused: bool) -> None:
        """Set a mark's ``paused`` flag."""
        self._on_mark(name, queue, lambda client, key: client.hset(key, "paused", int(paused)))

    def record_outcome(self, name: str, queue: str | None, job_id: str, kind: str) -> None:
        """Write how a schedule's run ended into its mark."""
        fields = {"last_outcome": kind, "last_outcome_id": job_id, "last_outcome_at": time.time()}
        self._on_mark(name, queue, lambda client, key: client.hset(key, mapping=fields))

    def pending(self) -> int:
        """Unfinished jobs across this process's queues (all producers and consumers)."""
        pipe = self.connection.client.pipeline(transaction=False)
        for keys in self.queues.consumed.values():
            pipe.get(keys.pending)
        return sum(int(v or 0) for v in pipe.execute())

    def ready_count(self) -> int:
        """Entries not yet delivered to a consumer: each stream's (every priority band's)
        length minus its group's pending entries (an entry leaves the stream when it is
        acknowledged)."""
        pipe = self.connection.client.pipeline(transaction=False)
        for keys in self.queues.consumed.values():
            for stream in keys.streams:
                pipe.xlen(stream)
                pipe.xpending(stream, self.config.group)
        replies = pipe.execute(raise_on_error=False)
        total = 0
        for length, pending in zip(replies[::2], replies[1::2], strict=True):
            if isinstance(length, Exception):
                raise length
            total += int(length)
            if not isinstance(pending, Exception):
                total -= int(pending["pending"])
            elif "NOGROUP" not in str(pending):  # no group: no consumer ever started
                raise pending
        return total

    def _band_figures(self, keys: QueueKeys) -> tuple[int, int, dict[str, dict[str, int]]]:
        """A queue's stream length and entries in flight, summed over its priority bands, and
        per consumer its pending entries and least idle time over the bands (a consumer has
        an entry in the group of every band it read)."""
        client = self.connection.client
        length = in_flight = 0
        consumers: dict[str, dict[str, int]] = {}
        for stream in keys.streams:
            length += int(client.xlen(stream))
            try:
                in_flight += int(client.xpending(stream, self.config.group)["pending"])
                infos = client.xinfo_consumers(stream, self.config.group)
            except redis.ResponseError:  # no group (no consumer of this release started yet)
                continue
            for info in infos:
                name = codec.text(info.get("name"))
                seen = consumers.setdefault(name, {"pending": 0, "idle": -1})
                seen["pending"] += int(info.get("pending", 0))
                idle = int(info.get("idle", 0))
                seen["idle"] = idle if seen["idle"] < 0 else min(seen["idle"], idle)
        return length, in_flight, consumers

    def stats(self) -> dict[str, QueueStats]:
        """Cluster-wide figures per queue (of this process's queues)."""
        out: dict[str, QueueStats] = {}
        now = time.time()
        client = self.connection.client
        for keys in self.queues.consumed.values():
            length, in_flight, seen = self._band_figures(keys)
            consumers = []
            for name, figures in seen.items():
                beat = client.get(keys.heartbeat(name))
                consumers.append(
                    ConsumerStats(
                        name=name,
                        pending=figures["pending"],
                        idle_ms=figures["idle"],
                        heartbeat_age=None if beat is None else round(now - float(beat), 3),
                    )
                )
            counters = {codec.text(k): int(v) for k, v in client.hgetall(keys.stats).items()}
            out[keys.name] = QueueStats(
                name=keys.name,
                stream_length=length,
                in_flight=in_flight,
                scheduled=int(client.zcard(keys.delayed)),
                unfinished=int(client.get(keys.pending) or 0),
                dead=int(client.xlen(keys.dead)),
                max_dead_letters=self.config.max_dead_letters,
                consumers=tuple(consumers),
                counters=QueueCounters(
                    **{k: v for k, v in counters.items() if k in codec.COUNTERS}
                ),
            )
        return out

    def gauges(self) -> dict[str, QueueGauges]:
        """Each consumed queue's levels in two pipelined round trips, whatever the number of
        queues (a metrics scrape reads them: it must not load Redis): first the lengths, the
        groups and their consumers, the counters and Redis's clock; then the consumers'
        heartbeats and, per band, the first entry after the group's last delivered one."""
        client = self.connection.client
        group = self.config.group
        queues = list(self.queues.consumed.values())
        first = client.pipeline(transaction=False)
        for keys in queues:
            for stream in keys.streams:
                first.xlen(stream)
                first.xinfo_groups(stream)
                first.xinfo_consumers(stream, group)
            first.zcard(keys.delayed)
            first.get(keys.pending)
            first.xlen(keys.dead)
        first.time()
        replies = first.execute(raise_on_error=False)
        secs, micros = replies[-1]
        now_ms = int(secs) * 1000 + int(micros) // 1000
        reads = iter(replies)
        figures: list[tuple[QueueKeys, int, int, int, int, int, list[str], list[str]]] = []
        second = client.pipeline(transaction=False)
        for keys in queues:
            length = in_flight = 0
            names: set[str] = set()
            after: list[str] = []
            for stream in keys.streams:
                length += _count(next(reads))
                groups, consumers = next(reads), next(reads)
                for info in groups if isinstance(groups, list) else []:
                    if codec.text(info.get("name")) == group:
                        in_flight += int(info.get("pending") or 0)
                        last = codec.text(info.get("last-delivered-id")) or "0-0"
                        second.xrange(stream, "(" + last, "+", count=1)
                        after.append(stream)
                for info in consumers if isinstance(consumers, list) else []:
                    names.add(codec.text(info.get("name")))
            scheduled, unfinished, dead = (_count(next(reads)) for _ in range(3))
            ordered = sorted(names)
            for name in ordered:
                second.exists(keys.heartbeat(name))
            figures.append((keys, length, in_flight, scheduled, unfinished, dead, ordered, after))
        answers = iter(second.execute(raise_on_error=False) if len(second) else [])
        out: dict[str, QueueGauges] = {}
        for keys, length, in_flight, scheduled, unfinished, dead, names_, after in figures:
            oldest: int | None = None
            for _ in after:
                rows = next(answers)
                if isinstance(rows, list) and rows:
                    ms = int(codec.text(rows[0][0]).partition("-")[0])
                    oldest = ms if oldest is None else min(oldest, ms)
            live = sum(1 for _ in names_ if _count(next(answers)) > 0)
            out[keys.name] = QueueGauges(
                name=keys.name,
                stream_length=length,
                in_flight=in_flight,
                scheduled=scheduled,
                unfinished=unfinished,
                dead=dead,
                consumers=live,
                oldest_waiting_age=0.0 if oldest is None else max(0, now_ms - oldest) / 1000.0,
            )
        return out

    # -- cancel (the bulk form) ------------------------------------------------------------
    def waiting_jobs(self, queue: str | None, job_type: str | None) -> list[str]:
        """The job ids of ``queue``'s stream entries (oldest first; those a consumer holds
        too: cancel.lua's ``waiting`` mode leaves them alone), then of its delayed set, of
        ``job_type`` if given. Read in slices: a long backlog is not one reply."""
        keys = self.queues.keys_for(queue)
        client = self.connection.client
        found: list[str] = []
        for stream in keys.streams:  # every priority band's, highest first
            start = "-"
            while True:
                rows = client.xrange(stream, start, "+", count=1000)
                for _, raw in rows:
                    fields = codec.fields(raw) or {}
                    job_id = codec.text(fields.get(b"id"))
                    if job_id and (job_type is None or _type_of(fields.get(b"d")) == job_type):
                        found.append(job_id)
                if len(rows) < 1000:
                    break
                start = "(" + codec.text(rows[-1][0])
        delayed = [codec.text(i) for i in client.zrange(keys.delayed, 0, -1)]
        if job_type is None:
            return found + delayed
        pipe = client.pipeline(transaction=False)
        for job_id in delayed:
            pipe.hget(keys.job(job_id), "data")
        for job_id, data in zip(delayed, pipe.execute(), strict=True):
            if _type_of(data) == job_type:
                found.append(job_id)
        return found

    # -- dead letters ----------------------------------------------------------------------
    def dead_letters(self, queue: str | None = None, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of ``queue``."""
        keys = self.queues.keys_for(queue)
        return [
            codec.dead_letter(keys.name, codec.text(raw_id), raw)
            for raw_id, raw in self.connection.client.xrange(keys.dead, count=count) or []
        ]

    def dead_letter(self, entry_id: str, queue: str | None = None) -> DeadLetter | None:
        """One dead letter of ``queue`` by its entry id, or ``None``."""
        keys = self.queues.keys_for(queue)
        fields = self._dead_fields(keys, entry_id)
        return None if fields is None else codec.dead_letter(keys.name, entry_id, fields)

    def _dead_fields(self, keys: QueueKeys, entry_id: str) -> dict[Any, Any] | None:
        """The raw fields of one dead letter, or ``None``.

        Raises:
            InvalidJob: ``entry_id`` is not a stream entry id.
        """
        codec.check_entry_id(entry_id)
        rows = self.connection.client.xrange(keys.dead, entry_id, entry_id)
        return (rows[0][1] or {}) if rows else None

    def requeue_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Put one dead letter back on its queue as a fresh job.

        Raises:
            DuplicateJob: the job's id is taken by an unfinished job.
            InvalidJob: the dead letter has no job id or data (a poison entry).
        """
        keys = self.queues.keys_for(queue)
        fields = self._dead_fields(keys, entry_id)
        if fields is None:
            return False
        f = {codec.text(k): codec.text(v) for k, v in fields.items()}
        if not f.get("id") or not f.get("d"):
            raise InvalidJob(f"dead letter {entry_id} has no job to requeue ({f.get('error')})")
        rank = codec.priority(f["d"])
        band = keys.for_priority(rank)
        try:
            code = self.connection.run(
                "requeue_dead",
                band.requeue(f["id"]),
                [
                    entry_id,
                    f["id"],
                    f["d"],
                    self.config.record_format,
                    keys.band_argument(rank),
                ],
                wait_replica=self.durable_wait,
            )
        except NotReplicated as exc:
            raise BackendUnavailable(
                f"{exc} (durable_enqueue): the job is requeued on the master only"
            ) from exc
        if code == -1:
            raise DuplicateJob(f["id"])
        return bool(code)

    def delete_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Delete one dead letter; False if there was no such entry."""
        keys = self.queues.keys_for(queue)
        codec.check_entry_id(entry_id)
        return bool(self.connection.client.xdel(keys.dead, entry_id))

    def dead_count(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds."""
        return int(self.connection.client.xlen(self.queues.keys_for(queue).dead))

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        keys = self.queues.keys_for(queue)
        client = self.connection.client
        count = int(client.xlen(keys.dead))
        client.delete(keys.dead)
        return count


def _type_of(data: Any) -> str | None:
    """The job type in an entry's ``d`` (or a record's ``data``), ``None`` if unreadable."""
    try:
        decoded = json.loads(codec.text(data) or "null")
    except (ValueError, RecursionError):
        return None
    job_type = decoded.get("type") if isinstance(decoded, dict) else None
    return job_type if isinstance(job_type, str) else None


def _count(reply: Any) -> int:
    """An integer reply of a pipelined read, 0 for a missing key or a refused command (no
    group yet: no consumer of this release started)."""
    if reply is None or isinstance(reply, Exception):
        return 0
    return int(reply)
