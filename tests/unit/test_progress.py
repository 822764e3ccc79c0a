"""Progress in the metadata DB (opencdp.meta.progress): the ingest LSN never moves back, a
batch recorded twice stays as first recorded, and a data directory whose progress the store
kept (before the metadata DB held it) keeps it at its first start."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from opencdp.catalog.service import Catalog
from opencdp.config import Settings
from opencdp.meta import tables as t
from opencdp.meta.db import connect
from opencdp.meta.progress import STORE_INGEST_LSN, BatchRecord, ProgressLog
from opencdp.runtime import Runtime
from opencdp.store import open_store
from tests.crashdriver import build


def test_the_ingest_lsn_only_moves_forward(meta_url: str) -> None:
    progress = ProgressLog(connect(meta_url))
    assert progress.ingest_lsn() == 0
    progress.record_ingest(100)
    progress.record_ingest(40)  # a late, smaller one
    assert progress.ingest_lsn() == 100
    progress.record_ingest(250)
    assert progress.ingest_lsn() == 250
    assert progress.ingest_lsn("another log") == 0


def test_batches_are_recorded_once_and_the_last_one_is_the_state(meta_url: str) -> None:
    progress = ProgressLog(connect(meta_url))
    assert progress.last_batch(7) == BatchRecord()
    one = BatchRecord(1, 4, 3, 1, 0, 40, 0)
    progress.record_batch(7, one)
    progress.record_batch(7, BatchRecord(1, 99, 99, 99, 99, 99, 99))  # the same batch again
    assert progress.last_batch(7) == one
    two = BatchRecord(2, 8, 6, 2, 1, 80, 30)
    progress.record_batch(7, two)
    assert progress.last_batch(7) == two
    assert progress.last_batch(8) == BatchRecord()


def test_progress_the_store_kept_is_adopted_once(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'meta.db'}")
    pid = Catalog(engine, b"k" * 32).create_project("p")[0].id
    with engine.begin() as conn:
        jobs = [
            conn.execute(
                sa.insert(t.jobs).values(
                    project_id=pid,
                    kind="import",
                    surface="admin",
                    state=state,
                    params={},
                    created_at=t.utcnow(),
                )
            ).inserted_primary_key[0]
            for state in ("running", "queued", "complete")
        ]
    store = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}")
    try:
        with store.writer() as w:  # what a store kept before
            w.set_checkpoint(STORE_INGEST_LSN, 1234)
            for job in jobs:
                for k, v in (("rows", 50), ("imported", 45), ("failed", 5), ("warnings", 2),
                             ("failures_bytes", 300), ("warnings_bytes", 120)):  # fmt: skip
                    w.set_checkpoint(f"job:{job}:{k}", v + job)
        progress = ProgressLog(engine)
        assert progress.adopt_store_checkpoints(store)
        assert progress.ingest_lsn() == 1234
        running, queued, done = jobs
        assert progress.last_batch(running) == BatchRecord(
            0, 50 + running, 45 + running, 5 + running, 2 + running, 300 + running, 120 + running
        )
        assert progress.last_batch(queued).last_row == 50 + queued
        assert progress.last_batch(done) == BatchRecord()  # finished: nothing to resume
        with store.writer() as w:
            w.set_checkpoint(STORE_INGEST_LSN, 9999)
        assert not progress.adopt_store_checkpoints(store)  # once
        assert progress.ingest_lsn() == 1234
    finally:
        store.close()


def test_a_data_dir_from_before_replays_only_what_its_store_lacks(tmp_path: Path) -> None:
    """A data directory whose metadata DB has no progress yet (as after the migration that
    adds it): the start takes the store's LSN and applies nothing twice."""
    settings = Settings(data_dir=tmp_path / "data", job_workers=0)
    rt = Runtime.open(settings)
    rt.start(announce=False)
    try:
        pid = rt.catalog.create_project("old")[0].id
        rt.catalog.add_property(pid, "user", "n", "number")
        rt.catalog.ensure_td_keys(pid)
        for i in range(5):
            rt.ingest.submit_wait(
                build(rt, pid, {"#type": "user_add", "#account_id": "a", "properties": {"n": 1}},
                      1_700_000_000_000_000 + i)
            )  # fmt: skip
        assert rt.ingest.barrier(timeout=60)
        lsn = rt.ingest.flusher.applied_lsn
    finally:
        rt.stop()
    engine = connect(settings.meta_url_resolved)
    with engine.begin() as conn:  # as the migration leaves it
        conn.execute(sa.delete(t.ingest_progress))
    engine.dispose()
    rt = Runtime.open(settings)
    rt.start(announce=False)
    try:
        assert rt.ingest.flusher.applied_lsn == lsn and rt.ingest.replayed == 0
        schema = rt.catalog.schema(pid)
        uid = rt.store.find_user(pid, (schema.identity_keys["#account_id"].id, "a"))
        assert uid is not None
        row = rt.store.profile(pid, uid, list(schema.user.values()))
        assert row is not None and row["values"][schema.user["n"].id] == 5
    finally:
        rt.stop()
