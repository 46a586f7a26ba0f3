"""Coalesce many single-key loads into few ``batch_fn(keys)`` calls: the N+1 fix.

The missing-key rule: a key is answered when ``key in mapping`` is true for the mapping that
``batch_fn`` returned; otherwise that key's callers (and only they) get ``KeyError(key)``.
Extra keys in the mapping are ignored. ``defaultdict`` defaults are not consulted.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future
from datetime import timedelta
from typing import Any, Generic, TypeVar

__all__ = ["AsyncBatchLoader", "BatchLoader"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _settings(owner: str, max_batch: object, wait: object) -> tuple[int, float]:
    """Validated ``(max_batch, wait seconds)``."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int):
        raise TypeError(f"{owner}.max_batch must be an int, got {max_batch!r}")
    if max_batch < 1:
        raise ValueError(f"{owner}.max_batch must be >= 1, got {max_batch!r}")
    seconds = wait.total_seconds() if isinstance(wait, timedelta) else wait
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{owner}.wait must be seconds (a number or timedelta), got {wait!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{owner}.wait must be a finite number of seconds >= 0, got {wait!r}")
    return max_batch, float(seconds)


def _not_a_mapping(result: object) -> TypeError:
    return TypeError(f"batch_fn must return a mapping of key to value, got {type(result).__name__}")


def _value_for(result: Mapping[K, V], key: K) -> V:
    """``result[key]`` under the missing-key rule (membership decides, not ``__missing__``)."""
    if key not in result:
        raise KeyError(key)
    return result[key]


class _Window(Generic[K, V]):
    """The keys asked for by `BatchLoader.load` since the last batch went out."""

    __slots__ = ("closed", "futures")

    def __init__(self) -> None:
        self.futures: dict[K, Future[V]] = {}
        self.closed = threading.Event()


class _Pending(Generic[K, V]):
    """Keys one thread has deferred and not yet dispatched."""

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: dict[K, _DeferredFuture[K, V]] = {}


class _DeferredFuture(Future[V], Generic[K, V]):
    """A future from `BatchLoader.defer`: waiting on it dispatches its batch if nobody has."""

    def __init__(self, loader: BatchLoader[K, V], pending: _Pending[K, V], key: K) -> None:
        super().__init__()
        self._loader = loader
        self._pending = pending
        self._key = key

    def result(self, timeout: float | None = None) -> V:
        self._loader._dispatch_if_pending(self._pending, self._key, self)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._loader._dispatch_if_pending(self._pending, self._key, self)
        return super().exception(timeout)


class BatchLoader(Generic[K, V]):
    """Turn single-key loads into calls of ``batch_fn(keys)`` with at most ``max_batch`` keys.

    Two ways in: `load` from many threads (calls within ``wait`` seconds share one batch),
    and `defer` + `dispatch` (or `load_many`) from one thread. Keys are deduplicated within
    a batch. Results follow the missing-key rule of this module.

    Design: no helper thread. The first `load` of a window is its leader: it waits up to
    ``wait`` seconds (woken early when the window fills), closes the window and calls
    ``batch_fn`` itself; the `load` that brings a window to ``max_batch`` keys closes and
    dispatches it at once. Others block on a future. So nothing has to be started, stopped
    or joined at exit or after ``fork``, no thread is spawned per load, and ``batch_fn``
    always runs in a caller's thread, with that thread's resources (e.g. a Django DB
    connection, closed by the request's normal cleanup). A window, once opened, is always
    dispatched, even if its leader is interrupted while waiting.

    Args:
        batch_fn: called with a list of distinct keys; returns a mapping key -> value.
        max_batch: most keys in one call.
        wait: seconds the leader of a `load` window waits for more keys.

    Raises:
        TypeError: ``max_batch`` not an int or ``wait`` not a number or `timedelta`.
        ValueError: ``max_batch`` < 1 or ``wait`` negative or infinite.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[K]], Mapping[K, V]],
        *,
        max_batch: int = 100,
        wait: float | timedelta = 0.002,
    ) -> None:
        if not callable(batch_fn):
            raise TypeError(f"BatchLoader.batch_fn must be callable, got {batch_fn!r}")
        self._batch_fn = batch_fn
        self._max_batch, self._wait = _settings("BatchLoader", max_batch, wait)
        self._lock = threading.Lock()
        self._window: _Window[K, V] | None = None
        self._local = threading.local()

    def load(self, key: K) -> V:
        """The value of ``key``, fetched together with keys other threads ask for meanwhile.

        Args:
            key: a hashable key.

        Returns:
            ``batch_fn``'s value for ``key``.

        Raises:
            KeyError: ``batch_fn`` returned no entry for ``key``.
            TypeError: ``batch_fn`` returned something that is not a mapping.
            Exception: whatever ``batch_fn`` raised, to every caller of that batch.
        """
        with self._lock:
            window = self._window
            leader = window is None
            if window is None:
                window = self._window = _Window()
            future = window.futures.get(key)
            if future is None:
                future = window.futures[key] = Future()
            full = len(window.futures) >= self._max_batch
            if full:
                self._window = None
        if full:
            window.closed.set()
            self._call_batch(window.futures)
        elif leader:
            self._lead(window)
        return future.result()

    def defer(self, key: K) -> Future[V]:
        """Queue ``key`` for this thread's next `dispatch` and return its future.

        Calling ``result()`` or ``exception()`` on the future dispatches the queue if nobody
        has yet, so a forgotten `dispatch` cannot hang. Deferring a key twice returns the
        same future; a cancelled future's key is left out of the batch.

        Args:
            key: a hashable key.

        Returns:
            A `concurrent.futures.Future` resolved by the batch (or with `KeyError`).
        """
        pending = self._pending()
        with self._lock:
            future = pending.futures.get(key)
            if future is None or future.cancelled():
                future = pending.futures[key] = _DeferredFuture(self, pending, key)
            return future

    def dispatch(self) -> int:
        """Send every key this thread deferred, in calls of at most ``max_batch`` keys.

        Returns:
            How many ``batch_fn`` calls were made.

        Raises:
            BaseException: only an interrupt (``KeyboardInterrupt``...) raised by ``batch_fn``;
                ordinary errors go to the futures.
        """
        return self._dispatch(self._pending())

    def load_many(self, keys: Iterable[K]) -> list[V]:
        """The values of ``keys``, in order, with the fewest ``batch_fn`` calls.

        Also dispatches any keys this thread deferred before.

        Args:
            keys: hashable keys (duplicates allowed; each is fetched once).

        Returns:
            One value per key, in the order given.

        Raises:
            KeyError: for the first key (in order) that ``batch_fn`` did not return.
            TypeError: ``batch_fn`` returned something that is not a mapping.
            Exception: whatever ``batch_fn`` raised.
        """
        futures = [self.defer(key) for key in keys]
        self.dispatch()
        return [future.result() for future in futures]

    def _pending(self) -> _Pending[K, V]:
        pending: _Pending[K, V] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = _Pending()
        return pending

    def _lead(self, window: _Window[K, V]) -> None:
        try:
            window.closed.wait(self._wait)
        finally:
            with self._lock:
                ours = self._window is window
                if ours:
                    self._window = None
            if ours:
                self._call_batch(window.futures)

    def _dispatch_if_pending(
        self, pending: _Pending[K, V], key: K, future: _DeferredFuture[K, V]
    ) -> None:
        if not future.done() and pending.futures.get(key) is future:
            self._dispatch(pending)

    def _dispatch(self, pending: _Pending[K, V]) -> int:
        with self._lock:
            taken, pending.futures = pending.futures, {}
        live = [(k, f) for k, f in taken.items() if f.set_running_or_notify_cancel()]
        calls = 0
        try:
            for start in range(0, len(live), self._max_batch):
                self._call_batch(dict(live[start : start + self._max_batch]))
                calls += 1
        finally:
            for _, future in live:  # an interrupt stopped the loop: never leave one hanging
                if not future.done():
                    future.set_exception(RuntimeError("BatchLoader dispatch was interrupted"))
        return calls

    def _call_batch(self, futures: Mapping[K, Future[V]]) -> None:
        for future in futures.values():
            if not future.running():  # `load` futures start PENDING, deferred ones RUNNING
                future.set_running_or_notify_cancel()
        try:
            result = self._batch_fn(list(futures))
            if not isinstance(result, Mapping):
                raise _not_a_mapping(result)
        except BaseException as exc:
            for future in futures.values():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        try:
            for key, future in futures.items():
                try:
                    value = _value_for(result, key)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(value)
        finally:
            for future in futures.values():  # an interrupt in a mapping's __getitem__
                if not future.done():
                    future.set_exception(RuntimeError("BatchLoader batch was interrupted"))


class _AsyncWindow(Generic[K, V]):
    """The keys asked for on one event loop since its last batch went out."""

    __slots__ = ("futures", "handle")

    def __init__(self) -> None:
        self.futures: dict[K, asyncio.Future[V]] = {}
        self.handle: asyncio.Handle | None = None


class AsyncBatchLoader(Generic[K, V]):
    """`BatchLoader` for asyncio: loads awaited within ``wait`` seconds share one batch.

    With ``wait=0`` a batch collects what the coroutines ask for within one event loop
    iteration. Each event loop has its own window; the batch runs as a task, so cancelling
    one caller never cancels the batch or other callers. Results follow the missing-key rule
    of this module.

    Args:
        batch_fn: coroutine function called with a list of distinct keys; returns a mapping.
        max_batch: most keys in one call; a full window is sent at once.
        wait: seconds a window stays open after its first key.

    Raises:
        TypeError: ``max_batch`` not an int or ``wait`` not a number or `timedelta`.
        ValueError: ``max_batch`` < 1 or ``wait`` negative or infinite.
    """

    def __init__(
        self,
        batch_fn: Callable[[list[K]], Awaitable[Mapping[K, V]]],
        *,
        max_batch: int = 100,
        wait: float | timedelta = 0.002,
    ) -> None:
        if not callable(batch_fn):
            raise TypeError(f"AsyncBatchLoader.batch_fn must be callable, got {batch_fn!r}")
        self._batch_fn = batch_fn
        self._max_batch, self._wait = _settings("AsyncBatchLoader", max_batch, wait)
        # Each loop touches only its own key; single dict operations are atomic.
        self._windows: dict[asyncio.AbstractEventLoop, _AsyncWindow[K, V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self, key: K) -> V:
        """The value of ``key``, fetched together with keys other coroutines ask for meanwhile.

        Args:
            key: a hashable key.

        Returns:
            ``batch_fn``'s value for ``key``.

        Raises:
            KeyError: ``batch_fn`` returned no entry for ``key``.
            TypeError: ``batch_fn`` returned something that is not a mapping.
            Exception: whatever ``batch_fn`` raised, to every caller of that batch.
        """
        future = self._enqueue(asyncio.get_running_loop(), key)
        return await asyncio.shield(future)

    async def load_many(self, keys: Iterable[K]) -> list[V]:
        """The values of ``keys``, in order; sends the current window at once.

        Args:
            keys: hashable keys (duplicates allowed; each is fetched once).

        Returns:
            One value per key, in the order given.

        Raises:
            KeyError: for the first key (in order) that ``batch_fn`` did not return.
            TypeError: ``batch_fn`` returned something that is not a mapping.
            Exception: whatever ``batch_fn`` raised.
        """
        loop = asyncio.get_running_loop()
        futures = [self._enqueue(loop, key) for key in keys]
        window = self._windows.get(loop)
        if window is not None:
            self._flush(loop, window)
        return [await asyncio.shield(future) for future in futures]

    def _enqueue(self, loop: asyncio.AbstractEventLoop, key: K) -> asyncio.Future[V]:
        window = self._windows.get(loop)
        if window is None:
            window = self._windows[loop] = _AsyncWindow()
            if self._wait > 0:
                window.handle = loop.call_later(self._wait, self._flush, loop, window)
            else:
                window.handle = loop.call_soon(self._flush, loop, window)
        future = window.futures.get(key)
        if future is None:
            future = window.futures[key] = loop.create_future()
            if len(window.futures) >= self._max_batch:
                self._flush(loop, window)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop, window: _AsyncWindow[K, V]) -> None:
        if self._windows.get(loop) is not window:
            return  # already sent (full, or by load_many)
        del self._windows[loop]
        if window.handle is not None:
            window.handle.cancel()
        task = loop.create_task(self._call_batch(window.futures))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _call_batch(self, futures: dict[K, asyncio.Future[V]]) -> None:
        try:
            result = await self._batch_fn(list(futures))
            if not isinstance(result, Mapping):
                raise _not_a_mapping(result)
        except asyncio.CancelledError:
            for future in futures.values():
                future.cancel()
            raise
        except BaseException as exc:
            for future in futures.values():
                _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, future in futures.items():
            try:
                value = _value_for(result, key)
            except Exception as exc:
                _fail(future, exc)
            else:
                future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    future.set_exception(exc)
    # Mark it retrieved: callers that gave up (cancelled) must not leave
    # "Future exception was never retrieved" in the log.
    future.exception()
