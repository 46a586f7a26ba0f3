"""The reader: one thread that owns the consumer's round trips. Each cycle records the starts
made at hand-over, reads new entries (starting those idle workers take at once, holding the
rest ahead unstarted) and records the successes queued since the last one, in one pipeline;
when there is nothing to read it blocks in ``XREADGROUP``. It also takes entries the reclaimer
claimed, and hands back held entries grown too old.

Every read covers each queue's priority bands (keys.py), highest first: read_start.lua reads
them in that order within one call, the blocking read and the pending list name every band's
stream, and what they return is handed over highest band first."""

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
from csjd_core.backends.redis.connection import (
    REDIRECTED,
    REDIS_DOWN,
    SLOT_MIGRATING,
    Connection,
    packed,
)
from csjd_core.backends.redis.holdings import Holdings
from csjd_core.backends.redis.keys import QueueKeys, Queues, by_queue
from csjd_core.backends.redis.settle import Outcomes
from csjd_core.config import DistributedConfig
from csjd_core.job import Job
from csjd_core.retry import Backoff

__all__ = ["Reader"]

logger = logging.getLogger("csjd_core.redis")

_NO_RECORD = "no job record: the entry was not written by CSJD's enqueue"
#: A pipelined command's error that leaves the connection in step: Redis's refusal, or the
#: cluster client giving up on a redirected command (a slot being migrated, see `_reply`).
_REFUSED = (redis.ResponseError, *SLOT_MIGRATING)
_RELEASE_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
#: read_start.lua's reply fields per entry (then, after the last entry, Redis's clock in ms).
_READ_FIELDS = 6


class _Trip:
    """One node's share of a reader cycle: its connection and the queues' commands."""

    __slots__ = ("conn", "error", "pool", "reads", "settles", "started")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn: Any = pool.get_connection()  # redis-py leaves its methods untyped
        self.started: list[tuple[QueueKeys, list[Delivery]]] = []
        self.reads: list[QueueKeys] = []
        self.settles: list[tuple[QueueKeys, list[Any]]] = []
        self.error: redis.RedisError | None = None

    def release(self) -> None:
        self.pool.release(self.conn)


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
        self._turn = 0  # the slot whose streams the next blocking read waits on (a cluster's)
        #: Queues whose slot read_start.lua last found being migrated (resharding): no blocking
        #: read waits on them, or it would take entries no script can start until it ends.
        self.migrating: set[str] = set()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        """The reader thread: until the consumer stops."""
        holdings = self.holdings
        backoff = Backoff()
        # Our own pending entries first (a reply lost on the wire strands them there).
        history: dict[Any, Any] = {
            stream: "0" for k in self.queues.consumed.values() for stream in k.streams
        }
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
                    # Our cycle's pipelines use the reader client's slot table: a killed
                    # master's replica takes over its slots only once the table is read again.
                    self.connection.node_unreachable(self.connection.reader)
                    logger.warning(
                        "redis unreachable; reconnecting redis=%s error=%s delay=%.2f",
                        self.connection.redis_config.display,
                        exc,
                        backoff.peek(),
                    )
                    backoff.sleep(lambda: holdings.stopping)
                except SLOT_MIGRATING as exc:
                    # A start or success of a queue whose slot is being migrated: Redis refuses
                    # them until it ends. They were put back (leases are renewed meanwhile).
                    logger.warning(
                        "queue slot migrating; recording starts and successes again "
                        "error=%s delay=%.2f",
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
        """Read a slice of our own pending list (entries delivered to us before a restart),
        from the streams of one slot (all of them on a single Redis)."""
        self.read_calls += 1
        [streams, *_] = self.connection.slot_groups(list(history))
        reply = self.connection.reader.xreadgroup(
            self.config.group,
            self.consumer,
            {stream: history[stream] for stream in streams},
            count=max(1, self.holdings.idle()),
        )
        self._take(reply, history)
        if not history:
            self.own_pending_read.set()
            self.holdings.pipelining = True

    def read_blocking(self) -> None:
        """Wait in XREADGROUP BLOCK for new entries; successes are recorded directly meanwhile.

        On a cluster one XREADGROUP reads streams of one slot only: queues in several slots
        are waited on in turn, each for ``block`` divided among them (docs/scaling.md). A
        queue whose slot is being migrated is not waited on (see `migrating`).
        """
        holdings = self.holdings
        streams = [
            stream
            for k in self.queues.consumed.values()
            if k.name not in self.migrating
            for stream in k.streams
        ]
        if not streams:  # read_start.lua is asked again after a short wait
            with contextlib.suppress(queue.Empty):
                holdings.doorbell.get(timeout=min(self.config.block, 0.1))
            return
        with holdings.lock:
            if holdings.acks:
                return
            holdings.pipelining = False
        try:
            self.read_calls += 1
            groups = self.connection.slot_groups(streams)
            self._turn = (self._turn + 1) % len(groups)
            # COUNT is per stream: entries arriving in several bands during the wait may start
            # more than the idle workers (the extra ones wait started, their leases renewed).
            reply = self.connection.reader.xreadgroup(
                self.config.group,
                self.consumer,
                dict.fromkeys(groups[self._turn], ">"),
                count=max(1, holdings.idle()),  # only reached with idle workers
                block=max(1, int(self.config.block * 1000 / len(groups))),
            )
        finally:
            holdings.pipelining = True
        # A blocking read follows a read_start.lua that found nothing: what it returns entered
        # the stream during the wait, so it is due about now (within a round trip).
        self._take(reply, None, time.monotonic())

    def cycle(self, *, read: bool = True) -> bool:
        """One round trip: record the starts made at hand-over, read new entries (started for
        the idle workers, held ahead for the rest of `Holdings.capacity`) and record the queued
        successes. Starts go first, so an outcome in the same pipeline lands after its start;
        the reads before the successes, so workers run them while the settle reply is on its
        way. ``read=False`` only records. On a cluster, one pipeline per node, sent one after
        the other (each queue's commands go to the node of its slot).

        Returns:
            False if there was nothing to record and nothing to read.
        """
        holdings = self.holdings
        start = holdings.idle() if read else 0
        hold = max(0, holdings.capacity() - start) if read else 0
        reads = list(self.queues.consumed.values()) if start + hold > 0 else []
        self.read_calls += len(reads)  # attempts, counted even if Redis cannot be reached
        # Connected before the starts and successes are taken: if Redis is down they stay.
        trips = self._trips()
        starts = holdings.take_starts()  # before the successes: theirs are taken by now
        acks = holdings.take_acks()
        if starts and acks:  # a success that records its start makes the start write moot
            with_start = {op["e"] for _, op in acks if "s" in op}
            starts = [d for d in starts if d.ref[1] not in with_start]
        for keys, begun in by_queue(starts, lambda d: d.ref[0]):
            trips[keys.name].started.append((keys, begun))
        for keys in reads:
            trips[keys.name].reads.append(keys)
        for keys, group in by_queue(acks, lambda ack: ack[0].ref[0]):
            trips[keys.name].settles.append((keys, group))
        got = False
        error: redis.RedisError | None = None
        sent = time.monotonic()
        pending = list(dict.fromkeys(trips.values()))  # one per node, in queue order
        try:
            while pending:
                trip = pending[0]
                got = self._round_trip(trip, sent, start, hold) or got
                error = trip.error or error
                pending.pop(0)
        except BaseException:
            for trip in pending[1:]:  # never sent: recorded on the next cycle
                for _, begun in trip.started:
                    holdings.requeue_starts(begun)
                for _, group in trip.settles:
                    holdings.requeue_acks(group)
            raise
        finally:
            for trip in dict.fromkeys(trips.values()):
                trip.release()
        holdings.measured_round_trip(time.monotonic() - sent)
        if error is not None:
            raise error
        return got or bool(acks) or bool(starts)

    def _trips(self) -> dict[str, _Trip]:
        """A `_Trip` per consumed queue, queues on one node sharing it, each with a connection
        taken from that node's pool (the reader's client)."""
        reader = self.connection.reader
        by_pool: dict[int, _Trip] = {}
        trips: dict[str, _Trip] = {}
        try:
            for name, keys in self.queues.consumed.items():
                pool = self.connection.pool_for(reader, keys.stream)
                trip = by_pool.get(id(pool))
                if trip is None:
                    trip = by_pool[id(pool)] = _Trip(pool)
                trips[name] = trip
        except BaseException:
            for trip in by_pool.values():
                trip.release()
            raise
        return trips

    def _round_trip(self, trip: _Trip, sent: float, start: int, hold: int) -> bool:
        """Send one node's pipeline and take its replies (see `cycle`); True if it read
        entries. A reply that is an error is kept in ``trip.error`` once every reply is read
        (the connection stays in step); a lost connection raises, having handed the starts
        and successes not yet recorded back to `Holdings`."""
        holdings = self.holdings
        evalsha = self.connection.evalsha
        commands = [
            evalsha("started", *self._started_arguments(keys, begun))
            for keys, begun in trip.started
        ]
        commands += [
            evalsha(
                "read_start",
                [*keys.streams, keys.pending, keys.stats],
                [
                    self.config.group,
                    self.consumer,
                    keys.job_prefix,
                    start,
                    hold,
                    self.outcomes.ttl_ms,
                ],
            )
            for keys in trip.reads
        ]
        for keys, group in trip.settles:
            script_keys, args, _ = self.outcomes.arguments(keys, [op for _, op in group])
            commands.append(evalsha("settle", script_keys, args))
        if not commands:
            return False
        conn = trip.conn
        replies = iter(commands)
        got = False
        recorded = settled = 0
        try:
            conn.send_packed_command(packed(conn, commands))
            for _, begun in trip.started:
                try:
                    flags = self._reply(conn, next(replies))
                except _REFUSED as exc:  # NOSCRIPT, a slot migrating...: sent again next cycle
                    trip.error = exc
                    holdings.requeue_starts(begun)
                else:
                    holdings.recorded(begun)
                    self._refused_starts(begun, flags)
                recorded += 1
            for keys in trip.reads:
                try:
                    flat = self._reply(conn, next(replies))
                except _REFUSED as exc:
                    trip.error = exc  # raised once every reply is read
                    continue
                if isinstance(flat, int):  # 0: its slot is being migrated, nothing was read
                    self._slot_migrating(keys, True)
                    continue
                if keys.name in self.migrating:
                    self._slot_migrating(keys, False)
                if flat:
                    got = True
                    self._take_read(keys, flat, sent)
            for _, group in trip.settles:
                try:
                    reply = self._reply(conn, next(replies))
                except _REFUSED as exc:
                    reply = exc
                settled += 1
                self.outcomes.settled(group, reply)
        except BaseException:
            conn.disconnect()
            for _, begun in trip.started[recorded:]:  # recorded on the next cycle (or by outcomes)
                holdings.requeue_starts(begun)
            for _, group in trip.settles[settled:]:
                holdings.requeue_acks(group)
            raise
        return got

    def _slot_migrating(self, keys: QueueKeys, migrating: bool) -> None:
        """Note (and log, once each way) that read_start.lua found the queue's slot being
        migrated, or found it no longer migrating."""
        if migrating and keys.name not in self.migrating:
            self.migrating.add(keys.name)
            logger.warning(
                "queue slot migrating to another node; its entries wait until it ends queue=%s",
                keys.name,
            )
        elif not migrating:
            self.migrating.discard(keys.name)
            logger.info("queue slot migration over; reading it again queue=%s", keys.name)

    def _reply(self, conn: Any, command: tuple[Any, ...]) -> Any:
        """The reply to ``command``; redirected by a cluster node (it did not run there), it
        is sent again through the cluster client, which follows the redirection (and raises
        one of `SLOT_MIGRATING` if the slot is still being migrated after a while)."""
        try:
            return conn.read_response()
        except REDIRECTED:
            return self.connection.redirected(command)

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

    def _take(self, reply: Any, history: dict[Any, Any] | None, due: float | None = None) -> None:
        try:
            streams = codec.stream_replies(reply)
            of_stream = self.queues.of_stream
            streams.sort(key=lambda item: of_stream(item[0]).band)  # the highest band first
            for stream, entries in streams:
                if history is not None:
                    if not entries:
                        history.pop(stream, None)
                    elif stream in history:
                        history[stream] = codec.text(entries[-1][0])
                self.accept(self.queues.of_stream(stream), entries, due)
        except Exception:  # the reader must outlive any one reply (read entries are reclaimed)
            logger.exception("could not take read entries; they are reclaimed after the lease")

    def _take_read(self, keys: QueueKeys, flat: list[Any], read_at: float) -> None:
        try:
            self._accept_read(keys, flat, read_at)
        except Exception:  # the reader must outlive any one reply
            logger.exception("could not take read entries; handing them back")
            for band, entries in by_queue(
                range(0, len(flat) - 1, _READ_FIELDS),
                lambda i: keys.bands[int(flat[i + 5]) - 1],
            ):
                self.hand_back(
                    band, [(codec.text(flat[i]), codec.text(flat[i + 1])) for i in entries]
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
        """Create the group (and stream) of each consumed queue's priority bands unless it
        exists: at ``0``, so a band's entries added before (by a producer of a release with
        priorities, while only older workers ran) are read too."""
        client = self.connection.client
        for keys in self.queues.consumed.values():
            for stream in keys.streams:
                try:
                    client.xgroup_create(stream, self.config.group, id="0", mkstream=True)
                    logger.info(
                        "consumer group created stream=%s group=%s", stream, self.config.group
                    )
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise

    # -- entries to deliveries -------------------------------------------------------------
    def accept(self, keys: QueueKeys, entries: list[Any], due: float | None = None) -> None:
        """Turn read or claimed entries into deliveries (poison is dead-lettered at once);
        ``due``: their `Delivery.due` (``None`` for claimed and our own pending entries)."""
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
        script_keys = keys.start(job.id for _, job, _ in valid)
        args: list[Any] = [self.config.group, self.consumer, self.outcomes.ttl_ms]
        for entry_id, job, _ in valid:
            args += [entry_id, codec.expires_ms(job)]
        try:
            codes = self.connection.run("start", script_keys, args)
        except redis.RedisError as exc:
            logger.warning("could not start entries (they will be reclaimed) error=%s", exc)
            return
        fresh: list[Delivery] = []
        for (entry_id, job, data), (code, attempts, deliveries) in zip(valid, codes, strict=True):
            if code == -1:
                self.outcomes.poison(keys, entry_id, job.id, data, _NO_RECORD)
            elif code in (2, 3):  # cancelled while held, or expired (start.lua ended it)
                logger.info(
                    "%s job not started queue=%s id=%r",
                    "expired" if code == 3 else "cancelled",
                    keys.name,
                    job.id,
                )
                if self.outcomes.on_unstarted is not None:
                    self.outcomes.on_unstarted(1)
            elif code == 1:
                max_attempts = job.max_attempts or self.config.default_max_attempts
                fresh.append(
                    Delivery(
                        job,
                        int(attempts),
                        max_attempts,
                        int(deliveries),
                        (keys, entry_id, data),
                        due,
                    )
                )
        self._hand_over(fresh)

    def _accept_read(self, keys: QueueKeys, flat: list[Any], read_at: float) -> None:
        """Deliveries from read_start.lua's reply (entry, job id, data, attempts, started, band
        per entry, highest band first, then Redis's clock): started ones for idle workers, the
        others held ahead (their attempt is the next one, counted when a worker starts it).

        Entry by entry (`codec.decode` never raises): one that cannot be taken is dead-lettered
        alone, its batch-mates run.

        Each delivery's ``due`` is its entry's time (the ms of its id: when Redis added it, at
        enqueue or at the promotion of a delayed job or retry) as a monotonic value of this
        process, through Redis's clock in the same reply: no two hosts' clocks are compared,
        and an entry held ahead keeps its due time until a worker takes it.
        """
        fresh: list[Delivery] = []
        held: list[Delivery] = []
        max_payload = self.config.max_payload_bytes
        bands = keys.bands
        received = time.monotonic()
        redis_ms = int(flat[-1])
        for i in range(0, len(flat) - 1, _READ_FIELDS):
            keys = bands[int(flat[i + 5]) - 1]  # the entry's band: its stream settles it
            entry_id = codec.text(flat[i])
            raw_id, raw, attempts = flat[i + 1], flat[i + 2], int(flat[i + 3])
            if attempts == -3:  # expired before it started: read_start.lua ended it
                logger.info("expired job not run queue=%s id=%r", keys.name, codec.text(raw_id))
                if self.outcomes.on_unstarted is not None:
                    self.outcomes.on_unstarted(1)
                continue
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
                due = received + (int(entry_id.partition("-")[0]) - redis_ms) / 1000.0
                if flat[i + 4]:
                    fresh.append(
                        Delivery(job, attempts, max_attempts, 1, (keys, entry_id, data), due)
                    )
                else:
                    held.append(
                        Delivery(job, attempts + 1, max_attempts, 1, (keys, entry_id, data), due)
                    )
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
