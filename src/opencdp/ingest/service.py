"""The ingest service: the one entry point surfaces use to accept single records."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from itertools import islice

from opencdp.catalog.service import Catalog
from opencdp.config import Settings
from opencdp.ingest.apply import Applied
from opencdp.ingest.flusher import CHECKPOINT, Flusher
from opencdp.ingest.log import DurableLog
from opencdp.ingest.records import Record
from opencdp.store.base import Store

log = logging.getLogger(__name__)

# Records acknowledged but not yet in the store; past this, new requests wait for the flusher.
MAX_BACKLOG = 200_000


class IngestService:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: Store,
        on_batch: Callable[[Applied, float], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.log = DurableLog(settings.log_dir, settings.log_segment_bytes)
        self.flusher = Flusher(
            store,
            catalog,
            interval=settings.flush_interval,
            max_records=settings.flush_max_records,
            dead_letter=settings.data_dir / "dead-letter.jsonl",
            on_applied=self.log.release,
            on_batch=on_batch or (lambda stats, seconds: None),
        )
        self.replayed = 0

    def start(self) -> None:
        """Replay what the store has not applied yet, then accept new records."""
        started = time.perf_counter()
        entries = self.log.replay(self.store.checkpoint(CHECKPOINT))
        while chunk := [
            (lsn, Record.decode(payload))
            for lsn, payload in islice(entries, self.flusher.max_records)
        ]:
            self.flusher.apply_now(chunk)
            self.replayed += len(chunk)
        if self.replayed:
            log.info(
                "replayed %d records from the ingest log in %.2fs",
                self.replayed,
                time.perf_counter() - started,
            )
        self.log.start(self.flusher.enqueue)
        self.flusher.start()

    async def submit(self, record: Record) -> int:
        """Make ``record`` durable; returns once it survives a crash."""
        while self.flusher.backlog > MAX_BACKLOG:
            await asyncio.sleep(0.01)
        return await self.log.append_async(record.encode(), record)

    def submit_wait(self, record: Record) -> int:
        """:meth:`submit` for plain threads."""
        while self.flusher.backlog > MAX_BACKLOG:
            time.sleep(0.01)
        return self.log.append_wait(record.encode(), record)

    @property
    def pending(self) -> int:
        return self.flusher.backlog

    def barrier(self, timeout: float = 30.0) -> bool:
        return self.flusher.barrier(timeout)

    def stop(self) -> None:
        self.log.close()
        self.flusher.stop()
