"""The flusher: moves durable records from the log into the store in batches.

It wakes every ``interval`` seconds (or as soon as ``max_records`` wait, or a reader asks for a
barrier) and takes the waiting records through the steps of a flush (:data:`crashpoints.FLUSH`):

1. read: the batch, whole log frames, after the LSN recorded in the metadata DB;
2. resolve and write: the records the store does not hold yet (above the store's marker, the
   highest LSN it holds) are applied, and the marker moves to the batch's last LSN; in one
   transaction where the store has transactions (:attr:`Capabilities.transactions`), else the
   marker is written after the rows, whose writes are idempotent by their keys;
3. record progress: the batch's last LSN in the metadata DB (:class:`ProgressLog`);
4. release: the log deletes the segments below it.

A crash between 2 and 3 leaves records the store holds but progress does not cover: they are
read again at the next start, found at or below the store's marker, and not applied again.

Failures are of two kinds, and are never confused:
- a *passing* condition (a full disk, an I/O error, a locked or invalidated database, memory):
  nothing is skipped and the checkpoint does not move. The batch stays at the head of the
  queue and is tried again with a growing pause (up to ``MAX_BACKOFF``); health reports the
  store degraded with the reason until a batch goes through, and then everything
  acknowledged meanwhile becomes visible, without a restart;
- a record the store refuses for what it holds: the batch is retried record by record, and a
  record that fails on its own is written (and synced) to the dead-letter file with the
  reason before the checkpoint moves past it.
The thread is supervised: an unexpected error is logged and reported, and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from opencdp import crashpoints
from opencdp.catalog.service import Catalog
from opencdp.faults import is_transient
from opencdp.health import Health
from opencdp.ingest.apply import Applied, apply_records
from opencdp.ingest.records import Record
from opencdp.meta.progress import STORE_INGEST_LSN, ProgressLog
from opencdp.store.base import Store, StoreWriter

COMPONENT = "store"
MIN_BACKOFF, MAX_BACKOFF = 0.05, 5.0
log = logging.getLogger(__name__)


def whole_frames(entries: list[tuple[int, Record]], at_least: int) -> int:
    """How many of ``entries`` to take: ``at_least`` (or all), then the rest of the last log
    frame, so that the records of one frame (an all-or-nothing batch) share a transaction."""
    n = min(at_least, len(entries))
    while 0 < n < len(entries) and entries[n][0] == entries[n - 1][0]:
        n += 1
    return n


class Stalled(Exception):
    """Applying stopped at a passing condition after ``applied`` records of the batch."""

    def __init__(self, applied: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}")
        self.applied = applied
        self.cause = cause


def positions(entries: list[tuple[int, Record]]) -> list[int]:
    """Each record's log position: its frame's LSN shifted left by 32 bits, plus its index in
    the frame (the records of one request share an LSN; a batch holds whole frames)."""
    out: list[int] = []
    prev, k = -1, 0
    for lsn, _ in entries:
        k = k + 1 if lsn == prev else 0
        prev = lsn
        out.append((lsn << 32) | k)
    return out


class Flusher:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        progress: ProgressLog,
        interval: float,
        max_records: int,
        dead_letter: Path | Callable[[list[dict[str, Any]]], None],
        on_applied: Callable[[int], None] = lambda lsn: None,
        on_batch: Callable[[Applied, float], None] = lambda stats, seconds: None,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.progress = progress
        self.interval = interval
        self.max_records = max_records
        self.dead_letter = dead_letter
        self.on_applied = on_applied
        self.on_batch = on_batch
        self.health = health or Health()
        self._cond = threading.Condition()
        self._queue: list[tuple[int, Record]] = []
        self._received_lsn = 0
        # Everything up to applied_lsn is in the store and recorded; up to store_lsn (the
        # store's marker: never behind) the store holds it, recorded or not.
        self.applied_lsn = progress.ingest_lsn()
        self.store_lsn = max(store.checkpoint(STORE_INGEST_LSN), self.applied_lsn)
        self._barrier_waiting = 0
        self._generation = 0  # moves when the queue is replaced (resync)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failures = 0  # records dead-lettered
        self.stalls = 0  # batches held back by a passing condition

    # ---- called by the log writer --------------------------------------------------------
    def enqueue(self, entries: list[tuple[int, Record]]) -> None:
        with self._cond:
            self._queue.extend(entries)
            self._received_lsn = entries[-1][0]
            if len(self._queue) >= self.max_records:
                self._cond.notify_all()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def stalled(self) -> str | None:
        """Why the store is not taking records now, or None."""
        return self.health.problems().get(COMPONENT)

    def resync(self) -> int:
        """Drop the records waiting and read the progress again (another process may have
        applied records meanwhile: a shared queue's new leader); the applied LSN."""
        with self._cond:
            self._queue = []
            self._generation += 1  # (a batch being applied must not cut the new queue)
            self.applied_lsn = self.progress.ingest_lsn()
            self.store_lsn = max(self.store.checkpoint(STORE_INGEST_LSN), self.applied_lsn)
            self._received_lsn = self.applied_lsn
            return self.applied_lsn

    # ---- replay at start-up --------------------------------------------------------------
    def apply_now(self, entries: list[tuple[int, Record]]) -> None:
        """Apply entries synchronously (start-up replay, before the thread runs). A passing
        condition here stops the start: the operator sees why at once."""
        if entries:
            self._apply(entries)

    # ---- thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="ingest-flusher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            rest, self._queue = self._queue, []
        if rest:
            try:
                self._apply(rest)
            except Stalled as exc:  # still safe in the log: replayed at the next start
                log.error("stopping with %d records not yet in the store: %s", len(rest), exc)

    def barrier(self, timeout: float = 30.0) -> bool:
        """Wait until every record durable now is in the store; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._received_lsn
            self._barrier_waiting += 1
            self._cond.notify_all()
            try:
                while self.applied_lsn < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._barrier_waiting -= 1
        return True

    def _supervise(self) -> None:
        """Run the loop; whatever escapes it is logged and reported, and the loop resumes."""
        while True:
            try:
                self._run()
                return
            except BaseException as exc:  # a bug, not a fault of the store: keep going
                log.exception("ingest flusher failed; restarting it")
                self.health.fail(COMPONENT, f"the flusher failed unexpectedly: {exc!r}")
                with self._cond:
                    if self._stopping:
                        return
                    self._cond.wait(MAX_BACKOFF)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                if backoff:  # a pause after a stall, which only stopping cuts short
                    until = time.monotonic() + backoff
                    while not self._stopping and (left := until - time.monotonic()) > 0:
                        self._cond.wait(left)
                else:
                    self._wait_for_work()
                if self._stopping:
                    return
                batch = self._queue[: whole_frames(self._queue, self.max_records)]
                generation = self._generation
            try:
                self._apply(batch)
            except Stalled as exc:
                self.stalls += 1
                with self._cond:
                    if generation == self._generation:
                        del self._queue[: exc.applied]
                backoff = min(max(backoff * 2, MIN_BACKOFF), MAX_BACKOFF)
                log.warning(
                    "store refused a batch (%s); %d records wait, retrying in %.2fs",
                    exc, len(self._queue), backoff,
                )  # fmt: skip
                self.health.fail(
                    COMPONENT,
                    f"cannot write to the store ({exc}); {len(self._queue)} acknowledged "
                    "records are safe in the ingest log and wait; retrying",
                )
                continue
            with self._cond:
                if generation == self._generation:  # (else the queue was read afresh)
                    del self._queue[: len(batch)]
            if backoff:
                log.info("store writes again; the backlog is being applied")
            backoff = 0.0
            self.health.ok(COMPONENT)

    def _wait_for_work(self) -> None:
        """(Holding the condition) until a batch is due: the interval passed with records
        waiting, ``max_records`` wait, a reader asks for a barrier, or the flusher stops."""
        deadline = time.monotonic() + self.interval
        while not self._stopping:
            if len(self._queue) >= self.max_records or (self._queue and self._barrier_waiting):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                if self._queue:
                    return
                deadline, left = time.monotonic() + self.interval, self.interval
            self._cond.wait(left)

    def _apply(self, batch: list[tuple[int, Record]]) -> None:
        """Apply the batch, or raise :class:`Stalled` with how much of it was applied."""
        started = time.perf_counter()
        end = batch[-1][0]
        crashpoints.reached("flush.read")
        # Records the store holds already (a batch written before a crash that came before
        # its progress was recorded) are not applied again.
        todo = [e for e in batch if e[0] > self.store_lsn]
        stats = Applied()
        if todo:
            try:
                stats = self._write(todo, end)
            except Exception as exc:
                if is_transient(exc, self.store):
                    raise Stalled(0, exc) from exc
                log.exception("flush of %d records failed; retrying one by one", len(todo))
                stats = self._apply_one_by_one(todo)
        self._record(end, 0)
        self.on_batch(stats, time.perf_counter() - started)

    def _write(self, entries: list[tuple[int, Record]], end: int) -> Applied:
        """Write the entries and move the store's marker to ``end``: together where the store
        has transactions, else the marker after the rows.

        With transactions the marker is read first, held to the commit
        (:meth:`StoreWriter.checkpoint_for_update`), and the entries at or below it are left
        out: on a shared queue a new leader and the one it replaced may both hold a batch
        for a moment, and whichever writes second finds the first's marker and writes only
        what is above it (never an older value over a newer one)."""
        if self.store.capabilities.transactions:
            with self.store.writer() as w:
                held = w.checkpoint_for_update(STORE_INGEST_LSN)
                todo = [(lsn, r) for lsn, r in entries if lsn > held]
                stats = self._records(w, todo)
                end = max(end, held)
                w.set_checkpoint(STORE_INGEST_LSN, end)
            crashpoints.reached("flush.rows_written")
        else:
            # Rows first, each profile stamped with the last record folded into it; then the
            # marker. A replay in between leaves out what the stamps cover.
            with self.store.writer() as w:
                stats = self._records(w, entries)
            crashpoints.reached("flush.rows_written")
            with self.store.writer() as w:
                w.set_checkpoint(STORE_INGEST_LSN, end)
        self.store_lsn = end
        crashpoints.reached("flush.store_written")
        return stats

    def _records(self, w: StoreWriter, entries: list[tuple[int, Record]]) -> Applied:
        if not entries:
            return Applied()
        return apply_records(w, self.catalog, [r for _, r in entries], positions(entries))

    def _record(self, end: int, i: int) -> None:
        """Record the progress up to ``end`` in the metadata DB, then release the log."""
        try:
            self.progress.record_ingest(end)
        except Exception as exc:
            if is_transient(exc, self.store):  # the store holds it: the retry only records
                raise Stalled(i, exc) from exc
            raise
        crashpoints.reached("flush.progress_recorded")
        self._done(end)
        crashpoints.reached("flush.log_released")

    def _apply_one_by_one(self, batch: list[tuple[int, Record]]) -> Applied:
        """Apply log frame by log frame (a frame's records, a batch that was acknowledged as
        one, are applied, or dead-lettered, together)."""
        total = Applied()
        i = 0
        while i < len(batch):
            lsn = batch[i][0]
            n = whole_frames(batch[i:], 1)
            records = [r for _, r in batch[i : i + n]]
            try:
                stats = self._write(batch[i : i + n], lsn)
                total.records += stats.records
                total.events += stats.events
                total.profiles += stats.profiles
            except Exception as exc:
                if is_transient(exc, self.store):
                    raise Stalled(i, exc) from exc
                self._dead_letter(i, lsn, records, exc)
            self._record(lsn, i)
            i += n
        return total

    def _dead_letter(self, i: int, lsn: int, records: list[Record], exc: Exception) -> None:
        """Keep records the store refuses, durably, before the progress moves past them."""
        log.error(
            "%d record(s) at LSN %d cannot be applied (%r); dead-lettered", len(records), lsn, exc
        )
        lines = [
            {"lsn": lsn, "error": repr(exc), "record": record.encode().decode()}
            for record in records
        ]
        try:
            if callable(self.dead_letter):  # (a shared queue keeps them in the metadata DB)
                self.dead_letter(lines)
            else:
                self._dead_letter_file(self.dead_letter, lines)
        except Exception as fault:  # cannot keep it yet: nothing moves until it can
            if is_transient(fault, self.store):
                raise Stalled(i, fault) from fault
            raise
        self.failures += 1

    @staticmethod
    def _dead_letter_file(path: Path, lines: list[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(orjson.dumps(line) + b"\n" for line in lines))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _done(self, end: int) -> None:
        with self._cond:
            self.applied_lsn = end
            self._cond.notify_all()
        try:
            self.on_applied(end)
        except Exception:  # (the log's clean-up; it is tried again at the next batch)
            log.exception("releasing ingest log segments up to LSN %d failed", end)
