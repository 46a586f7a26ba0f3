"""`FileJobStore`: the in-memory index made durable by a snapshot and a write-ahead log."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

from csjd_core.backends._wal import WriteAheadLog, fsync_directory
from csjd_core.backends.base import BackendSettings
from csjd_core.backends.memory import Entry, MemoryBackend
from csjd_core.errors import JobStoreLocked, StoreCorrupted, StoreFailed
from csjd_core.job import Job, JobState, JobStatus
from csjd_core.retry import seconds

__all__ = ["FileJobStore"]

logger = logging.getLogger("csjd_core.store")

FsyncPolicy = Literal["always", "interval", "never"]

SUBMITTED, STARTED, RETRY, FINISHED = 1, 2, 3, 4
_TYPES = frozenset({SUBMITTED, STARTED, RETRY, FINISHED})
_SNAPSHOT_VERSION = 1
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

# Stores open in this process: a forked child must not use the parent's descriptors or lock.
_OPEN_STORES: weakref.WeakSet[FileJobStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_OPEN_STORES):
        store._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class FileJobStore(MemoryBackend):
    """A durable job store in three files: ``path`` (snapshot), ``path.log``, ``path.lock``.

    Args:
        path: the snapshot file, e.g. ``"./data/jobs.json"``; its directory must exist or be
            creatable.
        fsync: ``"always"`` (default: `submit` returns after its record is fsynced; concurrent
            submitters share one fsync), ``"interval"`` (fsync at most every
            ``fsync_interval`` seconds, like Redis ``everysec``), or ``"never"`` (the OS
            decides). All three survive a crash of the process; they differ on an OS crash or
            power loss (see docs/durability.md).
        fsync_interval: seconds between fsyncs under ``"interval"``.
        compact_bytes: fold the log into a new snapshot once it grows past this size.
        repair: open a log that is corrupted in the middle by keeping a ``.broken-*`` copy and
            cutting it at the corruption (otherwise `StoreCorrupted` is raised).
    """

    durable = True
    local = True
    _logs = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "always",
        fsync_interval: float | timedelta = 0.1,
        compact_bytes: int = 64 * 1024 * 1024,
        repair: bool = False,
    ) -> None:
        super().__init__()
        if fsync not in ("always", "interval", "never"):
            raise ValueError(f"fsync must be 'always', 'interval' or 'never', got {fsync!r}")
        interval = seconds(fsync_interval, "fsync_interval")
        if interval <= 0:
            raise ValueError(f"fsync_interval must be positive, got {fsync_interval!r}")
        if isinstance(compact_bytes, bool) or not isinstance(compact_bytes, int) or (
            compact_bytes < 1
        ):
            raise ValueError(f"compact_bytes must be a positive int, got {compact_bytes!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.log_path = self.path + ".log"
        self.lock_path = self.path + ".lock"
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        self.repair = repair
        self._wal = WriteAheadLog(self.log_path, fsync, interval)
        self._lock_fd = -1
        self._snapshot_seq = 0
        self._compacting = threading.Lock()
        self._owner_pid = 0
        self.recovered: list[JobStatus] = []

    # -- lifecycle -------------------------------------------------------------------------
    def open(self, settings: BackendSettings | None = None) -> int:
        """Take the lock, replay snapshot + log, and re-admit every unfinished job.

        Returns:
            How many unfinished jobs were recovered.

        Raises:
            JobStoreLocked: another process, store object or forked child holds the lock.
            StoreCorrupted: the snapshot is unreadable, or the log is corrupted in the middle.
        """
        self._check_owner()
        if self._opened:
            return 0
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreFailed(f"cannot create the store directory {directory}: {exc}") from exc
        # Nothing is marked open before the lock is held: a refused opener may retry later.
        self._acquire_lock()
        try:
            super().open(settings or _standalone_settings())
            with self._lock:  # a store object reopened after close starts from its files only
                self._ready.clear()
                self._scheduled.clear()
                self._unfinished.clear()
            entries = self._read_snapshot()
            records = self._wal.open(_TYPES, self._snapshot_seq, self.repair)
            for record in records:
                try:
                    self._apply(entries, record.type, json.loads(record.payload))
                except (ValueError, KeyError, TypeError) as exc:
                    # The checksum matched, so these bytes were written so: not a torn write.
                    raise StoreCorrupted(
                        f"write-ahead log {self.log_path} holds an undecodable record at byte "
                        f"offset {record.offset} ({exc!r})",
                        path=self.log_path,
                        offset=record.offset,
                    ) from exc
            self._owner_pid = os.getpid()
            _OPEN_STORES.add(self)
            return self._recover(entries)
        except BaseException:
            self._wal.abandon()
            self._release_lock()
            self._opened = False
            _OPEN_STORES.discard(self)
            raise

    def _acquire_lock(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.lock_path, flags, 0o600)
        except OSError as exc:
            raise StoreFailed(f"cannot open the lock file {self.lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = None
            with contextlib.suppress(OSError, ValueError):
                holder = int(os.pread(fd, 32, 0).split(b"\n")[0] or 0) or None
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JobStoreLocked(self.path, holder) from None
            raise StoreFailed(f"cannot lock {self.lock_path}: {exc}") from exc
        # Overwrite, then cut: the file never reads as empty to a refused opener.
        pid = f"{os.getpid()}\n".encode()
        try:
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError as exc:
            os.close(fd)
            raise StoreFailed(f"cannot write the lock file {self.lock_path}: {exc}") from exc
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing the only descriptor drops the flock
            self._lock_fd = -1

    def _forked(self) -> None:
        """In a forked child: drop the inherited descriptors, never write the parent's files."""
        self._wal.abandon()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # the parent's descriptor keeps its lock
            self._lock_fd = -1

    def _check_owner(self) -> None:
        if self._owner_pid and self._owner_pid != os.getpid():
            raise JobStoreLocked(self.path, self._owner_pid)

    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Admit ``jobs`` durably: all are in the log (under the fsync policy) or none is.

        Raises:
            JobStoreLocked: called in a forked child of the process that opened the store.
            StoreFailed: the record could not be written (disk full, I/O error, fsync failed).
        """
        # Before any lock: in a forked child the parent's locks may have been copied held.
        self._check_owner()
        super().enqueue(jobs)

    def close(self, *, clean: bool = True) -> list[Job]:
        """Compact (fold the log into the snapshot), fsync and release the lock.

        Returns:
            The unfinished jobs, which stay in the store for the next `open`.
        """
        if not self._opened or (self._owner_pid and self._owner_pid != os.getpid()):
            return []
        with self._lock:
            left = [e.job for e in self._unfinished.values()]
        try:
            self.compact()
        except (OSError, StoreFailed) as exc:
            logger.error("compaction at close failed; the log is kept path=%s error=%s",
                         self.path, exc)
        self._wal.close()
        self._release_lock()
        self._opened = False
        _OPEN_STORES.discard(self)
        with self._cond:
            self._cond.notify_all()
        return left

    def __enter__(self) -> FileJobStore:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- replay ----------------------------------------------------------------------------
    def _read_snapshot(self) -> dict[str, Entry]:
        self._snapshot_seq = 0
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreCorrupted(
                f"snapshot {self.path} is unreadable ({exc}); snapshots are written atomically, "
                "so this file was damaged after it was written",
                path=self.path,
            ) from exc
        if not isinstance(data, dict) or data.get("version") != _SNAPSHOT_VERSION:
            raise StoreCorrupted(f"snapshot {self.path} has an unknown format", path=self.path)
        entries: dict[str, Entry] = {}
        try:
            seq = int(data["seq"])
            for item in data["jobs"]:
                entry = _entry_from_dict(item)
                entries[entry.job.id] = entry
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupted(
                f"snapshot {self.path} holds an undecodable job ({exc!r})", path=self.path
            ) from exc
        self._snapshot_seq = seq
        return entries

    @staticmethod
    def _apply(entries: dict[str, Entry], rtype: int, data: Any) -> None:
        """Apply one log record to the replay state (idempotent)."""
        if rtype == SUBMITTED:
            for item in data["jobs"]:
                job = Job.from_dict(item["job"])
                entry = Entry(job, item["max"], item["t"])
                entry.stored = True
                if job.run_at is not None:  # `restore` runs it at once if the time has passed
                    entry.state = JobState.SCHEDULED
                    entry.run_at = job.run_at.timestamp()
                entries[entry.job.id] = entry
            return
        found = entries.get(data["id"])
        if found is None:
            return  # finished and folded into a snapshot already, or never admitted
        entry = found
        if rtype == STARTED:
            entry.attempts = max(entry.attempts, data["a"])
            entry.state = JobState.RUNNING
            entry.started_at = data["t"]
        elif rtype == RETRY:
            entry.attempts = max(entry.attempts, data["a"])
            entry.state = JobState.SCHEDULED
            entry.run_at = data["due"]
            entry.error = data.get("err")
        elif rtype == FINISHED:
            del entries[data["id"]]

    def _recover(self, entries: dict[str, Entry]) -> int:
        survivors: list[Entry] = []
        self.recovered = []
        for entry in entries.values():
            if entry.state is JobState.RUNNING:
                # The process died during this attempt: it counts, so a job that kills its
                # process cannot loop forever.
                crash = f"process crashed during attempt {entry.attempts}"
                entry.error = crash
                if entry.attempts >= entry.max_attempts:
                    logger.error("job failed: crashed on every attempt id=%s type=%s attempts=%d",
                                 entry.job.id, entry.job.type, entry.attempts)
                    entry.state = JobState.FAILED
                    entry.finished_at = time.time()
                    self._write([(FINISHED, _encode(
                        {"id": entry.job.id, "s": "failed", "t": entry.finished_at, "err": crash}
                    ).encode())], durable=True)
                    self._finished[entry.job.id] = entry
                    self.recovered.append(entry.to_status())
                    continue
                entry.state = JobState.QUEUED
            survivors.append(entry)
            self.recovered.append(entry.to_status())
        count = self.restore(survivors)
        if count:
            logger.info("recovered unfinished jobs path=%s count=%d", self.path, count)
        return count

    # -- the persistence seam --------------------------------------------------------------
    def _write(
        self,
        records: list[tuple[int, bytes]],
        *,
        durable: bool,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self._check_owner()
        self._wal.append(records, durable=durable, on_written=on_written)
        if self._wal.size > self.compact_bytes and self._compacting.acquire(blocking=False):
            threading.Thread(target=self._compact_in_background, daemon=True).start()

    def _write_quietly(self, rtype: int, data: dict[str, Any]) -> None:
        """Write a record whose loss means at worst a re-run after a crash: log, never raise."""
        try:
            self._write([(rtype, _encode(data).encode())], durable=False)
        except (StoreFailed, JobStoreLocked) as exc:
            logger.error("could not record job progress; after a crash the job may run again "
                         "id=%s error=%s", data.get("id"), exc)

    def _persist_submitted(self, entries: list[Entry]) -> None:
        payload = _encode({"jobs": [
            {"job": e.job.to_dict(), "max": e.max_attempts, "t": e.enqueued_at} for e in entries
        ]}).encode()

        def mark_stored() -> None:
            for entry in entries:
                entry.stored = True

        self._write([(SUBMITTED, payload)], durable=True, on_written=mark_stored)

    def _persist_started(self, entry: Entry) -> None:
        self._write_quietly(STARTED, {"id": entry.job.id, "a": entry.attempts,
                                      "t": entry.get("started_at")})

    def _persist_retry(self, entry: Entry) -> None:
        self._write_quietly(RETRY, {"id": entry.job.id, "a": entry.attempts,
                                    "due": entry.get("run_at"), "err": entry.get("error")})

    def _persist_finished(self, entry: Entry) -> None:
        self._write_quietly(FINISHED, {"id": entry.job.id, "s": str(entry.state),
                                       "t": entry.get("finished_at")})

    # -- compaction ------------------------------------------------------------------------
    def _compact_in_background(self) -> None:
        try:
            self._compact_locked()
        except Exception:
            logger.exception("background compaction failed path=%s", self.path)
        finally:
            self._compacting.release()

    def compact(self) -> None:
        """Fold the log into a new snapshot (atomically) and start a fresh log."""
        with self._compacting:
            self._compact_locked()

    def _compact_locked(self) -> None:
        self._check_owner()
        if self._wal.failed is not None:
            return
        # Capture a consistent state: no record can be written while both locks are held.
        with self._lock, self._wal._write_lock:
            seq = self._wal.last_seq
            keep_from = self._wal.size
            # Entries whose submitted record is not written yet are not folded in: their record
            # lands after ``seq`` (or their submit fails and they were never accepted).
            jobs = [_entry_to_dict(e) for e in self._unfinished.values() if e.get("stored")]
        tmp = self.path + ".tmp"
        data = _encode({"version": _SNAPSHOT_VERSION, "seq": seq, "jobs": jobs}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_directory(os.path.dirname(self.path))
        self._snapshot_seq = seq
        # A crash before the rotation is harmless: replay skips records up to ``seq``.
        self._wal.rotate(keep_from)

    # -- standalone use --------------------------------------------------------------------
    def jobs(self) -> list[JobStatus]:
        """Every unfinished job in the store (opens it if needed)."""
        if not self._opened:
            self.open()
        with self._lock:
            return [e.to_status() for e in self._unfinished.values()]

    def job(self, job_id: str) -> Job:
        """The stored `Job` with this id.

        Raises:
            KeyError: no unfinished job has this id.
        """
        with self._lock:
            return self._unfinished[job_id].job

    def counts(self) -> dict[str, int]:
        """Unfinished jobs per state."""
        counts: dict[str, int] = {}
        for status in self.jobs():
            counts[str(status.state)] = counts.get(str(status.state), 0) + 1
        return counts

    @property
    def fsync_count(self) -> int:
        """fsync calls made on the log so far (for benchmarks and tests)."""
        return self._wal.fsync_count

    def __repr__(self) -> str:
        return f"FileJobStore({self.path!r}, fsync={self.fsync!r})"


def _standalone_settings() -> BackendSettings:
    return BackendSettings(max_pending_jobs=10**9, default_max_attempts=3, result_ttl=600.0,
                           max_results=100_000, worker_id=f"store:{os.getpid()}")


def _entry_to_dict(entry: Entry) -> dict[str, Any]:
    return {
        "job": entry.job.to_dict(),
        "max": entry.max_attempts,
        "t": entry.enqueued_at,
        "a": entry.attempts,
        "state": str(entry.state),
        "run_at": entry.get("run_at"),
        "err": entry.get("error"),
    }


def _entry_from_dict(item: dict[str, Any]) -> Entry:
    entry = Entry(Job.from_dict(item["job"]), item["max"], item["t"])
    entry.stored = True
    entry.attempts = item["a"]
    entry.state = JobState(item["state"])
    if item.get("run_at") is not None:
        entry.run_at = item["run_at"]
    if item.get("err") is not None:
        entry.error = item["err"]
    return entry


