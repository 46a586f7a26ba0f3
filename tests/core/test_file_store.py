"""FileJobStore in one process: the log cut and damaged under a whole store, write and fsync
failures injected at the system-call boundary, the lock between store objects, group commit,
compaction and reopening. Tests with real process deaths are in tests/chaos/."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from csjd_core import (
    BackendUnavailable,
    Config,
    CSJDError,
    Dispatcher,
    FileJobStore,
    Job,
    JobNotFound,
    JobState,
    JobStoreLocked,
    StoreCorrupted,
    StoreFailed,
)
from csjd_core.backends import _records as fmt
from csjd_core.backends._wal import HEADER, VERSION, encode
from csjd_core.backends.base import AttemptError
from csjd_core.backends.memory import Entry
from csjd_core.testing import wait_until

LOGGER = "csjd_core.store"
State = dict[str, tuple[str, int]]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "jobs.json"


def view(store: FileJobStore) -> State:
    return {s.id: (str(s.state), s.attempts) for s in store.jobs()}


def crash_image(store: FileJobStore, where: Path) -> Path:
    """Copy an open store's files as a process crash would leave them: its writes are in the
    page cache, so a copy sees every one of them."""
    where.mkdir(parents=True)
    for name in (store.path, store.log_path):
        if os.path.exists(name):
            shutil.copy(name, where / os.path.basename(name))
    return where / os.path.basename(store.path)


def is_log(store: FileJobStore, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == store.log_path
    except OSError:
        return False


def open_view(path: Path, **kwargs: Any) -> State:
    with FileJobStore(path, **kwargs) as store:
        return view(store)


# -- 2. the log cut at every byte offset, under a whole store ----------------------------------
def _history(tmp_path: Path) -> tuple[bytes, list[int], list[State]]:
    """A log of eight records; the log size after each and what recovery must find then."""
    store = FileJobStore(tmp_path / "build" / "jobs.json", fsync="never", compact_bytes=1 << 30)
    store.open()
    sizes: list[int] = []

    def step() -> None:
        sizes.append(os.path.getsize(store.log_path))

    for job_id in ("a", "b", "c"):
        store.enqueue([Job(job_id, "t", {"n": job_id})])
        step()
    first = store.fetch(0)
    assert first is not None and first.job.id == "a"
    store.started(first, "w")
    step()
    store.succeed(first, None)
    step()
    second = store.fetch(0)
    assert second is not None and second.job.id == "b"
    store.started(second, "w")
    step()
    store.retry(second, AttemptError("error", "boom"), 3600)
    step()
    store.enqueue([Job("d", "t")])
    step()
    log = Path(store.log_path).read_bytes()  # as a crash would leave it (close compacts)
    store.close()
    q, s = "queued", "scheduled"
    expected: list[State] = [
        {"a": (q, 0)},
        {"a": (q, 0), "b": (q, 0)},
        {"a": (q, 0), "b": (q, 0), "c": (q, 0)},
        {"a": (q, 1), "b": (q, 0), "c": (q, 0)},  # a was running: the crash is attempt 1
        {"b": (q, 0), "c": (q, 0)},
        {"b": (q, 1), "c": (q, 0)},  # b was running: the crash is attempt 1
        {"b": (s, 1), "c": (q, 0)},
        {"b": (s, 1), "c": (q, 0), "d": (q, 0)},
    ]
    return log, sizes, expected


def test_store_recovers_the_prefix_of_a_log_cut_at_every_offset_of_its_last_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log, sizes, expected = _history(tmp_path)
    assert len(log) == sizes[-1]
    checked = 0
    for cut in range(sizes[-4], len(log) + 1):
        complete = sum(1 for size in sizes if size <= cut)
        valid_end = sizes[complete - 1]
        path = tmp_path / f"cut-{cut}" / "jobs.json"
        path.parent.mkdir()
        Path(f"{path}.log").write_bytes(log[:cut])
        store = FileJobStore(path, fsync="never", compact_bytes=1 << 30)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            store.open()
        assert view(store) == expected[complete - 1], cut
        messages = [r.getMessage() for r in caplog.records]
        if cut == valid_end:
            assert messages == [], cut
        else:
            assert len(messages) == 1 and f"dropped_bytes={cut - valid_end}" in messages[0]
        assert os.path.getsize(f"{path}.log") == valid_end, "torn tail not cut before appending"
        # New work after the cut; a crash now must find it, and none of the cut bytes.
        store.enqueue([Job("e", "t")])
        image = crash_image(store, tmp_path / f"cut-{cut}-image")
        store.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            after = open_view(image, fsync="never")
        assert after == {**expected[complete - 1], "e": ("queued", 0)}, cut
        assert caplog.records == []
        checked += 1
    assert checked > 3 * HEADER.size


# -- 3. bit flips under a whole store ----------------------------------------------------------
def test_store_with_a_flipped_bit_never_decodes_a_wrong_job(tmp_path: Path) -> None:
    log, sizes, expected = _history(tmp_path)
    log, sizes, expected = log[: sizes[2]], sizes[:3], expected[:3]  # three submitted jobs
    starts = [0, *sizes[:-1]]
    refused = 0
    for pos in range(len(log)):
        k = sum(1 for end in sizes if end <= pos)  # the damaged record
        path = tmp_path / f"flip-{pos}" / "jobs.json"
        path.parent.mkdir()
        damaged = bytearray(log)
        damaged[pos] ^= 1 << (pos % 8)
        Path(f"{path}.log").write_bytes(bytes(damaged))
        if k == len(sizes) - 1:  # the last record: a torn tail, dropped
            assert open_view(path) == (expected[k - 1] if k else {}), pos
            continue
        with pytest.raises(StoreCorrupted) as caught:
            FileJobStore(path).open()
        assert caught.value.offset == starts[k], pos
        refused += 1
        # The explicit repair keeps a copy and recovers the records before the damage.
        assert open_view(path, repair=True) == (expected[k - 1] if k else {}), pos
        [copy] = [p for p in path.parent.iterdir() if ".log.broken-" in p.name]
        assert copy.read_bytes() == bytes(damaged)
    assert refused == sizes[-2]


def test_a_valid_frame_with_an_undecodable_payload_is_corruption(store_path: Path) -> None:
    store_path.parent.mkdir(parents=True)
    good = json.dumps({"jobs": [{"job": Job("a", "t").to_dict(), "max": 3, "t": 1.0}]})
    Path(f"{store_path}.log").write_bytes(
        encode(1, 1, good.encode(), version=2) + encode(1, 2, b'{"jobs": [{"nope": 1}]}', 2)
    )
    with pytest.raises(StoreCorrupted) as caught:
        FileJobStore(store_path).open()
    assert caught.value.offset == len(encode(1, 1, good.encode(), version=2))
    # The refused open released the lock: a fixed log opens.
    Path(f"{store_path}.log").write_bytes(encode(1, 1, good.encode(), version=2))
    assert open_view(store_path) == {"a": ("queued", 0)}


def test_a_binary_submitted_record_that_does_not_hold_its_items_is_corruption(
    store_path: Path,
) -> None:
    store_path.parent.mkdir(parents=True)
    good = encode(1, 1, fmt.submitted([Entry(Job("a", "t"), 3, 1.0)]))
    for bad in (b"", b"\0" * 5, fmt.submitted([Entry(Job("b", "t", [1]), 3, 1.0)])[:-1]):
        Path(f"{store_path}.log").write_bytes(good + encode(1, 2, bad))
        with pytest.raises(StoreCorrupted) as caught:
            FileJobStore(store_path).open()
        assert caught.value.offset == len(good)


def test_a_binary_submitted_record_with_an_impossible_time_is_corruption(
    store_path: Path,
) -> None:
    # A record whose checksum holds but whose run_at is out of any clock's range (damage the
    # checksum did not catch) is corruption at its offset, not an OverflowError from open().
    store_path.parent.mkdir(parents=True)
    good = encode(1, 1, fmt.submitted([Entry(Job("a", "t"), 3, 1.0)]))
    at = datetime(2031, 1, 2, tzinfo=UTC)
    item = fmt.submitted([Entry(Job("b", "t", run_at=at), 3, 1.0)])
    stamp = struct.pack("<d", at.timestamp())
    for impossible in (math.inf, -math.inf, 1e20):
        bad = item.replace(stamp, struct.pack("<d", impossible), 1)
        assert bad != item
        Path(f"{store_path}.log").write_bytes(good + encode(1, 2, bad))
        with pytest.raises(StoreCorrupted) as caught:
            FileJobStore(store_path).open()
        assert caught.value.offset == len(good)


def test_submitted_records_keep_every_field_of_their_jobs(store_path: Path) -> None:
    """Binary submitted records (format 3): ids, types and queues in any text, payloads as
    JSON, every option; one job or a batch in one record."""
    at = datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    jobs = [
        Job("plain", "t"),
        Job("z\u00e9\U0001f600", "typ\u00e9", {"k": ["v", 1.5, None, True]}),
        Job("opts", "t", 0, max_attempts=7, timeout=timedelta(seconds=2.5), queue="q\u00e9"),
        Job("later", "t", "", run_at=at, timeout=3),
    ]
    store = FileJobStore(store_path, fsync="never")
    store.open()
    store.enqueue(jobs[:1])
    store.enqueue(jobs[1:])
    stored = {job.id: store.job(job.id) for job in jobs}
    image = crash_image(store, store_path.parent.parent / "image")
    store.close()
    with FileJobStore(image) as reopened:
        for job in jobs:
            assert reopened.job(job.id).to_dict() == stored[job.id].to_dict() == job.to_dict()
        assert {s.id: s.max_attempts for s in reopened.jobs()}["opts"] == 7


def test_jobs_with_a_priority_are_logged_in_the_json_form_and_recovered_in_order(
    store_path: Path,
) -> None:
    """A submitted record holding a job of priority other than 0 is the JSON form (frame
    version 2: the binary items have no priority field), alone or in a batch with others; a
    crash image and a compacted snapshot both give the jobs back with their priorities, and
    the recovered ready queue takes them highest first, FIFO among equals."""
    jobs = [
        Job("n1", "t"),
        Job("h1", "t", {"x": 1}, priority=40),
        Job("l1", "t", priority=-3, queue="q"),
        Job("h2", "t", priority=40),
        Job("n2", "t"),
    ]
    store = FileJobStore(store_path, fsync="never", compact_bytes=1 << 30)
    store.open()
    store.enqueue(jobs[:1])
    store.enqueue(jobs[1:3])  # a batch with a priority: one JSON record
    store.enqueue(jobs[3:4])
    store.enqueue(jobs[4:])
    data = Path(store.log_path).read_bytes()
    versions = []
    pos = 0
    while pos < len(data):
        _, version, _, length, _, _ = HEADER.unpack_from(data, pos)
        versions.append(version)
        pos += HEADER.size + length
    assert versions == [VERSION, fmt.EXTENDED_VERSION, fmt.EXTENDED_VERSION, VERSION]
    image = crash_image(store, store_path.parent.parent / "image")
    store.close()  # a clean close compacts: the snapshot holds them now

    def drained(path: Path) -> list[tuple[str, int]]:
        with FileJobStore(path, fsync="never") as reopened:
            for job in jobs:
                assert reopened.job(job.id).to_dict() == job.to_dict()
            out = []
            while (delivery := reopened.fetch(0)) is not None:
                out.append((delivery.job.id, delivery.job.priority))
            return out

    order = [("h1", 40), ("h2", 40), ("n1", 0), ("n2", 0), ("l1", -3)]
    assert drained(image) == order
    assert drained(store_path) == order


def test_logs_written_by_format_versions_1_and_2_open_and_take_version_3_records_after_them(
    store_path: Path,
) -> None:
    """Version 1 wrote every payload as JSON; version 2 wrote started / finished records in
    binary, version 3 submitted records too. A store written by an earlier release opens, and
    one log may hold all three."""
    store_path.parent.mkdir(parents=True)

    def submitted(job_id: str) -> bytes:
        item = {"job": Job(job_id, "t", {"n": job_id}).to_dict(), "max": 3, "t": 1.0}
        return json.dumps({"jobs": [item]}).encode()

    v1 = [
        (1, submitted("done")),
        (1, submitted("running")),
        (1, submitted("retrying")),
        (1, submitted("queued")),
        (2, b'{"id":"done","a":1,"t":2.0}'),
        (4, b'{"id":"done","s":"succeeded","t":3.0}'),
        (2, b'{"id":"running","a":1,"t":2.0}'),
        (2, b'{"id":"retrying","a":1,"t":2.0}'),
        (3, b'{"id":"retrying","a":1,"due":4102444800.0,"err":"boom"}'),
    ]
    v2 = [
        (1, submitted("v2-done")),
        (1, submitted("v2-running")),
        (2, fmt.started("v2-done", 1, 2.0)),
        (4, fmt.finished("v2-done", JobState.SUCCEEDED, 3.0)),
        (2, fmt.started("v2-running", 2, 2.0)),
    ]
    log = b"".join(encode(t, i + 1, p, version=1) for i, (t, p) in enumerate(v1))
    log += b"".join(encode(t, i + 20, p, version=2) for i, (t, p) in enumerate(v2))
    Path(f"{store_path}.log").write_bytes(log)
    expected = {
        "running": ("queued", 1),
        "retrying": ("scheduled", 1),
        "queued": ("queued", 0),
        "v2-running": ("queued", 2),
    }
    image = store_path.parent.parent / "v1"
    image.mkdir()
    shutil.copy(f"{store_path}.log", image / "jobs.json.log")
    assert open_view(image / "jobs.json") == expected  # (close compacts: use a copy)

    # Appended to by this version (binary started / finished), then reopened from a crash image.
    store = FileJobStore(store_path, fsync="never", compact_bytes=1 << 30)
    store.open()
    try:
        assert view(store) == expected
        first = store.fetch(0)
        assert first is not None and first.job.id == "running"
        store.started(first, "w")
        store.succeed(first, None)
        second = store.fetch(0)
        assert second is not None and second.job.id == "queued"
        store.started(second, "w")
        store.enqueue([Job("new", "t")])
        data = Path(store.log_path).read_bytes()
        assert data.startswith(log)  # the old records are kept as they were
        assert HEADER.unpack_from(data, len(log))[1] == VERSION  # new ones in the current one
        recovered = open_view(crash_image(store, store_path.parent.parent / "mixed"))
    finally:
        store.close()
    assert recovered == {
        "retrying": ("scheduled", 1),
        "queued": ("queued", 1),  # was running: the crash is its attempt 1
        "v2-running": ("queued", 2),
        "new": ("queued", 0),
    }


def test_a_damaged_snapshot_is_reported_not_ignored(store_path: Path) -> None:
    with FileJobStore(store_path) as store:
        store.enqueue([Job("a", "t")])
    assert json.loads(store_path.read_text())["jobs"][0]["job"]["id"] == "a"
    for damage in (b'{"version": 1, "seq": 3, "jobs": [{"job": {}}]}', b'{"version": 1, "s'):
        store_path.write_bytes(damage)
        with pytest.raises(StoreCorrupted, match="snapshot"):
            FileJobStore(store_path).open()


# -- 5. ENOSPC and short writes at the write boundary ------------------------------------------
FAULTS = ["enospc", "short-then-enospc", "zero"]


@pytest.fixture
def write_fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[FileJobStore, str], None]]:
    """``arm(store, kind)``: the next write to the store's log fails that way."""
    real_write = os.write
    state: dict[str, Any] = {"store": None, "kind": None, "calls": 0}

    def fake(fd: int, data: Any) -> int:
        store, kind = state["store"], state["kind"]
        if kind is None or not is_log(store, fd):
            return real_write(fd, data)
        state["calls"] += 1
        if kind == "short-then-enospc" and state["calls"] == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a torn record on disk
        if kind == "zero":
            return 0
        raise OSError(errno.ENOSPC, "No space left on device")

    def arm(store: FileJobStore, kind: str | None) -> None:
        state.update(store=store, kind=kind, calls=0)

    monkeypatch.setattr(os, "write", fake)
    yield arm
    state["kind"] = None


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failed_write_refuses_the_job_and_cuts_the_log_back(
    store_path: Path,
    tmp_path: Path,
    fault: str,
    write_fault: Callable[[FileJobStore, str | None], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FileJobStore(store_path, compact_bytes=1 << 30)
    dispatcher = Dispatcher(Config(workers=2, store=store))
    ran: list[str] = []
    dispatcher.register_handler("t", lambda ctx, job: ran.append(job.id))
    for i in range(3):
        dispatcher.submit(Job(f"before-{i}", "t"))
    size = os.path.getsize(store.log_path)
    before = dispatcher.metrics()

    write_fault(store, fault)
    with pytest.raises(StoreFailed) as caught:
        dispatcher.submit(Job("refused", "t", {"big": "x" * 100}))
    with pytest.raises(StoreFailed):
        dispatcher.submit_batch([Job("batch-1", "t"), Job("batch-2", "t")])
    write_fault(store, None)

    error = caught.value
    assert isinstance(error, BackendUnavailable) and isinstance(error, CSJDError)
    assert "not accepted" in str(error) and store.log_path in str(error)
    if fault != "zero":
        assert "disk full" in str(error)
        assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    for job_id in ("refused", "batch-1", "batch-2"):
        with pytest.raises(JobNotFound):
            dispatcher.status(job_id)
    after = dispatcher.metrics()
    assert after.accepted == before.accepted == 3
    assert after.submitted == before.submitted + 3
    assert os.path.getsize(store.log_path) == size, "the half-written record was not cut"
    assert store.failed is None  # a refused write does not break the store

    # The store is consistent: a crash now finds exactly the earlier jobs, with no torn tail.
    dispatcher.submit(Job("after", "t"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        recovered = open_view(crash_image(store, tmp_path / "image"))
    assert recovered == dict.fromkeys(("before-0", "before-1", "before-2", "after"), ("queued", 0))
    assert caplog.records == []
    # The jobs already stored run.
    dispatcher.start()
    assert dispatcher.join(30)
    dispatcher.stop()
    assert sorted(ran) == ["after", "before-0", "before-1", "before-2"]


def test_an_unusable_store_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    dispatcher = Dispatcher(Config(store=FileJobStore(tmp_path / "file" / "jobs.json")))
    dispatcher.register_handler("t", lambda ctx, job: None)
    with pytest.raises(StoreFailed, match="cannot create the store directory"):
        dispatcher.submit(Job("a", "t"))
    assert dispatcher.metrics().accepted == 0


# -- 6. fsync raising EIO ----------------------------------------------------------------------
@pytest.fixture
def fsync_fault(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``fault.arm(store, after=n)``: the log's fsyncs (fsync or fdatasync) fail with EIO after
    ``n`` successes."""
    real_fsync = os.fsync

    class Fault:
        store: FileJobStore | None = None
        after = 0
        failed = threading.Event()
        ok = 0

        def arm(self, store: FileJobStore, after: int = 0) -> None:
            self.store, self.after, self.ok = store, after, 0

        def __call__(self, fd: int) -> None:
            if self.store is not None and is_log(self.store, fd):
                if self.ok >= self.after:
                    self.failed.set()
                    raise OSError(errno.EIO, "Input/output error")
                self.ok += 1
            real_fsync(fd)

    fault = Fault()
    monkeypatch.setattr(os, "fsync", fault)
    monkeypatch.setattr(os, "fdatasync", fault)  # the log's fsyncs (the snapshot's: fsync)
    return fault


def test_fsync_eio_fails_the_store_for_good(
    store_path: Path, fsync_fault: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = FileJobStore(store_path, fsync="always")
    dispatcher = Dispatcher(Config(workers=1, store=store))
    dispatcher.register_handler("t", lambda ctx, job: None)
    dispatcher.submit(Job("fine", "t"))
    fsync_fault.arm(store)
    with caplog.at_level(logging.CRITICAL, logger=LOGGER), pytest.raises(StoreFailed) as caught:
        dispatcher.submit(Job("lost", "t"))
    assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.EIO
    assert any("fsync failed" in r.getMessage() for r in caplog.records)
    assert isinstance(store.failed, OSError)
    fsync_fault.arm(None)  # the disk "recovers": the store must not believe it
    for job in (Job("later", "t"), Job("later-2", "t")):
        with pytest.raises(StoreFailed, match="failed earlier"):
            dispatcher.submit(job)
    with pytest.raises(StoreFailed):
        dispatcher.submit_batch([Job("b1", "t"), Job("b2", "t")])
    for job_id in ("lost", "later", "b1"):
        with pytest.raises(JobNotFound):
            dispatcher.status(job_id)
    m = dispatcher.metrics()
    assert (m.submitted, m.accepted) == (6, 1)
    dispatcher.stop()
    # The record of the refused job was cut: a restart does not run it either.
    assert open_view(store_path) == {"fine": ("queued", 0)}


def test_fsync_eio_under_concurrent_submitters_never_reports_success(
    store_path: Path, fsync_fault: Any
) -> None:
    store = FileJobStore(store_path, fsync="always")
    dispatcher = Dispatcher(Config(workers=1, store=store, max_pending_jobs=100_000))
    dispatcher.register_handler("t", lambda ctx, job: None)
    dispatcher.submit(Job("warm-up", "t"))
    fsync_fault.arm(store, after=40)
    succeeded: list[str] = []
    late_successes: list[str] = []
    errors: list[BaseException] = []

    def submitter(k: int) -> None:
        for i in range(400):
            job_id = f"{k}-{i}"
            began_after_failure = fsync_fault.failed.is_set()
            try:
                dispatcher.submit(Job(job_id, "t"))
            except StoreFailed:
                continue
            except BaseException as exc:  # anything else is a bug
                errors.append(exc)
                return
            succeeded.append(job_id)
            if began_after_failure:
                late_successes.append(job_id)

    threads = [threading.Thread(target=submitter, args=(k,), daemon=True) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert fsync_fault.failed.is_set()
    assert late_successes == []
    assert dispatcher.metrics().accepted == len(succeeded) + 1
    assert len(succeeded) <= 8 * 41  # at most 8 submits per successful fsync
    dispatcher.stop()
    # Exactly the jobs whose submit returned are in the store: none of the refused ones.
    assert set(open_view(store_path)) == {"warm-up", *succeeded}


def test_fsync_eio_under_interval_fails_later_submits(store_path: Path, fsync_fault: Any) -> None:
    store = FileJobStore(store_path, fsync="interval", fsync_interval=0.01)
    dispatcher = Dispatcher(Config(workers=1, store=store))
    dispatcher.register_handler("t", lambda ctx, job: None)
    fsync_fault.arm(store)
    dispatcher.submit(Job("accepted-before-the-fsync", "t"))  # interval: returns before fsync
    assert fsync_fault.failed.wait(30)
    wait_until(lambda: store.failed is not None, timeout=30)
    with pytest.raises(StoreFailed):
        dispatcher.submit(Job("after", "t"))
    assert dispatcher.metrics().accepted == 1
    dispatcher.stop()


# -- 7. the lock inside one process ------------------------------------------------------------
def test_a_second_store_object_gets_jobstorelocked_until_the_first_closes(
    store_path: Path,
) -> None:
    first = FileJobStore(store_path)
    first.open()
    second = FileJobStore(str(store_path))
    for _ in range(2):  # a refused opener is not left half-open
        with pytest.raises(JobStoreLocked) as caught:
            second.open()
        assert caught.value.holder_pid == os.getpid()
        assert caught.value.path == str(store_path)
        assert str(os.getpid()) in str(caught.value)
    with pytest.raises(JobStoreLocked):
        second.jobs()
    with pytest.raises(JobStoreLocked):
        Dispatcher(Config(store=FileJobStore(store_path))).start()
    first.enqueue([Job("a", "t")])
    first.close()
    assert second.open() == 1
    assert view(second) == {"a": ("queued", 0)}
    second.close()


def test_a_store_object_reopened_after_close_holds_each_job_once(store_path: Path) -> None:
    store = FileJobStore(store_path)
    store.open()
    store.enqueue([Job(f"j{i}", "t") for i in range(3)])
    store.close()
    assert store.open() == 3
    assert store.pending() == 3 and store.ready_count() == 3
    store.close()


# -- 8. recovery in one process: run_at and retry due times ------------------------------------
def test_a_recovered_job_waits_for_its_run_at(store_path: Path) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    with FileJobStore(store_path) as store:
        store.enqueue([Job("later", "t", run_at=later), Job("now", "t")])
        image = crash_image(store, store_path.parent.parent / "image")
    for path in (image, store_path):  # from the log alone, and from a compacted snapshot
        with FileJobStore(path) as store:
            status = {s.id: s for s in store.jobs()}
            assert status["later"].state is JobState.SCHEDULED
            assert status["later"].run_at == later
            assert store.ready_count() == 1


def test_crash_counted_attempts_are_not_counted_twice_by_a_snapshot(store_path: Path) -> None:
    with FileJobStore(store_path, fsync="never") as store:
        store.enqueue([Job("x", "t", max_attempts=3)])
        delivery = store.fetch(0)
        assert delivery is not None
        store.started(delivery, "w")
        image = crash_image(store, store_path.parent.parent / "image")
    for _ in range(2):  # reopening without running it: still one crashed attempt
        with FileJobStore(image) as store:
            [status] = store.jobs()
        assert (status.state, status.attempts) == (JobState.QUEUED, 1)


# -- 9. group commit ---------------------------------------------------------------------------
def _concurrent_submits(store: FileJobStore, threads: int, each: int) -> int:
    dispatcher = Dispatcher(Config(workers=1, store=store, max_pending_jobs=100_000))
    dispatcher.register_handler("t", lambda ctx, job: None)
    dispatcher.submit(Job("open", "t"))
    start = threading.Barrier(threads)
    before = store.fsync_count

    def submitter(k: int) -> None:
        start.wait()
        for i in range(each):
            dispatcher.submit(Job(f"{k}-{i}", "t"))

    workers = [threading.Thread(target=submitter, args=(k,), daemon=True) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    fsyncs = store.fsync_count - before
    assert dispatcher.metrics().accepted == threads * each + 1
    dispatcher.stop()
    return fsyncs


def test_group_commit_concurrent_submitters_share_fsyncs(store_path: Path) -> None:
    store = FileJobStore(store_path, fsync="always")
    submits = 8 * 250
    fsyncs = _concurrent_submits(store, 8, 250)
    assert 0 < fsyncs < submits / 2, fsyncs


def test_group_commit_on_a_slow_disk_batches_most_submitters(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 ms fsync (a slow disk, or a busy one): while one runs, the others queue up.

    Unlike the real-disk test this cannot pass by luck of timing on a disk (or tmpfs) whose
    fsync is nearly free; without group commit every submit would get its own fsync.
    """
    real_fsync = os.fsync
    store = FileJobStore(store_path, fsync="always")

    def slow_fsync(fd: int) -> None:
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == store.log_path:
            time.sleep(0.002)  # the disk's latency, not a synchronisation

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(os, "fdatasync", slow_fsync)
    submits = 8 * 40
    fsyncs = _concurrent_submits(store, 8, 40)
    assert fsyncs < submits / 2, fsyncs


def test_one_submitter_gets_one_fsync_per_submit(store_path: Path) -> None:
    store = FileJobStore(store_path, fsync="always")
    assert _concurrent_submits(store, 1, 50) == 50  # `always` means always


@pytest.mark.parametrize("policy", ["interval", "never"])
def test_interval_and_never_do_not_fsync_per_submit(store_path: Path, policy: str) -> None:
    store = FileJobStore(store_path, fsync=policy, fsync_interval=3600)  # type: ignore[arg-type]
    assert _concurrent_submits(store, 4, 100) == 0


def test_interval_policy_fsyncs_in_the_background_and_close_stops_it(store_path: Path) -> None:
    store = FileJobStore(store_path, fsync="interval", fsync_interval=0.005)
    store.open()
    store.enqueue([Job("a", "t")])
    wait_until(lambda: store.fsync_count >= 1, timeout=30)
    assert any(t.name == "csjd-wal-fsync" for t in threading.enumerate())
    store.close()
    assert not any(t.name == "csjd-wal-fsync" for t in threading.enumerate())


# -- compaction --------------------------------------------------------------------------------
def test_the_log_is_compacted_past_its_size_limit_and_at_a_clean_stop(store_path: Path) -> None:
    store = FileJobStore(store_path, fsync="never", compact_bytes=8 * 1024)
    dispatcher = Dispatcher(Config(workers=2, store=store))
    dispatcher.register_handler("t", lambda ctx, job: None)
    dispatcher.register_handler("park", lambda ctx, job: None)
    for i in range(300):
        dispatcher.submit(Job(f"j{i}", "t", {"pad": "x" * 50}))
    later = datetime.now(UTC) + timedelta(hours=1)
    dispatcher.submit_batch([Job(f"p{i}", "park", run_at=later) for i in range(5)])
    dispatcher.start()
    wait_until(lambda: dispatcher.pending() == 5, timeout=30)
    # Writes made during a compaction are compacted in turn once they pass the limit.
    wait_until(lambda: os.path.getsize(store.log_path) <= 8 * 1024, timeout=30)
    assert store_path.exists()
    report = dispatcher.stop()
    assert report.left_pending == 5
    assert os.path.getsize(store.log_path) == 0  # everything folded into the snapshot
    snapshot = json.loads(store_path.read_text())
    assert {item["job"]["id"] for item in snapshot["jobs"]} == {f"p{i}" for i in range(5)}
    assert open_view(store_path) == {f"p{i}": ("scheduled", 0) for i in range(5)}


def test_store_settings_are_validated(store_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        FileJobStore(store_path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fsync_interval"):
        FileJobStore(store_path, fsync_interval=0)
    with pytest.raises(ValueError, match="compact_bytes"):
        FileJobStore(store_path, compact_bytes=0)


def test_dispatcher_restart_recovers_and_counts_unfinished_jobs(store_path: Path) -> None:
    first = Dispatcher(Config(store=FileJobStore(store_path)))
    first.register_handler("t", lambda ctx, job: None)
    first.submit_batch([Job(f"j{i}", "t") for i in range(4)])
    report = first.stop()  # never started: everything stays in the store
    assert report.left_pending == 4 and report.abandoned == 0
    second = Dispatcher(Config(store=FileJobStore(store_path)))
    ran: list[str] = []
    second.register_handler("t", lambda ctx, job: ran.append(job.id))
    second.start()
    assert second.join(30)
    second.stop()
    assert sorted(ran) == [f"j{i}" for i in range(4)]
    assert second.metrics().accepted == 4
    assert open_view(store_path) == {}
