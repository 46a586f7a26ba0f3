"""The Redis Streams backend: queues shared by many worker processes, at-least-once.

Every state change that must be atomic is one Lua script in ``backends/lua/`` (admission, start,
settle, promote, reclaim, renew, release). Acknowledgements are *fenced*: a script acks an entry
only if this consumer still owns it with the same delivery count, so an attempt that lost its
lease can never record an outcome. See docs/distributed.md for the protocol.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from csjd_core.backends.base import AttemptError, Backend, BackendSettings, Delivery
from csjd_core.config import DistributedConfig, RedisConfig
from csjd_core.errors import BackendUnavailable, CSJDError, DuplicateJob, InvalidJob, QueueFull
from csjd_core.job import (
    Job,
    JobState,
    JobStatus,
    timeout_seconds,
    utc_from_timestamp,
    validate_job,
)
from csjd_core.limits import clip_text, clip_traceback, name_problem
from csjd_core.stats import ConsumerStats, DeadLetter, QueueCounters, QueueStats

__all__ = ["DeadLetter", "QueueKeys", "RedisStreamsBackend"]

logger = logging.getLogger("csjd_core.redis")

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
_RELEASE_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
_NO_RECORD = "no job record: the entry was not written by CSJD's enqueue"
_COUNTERS = frozenset(("processed", "succeeded", "retried", "failed"))
_SCRIPTS = (
    "enqueue",
    "start",
    "read_start",
    "settle",
    "promote",
    "reclaim",
    "renew",
    "release",
    "delete_consumer",
    "requeue_dead",
)


class _NotSent(redis.ConnectionError):
    """No connection could be made: the command was never sent (so it certainly did not run)."""


class QueueKeys:
    """Every Redis key of one queue, built in one place. ``{name}`` is the Cluster hash tag."""

    __slots__ = (
        "dead",
        "delayed",
        "heartbeat_prefix",
        "job_prefix",
        "name",
        "pending",
        "stats",
        "stream",
    )

    def __init__(self, prefix: str, name: str) -> None:
        problem = name_problem(name, "queue")
        if problem is not None:  # the one place keys are built from a name: refuse it here
            raise InvalidJob(problem)
        base = f"{prefix}:{{{name}}}"
        self.name = name
        self.stream = base
        self.delayed = base + ":delayed"
        self.pending = base + ":pending"
        self.dead = base + ":dead"
        self.stats = base + ":stats"
        self.job_prefix = base + ":job:"
        self.heartbeat_prefix = base + ":hb:"

    def job(self, job_id: str) -> str:
        """The hash holding one job's record."""
        return self.job_prefix + job_id


def _load_script(name: str) -> str:
    return resources.files("csjd_core.backends").joinpath(f"lua/{name}.lua").read_text()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class _Settler:
    """Group commit for outcomes: concurrent workers share one script call per queue."""

    def __init__(self, flush: Any) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._queue: list[list[Any]] = []
        self._flushing = False

    def settle(self, keys: QueueKeys, op: dict[str, Any]) -> bool:
        slot: list[Any] = [keys, op, None]
        cond = self._cond
        with cond:
            self._queue.append(slot)
            while slot[2] is None:
                if self._flushing:
                    cond.wait()
                    continue
                self._flushing = True
                batch, self._queue = self._queue, []
                cond.release()
                try:
                    results = self._flush(batch)
                except BaseException as exc:  # hand the error to every waiter of the batch
                    results = [exc] * len(batch)
                finally:
                    cond.acquire()
                    self._flushing = False
                for item, result in zip(batch, results, strict=True):
                    item[2] = result
                cond.notify_all()
        if isinstance(slot[2], BaseException):
            raise slot[2]
        return bool(slot[2])


class RedisStreamsBackend(Backend):
    """Jobs in Redis Streams, shared by every process that uses the same keys."""

    durable = True
    local = False

    def __init__(self, redis_config: RedisConfig, config: DistributedConfig) -> None:
        self.redis_config = redis_config
        self.config = config
        self.consumer = config.consumer or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self.queues = {name: QueueKeys(config.stream, name) for name in config.queues}
        # Queues only submitted to: never consumed, never iterated by the maintenance thread.
        self._other_queues: dict[str, QueueKeys] = {}
        self.default_queue = config.queues[0]
        self._client: redis.Redis | None = None
        self._reader: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._init_lock = threading.Lock()  # creates the two pools above, once each
        self._settings: BackendSettings | None = None
        # Workers wait for deliveries on `_ready`, the reader for room or successes to record
        # on `_doorbell` (C queues: one cheap wake-up each); maintenance sleeps on an event.
        self._lock = threading.Lock()
        self._ready: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._reader_waiting = False
        self._maint_wake = threading.Event()
        self._owned: dict[str, Delivery] = {}  # entry id -> delivery, read but not settled
        # Entries of `_owned` whose outcome is on its way (a renewal refused for one of them
        # means it was settled meanwhile, not that its lease was lost).
        self._settling: set[str] = set()
        self._consuming = False
        self._stopping = False
        self._threads: list[threading.Thread] = []
        # Set once the reader has read our own pending list; the reclaimer waits for it, or the
        # entries it claims into that list would be read (and started) a second time.
        self._own_pending_read = threading.Event()
        self._settler = _Settler(self._flush_settles)
        # Successes queued for the reader's next round trip (see succeed_nowait): while the
        # reader cycles, it records them in the same pipeline as its next read.
        self._acks: deque[tuple[Delivery, dict[str, Any]]] = deque()
        self._pipelining = False
        self._lease = config.lease
        self._block = config.block
        self._heartbeat_interval = config.heartbeat_interval
        self._claim_interval = config.claim_interval
        self._dedupe_ms = int(config.dedupe_window * 1000)
        self._ttl_ms = int(max(config.result_ttl * 1000, self._dedupe_ms)) or 1
        self.deleted_entries = 0  # PEL entries whose stream entry was gone (counted, logged)
        self.read_calls = 0

    # -- connections -----------------------------------------------------------------------
    def _make_client(self, socket_timeout: float) -> redis.Redis:
        rc = self.redis_config
        # No blind client retries: a timed-out XREADGROUP or XADD must surface to our code.
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": rc.connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        if rc.url is not None:
            extra = {
                k: v
                for k, v in (("username", rc.username), ("password", rc.password))
                if v is not None
            }
            return redis.Redis.from_url(rc.url, **options, **extra)
        host, _, port = (rc.addr or "").rpartition(":")
        return redis.Redis(
            host=host,
            port=int(port),
            db=rc.db,
            username=rc.username,
            password=rc.password,
            ssl=rc.ssl,
            **options,
        )

    @property
    def client(self) -> redis.Redis:
        """The command connection pool (created on first use, by one thread: the first
        submits of a web process may come from several at once)."""
        client = self._client
        if client is None:
            with self._init_lock:
                if self._client is None:
                    client = self._make_client(self.redis_config.socket_timeout)
                    for name in _SCRIPTS:
                        self._scripts[name] = client.register_script(_load_script(name))
                    self._client = client  # published with its scripts registered
                client = self._client
        return client

    @property
    def reader(self) -> redis.Redis:
        """The reader's connection pool: blocking reads wait longer than its socket timeout."""
        reader = self._reader
        if reader is None:
            with self._init_lock:
                if self._reader is None:
                    self._reader = self._make_client(self._block + self.redis_config.socket_timeout)
                reader = self._reader
        return reader

    def _load_scripts(self) -> None:
        """Load every script into Redis (pipelined calls use EVALSHA without a fallback)."""
        for script in self._scripts.values():
            self.client.script_load(script.script)

    def _evalsha(self, name: str, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script in one round trip on a pooled connection.

        Straight on the connection: redis-py's command path (events, retries, observability)
        costs as much as the round trip itself on a small machine. A server that lost its
        scripts (restarted) is given them again (SCRIPT LOAD: the worker ACL has no EVAL).
        """
        pool = self.client.connection_pool  # registers the scripts on first use
        command = self._evalsha(name, keys, args)
        try:
            conn: Any = pool.get_connection()  # redis-py leaves its methods untyped
        except _REDIS_DOWN as exc:
            raise _NotSent(str(exc)) from exc
        try:
            conn.send_packed_command(conn.pack_command(*command))
            try:
                return conn.read_response()
            except NoScriptError:
                conn.send_packed_command(
                    conn.pack_command("SCRIPT", "LOAD", self._scripts[name].script)
                )
                conn.read_response()
                conn.send_packed_command(conn.pack_command(*command))
                return conn.read_response()
        except redis.ResponseError:
            raise  # a reply: the connection is in step
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def keys_for(self, queue: str | None) -> QueueKeys:
        """The keys of ``queue`` (``None``: the default queue)."""
        name = queue or self.default_queue
        keys = self.queues.get(name) or self._other_queues.get(name)
        if keys is None:
            keys = self._other_queues.setdefault(name, QueueKeys(self.config.stream, name))
        return keys

    # -- lifecycle -------------------------------------------------------------------------
    def open(self, settings: BackendSettings) -> int:
        """Remember the settings; connections are made on first use."""
        self._settings = settings
        return 0

    def start_consuming(self) -> None:
        """Create the consumer groups and start the reader and maintenance threads."""
        try:
            for keys in self.queues.values():
                self._ensure_group(keys)
            self._load_scripts()
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(
                f"Redis at {self.redis_config.display} unavailable: {exc}"
            ) from exc
        self._consuming = True
        for target, name in (
            (self._read_loop, "csjd-reader"),
            (self._maintenance_loop, "csjd-maintenance"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        logger.info(
            "consumer started consumer=%s group=%s queues=%s redis=%s",
            self.consumer,
            self.config.group,
            ",".join(self.queues),
            self.redis_config.display,
        )

    def _ensure_group(self, keys: QueueKeys) -> None:
        try:
            self.client.xgroup_create(keys.stream, self.config.group, id="0", mkstream=True)
            logger.info("consumer group created stream=%s group=%s", keys.stream, self.config.group)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def wake(self) -> None:
        """Stop fetching: no new reads; prefetched entries are handed back."""
        self._stopping = True
        buffered = []
        with contextlib.suppress(queue.Empty):
            while True:
                delivery = self._ready.get_nowait()
                if delivery is not None:
                    buffered.append(delivery)
        for _ in range(self.config.workers):
            self._ready.put(None)  # wakes a blocked fetch
        self._doorbell.put(None)
        self._release(buffered)

    def close(self, *, clean: bool) -> list[Job]:
        """Stop the threads, remove the heartbeat, close connections; jobs stay in Redis."""
        self.wake()
        self._consuming = False
        self._maint_wake.set()
        for thread in self._threads:
            thread.join(timeout=self._block + 5)
        if self._client is not None and self._threads:
            with contextlib.suppress(*_REDIS_DOWN):
                self._client.delete(
                    *(k.heartbeat_prefix + self.consumer for k in self.queues.values())
                )
        for client in (self._reader, self._client):
            if client is not None:
                client.close()
        return []

    # -- admission -------------------------------------------------------------------------
    def encode(self, job: Job) -> str:
        """The wire form of a job (the stream entry's ``d`` field)."""
        return self._encode(job)[0]

    def _encode(self, job: Job) -> tuple[str, int]:
        """The wire form and the effective max_attempts (no second JSON parse per job)."""
        max_attempts = job.max_attempts or self._default_attempts()
        data = json.dumps(
            {
                "type": job.type,
                "payload": job.payload,
                "max_attempts": max_attempts,
                "timeout": timeout_seconds(job.timeout),
                "queue": job.queue,
            },
            separators=(",", ":"),
            allow_nan=False,
        )
        if len(data) + len(job.id) > self.config.max_payload_bytes:
            raise InvalidJob(
                f"job {job.id!r} is {len(data) + len(job.id)} bytes as JSON; "
                f"max_payload_bytes={self.config.max_payload_bytes}"
            )
        return data, max_attempts

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Admit ``jobs`` (all in one queue) in one round trip (see enqueue.lua)."""
        keys = self.keys_for(jobs[0].queue)
        args: list[Any] = [self.config.max_pending_jobs, self._dedupe_ms]
        job_keys = []
        for job in jobs:
            # Rounded up to the millisecond: a job must not start before its run_at.
            run_at = "" if job.run_at is None else str(math.ceil(job.run_at.timestamp() * 1000))
            data, max_attempts = self._encode(job)
            args += [job.id, data, run_at, max_attempts]
            job_keys.append(keys.job(job.id))
        try:
            reply = self._script(
                "enqueue", [keys.stream, keys.delayed, keys.pending, *job_keys], args
            )
        except _NotSent as exc:
            raise BackendUnavailable(
                f"Redis at {self.redis_config.display} unreachable ({exc}); the job was not "
                "enqueued"
            ) from exc
        except _REDIS_DOWN as exc:
            raise BackendUnavailable(
                f"Redis at {self.redis_config.display} unavailable while enqueuing ({exc}); the "
                "job may or may not be enqueued: submitting it again with the same id is safe"
            ) from exc
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis refused the enqueue: {exc}") from exc
        verdict = _text(reply[0])
        if verdict == "full":
            raise QueueFull(
                self.config.max_pending_jobs,
                f"queue {keys.name!r} full: {int(reply[1])} unfinished jobs, "
                f"max_pending_jobs={self.config.max_pending_jobs}",
            )
        if verdict == "dup":
            raise DuplicateJob(
                _text(reply[1]),
                f"job id {_text(reply[1])!r} is taken by an "
                "unfinished job, or one that finished within dedupe_window",
            )

    # -- consumption -----------------------------------------------------------------------
    def fetch(self, timeout: float) -> Delivery | None:
        """The next delivery read by the reader thread, waiting up to ``timeout``."""
        try:
            if timeout <= 0 or self._stopping:
                return self._ready.get_nowait()
            return self._ready.get(True, timeout)
        except queue.Empty:
            return None

    def _capacity(self) -> int:
        """How many entries to read: workers (or the prefetch) minus the deliveries in hand.

        In hand are the buffered and the running deliveries; successes queued for the next
        round trip are done (their workers are idle again).
        """
        want = max(self.config.workers, self.config.prefetch or 0)
        return want - (len(self._owned) - len(self._acks))

    def _ring(self) -> None:
        """Wake the reader if it waits for room or for successes to record."""
        if self._reader_waiting:
            self._doorbell.put(None)

    def _read_loop(self) -> None:
        backoff = _Backoff()
        # Our own pending entries first (a reply lost on the wire strands them there).
        history: dict[Any, Any] = {k.stream: "0" for k in self.queues.values()}
        try:
            while self._consuming and not self._stopping:
                self._reader_waiting = True
                # Set before looking, so a worker finishing now either is seen or rings.
                while not (self._acks or self._capacity() > 0 or self._stopping):
                    with contextlib.suppress(queue.Empty):
                        self._doorbell.get(timeout=0.5)
                    if not self._consuming:
                        break
                self._reader_waiting = False
                if not self._consuming or self._stopping:
                    return
                try:
                    if history:
                        self._read_history(history)
                    elif not self._cycle(self._capacity()):
                        self._read_blocking()
                    backoff.reset()
                except redis.ResponseError as exc:
                    self._on_read_error(exc, backoff)
                except _REDIS_DOWN as exc:
                    logger.warning(
                        "redis unreachable; reconnecting redis=%s error=%s delay=%.2f",
                        self.redis_config.display,
                        exc,
                        backoff.peek(),
                    )
                    backoff.sleep(lambda: self._stopping)
                except Exception:  # the reader must outlive anything (read entries are reclaimed)
                    logger.exception("reader cycle failed")
                    backoff.sleep(lambda: self._stopping)
        finally:
            with self._lock:
                self._pipelining = False
            self._settle_now(self._take_acks())

    def _read_history(self, history: dict[Any, Any]) -> None:
        """Read a slice of our own pending list (entries delivered to us before a restart)."""
        self.read_calls += 1
        reply = self.reader.xreadgroup(
            self.config.group, self.consumer, history, count=max(1, self._capacity())
        )
        self._take(reply, history)
        if not history:
            self._own_pending_read.set()
            self._pipelining = True

    def _read_blocking(self) -> None:
        """Wait in XREADGROUP BLOCK for new entries; successes are recorded directly meanwhile."""
        with self._lock:
            if self._acks:
                return
            self._pipelining = False
        try:
            self.read_calls += 1
            reply = self.reader.xreadgroup(
                self.config.group,
                self.consumer,
                {k.stream: ">" for k in self.queues.values()},
                count=max(1, self._capacity()),
                block=int(self._block * 1000),
            )
        finally:
            self._pipelining = True
        self._take(reply, None)

    def _take(self, reply: Any, history: dict[Any, Any] | None) -> None:
        try:
            for stream, entries in _stream_replies(reply):
                if history is not None:
                    if not entries:
                        history.pop(stream, None)
                    elif stream in history:
                        history[stream] = _text(entries[-1][0])
                self._accept(self._queue_of(stream), entries)
        except Exception:  # the reader must outlive any one reply (read entries are reclaimed)
            logger.exception("could not take read entries; they are reclaimed after the lease")

    def _take_acks(self) -> list[tuple[Delivery, dict[str, Any]]]:
        acks = self._acks
        taken = []
        with contextlib.suppress(IndexError):
            while True:
                taken.append(acks.popleft())
        return taken

    def _cycle(self, count: int) -> bool:
        """One round trip: read (and start) up to ``count`` entries and record the queued
        successes. The reads go first, so workers run them while the settle reply is on its way.

        Returns:
            False if there was nothing to record and nothing to read.
        """
        reads = list(self.queues.values()) if count > 0 else []
        self.read_calls += len(reads)  # attempts, counted even if Redis cannot be reached
        pool = self.reader.connection_pool
        # Connected before the successes are taken: if Redis is down they stay queued.
        conn: Any = pool.get_connection()  # redis-py leaves its methods untyped
        acks = self._take_acks()
        commands = [
            self._evalsha(
                "read_start",
                [keys.stream],
                [self.config.group, self.consumer, keys.job_prefix, count],
            )
            for keys in reads
        ]
        settles: dict[str, list[tuple[Delivery, dict[str, Any]]]] = {}
        for item in acks:
            settles.setdefault(item[0].ref[0].name, []).append(item)
        for group in settles.values():
            keys = group[0][0].ref[0]
            args, _ = self._settle_args(keys, [op for _, op in group])
            commands.append(self._evalsha("settle", self._settle_keys(keys), args))
        got = False
        error: redis.ResponseError | None = None
        settled = 0
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for keys in reads:
                try:
                    flat = conn.read_response()
                except redis.ResponseError as exc:
                    error = exc  # raised once every reply is read: the connection stays in step
                    continue
                if flat:
                    got = True
                    self._take_started(keys, flat)
            for group in settles.values():
                try:
                    reply = conn.read_response()
                except redis.ResponseError as exc:
                    reply = exc
                settled += 1
                self._settled(group, reply)
        except BaseException:
            conn.disconnect()
            for group in list(settles.values())[settled:]:  # recorded on the next cycle
                self._acks.extendleft(reversed(group))
            raise
        finally:
            pool.release(conn)
        if error is not None:
            raise error
        return got or bool(acks)

    def _take_started(self, keys: QueueKeys, flat: list[Any]) -> None:
        try:
            self._accept_started(keys, flat)
        except Exception:  # the reader must outlive any one reply
            logger.exception("could not take read entries; handing them back")
            self._hand_back(
                keys, [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 4)]
            )

    def _on_read_error(self, exc: redis.ResponseError, backoff: _Backoff) -> None:
        if isinstance(exc, NoScriptError):  # Redis restarted without our scripts
            logger.warning("scripts missing in Redis (restarted?); loading them again")
            with contextlib.suppress(redis.RedisError):
                self._load_scripts()
        elif "NOGROUP" in str(exc):
            logger.error(
                "consumer group or stream vanished (Redis restarted without "
                "persistence?); recreating group=%s",
                self.config.group,
            )
            try:
                for keys in self.queues.values():
                    self._ensure_group(keys)
            except redis.RedisError as again:
                logger.error("could not recreate the consumer group: %s", again)
        else:
            logger.error("read failed: %s", exc)
        backoff.sleep(lambda: self._stopping)

    def _queue_of(self, stream: str) -> QueueKeys:
        for keys in self.queues.values():
            if keys.stream == stream:
                return keys
        raise CSJDError(f"entries from an unknown stream {stream!r}")

    def _accept(self, keys: QueueKeys, entries: list[Any]) -> None:
        """Turn read or claimed entries into deliveries (poison is dead-lettered at once)."""
        valid: list[tuple[str, Job, str]] = []
        for raw_id, fields in entries:
            entry_id = _text(raw_id)
            if not fields:  # a PEL entry whose stream entry was deleted (None or {})
                self.deleted_entries += 1
                logger.warning(
                    "pending entry without data acked queue=%s entry=%s", keys.name, entry_id
                )
                with contextlib.suppress(redis.RedisError):  # else the reclaimer drops it
                    self.client.xack(keys.stream, self.config.group, entry_id)
                continue
            job, data, problem = self._decode(fields.get(b"id"), fields.get(b"d"))
            if problem is not None or job is None:
                self._poison(keys, entry_id, _text(fields.get(b"id")), data, problem or "?")
                continue
            valid.append((entry_id, job, data))
        if not valid:
            return
        args: list[Any] = [self.config.group, self.consumer, keys.job_prefix]
        for entry_id, job, _ in valid:
            args += [entry_id, job.id]
        try:
            codes = self._script("start", [keys.stream], args)
        except redis.RedisError as exc:
            logger.warning("could not start entries (they will be reclaimed) error=%s", exc)
            return
        default_attempts = self._default_attempts()
        fresh: list[Delivery] = []
        for (entry_id, job, data), (code, attempts, deliveries) in zip(valid, codes, strict=True):
            if code == -1:
                self._poison(keys, entry_id, job.id, data, _NO_RECORD)
            elif code == 1:
                delivery = Delivery(
                    job,
                    int(attempts),
                    job.max_attempts or default_attempts,
                    int(deliveries),
                    (keys, entry_id),
                )
                fresh.append(delivery)
        self._hand_over(fresh)

    def _default_attempts(self) -> int:
        return self._settings.default_max_attempts if self._settings else 3

    def _accept_started(self, keys: QueueKeys, flat: list[Any]) -> None:
        """Deliveries from read_start.lua's reply (entry, job id, data, attempts per entry).

        Entry by entry: one that cannot be taken is dead-lettered alone, its batch-mates run.
        """
        default_attempts = self._default_attempts()
        fresh: list[Delivery] = []
        for i in range(0, len(flat), 4):
            entry_id = _text(flat[i])
            raw_id, raw, attempts = flat[i + 1], flat[i + 2], int(flat[i + 3])
            if attempts == -2:
                self._poison(
                    keys,
                    entry_id,
                    _text(raw_id),
                    _text(raw),
                    "malformed entry: missing field 'id' or 'd'",
                )
                continue
            job, data, problem = self._decode(raw_id, raw)
            if problem is not None or job is None:
                self._poison(keys, entry_id, _text(raw_id), data, problem or "?")
            elif attempts == -1:
                self._poison(keys, entry_id, job.id, data, _NO_RECORD)
            else:  # read with '>': delivered once, so the fencing token is 1
                fresh.append(
                    Delivery(
                        job, attempts, job.max_attempts or default_attempts, 1, (keys, entry_id)
                    )
                )
        self._hand_over(fresh)

    def _hand_over(self, fresh: list[Delivery]) -> None:
        """Buffer started deliveries and wake as many workers as there are deliveries."""
        if fresh:
            with self._lock:
                for delivery in fresh:
                    self._owned[delivery.ref[1]] = delivery
            for delivery in fresh:
                self._ready.put(delivery)
        if self._stopping:
            self.wake()

    def _decode(
        self, raw_id: bytes | None, raw: bytes | None
    ) -> tuple[Job | None, str, str | None]:
        """(job, data, None), or (None, data, why it is poison). Never raises."""
        if raw_id is None or raw is None:
            missing = b"id" if raw_id is None else b"d"
            return None, "", f"malformed entry: missing field {missing!r}"
        try:
            job_id = raw_id.decode()
            data = raw.decode()
        except UnicodeDecodeError:
            return None, "", "malformed entry: not UTF-8"
        if len(raw) + len(job_id) > self.config.max_payload_bytes:
            return (
                None,
                "",
                (
                    f"oversized entry: {len(raw)} bytes > max_payload_bytes="
                    f"{self.config.max_payload_bytes}"
                ),
            )
        try:
            d = json.loads(data)
            job = Job(
                job_id,
                d["type"],
                d.get("payload"),
                max_attempts=d.get("max_attempts"),
                timeout=d.get("timeout"),
                queue=d.get("queue"),
            )
            validate_job(job)  # the admission limits: what a producer could not submit
        except InvalidJob as exc:
            return None, data, f"malformed entry: {clip_text(str(exc), 500)}"
        except Exception as exc:  # RecursionError, AttributeError...: never the batch's fault
            return None, data, f"malformed entry: {clip_text(repr(exc), 500)}"
        return job, data, None

    def _poison(self, keys: QueueKeys, entry_id: str, job_id: str, data: str, reason: str) -> None:
        logger.error(
            "poison entry dead-lettered queue=%s entry=%s id=%r reason=%s",
            keys.name,
            entry_id,
            job_id,
            reason,
        )
        op = {
            "k": "dead",
            "e": entry_id,
            "id": job_id,
            "err": reason,
            "reason": "poison",
            "d": data,
        }
        try:
            self._settler.settle(keys, op)
        except redis.RedisError as exc:
            logger.error("could not dead-letter poison entry=%s error=%s", entry_id, exc)

    def started(self, delivery: Delivery, worker_id: str) -> None:
        """Nothing to do: the start script ran when the entry was read."""

    # -- outcomes --------------------------------------------------------------------------
    def _settle_sync(self, delivery: Delivery, op: dict[str, Any]) -> bool:
        """Record one outcome now (group-committed with other workers'); retried until the lease
        runs out while Redis is unreachable."""
        self._settling.add(delivery.ref[1])
        deadline = time.monotonic() + self._lease
        backoff = _Backoff()
        while True:
            try:
                ok = self._settler.settle(delivery.ref[0], op)
                break
            except _REDIS_DOWN as exc:
                if time.monotonic() >= deadline:
                    logger.error(
                        "could not record an outcome before the lease ran out; the job "
                        "will be reclaimed and may run again id=%r error=%s",
                        delivery.job.id,
                        exc,
                    )
                    ok = False
                    break
                logger.warning(
                    "redis unreachable while recording an outcome; retrying id=%r error=%s",
                    delivery.job.id,
                    exc,
                )
                backoff.sleep(lambda: False)
            except redis.RedisError as exc:
                # NOGROUP after a restart without persistence, or any refusal: the entry is not
                # ours to ack any more. Raising would kill the engine's worker thread.
                logger.error(
                    "could not record an outcome; the attempt lost its claim id=%r error=%s",
                    delivery.job.id,
                    exc,
                )
                ok = False
                break
        self._forget(delivery)
        return ok

    def _forget(self, delivery: Delivery) -> None:
        entry = delivery.ref[1]
        with self._lock:
            # Only this attempt: a newer attempt of the same entry (claimed back) keeps renewing.
            current = self._owned.get(entry)
            if current is delivery:
                del self._owned[entry]
            if current is delivery or current is None:
                self._settling.discard(entry)
        self._ring()

    def succeed_nowait(self, delivery: Delivery, result: Any) -> bool | None:
        """Queue the success for the reader's next round trip while it is cycling (``None``:
        a refusal is reported to ``on_lost_claim``); else record it now, like `succeed`."""
        op = _op(delivery, "ok", r=_result_json(result))
        with self._lock:
            queued = self._pipelining
            if queued:
                self._settling.add(delivery.ref[1])
                self._acks.append((delivery, op))
        if queued:
            self._ring()
            return None
        return self._settle_sync(delivery, op)

    def _settled(self, group: list[tuple[Delivery, dict[str, Any]]], reply: Any) -> None:
        """Take the reply of a pipelined settle.lua call for the queued successes ``group``."""
        if isinstance(reply, NoScriptError):
            self._load_scripts()  # Redis restarted without them: record again next cycle
            self._acks.extendleft(reversed(group))
            return
        if isinstance(reply, Exception):
            logger.error("could not record outcomes; the attempts lost their claim error=%s", reply)
            reply = [0] * len(group)
        for (delivery, _), flag in zip(group, reply, strict=True):
            self._forget(delivery)
            if not flag:
                self._lost(delivery)

    def _settle_now(self, acks: list[tuple[Delivery, dict[str, Any]]]) -> None:
        """Record queued successes when the reader stops."""
        for delivery, op in acks:
            if not self._settle_sync(delivery, op):
                self._lost(delivery)

    def _lost(self, delivery: Delivery) -> None:
        settings = self._settings
        if settings is not None and settings.on_lost_claim is not None:
            settings.on_lost_claim(delivery)

    def release(self, delivery: Delivery) -> None:
        """Stop renewing the entry's lease: any consumer's reclaimer takes it after the lease
        (a delivery counted against ``max_deliveries``)."""
        self._forget(delivery)
        logger.error(
            "attempt released without an outcome; reclaimed after the lease id=%r entry=%s",
            delivery.job.id,
            delivery.ref[1],
        )

    def succeed(self, delivery: Delivery, result: Any) -> bool:
        """Ack with the JSON result (fenced, group-committed)."""
        return self._settle_sync(delivery, _op(delivery, "ok", r=_result_json(result)))

    def retry(self, delivery: Delivery, error: AttemptError, delay: float) -> bool:
        """Ack and park the job in the delayed set for ``delay`` seconds (one atomic step)."""
        return self._settle_sync(
            delivery,
            _op(delivery, "retry", delay=delay * 1000, **_error_fields(error)),
        )

    def fail(self, delivery: Delivery, error: AttemptError) -> bool:
        """Ack and dead-letter the job (one atomic step)."""
        return self._settle_sync(
            delivery,
            _op(delivery, "dead", reason=error.kind, **_error_fields(error)),
        )

    def _settle_keys(self, keys: QueueKeys) -> list[str]:
        return [keys.stream, keys.delayed, keys.pending, keys.dead, keys.stats]

    def _settle_args(
        self, keys: QueueKeys, ops: list[dict[str, Any]]
    ) -> tuple[list[Any], list[int]]:
        """settle.lua's arguments for ``ops`` of one queue, and the op index of each reply flag."""
        other = [i for i, op in enumerate(ops) if op["k"] != "ok"]
        ok = [i for i, op in enumerate(ops) if op["k"] == "ok"]
        args: list[Any] = [
            self.config.group,
            self.consumer,
            keys.job_prefix,
            self._ttl_ms,
            self.config.max_dead_letters,
            json.dumps([ops[i] for i in other], separators=(",", ":")),
        ]
        if ok:
            ids = sorted((_entry_key(ops[i]["e"]), ops[i]["e"]) for i in ok)
            args += [ids[0][1], ids[-1][1]]
            for i in ok:
                op = ops[i]
                args += [op["e"], op["id"], op["n"], op["r"]]
        return args, other + ok

    def _flush_settles(self, batch: list[list[Any]]) -> list[Any]:
        by_queue: dict[str, list[int]] = {}
        for index, (keys, _, _) in enumerate(batch):
            by_queue.setdefault(keys.name, []).append(index)
        results: list[Any] = [0] * len(batch)
        for indexes in by_queue.values():
            keys = batch[indexes[0]][0]
            args, order = self._settle_args(keys, [batch[i][1] for i in indexes])
            reply = self._script("settle", self._settle_keys(keys), args)
            for i, flag in zip(order, reply, strict=True):
                results[indexes[i]] = int(flag)
        return results

    def renew(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Fenced lease renewal (renew.lua); False where the entry was lost."""
        out: list[bool] = []
        by_queue: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_queue.setdefault(d.ref[0].name, []).append(d)
        flags: dict[str, bool] = {}
        for group in by_queue.values():
            keys = group[0].ref[0]
            args: list[Any] = [self.config.group, self.consumer]
            for d in group:
                args += [d.ref[1], d.token]
            for d, flag in zip(group, self._script("renew", [keys.stream], args), strict=True):
                flags[d.ref[1]] = bool(flag)
        for d in deliveries:
            out.append(flags[d.ref[1]])
        return out

    def _release(self, deliveries: list[Delivery]) -> None:
        by_queue: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_queue.setdefault(d.ref[0].name, []).append(d)
        for group in by_queue.values():
            self._hand_back(group[0].ref[0], [(d.ref[1], d.job.id) for d in group])
            with self._lock:
                for d in group:
                    self._owned.pop(d.ref[1], None)

    def _hand_back(self, keys: QueueKeys, entries: list[tuple[str, str]]) -> None:
        """Release (entry id, job id) pairs read but never run (release.lua)."""
        args: list[Any] = [self.config.group, self.consumer, keys.job_prefix, _RELEASE_IDLE_MS]
        for entry_id, job_id in entries:
            args += [entry_id, job_id]
        try:
            self._script("release", [keys.stream], args)
        except redis.RedisError as exc:
            logger.warning(
                "could not hand back read entries (reclaimed after the lease) error=%s", exc
            )

    # -- maintenance: promotion, heartbeats, lease renewal, reclaiming, consumer GC ---------
    def _maintenance_loop(self) -> None:
        config = self.config
        next_promote = dict.fromkeys(self.queues, 0.0)
        next_beat = next_claim = next_gc = 0.0
        backoff = _Backoff()
        while self._consuming:
            now = time.monotonic()
            try:
                for name, keys in self.queues.items():
                    if now >= next_promote[name]:
                        moved, wait_ms = self._script(
                            "promote", [keys.stream, keys.delayed], [keys.job_prefix, 500]
                        )
                        wait = 0.0 if moved >= 500 else 0.25 if wait_ms < 0 else wait_ms / 1000
                        next_promote[name] = now + min(wait, 0.25)
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self._heartbeat_interval
                if now >= next_claim and not self._stopping and self._own_pending_read.is_set():
                    self._reclaim()
                    next_claim = now + self._claim_interval
                if now >= next_gc:
                    self._collect_consumers()
                    next_gc = now + 10 * self._claim_interval
                backoff.reset()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    logger.error("consumer group vanished; recreating group=%s", config.group)
                    for keys in self.queues.values():
                        with contextlib.suppress(redis.RedisError):
                            self._ensure_group(keys)
                else:
                    logger.exception("maintenance failed")
                backoff.sleep(lambda: not self._consuming)
                continue
            except _REDIS_DOWN as exc:
                logger.warning("redis unreachable in maintenance error=%s", exc)
                backoff.sleep(lambda: not self._consuming)
                continue
            except Exception:  # without this thread no lease is renewed: it must live on
                logger.exception("maintenance failed")
                backoff.sleep(lambda: not self._consuming)
                continue
            wake = min([*next_promote.values(), next_beat, next_claim])
            if self._consuming:
                self._maint_wake.wait(max(0.005, min(0.25, wake - time.monotonic())))

    def _heartbeat(self) -> None:
        ttl = int(self._heartbeat_interval * 3000)
        pipe = self.client.pipeline(transaction=False)
        for keys in self.queues.values():
            pipe.set(keys.heartbeat_prefix + self.consumer, str(time.time()), px=ttl)
        pipe.execute()
        with self._lock:
            owned = list(self._owned.values())
        if owned:
            for delivery, ok in zip(owned, self.renew(owned), strict=True):
                if not ok and self._holds(delivery):
                    logger.warning(
                        "lease lost; the outcome of this attempt will be refused id=%r entry=%s",
                        delivery.job.id,
                        delivery.ref[1],
                    )

    def _holds(self, delivery: Delivery) -> bool:
        """True while ``delivery`` is held and no outcome for it is on its way: a renewal
        refused then means the lease was lost, not that the entry was settled meanwhile."""
        entry = delivery.ref[1]
        with self._lock:
            return self._owned.get(entry) is delivery and entry not in self._settling

    def _reclaim(self) -> None:
        lease_ms = int(self._lease * 1000)
        for keys in self.queues.values():
            cursor = "0-0"
            while True:
                count = self._capacity()
                if count <= 0:
                    break
                next_cursor, claimed, deleted, dead = self._script(
                    "reclaim",
                    [keys.stream, keys.pending, keys.dead, keys.stats],
                    [
                        self.config.group,
                        self.consumer,
                        lease_ms,
                        self.config.max_deliveries,
                        count,
                        cursor,
                        keys.job_prefix,
                        self._ttl_ms,
                        self.config.max_dead_letters,
                    ],
                )
                if deleted:
                    self.deleted_entries += len(deleted)
                    logger.warning(
                        "reclaimer dropped pending entries whose data was deleted "
                        "queue=%s count=%d",
                        keys.name,
                        len(deleted),
                    )
                for job_id in dead:
                    logger.error(
                        "job dead-lettered: delivered max_deliveries=%d times without "
                        "an outcome queue=%s id=%r",
                        self.config.max_deliveries,
                        keys.name,
                        _text(job_id),
                    )
                if claimed:
                    logger.warning(
                        "reclaimed entries from stalled consumers queue=%s count=%d",
                        keys.name,
                        len(claimed),
                    )
                    self._accept(keys, [(e[0], _fields(e[1])) for e in claimed])
                cursor = _text(next_cursor)
                if cursor == "0-0":
                    break

    def _collect_consumers(self) -> None:
        for keys in self.queues.values():
            for info in self.client.xinfo_consumers(keys.stream, self.config.group):
                name = _text(info.get("name"))
                if name == self.consumer or self.client.exists(keys.heartbeat_prefix + name):
                    continue
                if int(info.get("pending", 0)) == 0 and self._script(
                    "delete_consumer", [keys.stream], [self.config.group, name]
                ):
                    logger.info("deleted expired consumer queue=%s consumer=%s", keys.name, name)

    # -- queries ---------------------------------------------------------------------------
    def status(self, job_id: str, queue: str | None = None) -> JobStatus | None:
        """The job's record (looked up in ``queue``, else in every configured queue)."""
        candidates = [self.keys_for(queue)] if queue else list(self.queues.values())
        for keys in candidates:
            try:
                raw = self.client.hgetall(keys.job(job_id))
            except _REDIS_DOWN as exc:
                raise BackendUnavailable(f"Redis unavailable: {exc}") from exc
            if raw:
                return _status(job_id, keys.name, {_text(k): _text(v) for k, v in raw.items()})
        return None

    def pending(self) -> int:
        """Unfinished jobs across this process's queues (all producers and consumers)."""
        pipe = self.client.pipeline(transaction=False)
        for keys in self.queues.values():
            pipe.get(keys.pending)
        return sum(int(v or 0) for v in pipe.execute())

    def ready_count(self) -> int:
        """Entries not yet delivered to a consumer: each stream's length minus its group's
        pending entries (an entry leaves the stream when it is acknowledged)."""
        pipe = self.client.pipeline(transaction=False)
        for keys in self.queues.values():
            pipe.xlen(keys.stream)
            pipe.xpending(keys.stream, self.config.group)
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

    def stats(self) -> dict[str, QueueStats]:
        """Cluster-wide figures per queue (of this process's queues)."""
        out: dict[str, QueueStats] = {}
        now = time.time()
        client = self.client
        for keys in self.queues.values():
            try:
                infos = client.xinfo_consumers(keys.stream, self.config.group)
            except redis.ResponseError:
                infos = []
            consumers = []
            for info in infos:
                name = _text(info.get("name"))
                beat = client.get(keys.heartbeat_prefix + name)
                consumers.append(
                    ConsumerStats(
                        name=name,
                        pending=int(info.get("pending", 0)),
                        idle_ms=int(info.get("idle", 0)),
                        heartbeat_age=None if beat is None else round(now - float(beat), 3),
                    )
                )
            counters = {_text(k): int(v) for k, v in client.hgetall(keys.stats).items()}
            try:
                in_flight = int(client.xpending(keys.stream, self.config.group)["pending"])
            except redis.ResponseError:
                in_flight = 0
            out[keys.name] = QueueStats(
                name=keys.name,
                stream_length=int(client.xlen(keys.stream)),
                in_flight=in_flight,
                scheduled=int(client.zcard(keys.delayed)),
                unfinished=int(client.get(keys.pending) or 0),
                dead=int(client.xlen(keys.dead)),
                max_dead_letters=self.config.max_dead_letters,
                consumers=tuple(consumers),
                counters=QueueCounters(**{k: v for k, v in counters.items() if k in _COUNTERS}),
            )
        return out

    # -- dead letters ----------------------------------------------------------------------
    def dead_letters(self, queue: str | None = None, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of ``queue``."""
        keys = self.keys_for(queue)
        return [
            _dead_letter(keys.name, _text(raw_id), raw)
            for raw_id, raw in self.client.xrange(keys.dead, count=count) or []
        ]

    def dead_letter(self, entry_id: str, queue: str | None = None) -> DeadLetter | None:
        """One dead letter of ``queue`` by its entry id, or ``None``."""
        keys = self.keys_for(queue)
        _check_entry_id(entry_id)
        rows = self.client.xrange(keys.dead, entry_id, entry_id)
        return _dead_letter(keys.name, entry_id, rows[0][1]) if rows else None

    def requeue_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Put one dead letter back on its queue as a fresh job.

        Raises:
            DuplicateJob: the job's id is taken by an unfinished job.
            InvalidJob: the dead letter has no job id or data (a poison entry).
        """
        keys = self.keys_for(queue)
        _check_entry_id(entry_id)
        rows = self.client.xrange(keys.dead, entry_id, entry_id)
        if not rows:
            return False
        f = {_text(k): _text(v) for k, v in (rows[0][1] or {}).items()}
        if not f.get("id") or not f.get("d"):
            raise InvalidJob(f"dead letter {entry_id} has no job to requeue ({f.get('error')})")
        code = self._script(
            "requeue_dead",
            [keys.stream, keys.dead, keys.pending, keys.job(f["id"])],
            [entry_id, f["id"], f["d"]],
        )
        if code == -1:
            raise DuplicateJob(f["id"])
        return bool(code)

    def delete_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Delete one dead letter; False if there was no such entry."""
        keys = self.keys_for(queue)
        _check_entry_id(entry_id)
        return bool(self.client.xdel(keys.dead, entry_id))

    def dead_count(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds."""
        return int(self.client.xlen(self.keys_for(queue).dead))

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        keys = self.keys_for(queue)
        count = int(self.client.xlen(keys.dead))
        self.client.delete(keys.dead)
        return count


class _Backoff:
    """Exponential backoff with full jitter for reconnect loops (never a hot loop)."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def peek(self) -> float:
        return float(min(self.cap, self.base * 2.0**self.failures))

    def sleep(self, stop: Any) -> None:
        delay = random.uniform(self.peek() / 2, self.peek())
        self.failures = min(self.failures + 1, 16)
        deadline = time.monotonic() + delay
        while not stop() and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def reset(self) -> None:
        self.failures = 0


_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _check_entry_id(entry_id: str) -> None:
    """Raise `InvalidJob` unless ``entry_id`` is a stream entry id (``1712345678901-0``)."""
    if not isinstance(entry_id, str) or _ENTRY_ID.fullmatch(entry_id) is None:
        raise InvalidJob(f"not a dead-letter entry id (like 1712345678901-0): {entry_id!r:.80}")


def _dead_letter(queue: str, entry_id: str, raw: Any) -> DeadLetter:
    """A dead letter from its stream entry; fields that cannot be read make it ``damaged``."""
    f = {_text(k): _text(v) for k, v in (raw or {}).items()}
    problems = []
    numbers: dict[str, float | None] = {}
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
    attempts = numbers["attempts"]
    return DeadLetter(
        entry_id=entry_id,
        queue=queue,
        job_id=f.get("id", ""),
        type=job_type if isinstance(job_type, str) else None,
        error=f.get("error", ""),
        reason=f.get("reason", ""),
        attempts=None if attempts is None else int(attempts),
        failed_at=None if failed_ms is None else failed_ms / 1000,
        traceback=f.get("traceback", ""),
        data=f.get("d", ""),
        damaged="; ".join(problems) or None,
    )


def _op(delivery: Delivery, kind: str, **extra: Any) -> dict[str, Any]:
    """An outcome for settle.lua, fenced by the delivery's entry and token."""
    return {"k": kind, "e": delivery.ref[1], "id": delivery.job.id, "n": delivery.token, **extra}


def _error_fields(error: AttemptError) -> dict[str, str]:
    """An attempt's error as settle.lua's op fields: clipped and encodable whoever built it
    (Redis's JSON decoder refuses a lone surrogate, and would refuse the whole batch)."""
    return {"err": clip_text(error.message), "tb": clip_traceback(error.traceback or "")}


def _result_json(result: Any) -> str:
    return "null" if result is None else json.dumps(result, separators=(",", ":"))


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _fields(raw: Any) -> Any:
    if raw is None or isinstance(raw, dict):
        return raw
    return {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}


def _stream_replies(reply: Any) -> list[tuple[str, list[Any]]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [(_text(k), v[0] if v and isinstance(v[0], list) else v) for k, v in reply.items()]
    return [(_text(stream), entries) for stream, entries in reply]


def _status(job_id: str, queue: str, f: dict[str, str]) -> JobStatus:
    def ms(name: str) -> float | None:
        value = f.get(name)
        return int(value) / 1000 if value else None

    try:
        data = json.loads(f.get("data") or "{}")
    except ValueError:
        data = {}
    state = JobState(f.get("state", "queued"))
    result = None
    if state is JobState.SUCCEEDED and f.get("result"):
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
    )
