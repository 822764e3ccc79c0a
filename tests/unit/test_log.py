"""The durable ingest log (ingest/log.py): append, replay, torn tails, segments."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencdp.errors import CdpError
from opencdp.ingest.log import DurableLog, frame

HEADER = 8


class Opened:
    """A DurableLog opened the way the server opens it: replay, then start."""

    def __init__(self, directory: Path, segment_bytes: int = 64 << 20, after: int = 0) -> None:
        self.log = DurableLog(directory, segment_bytes)
        self.replayed = list(self.log.replay(after))
        self.durable: list[tuple[int, Any]] = []
        self.log.start(self.durable.extend)

    def append(self, payload: bytes) -> int:
        return self.log.append_wait(payload, payload, timeout=30)

    def close(self) -> None:
        self.log.close()


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[Opened]]:
    """Logs opened in a test; all closed at the end."""
    logs: list[Opened] = []
    yield logs
    for o in logs:
        o.close()


def open_log(logs: list[Opened], directory: Path, **kw: Any) -> Opened:
    o = Opened(directory, **kw)
    logs.append(o)
    return o


def replay(directory: Path, after: int = 0) -> list[tuple[int, bytes]]:
    log = DurableLog(directory)
    try:
        return list(log.replay(after))
    finally:
        log.close()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def payloads(n: int, size: int = 10) -> list[bytes]:
    return [f"{i:0{size}d}".encode() for i in range(n)]


# ---- framing ----------------------------------------------------------------------------------
def test_frame_layout() -> None:
    f = frame(b"hello")
    assert len(f) == HEADER + 5
    assert struct.unpack("<II", f[:HEADER]) == (5, zlib.crc32(b"hello"))
    assert f[HEADER:] == b"hello"


# ---- append and replay ------------------------------------------------------------------------
def test_empty_log(tmp_path: Path, opened: list[Opened]) -> None:
    o = open_log(opened, tmp_path / "log")
    assert o.replayed == []
    assert o.log.end_lsn == 0
    assert len(segments(tmp_path / "log")) == 1


def test_append_then_replay(tmp_path: Path, opened: list[Opened]) -> None:
    d = tmp_path / "log"
    o = open_log(opened, d)
    data = [b"a", b"\x00", b"\x00\xff" * 100, "上海".encode()]
    lsns = [o.append(p) for p in data]
    # LSNs are byte offsets: each frame ends where the next begins.
    expected, end = [], 0
    for p in data:
        end += HEADER + len(p)
        expected.append(end)
    assert lsns == expected
    assert o.log.end_lsn == end
    assert o.durable == list(zip(lsns, data, strict=True))
    o.close()

    assert replay(d) == list(zip(lsns, data, strict=True))
    # Only what lies past ``after`` is replayed.
    assert replay(d, after=lsns[1]) == list(zip(lsns[2:], data[2:], strict=True))
    assert replay(d, after=end) == []


def test_appending_after_a_reopen_continues_the_lsns(tmp_path: Path, opened: list[Opened]) -> None:
    d = tmp_path / "log"
    first = open_log(opened, d)
    lsns = [first.append(p) for p in payloads(3)]
    first.close()
    second = open_log(opened, d)
    assert [lsn for lsn, _ in second.replayed] == lsns
    more = [second.append(p) for p in payloads(2, size=4)]
    assert more[0] == lsns[-1] + HEADER + 4
    second.close()
    assert [p for _, p in replay(d)] == [*payloads(3), *payloads(2, size=4)]


def test_async_appends_share_a_write(tmp_path: Path, opened: list[Opened]) -> None:
    o = open_log(opened, tmp_path / "log")

    async def many() -> list[int]:
        futs = [o.log.append_async(p, p) for p in payloads(200)]
        return list(await asyncio.gather(*futs))

    lsns = asyncio.run(many())
    assert lsns == sorted(lsns) and len(set(lsns)) == 200
    assert lsns[-1] == 200 * (HEADER + 10)
    o.close()
    assert [p for _, p in replay(tmp_path / "log")] == payloads(200)


def test_an_empty_payload_is_refused(tmp_path: Path, opened: list[Opened]) -> None:
    # (A zero-filled stretch of a damaged file must never read as valid empty frames.)
    o = open_log(opened, tmp_path / "log")
    with pytest.raises(ValueError):
        o.append(b"")


def test_closed_log_refuses_appends(tmp_path: Path, opened: list[Opened]) -> None:
    o = open_log(opened, tmp_path / "log")
    o.append(b"x")
    o.close()
    with pytest.raises(CdpError, match="stopping"):
        o.append(b"y")


def test_start_needs_a_replay_first(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "log")
    with pytest.raises(RuntimeError):
        log.start(lambda entries: None)


# ---- torn tails -------------------------------------------------------------------------------
def _write_five(d: Path, opened: list[Opened]) -> tuple[list[int], Path]:
    o = open_log(opened, d)
    lsns = [o.append(p) for p in payloads(5)]
    o.close()
    (seg,) = segments(d)
    return lsns, seg


@pytest.mark.parametrize("cut", [1, HEADER - 1, HEADER, HEADER + 3, HEADER + 9])
def test_truncated_tail_keeps_every_complete_frame(
    tmp_path: Path, opened: list[Opened], cut: int
) -> None:
    d = tmp_path / "log"
    lsns, seg = _write_five(d, opened)
    size = seg.stat().st_size
    with seg.open("r+b") as f:
        f.truncate(size - cut)
    got = replay(d)
    assert got == list(zip(lsns[:4], payloads(4), strict=True))
    assert seg.stat().st_size == lsns[3]  # the torn frame was cut off


@pytest.mark.parametrize("where", ["payload", "crc", "length"])
def test_garbled_tail_keeps_every_complete_frame(
    tmp_path: Path, opened: list[Opened], where: str
) -> None:
    d = tmp_path / "log"
    lsns, seg = _write_five(d, opened)
    data = bytearray(seg.read_bytes())
    start = lsns[3]  # the last frame
    offset = {"payload": len(data) - 1, "crc": start + 4, "length": start + 3}[where]
    data[offset] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert replay(d) == list(zip(lsns[:4], payloads(4), strict=True))
    assert seg.stat().st_size == lsns[3]


def test_garbage_appended_after_the_last_frame(tmp_path: Path, opened: list[Opened]) -> None:
    d = tmp_path / "log"
    lsns, seg = _write_five(d, opened)
    with seg.open("ab") as f:
        f.write(b"\x05\x00\x00\x00garbage-not-a-frame")
    assert replay(d) == list(zip(lsns, payloads(5), strict=True))
    assert seg.stat().st_size == lsns[-1]


def test_appends_after_a_torn_tail_follow_the_last_good_frame(
    tmp_path: Path, opened: list[Opened]
) -> None:
    d = tmp_path / "log"
    lsns, seg = _write_five(d, opened)
    with seg.open("r+b") as f:
        f.truncate(seg.stat().st_size - 3)
    o = open_log(opened, d)
    assert [lsn for lsn, _ in o.replayed] == lsns[:4]
    assert o.append(b"after-crash") == lsns[3] + HEADER + len(b"after-crash")
    o.close()
    assert [p for _, p in replay(d)] == [*payloads(4), b"after-crash"]


def test_a_torn_tail_past_the_applied_lsn(tmp_path: Path, opened: list[Opened]) -> None:
    d = tmp_path / "log"
    lsns, seg = _write_five(d, opened)
    with seg.open("r+b") as f:
        f.truncate(seg.stat().st_size - 1)
    o = open_log(opened, d, after=lsns[1])
    assert o.replayed == list(zip(lsns[2:4], payloads(4)[2:], strict=True))
    assert o.log.end_lsn == lsns[3]


# ---- segments ---------------------------------------------------------------------------------
def test_segments_rotate_and_replay_across_them(tmp_path: Path, opened: list[Opened]) -> None:
    d = tmp_path / "log"
    o = open_log(opened, d, segment_bytes=50)
    data = payloads(20)  # 18-byte frames: a new segment after every third
    lsns = [o.append(p) for p in data]
    files = segments(d)
    assert len(files) >= 6
    # A segment is named by the LSN it starts at; they tile the log without gaps.
    bases = [int(f.stem) for f in files]
    assert bases[0] == 0
    for f, nxt in zip(files, bases[1:], strict=False):
        assert int(f.stem) + f.stat().st_size == nxt
    assert bases[-1] + files[-1].stat().st_size == lsns[-1]
    o.close()

    assert replay(d) == list(zip(lsns, data, strict=True))
    for k in (0, 3, 4, 10, 19):
        assert replay(d, after=lsns[k]) == list(zip(lsns[k + 1 :], data[k + 1 :], strict=True))


def test_release_deletes_only_wholly_applied_segments(tmp_path: Path, opened: list[Opened]) -> None:
    d = tmp_path / "log"
    o = open_log(opened, d, segment_bytes=50)
    lsns = [o.append(p) for p in payloads(20)]
    before = [int(f.stem) for f in segments(d)]

    o.log.release(0)
    assert [int(f.stem) for f in segments(d)] == before

    applied = lsns[9]
    o.log.release(applied)
    after = [int(f.stem) for f in segments(d)]
    assert after, "the open segment is never deleted"
    assert after == [
        b for i, b in enumerate(before) if i + 1 == len(before) or before[i + 1] > applied
    ]
    assert after[0] <= applied  # the segment holding the applied LSN's successor stays
    # Everything past the applied LSN can still be replayed.
    o.close()
    assert replay(d, after=applied) == list(zip(lsns[10:], payloads(20)[10:], strict=True))

    o2 = open_log(opened, d, segment_bytes=50, after=lsns[-1])
    o2.log.release(lsns[-1])
    remaining = segments(d)
    assert len(remaining) == 1  # only the open segment
    assert o2.replayed == []
    assert o2.append(b"next") == lsns[-1] + HEADER + 4


def test_release_everything_then_reopen(tmp_path: Path, opened: list[Opened]) -> None:
    """After release, replay from the store's applied LSN still finds the log's end."""
    d = tmp_path / "log"
    o = open_log(opened, d, segment_bytes=30)
    lsns = [o.append(p) for p in payloads(6)]
    o.log.release(lsns[-1])
    o.close()
    o2 = open_log(opened, d, after=lsns[-1])
    assert o2.replayed == []
    assert o2.log.end_lsn == lsns[-1]
    new = o2.append(b"z")
    o2.close()
    assert replay(d, after=lsns[-1]) == [(new, b"z")]


# ---- damage in the middle: replayed around, set aside, reported --------------------------------
def _write_many(d: Path, opened: list[Opened], n: int = 10, **kw: Any) -> list[int]:
    o = open_log(opened, d, **kw)
    lsns = [o.append(p) for p in payloads(n)]
    o.close()
    return lsns


@pytest.mark.parametrize("where", ["payload", "crc", "length", "zeroed"])
def test_a_damaged_frame_in_the_middle_does_not_cut_off_the_frames_after_it(
    tmp_path: Path, opened: list[Opened], where: str
) -> None:
    d = tmp_path / "log"
    lsns = _write_many(d, opened)
    (seg,) = segments(d)
    size = seg.stat().st_size
    data = bytearray(seg.read_bytes())
    start, end = lsns[2], lsns[3]  # the fourth frame
    if where == "zeroed":
        data[start:end] = bytes(end - start)
    else:
        offset = {"payload": end - 1, "crc": start + 5, "length": start + 1}[where]
        data[offset] ^= 0x5A
    seg.write_bytes(bytes(data))

    log = DurableLog(d)
    got = list(log.replay(0))
    try:
        kept = [i for i in range(10) if i != 3]
        assert got == [(lsns[i], payloads(10)[i]) for i in kept]
        assert seg.stat().st_size == size  # nothing was cut
        (damage,) = log.damage
        assert (damage.lsn, damage.length, damage.torn) == (start, end - start, False)
        assert damage.copy.read_bytes() == bytes(data[start:end])
        assert damage.copy.parent == tmp_path / "quarantine"
        assert damage.copy.stat().st_mode & 0o777 == 0o600
        reported = log.quarantined()
        assert reported is not None and "set aside" in reported
    finally:
        log.close()
    # Reported until an operator moves the copy away; opening again changes nothing.
    log2 = DurableLog(d)
    assert list(log2.replay(0)) == got
    log2.close()
    damage.copy.unlink()
    assert DurableLog(d).quarantined() is None


def test_damage_at_the_end_of_a_middle_segment_keeps_the_later_segments(
    tmp_path: Path, opened: list[Opened]
) -> None:
    d = tmp_path / "log"
    lsns = _write_many(d, opened, n=20, segment_bytes=50)
    files = segments(d)
    victim = files[1]
    before = victim.read_bytes()
    victim.write_bytes(before[:-3] + b"\xff\xff\xff")  # its last frame is damaged
    got = dict(replay(d))
    lost = [lsn for lsn in lsns if int(victim.stem) < lsn <= int(victim.stem) + len(before)]
    assert set(got) == set(lsns) - {lost[-1]}  # only the damaged frame is missing
    assert victim.stat().st_size == len(before)  # a middle segment is never cut
    assert list((tmp_path / "quarantine").glob("*.bad"))


def test_a_torn_tail_is_kept_aside_but_reports_nothing(
    tmp_path: Path, opened: list[Opened]
) -> None:
    d = tmp_path / "log"
    lsns = _write_many(d, opened, n=5)
    (seg,) = segments(d)
    with seg.open("r+b") as f:
        f.truncate(seg.stat().st_size - 4)
    log = DurableLog(d)
    assert [lsn for lsn, _ in log.replay(0)] == lsns[:4]
    (damage,) = log.damage
    assert damage.torn and damage.copy.suffix == ".torn"
    assert log.quarantined() is None  # never acknowledged: nothing to report
    log.close()


def test_damage_that_cannot_be_set_aside_stops_the_opening(
    tmp_path: Path, opened: list[Opened]
) -> None:
    d = tmp_path / "log"
    lsns = _write_many(d, opened, n=5)
    (seg,) = segments(d)
    data = bytearray(seg.read_bytes())
    data[lsns[1] + 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    (tmp_path / "quarantine").write_text("not a directory")
    log = DurableLog(d)
    with pytest.raises(RuntimeError, match="cannot be copied"):
        list(log.replay(0))
    assert seg.read_bytes() == bytes(data)  # nothing changed


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 30),
    start=st.integers(0, 10_000),
    length=st.integers(1, 300),
    fill=st.sampled_from([b"\x00", b"\xff", b"x", b"\x07\x00\x00\x00"]),
)
def test_only_the_frames_damage_touches_are_lost(
    tmp_path_factory: pytest.TempPathFactory, n: int, start: int, length: int, fill: bytes
) -> None:
    d = tmp_path_factory.mktemp("fuzz") / "log"
    log = DurableLog(d)
    list(log.replay(0))
    log.start(lambda entries: None)
    data = [f"record-{i}-".encode() * (1 + i % 4) for i in range(n)]
    lsns = [log.append_wait(p, p, timeout=30) for p in data]
    log.close()
    (seg,) = segments(d)
    raw = bytearray(seg.read_bytes())
    start %= len(raw)
    end = min(len(raw), start + length)
    raw[start:end] = (fill * length)[: end - start]
    seg.write_bytes(bytes(raw))
    got = dict(replay(d))
    begins = [0, *lsns[:-1]]
    for b, e, p in zip(begins, lsns, data, strict=True):
        if e <= start or b >= end:  # untouched by the damage: replayed
            assert got.get(e) == p
    assert all(p in data for p in got.values())  # nothing invented
