"""What one consumer holds in this process: the deliveries it has read and not yet settled,
the ones handed to workers, the successes waiting for the reader's next round trip, and the
flags the reader, the workers and the maintenance thread share."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from typing import Any

from csjd_core.backends.base import Delivery

__all__ = ["Holdings"]


class Holdings:
    """Shared by the reader, the settlement of outcomes, the maintenance thread and `fetch`.

    Workers wait for deliveries on `ready`, the reader for room or successes to record on
    `doorbell` (C queues: one cheap wake-up each).
    """

    def __init__(self, workers: int, prefetch: int | None) -> None:
        self.lock = threading.Lock()
        self.ready: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self.doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.reader_waiting = False
        self.owned: dict[str, Delivery] = {}  # entry id -> delivery, read but not settled
        # Entries of `owned` whose outcome is on its way (a renewal refused for one of them
        # means it was settled meanwhile, not that its lease was lost).
        self.settling: set[str] = set()
        # Successes queued for the reader's next round trip (see `queue_ack`): while the
        # reader cycles, it records them in the same pipeline as its next read.
        self.acks: deque[tuple[Delivery, dict[str, Any]]] = deque()
        self.pipelining = False
        self.deleted_entries = 0  # pending entries whose stream entry was gone (counted, logged)
        self.consuming = False
        self.stopping = False
        self._want = max(workers, prefetch or 0)

    def capacity(self) -> int:
        """How many entries to read: workers (or the prefetch) minus the deliveries in hand.

        In hand are the buffered and the running deliveries; successes queued for the next
        round trip are done (their workers are idle again).
        """
        return self._want - (len(self.owned) - len(self.acks))

    def requeue_acks(self, acks: list[tuple[Delivery, dict[str, Any]]]) -> None:
        """Put back queued successes a round trip could not record, first in line, in order."""
        self.acks.extendleft(reversed(acks))

    def ring(self) -> None:
        """Wake the reader if it waits for room or for successes to record."""
        if self.reader_waiting:
            self.doorbell.put(None)

    def hand_over(self, fresh: list[Delivery]) -> None:
        """Hold started deliveries and wake as many workers as there are deliveries."""
        if fresh:
            with self.lock:
                for delivery in fresh:
                    self.owned[delivery.ref[1]] = delivery
            for delivery in fresh:
                self.ready.put(delivery)

    def queue_ack(self, delivery: Delivery, op: dict[str, Any]) -> bool:
        """Queue a success for the reader's next round trip, if the reader is cycling."""
        with self.lock:
            if not self.pipelining:
                return False
            self.settling.add(delivery.ref[1])
            self.acks.append((delivery, op))
        self.ring()
        return True

    def take_acks(self) -> list[tuple[Delivery, dict[str, Any]]]:
        """The queued successes, taken for one round trip."""
        acks, taken = self.acks, []
        with contextlib.suppress(IndexError):
            while True:  # popleft is atomic: one queued meanwhile is taken now or next time
                taken.append(acks.popleft())
        return taken

    def settling_now(self, delivery: Delivery) -> None:
        """Its outcome is being recorded (renewals refused from now on are no lost lease)."""
        self.settling.add(delivery.ref[1])

    def forget(self, delivery: Delivery) -> None:
        """Stop holding ``delivery`` (its outcome recorded, refused or given up)."""
        entry = delivery.ref[1]
        with self.lock:
            # Only this attempt: a newer attempt of the same entry (claimed back) keeps renewing.
            current = self.owned.get(entry)
            if current is delivery:
                del self.owned[entry]
            if current is delivery or current is None:
                self.settling.discard(entry)
        self.ring()

    def holds(self, delivery: Delivery) -> bool:
        """True while ``delivery`` is held and no outcome for it is on its way: a renewal
        refused then means the lease was lost, not that the entry was settled meanwhile."""
        entry = delivery.ref[1]
        with self.lock:
            return self.owned.get(entry) is delivery and entry not in self.settling

    def held(self) -> list[Delivery]:
        """Every delivery held now (to renew)."""
        with self.lock:
            return list(self.owned.values())

    def take_buffered(self) -> list[Delivery]:
        """The deliveries read ahead that no worker took yet."""
        buffered = []
        with contextlib.suppress(queue.Empty):
            while True:
                delivery = self.ready.get_nowait()
                if delivery is not None:
                    buffered.append(delivery)
        return buffered

    def drop(self, deliveries: list[Delivery]) -> None:
        """Stop holding deliveries handed back unrun."""
        with self.lock:
            for delivery in deliveries:
                self.owned.pop(delivery.ref[1], None)
