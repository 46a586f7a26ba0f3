"""The transactional outbox: a job written into the caller's database transaction, relayed to
the queue after the commit — so a committed job is never lost, whatever happens next.

The seam is `Outbox` (store a job in the caller's transaction, claim a batch, mark the rows it
accounted for); `csjd_django.outbox` (the Django ORM) and `csjd_core.sqlalchemy_outbox`
(SQLAlchemy, the Flask extension's form) implement it. `Relay` moves rows to a dispatcher:
every worker process runs one (``--no-relay`` opts out), ``csjd relay`` runs one alone.

A row holds the whole job in its wire form (`Job.to_dict` as JSON): later fields need no
migration. The relay admits a batch with `BaseDispatcher.relay` (new ids admitted, taken ids
skipped, up to the pending cap, one verdict per job, atomic per queue) and, in the same
database transaction that claimed the rows, deletes the rows admitted or already there,
postpones those over the cap (with backoff) and sets aside the malformed ones with the reason.
A crash between the admission and the commit leaves the rows: the next relay finds their ids
taken and deletes them — unless more than ``dedupe_window`` passed and the finished job's
record expired, when the job runs again (at least once, as everywhere).
"""

from __future__ import annotations

import abc
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from csjd_core.backends.base import RelayResult, RelayVerdict
from csjd_core.errors import CSJDError, DispatcherClosed, InvalidJob, SettingsError
from csjd_core.job import Job, JobState, JobStatus, utc_from_timestamp, validate_job
from csjd_core.limits import brief, seconds

if TYPE_CHECKING:
    from csjd_core.engine.dispatcher import BaseDispatcher

__all__ = [
    "NOTIFY_CHANNEL",
    "Claim",
    "Found",
    "Listener",
    "Outbox",
    "OutboxRow",
    "OutboxStats",
    "PsycopgListener",
    "Relay",
    "RelayCounters",
    "decode_row",
    "encode_job",
    "found_row",
    "relay_settings",
]

logger = logging.getLogger("csjd_core.outbox")

#: The PostgreSQL channel a commit that wrote outbox rows notifies (and relays listen on).
NOTIFY_CHANNEL = "csjd_outbox"
#: Rows one relay claims per transaction.
BATCH = 500
#: Seconds a relay without a notification waits before it looks again.
POLL_INTERVAL = 1.0
#: A row over its queue's pending cap waits ``FULL_BACKOFF * 2**n`` seconds (with jitter), at
#: most `MAX_BACKOFF`, before a relay tries it again, ``n`` counting the relay's batches in a
#: row in which that queue admitted nothing (0 while it drains).
FULL_BACKOFF = 0.25
MAX_BACKOFF = 5.0  # a queue drains fast once it can: longer waits only left workers idle
#: Seconds between a relay's heartbeats (what ``relays`` in `OutboxStats` reports).
BEAT_INTERVAL = 10.0
#: A relay whose heartbeat is older than this many seconds is not counted as running.
LIVE = 3 * BEAT_INTERVAL
#: Seconds a relay waits after an error (Redis or the database unreachable) before retrying.
RETRY_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One claimed row: its primary key, the job's wire form, and how often it was postponed."""

    key: Any
    data: str
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What an outbox holds, for ``csjd stats``, the dashboard and the checks.

    Args:
        depth: rows waiting to be relayed.
        oldest: when the oldest of them was written (``None``: none waits).
        set_aside: rows a relay set aside (malformed, or refused by admission), kept with
            the reason until someone deletes them.
        relays: each relay's name and its last heartbeat.
    """

    depth: int
    oldest: datetime | None
    set_aside: int
    relays: dict[str, datetime] = field(default_factory=dict)

    def oldest_age(self, now: datetime) -> float | None:
        """Seconds the oldest waiting row has waited at ``now``."""
        return None if self.oldest is None else max(0.0, (now - self.oldest).total_seconds())

    def last_relay(self) -> datetime | None:
        """The latest heartbeat of any relay (``None``: no relay ever ran)."""
        return max(self.relays.values(), default=None)

    def live_relays(self, now: datetime) -> int:
        """Relays whose heartbeat is fresh (within `LIVE`): those running now (a stopped
        relay's heartbeat stays a day, for `last_relay`)."""
        return sum((now - seen).total_seconds() <= LIVE for seen in self.relays.values())

    def line(self, name: str, now: datetime) -> str:
        """``csjd stats``'s line for the outbox called ``name``."""
        age, last = self.oldest_age(now), self.last_relay()
        relayed = "never" if last is None else f"{(now - last).total_seconds():.0f}s ago"
        return (
            f"outbox {name}: waiting={self.depth} "
            f"oldest={'-' if age is None else f'{age:.1f}s'} set_aside={self.set_aside} "
            f"relays_running={self.live_relays(now)} last_relay={relayed}"
        )

    def to_json(self, name: str, now: datetime) -> dict[str, Any]:
        """``csjd stats --json``'s entry for the outbox called ``name`` (ages in seconds;
        ``relays``: every heartbeat of the last day, by relay)."""
        return {
            "name": name,
            "waiting": self.depth,
            "oldest_age": self.oldest_age(now),
            "set_aside": self.set_aside,
            "relays_running": self.live_relays(now),
            "relays": {r: (now - seen).total_seconds() for r, seen in self.relays.items()},
        }


@dataclass(slots=True)
class Claim:
    """A batch of rows claimed in one database transaction (`Outbox.claim`): the relay says
    what became of each row, and the transaction applies it at the end of the ``with`` block
    (or rolls everything back when the block raises: the rows are claimed again later)."""

    rows: list[OutboxRow]
    done: list[Any] = field(default_factory=list)  # keys of the rows to delete
    postponed: list[tuple[Any, float]] = field(default_factory=list)  # (key, seconds)
    set_aside: list[tuple[Any, str]] = field(default_factory=list)  # (key, reason)


class Listener(abc.ABC):
    """A connection that learns of commits which wrote rows (PostgreSQL ``LISTEN``)."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a notification; True when one came.

        Raises:
            Exception: the connection broke (the relay then polls, and listens again later).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection."""


class PsycopgListener(Listener):
    """A psycopg 3 connection in autocommit mode, listening on `NOTIFY_CHANNEL` (the
    PostgreSQL outboxes' `Outbox.listener`). It takes the connection over."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        connection.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def wait(self, timeout: float) -> bool:
        connection = self._connection
        heard = any(True for _ in connection.notifies(timeout=timeout, stop_after=1))
        if heard:  # the others that queued meanwhile are the same news
            for _ in connection.notifies(timeout=0):
                pass
        return heard

    def close(self) -> None:
        self._connection.close()


class Outbox(abc.ABC):
    """Where jobs wait, in the application's database, until a relay admits them.

    Implementations also offer the call that stores a job in the caller's transaction; its
    form is the framework's (Django: ``using=``; SQLAlchemy: a session).
    """

    #: Names this outbox in logs and stats (e.g. ``"django:default"``).
    name: str = "outbox"
    #: Whether several relays share the rows without blocking each other (row locks with
    #: ``SKIP LOCKED``); without it, relays after the first wait for its transaction.
    concurrent: bool = False
    #: Seconds between a relay's looks when no notification comes.
    poll_interval: float = POLL_INTERVAL

    @abc.abstractmethod
    def claim(self, limit: int) -> AbstractContextManager[Claim]:
        """Claim up to ``limit`` rows that are due, oldest first, in a transaction that
        applies the `Claim`'s decisions when the block ends."""

    def listener(self) -> Listener | None:
        """A `Listener`, or ``None`` where the database cannot notify (then relays poll).

        Raises:
            Exception: the connection failed (the relay polls and tries again later).
        """
        return None

    @abc.abstractmethod
    def find(self, job_id: str) -> Found | None:
        """The row of ``job_id``, waiting or set aside (``None``: no such row, or one too
        malformed to name a job)."""

    @abc.abstractmethod
    def stats(self) -> OutboxStats:
        """Depth, the oldest row, rows set aside, relays' heartbeats."""

    @abc.abstractmethod
    def beat(self, relay: str) -> None:
        """Record that the relay named ``relay`` is alive now."""

    def close(self) -> None:  # noqa: B027 - nothing to close by default
        """Release what this outbox holds in this process (connections, pools)."""


# -- rows ------------------------------------------------------------------------------------
def encode_job(job: Job) -> str:
    """A row's data: the job's wire form as JSON (validated first: a job that admission would
    refuse is refused here, in the caller's transaction, where the caller sees it).

    Raises:
        InvalidJob: a malformed job.
    """
    validate_job(job)
    return json.dumps(job.to_dict(), separators=(",", ":"), ensure_ascii=False)


def decode_row(data: str | bytes) -> Job:
    """The job of a row's data.

    Raises:
        InvalidJob: the data is not a job's wire form.
    """
    try:
        fields = json.loads(data)
    except (ValueError, TypeError) as exc:
        raise InvalidJob(f"malformed outbox row: not JSON ({exc})") from None
    return Job.from_dict(fields)


@dataclass(frozen=True, slots=True)
class Found:
    """A row of an outbox (`Outbox.find`): its job, when it was written, and why a relay set
    it aside (``None``: it waits to be relayed)."""

    job: Job
    written_at: datetime | None
    problem: str | None = None

    def status(self, default_max_attempts: int) -> JobStatus:
        """The job's status: ``queued`` while it waits; ``failed`` (with the reason as its
        error) once set aside: it will never run."""
        job, run_at = self.job, self.job.run_at
        return JobStatus(
            id=job.id,
            type=job.type,
            state=JobState.QUEUED if self.problem is None else JobState.FAILED,
            attempts=0,
            max_attempts=job.max_attempts or default_max_attempts,
            queue=job.queue,
            enqueued_at=self.written_at,
            run_at=run_at if run_at is None else utc_from_timestamp(run_at.timestamp()),
            last_error=None
            if self.problem is None
            else f"set aside by the outbox relay: {self.problem}",
            payload=job.payload,
            priority=job.priority,
        )


def found_row(data: str | bytes, written_at: datetime | None, problem: str | None) -> Found | None:
    """`Outbox.find`'s answer for a row (``None`` when its data names no job)."""
    try:
        return Found(decode_row(data), written_at, problem)
    except InvalidJob:
        return None


def relay_settings(settings: Mapping[str, Any]) -> tuple[bool, float]:
    """``CSJD_OUTBOX_NOTIFY`` and ``CSJD_OUTBOX_POLL_INTERVAL`` of a framework's settings
    (Django's, or a Flask app's config), validated: (notify, poll interval).

    Raises:
        SettingsError: a bad value, naming the setting.
    """
    notify = settings.get("CSJD_OUTBOX_NOTIFY", True)
    if not isinstance(notify, bool):
        raise SettingsError("CSJD_OUTBOX_NOTIFY", f"must be True or False, got {brief(notify)}")
    try:
        interval = seconds(settings.get("CSJD_OUTBOX_POLL_INTERVAL", POLL_INTERVAL), "it")
    except ValueError as exc:
        raise SettingsError("CSJD_OUTBOX_POLL_INTERVAL", str(exc).removeprefix("it ")) from None
    if not 0.01 <= interval <= 3600:
        raise SettingsError(
            "CSJD_OUTBOX_POLL_INTERVAL", f"must be from 0.01 to 3600 seconds, got {interval!r}"
        )
    return notify, float(interval)


def backoff(stuck: int) -> float:
    """Seconds a row over the pending cap waits before its next try, its queue having admitted
    nothing in ``stuck`` batches in a row."""
    delay = min(MAX_BACKOFF, FULL_BACKOFF * (1 << min(stuck, 16)))
    return delay * random.uniform(0.75, 1.0)


# -- the relay -------------------------------------------------------------------------------
@dataclass(slots=True)
class RelayCounters:
    """What a relay did since it started."""

    relayed: int = 0  # rows admitted to the queue
    skipped: int = 0  # rows whose id the queue already had (relayed before a crash): deleted
    postponed: int = 0  # rows over the pending cap: tried again later
    set_aside: int = 0  # malformed or refused rows, kept with the reason
    batches: int = 0
    errors: int = 0


class Relay:
    """Moves an outbox's rows to a dispatcher (`BaseDispatcher.relay`), in a thread (`start`)
    or in the caller's (`run`).

    Args:
        outbox: where the rows are.
        dispatcher: admits them (a Redis dispatcher, or in in-process mode the local one with
            its file store: a row is deleted only once the store has the job).
        batch: rows per transaction.
        poll_interval: seconds between two looks without a notification (default: the
            outbox's).
        name: this relay in heartbeats (default ``host:pid``).
    """

    def __init__(
        self,
        outbox: Outbox,
        dispatcher: BaseDispatcher,
        *,
        batch: int = BATCH,
        poll_interval: float | None = None,
        name: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.batch = batch
        self.poll_interval = outbox.poll_interval if poll_interval is None else poll_interval
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.counters = RelayCounters()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Listener | None = None
        self._listen_after = 0.0  # monotonic time of the next try to listen
        self._failing: str | None = None  # the error last logged
        self._beat_at = 0.0
        self._stuck: dict[str | None, int] = {}  # queue -> batches in a row it admitted none
        self._due_in: float | None = None  # seconds until the rows postponed last are due

    # -- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Relay in a thread until `stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="csjd-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop relaying: a batch under way finishes (or, cut short, is claimed again later:
        its rows stay until a commit deletes them)."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def wake(self) -> None:
        """Look at the outbox now (a commit in this process wrote rows)."""
        self._wake.set()

    def run(self) -> None:
        """Relay until `stop` (or the dispatcher stops)."""
        logger.info(
            "relaying outbox=%s relay=%s skip_locked=%s",
            self.outbox.name,
            self.name,
            "yes" if self.outbox.concurrent else "no (relays take turns)",
        )
        try:
            while not self._stop.is_set():
                try:
                    more = self.relay_once()
                except DispatcherClosed:
                    return
                except Exception as exc:  # Redis or the database away: the rows wait
                    self._failed(exc)
                    self._stop.wait(RETRY_INTERVAL)
                    continue
                if not more:
                    self._idle()
        finally:
            if self._listener is not None:
                self._close_listener()
            self.outbox.close()
            logger.info("relay stopped relay=%s counters=%s", self.name, self.counters)

    # -- one batch -------------------------------------------------------------------------
    def relay_once(self) -> bool:
        """Claim one batch, admit it, record what became of each row; True when the batch
        was full (more rows may be due).

        Raises:
            DispatcherClosed: the dispatcher stopped.
            Exception: the database or the backend failed (the claimed rows stay).
        """
        self._heartbeat()
        skipped = 0
        with self.outbox.claim(self.batch) as claim:
            if not claim.rows:
                self._recovered()
                return False
            jobs: list[Job] = []
            rows: list[OutboxRow] = []
            for row in claim.rows:
                try:
                    jobs.append(decode_row(row.data))
                except InvalidJob as exc:
                    claim.set_aside.append((row.key, str(exc)))
                else:
                    rows.append(row)
            results = self.dispatcher.relay(jobs) if jobs else []
            delays = self._full_delays(jobs, results)
            for row, job, result in zip(rows, jobs, results, strict=True):
                verdict = result.verdict
                if verdict is RelayVerdict.ADMITTED or verdict is RelayVerdict.EXISTS:
                    claim.done.append(row.key)
                    skipped += verdict is RelayVerdict.EXISTS
                elif verdict is RelayVerdict.FULL:
                    claim.postponed.append((row.key, delays[job.queue]))
                else:
                    claim.set_aside.append((row.key, result.reason or "refused by admission"))
        # Committed: count what the database now says happened.
        counters = self.counters
        counters.batches += 1
        counters.relayed += len(claim.done) - skipped
        counters.skipped += skipped
        counters.postponed += len(claim.postponed)
        counters.set_aside += len(claim.set_aside)
        name = self.outbox.name
        for key, reason in claim.set_aside:
            logger.error("outbox row set aside outbox=%s row=%s reason=%s", name, key, reason)
        if claim.postponed:
            logger.warning(
                "queue full: outbox rows wait outbox=%s count=%d", name, len(claim.postponed)
            )
        if skipped:
            logger.info("outbox rows already relayed, deleted outbox=%s count=%d", name, skipped)
        self._recovered()
        if claim.postponed:  # look again when the first of them is due
            self._due_in = min(delay for _, delay in claim.postponed)
        return len(claim.rows) >= self.batch and not claim.postponed

    def _full_delays(
        self, jobs: Sequence[Job], results: Sequence[RelayResult]
    ) -> dict[str | None, float]:
        """How long the rows of each queue found full wait: `backoff` of the number of batches
        in a row in which that queue admitted nothing — a queue that drains (it admitted some
        of this batch) is tried again soon, one that stays full less and less often."""
        full: set[str | None] = set()
        admitted: set[str | None] = set()
        for job, result in zip(jobs, results, strict=True):
            if result.verdict is RelayVerdict.FULL:
                full.add(job.queue)
            elif result.verdict is RelayVerdict.ADMITTED:
                admitted.add(job.queue)
        delays = {}
        for queue in full:
            stuck = 0 if queue in admitted else self._stuck.get(queue, 0) + 1
            self._stuck[queue] = stuck
            delays[queue] = backoff(stuck)
        for queue in admitted - full:
            self._stuck.pop(queue, None)
        return delays

    # -- waiting ---------------------------------------------------------------------------
    def _idle(self) -> None:
        """Wait for a notification, a `wake`, a `stop`, or the poll interval (or until rows
        postponed by the last batch are due, if sooner)."""
        wait = self.poll_interval if self._due_in is None else min(self.poll_interval, self._due_in)
        self._due_in = None
        listener = self._listen()
        if listener is None:
            self._wake.wait(wait)
            self._wake.clear()
            return
        deadline = time.monotonic() + wait
        while not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                if listener.wait(min(left, 0.25)):
                    return
            except Exception as exc:
                logger.warning("outbox listener lost; polling until it is back error=%s", exc)
                self._close_listener()
                return
        self._wake.clear()

    def _listen(self) -> Listener | None:
        if self._listener is not None or time.monotonic() < self._listen_after:
            return self._listener
        try:
            self._listener = self.outbox.listener()
            if self._listener is not None:
                logger.info("listening for outbox commits outbox=%s", self.outbox.name)
        except Exception as exc:
            logger.warning(
                "cannot listen for outbox commits; polling every %.1f s error=%s",
                self.poll_interval,
                exc,
            )
        self._listen_after = time.monotonic() + 30.0
        return self._listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        self._listen_after = time.monotonic() + RETRY_INTERVAL
        if listener is not None:
            try:
                listener.close()
            except Exception:  # already broken
                logger.debug("closing the outbox listener failed", exc_info=True)

    # -- health ----------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at >= BEAT_INTERVAL:
            self.outbox.beat(self.name)
            self._beat_at = now

    def _failed(self, exc: Exception) -> None:
        """Log a failed batch once per kind of failure (it is tried every second)."""
        self.counters.errors += 1
        self._beat_at = 0.0  # beat again as soon as the database answers
        key = type(exc).__name__ if isinstance(exc, CSJDError) else f"{type(exc).__name__}: {exc}"
        if key == self._failing:
            logger.debug("relay failed again error=%s", exc)
            return
        self._failing = key
        if isinstance(exc, CSJDError):
            logger.warning("relay failed; rows wait, trying again error=%s", exc)
        else:
            logger.error("relay failed; rows wait, trying again", exc_info=exc)

    def _recovered(self) -> None:
        if self._failing is not None:
            self._failing = None
            logger.info("relay works again outbox=%s", self.outbox.name)
