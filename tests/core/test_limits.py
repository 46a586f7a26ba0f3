"""Hostile and faulty inputs (issue: hardening): every limit of `csjd_core.limits` is enforced
where a value enters, with the same rules in every mode, and no value a producer or a handler
chooses can kill a background thread, keep a worker slot or grow a record without bound.

The modes are real: memory, the file store (real files), immediate, and Redis (the suite's
throwaway server).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from csjd_core import (
    App,
    Config,
    DistributedConfig,
    FileJobStore,
    InvalidJob,
    Job,
    JobContext,
    JobFailed,
    JobNotFound,
    JobState,
    RedisConfig,
    RetryPolicy,
    StoreCorrupted,
    StoreFailed,
    permanent,
)
from csjd_core.backends.base import Delivery
from csjd_core.backends.memory import MemoryBackend
from csjd_core.config import EngineConfig
from csjd_core.engine.watchdog import Attempt, Watchdog
from csjd_core.errors import describe_error
from csjd_core.limits import (
    MAX_DURATION,
    MAX_ERROR_TEXT,
    MAX_JOB_BYTES,
    MAX_NESTING,
    MAX_TRACEBACK,
)
from csjd_core.testing import wait_until

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)
DEADLINE = 15.0
MODES = ["memory", "file", "immediate", "redis"]


def nested(depth: int) -> Any:
    """``depth`` lists inside each other: ``nested(2) == [[]]``."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


class Unprintable(Exception):
    """An exception whose ``__str__`` raises (a real library bug we must survive)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


@pytest.fixture(params=MODES)
def make_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Apps in every mode, with fast retries; in Redis mode, a worker dispatcher consumes."""
    mode = request.param
    apps: list[App] = []

    def build(**options: Any) -> App:
        config = {"retry": FAST, "workers": options.pop("workers", 2), **options}
        if mode == "redis":
            url = request.getfixturevalue("redis_url")
            request.getfixturevalue("redis_client")  # flushed
            distributed = DistributedConfig(
                block=0.1, heartbeat_interval=0.2, claim_interval=0.2, lease=2.0, **config
            )
            app = App(mode="redis", redis=RedisConfig(url=url), distributed=distributed)
        else:
            store = FileJobStore(tmp_path / "jobs.json") if mode == "file" else None
            app = App(
                mode="immediate" if mode == "immediate" else "inprocess",
                config=Config(store=store, **config),
            )
        apps.append(app)
        return app

    yield build
    for app in apps:
        worker = getattr(app, "_test_worker", None)
        if worker is not None:
            worker.stop(5)
        app.stop(5)


def run_jobs(app: App) -> None:
    """Make the app's jobs run: in Redis mode start a consuming dispatcher for it."""
    if app.mode == "redis" and getattr(app, "_test_worker", None) is None:
        from csjd_core.distributed import RedisDistributedDispatcher  # noqa: PLC0415

        assert app.redis is not None
        worker = RedisDistributedDispatcher(app.redis, app.distributed, registry=app.registry)
        app._test_worker = worker  # type: ignore[attr-defined]
        worker.start()


def result_of(handle: Any) -> Any:
    return handle.result(timeout=DEADLINE)


# -- admission: the same rules in every mode -------------------------------------------------
def test_absurd_durations_are_refused_at_admission(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job("t")
    def t() -> None: ...

    far = datetime.now(UTC) + timedelta(days=11 * 365)
    for options in (
        {"timeout": 1e10},  # past threading.TIMEOUT_MAX: it killed the watchdog
        {"timeout": timedelta(days=4000)},
        {"countdown": 1e12},  # OverflowError from timedelta
        {"countdown": 1e300},
        {"countdown": 10**400},  # too large even for a float
        {"eta": far},
    ):
        with pytest.raises(InvalidJob, match=r"MAX_DURATION|ten years"):
            t.apply_async(job_id="absurd", **options)
        with pytest.raises(JobNotFound):
            app.status("absurd")
    # At the limit itself: accepted.
    handle = t.apply_async(countdown=MAX_DURATION - 60, job_id="far-but-fine")
    assert app.status(handle.id).state is (
        JobState.SUCCEEDED if app.mode == "immediate" else JobState.SCHEDULED
    )


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Config(default_timeout=1e10), "Config.default_timeout"),
        (lambda: Config(result_ttl=1e10), "Config.result_ttl"),
        (lambda: DistributedConfig(lease=1e10), "DistributedConfig.lease"),
        (lambda: DistributedConfig(claim_interval=1e10), "DistributedConfig.claim_interval"),
        (
            lambda: DistributedConfig(heartbeat_interval=1e10),
            "DistributedConfig.heartbeat_interval",
        ),
        (lambda: DistributedConfig(block=float("inf")), "DistributedConfig.block"),
        (lambda: DistributedConfig(dedupe_window=1e10), "DistributedConfig.dedupe_window"),
        (lambda: DistributedConfig(default_timeout=1e10), "DistributedConfig.default_timeout"),
        (lambda: RetryPolicy(max_delay=1e10), "RetryPolicy.max_delay"),
        (lambda: RedisConfig(addr="h:1", socket_timeout=1e10), "RedisConfig.socket_timeout"),
        (lambda: FileJobStore("x.json", fsync_interval=1e10), "fsync_interval"),
        (lambda: Config(default_max_attempts=10**5000), "Config.default_max_attempts"),
        (lambda: Config(workers=100_000), "Config.workers"),
        (lambda: DistributedConfig(max_payload_bytes=10**12), "max_payload_bytes"),
        (lambda: DistributedConfig(queues=("a}b",)), "DistributedConfig.queues"),
        (lambda: DistributedConfig(consumer="host 1\n"), "DistributedConfig.consumer"),
    ],
)
def test_configs_refuse_values_past_the_limits(build: Callable[[], Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()


def test_payload_rules_are_the_same_in_every_mode(make_app: Callable[..., App]) -> None:
    app = make_app(workers=1)
    seen: list[Any] = []

    @app.job("t")
    def t(value: Any) -> None:
        seen.append(value)

    run_jobs(app)
    for args, options, problem in (
        ([10**5000], {}, "MAX_INT_BITS"),  # ValueError in file/Redis, accepted in memory
        ([1], {"max_attempts": 10**5000}, "MAX_ATTEMPTS"),
        ([1], {"job_id": os.fsdecode(b"\xff")}, "lone surrogate"),  # UnicodeEncodeError
        (["name " + os.fsdecode(b"\xfe")], {}, "lone surrogate"),
        # Accepted at depth 985, then dead-lettered as poison by the worker's own check. The
        # payload {"args": [value]} holds the value two levels down.
        ([nested(MAX_NESTING - 1)], {}, "MAX_NESTING"),
        ([1], {"queue": "default}:job:victim:{x"}, "queue must be"),  # reached another key
        ([1], {"job_id": "x" * 5000}, "at most 1024 characters"),
    ):
        with pytest.raises(InvalidJob, match=problem):
            t.apply_async(args, **options)
    # The deepest payload admitted runs, in every mode.
    deep = nested(MAX_NESTING - 2)
    assert result_of(t.apply_async([deep])) is None
    assert seen == [deep]


def test_a_payload_past_the_job_size_limit_is_refused() -> None:
    app = App(config=Config(workers=1))

    @app.job("t")
    def t(text: str) -> None: ...

    try:
        with pytest.raises(InvalidJob, match=r"bytes as JSON; at most 67108864"):
            t.delay("x" * (MAX_JOB_BYTES + 1))
        assert app.dispatcher.pending() == 0
    finally:
        app.stop(5)


def test_a_result_past_max_result_bytes_fails_the_job_clearly(
    make_app: Callable[..., App],
) -> None:
    app = make_app(max_result_bytes=1000)

    @app.job("t", max_attempts=3)
    def t(size: int) -> str:
        return "x" * size

    run_jobs(app)
    assert result_of(t.delay(900)) == "x" * 900
    handle = t.delay(2000)
    with pytest.raises(JobFailed) as failed:
        result_of(handle)
    status = failed.value.status
    assert "max_result_bytes=1000" in (status.last_error or "")
    assert status.attempts == 1  # permanent: the same result would be refused again


# -- errors that cannot be described, outcomes that cannot be recorded -----------------------
def test_describe_error_never_fails() -> None:
    class NoRepr(Unprintable):
        def __repr__(self) -> str:
            raise RuntimeError("__repr__ is broken too")

    assert describe_error(Unprintable()) == "Unprintable: <str() failed> Unprintable()"
    assert describe_error(NoRepr()) == "NoRepr: <str() and repr() failed>"
    assert describe_error(ValueError(os.fsdecode(b"\xff"))) == "ValueError: \\udcff"
    assert len(describe_error(ValueError("x" * 100_000))) < MAX_ERROR_TEXT + 50


def test_an_error_that_cannot_be_described_is_recorded(make_app: Callable[..., App]) -> None:
    # Was: the job stayed `running` for ever and the only worker slot was lost.
    app = make_app(workers=1)

    @app.job("broken", max_attempts=1)
    def broken() -> None:
        raise Unprintable

    @app.job("broken.permanent", max_attempts=3)
    def broken_permanent() -> None:
        raise permanent(Unprintable())

    @app.job("fine")
    def fine() -> str:
        return "ok"

    run_jobs(app)
    for job in (broken, broken_permanent):
        with pytest.raises(JobFailed) as failed:
            result_of(job.delay())
        status = failed.value.status
        assert status.state is JobState.FAILED and status.attempts == 1
        assert "Unprintable: <str() failed> Unprintable()" in (status.last_error or "")
        assert "Traceback" in (status.last_traceback or "")
    assert result_of(fine.delay()) == "ok"  # the worker slot is free


def test_huge_error_text_is_clipped_everywhere(
    make_app: Callable[..., App], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(workers=1)
    huge = "y" * 20_000_000

    @app.job("loud", max_attempts=2)
    def loud() -> None:
        raise ValueError(huge)

    run_jobs(app)
    with caplog.at_level(logging.WARNING, logger="csjd_core"), pytest.raises(JobFailed) as failed:
        result_of(loud.delay())
    status = failed.value.status
    assert status.attempts == 2
    assert len(status.last_error or "") < MAX_ERROR_TEXT + 100
    assert len(status.last_traceback or "") < MAX_TRACEBACK + 100
    # Logged once per attempt, clipped: kilobytes, not 20 MB (twice) per line.
    assert sum(len(r.getMessage()) for r in caplog.records) < 4 * (MAX_TRACEBACK + MAX_ERROR_TEXT)
    assert not any(r.exc_info for r in caplog.records if "loud" in r.getMessage())


def test_ids_are_quoted_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    app = App(mode="immediate", config=Config(retry=FAST))

    @app.job("t", max_attempts=1)
    def t() -> None:
        raise ValueError("no")

    forged = "x\n2026-01-01 00:00:00 INFO csjd_core forged line"
    with caplog.at_level(logging.ERROR, logger="csjd_core"):
        t.apply_async(job_id=forged)
    (record,) = [r for r in caplog.records if "job failed" in r.getMessage()]
    first_line = record.getMessage().splitlines()[0]
    assert repr(forged) in first_line  # one line, the newline escaped


class FaultyBackend(MemoryBackend):
    """Memory, with outcome recording that fails for the job ids in ``broken`` (a fault at the
    backend boundary: the engine must fail or release the delivery, never keep it)."""

    def __init__(self, broken: set[str], fail_too: bool) -> None:
        super().__init__()
        self.broken = broken
        self.fail_too = fail_too

    def succeed(self, delivery: Delivery, result: Any) -> bool:
        if delivery.job.id in self.broken:
            raise RuntimeError("cannot record a success")
        return super().succeed(delivery, result)

    def fail(self, delivery: Any, error: Any) -> bool:
        if delivery.job.id in self.broken and self.fail_too:
            raise RuntimeError("cannot record a failure either")
        return super().fail(delivery, error)


@pytest.mark.parametrize("fail_too", [False, True], ids=["fail", "release"])
def test_an_outcome_that_cannot_be_recorded_never_keeps_the_worker(fail_too: bool) -> None:
    from csjd_core.engine.dispatcher import BaseDispatcher  # noqa: PLC0415

    runs: list[str] = []
    d = BaseDispatcher(
        FaultyBackend({"bad"}, fail_too),
        EngineConfig(workers=1, max_pending_jobs=10, default_max_attempts=2, retry=FAST),
        max_results=100,
    )
    d.register_handler("t", lambda ctx, job: runs.append(job.id))
    try:
        d.start()
        d.submit(Job("bad", "t"))
        bad = wait_until(lambda: (s := d.status("bad")).state is JobState.FAILED and s, DEADLINE)
        d.submit(Job("next", "t"))  # the only worker is free
        wait_until(lambda: d.status("next").state is JobState.SUCCEEDED, DEADLINE)
    finally:
        d.stop(5)
    if fail_too:  # released: run again while attempts remain, then failed by the release
        assert runs == ["bad", "bad", "next"]
        assert bad.last_error == "the outcome of its last attempt could not be recorded"
    else:  # failed at once, saying why
        assert runs == ["bad", "next"]
        assert "attempt 1 could not be recorded: RuntimeError: cannot record a success" in (
            bad.last_error or ""
        )
        assert d.metrics().failed == 1


# -- the watchdog ----------------------------------------------------------------------------
class _Ctx(JobContext):
    """A context whose cancel() raises (a bug anywhere in what the watchdog calls)."""

    def cancel(self, *, timed_out: bool = False) -> None:
        raise RuntimeError("cancel is broken")


def test_the_watchdog_survives_any_error_and_any_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watchdog = Watchdog(lambda attempt: False)
    delivery = Delivery(Job("j", "t"), 1, 1, 1, None)
    try:
        with caplog.at_level(logging.ERROR, logger="csjd_core"):
            # A deadline far past threading.TIMEOUT_MAX (admission refuses it; the watchdog must
            # not depend on that), then one whose cancel raises.
            far = JobContext("far", 1, time.monotonic() + 1e12)
            watchdog.watch(Attempt(delivery, far, None))
            broken = _Ctx("broken", 1, time.monotonic() + 0.01)
            watchdog.watch(Attempt(delivery, broken, None))
            wait_until(lambda: "watchdog cycle failed" in caplog.text, DEADLINE)
            # Still firing: a later deadline is enforced on time.
            later = JobContext("later", 1, time.monotonic() + 0.05)
            watchdog.watch(Attempt(delivery, later, None))
            wait_until(lambda: later.cancelled, 2.0)
        assert not far.cancelled
        assert watchdog._thread is not None and watchdog._thread.is_alive()
    finally:
        watchdog.stop()


def test_a_timeout_is_enforced_after_a_hostile_one_was_refused() -> None:
    app = App(config=Config(workers=2, retry=FAST))
    cancelled = threading.Event()

    @app.job("slow", max_attempts=1, takes_context=True)
    def slow(ctx: JobContext) -> None:
        if ctx.wait(5.0):
            cancelled.set()
            ctx.raise_if_cancelled()

    try:
        with pytest.raises(InvalidJob):
            slow.apply_async(timeout=1e10)
        handle = slow.apply_async(timeout=0.3)
        with pytest.raises(JobFailed, match="timed out"):
            handle.result(timeout=DEADLINE)
        assert cancelled.is_set()
    finally:
        app.stop(5)


# -- the file store ----------------------------------------------------------------------------
def test_a_batch_too_large_for_one_record_is_refused_and_the_store_still_opens(
    tmp_path: Path,
) -> None:
    store = FileJobStore(tmp_path / "jobs.json")
    app = App(config=Config(store=store, workers=1))

    @app.job("t")
    def t(text: str) -> None: ...

    half = "x" * (MAX_JOB_BYTES * 6 // 10)  # each admitted, the two past one record
    try:
        dispatcher = app.dispatcher
        dispatcher.start()
        with pytest.raises(InvalidJob, match="smaller batches"):
            dispatcher.submit_batch([t.build_job([half]), t.build_job([half])])
        assert dispatcher.pending() == 0
        t.delay("small")
        assert app.wait(DEADLINE)
    finally:
        app.stop(5)
    reopened = FileJobStore(tmp_path / "jobs.json")
    assert reopened.jobs() == []  # opens: nothing half-written, nothing lost
    reopened.close()


OPEN_STORE = """
import sys
from csjd_core import FileJobStore, StoreCorrupted
try:
    FileJobStore(sys.argv[1]).open()
except StoreCorrupted as exc:
    print("StoreCorrupted:", exc)
"""


def open_in_a_subprocess(path: Path) -> str:
    """Open a store in a fresh interpreter: a RecursionError inside json's C decoder leaves
    CPython 3.11 in a state where pytest's own later parsing can fail (an INTERNALERROR)."""
    result = subprocess.run(
        [sys.executable, "-c", OPEN_STORE, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # no raw RecursionError
    return result.stdout


def test_deeply_nested_stored_records_are_store_corrupted(tmp_path: Path) -> None:
    from csjd_core.backends._records import SUBMITTED  # noqa: PLC0415
    from csjd_core.backends._wal import encode  # noqa: PLC0415

    deep = "[" * 100_000 + "]" * 100_000
    snapshot = tmp_path / "snap.json"
    snapshot.write_text('{"version": 1, "seq": 0, "jobs": ' + deep + "}")
    assert "StoreCorrupted: snapshot" in open_in_a_subprocess(snapshot)

    logged = tmp_path / "log.json"
    record = b'{"jobs": [{"job": {"id": "j", "type": "t", "payload": ' + deep.encode() + b"}}]}"
    Path(f"{logged}.log").write_bytes(encode(SUBMITTED, 1, record, version=2))
    assert "holds an undecodable record at byte offset 0" in open_in_a_subprocess(logged)

    # Nested past MAX_NESTING but decodable: the job cannot be rebuilt, reported the same way.
    payload = ("[" * (MAX_NESTING + 5) + "]" * (MAX_NESTING + 5)).encode()
    record = (
        b'{"jobs": [{"job": {"id": "j", "type": "t", "payload": '
        + payload
        + b'}, "max": 3, "t": 1.0}]}'
    )
    limited = tmp_path / "limited.json"
    Path(f"{limited}.log").write_bytes(encode(SUBMITTED, 1, record, version=2))
    with pytest.raises(StoreCorrupted, match="MAX_NESTING"):
        FileJobStore(limited).open()


def test_a_store_path_that_is_a_directory_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is a directory; give the snapshot file's path"):
        FileJobStore(tmp_path)
    later = tmp_path / "later"
    store = FileJobStore(later)
    later.mkdir()
    with pytest.raises(StoreFailed, match="is a directory"):
        store.open()
