"""The durable ingest log: append-only segment files with group commit.

Every waiting append is written with one ``write`` and made durable with one ``fdatasync`` shared
by all of them (group commit); only then are the callers told. A frame is
``<length u32><crc32 u32><payload>``; a torn frame at the tail (a crash mid-write, never
acknowledged) is cut off when the log is opened.

Positions are LSNs: the byte offset across all segments, so a segment is named by the LSN it
starts at. The flusher records the LSN it has applied (in the store, in the same transaction as
the data); segments wholly before it are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HEADER = struct.Struct("<II")
_MAX_FRAME = 64 << 20
_SUFFIX = ".log"

log = logging.getLogger(__name__)

# Called from the writer thread with (end LSN, item) of every frame just made durable.
OnDurable = Callable[[list[tuple[int, Any]]], None]


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


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


class DurableLog:
    def __init__(self, directory: Path, segment_bytes: int = 64 << 20) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._cond = threading.Condition()
        self._batch = _Batch()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._base = 0  # LSN at which the open segment starts
        self._size = 0  # bytes in the open segment
        self._on_durable: OnDurable = lambda entries: None

    # ---- opening and replay --------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob(f"*{_SUFFIX}") if p.stem.isdigit())

    def _path(self, base: int) -> Path:
        return self.dir / f"{base:020d}{_SUFFIX}"

    def replay(self, after: int) -> Iterator[tuple[int, bytes]]:
        """Yield (end LSN, payload) of every frame past ``after``, then open for appending.

        A torn or corrupt tail is truncated: it was never acknowledged.
        """
        segments = self._segments()
        end = after
        for i, base in enumerate(segments):
            nxt = segments[i + 1] if i + 1 < len(segments) else None
            if nxt is not None and nxt <= after:
                continue  # wholly applied
            path = self._path(base)
            with path.open("rb") as f:
                data_end = 0
                while True:
                    header = f.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        break
                    length, crc = _HEADER.unpack(header)
                    if length > _MAX_FRAME:
                        break
                    payload = f.read(length)
                    if len(payload) < length or zlib.crc32(payload) != crc:
                        break
                    data_end += _HEADER.size + length
                    lsn = base + data_end
                    if lsn > after:
                        yield lsn, payload
                end = max(end, base + data_end)
            if path.stat().st_size != data_end:
                if nxt is not None:
                    log.error("ingest log segment %s is corrupt after byte %d", path, data_end)
                else:
                    log.warning("cutting a torn tail off %s at byte %d", path, data_end)
                with path.open("r+b") as f:
                    f.truncate(data_end)
                    os.fsync(f.fileno())
        self._open_tail(end)

    def _open_tail(self, end: int) -> None:
        segments = self._segments()
        if segments and segments[-1] + self._path(segments[-1]).stat().st_size == end:
            self._base = segments[-1]
            self._size = end - self._base
            self._fd = os.open(self._path(self._base), os.O_WRONLY | os.O_APPEND)
        else:
            self._new_segment(end)

    def _new_segment(self, base: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._base, self._size = base, 0
        self._fd = os.open(self._path(base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)

    @property
    def end_lsn(self) -> int:
        return self._base + self._size

    # ---- appending -----------------------------------------------------------------------
    def start(self, on_durable: OnDurable) -> None:
        if self._fd < 0:
            raise RuntimeError("replay() the log before starting it")
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
            raise b.error
        return b.lsns[index]

    def _enqueue(
        self,
        payload: bytes,
        item: Any,
        waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[int]] | None,
    ) -> tuple[_Batch, int]:
        """Add a frame to the batch the writer takes next; returns that batch and its index."""
        with self._cond:
            if self._closing:
                raise RuntimeError("the ingest log is closed")
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
            frames = []
            lsn = self.end_lsn
            for payload, item in zip(batch.payloads, batch.items, strict=True):
                f = frame(payload)
                frames.append(f)
                lsn += len(f)
                entries.append((lsn, item))
            data = memoryview(b"".join(frames))
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
            os.fdatasync(self._fd)
            self._size = lsn - self._base
            batch.lsns = [end for end, _ in entries]
            self._on_durable(entries)
            if self._size >= self.segment_bytes:
                self._new_segment(self.end_lsn)
        except BaseException as exc:  # the callers must hear of it; the process goes on
            log.exception("ingest log write failed")
            batch.error = exc
            entries = []
            try:  # cut the partial write off, so later frames follow the last good one
                os.ftruncate(self._fd, self._size)
            except OSError:
                log.exception("ingest log cannot be repaired; refusing further writes")
                with self._cond:
                    self._closing = True
        finally:
            batch.done.set()
            _complete(batch, entries)

    # ---- cleanup -------------------------------------------------------------------------
    def release(self, applied: int) -> None:
        """Delete segments wholly at or before the applied LSN (never the open one)."""
        segments = self._segments()
        for base, nxt in itertools.pairwise(segments):
            if nxt <= applied and base != self._base:
                self._path(base).unlink(missing_ok=True)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
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
            fut.set_exception(RuntimeError("the record could not be made durable"))
        else:
            fut.set_result(lsn)
