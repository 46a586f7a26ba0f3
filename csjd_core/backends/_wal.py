"""The write-ahead log: framed records, group commit, torn-tail and corruption detection.

Frame (little-endian): magic ``b"CJ"``, version (u8), type (u8), payload length (u32),
sequence number (u64), CRC32 (u32) over version..sequence and the payload; then the payload.
The frame is the same in every version; the version says how the store encodes payloads, so
one log may hold frames of several versions (an old store appended to by a newer release).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

from csjd_core.errors import StoreCorrupted, StoreFailed
from csjd_core.limits import MAX_JOB_BYTES

__all__ = [
    "HEADER",
    "MAX_RECORD",
    "LogRecord",
    "Record",
    "WriteAheadLog",
    "encode",
    "scan",
    "write_all",
]

logger = logging.getLogger("csjd_core.store")

MAGIC = b"CJ"
VERSION = 3  # written; 2: binary started / finished payloads, 3: binary submitted (_records)
READABLE_VERSIONS = frozenset({1, 2, 3})
HEADER = struct.Struct("<2sBBIQI")
#: Largest record: a job of `MAX_JOB_BYTES` (the admission limit) plus room for its id, type
#: and framing, so that every job admission accepts fits one record. Checked when reading too.
MAX_RECORD = MAX_JOB_BYTES + 1024 * 1024


class Record(NamedTuple):
    """One decoded record and where it sits in the file."""

    type: int
    seq: int
    payload: bytes
    offset: int
    end: int
    version: int = VERSION


#: A record to write: (type, payload), or (type, payload, version) to frame it in another
#: readable version than `VERSION` (the store writes a few payloads in an older form).
LogRecord = tuple[int, bytes] | tuple[int, bytes, int]


_HEAD = struct.Struct("<BBIQ")  # the CRC'd part of the header: version, type, length, sequence
_CRC = struct.Struct("<I")


def encode(rtype: int, seq: int, payload: bytes, version: int = VERSION) -> bytes:
    """Frame one record (``version``: other than the current one only to test reading)."""
    head = _HEAD.pack(version, rtype, len(payload), seq)
    return b"".join((MAGIC, head, _CRC.pack(zlib.crc32(payload, zlib.crc32(head))), payload))


def _parse(buf: bytes | memoryview, pos: int, types: frozenset[int]) -> Record | None:
    """The record at ``pos`` if it is complete and valid, else None."""
    end_header = pos + HEADER.size
    if end_header > len(buf):
        return None
    magic, version, rtype, length, seq, crc = HEADER.unpack_from(buf, pos)
    if (
        magic != MAGIC
        or version not in READABLE_VERSIONS
        or rtype not in types
        or length > MAX_RECORD
    ):
        return None
    end = end_header + length
    if end > len(buf):
        return None
    view = memoryview(buf)
    if zlib.crc32(view[end_header:end], zlib.crc32(view[pos + 2 : pos + 16])) != crc:
        return None
    return Record(rtype, seq, bytes(view[end_header:end]), pos, end, version)


def scan(
    buf: bytes, types: frozenset[int], after_seq: int = 0
) -> tuple[list[Record], int, int | None]:
    """Decode the longest valid prefix of ``buf``.

    Returns:
        (records, valid_end, corrupt_offset): ``valid_end`` is where the valid prefix ends;
        ``corrupt_offset`` is set when an invalid record is followed by a valid one (corruption
        in the middle), and None for a clean file or a torn tail.
    """
    records: list[Record] = []
    append = records.append
    pos, last_seq = 0, after_seq
    size = len(buf)
    view = memoryview(buf)
    # `_parse`, inlined: this loop runs once per record of the log at every start.
    unpack, crc32, header_size = HEADER.unpack_from, zlib.crc32, HEADER.size
    versions, new = READABLE_VERSIONS, tuple.__new__
    while pos + header_size <= size:
        magic, version, rtype, length, seq, crc = unpack(buf, pos)
        body = pos + header_size
        end = body + length
        if (
            magic != MAGIC
            or version not in versions
            or rtype not in types
            or end > size
            or length > MAX_RECORD
            or (records and seq <= last_seq)
        ):
            break
        payload = buf[body:end]
        if crc32(payload, crc32(view[pos + 2 : body - 4])) != crc:
            break
        append(new(Record, (rtype, seq, payload, pos, end, version)))
        last_seq = seq
        pos = end
    if pos >= size:
        return records, pos, None
    # Something invalid at pos: a torn tail unless a valid record follows somewhere.
    probe = buf.find(MAGIC, pos + 1)
    while probe != -1:
        later = _parse(view, probe, types)
        if later is not None and later.seq > last_seq:
            return records, pos, pos
        probe = buf.find(MAGIC, probe + 1)
    return records, pos, None


def _unused_name(base: str) -> str:
    """``base``, or ``base.1``, ``base.2``... whichever does not exist yet."""
    name, n = base, 0
    while os.path.exists(name):
        n += 1
        name = f"{base}.{n}"
    return name


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, looping on short writes.

    Raises:
        OSError: the write failed, or made no progress (reported as ``EIO``).
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write: no bytes written")
        view = view[n:]


def fsync_directory(path: str) -> None:
    """fsync a directory so a rename or a new file in it is durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: fsyncs one leader runs in a row before handing over (bounds the leader's own latency).
_LEAD_ROUNDS = 4


class _Batch:
    """Writers waiting for the same fsync, each blocked on its own gate (a held lock).

    A gate per waiter, rather than a `threading.Condition`, so that a waiter woken by its fsync
    returns at once instead of queueing again for the mutex the leader holds.
    """

    __slots__ = ("end", "gates")

    def __init__(self) -> None:
        self.end = 0  # bytes ever appended that the batch's fsync covers (set by the leader)
        self.gates: list[threading.Lock] = []

    def release_all(self) -> None:
        """Wake every waiter (each re-checks what the fsync achieved)."""
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.release()


class WriteAheadLog:
    """An append-only log file with one writer lock and leader-based group commit.

    ``append(data, durable=True)`` returns once ``data`` is written and, under the ``always``
    policy, fsynced: while one thread runs fsync, others append; the next fsync covers them all.
    """

    def __init__(self, path: str, fsync: str, interval: float) -> None:
        self.path = path
        self.policy = fsync
        self.interval = interval
        self._fd = -1
        self._write_lock = threading.Lock()
        # Group commit. Writers waiting for fsync join the open batch; one of them (the leader)
        # takes the batch and runs one fsync for all of it while the next batch fills up.
        # An fsync wakes only the waiters it covered, plus one waiter of the next batch to lead.
        self._sync_mutex = threading.Lock()
        self._open_batch = _Batch()
        self._running_batch = _Batch()
        self._leading = False
        self._idle = threading.Condition(self._sync_mutex)  # no fsync running
        self._written = 0  # bytes of valid records in the file
        # Group commit counts bytes ever appended (monotonic, unlike the file size, which a
        # rotation shrinks): a waiter is done once ``_synced`` reaches its target.
        self._total = 0
        self._synced = 0
        self._failed: BaseException | None = None
        self._seq = 0
        self._closed = True
        self._flusher: threading.Thread | None = None
        self._stop_flusher = threading.Event()
        # Records posted by threads that hold other locks; the next append writes them first.
        self._deferred: deque[tuple[int, bytes]] = deque()
        self.fsync_count = 0

    # -- open and recover ------------------------------------------------------------------
    def open(self, types: frozenset[int], after_seq: int, repair: bool) -> Iterator[Record]:
        """Open (creating) the log, cut a torn tail, and return the records to replay.

        Raises:
            StoreCorrupted: an invalid record is followed by valid ones and ``repair`` is off.
        """
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o600)
        with open(self.path, "rb") as f:
            buf = f.read()
        records, valid_end, corrupt = scan(buf, types, after_seq)
        if corrupt is not None:
            if not repair:
                os.close(self._fd)
                self._fd = -1
                raise StoreCorrupted(
                    f"write-ahead log {self.path} is corrupted at byte offset {corrupt} "
                    f"(valid records follow it); open with repair=True to keep a copy and cut "
                    "the log there",
                    path=self.path,
                    offset=corrupt,
                )
            broken = _unused_name(f"{self.path}.broken-{int(time.time())}")
            shutil.copyfile(self.path, broken)
            logger.error(
                "write-ahead log corrupted; repaired path=%s offset=%d dropped_bytes=%d copy=%s",
                self.path,
                corrupt,
                len(buf) - valid_end,
                broken,
            )
        elif valid_end < len(buf):
            logger.warning(
                "write-ahead log has a torn tail; cut path=%s offset=%d dropped_bytes=%d",
                self.path,
                valid_end,
                len(buf) - valid_end,
            )
        if valid_end < len(buf):
            # Cut before the next append, or the old bytes would resurface after new records.
            os.ftruncate(self._fd, valid_end)
            os.fsync(self._fd)
        self._written = valid_end
        self._total = self._synced = 0
        self._seq = max([after_seq] + [r.seq for r in records[-1:]])
        self._closed = False
        self._failed = None
        self._deferred.clear()  # a store object reopened: close() wrote them already
        if self.policy == "interval":
            self._stop_flusher = threading.Event()
            self._flusher = threading.Thread(
                target=self._flush_loop, name="csjd-wal-fsync", daemon=True
            )
            self._flusher.start()
        if records and records[0].seq <= after_seq:  # folded into the snapshot already
            records = [r for r in records if r.seq > after_seq]
        return iter(records)

    @property
    def size(self) -> int:
        """Bytes in the log."""
        return self._written

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record written."""
        return self._seq

    @property
    def failed(self) -> BaseException | None:
        """The fsync error that put the log in the failed state, if any."""
        return self._failed

    # -- writing ---------------------------------------------------------------------------
    def append(
        self,
        records: list[LogRecord],
        *,
        durable: bool,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        """Write framed records; with ``durable`` wait for fsync under the ``always`` policy.

        ``on_written`` runs under the write lock right after a successful write, so a snapshot
        taken under the same lock sees exactly the records that are in the file. A record is
        ``(type, payload)``, or ``(type, payload, version)`` for one encoded as an earlier
        version encodes it (`_records.submitted_record`).

        Raises:
            StoreFailed: the log is closed or failed, the disk is full, or a write failed (the
                file is cut back to the last good record: nothing half-written remains).
        """
        with self._write_lock:
            if self._failed is not None:
                raise StoreFailed(
                    f"job store {self.path} failed earlier ({self._failed}); restart the process"
                ) from self._failed
            if self._closed:
                raise StoreFailed(f"job store {self.path} is closed")
            deferred = self._take_deferred() if self._deferred else []
            if deferred:
                records = [*deferred, *records]
            elif not records:
                return
            seq = self._seq
            if len(records) == 1:
                record = records[0]
                seq += 1
                data = encode(record[0], seq, record[1], *record[2:])
            else:
                parts = []
                for record in records:
                    seq += 1
                    parts.append(encode(record[0], seq, record[1], *record[2:]))
                data = b"".join(parts)
            try:
                self._write_all(data)
            except StoreFailed:
                if deferred:
                    logger.error(
                        "progress records lost; after a crash jobs may run again path=%s count=%d",
                        self.path,
                        len(deferred),
                    )
                raise
            self._seq = seq
            self._written += len(data)
            end = self._total = self._total + len(data)
            if on_written is not None:
                on_written()
        if durable and self.policy == "always":
            try:
                self._sync_to(end)
            except StoreFailed:
                self._discard_unsynced()
                raise

    def _discard_unsynced(self) -> None:
        """After a failed fsync, cut the records no fsync covered.

        Under ``always`` those are the records of submits that now fail (plus progress records,
        whose loss means at worst a re-run): cutting them keeps "not accepted" true after a
        restart too. The store stays failed: the kernel may have dropped dirty pages.
        """
        with self._write_lock:
            unsynced = self._total - self._synced
            if self._failed is None or self._closed or unsynced <= 0:
                return
            keep = self._written - unsynced
            try:
                os.ftruncate(self._fd, keep)
            except OSError:
                logger.exception("could not cut unsynced records path=%s", self.path)
                return
            logger.error(
                "cut records that were never fsynced path=%s offset=%d dropped_bytes=%d",
                self.path,
                keep,
                unsynced,
            )
            self._written = keep
            self._total = self._synced

    def defer(self, rtype: int, payload: bytes) -> None:
        """Queue a record for the next `append` (or `flush`): no lock, no system call.

        For callers that hold a lock of their own: they call `flush` once they let it go.
        """
        self._deferred.append((rtype, payload))

    @property
    def has_deferred(self) -> bool:
        """Records wait for the next `append` or `flush`."""
        return bool(self._deferred)

    def flush(self) -> None:
        """Write the deferred records now (no fsync).

        Raises:
            StoreFailed: as `append`.
        """
        if self._deferred:
            self.append([], durable=False)

    def _take_deferred(self) -> list[LogRecord]:
        taken: list[LogRecord] = []
        popleft = self._deferred.popleft
        while True:  # popleft is atomic: a record deferred meanwhile is taken now or next time
            try:
                taken.append(popleft())
            except IndexError:
                return taken

    def _write_all(self, data: bytes) -> None:
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # finish a short write, or learn why (ENOSPC, EFBIG...)
                write_all(self._fd, data[written:])
        except OSError as exc:
            try:
                # Part of ``data`` may be in the file: cut it, or the next append would land
                # after a torn record and be lost as "corruption" at the next open.
                os.ftruncate(self._fd, self._written)
            except OSError:
                logger.exception("could not cut the log back path=%s", self.path)
                self._failed = exc
            reason = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
            raise StoreFailed(
                f"job store {self.path}: write failed ({reason}); the job was not accepted"
            ) from exc

    def _sync_to(self, target: int) -> None:
        """Return once the first ``target`` bytes ever appended are fsynced (group commit).

        Raises:
            StoreFailed: fsync failed (now or earlier), or the log was closed first.
        """
        mutex = self._sync_mutex
        mutex.acquire()
        try:
            while self._synced < target:
                if self._failed is not None or self._closed:
                    raise self._sync_error()
                if not self._leading:
                    self._lead()
                    continue
                # An fsync runs. Wait for it if it covers our bytes, else for the next one.
                running = self._running_batch
                batch = running if target <= running.end else self._open_batch
                gate = _allocate_lock()
                gate.acquire()
                batch.gates.append(gate)
                mutex.release()
                try:
                    gate.acquire()  # released when the batch is done, or to make us lead
                finally:
                    mutex.acquire()
        finally:
            mutex.release()

    def _sync_error(self) -> StoreFailed:
        if self._failed is not None:
            error = StoreFailed(f"job store {self.path}: fsync failed; the job was not accepted")
            error.__cause__ = self._failed
            return error
        return StoreFailed(f"job store {self.path} was closed before its fsync")

    def _lead(self) -> None:
        """Run fsyncs for the open batch and the ones after it (sync mutex held).

        Everything written so far is in the file: one fsync covers it all, the caller's bytes
        included. While it runs the next batch fills; the leader syncs that one too (it holds
        the GIL already, a waiter would first have to get it), up to ``_LEAD_ROUNDS`` fsyncs,
        then hands over to a waiter of the open batch. After a failure nobody leads again: the
        open batch's waiters are woken to raise.
        """
        mutex = self._sync_mutex
        try:
            for _ in range(_LEAD_ROUNDS):
                batch = self._running_batch = self._open_batch
                batch.end = self._total
                self._open_batch = _Batch()
                self._leading = True
                mutex.release()
                synced = False
                try:
                    error = self._fsync()
                    synced = error is None
                finally:
                    mutex.acquire()
                    self._leading = False
                    if synced:
                        self._synced = max(self._synced, batch.end)
                    batch.release_all()  # even if fsync raised something unexpected
                    self._idle.notify_all()
                if error is not None or self._closed or not self._open_batch.gates:
                    break
            else:
                self._open_batch.gates.pop(0).release()  # that waiter leads the next fsync
                return
        except BaseException:
            self._open_batch.release_all()  # one of them leads again
            raise
        if self._failed is not None or self._closed:
            self._open_batch.release_all()

    def _wait_idle(self) -> None:
        """Wait until no fsync runs (sync mutex held)."""
        while self._leading:
            self._idle.wait()

    def _fsync(self) -> BaseException | None:
        try:
            # fdatasync: the log only grows or is cut, and both change the size, which
            # fdatasync writes too; it skips the times fsync would also write.
            (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(self._fd)
            self.fsync_count += 1
            return None
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages ("fsyncgate"):
            # retrying could report success for data that is gone. The store stops accepting.
            logger.critical(
                "fsync failed; job store is now read-only path=%s error=%s", self.path, exc
            )
            self._failed = exc
            return exc

    def _flush_loop(self) -> None:
        stop = self._stop_flusher
        while not stop.wait(self.interval) and self._failed is None and not self._closed:
            try:
                self.sync()
            except StoreFailed:
                return  # logged by _fsync (submits now fail), or the log was closed

    def sync(self) -> None:
        """fsync now whatever was written."""
        if self._total > self._synced and self._failed is None and not self._closed:
            self._sync_to(self._total)

    # -- rotation and close ----------------------------------------------------------------
    def rotate(self, keep_from: int) -> None:
        """Replace the log with its bytes from ``keep_from`` on (after a snapshot).

        The caller holds no write lock; this takes it. Crash-safe: the new log is written to a
        temporary file, fsynced and renamed over the old one.
        """
        with self._write_lock, self._sync_mutex:
            self._wait_idle()  # never replace the descriptor under a running fsync
            if self._closed:
                return
            with open(self.path, "rb") as f:
                f.seek(keep_from)
                tail = f.read(self._written - keep_from)
            tmp = self.path + ".tmp"
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(tmp, flags, 0o600)
            try:
                write_all(fd, tail)
                os.fsync(fd)
            except OSError:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            os.replace(tmp, self.path)
            fsync_directory(os.path.dirname(self.path))
            os.close(self._fd)
            self._fd = fd
            self._written = len(tail)
            self._synced = self._total  # the new file holds everything, fsynced
            self._open_batch.release_all()

    def close(self) -> None:
        """Write deferred records, fsync (unless the policy is ``never``) and close the file."""
        with contextlib.suppress(StoreFailed):  # failed: logged already, nothing more to save
            self.flush()
        with self._write_lock:
            if self._closed:
                return
            with self._sync_mutex:
                self._wait_idle()  # never close the descriptor under a running fsync
                self._closed = True
                pending = self._total > self._synced
                if (
                    self.policy != "never"
                    and self._failed is None
                    and pending
                    and (self._fsync() is None)
                ):
                    self._synced = self._total
                os.close(self._fd)
                self._fd = -1
                self._open_batch.release_all()  # its waiters return or raise now
        self._stop_flusher.set()
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join()

    def abandon(self) -> None:
        """Close the descriptor without writing (a forked child's inherited copy).

        Takes no lock: in a forked child a lock may have been copied in the held state.
        """
        self._closed = True
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
