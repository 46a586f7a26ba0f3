"""BatchLoader and AsyncBatchLoader: batching, splitting, the missing-key rule, errors."""

from __future__ import annotations

import asyncio
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csjd_core.utilities.batch import AsyncBatchLoader, BatchLoader

DEADLINE = 10.0


class RecordingBatch:
    """A batch_fn returning ``key * 10`` for each key, recording every call."""

    def __init__(self, missing: frozenset[int] = frozenset()) -> None:
        self.missing = missing
        self.calls: list[list[int]] = []
        self._lock = threading.Lock()

    def __call__(self, keys: list[int]) -> Mapping[int, int]:
        with self._lock:
            self.calls.append(list(keys))
        return {k: k * 10 for k in keys if k not in self.missing}

    def check_invariants(self, max_batch: int) -> None:
        for call in self.calls:
            assert 1 <= len(call) <= max_batch
            assert len(call) == len(set(call)), f"duplicate keys in one call: {call}"


def flatten(calls: list[list[int]]) -> list[int]:
    return [key for call in calls for key in call]


def run_threads(n: int, target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a load never returned"


# --- defer / dispatch / load_many -----------------------------------------------------------


def test_defer_then_dispatch_sends_one_deduplicated_batch() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch, max_batch=100)
    futures = [loader.defer(k) for k in [3, 1, 3, 2, 1]]
    assert batch.calls == []
    assert loader.dispatch() == 1
    assert batch.calls == [[3, 1, 2]]
    assert [f.result() for f in futures] == [30, 10, 30, 20, 10]
    assert futures[0] is futures[2]
    assert loader.dispatch() == 0


def test_dispatch_splits_by_max_batch() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch, max_batch=10)
    for k in range(25):
        loader.defer(k)
    assert loader.dispatch() == 3
    assert [len(call) for call in batch.calls] == [10, 10, 5]
    assert flatten(batch.calls) == list(range(25))


def test_load_many_returns_values_in_order() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch, max_batch=2)
    assert loader.load_many([5, 4, 5, 3]) == [50, 40, 50, 30]
    assert batch.calls == [[5, 4], [3]]
    assert loader.load_many([]) == []


def test_waiting_on_an_undispatched_future_dispatches_it() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch)
    first, second = loader.defer(1), loader.defer(2)
    assert first.result(timeout=DEADLINE) == 10  # no dispatch() call: must not hang
    assert second.done()
    assert batch.calls == [[1, 2]]


def test_a_cancelled_deferred_key_is_left_out() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch)
    dropped, kept = loader.defer(1), loader.defer(2)
    assert dropped.cancel()
    loader.dispatch()
    assert batch.calls == [[2]]
    assert kept.result() == 20
    assert loader.defer(1) is not dropped  # a cancelled future is replaced


def test_deferred_keys_belong_to_their_thread() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch)
    mine = loader.defer(1)
    other_thread_batches: list[int] = []

    def other() -> None:
        theirs = loader.defer(2)
        other_thread_batches.append(loader.dispatch())
        assert theirs.result() == 20

    run_threads(1, lambda _: other())
    assert other_thread_batches == [1]
    assert batch.calls == [[2]]
    assert not mine.done()
    loader.dispatch()
    assert mine.result() == 10


def test_missing_key_raises_key_error_for_that_key_only() -> None:
    batch = RecordingBatch(missing=frozenset({2}))
    loader = BatchLoader(batch)
    futures = {k: loader.defer(k) for k in (1, 2, 3)}
    loader.dispatch()
    assert futures[1].result() == 10
    assert futures[3].result() == 30
    with pytest.raises(KeyError) as info:
        futures[2].result()
    assert info.value.args == (2,)
    with pytest.raises(KeyError):
        loader.load_many([1, 2])


def test_membership_decides_not_missing_defaults() -> None:
    def batch_fn(keys: list[str]) -> Mapping[str, int]:
        values: defaultdict[str, int] = defaultdict(int)
        values["a"] = 1
        return values

    loader = BatchLoader(batch_fn)
    futures = [loader.defer("a"), loader.defer("b")]
    loader.dispatch()
    assert futures[0].result() == 1
    with pytest.raises(KeyError):
        futures[1].result()


def test_batch_fn_error_reaches_every_caller_of_the_batch() -> None:
    boom = ConnectionError("db down")
    calls = 0

    def batch_fn(keys: list[int]) -> Mapping[int, int]:
        nonlocal calls
        calls += 1
        raise boom

    loader = BatchLoader(batch_fn, max_batch=2)
    futures = [loader.defer(k) for k in range(3)]
    assert loader.dispatch() == 2
    assert calls == 2
    assert all(f.exception() is boom for f in futures)


def test_non_mapping_result_is_a_type_error_for_all() -> None:
    def batch_fn(keys: list[int]) -> Mapping[int, int]:
        return [k * 10 for k in keys]  # type: ignore[return-value]

    loader = BatchLoader(batch_fn)
    futures = [loader.defer(k) for k in range(3)]
    loader.dispatch()
    for future in futures:
        with pytest.raises(TypeError, match="mapping"):
            future.result()


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"max_batch": 0}, ValueError, "max_batch"),
        ({"max_batch": 1.5}, TypeError, "max_batch"),
        ({"max_batch": True}, TypeError, "max_batch"),
        ({"wait": -0.1}, ValueError, "wait"),
        ({"wait": math.inf}, ValueError, "wait"),
        ({"wait": "1ms"}, TypeError, "wait"),
    ],
)
def test_constructor_names_the_bad_field(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=f"BatchLoader.{field}"):
        BatchLoader(RecordingBatch(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"AsyncBatchLoader.{field}"):
        AsyncBatchLoader(RecordingBatch(), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch_fn"):
        BatchLoader(42)  # type: ignore[arg-type]


# --- load() from many threads ---------------------------------------------------------------


def concurrent_loads(loader: BatchLoader[int, int], keys: list[int]) -> list[int | BaseException]:
    barrier = threading.Barrier(len(keys))
    results: list[int | BaseException] = [-1] * len(keys)

    def ask(i: int) -> None:
        barrier.wait(DEADLINE)
        try:
            results[i] = loader.load(keys[i])
        except Exception as exc:
            results[i] = exc

    run_threads(len(keys), ask)
    return results


def test_a_full_window_is_sent_at_once_as_one_batch() -> None:
    batch = RecordingBatch()
    # The window would stay open for a minute: only reaching max_batch can send it.
    loader = BatchLoader(batch, max_batch=8, wait=timedelta(minutes=1))
    assert concurrent_loads(loader, list(range(8))) == [k * 10 for k in range(8)]
    assert len(batch.calls) == 1
    assert sorted(batch.calls[0]) == list(range(8))


def test_threads_asking_for_the_same_key_never_send_it_twice_in_one_call() -> None:
    batch = RecordingBatch()
    # Which keys share a call depends on arrival order; the invariants do not.
    loader = BatchLoader(batch, max_batch=3, wait=0.01)
    keys = [1, 2, 1, 2, 3, 1] * 5
    assert concurrent_loads(loader, keys) == [k * 10 for k in keys]
    batch.check_invariants(3)
    assert set(flatten(batch.calls)) == {1, 2, 3}


def test_missing_key_and_errors_reach_only_their_callers_across_threads() -> None:
    batch = RecordingBatch(missing=frozenset({4}))
    loader = BatchLoader(batch, max_batch=6, wait=60)
    results = concurrent_loads(loader, [1, 2, 3, 4, 5, 6])
    assert results[:3] == [10, 20, 30]
    assert isinstance(results[3], KeyError)
    assert results[4:] == [50, 60]


def test_batch_fn_error_reaches_every_thread() -> None:
    boom = RuntimeError("down")

    def batch_fn(keys: list[int]) -> Mapping[int, int]:
        raise boom

    loader = BatchLoader(batch_fn, max_batch=5, wait=60)
    assert all(r is boom for r in concurrent_loads(loader, list(range(5))))


def test_a_lone_load_is_sent_after_the_wait() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch, wait=0)
    assert loader.load(7) == 70
    assert batch.calls == [[7]]


def test_many_threads_never_exceed_max_batch_and_never_lose_a_key() -> None:
    batch = RecordingBatch()
    loader = BatchLoader(batch, max_batch=7, wait=0.001)
    keys = [i % 23 for i in range(120)]
    assert concurrent_loads(loader, keys) == [k * 10 for k in keys]
    batch.check_invariants(7)
    assert set(flatten(batch.calls)) == set(keys)


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.integers(0, 9), min_size=1, max_size=16),
    max_batch=st.integers(1, 5),
)
def test_property_concurrent_loads(keys: list[int], max_batch: int) -> None:
    batch = RecordingBatch(missing=frozenset({0}))
    loader = BatchLoader(batch, max_batch=max_batch, wait=0.0005)
    results = concurrent_loads(loader, keys)
    for key, result in zip(keys, results, strict=True):
        if key == 0:
            assert isinstance(result, KeyError)
        else:
            assert result == key * 10
    batch.check_invariants(max_batch)
    assert set(flatten(batch.calls)) == set(keys)


@settings(max_examples=50, deadline=None)
@given(
    keys=st.lists(st.integers(0, 30), max_size=40),
    max_batch=st.integers(1, 8),
)
def test_property_defer_dispatch(keys: list[int], max_batch: int) -> None:
    batch = RecordingBatch(missing=frozenset({0}))
    loader = BatchLoader(batch, max_batch=max_batch)
    futures = [loader.defer(k) for k in keys]
    unique = list(dict.fromkeys(keys))
    assert loader.dispatch() == math.ceil(len(unique) / max_batch)
    batch.check_invariants(max_batch)
    assert flatten(batch.calls) == unique  # each key once, in first-asked order
    for key, future in zip(keys, futures, strict=True):
        if key == 0:
            assert isinstance(future.exception(), KeyError)
        else:
            assert future.result() == key * 10


# --- AsyncBatchLoader -----------------------------------------------------------------------


class AsyncRecordingBatch(RecordingBatch):
    async def run(self, keys: list[int]) -> Mapping[int, int]:
        await asyncio.sleep(0)
        return self(keys)


def test_async_loads_in_one_tick_become_one_batch() -> None:
    batch = AsyncRecordingBatch()
    loader = AsyncBatchLoader(batch.run, wait=0)

    async def main() -> list[int]:
        return await asyncio.gather(*(loader.load(k) for k in [1, 2, 1, 3]))

    assert asyncio.run(main()) == [10, 20, 10, 30]
    assert batch.calls == [[1, 2, 3]]


def test_async_splits_by_max_batch() -> None:
    batch = AsyncRecordingBatch()
    loader = AsyncBatchLoader(batch.run, max_batch=10, wait=0.001)

    async def main() -> list[int]:
        return await asyncio.gather(*(loader.load(k) for k in range(25)))

    assert asyncio.run(main()) == [k * 10 for k in range(25)]
    assert [len(call) for call in batch.calls] == [10, 10, 5]


def test_async_missing_key_error_and_load_many() -> None:
    batch = AsyncRecordingBatch(missing=frozenset({2}))
    per_tick = AsyncBatchLoader(batch.run, max_batch=3, wait=0)
    # An hour-long window: only load_many's immediate send lets this test finish.
    patient = AsyncBatchLoader(batch.run, max_batch=3, wait=3600)

    async def main() -> None:
        results = await asyncio.gather(*(per_tick.load(k) for k in (1, 2)), return_exceptions=True)
        assert results[0] == 10
        assert isinstance(results[1], KeyError)
        assert await patient.load_many([4, 5, 4, 6, 7]) == [40, 50, 40, 60, 70]
        with pytest.raises(KeyError):
            await patient.load_many([1, 2, 3])

    asyncio.run(main())
    assert batch.calls == [[1, 2], [4, 5, 6], [7], [1, 2, 3]]


def test_async_batch_fn_error_and_non_mapping_reach_all() -> None:
    boom = ValueError("down")

    async def failing(keys: list[int]) -> Mapping[int, int]:
        raise boom

    async def not_a_mapping(keys: list[int]) -> Mapping[int, int]:
        return keys  # type: ignore[return-value]

    async def main() -> None:
        loader = AsyncBatchLoader(failing, wait=0)
        results = await asyncio.gather(*(loader.load(k) for k in range(4)), return_exceptions=True)
        assert all(r is boom for r in results)
        odd = AsyncBatchLoader(not_a_mapping, wait=0)
        results = await asyncio.gather(*(odd.load(k) for k in range(3)), return_exceptions=True)
        assert all(isinstance(r, TypeError) for r in results)

    asyncio.run(main())


def test_async_cancelled_caller_does_not_cancel_the_batch() -> None:
    batch = AsyncRecordingBatch()
    loader = AsyncBatchLoader(batch.run, wait=0)

    async def main() -> int:
        first = asyncio.ensure_future(loader.load(1))
        second = asyncio.ensure_future(loader.load(1))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()) == 10
    assert batch.calls == [[1]]
