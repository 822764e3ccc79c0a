"""The flusher: moves durable records from the log into the store in batches.

It wakes every ``interval`` seconds (or as soon as ``max_records`` wait, or a reader asks for a
barrier), applies what is waiting in one store transaction that also records the applied LSN, and
lets the log delete what is no longer needed. A batch the store refuses is retried record by
record; a record that fails on its own is written to the dead-letter file, never silently dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from opencdp.catalog.service import Catalog
from opencdp.ingest.apply import Applied, apply_records
from opencdp.ingest.records import Record
from opencdp.store.base import Store

CHECKPOINT = "ingest_lsn"
log = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        store: Store,
        catalog: Catalog,
        interval: float,
        max_records: int,
        dead_letter: Path,
        on_applied: Callable[[int], None] = lambda lsn: None,
        on_batch: Callable[[Applied, float], None] = lambda stats, seconds: None,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.interval = interval
        self.max_records = max_records
        self.dead_letter = dead_letter
        self.on_applied = on_applied
        self.on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: list[tuple[int, Record]] = []
        self._received_lsn = 0
        self.applied_lsn = store.checkpoint(CHECKPOINT)
        self._barrier_waiting = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.failures = 0

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

    # ---- replay at start-up --------------------------------------------------------------
    def apply_now(self, entries: list[tuple[int, Record]]) -> None:
        """Apply entries synchronously (start-up replay, before the thread runs)."""
        if entries:
            self._apply(entries)

    # ---- thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            rest, self._queue = self._queue, []
        if rest:
            self._apply(rest)

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

    def _run(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + self.interval
                while not self._stopping:
                    if len(self._queue) >= self.max_records or (
                        self._queue and self._barrier_waiting
                    ):
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if self._queue:
                            break
                        deadline, left = time.monotonic() + self.interval, self.interval
                    self._cond.wait(left)
                if self._stopping:
                    return
                batch = self._queue[: self.max_records]
                del self._queue[: len(batch)]
            self._apply(batch)

    def _apply(self, batch: list[tuple[int, Record]]) -> None:
        started = time.perf_counter()
        end = batch[-1][0]
        try:
            with self.store.writer() as w:
                stats = apply_records(w, self.catalog, [r for _, r in batch])
                w.set_checkpoint(CHECKPOINT, end)
        except Exception:
            log.exception("flush of %d records failed; retrying one by one", len(batch))
            stats = self._apply_one_by_one(batch)
        self._done(end)
        self.on_batch(stats, time.perf_counter() - started)

    def _apply_one_by_one(self, batch: list[tuple[int, Record]]) -> Applied:
        total = Applied()
        for lsn, record in batch:
            try:
                with self.store.writer() as w:
                    stats = apply_records(w, self.catalog, [record])
                    w.set_checkpoint(CHECKPOINT, lsn)
                total.records += stats.records
                total.events += stats.events
                total.profiles += stats.profiles
            except Exception as exc:
                self.failures += 1
                log.exception("record at LSN %d cannot be applied; dead-lettered", lsn)
                self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
                with self.dead_letter.open("ab") as f:
                    line = {"lsn": lsn, "error": repr(exc), "record": record.encode().decode()}
                    f.write(orjson.dumps(line) + b"\n")
                with self.store.writer() as w:
                    w.set_checkpoint(CHECKPOINT, lsn)
        return total

    def _done(self, end: int) -> None:
        with self._cond:
            self.applied_lsn = end
            self._cond.notify_all()
        self.on_applied(end)
