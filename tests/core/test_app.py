"""App: the @app.job decorator family, handles, immediate mode, lazy start and fork."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from csjd_core import (
    App,
    Config,
    CSJDError,
    DuplicateJob,
    InvalidJob,
    JobContext,
    JobFailed,
    JobHandle,
    JobNotFound,
    JobRegistry,
    JobState,
    RetryPolicy,
)
from csjd_core.testing import wait_until

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)
DEADLINE = 10.0  # generous: a condition returns as soon as it holds; this only bounds failures


@pytest.fixture
def make_app() -> Iterator[Callable[..., App]]:
    """Build apps with fast retries; every app (and gate) is stopped at teardown."""
    apps: list[App] = []

    def build(mode: str = "inprocess", **config: Any) -> App:
        config.setdefault("retry", FAST)
        config.setdefault("workers", 2)
        app = App(mode=mode, config=Config(**config), name=f"test-{len(apps)}")  # type: ignore[arg-type]
        apps.append(app)
        return app

    try:
        yield build
    finally:
        for app in apps:
            app.stop(timeout=2.0)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()


def csjd_workers() -> set[threading.Thread]:
    """Live worker threads; compared with a set taken earlier (old threads only ever exit)."""
    return {t for t in threading.enumerate() if t.name.startswith("csjd-worker")}


# -- the decorator -------------------------------------------------------------------------


def test_calling_the_function_runs_it_inline(make_app: Callable[..., App]) -> None:
    app = make_app()
    before = csjd_workers()

    @app.job("add")
    def add(a: int, b: int = 10) -> int:
        """Add two numbers."""
        return a + b

    assert add(2, 3) == 5
    assert add(1) == 11
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two numbers."
    assert add.__wrapped__ is add.fn
    assert add.type == "add"
    assert app.jobs == {"add": add}
    assert not csjd_workers() - before  # inline calls never start the dispatcher


def test_inline_call_with_context(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("ctx", takes_context=True)
    def uses_context(ctx: JobContext, x: int) -> list[Any]:
        return [type(ctx).__name__, ctx.attempt, x]

    assert uses_context(7) == ["JobContext", 1, 7]


def test_default_type_is_module_and_qualname(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job()
    def unnamed() -> None:
        return None

    assert unnamed.type == f"{__name__}.test_default_type_is_module_and_qualname.<locals>.unnamed"
    assert unnamed.type in app.registry


def test_duplicate_type_registration_is_an_error(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("email")
    def first() -> None:
        return None

    with pytest.raises(ValueError, match="'email' already has handler"):

        @app.job("email")
        def second() -> None:
            return None

    assert app.jobs["email"] is first


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"queue": ""}, "queue"),
        ({"priority": 101}, "priority must be an int from -100 to 100"),
        ({"priority": -101}, "priority must be an int from -100 to 100"),
        ({"priority": True}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": "5"}, "priority"),
    ],
)
def test_bad_decorator_options_fail_at_decoration(
    make_app: Callable[..., App], options: dict[str, Any], match: str
) -> None:
    app = make_app()
    with pytest.raises(ValueError, match=match):
        app.job("bad", **options)


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        App(mode="eager")  # type: ignore[arg-type]


# -- enqueueing ----------------------------------------------------------------------------


def test_delay_enqueues_and_the_handle_returns_the_result(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("add")
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.delay(2, b=3)
    assert isinstance(handle, JobHandle)
    assert isinstance(handle.id, str)
    assert handle.id
    assert handle.result(timeout=DEADLINE) == 5
    status = handle.status()
    assert (status.state, status.type, status.result) == (JobState.SUCCEEDED, "add", 5)
    assert status.payload == {"args": [2], "kwargs": {"b": 3}}
    assert add.delay(1, 1).id != handle.id  # a fresh id per call


def test_apply_async_options(make_app: Callable[..., App]) -> None:
    app = make_app(workers=1)
    ran_at: dict[str, float] = {}

    @app.job("stamp", max_attempts=2)
    def stamp(name: str) -> str:
        ran_at[name] = time.time()
        return name

    start = time.time()
    by_countdown = stamp.apply_async(args=["countdown"], countdown=0.1)
    eta = datetime.now(UTC) + timedelta(seconds=0.1)
    by_eta = stamp.apply_async(kwargs={"name": "eta"}, eta=eta, job_id="fixed-id")
    assert by_eta.id == "fixed-id"
    assert by_countdown.status().state is JobState.SCHEDULED
    with pytest.raises(DuplicateJob):
        stamp.apply_async(args=["again"], job_id="fixed-id")  # still unfinished
    assert by_countdown.result(timeout=DEADLINE) == "countdown"
    assert by_eta.result(timeout=DEADLINE) == "eta"
    assert ran_at["countdown"] >= start + 0.1
    assert ran_at["eta"] >= eta.timestamp()
    assert by_eta.status().max_attempts == 2
    assert stamp.apply_async(args=["o"], max_attempts=5).status().max_attempts == 5
    # A finished id may be used again.
    assert stamp.apply_async(args=["reuse"], job_id="fixed-id").result(DEADLINE) == "reuse"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"countdown": 1, "eta": datetime.now(UTC)}, "countdown or eta"),
        ({"eta": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"countdown": -1}, "countdown"),
        ({"job_id": ""}, "job id"),
        ({"priority": 101}, r"priority must be an int from -100 to 100 .*got 101"),
        ({"priority": False}, "priority .*got False"),
        ({"priority": 2.0}, "priority .*got 2.0"),
    ],
)
def test_apply_async_rejects_bad_options(
    make_app: Callable[..., App], options: dict[str, Any], match: str
) -> None:
    app = make_app()

    @app.job("t")
    def task() -> None:
        return None

    with pytest.raises(InvalidJob, match=match):
        task.apply_async(**options)


def test_priority_from_the_decorator_and_per_call(make_app: Callable[..., App]) -> None:
    """``@job(priority=)`` is the default of its jobs, ``apply_async(priority=)`` overrides it;
    with one worker busy, the queued jobs then run highest first (FIFO among equals)."""
    app = make_app(workers=1)
    gate, order = threading.Event(), []

    @app.job("block")
    def block() -> None:
        gate.wait(DEADLINE)

    @app.job("urgent", priority=50)
    def urgent(name: str) -> None:
        order.append(name)

    @app.job("plain")
    def plain(name: str) -> None:
        order.append(name)

    assert (urgent.priority, plain.priority) == (50, 0)
    blocker = block.delay()
    wait_until(lambda: blocker.status().state is JobState.RUNNING, DEADLINE)
    plain.delay("plain-1")
    plain.apply_async(["bulk"], priority=-20)
    urgent.apply_async(["urgent-lowered"], priority=5)
    urgent.delay("urgent-1")
    plain.apply_async(["plain-raised"], priority=50)
    assert urgent.build_job(["x"]).priority == 50
    assert urgent.build_job(["x"], priority=-1).priority == -1
    gate.set()
    assert app.wait(DEADLINE)
    assert order == ["urgent-1", "plain-raised", "urgent-lowered", "plain-1", "bulk"]


def test_adelay_and_aapply_async_from_asyncio(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("mul")
    def mul(a: int, b: int) -> int:
        return a * b

    async def main() -> list[Any]:
        first = await mul.adelay(6, 7)
        second = await mul.aapply_async(args=[2], kwargs={"b": 5}, job_id="async-id")
        return [first.id != "", await first.aresult(DEADLINE), second.id, second.result(DEADLINE)]

    assert asyncio.run(main()) == [True, 42, "async-id", 10]


def test_result_raises_job_failed_with_the_status(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("boom", max_attempts=2)
    def boom() -> None:
        raise RuntimeError("kaput")

    handle = boom.delay()
    with pytest.raises(JobFailed, match="failed after 2 attempt") as info:
        handle.result(timeout=DEADLINE)
    assert info.value.status.state is JobState.FAILED
    assert info.value.status.last_error == "RuntimeError: kaput"


def test_result_times_out_on_an_unfinished_job(
    make_app: Callable[..., App], gate: threading.Event
) -> None:
    app = make_app()

    @app.job("slow")
    def slow() -> str:
        gate.wait(DEADLINE)
        return "finally"

    handle = slow.delay()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=handle.id):
        handle.result(timeout=0.05)
    assert time.monotonic() - started < 1.0
    gate.set()
    assert handle.result(timeout=DEADLINE) == "finally"


def test_status_of_an_unknown_handle_is_job_not_found(make_app: Callable[..., App]) -> None:
    app = make_app()
    with pytest.raises(JobNotFound):
        JobHandle(app, "never-submitted").status()


def test_takes_context_receives_the_job_context(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("ctx", takes_context=True, max_attempts=3)
    def with_ctx(ctx: JobContext, word: str) -> list[Any]:
        if ctx.attempt == 1:
            raise RuntimeError("once")
        return [ctx.job_id, ctx.attempt, word]

    handle = with_ctx.delay("hi")
    assert handle.result(timeout=DEADLINE) == [handle.id, 2, "hi"]


def test_non_json_arguments_fail_at_the_call_naming_the_argument(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    before = csjd_workers()

    @app.job("send")
    def send(to: str, when: Any = None, *extra: Any, **options: Any) -> None:
        return None

    with pytest.raises(InvalidJob, match="argument 'when' of job 'send'"):
        send.delay("a@example.com", datetime.now(UTC))
    with pytest.raises(InvalidJob, match="argument 'when' of job 'send'"):
        send.delay("a@example.com", when={"nested": [float("nan")]})
    with pytest.raises(InvalidJob, match="argument 'retry_at' of job 'send'"):
        send.delay("a@example.com", retry_at=object())
    with pytest.raises(InvalidJob, match="argument 'to'"):
        send.apply_async(args=[b"bytes"])
    assert not csjd_workers() - before  # nothing was enqueued, so nothing was started


def test_wrong_arity_is_a_type_error_at_call_time(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("two")
    def two(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="two: missing a required argument: 'b'"):
        two.delay(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        two.delay(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        two.apply_async(args=[1, 2], kwargs={"c": 3})


def test_a_non_json_return_value_fails_the_job_permanently(make_app: Callable[..., App]) -> None:
    app = make_app()
    calls: list[int] = []

    @app.job("bad-return", max_attempts=3)
    def bad_return() -> Any:
        calls.append(1)
        return {"when": datetime.now(UTC)}

    handle = bad_return.delay()
    with pytest.raises(JobFailed) as info:
        handle.result(timeout=DEADLINE)
    status = info.value.status
    assert status.attempts == 1
    assert calls == [1]
    assert status.last_error is not None
    assert "return value" in status.last_error
    assert "not JSON-serializable" in status.last_error


def test_wait_blocks_until_enqueued_jobs_are_done(make_app: Callable[..., App]) -> None:
    app = make_app()
    assert app.wait(timeout=0.01)  # nothing built yet
    done: list[int] = []
    lock = threading.Lock()

    @app.job("work")
    def work(i: int) -> None:
        with lock:
            done.append(i)

    for i in range(20):
        work.delay(i)
    assert app.wait(timeout=DEADLINE)
    assert sorted(done) == list(range(20))


def test_stop_then_enqueue_builds_a_new_dispatcher(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("echo")
    def echo(x: int) -> int:
        return x

    assert echo.delay(1).result(DEADLINE) == 1
    first = app.dispatcher
    app.stop(timeout=DEADLINE)
    assert echo.delay(2).result(DEADLINE) == 2
    assert app.dispatcher is not first


# -- lazy start and fork -------------------------------------------------------------------


def test_no_threads_until_the_first_enqueue(make_app: Callable[..., App]) -> None:
    before = csjd_workers()
    app = make_app(workers=3)

    @app.job("lazy")
    def lazy() -> str:
        return "ran"

    assert not csjd_workers() - before
    with pytest.raises(JobNotFound):
        app.status("nothing-yet")  # building the dispatcher to answer starts no thread
    assert not csjd_workers() - before
    assert lazy.delay().result(DEADLINE) == "ran"
    assert len(csjd_workers() - before) == 3


def _run_in_child(body: Callable[[], int], timeout: float = 10.0) -> int:
    """Fork, run ``body`` in the child and return its exit code (the child never returns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            code = body()
        except BaseException:
            code = 71
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child hung for {timeout} s")
        time.sleep(0.005)  # polling a child process's exit: there is no event to wait on


def test_a_forked_child_gets_its_own_dispatcher(
    make_app: Callable[..., App], gate: threading.Event
) -> None:
    app = make_app(workers=1)

    @app.job("block")
    def block() -> str:
        gate.wait(DEADLINE)
        return "parent"

    @app.job("add")
    def add(a: int, b: int) -> int:
        return a + b

    busy = block.delay()  # the parent's dispatcher is running and has an unfinished job
    wait_until(lambda: busy.status().state is JobState.RUNNING, DEADLINE)
    parent_dispatcher = app.dispatcher

    def child() -> int:
        # Nothing was enqueued in this process: wait() must not wait for the parent's jobs.
        if not app.wait(timeout=0.5):
            return 3
        if app.dispatcher is parent_dispatcher:
            return 2
        if add.delay(2, 3).result(timeout=DEADLINE) != 5:
            return 4
        app.stop(timeout=DEADLINE)
        return 0

    assert _run_in_child(child) == 0
    assert app.dispatcher is parent_dispatcher  # the parent is untouched
    gate.set()
    assert busy.result(DEADLINE) == "parent"


# -- immediate mode ------------------------------------------------------------------------


def test_immediate_mode_runs_at_enqueue_with_back_to_back_retries(
    make_app: Callable[..., App],
) -> None:
    before = csjd_workers()
    app = make_app(mode="immediate", retry=RetryPolicy(base_delay=10, max_delay=60))
    attempts: list[int] = []

    @app.job("flaky", takes_context=True, max_attempts=3)
    def flaky(ctx: JobContext, x: int) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("again")
        return x * 2

    started = time.monotonic()
    handle = flaky.delay(21)
    assert time.monotonic() - started < 1.0, "immediate mode waited for the backoff"
    assert attempts == [1, 2, 3]
    status = handle.status()
    assert (status.state, status.result, status.attempts) == (JobState.SUCCEEDED, 42, 3)
    assert handle.result(timeout=0) == 42
    assert not csjd_workers() - before  # no worker threads in immediate mode


def test_immediate_mode_records_failures_instead_of_raising(make_app: Callable[..., App]) -> None:
    app = make_app(mode="immediate")

    @app.job("fails", max_attempts=2)
    def fails() -> None:
        raise ValueError("nope")

    handle = fails.delay()  # does not raise
    with pytest.raises(JobFailed, match="ValueError: nope"):
        handle.result(timeout=0)


def test_immediate_mode_runs_nested_jobs_after_their_parent(make_app: Callable[..., App]) -> None:
    app = make_app(mode="immediate")
    order: list[str] = []

    @app.job("child")
    def child(name: str) -> None:
        order.append(f"child:{name}")
        if name == "b":
            grandchild.delay()

    @app.job("grandchild")
    def grandchild() -> None:
        order.append("grandchild")

    @app.job("parent")
    def parent() -> None:
        order.append("parent:start")
        child.delay("a")
        child.delay("b")
        order.append("parent:end")

    parent.delay()
    assert order == ["parent:start", "parent:end", "child:a", "child:b", "grandchild"]


def test_immediate_mode_does_not_wait_for_countdowns(make_app: Callable[..., App]) -> None:
    app = make_app(mode="immediate")

    @app.job("later")
    def later() -> str:
        return "now"

    started = time.monotonic()
    handle = later.apply_async(countdown=30)
    assert time.monotonic() - started < 1.0
    assert handle.result(timeout=0) == "now"


# -- design questions ----------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="In-process jobs keep a reference to the caller's payload objects (no JSON round "
    "trip or copy at submit): mutating an argument after .delay() changes the queued job, "
    "unlike Redis mode and Celery. Copying costs on the hot path: design decision.",
)
def test_the_job_is_a_snapshot_of_the_arguments_at_enqueue(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("snapshot")
    def snapshot(data: dict[str, int]) -> int:
        return data["n"]

    data = {"n": 1}
    handle = snapshot.apply_async(args=[data], countdown=0.1)
    data["n"] = 2  # the caller reuses its dict after enqueueing
    result = handle.result(timeout=DEADLINE)
    app.stop(timeout=DEADLINE)
    assert result == 1


@pytest.mark.xfail(
    strict=True,
    reason="A handler that mutates job.payload changes what its retries receive (the same "
    "objects are handed to every attempt): retries do not see the payload as submitted.",
)
def test_every_attempt_gets_the_payload_as_submitted(make_app: Callable[..., App]) -> None:
    app = make_app()
    seen: list[list[str]] = []

    @app.job("mutating", takes_context=True, max_attempts=2)
    def mutating(ctx: JobContext, items: list[str]) -> int:
        seen.append(list(items))
        items.append(f"added by attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise RuntimeError("retry me")
        return len(items)

    handle = mutating.delay(["original"])
    handle.result(timeout=DEADLINE)
    app.stop(timeout=DEADLINE)
    assert seen == [["original"], ["original"]]


def test_a_registry_without_a_runtime_says_where_to_define_jobs() -> None:
    registry = JobRegistry()

    @registry.job("reports.build")
    def build(day: int) -> int:
        return day

    with pytest.raises(CSJDError, match="only defines jobs; define them on an App"):
        build.delay(1)
    assert build(2) == 2  # still a plain function
