"""The maintenance thread: promotion of due jobs, heartbeats and fenced lease renewal, and,
by the consumer elected maintainer of a queue, reclaiming the entries of stalled consumers and
deleting expired consumers."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from csjd_core.backends.base import Delivery
from csjd_core.backends.redis import codec
from csjd_core.backends.redis.connection import REDIS_DOWN, SLOT_MIGRATING, Connection
from csjd_core.backends.redis.holdings import Holdings
from csjd_core.backends.redis.keys import QueueKeys, Queues, by_queue
from csjd_core.backends.redis.reader import Reader
from csjd_core.config import DistributedConfig
from csjd_core.progress import to_json as progress_json
from csjd_core.retry import Backoff

__all__ = ["Maintenance"]

logger = logging.getLogger("csjd_core.redis")

#: Jobs one promote.lua call moves from the delayed set to the stream.
_PROMOTE_BATCH = 500
#: Seconds between two writes of running attempts' progress (ctx.set_progress), at most: each
#: is one progress.lua call per queue for every attempt whose value changed (heartbeat_interval
#: if shorter).
PROGRESS_INTERVAL = 1.0


class Maintenance:
    """Runs whether or not the stream is busy: no lease may go unrenewed for a busy reader."""

    def __init__(
        self,
        connection: Connection,
        config: DistributedConfig,
        consumer: str,
        queues: Queues,
        holdings: Holdings,
        reader: Reader,
        ttl_ms: int,
    ) -> None:
        self.connection = connection
        self.config = config
        self.consumer = consumer
        self.queues = queues
        self.holdings = holdings
        self.reader = reader
        self.ttl_ms = ttl_ms
        self.wake = threading.Event()
        #: time.monotonic() of the last heartbeat Redis took (``/healthz`` reads it).
        self.last_heartbeat: float | None = None
        #: Told ``(job_id, reason)`` when a renewal finds a held job's cancellation requested
        #: (``BackendSettings.on_cancel``).
        self.on_cancel: Callable[[str, str], None] | None = None
        #: A maintainer's term: one claim_interval, extended while its holder stands again.
        self.term_ms = max(1, int(config.claim_interval * 1000))
        #: Per queue, the terms this consumer began as its maintainer (elected, not extended).
        self.terms = dict.fromkeys(queues.consumed, 0)
        #: Monotonic time from which this consumer may stand for maintainer again: one lease
        #: after Redis answered following an outage (``None``: unreachable now). See
        #: `may_maintain`.
        self.maintain_from: float | None = 0.0

    def run(self) -> None:
        """The maintenance thread: until the consumer stops."""
        config, holdings = self.config, self.holdings
        consumed = self.queues.consumed
        next_promote = dict.fromkeys(consumed, 0.0)
        next_beat = next_claim = next_progress = 0.0
        # Progress rides this thread, never a worker's (ctx.set_progress only keeps a value).
        progress_every = min(PROGRESS_INTERVAL, config.heartbeat_interval)
        # Retried at most every heartbeat_interval (the cadence of renewals, so no more calls
        # than when Redis is up): back from an outage, the leases are renewed within one
        # heartbeat, well before `may_maintain` lets any reclaimer take them.
        backoff = Backoff(cap=min(5.0, config.heartbeat_interval))
        while holdings.consuming:
            now = time.monotonic()
            try:
                for name, keys in consumed.items():
                    if now >= next_promote[name]:
                        moved, wait_ms = self.promote(keys)
                        full = moved >= _PROMOTE_BATCH
                        wait = 0.0 if full else 0.25 if wait_ms < 0 else wait_ms / 1000
                        next_promote[name] = now + min(wait, 0.25)
                if now >= next_beat:
                    self.heartbeat()
                    next_beat = now + config.heartbeat_interval
                if now >= next_progress:
                    self.flush_progress()
                    next_progress = now + progress_every
                if (
                    now >= next_claim
                    and not holdings.stopping
                    and self.reader.own_pending_read.is_set()
                    and self.may_maintain(now)
                ):
                    self.maintain()
                    next_claim = now + config.claim_interval
                self.reachable()
                backoff.reset()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    logger.error("consumer group vanished; recreating group=%s", config.group)
                    with contextlib.suppress(redis.RedisError):
                        self.reader.ensure_groups()
                else:
                    logger.exception("maintenance failed")
                backoff.sleep(lambda: not holdings.consuming)
                continue
            except REDIS_DOWN as exc:
                logger.warning("redis unreachable in maintenance error=%s", exc)
                self.maintain_from = None
                backoff.sleep(lambda: not holdings.consuming)
                continue
            except Exception:  # without this thread no lease is renewed: it must live on
                logger.exception("maintenance failed")
                backoff.sleep(lambda: not holdings.consuming)
                continue
            wake = min([*next_promote.values(), next_beat, next_claim, next_progress])
            if holdings.consuming:
                self.wake.wait(max(0.005, min(0.25, wake - time.monotonic())))

    def may_maintain(self, now: float) -> bool:
        """Whether this consumer may stand for maintainer (and so reclaim) now: not within one
        lease of Redis answering again after an outage.

        An outage stops every renewal, and a restarted Redis (or a promoted replica) measures a
        pending entry's idle time from its last delivery or renewal by the wall clock, outage
        included: every entry held when Redis went away looks expired when it comes back,
        though its holder may be alive, running the job or holding its outcome. The holders
        renew within one heartbeat_interval of Redis's return (their retries are capped at
        it), so after one lease only the entries of consumers that really stopped are idle.
        """
        return self.maintain_from is not None and now >= self.maintain_from

    def reachable(self) -> None:
        """Redis answered a whole maintenance round: if it had been unreachable, reclaiming
        waits one lease from now (`may_maintain`)."""
        if self.maintain_from is None:
            self.maintain_from = time.monotonic() + self.config.lease
            logger.info(
                "redis reachable again; reclaiming waits one lease for live consumers to "
                "renew theirs lease=%.3f",
                self.config.lease,
            )

    def promote(self, keys: QueueKeys) -> tuple[int, int]:
        """Move due jobs of one queue to its stream (promote.lua): how many, and milliseconds
        until the next is due (-1: none)."""
        try:
            moved, wait_ms = self.connection.run(
                "promote",
                keys.promote(),
                [keys.job_prefix, _PROMOTE_BATCH, self.config.record_format],
            )
        except SLOT_MIGRATING as exc:
            # Refused while the queue's slot is being migrated (a key missing, or the keys split
            # between two nodes): not a failure of this thread. The heartbeat after it must run
            # (it renews the leases of every queue's jobs); promotion is tried again as usual.
            logger.warning(
                "queue slot migrating; promotion waits queue=%s error=%s", keys.name, exc
            )
            return 0, -1
        return int(moved), int(wait_ms)

    def heartbeat(self) -> None:
        """Write this consumer's heartbeat and renew the leases of what it holds."""
        ttl = int(self.config.heartbeat_interval * 3000)
        pipe = self.connection.client.pipeline(transaction=False)
        for keys in self.queues.consumed.values():
            pipe.set(keys.heartbeat(self.consumer), str(time.time()), px=ttl)
        pipe.execute()
        self.last_heartbeat = time.monotonic()
        held = self.holdings.held()
        if held:
            for delivery, ok in zip(held, self.renew(held), strict=True):
                if not ok and self.holdings.holds(delivery):
                    logger.warning(
                        "lease lost; the outcome of this attempt will be refused id=%r entry=%s",
                        delivery.job.id,
                        delivery.ref[1],
                    )

    def flush_progress(self) -> int:
        """Write the progress running attempts reported since the last flush: the last value
        of each, one progress.lua call per queue (fenced there: owner, delivery count and a
        running record). Returns how many values were sent."""
        dirty = self.holdings.dirty_progress()
        for keys, group in by_queue(dirty, lambda kept: kept[0].ref[0]):
            args: list[Any] = [self.config.group, self.consumer]
            for delivery, progress in group:
                args += [delivery.ref[1], delivery.token, progress_json(progress)]
            script_keys = [keys.stream, *(keys.job(d.job.id) for d, _ in group)]
            try:
                self.connection.run("progress", script_keys, args)
            except SLOT_MIGRATING:  # advisory: the value is written next time, or with the outcome
                continue
            self.holdings.progress_written(group)  # written, or refused for good
        return len(dirty)

    def renew(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Fenced lease renewal (renew.lua); False where the entry was lost. A job whose
        cancellation was requested (renew.lua's flag 2) is told to the engine (``on_cancel``)
        on every renewal until its outcome is recorded."""
        flags: dict[str, bool] = {}
        for keys, group in by_queue(deliveries, lambda d: d.ref[0]):
            args: list[Any] = [self.config.group, self.consumer]
            for d in group:
                args += [d.ref[1], d.token]
            script_keys = [keys.stream, keys.stats, *(keys.job(d.job.id) for d in group)]
            for d, flag in zip(group, self.connection.run("renew", script_keys, args), strict=True):
                flags[d.ref[1]] = bool(flag)
                if flag == 2:
                    d.cancel = d.cancel or "cancelled"
                    if self.on_cancel is not None:
                        self.on_cancel(d.job.id, d.cancel)
        return [flags[d.ref[1]] for d in deliveries]

    def maintain(self) -> None:
        """Stand for each queue's maintainer role; where this consumer holds it, reclaim the
        entries of stalled consumers and, every ten claim_intervals, collect expired consumers.

        Every consumer used to do both, every claim_interval: each one walked the whole pending
        list and checked every other consumer's heartbeat, so a fleet's cost grew with the
        square of its size. Now one consumer per queue does that work each claim_interval, and
        the others pay one ``SET NX`` each: the fleet's cost grows linearly.

        Only a consumer with an idle worker stands, as the reclaimer only ever claimed what
        idle workers can start now (what it cannot start, it would just hold). The holder keeps
        the role while it stands again each claim_interval (its term is extended); the role
        moves when its holder dies or hangs (the term lapses within one claim_interval), stops
        (it resigns), or has no idle worker when it would stand again (it lets the term lapse).
        A maintainer whose idle workers ran out while it was claiming resigns at once: there may
        be more stalled entries, and the next consumer with an idle worker to stand (within one
        claim_interval, sooner with more consumers) takes the role and claims what it can start.

        The role is not a lock: two maintainers at once (a holder stalled past its term) are
        harmless, every step of the reclaimer and the collection being atomic and fenced as
        before; the election only spares the fleet redundant scans.
        """
        client = self.connection.client
        for keys in self.queues.consumed.values():
            if self.holdings.idle() <= 0:
                return
            holder = client.set(keys.maintainer, self.consumer, nx=True, px=self.term_ms, get=True)
            if holder is None:
                self.terms[keys.name] += 1
                logger.debug("elected maintainer queue=%s consumer=%s", keys.name, self.consumer)
            elif codec.text(holder) == self.consumer:
                client.pexpire(keys.maintainer, self.term_ms)  # our term goes on
            else:
                continue  # another consumer maintains the queue this claim_interval
            claimed, finished = self.reclaim_queue(keys)
            if client.set(keys.collected, self.consumer, nx=True, px=10 * self.term_ms):
                self.collect_queue(keys)
            if claimed and not finished:
                self.resign(keys)

    def resign(self, keys: QueueKeys) -> None:
        """Give up the queue's maintainer role if this consumer holds it (resign.lua)."""
        self.connection.run("resign", [keys.maintainer], [self.consumer])

    def reclaim(self) -> None:
        """Run the reclaimer over every consumed queue now, whoever maintains it."""
        for keys in self.queues.consumed.values():
            self.reclaim_queue(keys)

    def reclaim_queue(self, keys: QueueKeys) -> tuple[int, bool]:
        """Claim the queue's entries idle longer than the lease (as many as idle workers can
        start), in each priority band's stream, highest first.

        Returns:
            How many entries were claimed, and whether the scan reached the end of every
            band's pending list (False: it stopped because no worker was idle any more).
        """
        total = 0
        for band in keys.bands:
            if self.holdings.idle() <= 0:
                # No worker left to start more: the scan stopped short only if a band it did
                # not reach holds entries (the high and low bands are usually empty).
                if self.connection.client.xlen(band.stream):
                    return total, False
                continue
            claimed, finished = self.reclaim_band(band)
            total += claimed
            if not finished:
                return total, False
        return total, True

    def reclaim_band(self, keys: QueueKeys) -> tuple[int, bool]:
        """Claim one band's entries idle longer than the lease, following the XAUTOCLAIM
        cursor; reclaim.lua dead-letters those over max_deliveries.

        Returns:
            How many entries were claimed, and whether the scan reached the end of the pending
            list (False: it stopped because no worker was idle any more).
        """
        config = self.config
        lease_ms = int(config.lease * 1000)
        cursor = "0-0"
        total = 0
        while True:
            count = self.holdings.idle()
            if count <= 0:
                return total, False
            try:
                next_cursor, claimed, deleted, dead = self.connection.run(
                    "reclaim",
                    keys.reclaim(),
                    [
                        config.group,
                        self.consumer,
                        lease_ms,
                        config.max_deliveries,
                        count,
                        cursor,
                        keys.job_prefix,
                        self.ttl_ms,
                        config.max_dead_letters,
                    ],
                )
            except SLOT_MIGRATING as exc:  # as in `promote`: the other queues go on
                logger.warning(
                    "queue slot migrating; reclaiming waits queue=%s error=%s", keys.name, exc
                )
                return total, True  # nothing more to claim until it ends
            if deleted:
                self.holdings.deleted_entries += len(deleted)
                logger.warning(
                    "reclaimer dropped pending entries whose data was deleted queue=%s count=%d",
                    keys.name,
                    len(deleted),
                )
            for job_id in dead:
                logger.error(
                    "job dead-lettered: delivered max_deliveries=%d times without "
                    "an outcome queue=%s id=%r",
                    config.max_deliveries,
                    keys.name,
                    codec.text(job_id),
                )
            if claimed:
                total += len(claimed)
                logger.warning(
                    "reclaimed entries from stalled consumers queue=%s count=%d",
                    keys.name,
                    len(claimed),
                )
                self.reader.accept(keys, [(e[0], codec.fields(e[1])) for e in claimed])
            cursor = codec.text(next_cursor)
            if cursor == "0-0":
                return total, True

    def collect_consumers(self) -> None:
        """Collect expired consumers in every consumed queue now, whoever maintains it."""
        for keys in self.queues.consumed.values():
            self.collect_queue(keys)

    def collect_queue(self, keys: QueueKeys) -> None:
        """Delete the queue's consumers whose heartbeat expired from each priority band's
        group (a consumer joins the group of every band it reads), once their pending list
        there is empty."""
        for band in keys.bands:
            self.collect_band(band)

    def collect_band(self, keys: QueueKeys) -> None:
        """Delete one band's consumers whose heartbeat expired, once their pending list is
        empty: one XINFO CONSUMERS, then one pipelined EXISTS per consumer with nothing
        pending (the others keep their entries until the reclaimer has moved them)."""
        client = self.connection.client
        idle = [
            name
            for info in client.xinfo_consumers(keys.stream, self.config.group)
            if int(info.get("pending", 0)) == 0
            and (name := codec.text(info.get("name"))) != self.consumer
        ]
        if not idle:
            return
        pipe = client.pipeline(transaction=False)
        for name in idle:
            pipe.exists(keys.heartbeat(name))
        for name, alive in zip(idle, pipe.execute(), strict=True):
            # delete_consumer.lua checks the pending list again: it may have taken an entry.
            if not alive and self.connection.run(
                "delete_consumer", [keys.stream], [self.config.group, name]
            ):
                logger.info("deleted expired consumer queue=%s consumer=%s", keys.name, name)
