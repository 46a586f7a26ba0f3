"""The write-ahead log on its own: framing, the log cut at every byte offset, bit flips at every
byte, repair, and the frame scanner's properties (hypothesis)."""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csjd_core.backends._wal import (
    HEADER,
    MAX_RECORD,
    VERSION,
    Record,
    WriteAheadLog,
    encode,
    scan,
)
from csjd_core.errors import StoreCorrupted

TYPES = frozenset({1, 2, 3, 4})
PAYLOADS = [
    json.dumps(
        {"jobs": [{"job": {"id": f"job-{i}", "type": "t", "payload": {"n": i * 7}}}]}
    ).encode()
    for i in range(6)
]


def build(path: Path, payloads: list[bytes], policy: str = "never") -> list[Record]:
    """A log holding one record per payload; returns the records as a reader sees them."""
    wal = WriteAheadLog(str(path), policy, 0.01)
    assert list(wal.open(TYPES, 0, repair=False)) == []
    for i, payload in enumerate(payloads):
        wal.append([(1 + i % 4, payload)], durable=True)
    wal.close()
    records, end, corrupt = scan(path.read_bytes(), TYPES)
    assert end == path.stat().st_size and corrupt is None
    return records


def reopen(path: Path, repair: bool = False) -> tuple[WriteAheadLog, list[Record]]:
    wal = WriteAheadLog(str(path), "never", 0.01)
    return wal, list(wal.open(TYPES, 0, repair))


def as_pairs(records: list[Record]) -> list[tuple[int, int, bytes]]:
    return [(r.type, r.seq, r.payload) for r in records]


def test_encode_frames_length_checksum_type_version_and_sequence() -> None:
    payload = b'{"id":"x"}'
    frame = encode(3, 42, payload)
    magic, version, rtype, length, seq, crc = HEADER.unpack_from(frame)
    assert (magic, version, rtype, length, seq) == (b"CJ", VERSION, 3, len(payload), 42)
    assert crc == zlib.crc32(payload, zlib.crc32(frame[2:16]))
    assert frame[HEADER.size :] == payload
    [record] = scan(frame, TYPES)[0]
    assert (record.type, record.seq, record.payload, record.offset, record.end) == (
        3, 42, payload, 0, len(frame),
    )  # fmt: skip


# -- 2. the log cut at every byte offset of its last records -----------------------------------
def test_cut_at_every_offset_recovers_the_longest_valid_prefix_and_appends_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = tmp_path / "full.log"
    records = build(full, PAYLOADS)
    data = full.read_bytes()
    first_cut = records[-3].offset
    checked = torn = 0
    for cut in range(first_cut, len(data)):
        path = tmp_path / f"cut-{cut}.log"
        path.write_bytes(data[:cut])
        kept = [r for r in records if r.end <= cut]
        valid_end = kept[-1].end if kept else 0
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="csjd_core.store"):
            wal, got = reopen(path)
        assert as_pairs(got) == as_pairs(kept), cut
        warnings = [r.getMessage() for r in caplog.records]
        if cut == valid_end:
            assert warnings == [], cut
        else:
            torn += 1
            [message] = warnings
            assert "torn tail" in message and f"offset={valid_end}" in message
            assert f"dropped_bytes={cut - valid_end}" in message, message
        assert path.stat().st_size == valid_end, "the torn tail must be cut before appending"
        # Append after the cut, close, reopen: the new records follow the prefix, no stale byte
        # of the old tail resurfaces, and nothing is reported torn any more.
        wal.append([(2, b'{"new":1}'), (4, b'{"new":2}')], durable=True)
        wal.close()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="csjd_core.store"):
            wal, again = reopen(path)
        wal.close()
        assert caplog.records == []
        last_seq = kept[-1].seq if kept else 0
        assert as_pairs(again) == [
            *as_pairs(kept), (2, last_seq + 1, b'{"new":1}'), (4, last_seq + 2, b'{"new":2}'),
        ]  # fmt: skip
        assert path.stat().st_size == valid_end + 2 * HEADER.size + 2 * len(b'{"new":1}')
        checked += 1
    assert checked == len(data) - first_cut and torn == checked - 3  # 3 cuts on boundaries


# -- 3. bit flips at every byte -----------------------------------------------------------------
def _record_at(records: list[Record], pos: int) -> int:
    return next(i for i, r in enumerate(records) if r.offset <= pos < r.end)


def test_scan_every_bit_flip_drops_the_torn_tail_or_reports_corruption(tmp_path: Path) -> None:
    """Every bit of every byte: never a wrong record, always the right offset."""
    records = build(tmp_path / "small.log", PAYLOADS[:4])
    data = (tmp_path / "small.log").read_bytes()
    for pos in range(len(data)):
        k = _record_at(records, pos)
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            got, end, corrupt = scan(bytes(flipped), TYPES)
            assert as_pairs(got) == as_pairs(records[:k]), (pos, bit)
            assert end == records[k].offset, (pos, bit)
            if k == len(records) - 1:
                assert corrupt is None, (pos, bit)  # a torn tail
            else:
                assert corrupt == records[k].offset, (pos, bit)


def test_open_with_a_flipped_bit_cuts_a_torn_tail_or_refuses_with_the_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = tmp_path / "small.log"
    records = build(original, PAYLOADS[:4])
    data = original.read_bytes()
    refused = cut = 0
    for pos in range(len(data)):
        k = _record_at(records, pos)
        path = tmp_path / f"flip-{pos}.log"
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(flipped))
        caplog.clear()
        if k == len(records) - 1:
            with caplog.at_level(logging.WARNING, logger="csjd_core.store"):
                wal, got = reopen(path)
            wal.close()
            assert as_pairs(got) == as_pairs(records[:k])
            [message] = [r.getMessage() for r in caplog.records]
            assert f"dropped_bytes={len(data) - records[k].offset}" in message
            assert path.stat().st_size == records[k].offset
            cut += 1
            continue
        with pytest.raises(StoreCorrupted) as caught:
            reopen(path)
        assert caught.value.offset == records[k].offset, pos
        assert caught.value.path == str(path)
        assert f"offset {records[k].offset}" in str(caught.value)
        assert path.read_bytes() == bytes(flipped), "a refused open must not touch the file"
        refused += 1
    assert cut == len(records[-1].payload) + HEADER.size
    assert refused == records[-1].offset


def test_repair_keeps_a_broken_copy_and_cuts_at_the_corruption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = tmp_path / "small.log"
    records = build(original, PAYLOADS[:4])
    data = original.read_bytes()
    for k in range(len(records) - 1):
        for pos in (records[k].offset, records[k].offset + 9, records[k].end - 1):
            case = tmp_path / f"repair-{k}-{pos}"
            case.mkdir()
            path = case / "jobs.log"
            flipped = bytearray(data)
            flipped[pos] ^= 0x10
            path.write_bytes(bytes(flipped))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="csjd_core.store"):
                wal, got = reopen(path, repair=True)
            assert as_pairs(got) == as_pairs(records[:k])
            assert path.stat().st_size == records[k].offset
            [copy] = [p for p in case.iterdir() if p.name.startswith("jobs.log.broken-")]
            assert copy.read_bytes() == bytes(flipped)
            [message] = [r.getMessage() for r in caplog.records]
            assert f"offset={records[k].offset}" in message and str(copy) in message
            assert f"dropped_bytes={len(data) - records[k].offset}" in message
            # The repaired log takes appends and reopens clean.
            wal.append([(1, b"{}")], durable=True)
            wal.close()
            wal, again = reopen(path)
            wal.close()
            assert len(again) == k + 1


def test_a_second_repair_in_the_same_second_keeps_both_copies(tmp_path: Path) -> None:
    path = tmp_path / "jobs.log"
    records = build(path, PAYLOADS[:3])
    data = bytearray(path.read_bytes())
    data[records[0].offset + 20] ^= 1
    for _ in range(2):
        path.write_bytes(bytes(data))
        reopen(path, repair=True)[0].close()
    copies = sorted(p.name for p in tmp_path.iterdir() if ".broken-" in p.name)
    assert len(copies) == 2, copies


def test_a_length_beyond_the_maximum_or_the_file_is_a_torn_tail_not_an_allocation() -> None:
    good = encode(1, 1, b"{}")
    huge = struct.pack("<2sBBIQI", b"CJ", 1, 1, MAX_RECORD + 1, 2, 0)
    beyond = struct.pack("<2sBBIQI", b"CJ", 1, 1, 1000, 2, 0) + b"x" * 10
    for tail in (huge, beyond, b"\0" * 64, b"CJ"):
        got, end, corrupt = scan(good + tail, TYPES)
        assert [r.payload for r in got] == [b"{}"] and end == len(good) and corrupt is None


def test_records_out_of_sequence_are_not_replayed(tmp_path: Path) -> None:
    """Stale bytes of an older log (lower sequence numbers) after valid records are a tail."""
    first = encode(1, 5, b"a") + encode(1, 6, b"b")
    stale = encode(1, 3, b"old")
    got, end, corrupt = scan(first + stale, TYPES)
    assert [r.payload for r in got] == [b"a", b"b"] and end == len(first) and corrupt is None
    # Records up to the snapshot's sequence number are skipped on open, the rest replayed.
    path = tmp_path / "jobs.log"
    path.write_bytes(first + encode(1, 7, b"c"))
    wal = WriteAheadLog(str(path), "never", 0.01)
    assert [r.payload for r in wal.open(TYPES, 6, repair=False)] == [b"c"]
    wal.append([(1, b"d")], durable=True)
    wal.close()
    assert scan(path.read_bytes(), TYPES)[0][-1].seq == 8


def test_failed_open_releases_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "jobs.log"
    records = build(path, PAYLOADS[:3])
    data = bytearray(path.read_bytes())
    data[records[0].offset + 20] ^= 1
    path.write_bytes(bytes(data))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(StoreCorrupted):
            reopen(path)
    assert len(os.listdir("/proc/self/fd")) == before


# -- properties of the framing ------------------------------------------------------------------
payload_lists = st.lists(st.binary(max_size=200), min_size=1, max_size=12)


def _concat(payloads: list[bytes]) -> tuple[bytes, list[int]]:
    frames = [encode(1 + i % 4, i + 1, p) for i, p in enumerate(payloads)]
    ends, pos = [], 0
    for frame in frames:
        pos += len(frame)
        ends.append(pos)
    return b"".join(frames), ends


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=payload_lists)
def test_property_frames_round_trip(payloads: list[bytes]) -> None:
    data, _ = _concat(payloads)
    got, end, corrupt = scan(data, TYPES)
    assert [r.payload for r in got] == payloads
    assert [r.seq for r in got] == list(range(1, len(payloads) + 1))
    assert end == len(data) and corrupt is None


@settings(max_examples=300, deadline=None)
@given(payloads=payload_lists, data=st.data())
def test_property_a_cut_yields_exactly_the_complete_records(
    payloads: list[bytes], data: st.DataObject
) -> None:
    blob, ends = _concat(payloads)
    cut = data.draw(st.integers(0, len(blob)))
    got, end, corrupt = scan(blob[:cut], TYPES)
    complete = [e for e in ends if e <= cut]
    assert [r.payload for r in got] == payloads[: len(complete)]
    assert end == (complete[-1] if complete else 0) and corrupt is None


@settings(max_examples=300, deadline=None)
@given(payloads=payload_lists, garbage=st.binary(min_size=1, max_size=300))
def test_property_garbage_after_the_log_is_never_decoded(
    payloads: list[bytes], garbage: bytes
) -> None:
    blob, _ = _concat(payloads)
    got, end, corrupt = scan(blob + garbage, TYPES)
    assert [r.payload for r in got] == payloads
    assert end == len(blob) and corrupt is None


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=60), min_size=2, max_size=8), data=st.data())
def test_property_damage_before_a_valid_record_is_corruption_at_its_offset(
    payloads: list[bytes], data: st.DataObject
) -> None:
    blob, ends = _concat(payloads)
    k = data.draw(st.integers(0, len(payloads) - 2))
    start = ends[k - 1] if k else 0
    pos = data.draw(st.integers(start, ends[k] - 1))
    damaged = bytearray(blob)
    damaged[pos] ^= data.draw(st.integers(1, 255))
    got, end, corrupt = scan(bytes(damaged), TYPES)
    assert [r.payload for r in got] == payloads[:k]
    assert end == start and corrupt == start


def test_scan_names_offsets_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "jobs.log"
    records = build(path, PAYLOADS[:3])
    data = bytearray(path.read_bytes())
    data[records[1].offset + 30] ^= 4
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupted, match=re.escape(f"byte offset {records[1].offset}")):
        reopen(path)
