"""Interleavings that plain tests hit only by luck, forced with a trace function.

White-box on purpose: each test stops one engine thread at a precise point (found by the state
it is in, not by line numbers) and checks what another thread can observe there. A tracer
replaces any other trace function (coverage) on the threads it runs on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

import csjd_core
from csjd_core import Config, Dispatcher, Job, JobContext, JobNotFound, JobState, RetryPolicy
from csjd_core.testing import wait_until

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)
DEADLINE = 10.0  # generous: a condition returns as soon as it holds; this only bounds failures
CORE_DIR = os.path.dirname(csjd_core.__file__)

Tracer = Callable[[FrameType, str, Any], Any]


@pytest.fixture
def trace_new_threads() -> Iterator[Callable[[Tracer], None]]:
    """Install a trace function on threads started from now on; removed at teardown."""

    def install(tracer: Tracer) -> None:
        threading.settrace(tracer)

    try:
        yield install
    finally:
        threading.settrace(None)  # type: ignore[arg-type]


def test_status_finds_a_job_at_every_step_of_its_attempt(
    trace_new_threads: Callable[[Tracer], None],
) -> None:
    """A job that exists is never reported as JobNotFound: the backend must make a finishing
    job visible as finished before it stops being unfinished."""
    d = Dispatcher(Config(workers=1, retry=FAST))
    d.register_handler("t", lambda ctx, job: "done")
    d.submit(Job("j", "t"))
    backend_lock = d._backend._lock  # type: ignore[attr-defined]
    checks = 0
    misses: list[str] = []

    def on_line(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal checks
        # Skip lines run with the backend lock held: status() would wait for it (deadlock).
        if event == "line" and not backend_lock.locked():
            checks += 1
            try:
                d.status("j")
            except JobNotFound:
                misses.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        return on_line

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_filename.startswith(CORE_DIR):
            return on_line
        return None

    trace_new_threads(tracer)
    try:
        d.start()  # the worker thread is traced from its first line
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    try:
        assert d.join(DEADLINE)
        assert d.status("j").state is JobState.SUCCEEDED
    finally:
        d.stop(timeout=DEADLINE)
    assert checks > 20, "the tracer did not follow the worker"
    assert misses == [], f"status() raised JobNotFound for a live job at {misses}"


def test_a_detached_worker_never_takes_another_job(
    trace_new_threads: Callable[[Tracer], None],
) -> None:
    """The watchdog marks an attempt settled and its worker detached: if the handler returns
    between the two, the worker must still see itself detached, or it runs the next job while
    a fresh worker is spawned for its slot (workers + 1 handlers, a budget slot used up)."""
    d = Dispatcher(Config(workers=1, max_detached_handlers=1, retry=FAST))
    gate = threading.Event()
    next_started = threading.Event()
    threads: dict[str, int] = {}
    window: list[int] = []

    def handler(ctx: JobContext, job: Job) -> str:
        threads[job.id] = threading.get_ident()
        if job.id == "hung":
            gate.wait(DEADLINE)  # ignores its cancellation
            return "late"
        next_started.set()
        return "next"

    def in_detach(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "line" or window:
            return in_detach
        attempt = frame.f_locals.get("attempt")
        engine = frame.f_locals.get("self")
        if (
            attempt is not None
            and engine is not None
            and attempt.settled
            and not attempt.worker.detached
            and not engine.counters.lock.locked()
        ):
            # Settled, worker not yet marked detached, no lock held: let the handler return.
            window.append(frame.f_lineno)
            gate.set()
            next_started.wait(1.0)
        return in_detach

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "_on_overrun":
            return in_detach
        return None

    trace_new_threads(tracer)
    try:
        d.register_handler("t", handler)
        d.start()
        d.submit(Job("hung", "t", timeout=0.05, max_attempts=1))
        d.submit(Job("next", "t"))
        wait_until(
            lambda: any(t.name == "csjd-watchdog" for t in threading.enumerate()),
            DEADLINE,
            message="watchdog never started",
        )
        threading.settrace(None)  # type: ignore[arg-type]
        wait_until(
            lambda: d.metrics().detached == 1, DEADLINE, message="the hung handler never detached"
        )
        wait_until(
            lambda: d.status("next").state is JobState.SUCCEEDED,
            DEADLINE,
            message="the next job never ran",
        )
        assert threads["next"] != threads["hung"], (
            f"the detached worker ran the next job (window at line {window})"
        )
    finally:
        gate.set()
        d.stop(timeout=DEADLINE)


def test_stop_racing_with_a_detach_never_raises(
    trace_new_threads: Callable[[Tracer], None],
) -> None:
    """A detach spawns a fresh worker for the slot while stop() joins the workers: stop() must
    neither meet a thread that is not started yet (RuntimeError) nor miss the new worker."""
    d = Dispatcher(Config(workers=1, max_detached_handlers=1, retry=FAST))
    gate = threading.Event()
    paused = threading.Event()
    stop_done = threading.Event()

    def hung(ctx: JobContext, job: Job) -> str:
        gate.wait(DEADLINE)
        return "late"

    def in_spawn(frame: FrameType, event: str, arg: Any) -> Any:
        if event != "line" or paused.is_set():
            return in_spawn
        engine = frame.f_locals.get("self")
        worker = frame.f_locals.get("worker")
        thread = getattr(worker, "thread", None)
        published = engine is not None and any(w is worker for w in engine._workers)
        if published and thread is not None and thread.ident is None:
            # Published in the pool, not started yet: let stop() run now.
            paused.set()
            stop_done.wait(0.3)
        return in_spawn

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "_spawn":
            return in_spawn
        return None

    d.register_handler("t", hung)
    d.start()  # before the tracer: only the watchdog (started at the first timeout) is traced
    trace_new_threads(tracer)
    errors: list[BaseException] = []

    def stopper() -> None:
        try:
            d.stop(timeout=2.0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop_done.set()

    try:
        d.submit(Job("hung", "t", timeout=0.05, max_attempts=1))
        assert paused.wait(DEADLINE), "the detach never spawned a worker"
        threading.settrace(None)  # type: ignore[arg-type]
        thread = threading.Thread(target=stopper)
        thread.start()
        thread.join(DEADLINE)
        assert not thread.is_alive()
    finally:
        gate.set()
        d.stop(timeout=DEADLINE)
    assert errors == [], f"stop() raised: {errors!r}"
    spawned = [t for t in threading.enumerate() if t.name == "csjd-worker-0"]
    wait_until(
        lambda: all(not t.is_alive() for t in spawned), DEADLINE, message="workers never exited"
    )


def test_idle_fetches_racing_for_wake_ups_all_return_by_their_deadlines() -> None:
    # Was: idle workers waited on one queue.SimpleQueue; in CPython 3.11 and 3.12 its
    # get(timeout) blocks forever when the item that woke it is taken by another thread and it
    # resumes after its deadline. A worker stuck there never saw the stop: `with dispatcher:`
    # hung at exit (seen in CI under load). Here many idle fetches with short deadlines race
    # for the wake-ups of a trickle of jobs, while the GIL is held in bursts (the parked
    # threads are woken but cannot run until their deadline passed).
    from csjd_core.backends.base import BackendSettings  # noqa: PLC0415
    from csjd_core.backends.memory import MemoryBackend  # noqa: PLC0415

    backend = MemoryBackend()
    backend.open(
        BackendSettings(
            max_pending_jobs=10_000,
            default_max_attempts=3,
            result_ttl=60.0,
            max_results=10_000,
            worker_id="races:1",
        )
    )
    taken: list[int] = []
    stop = threading.Event()

    def idle_worker() -> None:
        count = 0
        while not stop.is_set():
            if backend.fetch(0.002) is not None:
                count += 1
        taken.append(count)

    threads = [threading.Thread(target=idle_worker, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for i in range(1500):
        backend.enqueue([Job(f"j{i}", "t", None)])
        if i % 3 == 0:
            hold = b"x" * 2_000_000  # memset in C, without releasing the GIL
            del hold
    wait_until(lambda: backend.ready_count() == 0, DEADLINE)
    stop.set()
    for thread in threads:
        thread.join(5)
    assert not [t for t in threads if t.is_alive()], "an idle fetch never returned"
    assert sum(taken) == 1500
    backend.close(clean=True)
