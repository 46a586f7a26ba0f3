"""The reader: one thread that owns the consumer's round trips. Each cycle records the starts
made at hand-over, reads new entries (starting those idle workers take at once, holding the
rest ahead unstarted) and records the successes queued since the last one, in one pipeline;
when there is nothing to read it blocks in ``XREADGROUP``. It also takes entries the reclaimer
claimed, and hands back held entries grown too old."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

import redis
from redis.exceptions import NoScriptError

from csjd_core.backends.base import Delivery
from csjd_core.backends.redis import codec
from csjd_core.backends.redis.connection import REDIS_DOWN, Connection, packed
from csjd_core.backends.redis.holdings import Holdings
from csjd_core.backends.redis.keys import QueueKeys, Queues, by_queue
from csjd_core.backends.redis.settle import Outcomes
from csjd_core.config import DistributedConfig
from csjd_core.job import Job
from csjd_core.retry import Backoff

__all__ = ["Reader"]

logger = logging.getLogger("csjd_core.redis")

_NO_RECORD = "no job record: the entry was not written by CSJD's enqueue"
_RELEASE_IDLE_MS = 10 * 365 * 24 * 3600 * 1000


class Reader:
    """Reads entries into `Holdings` and hands them to the workers."""

    def __init__(
        self,
        connection: Connection,
        config: DistributedConfig,
        consumer: str,
        queues: Queues,
        holdings: Holdings,
        outcomes: Outcomes,
    ) -> None:
        self.connection = connection
        self.config = config
        self.consumer = consumer
        self.queues = queues
        self.holdings = holdings
        self.outcomes = outcomes
        #: Set once our own pending list was read; the reclaimer waits for it, or the entries
        #: it claims into that list would be read (and started) a second time.
        self.own_pending_read = threading.Event()
        self.read_calls = 0

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        """The reader thread: until the consumer stops."""
        holdings = self.holdings
        backoff = Backoff()
        # Our own pending entries first (a reply lost on the wire strands them there).
        history: dict[Any, Any] = {k.stream: "0" for k in self.queues.consumed.values()}
        # The last cycle read nothing while every worker is busy or held entries wait: a
        # blocking read would start an entry no worker can run, or delay recording the starts.
        # Wait for a worker (or half a second) and read again without blocking.
        stalled = False
        try:
            while holdings.consuming and not holdings.stopping:
                holdings.reader_waiting = True
                # Set before looking, so a worker finishing now either is seen or rings.
                while not (
                    holdings.acks
                    or holdings.starts
                    or holdings.stopping
                    or (holdings.capacity() > 0 and not stalled)
                ):
                    with contextlib.suppress(queue.Empty):
                        holdings.doorbell.get(timeout=0.5)
                    stalled = False  # a worker took or finished one, or time passed
                    if holdings.ahead:
                        self.release(holdings.expired())
                    if not holdings.consuming:
                        break
                holdings.reader_waiting = False
                if not holdings.consuming or holdings.stopping:
                    return
                try:
                    if holdings.ahead:
                        self.release(holdings.expired())
                    if history:
                        self.read_history(history)
                    elif self.cycle():
                        stalled = False
                    else:
                        stalled = bool(holdings.ahead) or holdings.idle() == 0
                        if not stalled:
                            self.read_blocking()
                    backoff.reset()
                except redis.ResponseError as exc:
                    self._on_read_error(exc, backoff)
                except REDIS_DOWN as exc:
                    logger.warning(
                        "redis unreachable; reconnecting redis=%s error=%s delay=%.2f",
                        self.connection.redis_config.display,
                        exc,
                        backoff.peek(),
                    )
                    backoff.sleep(lambda: holdings.stopping)
                except Exception:  # the reader must outlive anything (read entries are reclaimed)
                    logger.exception("reader cycle failed")
                    backoff.sleep(lambda: holdings.stopping)
        finally:
            with holdings.lock:
                holdings.pipelining = False
            self.outcomes.settle_now(holdings.take_acks())

    def read_history(self, history: dict[Any, Any]) -> None:
        """Read a slice of our own pending list (entries delivered to us before a restart)."""
        self.read_calls += 1
        reply = self.connection.reader.xreadgroup(
            self.config.group, self.consumer, history, count=max(1, self.holdings.idle())
        )
        self._take(reply, history)
        if not history:
            self.own_pending_read.set()
            self.holdings.pipelining = True

    def read_blocking(self) -> None:
        """Wait in XREADGROUP BLOCK for new entries; successes are recorded directly meanwhile."""
        holdings = self.holdings
        with holdings.lock:
            if holdings.acks:
                return
            holdings.pipelining = False
        try:
            self.read_calls += 1
            reply = self.connection.reader.xreadgroup(
                self.config.group,
                self.consumer,
                {k.stream: ">" for k in self.queues.consumed.values()},
                count=max(1, holdings.idle()),  # only reached with idle workers
                block=int(self.config.block * 1000),
            )
        finally:
            holdings.pipelining = True
        self._take(reply, None)

    def cycle(self, *, read: bool = True) -> bool:
        """One round trip: record the starts made at hand-over, read new entries (started for
        the idle workers, held ahead for the rest of `Holdings.capacity`) and record the queued
        successes. Starts go first, so an outcome in the same pipeline lands after its start;
        the reads before the successes, so workers run them while the settle reply is on its
        way. ``read=False`` only records.

        Returns:
            False if there was nothing to record and nothing to read.
        """
        holdings = self.holdings
        start = holdings.idle() if read else 0
        hold = max(0, holdings.capacity() - start) if read else 0
        reads = list(self.queues.consumed.values()) if start + hold > 0 else []
        self.read_calls += len(reads)  # attempts, counted even if Redis cannot be reached
        pool = self.connection.reader.connection_pool
        # Connected before the starts and successes are taken: if Redis is down they stay.
        conn: Any = pool.get_connection()  # redis-py leaves its methods untyped
        starts = holdings.take_starts()  # before the successes: theirs are taken by now
        acks = holdings.take_acks()
        if starts and acks:  # a success that records its start makes the start write moot
            with_start = {op["e"] for _, op in acks if "s" in op}
            starts = [d for d in starts if d.ref[1] not in with_start]
        evalsha = self.connection.evalsha
        started = by_queue(starts, lambda d: d.ref[0])
        commands = [
            evalsha("started", *self._started_arguments(keys, begun)) for keys, begun in started
        ]
        commands += [
            evalsha(
                "read_start",
                [keys.stream],
                [self.config.group, self.consumer, keys.job_prefix, start, hold],
            )
            for keys in reads
        ]
        settles = by_queue(acks, lambda ack: ack[0].ref[0])
        for keys, group in settles:
            script_keys, args, _ = self.outcomes.arguments(keys, [op for _, op in group])
            commands.append(evalsha("settle", script_keys, args))
        got = False
        error: redis.ResponseError | None = None
        recorded = settled = 0
        sent = time.monotonic()
        try:
            conn.send_packed_command(packed(conn, commands))
            for _, begun in started:
                try:
                    flags = conn.read_response()
                except redis.ResponseError as exc:  # NOSCRIPT...: sent again next cycle
                    error = exc
                    holdings.requeue_starts(begun)
                else:
                    holdings.recorded(begun)
                    self._refused_starts(begun, flags)
                recorded += 1
            for keys in reads:
                try:
                    flat = conn.read_response()
                except redis.ResponseError as exc:
                    error = exc  # raised once every reply is read: the connection stays in step
                    continue
                if flat:
                    got = True
                    self._take_read(keys, flat, sent)
            for _, group in settles:
                try:
                    reply = conn.read_response()
                except redis.ResponseError as exc:
                    reply = exc
                settled += 1
                self.outcomes.settled(group, reply)
        except BaseException:
            conn.disconnect()
            for _, begun in started[recorded:]:  # recorded on the next cycle (or by outcomes)
                holdings.requeue_starts(begun)
            for _, group in settles[settled:]:
                holdings.requeue_acks(group)
            raise
        finally:
            pool.release(conn)
        holdings.measured_round_trip(time.monotonic() - sent)
        if error is not None:
            raise error
        return got or bool(acks) or bool(starts)

    def _started_arguments(
        self, keys: QueueKeys, group: list[Delivery]
    ) -> tuple[list[str], list[Any]]:
        """started.lua's KEYS and ARGV for deliveries of one queue started at hand-over."""
        entries = sorted((codec.entry_order(d.ref[1]), d.ref[1]) for d in group)
        args: list[Any] = [self.config.group, self.consumer, entries[0][1], entries[-1][1]]
        for d in group:
            args += [d.ref[1], d.token, d.attempt]
        return [keys.stream, *(keys.job(d.job.id) for d in group)], args

    def _refused_starts(self, group: list[Delivery], flags: list[Any]) -> None:
        for delivery, flag in zip(group, flags, strict=True):
            # Refused once its outcome was recorded (settled first) is the ordinary order.
            if not flag and self.holdings.holds(delivery):
                logger.warning(
                    "start refused: the entry is no longer this consumer's (its outcome will "
                    "be refused) id=%r entry=%s",
                    delivery.job.id,
                    delivery.ref[1],
                )

    def _take(self, reply: Any, history: dict[Any, Any] | None) -> None:
        try:
            for stream, entries in codec.stream_replies(reply):
                if history is not None:
                    if not entries:
                        history.pop(stream, None)
                    elif stream in history:
                        history[stream] = codec.text(entries[-1][0])
                self.accept(self.queues.of_stream(stream), entries)
        except Exception:  # the reader must outlive any one reply (read entries are reclaimed)
            logger.exception("could not take read entries; they are reclaimed after the lease")

    def _take_read(self, keys: QueueKeys, flat: list[Any], read_at: float) -> None:
        try:
            self._accept_read(keys, flat, read_at)
        except Exception:  # the reader must outlive any one reply
            logger.exception("could not take read entries; handing them back")
            self.hand_back(
                keys,
                [(codec.text(flat[i]), codec.text(flat[i + 1])) for i in range(0, len(flat), 5)],
            )

    def _on_read_error(self, exc: redis.ResponseError, backoff: Backoff) -> None:
        if isinstance(exc, NoScriptError):  # Redis restarted without our scripts
            logger.warning("scripts missing in Redis (restarted?); loading them again")
            with contextlib.suppress(redis.RedisError):
                self.connection.load_scripts()
        elif "NOGROUP" in str(exc):
            logger.error(
                "consumer group or stream vanished (Redis restarted without "
                "persistence?); recreating group=%s",
                self.config.group,
            )
            try:
                self.ensure_groups()
            except redis.RedisError as again:
                logger.error("could not recreate the consumer group: %s", again)
        else:
            logger.error("read failed: %s", exc)
        backoff.sleep(lambda: self.holdings.stopping)

    def ensure_groups(self) -> None:
        """Create each consumed queue's group (and stream) unless it exists."""
        client = self.connection.client
        for keys in self.queues.consumed.values():
            try:
                client.xgroup_create(keys.stream, self.config.group, id="0", mkstream=True)
                logger.info(
                    "consumer group created stream=%s group=%s", keys.stream, self.config.group
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- entries to deliveries -------------------------------------------------------------
    def accept(self, keys: QueueKeys, entries: list[Any]) -> None:
        """Turn read or claimed entries into deliveries (poison is dead-lettered at once)."""
        valid: list[tuple[str, Job, str]] = []
        for raw_id, fields in entries:
            entry_id = codec.text(raw_id)
            if not fields:  # a PEL entry whose stream entry was deleted (None or {})
                self.holdings.deleted_entries += 1
                logger.warning(
                    "pending entry without data acked queue=%s entry=%s", keys.name, entry_id
                )
                with contextlib.suppress(redis.RedisError):  # else the reclaimer drops it
                    self.connection.client.xack(keys.stream, self.config.group, entry_id)
                continue
            job, data, problem = codec.decode(
                fields.get(b"id"), fields.get(b"d"), self.config.max_payload_bytes
            )
            if problem is not None or job is None:
                self.outcomes.poison(
                    keys, entry_id, codec.text(fields.get(b"id")), data, problem or "?"
                )
                continue
            valid.append((entry_id, job, data))
        if not valid:
            return
        script_keys = [keys.stream, *(keys.job(job.id) for _, job, _ in valid)]
        args = [self.config.group, self.consumer, *(entry_id for entry_id, _, _ in valid)]
        try:
            codes = self.connection.run("start", script_keys, args)
        except redis.RedisError as exc:
            logger.warning("could not start entries (they will be reclaimed) error=%s", exc)
            return
        fresh: list[Delivery] = []
        for (entry_id, job, data), (code, attempts, deliveries) in zip(valid, codes, strict=True):
            if code == -1:
                self.outcomes.poison(keys, entry_id, job.id, data, _NO_RECORD)
            elif code == 1:
                max_attempts = job.max_attempts or self.config.default_max_attempts
                fresh.append(
                    Delivery(job, int(attempts), max_attempts, int(deliveries), (keys, entry_id))
                )
        self._hand_over(fresh)

    def _accept_read(self, keys: QueueKeys, flat: list[Any], read_at: float) -> None:
        """Deliveries from read_start.lua's reply (entry, job id, data, attempts, started per
        entry): started ones for idle workers, the others held ahead (their attempt is the
        next one, counted when a worker starts it).

        Entry by entry (`codec.decode` never raises): one that cannot be taken is dead-lettered
        alone, its batch-mates run.
        """
        fresh: list[Delivery] = []
        held: list[Delivery] = []
        max_payload = self.config.max_payload_bytes
        for i in range(0, len(flat), 5):
            entry_id = codec.text(flat[i])
            raw_id, raw, attempts = flat[i + 1], flat[i + 2], int(flat[i + 3])
            if attempts == -2:
                self.outcomes.poison(
                    keys,
                    entry_id,
                    codec.text(raw_id),
                    codec.text(raw),
                    "malformed entry: missing field 'id' or 'd'",
                )
                continue
            job, data, problem = codec.decode(raw_id, raw, max_payload)
            if problem is not None or job is None:
                self.outcomes.poison(keys, entry_id, codec.text(raw_id), data, problem or "?")
            elif attempts == -1:
                self.outcomes.poison(keys, entry_id, job.id, data, _NO_RECORD)
            else:  # read with '>': delivered once, so the fencing token is 1
                max_attempts = job.max_attempts or self.config.default_max_attempts
                if flat[i + 4]:
                    fresh.append(Delivery(job, attempts, max_attempts, 1, (keys, entry_id)))
                else:
                    held.append(Delivery(job, attempts + 1, max_attempts, 1, (keys, entry_id)))
        self._hand_over(fresh, held, read_at)

    def _hand_over(
        self, fresh: list[Delivery], held: list[Delivery] | None = None, read_at: float = 0.0
    ) -> None:
        self.holdings.hand_over(fresh, held or [], read_at)
        if self.holdings.stopping:
            self.stop_fetching()

    # -- stopping --------------------------------------------------------------------------
    def stop_fetching(self) -> None:
        """No new reads; entries read ahead that no worker took are handed back."""
        holdings = self.holdings
        holdings.stopping = True
        buffered = holdings.take_buffered()
        for _ in range(self.config.workers):
            holdings.ready.put(None)  # wakes a blocked fetch
        holdings.doorbell.put(None)
        self.release(buffered)

    def release(self, deliveries: list[Delivery]) -> None:
        """Hand back deliveries read but never run."""
        for keys, group in by_queue(deliveries, lambda d: d.ref[0]):
            self.hand_back(keys, [(d.ref[1], d.job.id) for d in group])
            self.holdings.drop(group)

    def hand_back(self, keys: QueueKeys, entries: list[tuple[str, str]]) -> None:
        """Release (entry id, job id) pairs read but never run (release.lua): the attempt and
        the delivery are undone and any consumer may take them at once."""
        script_keys = [keys.stream, *(keys.job(job_id) for _, job_id in entries)]
        args = [self.config.group, self.consumer, _RELEASE_IDLE_MS, *(e for e, _ in entries)]
        try:
            self.connection.run("release", script_keys, args)
        except redis.RedisError as exc:
            logger.warning(
                "could not hand back read entries (reclaimed after the lease) error=%s", exc
            )
