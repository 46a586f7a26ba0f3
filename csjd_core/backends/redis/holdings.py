"""What one consumer holds in this process: the deliveries it has read and not yet settled,
the entries read ahead and not yet started, the ones handed to workers, the starts and the
successes waiting for the reader's next round trip, and the flags the reader, the workers and
the maintenance thread share."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from typing import Any

from csjd_core.backends.base import Delivery
from csjd_core.backends.redis.keys import DEFAULT_BAND
from csjd_core.progress import Progress

__all__ = ["Held", "Holdings"]

#: Weight of the newest sample in the handler-time and round-trip averages.
_SMOOTHING = 0.1
#: Read-ahead covers what the workers finish in this many round trips: enough to hide the
#: reads and to take entries in batches (each read costs both sides CPU), not more.
_ROUND_TRIPS_AHEAD = 4


class Held:
    """An entry read ahead: in this consumer's pending list, not started (its job record still
    says ``queued``). A worker starts it at hand-over, or it goes back (too old, or stopping)."""

    __slots__ = ("band", "delivery", "read_at", "taken")

    def __init__(self, delivery: Delivery, read_at: float) -> None:
        self.delivery = delivery
        self.band: int = delivery.ref[0].band  # its queue's priority band (0: the highest)
        self.read_at = read_at  # monotonic time before the read was sent: never younger
        self.taken = False  # started by a worker or handed back (under Holdings.lock)


class Holdings:
    """Shared by the reader, the settlement of outcomes, the maintenance thread and `fetch`.

    Workers wait for deliveries on `ready` (started deliveries and `Held` entries), the reader
    for room, starts or successes to record on `doorbell` (C queues: one cheap wake-up each).
    A `Held` taken from `ready` stands for one entry held ahead, not for its own: while held
    entries of several priority bands wait, a worker starts the highest band's oldest (see
    `take`), so a high-priority job read after others is not run after them.

    Read-ahead: beside one started entry per idle worker, the reader holds up to
    `ahead_target` entries unstarted. ``prefetch=None`` adapts the target to the handlers: as
    many as the workers finish in a few round trips (``workers * 4 round trips / handler
    time``, rounded), at most ``workers`` — fast handlers never wait for a read and entries are
    read in batches, slow ones hold nothing back from other consumers (a handler slower than
    ``8 * workers`` round trips, 20-30 ms with 8 workers on a local Redis, holds none). An
    explicit ``prefetch`` is the fixed number of entries in hand.
    """

    def __init__(self, workers: int, prefetch: int | None, lease: float) -> None:
        self.lock = threading.Lock()
        self.ready: queue.SimpleQueue[Delivery | Held | None] = queue.SimpleQueue()
        self.doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.reader_waiting = False
        self.owned: dict[str, Delivery] = {}  # entry id -> delivery, started, not settled
        self.ahead: deque[Held] = deque()  # read ahead, not taken, oldest first
        self.banded = 0  # entries of `ahead` outside the default priority band
        # Entries of `owned` whose outcome is on its way (a renewal refused for one of them
        # means it was settled meanwhile, not that its lease was lost).
        self.settling: set[str] = set()
        # Held entries started at hand-over, for the reader's next round trip to record, and
        # the entry ids of those whose start is not recorded yet (an outcome records it too).
        self.starts: deque[Delivery] = deque()
        self.unrecorded: set[str] = set()
        # Successes queued for the reader's next round trip (see `queue_ack`): while the
        # reader cycles, it records them in the same pipeline as its next read.
        self.acks: deque[tuple[Delivery, dict[str, Any]]] = deque()
        self.pipelining = False
        # The last progress each running attempt reported and not yet written (entry id ->
        # delivery, value): the maintenance thread writes them about once a second, the
        # outcome takes its attempt's (see `keep_progress`).
        self.progress: dict[str, tuple[Delivery, Progress]] = {}
        self.deleted_entries = 0  # pending entries whose stream entry was gone (counted, logged)
        self.consuming = False
        self.stopping = False
        self.workers = workers
        self.prefetch = prefetch
        #: A held entry older than this (seconds since its read) is handed back, never started:
        #: no consumer can have reclaimed it before a whole lease of idleness.
        self.max_hold = lease / 3
        self.round_trip = 0.0  # smoothed seconds per reader round trip
        self.handler_time: float | None = None  # smoothed seconds from hand-over to outcome
        self._began: dict[str, float] = {}  # entry id -> monotonic time of its hand-over
        self._ahead = self._target()

    # -- how much to read ------------------------------------------------------------------
    def ahead_target(self) -> int:
        """How many entries to hold unstarted beyond the idle workers' (see the class);
        recomputed once per round trip."""
        return self._ahead

    def _target(self) -> int:
        if self.prefetch is not None:
            return max(0, self.prefetch - self.workers)
        handler = self.handler_time
        if handler is None:
            return 0
        covered = self.workers * _ROUND_TRIPS_AHEAD * self.round_trip
        return min(self.workers, int(covered / max(handler, 1e-6) + 0.5))

    def busy(self) -> int:
        """Started deliveries not finished (running or waiting for a worker); successes
        queued for the next round trip are done (their workers are idle again)."""
        return len(self.owned) - len(self.acks)

    def idle(self) -> int:
        """Workers with nothing to run, started or held: entries to read and start now."""
        return max(0, self.workers - self.busy() - len(self.ahead))

    def capacity(self) -> int:
        """How many entries to read: the idle workers' plus the read-ahead's room."""
        return self.idle() + max(0, self._ahead - len(self.ahead))

    def measured_round_trip(self, seconds: float) -> None:
        """Fold one reader round trip into the average, and set the read-ahead for the next."""
        self.round_trip += _SMOOTHING * (seconds - self.round_trip)
        self._ahead = self._target()

    # -- the reader's side -----------------------------------------------------------------
    def ring(self) -> None:
        """Wake the reader if it waits for room or for starts or successes to record (one
        wake-up at a time: a reader that has one pending looks at everything when it wakes)."""
        if self.reader_waiting and self.doorbell.empty():
            self.doorbell.put(None)

    def hand_over(self, fresh: list[Delivery], held: list[Delivery], read_at: float) -> None:
        """Hold started deliveries and entries read ahead; wake a worker for each."""
        items: list[Delivery | Held] = list(fresh)
        with self.lock:
            for delivery in fresh:
                self.owned[delivery.ref[1]] = delivery
            for delivery in held:
                entry = Held(delivery, read_at)
                self.ahead.append(entry)
                items.append(entry)
                if entry.band != DEFAULT_BAND:
                    self.banded += 1
        for item in items:
            self.ready.put(item)

    def expired(self) -> list[Delivery]:
        """Take the held entries older than `max_hold` (to hand back)."""
        limit = time.monotonic() - self.max_hold
        out: list[Delivery] = []
        ahead = self.ahead
        if ahead and ahead[0].read_at < limit:
            with self.lock:
                while ahead and ahead[0].read_at < limit:
                    held = ahead.popleft()
                    held.taken = True
                    if held.band != DEFAULT_BAND:
                        self.banded -= 1
                    out.append(held.delivery)
        return out

    def take_buffered(self) -> list[Delivery]:
        """Everything no worker took yet: started deliveries waiting in `ready`, and every held
        entry (those a worker found too old included: they wait in `ahead` for the sweep)."""
        buffered = []
        with contextlib.suppress(queue.Empty):
            while True:
                item = self.ready.get_nowait()
                if isinstance(item, Delivery):
                    buffered.append(item)
        with self.lock:
            while self.ahead:
                held = self.ahead.popleft()
                held.taken = True
                buffered.append(held.delivery)
            self.banded = 0
        return buffered

    def take_starts(self) -> list[Delivery]:
        """The starts made at hand-over since the last round trip."""
        return _drain(self.starts)

    def recorded(self, deliveries: list[Delivery]) -> None:
        """Their starts were recorded (or refused: the entry is not ours any more)."""
        for delivery in deliveries:
            self.unrecorded.discard(delivery.ref[1])

    def take_acks(self) -> list[tuple[Delivery, dict[str, Any]]]:
        """The queued successes, taken for one round trip."""
        return _drain(self.acks)

    def requeue_acks(self, acks: list[tuple[Delivery, dict[str, Any]]]) -> None:
        """Put back queued successes a round trip could not record, first in line, in order."""
        self.acks.extendleft(reversed(acks))

    def requeue_starts(self, starts: list[Delivery]) -> None:
        """Put back starts a round trip could not record, first in line, in order."""
        self.starts.extendleft(reversed(starts))

    # -- the workers' side -----------------------------------------------------------------
    def take(self, item: Delivery | Held) -> Delivery | None:
        """The delivery a worker runs, or ``None`` if it was handed back meanwhile.

        A held entry is started here, at hand-over: fenced by its age (younger than
        `max_hold`, so no consumer can have reclaimed it), recorded ``running`` with the
        reader's next round trip (and its attempt count by the outcome whatever comes first).
        It is ``item``'s entry, or, when another worker took that one or held entries of
        several priority bands wait, the one first in line (`_first_in_line`): each `Held`
        taken from `ready` starts at most one entry, so none is left without one.
        """
        now = time.monotonic()
        if isinstance(item, Held):
            with self.lock:
                if item.taken or self.banded:
                    first = self._first_in_line(now)
                    if first is None:
                        return None
                    item = first
                if now - item.read_at > self.max_hold:
                    self.ring()  # the reader's sweep hands it back
                    return None
                item.taken = True
                self.ahead.remove(item)
                if item.band != DEFAULT_BAND:
                    self.banded -= 1
                delivery = item.delivery
                self.owned[delivery.ref[1]] = delivery
            self.unrecorded.add(delivery.ref[1])
            self.starts.append(delivery)
            self.ring()
        else:
            delivery = item
        self._began[delivery.ref[1]] = now
        return delivery

    def _first_in_line(self, now: float) -> Held | None:
        """The held entry to start next (lock held): the oldest of the highest priority band
        among those young enough to start, else the oldest (too old: the sweep takes it)."""
        ahead = self.ahead
        if not ahead:
            return None
        if not self.banded:
            return ahead[0]
        limit = now - self.max_hold
        best: Held | None = None
        for held in ahead:  # at most about `workers` entries
            if held.read_at >= limit and (best is None or held.band < best.band):
                best = held
        return best or ahead[0]

    def queue_ack(self, delivery: Delivery, op: dict[str, Any]) -> bool:
        """Queue a success for the reader's next round trip, if the reader is cycling."""
        with self.lock:
            if not self.pipelining:
                return False
            self.settling.add(delivery.ref[1])
            self.acks.append((delivery, op))
        self.ring()
        return True

    def keep_progress(self, delivery: Delivery, progress: Progress) -> bool:
        """Keep ``progress`` as ``delivery``'s value to write, replacing an unwritten one
        (that is the coalescing). False if the attempt is no longer held (settled, handed
        back): a late value is dropped here, before any fenced script would refuse it."""
        entry = delivery.ref[1]
        with self.lock:
            if self.owned.get(entry) is not delivery or entry in self.settling:
                return False
            self.progress[entry] = (delivery, progress)
        return True

    def take_progress(self, delivery: Delivery) -> Progress | None:
        """The attempt's unwritten progress, taken to go with its outcome (even while a flush
        is writing it: the outcome's copy is the one that must land)."""
        with self.lock:
            kept = self.progress.get(delivery.ref[1])
            if kept is None or kept[0] is not delivery:
                return None
            del self.progress[delivery.ref[1]]
        return kept[1]

    def dirty_progress(self) -> list[tuple[Delivery, Progress]]:
        """The unwritten progress of held attempts whose start is recorded (progress.lua
        writes only to a running record; the others wait for the next flush or go with the
        outcome). Left in place until `progress_written`: an outcome recorded meanwhile
        still takes the value."""
        with self.lock:
            return [
                kept
                for entry, kept in self.progress.items()
                if entry not in self.unrecorded and self.owned.get(entry) is kept[0]
            ]

    def progress_written(self, written: list[tuple[Delivery, Progress]]) -> None:
        """Forget the values a flush wrote (or that were refused), unless replaced since."""
        with self.lock:
            for kept in written:
                entry = kept[0].ref[1]
                if self.progress.get(entry) is kept:
                    del self.progress[entry]

    def settling_now(self, delivery: Delivery) -> None:
        """Its outcome is being recorded (renewals refused from now on are no lost lease)."""
        self.settling.add(delivery.ref[1])

    def forget(self, delivery: Delivery) -> None:
        """Stop holding ``delivery`` (its outcome recorded, refused or given up)."""
        entry = delivery.ref[1]
        began = self._began.pop(entry, None)
        if began is not None:
            took = time.monotonic() - began
            handler = self.handler_time
            self.handler_time = took if handler is None else handler + _SMOOTHING * (took - handler)
        with self.lock:
            # Only this attempt: a newer attempt of the same entry (claimed back) keeps renewing.
            current = self.owned.get(entry)
            if current is delivery:
                del self.owned[entry]
            if current is delivery or current is None:
                self.settling.discard(entry)
                self.unrecorded.discard(entry)
                kept = self.progress.get(entry)
                if kept is not None and kept[0] is delivery:
                    self.progress.pop(entry, None)
        self.ring()

    # -- what maintenance reads ------------------------------------------------------------
    def holds(self, delivery: Delivery) -> bool:
        """True while ``delivery`` is held and no outcome for it is on its way: a renewal
        refused then means the lease was lost, not that the entry was settled meanwhile."""
        entry = delivery.ref[1]
        with self.lock:
            return self.owned.get(entry) is delivery and entry not in self.settling

    def held(self) -> list[Delivery]:
        """Every started delivery held now (to renew)."""
        with self.lock:
            return list(self.owned.values())

    def drop(self, deliveries: list[Delivery]) -> None:
        """Stop holding deliveries handed back unrun."""
        with self.lock:
            for delivery in deliveries:
                self.owned.pop(delivery.ref[1], None)


def _drain(items: deque[Any]) -> list[Any]:
    taken: list[Any] = []
    with contextlib.suppress(IndexError):
        while True:  # popleft is atomic: one appended meanwhile is taken now or next time
            taken.append(items.popleft())
    return taken
