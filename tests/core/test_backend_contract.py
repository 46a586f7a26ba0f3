"""The backend seam (`csjd_core.backends.base.Backend`): one contract, every backend.

The `backend` fixture is parametrized over factories: `MemoryBackend`, `FileJobStore` and the
Redis Streams backend (on the suite's server). Tests speak only the `Backend` API. Consumption
starts at the first fetch, as the engine starts it with its workers: before that a job is only
queued. Where a distributed backend differs by design the test says so (`local` is False):
it delivers through a reader thread (a job ready "now" arrives within a round trip), it records
the consumer (the process) as the worker of an attempt, and at close it leaves the unfinished
jobs in the shared queue instead of returning them.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from csjd_core import DuplicateJob, Job, JobState, QueueFull
from csjd_core.backends.base import AttemptError, Backend, BackendSettings, Delivery
from csjd_core.backends.file import FileJobStore
from csjd_core.backends.memory import MemoryBackend
from csjd_core.progress import Progress, make_progress
from csjd_core.testing import wait_until

CAP = 5
DEADLINE = 10.0  # generous: a condition returns as soon as it holds; this only bounds failures
SETTINGS = BackendSettings(
    max_pending_jobs=CAP,
    default_max_attempts=3,
    result_ttl=60.0,
    max_results=1000,
    worker_id="contract:1",
)
ERROR = AttemptError("error", "RuntimeError: boom", "Traceback (most recent call last): ...")

Factory = Callable[[pytest.FixtureRequest], Backend]


def memory_backend(request: pytest.FixtureRequest) -> Backend:
    return MemoryBackend()


def file_store(request: pytest.FixtureRequest) -> Backend:
    tmp_path = request.getfixturevalue("tmp_path")
    return FileJobStore(tmp_path / "store" / "jobs.json", fsync="never")


def redis_streams(request: pytest.FixtureRequest) -> Backend:
    from csjd_core.backends.redis import RedisStreamsBackend  # noqa: PLC0415
    from csjd_core.config import DistributedConfig, RedisConfig  # noqa: PLC0415

    request.getfixturevalue("redis_client")  # the suite's server, flushed
    config = DistributedConfig(
        max_pending_jobs=CAP,
        dedupe_window=0,  # the contract's ids are free again once finished (as in process)
        block=0.2,
        lease=5.0,
        heartbeat_interval=0.5,
        claim_interval=0.5,
    )
    return RedisStreamsBackend(RedisConfig.from_url(request.getfixturevalue("redis_url")), config)


def redis_cluster(request: pytest.FixtureRequest) -> Backend:
    """The Redis Streams backend on the session's 3-master Redis Cluster, its queues (the
    default and "other") on two different masters."""
    from csjd_core.backends.redis import RedisStreamsBackend  # noqa: PLC0415
    from csjd_core.config import DistributedConfig, RedisConfig  # noqa: PLC0415

    config = DistributedConfig(
        queues=("default", "other"),
        max_pending_jobs=CAP,
        dedupe_window=0,
        block=0.2,
        lease=5.0,
        heartbeat_interval=0.5,
        claim_interval=0.5,
    )
    url = request.getfixturevalue("redis_cluster_url")
    return RedisStreamsBackend(RedisConfig.from_url(url), config)


FACTORIES: dict[str, Factory] = {
    "memory": memory_backend,
    "file": file_store,
    "redis": redis_streams,
    "redis-cluster": redis_cluster,
}
# The backends whose consumption `poll` started: weakly held, so a backend made later at the
# address of a collected one is not taken for it (was: a set of id()s, which a fixture that did
# not discard its backend's left behind; CPython 3.13 reuses addresses often enough that the
# new backend never started consuming and "nothing was ready").
_consuming: weakref.WeakSet[Backend] = weakref.WeakSet()


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    instance = FACTORIES[request.param](request)
    assert instance.open(SETTINGS) == 0  # a fresh backend has nothing to recover
    try:
        yield instance
    finally:
        instance.wake()
        instance.close(clean=True)


def poll(backend: Backend, timeout: float) -> Delivery | None:
    """`Backend.fetch`, consumption started first (once) as the engine does with its workers."""
    if backend not in _consuming:
        _consuming.add(backend)
        backend.start_consuming()
    return backend.fetch(timeout)


def fetch(backend: Backend, timeout: float = DEADLINE) -> Delivery:
    delivery = poll(backend, timeout)
    assert delivery is not None, f"nothing ready within {timeout} s"
    return delivery


def at_once(backend: Backend) -> float:
    """The fetch timeout for a job ready now: none in process, a round trip's worth if a reader
    thread delivers it."""
    return 0.0 if backend.local else DEADLINE


def worker_of(backend: Backend, worker_id: str) -> str | None:
    """The worker an attempt's status names: the thread's id in process, the consumer (the
    process) in a distributed backend."""
    return worker_id if backend.local else getattr(backend, "consumer", None)


def state(backend: Backend, job_id: str) -> JobState | None:
    status = backend.status(job_id)
    return None if status is None else status.state


# -- admission -------------------------------------------------------------------------------


def test_enqueue_makes_jobs_pending_and_ready(backend: Backend) -> None:
    backend.enqueue([Job("a", "t", {"n": 1})])
    backend.enqueue([Job("b", "t"), Job("c", "t", max_attempts=7)])
    assert backend.pending() == 3
    assert backend.ready_count() == 3
    status = backend.status("c")
    assert status is not None
    assert (status.id, status.type, status.state) == ("c", "t", JobState.QUEUED)
    assert (status.attempts, status.max_attempts) == (0, 7)
    assert status.enqueued_at is not None
    assert backend.status("a").max_attempts == 3  # type: ignore[union-attr]
    assert backend.status("missing") is None


def test_enqueue_refuses_an_unfinished_duplicate(backend: Backend) -> None:
    backend.enqueue([Job("a", "t")])
    with pytest.raises(DuplicateJob):
        backend.enqueue([Job("a", "t")])
    assert backend.pending() == 1


def test_batch_with_a_duplicate_in_the_middle_admits_nothing(backend: Backend) -> None:
    backend.enqueue([Job("taken", "t")])
    with pytest.raises(DuplicateJob):
        backend.enqueue([Job("x", "t"), Job("taken", "t"), Job("y", "t")])
    with pytest.raises(DuplicateJob):
        backend.enqueue([Job("p", "t"), Job("q", "t"), Job("p", "t")])  # repeated in the batch
    assert backend.pending() == 1
    assert backend.ready_count() == 1
    for job_id in ("x", "y", "p", "q"):
        assert backend.status(job_id) is None
    backend.enqueue([Job("x", "t"), Job("p", "t")])  # nothing of them was reserved
    assert backend.pending() == 3


def test_the_cap_counts_every_unfinished_job_and_batches_are_atomic(backend: Backend) -> None:
    backend.enqueue([Job(f"j{i}", "t") for i in range(3)])
    running = fetch(backend)
    backend.started(running, "w")
    retrying = fetch(backend)
    backend.started(retrying, "w")
    assert backend.retry(retrying, ERROR, 60.0)
    backend.enqueue([Job("later", "t", run_at=datetime.now(UTC) + timedelta(hours=1))])
    assert backend.pending() == 4  # queued + running + waiting for retry + scheduled
    with pytest.raises(QueueFull):
        backend.enqueue([Job("over-1", "t"), Job("over-2", "t")])  # 4 + 2 > 5
    assert backend.status("over-1") is None
    backend.enqueue([Job("exactly", "t")])  # 4 + 1 == 5
    with pytest.raises(QueueFull):
        backend.enqueue([Job("over", "t")])
    assert backend.pending() == CAP


# -- fetch -----------------------------------------------------------------------------------


def test_fetch_is_fifo_and_counts_attempts(backend: Backend) -> None:
    backend.enqueue([Job(f"f{i}", "t", i) for i in range(3)])
    backend.enqueue([Job("f3", "t", 3)])
    deliveries = [fetch(backend) for _ in range(4)]
    assert [d.job.id for d in deliveries] == ["f0", "f1", "f2", "f3"]
    assert [d.job.payload for d in deliveries] == [0, 1, 2, 3]
    assert {d.attempt for d in deliveries} == {1}
    assert {d.max_attempts for d in deliveries} == {3}
    assert backend.ready_count() == 0
    assert backend.pending() == 4  # fetched is not finished


def test_fetch_on_an_empty_backend_returns_none_after_its_timeout(backend: Backend) -> None:
    started = time.monotonic()
    assert poll(backend, 0.0) is None
    assert poll(backend, 0.05) is None
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 1.0


def test_a_blocked_fetch_returns_as_soon_as_a_job_arrives(backend: Backend) -> None:
    got: list[Delivery | None] = []
    thread = threading.Thread(target=lambda: got.append(poll(backend, DEADLINE)))
    thread.start()
    wait_until(thread.is_alive, DEADLINE)
    started = time.monotonic()
    backend.enqueue([Job("arrives", "t")])
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    assert [d.job.id if d else None for d in got] == ["arrives"]


def test_jobs_submitted_one_by_one_reach_every_blocked_fetch(backend: Backend) -> None:
    # Each fetcher holds its delivery (a long job): every job must still reach an idle fetcher
    # at once, however the backend spreads its wake-ups (no wake-up may be lost or saved).
    fetchers = 4
    poll(backend, 0.0)  # consumption started before the fetchers block
    got: list[Delivery] = []
    lock = threading.Lock()

    def fetcher() -> None:
        delivery = poll(backend, DEADLINE)
        if delivery is not None:
            with lock:
                got.append(delivery)

    threads = [threading.Thread(target=fetcher) for _ in range(fetchers)]
    for thread in threads:
        thread.start()
    wait_until(lambda: all(t.is_alive() for t in threads), DEADLINE)
    started = time.monotonic()
    for i in range(fetchers):
        backend.enqueue([Job(f"one-by-one-{i}", "t")])
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(d.job.id for d in got) == [f"one-by-one-{i}" for i in range(fetchers)]
    assert time.monotonic() - started < 2.0


def test_wake_unblocks_a_blocked_fetch(backend: Backend) -> None:
    got: list[Delivery | None] = []
    entered = threading.Event()

    def fetcher() -> None:
        entered.set()
        got.append(poll(backend, 30.0))

    thread = threading.Thread(target=fetcher)
    thread.start()
    assert entered.wait(DEADLINE)
    # wake() may race with the fetcher reaching its wait; call it until the fetch returns.
    wait_until(
        lambda: (backend.wake(), not thread.is_alive())[1],
        DEADLINE,
        interval=0.01,
        message="wake() never unblocked fetch(30)",
    )
    assert got == [None]


# -- outcomes --------------------------------------------------------------------------------


def test_started_then_succeed(backend: Backend) -> None:
    backend.enqueue([Job("s", "t")])
    delivery = fetch(backend)
    backend.started(delivery, "worker-7")
    running = backend.status("s")
    assert running is not None
    assert (running.state, running.attempts) == (JobState.RUNNING, 1)
    assert running.worker_id == worker_of(backend, "worker-7")
    assert running.started_at is not None
    assert running.finished_at is None
    assert backend.succeed(delivery, {"ok": [1, 2]})
    done = backend.status("s")
    assert done is not None
    assert (done.state, done.result, done.attempts) == (JobState.SUCCEEDED, {"ok": [1, 2]}, 1)
    assert done.finished_at is not None
    assert done.finished_at >= running.started_at
    assert backend.pending() == 0
    backend.enqueue([Job("s", "t")])  # a finished id may be used again
    # Queued; a consumer's reader thread may have started it already.
    allowed = {JobState.QUEUED} if backend.local else {JobState.QUEUED, JobState.RUNNING}
    assert state(backend, "s") in allowed


def test_retry_schedules_the_next_attempt(backend: Backend) -> None:
    backend.enqueue([Job("r", "t")])
    first = fetch(backend)
    backend.started(first, "w")
    assert backend.retry(first, ERROR, 0.1)
    waiting = backend.status("r")
    assert waiting is not None
    assert (waiting.state, waiting.attempts, waiting.last_error) == (
        JobState.SCHEDULED,
        1,
        "RuntimeError: boom",
    )
    assert waiting.last_traceback == ERROR.traceback
    assert waiting.run_at is not None
    assert backend.pending() == 1
    assert backend.ready_count() == 0
    assert poll(backend, 0.0) is None  # not before its delay
    second = fetch(backend)
    assert (second.job.id, second.attempt) == ("r", 2)
    assert datetime.now(UTC) >= waiting.run_at - timedelta(milliseconds=5)


#: Slack of a due time: Redis's clock has ms steps, and a reply waits for its reader thread.
DUE_SLACK = 0.1


def test_a_delivery_knows_when_its_job_became_due(backend: Backend) -> None:
    """`Delivery.due` (the engine's lag comes from it): the enqueue, then the retry's due
    time, on this process's monotonic clock, measured with the queue's own clock."""
    before = time.monotonic()
    backend.enqueue([Job("d", "t")])
    after = time.monotonic()
    time.sleep(0.3)  # a lag to measure, not a synchronisation
    first = fetch(backend)
    fetched = time.monotonic()
    assert first.due is not None
    assert before - DUE_SLACK <= first.due <= after + DUE_SLACK
    assert fetched - first.due >= 0.3 - DUE_SLACK  # the wait shows as lag
    backend.started(first, "w")
    retried = time.monotonic()
    assert backend.retry(first, ERROR, 0.3)
    second = fetch(backend)
    assert second.attempt == 2
    assert second.due is not None
    # Due when its delay ended (Redis: when it was promoted into the stream, just after).
    assert retried + 0.3 - DUE_SLACK <= second.due <= time.monotonic()


def test_fail_is_terminal_and_keeps_the_error(backend: Backend) -> None:
    backend.enqueue([Job("f", "t")])
    delivery = fetch(backend)
    backend.started(delivery, "w")
    assert backend.fail(delivery, ERROR)
    status = backend.status("f")
    assert status is not None
    assert (status.state, status.last_error, status.last_traceback) == (
        JobState.FAILED,
        ERROR.message,
        ERROR.traceback,
    )
    assert status.finished_at is not None
    assert backend.pending() == 0
    assert poll(backend, 0.0) is None


@pytest.mark.parametrize("late", ["succeed", "retry", "fail"])
def test_a_stale_delivery_is_refused_and_changes_nothing(backend: Backend, late: str) -> None:
    backend.enqueue([Job("j", "t")])
    stale = fetch(backend)
    backend.started(stale, "old-worker")
    assert backend.retry(stale, ERROR, 0.0)
    current = fetch(backend)  # the same job, delivered again
    assert (current.job.id, current.attempt) == ("j", 2)
    backend.started(current, "new-worker")
    before = backend.status("j")
    outcome = {
        "succeed": lambda: backend.succeed(stale, "stale result"),
        "retry": lambda: backend.retry(stale, ERROR, 0.0),
        "fail": lambda: backend.fail(stale, ERROR),
    }[late]()
    assert outcome is False
    assert backend.status("j") == before
    assert backend.ready_count() == 0
    assert backend.succeed(current, "fresh result")
    assert backend.status("j").result == "fresh result"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("first", "second"),
    [("retry", "succeed"), ("retry", "retry"), ("retry", "fail"), ("fail", "succeed")],
)
def test_a_delivery_records_one_outcome_only(backend: Backend, first: str, second: str) -> None:
    """A second outcome for the same delivery is stale too: after retry(d), succeed(d) must
    not finish the job that is waiting for its next attempt (it would run again later)."""
    backend.enqueue([Job("j", "t")])
    delivery = fetch(backend)
    backend.started(delivery, "w")
    calls = {
        "succeed": lambda: backend.succeed(delivery, "second outcome"),
        "retry": lambda: backend.retry(delivery, ERROR, 0.0),
        "fail": lambda: backend.fail(delivery, ERROR),
    }
    assert calls[first]() is True
    after_first = backend.status("j")
    pending = backend.pending()
    assert calls[second]() is False
    assert backend.status("j") == after_first
    assert backend.pending() == pending
    if first == "retry":
        again = fetch(backend)  # exactly one next attempt is waiting
        assert again.attempt == 2
        assert poll(backend, 0.0) is None


# -- scheduling ------------------------------------------------------------------------------


def test_run_at_jobs_become_ready_at_their_due_time(backend: Backend) -> None:
    # "soon" must still be scheduled when the first fetches run: half a second is room for a
    # loaded machine (0.1 s was not, once, on a cluster in a full run).
    now = datetime.now(UTC)
    backend.enqueue(
        [
            Job("late", "t", run_at=now + timedelta(seconds=0.6)),
            Job("soon", "t", run_at=now + timedelta(seconds=0.5)),
            Job("past", "t", run_at=now - timedelta(seconds=5)),
        ]
    )
    status = backend.status("soon")
    assert status is not None
    assert status.state is JobState.SCHEDULED
    assert status.run_at is not None
    assert abs((status.run_at - (now + timedelta(seconds=0.5))).total_seconds()) < 0.01
    assert backend.pending() == 3
    assert backend.ready_count() == 1
    assert fetch(backend, at_once(backend)).job.id == "past"
    assert poll(backend, 0.0) is None
    soon = fetch(backend)
    assert soon.job.id == "soon"
    assert datetime.now(UTC) >= now + timedelta(seconds=0.5)
    late = fetch(backend)
    assert late.job.id == "late"
    assert datetime.now(UTC) >= now + timedelta(seconds=0.6)


def test_a_blocked_fetch_wakes_for_a_job_scheduled_while_it_waits(backend: Backend) -> None:
    """A fetch that started waiting on an empty backend must not sleep through a run_at job
    enqueued meanwhile: it returns at the job's due time, not at the end of its own timeout."""
    got: list[Delivery | None] = []
    entered = threading.Event()

    def fetcher() -> None:
        entered.set()
        got.append(poll(backend, DEADLINE))

    thread = threading.Thread(target=fetcher)
    thread.start()
    assert entered.wait(DEADLINE)
    waits = ("wait",) if backend.local else ("wait", "fetch")  # a C queue's get has no frame
    wait_until(  # the fetcher is blocked inside fetch()
        lambda: (
            sys._current_frames().get(thread.ident or -1) is not None
            and any(w in sys._current_frames()[thread.ident or -1].f_code.co_name for w in waits)
        ),
        DEADLINE,
        message="fetcher never blocked",
    )
    due = time.monotonic() + 0.1
    backend.enqueue([Job("soon", "t", run_at=datetime.now(UTC) + timedelta(seconds=0.1))])
    thread.join(DEADLINE)
    late = time.monotonic() - due
    assert [d.job.id if d else None for d in got] == ["soon"]
    assert late < DEADLINE / 2, f"the scheduled job was fetched {late:.2f} s after its due time"


# -- progress (ctx.set_progress) -------------------------------------------------------------


def progress_of(backend: Backend, job_id: str) -> Progress | None:
    status = backend.status(job_id)
    assert status is not None
    return status.progress


def test_progress_of_a_running_attempt_shows_in_its_status(backend: Backend) -> None:
    """In process at once; Redis writes the last value about once a second (coalesced)."""
    backend.enqueue([Job("p", "t")])
    delivery = fetch(backend)
    backend.started(delivery, "w")
    assert progress_of(backend, "p") is None
    for step in range(1, 101):  # a tight loop: only the last value matters
        assert backend.set_progress(delivery, make_progress(step, 200, f"row {step}")) is not False
    wait_until(lambda: progress_of(backend, "p") is not None, DEADLINE)
    shown = progress_of(backend, "p")
    assert shown is not None
    assert (shown.current, shown.total, shown.message) == (100, 200, "row 100")
    assert shown.fraction == 0.5
    assert abs((datetime.now(UTC) - shown.at).total_seconds()) < DEADLINE


@pytest.mark.parametrize("outcome", ["succeed", "retry", "fail"])
def test_the_last_progress_is_kept_with_the_outcome(backend: Backend, outcome: str) -> None:
    """The value set just before the outcome (never flushed on its own) is in the record."""
    backend.enqueue([Job("p", "t")])
    delivery = fetch(backend)
    backend.started(delivery, "w")
    backend.set_progress(delivery, make_progress(1, 3))
    backend.set_progress(delivery, make_progress(3, 3, "done"))
    assert {
        "succeed": lambda: backend.succeed(delivery, None),
        "retry": lambda: backend.retry(delivery, ERROR, 60.0),
        "fail": lambda: backend.fail(delivery, ERROR),
    }[outcome]()
    shown = progress_of(backend, "p")
    assert shown is not None
    assert (shown.current, shown.total, shown.message) == (3, 3, "done")


def test_a_late_progress_write_changes_no_finished_record(backend: Backend) -> None:
    backend.enqueue([Job("p", "t")])
    delivery = fetch(backend)
    backend.started(delivery, "w")
    backend.set_progress(delivery, make_progress(5, 10))
    assert backend.succeed(delivery, "ok")
    before = backend.status("p")
    assert backend.set_progress(delivery, make_progress(9, 10, "late")) is False
    if not backend.local:
        wait_flushed(backend)
    assert backend.status("p") == before
    assert before is not None and before.progress is not None and before.progress.current == 5


def test_a_delivery_that_lost_its_claim_cannot_write_progress(backend: Backend) -> None:
    backend.enqueue([Job("p", "t")])
    stale = fetch(backend)
    backend.started(stale, "old")
    backend.set_progress(stale, make_progress(1, message="first attempt"))
    assert backend.retry(stale, ERROR, 0.0)
    current = fetch(backend)
    backend.started(current, "new")
    assert backend.set_progress(stale, make_progress(2, message="stale")) is False
    backend.set_progress(current, make_progress(7, message="second attempt"))
    wait_until(lambda: getattr(progress_of(backend, "p"), "current", None) == 7, DEADLINE)
    assert backend.set_progress(stale, make_progress(3, message="stale")) is False
    if not backend.local:
        wait_flushed(backend)
    shown = progress_of(backend, "p")
    assert shown is not None and shown.message == "second attempt"


def wait_flushed(backend: Backend) -> None:
    """Flush a distributed backend's unwritten progress now (its maintenance thread does it
    about once a second): a refused value would have been sent by then."""
    backend.maintenance.flush_progress()  # type: ignore[attr-defined]


# -- priorities ------------------------------------------------------------------------------


def fetch_ids(backend: Backend, count: int) -> list[str]:
    """The ids of the next ``count`` deliveries, in the order they are fetched (each one
    started and settled, so a distributed backend has workers free for the next)."""
    ids = []
    for _ in range(count):
        delivery = fetch(backend)
        backend.started(delivery, "w")
        assert backend.succeed(delivery, None)
        ids.append(delivery.job.id)
    return ids


def test_fetch_takes_the_highest_priority_first_and_fifo_among_equals(backend: Backend) -> None:
    """Submitted before consumption starts (as with workers paused): fetched by priority, in
    submission order among jobs of one priority. Priorities 10, 0 and -10 are one per Redis
    band, so every backend agrees."""
    backend.enqueue([Job("a", "t"), Job("b", "t", priority=-10)])
    backend.enqueue([Job("c", "t", priority=10)])
    backend.enqueue([Job("d", "t")])
    backend.enqueue([Job("e", "t", priority=10)])
    assert backend.ready_count() == 5
    assert [backend.status(i).priority for i in "abc"] == [0, -10, 10]  # type: ignore[union-attr]
    assert fetch_ids(backend, 5) == ["c", "e", "a", "d", "b"]
    assert backend.status("b").priority == -10  # type: ignore[union-attr]


def test_priorities_within_a_band(backend: Backend) -> None:
    """In process the order is exact; Redis orders by band (priorities above 0 share one,
    below 0 another: docs/distributed.md, "Priorities"), FIFO within it."""
    backend.enqueue([Job("p5", "t", priority=5), Job("p100", "t", priority=100)])
    backend.enqueue([Job("m1", "t", priority=-1), Job("m100", "t", priority=-100)])
    backend.enqueue([Job("p1", "t", priority=1)])
    ids = fetch_ids(backend, 5)
    if backend.local:
        assert ids == ["p100", "p5", "p1", "m1", "m100"]
    else:
        assert ids == ["p5", "p100", "p1", "m1", "m100"]


def test_scheduled_jobs_and_retries_keep_their_priority(backend: Backend) -> None:
    backend.enqueue([Job("s", "t", priority=7, run_at=datetime.now(UTC) + timedelta(seconds=0.1))])
    first = fetch(backend)
    assert (first.job.id, first.job.priority) == ("s", 7)
    backend.started(first, "w")
    assert backend.retry(first, ERROR, 0.1)
    second = fetch(backend)
    assert (second.job.id, second.job.priority, second.attempt) == ("s", 7, 2)


def test_a_retry_waits_in_its_priority_when_it_is_due(backend: Backend) -> None:
    """A retry due while jobs of a lower priority wait goes before them (in process: checked
    with nothing fetched meanwhile; a distributed backend reads what is ready at once, so the
    retry's band is what is checked there: the next job fetched after it is due)."""
    backend.enqueue([Job("r", "t", priority=10)])
    first = fetch(backend)
    backend.started(first, "w")
    assert backend.retry(first, ERROR, 0.2)
    if not backend.local:
        second = fetch(backend)
        assert (second.job.id, second.job.priority, second.attempt) == ("r", 10, 2)
        return
    backend.enqueue([Job("n", "t"), Job("low", "t", priority=-10)])
    due = time.monotonic() + 0.25
    wait_until(lambda: time.monotonic() >= due, DEADLINE)
    assert fetch_ids(backend, 3) == ["r", "n", "low"]


# -- close -----------------------------------------------------------------------------------


def test_close_returns_the_unfinished_jobs_that_are_not_running(backend: Backend) -> None:
    backend.enqueue([Job(f"c{i}", "t") for i in range(3)])
    running = fetch(backend)
    backend.started(running, "w")
    done = fetch(backend)
    backend.started(done, "w")
    backend.succeed(done, None)
    backend.enqueue([Job("future", "t", run_at=datetime.now(UTC) + timedelta(hours=1))])
    left = backend.close(clean=False)
    if backend.local:
        assert sorted(job.id for job in left) == ["c2", "future"]
        return
    # Distributed: nothing is returned; the jobs stay in the shared queue for other consumers.
    assert left == []
    assert [state(backend, i) for i in ("c2", "future")] == [JobState.QUEUED, JobState.SCHEDULED]


# -- headers (the trace context of the call that enqueued a job) -----------------------------

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "csjd=ü1,vendor=x",  # any text
}


def test_headers_survive_admission_scheduling_and_retries(backend: Backend) -> None:
    """A job's headers come back with every delivery of it: at once, after its ``run_at``,
    and for each retry; a job without headers stays without."""
    soon = datetime.now(UTC) + timedelta(seconds=0.1)
    backend.enqueue([Job("h", "t", headers=HEADERS), Job("plain", "t")])
    backend.enqueue([Job("later", "t", run_at=soon, headers={"traceparent": "x"})])
    first, plain = fetch(backend), fetch(backend)
    assert (first.job.id, first.job.headers) == ("h", HEADERS)
    assert (plain.job.id, plain.job.headers) == ("plain", None)
    backend.started(first, "w")
    assert backend.retry(first, ERROR, 0.05)
    delivered = {d.job.id: d for d in (fetch(backend), fetch(backend))}
    assert delivered["h"].attempt == 2
    assert delivered["h"].job.headers == HEADERS
    assert delivered["later"].job.headers == {"traceparent": "x"}


def test_headers_survive_close_and_reopen(backend: Backend, request: pytest.FixtureRequest) -> None:
    """Unfinished jobs come back with their headers: returned at close in memory, recovered
    when a file store opens again (from its log, then from its snapshot), read from the queue
    by another Redis consumer."""
    backend.enqueue([Job("kept", "t", headers=HEADERS, priority=3), Job("bare", "t")])
    left = backend.close(clean=False)
    if isinstance(backend, MemoryBackend):
        assert {job.id: job.headers for job in left} == {"kept": HEADERS, "bare": None}
        return
    make = FACTORIES[request.node.callspec.params["backend"]]
    for round in ("log", "snapshot"):
        again = make(request)  # the same store file, or the same Redis queues
        again.open(SETTINGS)
        try:
            jobs = {d.job.id: d.job.headers for d in (fetch(again), fetch(again))}
            assert jobs == {"kept": HEADERS, "bare": None}, round
            if not isinstance(again, FileJobStore):
                return
            again.compact()  # the next round reads them from the snapshot
        finally:
            again.wake()
            again.close(clean=False)
