"""Progress of the writers to the analytic store, kept in the metadata DB.

The ingest flusher records the highest LSN the store holds; an import job records each batch
the store holds (its last row, the job's counters after it, where its failures and warnings
files stood). Progress is recorded *after* the store is written: a crash in between leaves a
batch in the store that progress does not cover, and the batch is replayed. The store's
writes are idempotent by their keys and it keeps each batch's marker, so the replay changes
nothing (see :mod:`opencdp.ingest.flusher` and :mod:`opencdp.imports.pipeline`).

Data directories from before this table kept progress as checkpoints in the store;
:meth:`ProgressLog.adopt_store_checkpoints` reads them once, at the first start.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from opencdp.meta import tables as t
from opencdp.store.base import Store

INGEST = "ingest"  # the ingest log's stream name
STORE_INGEST_LSN = "ingest_lsn"  # the store's marker of the ingest stream (a checkpoint)
_JOB_COUNTERS = ("rows", "imported", "failed", "warnings", "failures_bytes", "warnings_bytes")


@dataclass(frozen=True)
class BatchRecord:
    """An import job's state after its batch ``batch_no`` (0: before any batch)."""

    batch_no: int = 0
    last_row: int = 0
    imported: int = 0
    failed: int = 0
    warnings: int = 0
    failures_bytes: int = 0
    warnings_bytes: int = 0


class ProgressLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # ---- ingest ----------------------------------------------------------------------
    def ingest_lsn(self, stream: str = INGEST) -> int:
        """The highest LSN of ``stream`` whose records the store holds."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(t.ingest_progress.c.lsn).where(t.ingest_progress.c.stream == stream)
            ).scalar()
        return int(value or 0)

    def record_ingest(self, lsn: int, stream: str = INGEST) -> None:
        """Record that the store holds every record of ``stream`` up to ``lsn`` (it never
        moves back)."""
        tbl = t.ingest_progress
        with self.engine.begin() as conn:
            stored = conn.execute(sa.select(tbl.c.lsn).where(tbl.c.stream == stream)).scalar()
            if stored is None:
                conn.execute(sa.insert(tbl).values(stream=stream, lsn=lsn, updated_at=t.utcnow()))
            elif stored < lsn:
                conn.execute(
                    sa.update(tbl)
                    .where(tbl.c.stream == stream)
                    .values(lsn=lsn, updated_at=t.utcnow())
                )

    # ---- import jobs -----------------------------------------------------------------
    def last_batch(self, job_id: int) -> BatchRecord:
        """The job's state after its last recorded batch (all zero before the first)."""
        tbl = t.import_batches
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(tbl)
                    .where(tbl.c.job_id == job_id)
                    .order_by(tbl.c.batch_no.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        if row is None:
            return BatchRecord()
        return BatchRecord(**{k: int(row[k]) for k in BatchRecord.__dataclass_fields__})

    def record_batch(self, job_id: int, rec: BatchRecord) -> None:
        """Record a batch of the job. A batch recorded already (the same key) stays as it was:
        recording is idempotent too."""
        tbl = t.import_batches
        values = {k: getattr(rec, k) for k in BatchRecord.__dataclass_fields__}
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(tbl.c.batch_no).where(
                    tbl.c.job_id == job_id, tbl.c.batch_no == rec.batch_no
                )
            ).first()
            if exists is None:
                conn.execute(sa.insert(tbl).values(job_id=job_id, created_at=t.utcnow(), **values))

    # ---- data directories from before ------------------------------------------------
    def adopt_store_checkpoints(self, store: Store) -> bool:
        """Once, at the first start of a data directory whose progress the store kept: copy
        the ingest LSN and the counters of unfinished import jobs into the metadata DB.
        Returns whether it did (the ingest row's presence says it was done)."""
        with self.engine.connect() as conn:
            done = conn.execute(
                sa.select(t.ingest_progress.c.stream).where(t.ingest_progress.c.stream == INGEST)
            ).first()
            jobs = conn.execute(
                sa.select(t.jobs.c.id).where(
                    t.jobs.c.kind == "import", t.jobs.c.state.in_(("queued", "running"))
                )
            ).all()
        if done is not None:
            return False
        lsn = store.checkpoint(STORE_INGEST_LSN)
        batches: list[dict[str, object]] = []
        for (job_id,) in jobs:
            state = {k: store.checkpoint(f"job:{job_id}:{k}") for k in _JOB_COUNTERS}
            if any(state.values()):
                batches.append(
                    {
                        "job_id": job_id,
                        "batch_no": 0,
                        "last_row": state["rows"],
                        **{k: v for k, v in state.items() if k != "rows"},
                        "created_at": t.utcnow(),
                    }
                )
        with self.engine.begin() as conn:
            if batches:
                conn.execute(sa.insert(t.import_batches), batches)
            conn.execute(
                sa.insert(t.ingest_progress).values(stream=INGEST, lsn=lsn, updated_at=t.utcnow())
            )
        return True
