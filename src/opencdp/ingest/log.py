"""The durable ingest log: append-only segment files with group commit.

Every waiting append is written with one ``write`` and made durable with one ``fdatasync`` shared
by all of them (group commit); only then are the callers told. A frame is
``<length u32><crc32 u32><payload>`` (a payload is never empty).

Positions are LSNs: the byte offset across all segments, so a segment is named by the LSN it
starts at. The flusher records the LSN it has applied (in the store, in the same transaction as
the data); segments wholly before it are deleted.

Damage found when the log is opened is never dropped silently:
- bytes that are not a valid frame, followed by valid frames, are corruption of acknowledged
  data: the frames after them are replayed, and the damaged bytes are copied to the
  quarantine directory (``*.bad``) and reported (log, health, metrics) until an operator has
  looked at them and moved them away;
- bytes at the very end of the log with no valid frame after them are a torn write (a crash
  before the ``fdatasync`` returned, so never acknowledged): they are copied to the
  quarantine directory (``*.torn``) and cut off, so appends follow the last good frame.
If the damaged bytes cannot be copied, the log refuses to open and says why.

A write that fails (a full disk, an I/O error) fails the waiting appends with an error that
says so, is cut back to the last durable frame, and the next batch tries again: once space
returns, appends succeed without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencdp.durable import fsync_dir
from opencdp.errors import CdpError, unavailable
from opencdp.faults import describe

_HEADER = struct.Struct("<II")
_MAX_FRAME = 64 << 20
_SUFFIX = ".log"
# Where a frame may start: the high byte of its length is small (frames are at most 64 MB).
_CANDIDATE = re.compile(rb"(?=[\x00-\xff]{3}[\x00-\x03])", re.DOTALL)
_NONZERO = re.compile(rb"[^\x00]")

log = logging.getLogger(__name__)

# Called from the writer thread with (end LSN, item) of every frame just made durable.
OnDurable = Callable[[list[tuple[int, Any]]], None]
# Called from the writer thread after each write: None when it succeeded, else the reason.
OnWrite = Callable[[str | None], None]


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _frame_at(data: bytes, pos: int) -> int:
    """The size of the valid frame starting at ``pos``, or 0."""
    if pos + _HEADER.size > len(data):
        return 0
    length, crc = _HEADER.unpack_from(data, pos)
    end = pos + _HEADER.size + length
    if length == 0 or length > _MAX_FRAME or end > len(data):
        return 0
    if zlib.crc32(memoryview(data)[pos + _HEADER.size : end]) != crc:
        return 0
    return int(end - pos)


def _next_frame(data: bytes, start: int) -> int | None:
    """Where the next valid frame after damaged bytes starts, or None."""
    pos = start
    while True:
        found = _CANDIDATE.search(data, pos)
        if found is None or found.start() + _HEADER.size > len(data):
            return None
        pos = found.start()
        if data[pos : pos + 4] == b"\x00\x00\x00\x00":  # a zero length: skip the zeros
            nonzero = _NONZERO.search(data, pos)
            if nonzero is None:
                return None
            pos = max(nonzero.start() - 3, pos + 1)
            continue
        if _frame_at(data, pos):
            return pos
        pos += 1


@dataclass(frozen=True)
class Damage:
    """Bytes of the log that were not valid frames, and where a copy of them went."""

    lsn: int  # where they start
    length: int
    torn: bool  # at the very end, never acknowledged: cut off
    copy: Path


@dataclass
class _Batch:
    payloads: list[bytes] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    # (loop, future, index of its frame in ``payloads``): plain-thread appends have no future.
    futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int], int]] = field(
        default_factory=list
    )
    done: threading.Event = field(default_factory=threading.Event)
    lsns: list[int] = field(default_factory=list)  # end LSN of each frame, once durable
    error: BaseException | None = None


class GroupCommit:
    """Group commit: appends wait in a batch that one writer thread makes durable at once
    (:meth:`_persist`), then the callers are told, one wake-up per event loop. A batch that
    fails fails each of its callers with the reason; the next batch tries again."""

    def __init__(self, on_write: OnWrite = lambda problem: None) -> None:
        self._on_write = on_write
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._on_durable: OnDurable = lambda entries: None

    def _persist(self, payloads: list[bytes]) -> list[int]:
        """Make the frames durable, in order; the end LSN of each."""
        raise NotImplementedError

    def _failed(self) -> None:
        """After a failed :meth:`_persist`: undo what it may have left."""

    def start(self, on_durable: OnDurable) -> None:
        self._on_durable = on_durable
        self._thread = threading.Thread(target=self._run, name="ingest-log", daemon=True)
        self._thread.start()

    def append_async(self, payload: bytes, item: Any) -> asyncio.Future[int]:
        """Queue a frame; the future resolves to its end LSN once it is durable."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        self._enqueue(payload, item, (loop, fut))
        return fut

    def append_wait(self, payload: bytes, item: Any, timeout: float | None = None) -> int:
        """Append from a plain thread and wait until durable; returns the end LSN."""
        b, index = self._enqueue(payload, item, None)
        if not b.done.wait(timeout):
            raise TimeoutError("ingest log write timed out")
        if b.error is not None:
            raise _not_durable(b.error) from b.error
        return b.lsns[index]

    def _enqueue(
        self,
        payload: bytes,
        item: Any,
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[int]] | None,
    ) -> tuple[_Batch, int]:
        """Add a frame to the batch the writer takes next; returns that batch and its index."""
        if not payload:
            raise ValueError("an empty payload cannot be logged")
        with self._cond:
            if self._closing:
                raise unavailable("the server is stopping")
            b = self._batch
            index = len(b.payloads)
            b.payloads.append(payload)
            b.items.append(item)
            if waiter is not None:
                b.futures.append((*waiter, index))
            self._cond.notify()
        return b, index

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._batch.payloads and not self._closing:
                    self._cond.wait()
                batch, self._batch = self._batch, _Batch()
                closing = self._closing
            if batch.payloads:
                self._write(batch)
            if closing and not batch.payloads:
                return

    def _write(self, batch: _Batch) -> None:
        entries: list[tuple[int, Any]] = []
        try:
            batch.lsns = self._persist(batch.payloads)
            entries = list(zip(batch.lsns, batch.items, strict=True))
        except BaseException as exc:  # the callers must hear of it; the process goes on
            log.error("ingest log write failed: %s", exc)
            batch.error = exc
            entries = []
            self._failed()
        if entries:  # the flusher has them before any caller is told (read-your-writes)
            try:
                self._on_durable(entries)
            except Exception:  # durable all the same: a restart replays them
                log.exception("handing durable records to the flusher failed")
        batch.done.set()
        _complete(batch, entries)
        self._on_write(None if batch.error is None else describe(batch.error))

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()


class DurableLog(GroupCommit):
    def __init__(
        self,
        directory: Path,
        segment_bytes: int = 64 << 20,
        quarantine: Path | None = None,
        on_write: OnWrite = lambda problem: None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.quarantine = quarantine or self.dir.parent / "quarantine"
        self.segment_bytes = segment_bytes
        self.damage: list[Damage] = []  # found by the last replay
        super().__init__(on_write)
        self._repair = False  # a failed write could not be cut back yet
        self._fd = -1
        self._base = 0  # LSN at which the open segment starts
        self._size = 0  # bytes in the open segment

    # ---- opening and replay --------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob(f"*{_SUFFIX}") if p.stem.isdigit())

    def _path(self, base: int) -> Path:
        return self.dir / f"{base:020d}{_SUFFIX}"

    def replay(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Yield (end LSN, payload) of every valid frame past ``after``, then open for
        appending. Damaged bytes are set aside (see the module docstring)."""
        self.damage = []
        segments = self._segments()
        end = after
        for i, base in enumerate(segments):
            nxt = segments[i + 1] if i + 1 < len(segments) else None
            if nxt is not None and nxt <= after:
                continue  # wholly applied
            path = self._path(base)
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                size = _frame_at(data, pos)
                if size:
                    lsn = base + pos + size
                    if lsn > after:
                        yield lsn, data[pos + _HEADER.size : pos + size]
                    pos += size
                    continue
                resume = _next_frame(data, pos + 1)
                if resume is None:  # nothing valid follows in this segment
                    self._set_aside(base + pos, data[pos:], torn=nxt is None)
                    if nxt is None:
                        with path.open("r+b") as f:
                            f.truncate(pos)
                            os.fsync(f.fileno())
                    break
                self._set_aside(base + pos, data[pos:resume], torn=False)
                pos = resume
            end = max(end, base + pos)
        self._open_tail(end)

    def set_aside(self, lsn: int, payload: bytes, reason: str) -> None:
        """Keep a frame that is intact but cannot be used (e.g. undecodable) in the
        quarantine directory, reported like damage."""
        log.error("ingest log frame ending at LSN %d cannot be used (%s)", lsn, reason)
        self._set_aside(lsn, payload, torn=False)

    def _set_aside(self, lsn: int, data: bytes, torn: bool) -> None:
        kind = "torn" if torn else "bad"
        copy = self.quarantine / f"log-{lsn:020d}-{len(data)}.{kind}"
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not copy.exists():
                tmp = copy.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                tmp.rename(copy)
                fsync_dir(self.quarantine)
        except OSError as exc:
            raise RuntimeError(
                f"the ingest log has {len(data)} damaged bytes at LSN {lsn}, and they cannot be "
                f"copied to {self.quarantine} ({exc.strerror or exc}): free space there and start "
                "again; nothing has been changed"
            ) from exc
        self.damage.append(Damage(lsn, len(data), torn, copy))
        if torn:
            log.warning(
                "cut a torn tail of %d bytes off the ingest log at LSN %d (never "
                "acknowledged); a copy is in %s", len(data), lsn, copy,
            )  # fmt: skip
        else:
            log.error(
                "THE INGEST LOG IS DAMAGED: %d bytes at LSN %d are not valid records; the "
                "records after them were replayed; the damaged bytes are in %s. Examine them, "
                "then move the file out of %s", len(data), lsn, copy, self.quarantine,
            )  # fmt: skip

    def quarantined(self) -> str | None:
        """A description of damaged bytes awaiting an operator, or None."""
        with contextlib.suppress(OSError):
            bad = sorted(self.quarantine.glob("*.bad"))
            if bad:
                total = sum(p.stat().st_size for p in bad)
                return (
                    f"{len(bad)} damaged part(s) of the ingest log ({total} bytes) were set "
                    f"aside in {self.quarantine}; the records around them were replayed. "
                    "Examine them, then move them out of that directory"
                )
        return None

    def _open_tail(self, end: int) -> None:
        segments = self._segments()
        if segments and segments[-1] + self._path(segments[-1]).stat().st_size == end:
            self._base = segments[-1]
            self._size = end - self._base
            self._fd = os.open(self._path(self._base), os.O_WRONLY | os.O_APPEND)
        else:
            self._new_segment(end)

    def _new_segment(self, base: int) -> None:
        fd = os.open(self._path(base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fsync_dir(self.dir)  # the new file's name is durable too
        except OSError:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._base, self._size = fd, base, 0

    @property
    def end_lsn(self) -> int:
        return self._base + self._size

    # ---- appending -----------------------------------------------------------------------
    def start(self, on_durable: OnDurable) -> None:
        if self._fd < 0:
            raise RuntimeError("replay() the log before starting it")
        super().start(on_durable)

    def _persist(self, payloads: list[bytes]) -> list[int]:
        if self._repair:  # cut back what a failed write left, before anything else
            os.ftruncate(self._fd, self._size)
            self._repair = False
        if self._size >= self.segment_bytes:
            self._new_segment(self.end_lsn)
        frames, lsns = [], []
        lsn = self.end_lsn
        for payload in payloads:
            f = frame(payload)
            frames.append(f)
            lsn += len(f)
            lsns.append(lsn)
        data = memoryview(b"".join(frames))
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        os.fdatasync(self._fd)
        self._size = lsn - self._base
        return lsns

    def _failed(self) -> None:
        self._repair = True
        with contextlib.suppress(OSError):  # cut the partial write off, or try next time
            os.ftruncate(self._fd, self._size)
            self._repair = False

    # ---- cleanup -------------------------------------------------------------------------
    def release(self, applied: int) -> None:
        """Delete segments wholly at or before the applied LSN (never the open one)."""
        segments = self._segments()
        for base, nxt in itertools.pairwise(segments):
            if nxt <= applied and base != self._base:
                self._path(base).unlink(missing_ok=True)

    def close(self) -> None:
        super().close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _complete(batch: _Batch, entries: list[tuple[int, Any]]) -> None:
    """Resolve the batch's futures with one wake-up per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int]]] = {}
    for loop, fut, i in batch.futures:
        by_loop.setdefault(loop, []).append((fut, entries[i][0] if batch.error is None else 0))
    for loop, futs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting any more
            loop.call_soon_threadsafe(_resolve, futs, batch.error)


def _resolve(futs: list[tuple[asyncio.Future[int], int]], error: BaseException | None) -> None:
    for fut, lsn in futs:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(_not_durable(error))
        else:
            fut.set_result(lsn)


def _not_durable(error: BaseException) -> CdpError:
    return unavailable(f"the record could not be written to the ingest log ({describe(error)})")
