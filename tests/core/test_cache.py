"""TTLCache: single flight, expiry, errors, LRU, stale-while-revalidate, asyncio."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csjd_core.utilities.cache import CacheStats, TTLCache

DEADLINE = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        pause.wait(0.001)


class FakeClock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingLoader:
    """A loader that counts calls, can block on an event and can fail."""

    def __init__(self, value: object = "v", *, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
        assert self.release.wait(DEADLINE), "loader never released"
        if self.error is not None:
            raise self.error
        return self.value


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive()


def stampede(cache: TTLCache[str, object], loader: CountingLoader, n: int) -> list[object]:
    """``n`` threads ask for one key at once while the loader is held; returns outcomes."""
    loader.release.clear()
    barrier = threading.Barrier(n)
    outcomes: list[object] = [None] * n
    misses_before = cache.stats().misses

    def ask(i: int) -> None:
        barrier.wait(DEADLINE)
        try:
            outcomes[i] = cache.get_or_load("k", loader)
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    # Every thread has missed (and so started or joined the load) before it may finish.
    wait_until(lambda: cache.stats().misses - misses_before == n)
    loader.release.set()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive()
    return outcomes


def test_stampede_of_100_threads_calls_the_loader_once() -> None:
    cache: TTLCache[str, object] = TTLCache(ttl=60, max_size=10)
    loader = CountingLoader("value")
    outcomes = stampede(cache, loader, 100)
    assert loader.calls == 1
    assert outcomes == ["value"] * 100
    stats = cache.stats()
    assert (stats.loads, stats.misses, stats.errors) == (1, 100, 0)


def test_loader_error_reaches_every_waiter_and_is_not_cached() -> None:
    cache: TTLCache[str, object] = TTLCache(ttl=60, max_size=10)
    boom = ValueError("backend down")
    loader = CountingLoader(error=boom)
    outcomes = stampede(cache, loader, 20)
    assert loader.calls == 1
    assert all(outcome is boom for outcome in outcomes)
    assert cache.stats().errors == 1
    assert len(cache) == 0
    loader.error = None
    assert cache.get_or_load("k", loader) == "v"
    assert loader.calls == 2


def test_expiry_follows_the_injected_clock() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(ttl=10, max_size=10, clock=clock)
    calls: list[float] = []

    def loader() -> int:
        calls.append(clock())
        clock.advance(3)  # a slow load: freshness counts from its end
        return len(calls)

    assert cache.get_or_load("k", loader) == 1
    clock.advance(9.5)
    assert cache.get_or_load("k", loader) == 1
    assert cache.get("k") == 1
    clock.advance(0.5)
    assert cache.get("k") is None
    assert cache.get_or_load("k", loader) == 2
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.loads) == (2, 2 + 1, 2)


def test_timedelta_ttl_is_seconds() -> None:
    clock = FakeClock()
    cache: TTLCache[str, str] = TTLCache(ttl=timedelta(minutes=1), max_size=1, clock=clock)
    cache.get_or_load("k", lambda: "a")
    clock.advance(59)
    assert cache.get("k") == "a"
    clock.advance(1)
    assert cache.get("k", "gone") == "gone"


def test_lru_eviction_drops_the_least_recently_used_and_counts() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=2)
    cache.get_or_load("a", lambda: "A")
    cache.get_or_load("b", lambda: "B")
    assert cache.get_or_load("a", lambda: "unused") == "A"  # a is now most recent
    cache.get_or_load("c", lambda: "C")
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") == "A"
    assert cache.get("c") == "C"
    assert cache.stats().evictions == 1


def test_invalidate_and_clear() -> None:
    cache: TTLCache[str, int] = TTLCache(ttl=60, max_size=10)
    n = iter(range(100))
    cache.get_or_load("a", lambda: next(n))
    cache.get_or_load("b", lambda: next(n))
    assert cache.invalidate("a") is True
    assert cache.invalidate("a") is False
    assert cache.get_or_load("a", lambda: next(n)) == 2
    cache.clear()
    assert len(cache) == 0
    assert cache.get_or_load("b", lambda: next(n)) == 3


def test_invalidate_during_a_load_answers_its_waiters_but_stores_nothing() -> None:
    cache: TTLCache[str, object] = TTLCache(ttl=60, max_size=10)
    loader = CountingLoader("old")
    loader.release.clear()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(cache.get_or_load("k", loader)))
    thread.start()
    wait_until(lambda: loader.calls == 1)
    cache.invalidate("k")
    loader.release.set()
    thread.join(DEADLINE)
    assert result == ["old"]
    assert cache.get("k") is None


def test_a_loader_asking_for_its_own_key_fails_instead_of_deadlocking() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=10)

    def loader() -> str:
        return cache.get_or_load("k", loader)

    with pytest.raises(RuntimeError, match="its own key"):
        cache.get_or_load("k", loader)
    assert cache.get_or_load("k", lambda: "ok") == "ok"


def test_stats_is_a_frozen_snapshot() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=10)
    cache.get_or_load("k", lambda: "v")
    cache.get_or_load("k", lambda: "v")
    first = cache.stats()
    assert first == CacheStats(hits=1, misses=1, loads=1, errors=0, evictions=0)
    assert cache.stats() == first  # reading does not count as a hit
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.hits = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"ttl": 0, "max_size": 1}, ValueError, "ttl"),
        ({"ttl": -1, "max_size": 1}, ValueError, "ttl"),
        ({"ttl": math.nan, "max_size": 1}, ValueError, "ttl"),
        ({"ttl": "10", "max_size": 1}, TypeError, "ttl"),
        ({"ttl": True, "max_size": 1}, TypeError, "ttl"),
        ({"ttl": 1, "max_size": 0}, ValueError, "max_size"),
        ({"ttl": 1, "max_size": 2.0}, TypeError, "max_size"),
        ({"ttl": 1, "max_size": 1, "clock": 5}, TypeError, "clock"),
        ({"ttl": 1, "max_size": 1, "stale_while_revalidate": -1}, ValueError, "stale_while"),
        ({"ttl": 1, "max_size": 1, "stale_while_revalidate": True}, TypeError, "stale_while"),
    ],
)
def test_constructor_names_the_bad_field(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=f"TTLCache.{field}"):
        TTLCache(**kwargs)  # type: ignore[arg-type]


def test_stale_while_revalidate_serves_stale_during_exactly_one_refresh() -> None:
    clock = FakeClock()
    cache: TTLCache[str, object] = TTLCache(
        ttl=10, max_size=10, clock=clock, stale_while_revalidate=5
    )
    cache.get_or_load("k", lambda: "v1")
    clock.advance(12)  # stale, inside the 5 s grace
    refresh = CountingLoader("v2")
    refresh.release.clear()
    barrier = threading.Barrier(20)
    served: list[object] = []

    def ask(_: int) -> None:
        barrier.wait(DEADLINE)
        served.append(cache.get_or_load("k", refresh))

    run_threads(20, ask)  # nobody waits for the held refresh
    assert served == ["v1"] * 20
    assert cache.stats().loads == 2
    wait_until(lambda: refresh.calls == 1)
    refresh.release.set()
    wait_until(lambda: cache.get("k") == "v2")
    assert refresh.calls == 1
    assert cache.stats().loads == 2


def test_stale_while_revalidate_ends_with_the_grace_period() -> None:
    clock = FakeClock()
    cache: TTLCache[str, str] = TTLCache(
        ttl=10, max_size=10, clock=clock, stale_while_revalidate=timedelta(seconds=5)
    )
    cache.get_or_load("k", lambda: "v1")
    clock.advance(15)
    assert cache.get_or_load("k", lambda: "v2") == "v2"  # a plain synchronous load


def test_failed_background_refresh_is_logged_counted_and_keeps_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    cache: TTLCache[str, object] = TTLCache(
        ttl=10, max_size=10, clock=clock, stale_while_revalidate=5
    )
    cache.get_or_load("k", lambda: "v1")
    clock.advance(11)
    failing = CountingLoader(error=OSError("db down"))
    with caplog.at_level(logging.WARNING, logger="csjd_core.cache"):
        assert cache.get_or_load("k", failing) == "v1"
        wait_until(lambda: any("refresh failed" in r.getMessage() for r in caplog.records))
    wait_until(lambda: cache.stats().errors == 1)
    assert caplog.records[0].exc_info is not None
    assert cache.get_or_load("k", CountingLoader("v2")) == "v1"  # still stale, retried
    wait_until(lambda: cache.get("k") == "v2")


def test_async_single_flight_among_coroutines() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=10)
    calls = 0

    async def main() -> list[str]:
        release = asyncio.Event()

        async def loader() -> str:
            nonlocal calls
            calls += 1
            await release.wait()
            return "v"

        waiters = [asyncio.ensure_future(cache.aget_or_load("k", loader)) for _ in range(50)]
        while cache.stats().misses < 50:
            await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*waiters)

    assert asyncio.run(main()) == ["v"] * 50
    assert calls == 1
    assert cache.stats().loads == 1


def test_async_error_reaches_all_and_is_not_cached() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=10)

    async def main() -> None:
        async def failing() -> str:
            await asyncio.sleep(0)
            raise KeyError("gone")

        async def working() -> str:
            return "v"

        results = await asyncio.gather(
            *(cache.aget_or_load("k", failing) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(r, KeyError) for r in results)
        assert await cache.aget_or_load("k", working) == "v"

    asyncio.run(main())
    stats = cache.stats()
    assert (stats.loads, stats.errors) == (2, 1)


def test_cancelling_the_first_caller_does_not_cancel_the_load() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=10)

    async def main() -> str:
        release = asyncio.Event()

        async def loader() -> str:
            await release.wait()
            return "v"

        first = asyncio.ensure_future(cache.aget_or_load("k", loader))
        second = asyncio.ensure_future(cache.aget_or_load("k", loader))
        while cache.stats().misses < 2:
            await asyncio.sleep(0)
        first.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()) == "v"
    assert cache.stats().loads == 1


def test_threads_join_a_coroutine_flight() -> None:
    cache: TTLCache[str, object] = TTLCache(ttl=60, max_size=10)
    thread_loader = CountingLoader("from-thread")

    async def main() -> tuple[object, object]:
        release = asyncio.Event()

        async def loader() -> object:
            await release.wait()
            return "from-coroutine"

        leader = asyncio.ensure_future(cache.aget_or_load("k", loader))
        while cache.stats().misses < 1:
            await asyncio.sleep(0)
        follower = asyncio.ensure_future(asyncio.to_thread(cache.get_or_load, "k", thread_loader))
        while cache.stats().misses < 2:
            await asyncio.sleep(0)
        release.set()
        return await leader, await follower

    assert asyncio.run(main()) == ("from-coroutine", "from-coroutine")
    assert thread_loader.calls == 0
    assert cache.stats().loads == 1


def test_sync_call_on_the_loading_event_loop_raises() -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60, max_size=10)

    async def main() -> None:
        release = asyncio.Event()

        async def loader() -> str:
            await release.wait()
            return "v"

        leader = asyncio.ensure_future(cache.aget_or_load("k", loader))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="block the event loop"):
            cache.get_or_load("k", lambda: "sync")
        release.set()
        assert await leader == "v"

    asyncio.run(main())


def test_async_stale_while_revalidate_refreshes_in_a_task() -> None:
    clock = FakeClock()
    cache: TTLCache[str, str] = TTLCache(ttl=10, max_size=10, clock=clock, stale_while_revalidate=5)
    calls = 0

    async def main() -> None:
        nonlocal calls

        async def loader() -> str:
            nonlocal calls
            calls += 1
            return f"v{calls}"

        assert await cache.aget_or_load("k", loader) == "v1"
        clock.advance(11)
        served = await asyncio.gather(*(cache.aget_or_load("k", loader) for _ in range(10)))
        assert served == ["v1"] * 10
        while cache.get("k") != "v2":
            await asyncio.sleep(0)

    asyncio.run(main())
    assert calls == 2


# --- properties -----------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("load"), st.integers(0, 5)),
        st.tuples(st.just("advance"), st.floats(0, 6)),
        st.tuples(st.just("invalidate"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=50, deadline=None)
@given(ops=operations, max_size=st.integers(1, 4))
def test_matches_a_reference_lru_ttl_model(ops: list[tuple[str, float]], max_size: int) -> None:
    clock = FakeClock()
    ttl = 5.0
    cache: TTLCache[float, int] = TTLCache(ttl=ttl, max_size=max_size, clock=clock)
    model: OrderedDict[float, tuple[int, float]] = OrderedDict()
    loads = evictions = 0
    for op, arg in ops:
        if op == "advance":
            clock.advance(arg)
        elif op == "invalidate":
            cache.invalidate(arg)
            model.pop(arg, None)
        else:
            if arg in model and clock() < model[arg][1]:
                model.move_to_end(arg)
                expected = model[arg][0]
            else:
                model.pop(arg, None)
                loads += 1
                expected = loads
                model[arg] = (loads, clock() + ttl)
                while len(model) > max_size:
                    model.popitem(last=False)
                    evictions += 1
            assert cache.get_or_load(arg, lambda: cache.stats().loads) == expected
        assert len(cache) == len(model) <= max_size
    stats = cache.stats()
    assert (stats.loads, stats.evictions) == (loads, evictions)


@settings(max_examples=20, deadline=None)
@given(keys=st.lists(st.integers(0, 4), min_size=1, max_size=12))
def test_concurrent_threads_load_each_key_once(keys: list[int]) -> None:
    cache: TTLCache[int, int] = TTLCache(ttl=math.inf, max_size=8)
    calls: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(keys))
    results: list[int] = [-1] * len(keys)

    def loader_for(key: int) -> Callable[[], int]:
        def load() -> int:
            with lock:
                calls.append(key)
            return key * 10

        return load

    def ask(i: int) -> None:
        barrier.wait(DEADLINE)
        results[i] = cache.get_or_load(keys[i], loader_for(keys[i]))

    run_threads(len(keys), ask)
    assert results == [k * 10 for k in keys]
    assert sorted(calls) == sorted(set(keys))
