"""In-process TTL cache: single-flight loading, LRU bound, optional stale-while-revalidate."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar, overload

__all__ = ["CacheStats", "TTLCache"]

logger = logging.getLogger("csjd_core.cache")  # its name before the move: kept for log configs

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

# What the locked part of a miss decided (see `TTLCache._begin`).
_SERVE, _REFRESH, _JOIN, _LEAD = range(4)


def _duration(value: object, name: str, *, allow_zero: bool) -> float:
    """Seconds from a number or `timedelta`; infinity allowed (never expires)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be seconds (a number or timedelta), got {value!r}")
    result = float(value)
    if math.isnan(result) or result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """Counters of one `TTLCache` since it was created (`clear` does not reset them).

    Args:
        hits: lookups answered from the cache without waiting (fresh, or stale while a
            refresh runs).
        misses: lookups that found no usable value (they started or joined a load, or
            `get` returned the default).
        loads: loader calls started (foreground and background refreshes).
        errors: loader calls that raised.
        evictions: entries dropped to stay within ``max_size``.
    """

    hits: int
    misses: int
    loads: int
    errors: int
    evictions: int


class _Entry(Generic[V]):
    """A stored value; never mutated, replaced whole (so lock-free readers see it consistent)."""

    __slots__ = ("fresh_until", "stale_until", "value")

    def __init__(self, value: V, fresh_until: float, stale_until: float) -> None:
        self.value = value
        self.fresh_until = fresh_until
        self.stale_until = stale_until


class _Flight(Generic[V]):
    """One running load of a key; every caller of that key waits on ``future``."""

    __slots__ = ("background", "future", "loop", "owner_thread", "task")

    def __init__(self, *, background: bool) -> None:
        self.background = background
        self.future: Future[V] = Future()
        # RUNNING: a waiter that is cancelled (asyncio) cannot cancel the shared future.
        self.future.set_running_or_notify_cancel()
        self.owner_thread: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None


class TTLCache(Generic[K, V]):
    """A bounded, thread- and asyncio-safe cache whose loads are single-flight per key.

    However many threads or coroutines ask for a missing key at once, the loader runs once
    and all of them get its result (or its exception, which is never cached). A hit takes
    no lock: one dict lookup, one clock read and an LRU touch (each atomic under the GIL).

    Args:
        ttl: seconds a loaded value stays fresh, counted from the end of its load
            (``math.inf``: until evicted or invalidated).
        max_size: at most this many entries; the least recently used is evicted first.
        clock: monotonic time source in seconds (inject a fake one in tests).
        stale_while_revalidate: ``False`` (default) or seconds past ``ttl`` during which
            the old value is still served while exactly one refresh runs in the
            background; a failed refresh is logged and counted, the old value kept.

    Raises:
        TypeError: a duration that is not a number or `timedelta`, a ``max_size`` that is
            not an int, or a ``clock`` that is not callable.
        ValueError: a duration or ``max_size`` out of range.
    """

    def __init__(
        self,
        *,
        ttl: float | timedelta,
        max_size: int,
        clock: Callable[[], float] = time.monotonic,
        stale_while_revalidate: float | timedelta | bool = False,
    ) -> None:
        self._ttl = _duration(ttl, "TTLCache.ttl", allow_zero=False)
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"TTLCache.max_size must be an int, got {max_size!r}")
        if max_size < 1:
            raise ValueError(f"TTLCache.max_size must be >= 1, got {max_size!r}")
        if not callable(clock):
            raise TypeError(f"TTLCache.clock must be callable, got {clock!r}")
        if stale_while_revalidate is True:
            raise TypeError("TTLCache.stale_while_revalidate must be False or seconds, got True")
        swr = stale_while_revalidate or 0.0
        self._swr = _duration(swr, "TTLCache.stale_while_revalidate", allow_zero=True)
        self._max_size = max_size
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._flights: dict[K, _Flight[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Hits are counted without the lock: next() on a count is one C call, atomic
        # under the GIL, where ``self._hits += 1`` could lose increments.
        self._hit_count = itertools.count()
        self._hit_reads = 0
        self._misses = 0
        self._loads = 0
        self._errors = 0
        self._evictions = 0

    def get_or_load(self, key: K, loader: Callable[[], V]) -> V:
        """The fresh value of ``key``, calling ``loader()`` once if it is missing or expired.

        Args:
            key: a hashable key.
            loader: called with no arguments, in this thread, by the first caller of a
                load; concurrent callers of the same key wait for its outcome.

        Returns:
            The cached or freshly loaded value (the stale one during stale-while-revalidate).

        Raises:
            Exception: whatever the loader raised, to every caller waiting on that load.
            RuntimeError: the loader asked for its own key (it would wait for itself), or
                this thread runs the event loop whose coroutine is loading the key.
        """
        entry = self._data.get(key)
        if entry is not None and self._clock() < entry.fresh_until:
            # Not contextlib.suppress: on this hot path it would cost more than the lookup.
            try:  # noqa: SIM105
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread since the lookup
                pass
            next(self._hit_count)
            return entry.value
        kind, stale, flight = self._begin(key)
        if kind == _SERVE:
            assert stale is not None
            return stale.value
        assert flight is not None
        if kind == _REFRESH:
            assert stale is not None
            self._refresh_in_thread(key, flight, loader)
            return stale.value
        if kind == _LEAD:
            return self._run(key, flight, loader)
        if flight.owner_thread == threading.get_ident():
            raise RuntimeError(f"TTLCache loader for key {key!r} asked for its own key")
        if flight.loop is not None and _running_loop() is flight.loop:
            raise RuntimeError(
                f"TTLCache.get_or_load({key!r}) would block the event loop that is loading it; "
                "use aget_or_load"
            )
        return flight.future.result()

    async def aget_or_load(self, key: K, loader: Callable[[], Awaitable[V]]) -> V:
        """Async `get_or_load`: ``await loader()`` runs once per key among coroutines and threads.

        Args:
            key: a hashable key.
            loader: a coroutine function called with no arguments; it runs as a task of the
                first caller's event loop, so cancelling a waiter never cancels the load.

        Returns:
            The cached or freshly loaded value (the stale one during stale-while-revalidate).

        Raises:
            Exception: whatever the loader raised, to every caller waiting on that load.
            RuntimeError: the loader asked for its own key.
        """
        entry = self._data.get(key)
        if entry is not None and self._clock() < entry.fresh_until:
            try:  # noqa: SIM105 (hot path, see get_or_load)
                self._data.move_to_end(key)
            except KeyError:
                pass
            next(self._hit_count)
            return entry.value
        kind, stale, flight = self._begin(key)
        if kind == _SERVE:
            assert stale is not None
            return stale.value
        assert flight is not None
        if kind in (_REFRESH, _LEAD):
            loop = asyncio.get_running_loop()
            flight.loop = loop
            task = loop.create_task(self._arun(key, flight, loader))
            flight.task = task
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)
            if kind == _REFRESH:
                assert stale is not None
                return stale.value
        elif flight.task is not None and flight.task is asyncio.current_task():
            raise RuntimeError(f"TTLCache loader for key {key!r} asked for its own key")
        return await asyncio.wrap_future(flight.future)

    @overload
    def get(self, key: K) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The fresh value of ``key`` without loading (a stale value counts as absent).

        Args:
            key: a hashable key.
            default: returned when there is no fresh value.

        Returns:
            The fresh value, or ``default``.
        """
        entry = self._data.get(key)
        if entry is not None and self._clock() < entry.fresh_until:
            try:  # noqa: SIM105 (hot path, see get_or_load)
                self._data.move_to_end(key)
            except KeyError:
                pass
            next(self._hit_count)
            return entry.value
        with self._lock:
            self._misses += 1
        return default

    def invalidate(self, key: K) -> bool:
        """Forget ``key``: the next lookup loads it again.

        A load of ``key`` already running still answers its own waiters, but its value is
        not stored.

        Args:
            key: a hashable key.

        Returns:
            True when a stored entry was removed.
        """
        with self._lock:
            self._flights.pop(key, None)
            return self._data.pop(key, None) is not None

    def clear(self) -> None:
        """Forget every entry (running loads answer their waiters but store nothing)."""
        with self._lock:
            self._data.clear()
            self._flights.clear()

    def stats(self) -> CacheStats:
        """A snapshot of the counters.

        Returns:
            A frozen `CacheStats`.
        """
        with self._lock:
            # Each read advances the count by one; subtract the earlier reads.
            hits = next(self._hit_count) - self._hit_reads
            self._hit_reads += 1
            return CacheStats(
                hits=hits,
                misses=self._misses,
                loads=self._loads,
                errors=self._errors,
                evictions=self._evictions,
            )

    def __len__(self) -> int:
        """Entries held, including expired ones not yet dropped (they go when next looked up
        or evicted)."""
        return len(self._data)

    def __repr__(self) -> str:
        return f"<TTLCache ttl={self._ttl} max_size={self._max_size} size={len(self._data)}>"

    def _begin(self, key: K) -> tuple[int, _Entry[V] | None, _Flight[V] | None]:
        """Decide, under the lock, how a lookup that missed the fast path proceeds."""
        with self._lock:
            now = self._clock()
            entry = self._data.get(key)
            if entry is not None:
                if now < entry.stale_until:
                    self._data.move_to_end(key)
                    next(self._hit_count)
                    if now < entry.fresh_until or key in self._flights:
                        return _SERVE, entry, None
                    return _REFRESH, entry, self._new_flight(key, background=True)
                del self._data[key]
            self._misses += 1
            flight = self._flights.get(key)
            if flight is not None:
                return _JOIN, None, flight
            return _LEAD, None, self._new_flight(key, background=False)

    def _new_flight(self, key: K, *, background: bool) -> _Flight[V]:
        flight: _Flight[V] = _Flight(background=background)
        self._flights[key] = flight
        self._loads += 1
        return flight

    def _run(self, key: K, flight: _Flight[V], loader: Callable[[], V]) -> V:
        flight.owner_thread = threading.get_ident()
        try:
            value = loader()
        except BaseException as exc:
            self._fail(key, flight, exc)
            raise
        self._succeed(key, flight, value)
        return value

    def _refresh_in_thread(self, key: K, flight: _Flight[V], loader: Callable[[], V]) -> None:
        def refresh() -> None:
            with contextlib.suppress(BaseException):  # `_fail` has logged and counted it
                self._run(key, flight, loader)

        thread = threading.Thread(target=refresh, name="csjd-cache-refresh", daemon=True)
        try:
            thread.start()
        except BaseException as exc:  # e.g. "can't start new thread": keep serving stale
            self._fail(key, flight, exc)
            if not isinstance(exc, Exception):
                raise

    async def _arun(self, key: K, flight: _Flight[V], loader: Callable[[], Awaitable[V]]) -> None:
        try:
            value = await loader()
        except BaseException as exc:
            self._fail(key, flight, exc)
            if not isinstance(exc, Exception):
                raise  # cancellation and interpreter exits keep propagating
            return
        self._succeed(key, flight, value)

    def _succeed(self, key: K, flight: _Flight[V], value: V) -> None:
        with self._lock:
            if self._flights.get(key) is flight:  # not invalidated or cleared meanwhile
                del self._flights[key]
                now = self._clock()
                fresh_until = now + self._ttl
                self._data[key] = _Entry(value, fresh_until, fresh_until + self._swr)
                self._data.move_to_end(key)
                while len(self._data) > self._max_size:
                    self._data.popitem(last=False)
                    self._evictions += 1
        flight.future.set_result(value)

    def _fail(self, key: K, flight: _Flight[V], exc: BaseException) -> None:
        with self._lock:
            self._errors += 1
            if self._flights.get(key) is flight:
                del self._flights[key]
        if flight.background:
            logger.warning(
                "cache refresh failed key=%r error=%s; serving the stale value",
                key,
                type(exc).__name__,
                exc_info=exc,
            )
        flight.future.set_exception(exc)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
