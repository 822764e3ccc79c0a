"""The ingest service: the one entry point surfaces use to accept single records."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from opencdp.catalog.service import Catalog
from opencdp.config import Settings
from opencdp.errors import invalid, unavailable
from opencdp.health import Health
from opencdp.ingest.apply import Applied
from opencdp.ingest.flusher import Flusher
from opencdp.ingest.log import DurableLog
from opencdp.ingest.records import Record
from opencdp.ingest.shared import SharedLog, Tailer
from opencdp.meta.progress import ProgressLog
from opencdp.store.base import Store

log = logging.getLogger(__name__)

# Records acknowledged but not yet in the store; past this, new requests wait for the flusher,
# at most BACKLOG_WAIT seconds (and not at all while the store refuses writes), then are
# refused: memory stays bounded and no request waits without end.
MAX_BACKLOG = 200_000
BACKLOG_WAIT = 10.0
LOG_COMPONENT, DAMAGE_COMPONENT, FLUSHER_COMPONENT = "ingest_log", "ingest_log_damage", "flusher"
QUEUE_COMPONENT = "ingest_queue"  # a shared queue the process cannot read
APPLIED_COMPONENT = "ingest_applied"  # a shared queue no process applies
# Seconds that records may wait in a shared queue while no process applies any, before health
# says so (a deployment whose workers are all down, or whose servers run without workers).
QUEUE_STALL_SECONDS = 60.0


class IngestService:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: Store,
        progress: ProgressLog,
        on_batch: Callable[[Applied, float], None] | None = None,
        health: Health | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.progress = progress
        self.health = health or Health()
        # A deployment on PostgreSQL acknowledges records once they are in its queue there;
        # the embedded one, once they are in the log of the data directory.
        self.shared: SharedLog | None = None
        self.tailer: Tailer | None = None
        self.log: DurableLog | SharedLog
        dead_letter: Path | Callable[[list[dict[str, Any]]], None]
        if progress.engine.dialect.name == "postgresql":
            self.log = self.shared = SharedLog(progress.engine, on_write=self._log_written)
            dead_letter = self.shared.dead_letter
        else:
            self.log = DurableLog(
                settings.log_dir,
                settings.log_segment_bytes,
                quarantine=settings.data_dir / "quarantine",
                on_write=self._log_written,
            )
            dead_letter = settings.data_dir / "dead-letter.jsonl"
        self.flusher = Flusher(
            store,
            catalog,
            progress,
            interval=settings.flush_interval,
            max_records=settings.flush_max_records,
            dead_letter=dead_letter,
            on_applied=self.log.release,
            on_batch=on_batch or (lambda stats, seconds: None),
            health=self.health,
        )
        if self.shared is not None:
            self.tailer = Tailer(
                self.shared,
                feed=self._feed,
                become_leader=self._lead,
                room=lambda: self.flusher.backlog < 2 * self.flusher.max_records,
                interval=settings.flush_interval,
                report=self._queue_reached,
            )
        self.replayed = 0
        self._started = False
        self.health.probe(DAMAGE_COMPONENT, self.log.quarantined)
        self.health.probe(FLUSHER_COMPONENT, self._flusher_stopped)
        self._applied_seen = (-1, 0.0)  # (the applied LSN seen, since when)
        if self.shared is not None:
            self.health.probe(APPLIED_COMPONENT, self._queue_unapplied)

    def start(self, lead: bool = True) -> None:
        """Replay what the recorded progress does not cover, then accept new records (what
        the store holds already of it is recorded, not applied again). On a shared queue the
        leader's reader does the replaying, whichever process leads; with ``lead`` False this
        process only appends (a server whose work ``opencdp worker`` processes do) and never
        stands to lead."""
        if self.shared is not None and self.tailer is not None:
            self.shared.open(at_least=self.flusher.store_lsn)
            if not lead:
                self.shared.start(lambda entries: None)
                return
            self.shared.start(lambda entries: self.tailer.nudge() if self.tailer else None)
            self.flusher.start()
            self.tailer.start()
            self._started = True
            return
        if not lead:
            raise ValueError("the ingest log of a data directory is applied by its own server")
        assert isinstance(self.log, DurableLog)
        started = time.perf_counter()
        entries = self._decoded(self.log.replay(self.flusher.applied_lsn))
        chunk: list[tuple[int, Record]] = []
        for entry in entries:
            # Chunks end between log frames: a frame's records are applied together.
            if len(chunk) >= self.flusher.max_records and chunk[-1][0] != entry[0]:
                self.flusher.apply_now(chunk)
                self.replayed += len(chunk)
                chunk = []
            chunk.append(entry)
        if chunk:
            self.flusher.apply_now(chunk)
            self.replayed += len(chunk)
        if self.replayed:
            log.info(
                "replayed %d records from the ingest log in %.2fs",
                self.replayed,
                time.perf_counter() - started,
            )
        self.log.start(self._durable)
        self.flusher.start()
        self._started = True

    def _lead(self) -> int:
        """(The shared queue's reader, as this process becomes the leader) read the progress
        afresh; LSNs to come start above what the store holds (a metadata DB restored from an
        older backup would hand out LSNs the store's marker covers). The LSN to read after."""
        applied = self.flusher.resync()
        assert self.shared is not None
        self.shared.open(at_least=self.flusher.store_lsn)
        return applied

    def _feed(self, frames: list[tuple[int, bytes]]) -> None:
        """(The shared queue's reader, in the leading process) frames for the flusher."""
        entries = list(self._decoded(iter(frames)))
        if entries:
            self.flusher.enqueue(entries)

    def _decoded(self, frames: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, Record]]:
        for lsn, payload in frames:
            try:
                records = Record.decode_frame(payload)
            except Exception as exc:  # intact but unreadable: kept aside, never dropped
                self.log.set_aside(lsn, payload, f"not a record: {exc!r}")
                continue
            for record in records:
                yield lsn, record

    def _durable(self, entries: list[tuple[int, Any]]) -> None:
        """(The log's writer thread) hand what is durable to the flusher, a record at a time:
        the records of a batch frame share its LSN."""
        flat: list[tuple[int, Record]] = []
        for lsn, item in entries:
            if isinstance(item, list):
                flat += [(lsn, r) for r in item]
            else:
                flat.append((lsn, item))
        if flat:
            self.flusher.enqueue(flat)

    def _log_written(self, problem: str | None) -> None:
        if problem is None:
            self.health.ok(LOG_COMPONENT)
        else:
            self.health.fail(
                LOG_COMPONENT, f"cannot write to the ingest log ({problem}); records are refused"
            )

    def _queue_reached(self, problem: str | None) -> None:
        if problem is None:
            self.health.ok(QUEUE_COMPONENT)
        else:
            self.health.fail(QUEUE_COMPONENT, problem)

    def _queue_unapplied(self) -> str | None:
        """Why the shared queue is not being applied: records wait and the applied LSN has
        not moved for ``QUEUE_STALL_SECONDS`` (whichever process should apply them)."""
        try:
            applied, pending = self.progress.ingest_lsn(), self.pending
        except Exception:  # (the metadata DB away: ingest_queue and ingest_log say so)
            return None
        now = time.monotonic()
        seen, since = self._applied_seen
        if pending == 0 or applied != seen:
            self._applied_seen = (applied, now)
            return None
        if now - since < QUEUE_STALL_SECONDS:
            return None
        return (
            f"{pending} acknowledged records wait in the ingest queue and no process has "
            f"applied any for {now - since:.0f} s (is an `opencdp worker` running?)"
        )

    def _flusher_stopped(self) -> str | None:
        if self._started and not self.flusher.alive:
            return "the ingest flusher is not running"
        return None

    def _storable(self, records: list[Record]) -> None:
        """Refuse, before it is acknowledged, what the store could not keep: text with the
        character U+0000 where the store's text cannot hold it (PostgreSQL)."""
        if self.store.capabilities.text_nul:
            return
        for record in records:
            if record.holds_nul():
                raise invalid(
                    "properties",
                    "text holds the character U+0000, which this deployment's store "
                    f"({self.store.capabilities.name}) cannot keep",
                )

    async def submit(self, record: Record) -> int:
        """Make ``record`` durable; returns once it survives a crash."""
        self._storable([record])
        waited = 0.0
        while self.pending > MAX_BACKLOG:
            self._check_backlog(waited)
            await asyncio.sleep(0.01)
            waited += 0.01
        return await self.log.append_async(record.encode(), record)

    async def submit_batch(self, records: list[Record]) -> int:
        """Make ``records`` durable together, in one log frame: after a crash all of them are
        there or none is (a torn frame is never replayed). Returns once they survive a crash."""
        self._storable(records)
        waited = 0.0
        while self.pending > MAX_BACKLOG:
            self._check_backlog(waited)
            await asyncio.sleep(0.01)
            waited += 0.01
        return await self.log.append_async(Record.encode_batch(records), list(records))

    def submit_wait(self, record: Record) -> int:
        """:meth:`submit` for plain threads."""
        self._storable([record])
        waited = 0.0
        while self.pending > MAX_BACKLOG:
            self._check_backlog(waited)
            time.sleep(0.01)
            waited += 0.01
        return self.log.append_wait(record.encode(), record)

    def _check_backlog(self, waited: float) -> None:
        stalled = self.flusher.stalled
        if stalled is not None:
            raise unavailable(f"{self.pending} records wait for the store: {stalled}")
        if waited >= BACKLOG_WAIT:
            raise unavailable(f"{self.pending} records wait for the store, which is not keeping up")

    @property
    def pending(self) -> int:
        """Records acknowledged and not yet in the store (a shared queue's: every
        process's)."""
        if self.shared is not None:
            return self.shared.pending(self.progress)
        return self.flusher.backlog

    def barrier(self, timeout: float = 30.0) -> bool:
        """Wait until the store holds every record acknowledged now; False on timeout."""
        if self.shared is not None and self.tailer is not None:
            return self.shared.barrier(self.progress, timeout, self.tailer.nudge)
        return self.flusher.barrier(timeout)

    def stop(self) -> None:
        if self.tailer is not None:
            self.tailer.stop()
        self.log.close()
        self.flusher.stop()
