"""Recovery mechanisms, each on real parts: the server key read back byte for byte, a store
invalidated by a checkpoint on a full disk reopened on next use, a flusher that survives its
own failures, a job stopped by a full disk retried rather than failed, private files."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from opencdp import datadir
from opencdp.catalog.service import Catalog
from opencdp.config import Settings
from opencdp.faults import is_transient
from opencdp.ingest.records import build_record
from opencdp.jobs.service import Job, JobLimits, Jobs, Outcome, Progress
from opencdp.meta.db import connect
from opencdp.runtime import Runtime
from opencdp.store.base import EventRows
from opencdp.store.duckdb import DuckDBStore


# ---- the server key ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", [b" " + b"k" * 30 + b"\n", b"\t" * 32, b"\x00" * 31 + b"\r"])
def test_the_server_key_is_read_back_byte_for_byte(tmp_path: Path, key: bytes) -> None:
    """A random key may begin or end with whitespace: every client secret and signed link
    must stay the same across restarts all the same."""
    settings = Settings(data_dir=tmp_path / "data", job_workers=0)
    settings.data_dir.mkdir()
    settings.secret_key_path.write_bytes(key)
    issued: list[str] = []
    client_id = ""
    for _ in range(2):
        rt = Runtime.open(settings)
        try:
            if not rt.catalog.projects():
                _, creds = rt.catalog.create_project("p")
                client_id = creds.client_id
                issued.append(creds.client_secret)
            found = rt.catalog.client_secret(client_id)
            assert found is not None
            issued.append(found[1])
        finally:
            rt.stop()
    assert len(set(issued)) == 1  # what was shown once still works after a restart
    assert settings.secret_key_path.read_bytes() == key


def test_a_new_deployment_gets_a_random_key_and_a_damaged_key_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", job_workers=0)
    rt = Runtime.open(settings)
    rt.stop()
    key = settings.secret_key_path.read_bytes()
    assert len(key) == datadir.KEY_BYTES
    assert settings.secret_key_path.stat().st_mode & 0o777 == 0o600
    settings.secret_key_path.write_bytes(key[:-1])
    with pytest.raises(datadir.DataDirError, match="31 bytes"):
        Runtime.open(settings)


def test_a_store_of_another_deployment_is_refused(tmp_path: Path) -> None:
    one = Settings(data_dir=tmp_path / "one", job_workers=0)
    two = Settings(data_dir=tmp_path / "two", job_workers=0)
    for s in (one, two):
        rt = Runtime.open(s)
        rt.start(announce=False)
        rt.stop()
    (one.data_dir / "store.duckdb").write_bytes((two.data_dir / "store.duckdb").read_bytes())
    with pytest.raises(datadir.DataDirError, match="not one deployment"):
        Runtime.open(one)


# ---- the store on a full disk -----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _events(store: DuckDBStore, start: int, n: int) -> None:
    ids = [f"e{i}" for i in range(start, start + n)]
    names = [os.urandom(200).hex() for _ in range(n)]  # (what a checkpoint cannot compress)
    with store.writer() as w:
        w.ensure_project(1)
        w.upsert_events(1, EventRows(ids, names, [0] * n, [0] * n, [1] * n, [{}] * n), [])


def test_a_store_invalidated_by_a_checkpoint_on_a_full_disk_recovers(small_disk: Path) -> None:
    """DuckDB invalidates a database whose checkpoint fails (here: the disk is full when the
    write-ahead log passes its threshold at a commit). The commit reports a passing fault,
    the store reopens itself on its next use (replaying its log), and loses nothing."""
    store = DuckDBStore(str(small_disk / "store.duckdb"))
    try:
        written = 0
        while (small_disk / "store.duckdb.wal").exists() is False or (
            small_disk / "store.duckdb.wal"
        ).stat().st_size < 15 << 20:
            _events(store, written, 2000)
            written += 2000
        filler = small_disk / "filler"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        with filler.open("wb") as f:  # room for the log's next entry, not for a checkpoint
            f.write(b"\0" * max(0, free - (3 << 20)))
        failures: list[BaseException] = []
        for _ in range(20):
            try:
                _events(store, written, 2000)
                written += 2000
            except Exception as exc:
                failures.append(exc)
                break
        assert failures, "the disk never filled up"
        assert is_transient(failures[0], store)
        assert "FATAL" in str(failures[0]) or "checkpoint" in str(failures[0]), failures[0]
        filler.unlink()
        _events(store, written, 10)  # the next use opens the database again
        assert store.counts(1)["events"] == written + 10
    finally:
        store.close()


# ---- the flusher ------------------------------------------------------------------------------
def test_the_flusher_survives_its_own_failure_and_applies_everything(tmp_path: Path) -> None:
    rt = Runtime.open(Settings(data_dir=tmp_path / "data", job_workers=0))
    rt.start(announce=False)
    try:
        pid = rt.catalog.create_project("sup")[0].id
        calls = {"n": 0}

        def failing_once(stats: object, seconds: float) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("a bug in a metrics callback")

        rt.ingest.flusher.on_batch = failing_once
        for i in range(5):
            props = {"mobile": "1", "event_id": f"s{i}", "create_time": "2024-01-01 00:00:00"}
            doc = {"type": "event", "event": "e", "properties": props}
            rt.ingest.submit_wait(build_record(
                doc, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits,
                time.time_ns() // 1000,
                lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
            ))  # fmt: skip
            assert rt.ingest.barrier(timeout=60)
        assert rt.ingest.flusher.alive
        assert rt.store.counts(pid)["events"] == 5
        assert calls["n"] >= 2
        assert "store" not in rt.health.problems()  # cleared by the batches that went through
    finally:
        rt.stop()


# ---- jobs -------------------------------------------------------------------------------------
def test_a_job_stopped_by_a_full_disk_is_retried_not_failed(tmp_path: Path) -> None:
    engine: sa.Engine = connect(f"sqlite:///{tmp_path / 'meta.db'}")
    Catalog(engine, b"k" * 32).create_project("a")
    jobs = Jobs(engine, JobLimits(workers=1))
    attempts: list[int] = []
    done = threading.Event()

    def handler(job: Job, progress: Progress) -> Outcome:
        attempts.append(job.id)
        if len(attempts) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        done.set()
        return Outcome(True, "done")

    jobs.register("t", handler)
    job = jobs.submit(1, "t", "test", {})
    jobs.start()
    try:
        assert done.wait(60)
        deadline = time.monotonic() + 300
        while not jobs.get(1, job.id).done and time.monotonic() < deadline:
            time.sleep(0.02)
        final = jobs.get(1, job.id)
        assert final.state == "complete" and final.attempts == 2
        assert attempts == [job.id, job.id]
    finally:
        jobs.stop()


def test_a_passing_fault_is_told_apart_from_a_fault_of_the_data() -> None:
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(sa.exc.OperationalError("INSERT", {}, Exception("database is locked")))
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(pa.ArrowInvalid("not a number"))
    wrapped = RuntimeError("while flushing")
    wrapped.__cause__ = OSError(errno.EIO, "Input/output error")
    assert is_transient(wrapped)
