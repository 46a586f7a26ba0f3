"""Recording outcomes: every success, retry and dead letter is one fenced step of settle.lua,
group-committed (concurrent workers share one script call per queue) or, for successes while
the reader cycles, sent with its next read."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import NoScriptError

from csjd_core.backends.base import AttemptError, Delivery
from csjd_core.backends.redis import codec
from csjd_core.backends.redis.connection import REDIS_DOWN, SLOT_MIGRATING, Connection
from csjd_core.backends.redis.holdings import Holdings
from csjd_core.backends.redis.keys import QueueKeys, by_queue
from csjd_core.config import DistributedConfig
from csjd_core.progress import to_json as progress_json
from csjd_core.retry import Backoff

__all__ = ["Outcomes"]

logger = logging.getLogger("csjd_core.redis")

Ack = tuple[Delivery, dict[str, Any]]


class _GroupCommit:
    """Concurrent workers share one script call per queue: the first to arrive records the
    batch queued so far while the others wait for its reply."""

    def __init__(self, flush: Callable[[list[list[Any]]], list[Any]]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._queue: list[list[Any]] = []
        self._flushing = False

    def settle(self, keys: QueueKeys, op: dict[str, Any]) -> int:
        """settle.lua's flag for ``op``: 0 refused, 1 recorded, 2 recorded as cancelled."""
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
        return int(slot[2])


class Outcomes:
    """Records attempt outcomes and dead-letters poison, fenced by entry and delivery count."""

    def __init__(
        self,
        connection: Connection,
        config: DistributedConfig,
        consumer: str,
        holdings: Holdings,
        ttl_ms: int,
    ) -> None:
        self.connection = connection
        self.config = config
        self.consumer = consumer
        self.holdings = holdings
        self.ttl_ms = ttl_ms
        #: Told of a queued success that was then refused (``BackendSettings.on_lost_claim``).
        self.on_lost: Callable[[Delivery], None] | None = None
        #: Told of a queued success recorded as cancelled (``on_cancelled_success``).
        self.on_cancelled: Callable[[Delivery], None] | None = None
        #: Told how many jobs a script ended cancelled before they started
        #: (``on_cancelled_unstarted``).
        self.on_unstarted: Callable[[int], None] | None = None
        self._group_commit = _GroupCommit(self._flush)

    # -- the Backend's outcome methods -----------------------------------------------------
    def succeed_nowait(self, delivery: Delivery, result: Any) -> bool | None:
        """Queue the success for the reader's next round trip while it is cycling (``None``:
        a refusal is reported to ``on_lost``); else record it now."""
        op = self._op(delivery, "ok", r=codec.result_json(result))
        if self.holdings.queue_ack(delivery, op):
            return None
        return self.settle_sync(delivery, op)

    def succeed(self, delivery: Delivery, result: Any) -> bool:
        """Ack with the JSON result."""
        return self.settle_sync(delivery, self._op(delivery, "ok", r=codec.result_json(result)))

    def retry(self, delivery: Delivery, error: AttemptError, delay: float) -> bool:
        """Ack and park the job in the delayed set for ``delay`` seconds (one atomic step)."""
        op = self._op(delivery, "retry", delay=delay * 1000, **codec.error_fields(error))
        return self.settle_sync(delivery, op)

    def fail(self, delivery: Delivery, error: AttemptError) -> bool:
        """Ack and dead-letter the job (one atomic step)."""
        op = self._op(delivery, "dead", reason=error.kind, **codec.error_fields(error))
        return self.settle_sync(delivery, op)

    def cancelled(
        self, delivery: Delivery, reason: str, error: AttemptError | None, result: Any
    ) -> bool:
        """Ack and record the job ``cancelled`` (one atomic step), its result or error kept."""
        extra: dict[str, Any] = {"reason": reason}
        if result is not None:
            extra["r"] = codec.result_json(result)
        if error is not None:
            extra.update(codec.error_fields(error))
        return self.settle_sync(delivery, self._op(delivery, "cancel", **extra))

    def _op(self, delivery: Delivery, kind: str, **extra: Any) -> dict[str, Any]:
        """settle.lua's op; ``s``: it records the attempt's start too (not recorded yet)."""
        op = codec.op(delivery, kind, **extra)
        if delivery.ref[1] in self.holdings.unrecorded:
            op["s"] = 1
        # Progress (issue 18): the attempt's last unwritten value goes with its outcome.
        progress = self.holdings.take_progress(delivery)
        if progress is not None:
            op["p"] = progress_json(progress)
        return op

    def poison(self, keys: QueueKeys, entry_id: str, job_id: str, data: str, reason: str) -> None:
        """Dead-letter an entry that cannot be run (undecodable, no job record...)."""
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
            self._group_commit.settle(keys, op)
        except redis.RedisError as exc:
            logger.error("could not dead-letter poison entry=%s error=%s", entry_id, exc)

    # -- recording -------------------------------------------------------------------------
    def settle_sync(self, delivery: Delivery, op: dict[str, Any]) -> bool:
        """Record one outcome now (group-committed with other workers'); retried for as long as
        Redis is unreachable or the queue's slot is being migrated (the lease is renewed
        meanwhile: renew.lua needs only the stream).

        Giving up while Redis is down would throw away the outcome of a job that ran, and the
        job would run again once reclaimed: a retry is safe instead, as settle.lua is fenced (if
        another consumer took the entry meanwhile, the outcome is refused). Only a consumer
        that stopped consuming (closed) gives up, after one lease.
        """
        holdings = self.holdings
        holdings.settling_now(delivery)
        deadline = time.monotonic() + self.config.lease
        backoff = Backoff(cap=min(5.0, self.config.heartbeat_interval))
        while True:
            try:
                flag = self._group_commit.settle(delivery.ref[0], op)
                ok = flag > 0
                if flag == 2:  # recorded as cancelled: a cancellation came first
                    delivery.cancel = delivery.cancel or "cancelled"
                break
            except REDIS_DOWN as exc:
                if not holdings.consuming and time.monotonic() >= deadline:
                    logger.error(
                        "could not record an outcome before the consumer closed; the job "
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
                backoff.sleep(lambda: not holdings.consuming and time.monotonic() >= deadline)
            except SLOT_MIGRATING as exc:
                # Redis refuses settle.lua while the slot migrates (its keys split between two
                # nodes, or one missing): nothing ran. Giving up would leave the entry to a
                # reclaimer after the lease, and a job that succeeded would run again.
                logger.warning(
                    "queue slot migrating while recording an outcome; retrying id=%r error=%s",
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
        self.holdings.forget(delivery)
        return ok

    def arguments(
        self, keys: QueueKeys, ops: list[dict[str, Any]]
    ) -> tuple[list[str], list[Any], list[int]]:
        """settle.lua's KEYS and ARGV for ``ops`` of one queue, and the op index of each reply
        flag (every job record the script touches is passed in KEYS: it builds none)."""
        other = [i for i, op in enumerate(ops) if op["k"] != "ok"]
        # Successes that record their start first (see settle.lua).
        ok = [i for i, op in enumerate(ops) if op["k"] == "ok" and "s" in op]
        with_start = len(ok)
        ok += [i for i, op in enumerate(ops) if op["k"] == "ok" and "s" not in op]
        order = other + ok
        script_keys = keys.settle() + [keys.job(ops[i]["id"]) for i in order]
        args: list[Any] = [
            self.config.group,
            self.consumer,
            self.ttl_ms,
            self.config.max_dead_letters,
            json.dumps([ops[i] for i in other], separators=(",", ":")),
        ]
        if ok:
            ids = sorted((codec.entry_order(ops[i]["e"]), ops[i]["e"]) for i in ok)
            args += [ids[0][1], ids[-1][1], with_start]
            for i in ok:
                op = ops[i]
                args += [op["e"], op["n"], op["a"], op["r"], op["d"], op.get("p", "")]
        return script_keys, args, order

    def _flush(self, batch: list[list[Any]]) -> list[Any]:
        results: list[Any] = [0] * len(batch)
        for keys, indexes in by_queue(range(len(batch)), lambda i: batch[i][0]):
            script_keys, args, order = self.arguments(keys, [batch[i][1] for i in indexes])
            try:
                reply = self.connection.run("settle", script_keys, args)
            except redis.RedisError as exc:
                # This queue's call alone failed (its slot migrating...): the outcomes other
                # queues' calls recorded stand. Sent again, they would be refused (acked).
                for i in indexes:
                    results[i] = exc
                continue
            for i, flag in zip(order, reply, strict=True):
                results[indexes[i]] = int(flag)
        return results

    def settled(self, group: list[Ack], reply: Any) -> None:
        """Take the reply of a pipelined settle.lua call for the queued successes ``group``."""
        if isinstance(reply, NoScriptError):
            self.connection.load_scripts()  # Redis restarted without them: again next cycle
            self.holdings.requeue_acks(group)
            return
        if isinstance(reply, SLOT_MIGRATING):  # refused, nothing ran: again next cycle
            self.holdings.requeue_acks(group)
            return
        if isinstance(reply, Exception):
            logger.error("could not record outcomes; the attempts lost their claim error=%s", reply)
            reply = [0] * len(group)
        for (delivery, _), flag in zip(group, reply, strict=True):
            self.holdings.forget(delivery)
            if not flag:
                self.lost(delivery)
            elif flag == 2:  # a cancellation came first: recorded 'cancelled', result kept
                delivery.cancel = delivery.cancel or "cancelled"
                if self.on_cancelled is not None:
                    self.on_cancelled(delivery)

    def settle_now(self, acks: list[Ack]) -> None:
        """Record queued successes when the reader stops."""
        for delivery, op in acks:
            if not self.settle_sync(delivery, op):
                self.lost(delivery)
            elif delivery.cancel and self.on_cancelled is not None:
                self.on_cancelled(delivery)

    def lost(self, delivery: Delivery) -> None:
        """A success counted when it was queued was refused when it was recorded."""
        if self.on_lost is not None:
            self.on_lost(delivery)
