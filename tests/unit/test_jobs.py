"""Durable jobs over a real SQLite metadata DB: limits, ordering, restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdp.catalog.service import Catalog
from opencdp.errors import CdpError, Code
from opencdp.jobs.service import Job, JobLimits, Jobs, Outcome, Progress
from opencdp.meta import tables as t
from opencdp.meta.db import connect


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    eng = connect(f"sqlite:///{tmp_path / 'meta.db'}")
    catalog = Catalog(eng, b"k" * 32)
    catalog.create_project("a")
    catalog.create_project("b")
    return eng


class Gate:
    """A handler that holds each job until released, recording how many ran at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.order: list[int] = []

    def __call__(self, job: Job, progress: Progress) -> Outcome:
        with self.lock:
            self.order.append(job.id)
            n = self.running.get(job.project_id, 0) + 1
            self.running[job.project_id] = n
            self.peak[job.project_id] = max(self.peak.get(job.project_id, 0), n)
        self.release.wait()
        with self.lock:
            self.running[job.project_id] -= 1
        progress.report(1, 1, 0, 0)
        return Outcome(True, "done", rows_read=1, imported=1)


def wait_done(jobs: Jobs, project_id: int, ids: list[int]) -> list[Job]:
    deadline = time.monotonic() + 300  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        got = [jobs.get(project_id, i) for i in ids]
        if all(j.done for j in got):
            return got
        time.sleep(0.01)
    raise AssertionError("jobs never finished")


def test_concurrency_per_project_and_fifo(engine: sa.Engine) -> None:
    jobs = Jobs(engine, JobLimits(concurrent_per_project=2, queued_per_project=10, workers=4))
    gate = Gate()
    jobs.register("test", gate)
    ids_a = [jobs.submit(1, "test", "t", {}).id for _ in range(4)]
    id_b = jobs.submit(2, "test", "t", {}).id
    jobs.start()
    try:
        deadline = time.monotonic() + 300
        while len(gate.order) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # give a wrongly started extra job the chance to show up
        assert sorted(gate.order) == sorted([*ids_a[:2], id_b])  # two of a, and b alongside
        gate.release.set()
        done = wait_done(jobs, 1, ids_a)
        assert all(j.state == "complete" and j.imported == 1 for j in done)
        assert gate.peak[1] == 2
        assert gate.order.index(ids_a[2]) < gate.order.index(ids_a[3])
    finally:
        gate.release.set()
        jobs.stop()


def test_queue_limit_counts_running_jobs(engine: sa.Engine) -> None:
    jobs = Jobs(engine, JobLimits(concurrent_per_project=1, queued_per_project=2, workers=0))
    jobs.submit(1, "test", "t", {})
    jobs.submit(1, "test", "t", {})
    with pytest.raises(CdpError) as err:
        jobs.submit(1, "test", "t", {})
    assert err.value.code is Code.BUSY
    jobs.submit(2, "test", "t", {})  # another project has its own queue


def test_a_job_of_another_project_is_not_found(engine: sa.Engine) -> None:
    jobs = Jobs(engine)
    job = jobs.submit(1, "test", "t", {})
    with pytest.raises(CdpError) as err:
        jobs.get(2, job.id)
    assert err.value.code is Code.NOT_FOUND


def test_a_running_job_is_taken_over_once_its_lease_expired(engine: sa.Engine) -> None:
    first = Jobs(engine, JobLimits(workers=1))
    gate = Gate()
    first.register("test", gate)
    job = first.submit(1, "test", "t", {})
    first.start()
    deadline = time.monotonic() + 300
    while first.get(1, job.id).state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    # Another process starts: it leaves the job alone while its owner holds the lease.
    second = Jobs(engine, JobLimits(workers=1))
    assert second.claim("main", "second") is None
    # The first process hangs past its lease (moved into the past here): the job is taken over.
    with engine.begin() as conn:
        conn.execute(sa.update(t.jobs).where(t.jobs.c.id == job.id).values(lease_until=t.utcnow()))
    finishing = Gate()
    finishing.release.set()
    second.register("test", finishing)
    second.start()
    try:
        (done,) = wait_done(second, 1, [job.id])
        assert done.state == "complete" and done.attempts == 2 and done.lost_leases == 1
    finally:
        second.stop()
        gate.release.set()
        first.stop()
    # The first worker's late outcome was refused: the job keeps the new owner's.
    assert first.get(1, job.id).owner == done.owner


def test_a_failing_handler_fails_the_job_without_detail(engine: sa.Engine) -> None:
    jobs = Jobs(engine, JobLimits(workers=1))

    def boom(job: Job, progress: Progress) -> Outcome:
        raise RuntimeError("secret internals")

    jobs.register("test", boom)
    job = jobs.submit(1, "test", "t", {})
    jobs.start()
    try:
        (done,) = wait_done(jobs, 1, [job.id])
        assert done.state == "failed" and done.message == "internal error"
    finally:
        jobs.stop()
