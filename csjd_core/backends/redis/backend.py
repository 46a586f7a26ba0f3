"""`RedisStreamsBackend`: the `Backend` seam over Redis Streams, assembled from the package's
parts — `Connection` (pools and scripts), `Queues` (keys), `Holdings` (what this consumer
holds), `Outcomes` (fenced settlement), `Reader`, `Maintenance` and `Admin`."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from csjd_core.backends.base import (
    AttemptError,
    Backend,
    BackendSettings,
    CancelVerdict,
    Delivery,
    RelayResult,
    RelayVerdict,
    SlotOp,
    SlotRequest,
    SlotVerdict,
)
from csjd_core.backends.redis import codec
from csjd_core.backends.redis.admin import Admin
from csjd_core.backends.redis.connection import (
    REDIS_DOWN,
    SLOT_MIGRATING,
    Connection,
    NotReplicated,
    NotSent,
)
from csjd_core.backends.redis.holdings import Holdings
from csjd_core.backends.redis.keys import QueueKeys, Queues
from csjd_core.backends.redis.maintenance import Maintenance
from csjd_core.backends.redis.reader import Reader
from csjd_core.backends.redis.settle import Outcomes
from csjd_core.config import DistributedConfig, EngineConfig, RedisConfig
from csjd_core.errors import BackendUnavailable, DuplicateJob, InvalidJob, QueueFull
from csjd_core.job import Job, JobStatus
from csjd_core.progress import Progress
from csjd_core.stats import DeadLetter, QueueStats, ScheduleState

__all__ = ["RedisStreamsBackend"]

_CANCEL_VERDICTS = {
    "none": CancelVerdict.NOT_FOUND,
    "ended": CancelVerdict.ENDED,
    "cancelled": CancelVerdict.CANCELLED,
    "requested": CancelVerdict.REQUESTED,
    "running": CancelVerdict.RUNNING,
}
_RELAY_VERDICTS = {"a": RelayVerdict.ADMITTED, "e": RelayVerdict.EXISTS, "f": RelayVerdict.FULL}
_SLOT_VERDICTS = {
    "ok": SlotVerdict.ENQUEUED,
    "init": SlotVerdict.INIT,
    "done": SlotVerdict.DONE,
    "dup": SlotVerdict.DUPLICATE,
    "overlap": SlotVerdict.OVERLAP,
    "paused": SlotVerdict.PAUSED,
    "skipped": SlotVerdict.SKIPPED,
    "resumed": SlotVerdict.RESUMED,
}

logger = logging.getLogger("csjd_core.redis")


class RedisStreamsBackend(Backend):
    """Jobs in Redis Streams, shared by every process that uses the same keys.

    Every state change that must be atomic is one Lua script in ``lua/`` (admission, start,
    settle, promote, reclaim, renew, release). Acknowledgements are *fenced*: a script acks an
    entry only if this consumer still owns it with the same delivery count, so an attempt that
    lost its lease can never record an outcome. See docs/distributed.md for the protocol.
    """

    durable = True
    local = False

    def __init__(self, redis_config: RedisConfig, config: DistributedConfig) -> None:
        self.redis_config = redis_config
        self.config = config
        self.consumer = config.consumer or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self.queues = Queues(config.stream, config.queues)
        self.connection = Connection(redis_config, config.block)
        self.holdings = Holdings(config.workers, config.prefetch, config.lease)
        self._dedupe_ms = int(config.dedupe_window * 1000)
        engine: EngineConfig = config  # mypy types inherited Duration fields as their input
        ttl_ms = int(max(engine.result_ttl * 1000, self._dedupe_ms)) or 1
        self.outcomes = Outcomes(self.connection, config, self.consumer, self.holdings, ttl_ms)
        self.reader = Reader(
            self.connection, config, self.consumer, self.queues, self.holdings, self.outcomes
        )
        self.maintenance = Maintenance(
            self.connection, config, self.consumer, self.queues, self.holdings, self.reader, ttl_ms
        )
        #: Seconds an enqueue waits for a replica's acknowledgement (0: it does not wait).
        self.durable_wait = config.durable_timeout if config.durable_enqueue else 0.0
        self.admin = Admin(self.connection, config, self.queues, self.durable_wait)
        self._threads: list[threading.Thread] = []

    # -- what tools and tests read ---------------------------------------------------------
    @property
    def client(self) -> Any:
        """The command client (``redis.Redis``, or ``RedisCluster`` for a cluster)."""
        return self.connection.client

    @property
    def default_queue(self) -> str:
        """The first configured queue: where a job that names none goes."""
        return self.queues.default

    @property
    def read_calls(self) -> int:
        """Reads sent (or attempted) by the reader."""
        return self.reader.read_calls

    @property
    def deleted_entries(self) -> int:
        """Pending entries found without their stream entry (counted, logged)."""
        return self.holdings.deleted_entries

    def keys_for(self, queue: str | None) -> QueueKeys:
        """The keys of ``queue`` (``None``: the default queue)."""
        return self.queues.keys_for(queue)

    # -- lifecycle -------------------------------------------------------------------------
    def open(self, settings: BackendSettings) -> int:
        """Take the engine's lost-claim callback; connections are made on first use (the
        other settings are this backend's `DistributedConfig`'s own)."""
        self.outcomes.on_lost = settings.on_lost_claim
        self.outcomes.on_cancelled = settings.on_cancelled_success
        self.outcomes.on_unstarted = settings.on_cancelled_unstarted
        self.maintenance.on_cancel = settings.on_cancel
        return 0

    def start_consuming(self) -> None:
        """Create the consumer groups and start the reader and maintenance threads."""
        try:
            self.reader.ensure_groups()
            self.connection.load_scripts()
        except REDIS_DOWN as exc:
            raise BackendUnavailable(
                f"Redis at {self.redis_config.display} unavailable: {exc}"
            ) from exc
        self.holdings.consuming = True
        for target, name in (
            (self.reader.run, "csjd-reader"),
            (self.maintenance.run, "csjd-maintenance"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        logger.info(
            "consumer started consumer=%s group=%s queues=%s redis=%s",
            self.consumer,
            self.config.group,
            ",".join(self.queues.consumed),
            self.redis_config.display,
        )

    def wake(self) -> None:
        """Stop fetching: no new reads; prefetched entries are handed back."""
        self.reader.stop_fetching()

    def close(self, *, clean: bool) -> list[Job]:
        """Stop the threads, remove the heartbeat, give up any maintainer role (the next
        consumer to stand takes it at once), close connections; jobs stay in Redis."""
        self.wake()
        self.holdings.consuming = False
        self.maintenance.wake.set()
        for thread in self._threads:
            thread.join(timeout=self.config.block + 5)
        if self._threads:
            with contextlib.suppress(*REDIS_DOWN):
                self.connection.client.delete(
                    *(k.heartbeat(self.consumer) for k in self.queues.consumed.values())
                )
            with contextlib.suppress(redis.RedisError):  # else the role lapses within its term
                for keys in self.queues.consumed.values():
                    self.maintenance.resign(keys)
        self.connection.close()
        return []

    # -- admission -------------------------------------------------------------------------
    def encode(self, job: Job) -> str:
        """The wire form of a job (the stream entry's ``d`` field)."""
        return codec.encode(job, self.config.default_max_attempts, self.config.max_payload_bytes)[0]

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Admit ``jobs`` (all in one queue) in one round trip (see enqueue.lua)."""
        self._run_enqueue(self.queues.keys_for(jobs[0].queue), jobs, [""])

    def relay(self, jobs: Sequence[Job]) -> list[RelayResult]:
        """The outbox relay's admission of ``jobs`` (all in one queue) in one round trip:
        enqueue.lua's 'relay' mode. A job that cannot be stored (over the payload limit) is
        ``INVALID`` and left out of it."""
        default_attempts, max_payload = (
            self.config.default_max_attempts,
            self.config.max_payload_bytes,
        )
        results: list[RelayResult | None] = []
        storable: list[Job] = []
        encoded: list[tuple[str, int]] = []
        for job in jobs:
            try:
                encoded.append(codec.encode(job, default_attempts, max_payload))
            except InvalidJob as exc:
                results.append(RelayResult(job.id, RelayVerdict.INVALID, str(exc)))
                continue
            results.append(None)
            storable.append(job)
        if storable:
            keys = self.queues.keys_for(jobs[0].queue)
            reply = self._run_enqueue(keys, storable, ["relay"], encoded=encoded)
            codes = iter(codec.text(reply[1]))
            for index, result in enumerate(results):
                if result is None:
                    results[index] = RelayResult(jobs[index].id, _RELAY_VERDICTS[next(codes)])
        return [result for result in results if result is not None]

    def _run_enqueue(
        self,
        keys: QueueKeys,
        jobs: Sequence[Job],
        mark: list[Any],
        schedule: str | None = None,
        *,
        encoded: list[tuple[str, int]] | None = None,
    ) -> list[Any]:
        """Run enqueue.lua (``mark``: its mode and schedule arguments, ``[""]`` for none);
        returns its reply, having raised for a full queue or (without a schedule) a taken
        id."""
        args: list[Any] = [
            self.config.max_pending_jobs,
            self._dedupe_ms,
            self.config.record_format,
            *mark,
        ]
        if encoded is None:
            default_attempts = self.config.default_max_attempts
            max_payload = self.config.max_payload_bytes
            encoded = [codec.encode(job, default_attempts, max_payload) for job in jobs]
        banded = False
        for job, (data, max_attempts) in zip(jobs, encoded, strict=True):
            band = keys.band_argument(job.priority) if job.priority else ""
            banded = banded or band != ""
            args += [job.id, data, codec.run_at_ms(job), max_attempts, band]
        display = self.redis_config.display
        try:
            reply = self.connection.run(
                "enqueue",
                keys.enqueue((job.id for job in jobs), schedule, banded=banded),
                args,
                wait_replica=self.durable_wait,
            )
        except NotReplicated as exc:
            raise BackendUnavailable(
                f"Redis at {display}: {exc} (durable_enqueue): the job is on the master but a "
                "failover could lose it; submitting it again with the same id is safe "
                "(DuplicateJob then means it is stored)"
            ) from exc
        except NotSent as exc:
            raise BackendUnavailable(
                f"Redis at {display} unreachable ({exc}); the job was not enqueued"
            ) from exc
        except REDIS_DOWN as exc:
            raise BackendUnavailable(
                f"Redis at {display} unavailable while enqueuing ({exc}); the job may or may "
                "not be enqueued: submitting it again with the same id is safe"
            ) from exc
        except SLOT_MIGRATING as exc:
            raise BackendUnavailable(
                f"queue {keys.name!r} is being moved to another Redis Cluster node ({exc}); the "
                "job was not enqueued: submitting it again with the same id is safe"
            ) from exc
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis refused the enqueue: {exc}") from exc
        verdict = codec.text(reply[0])
        if verdict == "full":
            raise QueueFull(
                self.config.max_pending_jobs,
                f"queue {keys.name!r} full: {int(reply[1])} unfinished jobs, "
                f"max_pending_jobs={self.config.max_pending_jobs}",
            )
        if verdict == "dup" and (schedule is None or mark[0] != SlotOp.SLOT):
            raise DuplicateJob(
                codec.text(reply[1]),
                f"job id {codec.text(reply[1])!r} is taken by an "
                "unfinished job, or one that finished within dedupe_window",
            )
        return list(reply)

    # -- schedules (csjd_core.periodic) ----------------------------------------------------
    def clock(self) -> float:
        """Redis ``TIME``: one clock for every ticker, whatever their hosts' clocks say."""
        try:
            secs, micros = self.connection.client.time()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis at {self.redis_config.display} failed: {exc}") from exc
        return float(secs) + float(micros) / 1e6

    def admit_slot(self, request: SlotRequest) -> SlotVerdict:
        """One atomic step on a schedule's mark, in the admission script (enqueue.lua)."""
        keys = self.queues.keys_for(request.queue)
        mark = [
            str(request.op),
            int(request.slot),
            request.max_running,
            request.misfired,
            keys.job_prefix,
            "" if request.after is None else int(request.after),
        ]
        jobs = [] if request.job is None else [request.job]
        reply = self._run_enqueue(keys, jobs, mark, request.schedule)
        return _SLOT_VERDICTS[codec.text(reply[0])]

    def schedule_state(self, name: str, queue: str | None) -> ScheduleState | None:
        """The schedule's mark, or ``None``."""
        return self.admin.schedule_state(name, queue)

    def set_paused(self, name: str, queue: str | None, paused: bool) -> None:
        """Set the mark's ``paused`` flag (enqueue.lua reads it)."""
        self.admin.set_paused(name, queue, paused)

    def record_outcome(self, name: str, queue: str | None, job_id: str, kind: str) -> None:
        """Write a run's outcome into the schedule's mark."""
        self.admin.record_outcome(name, queue, job_id, kind)

    # -- consumption -----------------------------------------------------------------------
    def fetch(self, timeout: float) -> Delivery | None:
        """The next delivery read by the reader thread, waiting up to ``timeout``; an entry
        held ahead is started here (see `Holdings.take`)."""
        holdings = self.holdings
        ready = holdings.ready
        deadline = None
        while True:
            try:
                if timeout <= 0 or holdings.stopping:
                    item = ready.get_nowait()
                else:
                    item = ready.get(True, timeout)
            except queue.Empty:
                return None
            if item is None:
                return None
            delivery = holdings.take(item)
            if delivery is not None:
                return delivery
            # Handed back meanwhile (too old, or stopping): wait for the next, same deadline.
            if deadline is None:
                deadline = time.monotonic() + timeout
            timeout = deadline - time.monotonic()

    def started(self, delivery: Delivery, worker_id: str) -> None:
        """Nothing to do: the start script ran when the entry was read."""

    # -- outcomes --------------------------------------------------------------------------
    def succeed_nowait(self, delivery: Delivery, result: Any) -> bool | None:
        """Queue the success for the reader's next round trip (see `Outcomes`)."""
        return self.outcomes.succeed_nowait(delivery, result)

    def succeed(self, delivery: Delivery, result: Any) -> bool:
        """Ack with the JSON result (fenced, group-committed)."""
        return self.outcomes.succeed(delivery, result)

    def retry(self, delivery: Delivery, error: AttemptError, delay: float) -> bool:
        """Ack and park the job in the delayed set for ``delay`` seconds (one atomic step)."""
        return self.outcomes.retry(delivery, error, delay)

    def fail(self, delivery: Delivery, error: AttemptError) -> bool:
        """Ack and dead-letter the job (one atomic step)."""
        return self.outcomes.fail(delivery, error)

    def cancelled(
        self, delivery: Delivery, reason: str, error: AttemptError | None, result: Any = None
    ) -> bool:
        """Ack and record the job ``cancelled`` (one atomic step of settle.lua)."""
        return self.outcomes.cancelled(delivery, reason, error, result)

    def cancel(
        self,
        job_id: str,
        queue: str | None,
        reason: str = "cancelled",
        *,
        waiting_only: bool = False,
    ) -> CancelVerdict:
        """cancel.lua on the job's record in ``queue`` (else in each configured queue, until
        one knows it): see `Backend.cancel`. A job a consumer holds is flagged; its consumer
        tells the attempt within ``heartbeat_interval``."""
        candidates = [self.queues.keys_for(queue)] if queue else list(self.queues.consumed.values())
        for keys in candidates:
            try:
                reply = self.connection.run(
                    "cancel",
                    keys.cancel(job_id),
                    [
                        self.config.group,
                        job_id,
                        reason,
                        self.outcomes.ttl_ms,
                        "waiting" if waiting_only else "",
                    ],
                    wait_replica=self.durable_wait,
                )
            except NotReplicated as exc:
                raise BackendUnavailable(
                    f"Redis at {self.redis_config.display}: {exc} (durable_enqueue): the "
                    "cancellation is on the master but a failover could lose it; cancelling "
                    "again is safe"
                ) from exc
            except (*REDIS_DOWN, *SLOT_MIGRATING) as exc:
                raise BackendUnavailable(
                    f"Redis at {self.redis_config.display} unavailable while cancelling "
                    f"({exc}); cancelling again is safe"
                ) from exc
            except redis.RedisError as exc:
                raise BackendUnavailable(f"Redis refused the cancel: {exc}") from exc
            verdict = _CANCEL_VERDICTS[codec.text(reply)]
            if verdict is CancelVerdict.CANCELLED and self.outcomes.on_unstarted is not None:
                self.outcomes.on_unstarted(1)
            if verdict is not CancelVerdict.NOT_FOUND:
                return verdict
        return CancelVerdict.NOT_FOUND

    def waiting_jobs(self, queue: str | None, job_type: str | None) -> list[str]:
        """The ids of the jobs in ``queue``'s stream no consumer has read and in its delayed
        set (see `Admin.waiting_jobs`)."""
        try:
            return self.admin.waiting_jobs(queue, job_type)
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis at {self.redis_config.display} failed: {exc}") from exc

    def release(self, delivery: Delivery) -> None:
        """Stop renewing the entry's lease: any consumer's reclaimer takes it after the lease
        (a delivery counted against ``max_deliveries``)."""
        self.holdings.forget(delivery)
        logger.error(
            "attempt released without an outcome; reclaimed after the lease id=%r entry=%s",
            delivery.job.id,
            delivery.ref[1],
        )

    def set_progress(self, delivery: Delivery, progress: Progress) -> bool | None:
        """Keep the attempt's progress for the maintenance thread to write, coalesced (about
        once a second, fenced by progress.lua) or for its outcome (settle.lua); False if the
        attempt is no longer held here."""
        return None if self.holdings.keep_progress(delivery, progress) else False

    def renew(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Fenced lease renewal (renew.lua); False where the entry was lost."""
        return self.maintenance.renew(deliveries)

    # -- queries and operator actions ------------------------------------------------------
    def status(self, job_id: str, queue: str | None = None) -> JobStatus | None:
        """The job's record (looked up in ``queue``, else in every configured queue)."""
        return self.admin.status(job_id, queue)

    def pending(self) -> int:
        """Unfinished jobs across this process's queues (all producers and consumers)."""
        return self.admin.pending()

    def ready_count(self) -> int:
        """Entries not yet delivered to a consumer."""
        return self.admin.ready_count()

    def stats(self) -> dict[str, QueueStats]:
        """Cluster-wide figures per queue."""
        return self.admin.stats()

    def dead_letters(self, queue: str | None = None, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` dead letters of ``queue``."""
        return self.admin.dead_letters(queue, count)

    def dead_letter(self, entry_id: str, queue: str | None = None) -> DeadLetter | None:
        """One dead letter by its entry id, or ``None``."""
        return self.admin.dead_letter(entry_id, queue)

    def requeue_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Put one dead letter back on its queue as a fresh job (see `Admin.requeue_dead`)."""
        return self.admin.requeue_dead(entry_id, queue)

    def delete_dead(self, entry_id: str, queue: str | None = None) -> bool:
        """Delete one dead letter; False if there was no such entry."""
        return self.admin.delete_dead(entry_id, queue)

    def dead_count(self, queue: str | None = None) -> int:
        """How many dead letters ``queue`` holds."""
        return self.admin.dead_count(queue)

    def purge_dead(self, queue: str | None = None) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        return self.admin.purge_dead(queue)
