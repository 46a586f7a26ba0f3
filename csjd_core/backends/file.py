"""`FileJobStore`: the in-memory index made durable by a snapshot and a write-ahead log.

This module decides what is written when (and recovers at open); `_records` is the format of
what is written, `_wal` the log's framing, checksums and fsyncs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal

from csjd_core.backends import _marks
from csjd_core.backends import _records as fmt
from csjd_core.backends._wal import (
    MAX_RECORD,
    LogRecord,
    WriteAheadLog,
    fsync_directory,
    write_all,
)
from csjd_core.backends.base import (
    AttemptError,
    BackendSettings,
    CancelVerdict,
    Delivery,
    RelayResult,
)
from csjd_core.backends.memory import Entry, MemoryBackend
from csjd_core.errors import (
    InvalidConfig,
    InvalidJob,
    JobStoreLocked,
    StoreCorrupted,
    StoreFailed,
)
from csjd_core.job import Job, JobState, JobStatus, utc_from_timestamp
from csjd_core.limits import brief, positive_seconds
from csjd_core.stats import ScheduleState

__all__ = ["FileJobStore"]

logger = logging.getLogger("csjd_core.store")

FsyncPolicy = Literal["always", "interval", "never"]

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

        def fail(field: str, message: str) -> InvalidConfig:
            return InvalidConfig(
                f"FileJobStore.{field} {message}", owner="FileJobStore", field=field
            )

        if fsync not in ("always", "interval", "never"):
            raise fail("fsync", f"must be 'always', 'interval' or 'never', got {brief(fsync)}")
        try:
            interval = positive_seconds(fsync_interval, "FileJobStore.fsync_interval")
        except ValueError as exc:
            raise InvalidConfig(str(exc), owner="FileJobStore", field="fsync_interval") from None
        if (
            isinstance(compact_bytes, bool)
            or not isinstance(compact_bytes, int)
            or compact_bytes < 1
        ):
            raise fail("compact_bytes", f"must be a positive int, got {brief(compact_bytes)}")
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise fail("path", f"must be a file path, got {brief(path)}")
        self.path = os.path.abspath(os.fspath(path))
        if os.path.isdir(self.path):
            raise fail("path", _is_a_directory(self.path))
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
        self._recovered: list[tuple[Entry, JobState, int, str | None]] = []

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
        if os.path.isdir(self.path):  # made a directory since the store was created
            raise StoreFailed(f"FileJobStore.path {_is_a_directory(self.path)}")
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
                self._ranked.clear()
                self._ranks.clear()
                self._scheduled.clear()
                self._unfinished.clear()
            with _gc_paused():
                jobs, marks = self._read_snapshot()
                try:
                    logged = list(self._wal.open(fmt.TYPES, self._snapshot_seq, self.repair))
                    fmt.replay(jobs, logged, marks)
                    del logged  # every record of the log: free it before building the jobs
                except fmt.BadRecord as bad:
                    raise self._undecodable(bad.offset, bad.__cause__ or bad) from bad
                unfinished = list(jobs.values())
                try:
                    built = fmt.jobs_of(unfinished)
                except fmt.BadRecord as bad:
                    raise self._undecodable(bad.offset, bad.__cause__ or bad) from bad
                entries = [self._entry(*pair) for pair in zip(unfinished, built, strict=True)]
                self._marks = marks
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

    def relay(self, jobs: Sequence[Job]) -> list[RelayResult]:
        """`MemoryBackend.relay`, the admitted jobs durable (one record) when it returns.

        Raises:
            JobStoreLocked: called in a forked child of the process that opened the store.
            StoreFailed: the record could not be written (nothing was admitted).
        """
        self._check_owner()
        return super().relay(jobs)

    def close(self, *, clean: bool = True) -> list[Job]:
        """Compact (fold the log into the snapshot), fsync and release the lock.

        Returns:
            The unfinished jobs that are not running; they stay in the store for the next
            `open` (so do running ones, whose attempt then counts as cut short by a crash).
        """
        if not self._opened or (self._owner_pid and self._owner_pid != os.getpid()):
            return []
        with self._lock:  # list() first: a success leaves `_unfinished` without the lock
            entries = list(self._unfinished.values())
        left = [
            e.job for e in entries if e.state is JobState.QUEUED or e.state is JobState.SCHEDULED
        ]
        try:
            self.compact()
        except (OSError, StoreFailed) as exc:
            logger.error(
                "compaction at close failed; the log is kept path=%s error=%s", self.path, exc
            )
        self._wal.close()
        self._release_lock()
        self._opened = False
        _OPEN_STORES.discard(self)
        with self._lock:
            self._ring(self._waiters)
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
    def _read_snapshot(self) -> tuple[dict[str, fmt.Replayed], dict[str, ScheduleState]]:
        self._snapshot_seq = 0
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, RecursionError) as exc:
            raise StoreCorrupted(
                f"snapshot {self.path} is unreadable ({exc}); snapshots are written atomically, "
                "so this file was damaged after it was written",
                path=self.path,
            ) from exc
        if not isinstance(data, dict) or data.get("version") != fmt.SNAPSHOT_VERSION:
            raise StoreCorrupted(f"snapshot {self.path} has an unknown format", path=self.path)
        try:
            seq, jobs = fmt.snapshot_jobs(data)
            marks = fmt.snapshot_marks(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreCorrupted(
                f"snapshot {self.path} holds an undecodable job or schedule ({exc!r})",
                path=self.path,
            ) from exc
        self._snapshot_seq = seq
        return jobs, marks

    def _undecodable(self, offset: int | None, exc: BaseException) -> StoreCorrupted:
        # The checksum matched, so these bytes were written so: not a torn write.
        where = f"write-ahead log {self.log_path}"
        if offset is None:
            where = f"snapshot {self.path}"
        return StoreCorrupted(
            f"{where} holds an undecodable record"
            + (f" at byte offset {offset}" if offset is not None else "")
            + f" ({exc!r})",
            path=self.log_path if offset is not None else self.path,
            offset=offset,
        )

    def _entry(self, job: fmt.Replayed, built: tuple[Job, int, float]) -> Entry:
        """Build the `Entry` of a job that is still unfinished after the replay."""
        entry = Entry(*built)
        built_job = entry.job
        entry.stored = True
        entry.attempts = job.attempts
        entry.state = job.state
        if job.run_at is not None:
            entry.run_at = job.run_at
        elif job.state is JobState.QUEUED and built_job.run_at is not None:
            # Never started: it waits for its run_at (`restore` runs it at once if it passed).
            entry.state = JobState.SCHEDULED
            entry.run_at = built_job.run_at.timestamp()
        if job.error is not None:
            entry.error = job.error
        if job.started_at is not None:
            entry.started_at = job.started_at
        return entry

    def _recover(self, entries: list[Entry]) -> int:
        survivors: list[Entry] = []
        self._recovered = recovered = []
        for entry in entries:
            if entry.state is JobState.RUNNING:
                # The process died during this attempt: it counts, so a job that kills its
                # process cannot loop forever.
                crash = f"process crashed during attempt {entry.attempts}"
                entry.error = crash
                if entry.attempts >= entry.max_attempts:
                    logger.error(
                        "job failed: crashed on every attempt id=%r type=%r attempts=%d",
                        entry.job.id,
                        entry.job.type,
                        entry.attempts,
                    )
                    entry.state = JobState.FAILED
                    entry.finished_at = time.time()
                    self._write(
                        [
                            (
                                fmt.FINISHED,
                                fmt.finished(entry.job.id, entry.state, entry.finished_at),
                            )
                        ],
                        durable=True,
                    )
                    self._finished[entry.job.id] = entry
                    recovered.append((entry, entry.state, entry.attempts, entry.get("error")))
                    continue
                entry.state = JobState.QUEUED
            survivors.append(entry)
            recovered.append((entry, entry.state, entry.attempts, entry.get("error")))
        count = self.restore(survivors)
        if count:
            logger.info("recovered unfinished jobs path=%s count=%d", self.path, count)
        return count

    @property
    def recovered(self) -> list[JobStatus]:
        """The unfinished jobs the last `open` found, as it found them (state, attempts)."""
        return [
            replace(
                entry.to_status(),
                state=state,
                attempts=attempts,
                last_error=error,
                finished_at=None
                if state is not JobState.FAILED
                else utc_from_timestamp(entry.get("finished_at")),
            )
            for entry, state, attempts, error in self._recovered
        ]

    # -- the persistence seam --------------------------------------------------------------
    def _write(
        self,
        records: list[LogRecord],
        *,
        durable: bool,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self._check_owner()
        self._wal.append(records, durable=durable, on_written=on_written)
        if self._wal.size > self.compact_bytes and self._compacting.acquire(blocking=False):
            threading.Thread(target=self._compact_in_background, daemon=True).start()

    def _persist_submitted(self, entries: list[Entry]) -> None:
        record = fmt.submitted_record(entries)
        payload = record[1]
        if len(payload) > MAX_RECORD:  # only a batch can get here: admission bounds a job
            raise InvalidJob(
                f"a batch of {len(entries)} jobs is {len(payload)} bytes in the log; one record "
                f"holds at most {MAX_RECORD}: submit it in smaller batches"
            )

        def mark_stored() -> None:
            for entry in entries:
                entry.stored = True

        self._write([record], durable=True, on_written=mark_stored)

    def _persist_mark(self, state: ScheduleState, entries: list[Entry]) -> None:
        # The mark first: should a crash of the machine tear this write, the slot is lost
        # rather than run twice (at most once per slot).
        records: list[LogRecord] = [(fmt.MARK, _marks.encode(state))]
        if entries:
            records.append(fmt.submitted_record(entries))

        def mark_stored() -> None:
            self._marks[state.name] = state  # under the write lock: compaction sees both
            for entry in entries:
                entry.stored = True

        self._write(records, durable=True, on_written=mark_stored)

    def _persist_started(self, entry: Entry) -> None:
        # Written before the handler runs (not deferred): if the handler kills the process,
        # this record is what makes recovery count the crash as an attempt.
        payload = fmt.started(entry.job.id, entry.attempts, entry.started_at)
        try:
            self._write([(fmt.STARTED, payload)], durable=False)
        except (StoreFailed, JobStoreLocked) as exc:
            logger.error(
                "could not record an attempt start; a crash during it will not count "
                "id=%r error=%s",
                entry.job.id,
                exc,
            )

    # Retry and finished records are written under the index lock: they are deferred, and
    # written by `succeed` / `fail` / `retry` below once the lock is released, so no thread
    # waits for the index while another is in a system call.
    def _persist_retry(self, entry: Entry) -> None:
        self._wal.defer(fmt.RETRY, fmt.retried(entry))

    def _persist_finished(self, entry: Entry) -> None:
        self._wal.defer(fmt.FINISHED, fmt.finished(entry.job.id, entry.state, entry.finished_at))

    def _persist_cancel_requested(self, entry: Entry) -> None:
        # A finished record now, while the attempt runs on: replay drops the job, so a crash
        # before its outcome never runs it again (the outcome writes a second one, harmless).
        self._wal.defer(fmt.FINISHED, fmt.finished(entry.job.id, JobState.CANCELLED, time.time()))

    def _flush_progress(self) -> None:
        if not self._wal.has_deferred:
            return
        try:
            self._write([], durable=False)
        except (StoreFailed, JobStoreLocked) as exc:
            logger.error(
                "could not record job progress; after a crash jobs may run again path=%s error=%s",
                self.path,
                exc,
            )

    def succeed(self, delivery: Delivery, result: Any) -> bool:
        """Record success (fenced); the finished record is in the log when this returns."""
        try:
            return super().succeed(delivery, result)
        finally:
            self._flush_progress()

    def fail(self, delivery: Delivery, error: AttemptError) -> bool:
        """Record a terminal failure (fenced); its record is in the log when this returns."""
        try:
            return super().fail(delivery, error)
        finally:
            self._flush_progress()

    def retry(self, delivery: Delivery, error: AttemptError, delay: float) -> bool:
        """Schedule the next attempt (fenced); its record is in the log when this returns."""
        try:
            return super().retry(delivery, error, delay)
        finally:
            self._flush_progress()

    def release(self, delivery: Delivery) -> None:
        """Requeue or fail the job (see `MemoryBackend.release`), durably."""
        try:
            super().release(delivery)
        finally:
            self._flush_progress()

    def cancelled(
        self, delivery: Delivery, reason: str, error: AttemptError | None, result: Any = None
    ) -> bool:
        """Record a cancelled attempt (fenced); its record is in the log when this returns."""
        try:
            return super().cancelled(delivery, reason, error, result)
        finally:
            self._flush_progress()

    def cancel(
        self,
        job_id: str,
        queue: str | None,
        reason: str = "cancelled",
        *,
        waiting_only: bool = False,
    ) -> CancelVerdict:
        """`MemoryBackend.cancel`, its record in the log (under the fsync policy) when this
        returns: recovery never runs a cancelled job."""
        self._check_owner()
        try:
            return super().cancel(job_id, queue, reason, waiting_only=waiting_only)
        finally:
            if self._wal.has_deferred:
                try:
                    self._write([], durable=True)
                except (StoreFailed, JobStoreLocked) as exc:
                    logger.error(
                        "could not record a cancellation; after a crash the job may run "
                        "id=%r error=%s",
                        job_id,
                        exc,
                    )

    def discard(self, job_ids: Iterable[str], reason: str) -> int:
        """Finish jobs without running them (see `MemoryBackend.discard`), durably."""
        self._check_owner()
        try:
            return super().discard(job_ids, reason)
        finally:
            self._flush_progress()

    # -- compaction ------------------------------------------------------------------------
    def _compact_in_background(self) -> None:
        """Compact until the log is under the limit (entered with ``_compacting`` held)."""
        while True:
            try:
                self._compact_locked()
            except Exception:
                logger.exception("background compaction failed path=%s", self.path)
                return
            finally:
                self._compacting.release()
            # Writes went on meanwhile; one that passed the limit could not start a compaction
            # while this one ran, so look again after letting go of the lock.
            if not self._opened or self._wal.failed is not None:
                return
            if self._wal.size <= self.compact_bytes or not self._compacting.acquire(False):
                return

    def compact(self) -> None:
        """Fold the log into a new snapshot (atomically) and start a fresh log."""
        with self._compacting:
            self._compact_locked()

    def _compact_locked(self) -> None:
        self._check_owner()
        if self._wal.failed is not None:
            return
        # Capture a consistent state: no record can be written while both locks are held, so
        # copy only what may change (attempts, state...) and encode after letting go.
        with self._lock, self._wal._write_lock:
            seq = self._wal.last_seq
            keep_from = self._wal.size
            # Entries whose submitted record is not written yet are not folded in: their record
            # lands after ``seq`` (or their submit fails and they were never accepted). Nor are
            # jobs that finished: a success takes its job out of `_unfinished` without the
            # index lock (list() copies the map at once), and its finished record may be
            # written before or after ``seq``.
            # Nor are jobs whose cancellation was requested (their finished record is written,
            # or about to be): recovery must not run them again.
            cancels = self._cancels
            captured = [
                fmt.snapshot_fields(e)
                for e in list(self._unfinished.values())
                if e.get("stored") and not e.state.finished and not cancels.get(e.job.id)
            ]
            marks = list(self._marks.values())
        data = fmt.snapshot(seq, captured, marks)
        tmp = self.path + ".tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600
        )
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
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
            return [e.to_status() for e in list(self._unfinished.values())]

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
    def failed(self) -> BaseException | None:
        """The error (a failed fsync) that stopped the store from accepting jobs, or None."""
        return self._wal.failed

    @property
    def fsync_count(self) -> int:
        """fsync calls made on the log so far (for benchmarks and tests)."""
        return self._wal.fsync_count

    def __repr__(self) -> str:
        return f"FileJobStore({self.path!r}, fsync={self.fsync!r})"


def _is_a_directory(path: str) -> str:
    return (
        f"{path} is a directory; give the snapshot file's path, e.g. "
        f"{os.path.join(path, 'jobs.json')} (the log and the lock file go beside it)"
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector while a replay allocates millions of acyclic objects: each
    collection would walk them all, which more than doubles the time to open a large log."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            # What the replay kept is in the youngest generation, and the first collection
            # after this would walk all of it (about 1 s per million objects). Freeze and
            # unfreeze move it to the oldest generation without a walk, as it would end up
            # anyway; skipped when the application freezes objects itself (unfreeze would
            # undo that).
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def _standalone_settings() -> BackendSettings:
    return BackendSettings(
        max_pending_jobs=10**9,
        default_max_attempts=3,
        result_ttl=600.0,
        max_results=100_000,
        worker_id=f"store:{os.getpid()}",
    )
