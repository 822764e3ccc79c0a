"""The job queue's contract, on every implementation (``conftest.BACKENDS``): atomic claims
across processes, leases kept by renewal and taken over once expired, fenced writes, the limit
on lost leases, fairness across projects, the export lane, de-duplicated submissions.

Time is the queue's injected clock, moved by the tests; nothing waits for a lease to expire."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdp.errors import CdpError, Code
from opencdp.jobs.service import (
    EXPORT,
    MAIN,
    Job,
    JobLimits,
    Jobs,
    LeaseLost,
    Outcome,
    Progress,
)
from opencdp.meta import tables as t
from opencdp.meta.migrations import LATEST, current_version, upgrade
from tests.jobs import processes
from tests.jobs.conftest import Queue, job_rows

LEASE = 30.0


def limits(**overrides: int) -> JobLimits:
    base = {"concurrent_per_project": 10, "queued_per_project": 1000}
    base |= {"workers": 0, "export_workers": 0}  # the tests claim, unless they start workers
    return JobLimits(lease_seconds=LEASE, **{**base, **overrides})


def wait_for(check: object, what: str) -> None:
    deadline = time.monotonic() + 300  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


# ---- claiming -----------------------------------------------------------------------------------
def test_a_claim_is_atomic_across_processes(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    ids = {jobs.submit(queue.projects[i % 3], "work", "test", {}).id for i in range(200)}
    claimed = run_processes(processes.claim_all, queue.url, queue.backend.returning)
    every = [i for one in claimed for i in one]  # type: ignore[attr-defined]
    assert len(every) == len(set(every)) == 200  # no job claimed twice
    assert set(every) == ids  # and every job claimed
    rows = job_rows(queue.engine)
    assert {(r.state, r.attempts, r.lost_leases) for r in rows} == {("complete", 1, 0)}


def run_processes(target: object, *args: object) -> list[object]:
    """Run ``target(*args, start, out)`` in two processes started together; what each put."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, start, out)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [out.get(timeout=300) for _ in workers]  # (a hang guard)
    for w in workers:
        w.join()
        assert w.exitcode == 0
    return results


def test_the_running_limit_holds_across_processes(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    for _ in range(150):
        jobs.submit(queue.projects[0], "work", "test", {})
    # Each process claims, counts the project's running jobs, finishes, claims again: with a
    # limit of one, no count may ever see two, however the claims interleave.
    most = run_processes(processes.claim_and_count, queue.url, queue.backend.returning, 1)
    assert max(most) == 1  # type: ignore[type-var]
    assert {r.state for r in job_rows(queue.engine)} == {"complete"}


def test_the_queue_limit_holds_across_processes(queue: Queue) -> None:
    taken = run_processes(processes.submit_many, queue.url, queue.projects[2], 40, 25)
    assert sum(taken) == 25  # type: ignore[arg-type]
    rows = job_rows(queue.engine)
    assert len([r for r in rows if r.project_id == queue.projects[2]]) == 25


def test_a_claim_takes_queued_jobs_oldest_first_and_marks_them_owned(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    first = jobs.submit(queue.projects[0], "work", "test", {"n": 1})
    jobs.submit(queue.projects[0], "work", "test", {"n": 2})
    job = jobs.claim(MAIN, "w1")
    assert job is not None and job.id == first.id and job.params == {"n": 1}
    assert (job.state, job.owner, job.attempts) == ("running", "w1", 1)
    assert job.lease_until == queue.clock() + jobs_lease(jobs)
    assert jobs.claim(EXPORT, "w2") is None  # another lane's worker takes nothing here


def jobs_lease(jobs: Jobs) -> object:
    from datetime import timedelta

    return timedelta(seconds=jobs.limits.lease_seconds)


# ---- leases -------------------------------------------------------------------------------------
def test_a_renewed_lease_keeps_the_job(queue: Queue) -> None:
    jobs, other = queue.jobs(limits()), queue.jobs(limits(), separate=True)
    job = jobs.submit(queue.projects[0], "work", "test", {})
    assert jobs.claim(MAIN, "alive") is not None
    for _ in range(5):  # five leases' worth of time, renewed every 0.6 lease
        queue.clock.advance(LEASE * 0.6)
        assert jobs.renew(job.id, "alive")
        assert other.claim(MAIN, "other") is None
    assert jobs.write(job.id, "alive", rows_read=7)
    assert jobs.finish(job.id, "alive", Outcome(True, "done", rows_read=7))
    done = jobs.get(queue.projects[0], job.id)
    assert (done.state, done.rows_read, done.attempts, done.lost_leases) == ("complete", 7, 1, 0)


def test_the_heartbeat_renews_the_leases_of_running_jobs(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    job = jobs.submit(queue.projects[0], "work", "test", {})
    claimed = jobs.claim(MAIN, "alive")
    assert claimed is not None
    progress = Progress(jobs, job.id, "alive")
    jobs._running[job.id] = progress  # (as ``run`` registers it)
    queue.clock.advance(LEASE * 0.9)
    jobs.beat()
    queue.clock.advance(LEASE * 0.9)  # past the first lease, within the renewed one
    assert queue.jobs(limits(), separate=True).claim(MAIN, "other") is None
    progress.report(1, 1, 0, 0)
    assert not progress.cancelled.is_set()


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(queue: Queue) -> None:
    jobs, other = queue.jobs(limits()), queue.jobs(limits(), separate=True)
    job = jobs.submit(queue.projects[0], "work", "test", {})
    assert jobs.claim(MAIN, "hung") is not None
    assert jobs.write(job.id, "hung", rows_read=10)
    queue.clock.advance(LEASE + 1)
    taken = other.claim(MAIN, "new")
    assert taken is not None and taken.id == job.id
    assert (taken.owner, taken.attempts, taken.lost_leases) == ("new", 2, 1)
    # The old owner wakes up: none of its writes land.
    assert not jobs.renew(job.id, "hung")
    assert not jobs.write(job.id, "hung", rows_read=99)
    assert not jobs.finish(job.id, "hung", Outcome(False, "stale"))
    assert not jobs.release(job.id, "hung")
    assert other.write(job.id, "new", rows_read=20)
    assert other.finish(job.id, "new", Outcome(True, "done", rows_read=20))
    done = other.get(queue.projects[0], job.id)
    assert (done.state, done.message, done.rows_read, done.owner) == ("complete", "done", 20, "new")


def test_a_lease_that_expired_is_not_renewed_even_before_a_takeover(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    job = jobs.submit(queue.projects[0], "work", "test", {})
    assert jobs.claim(MAIN, "late") is not None
    queue.clock.advance(LEASE)
    assert not jobs.renew(job.id, "late")
    assert not jobs.write(job.id, "late", rows_read=1)


def test_a_runner_that_lost_its_lease_stops_and_its_outcome_is_dropped(queue: Queue) -> None:
    jobs, other = queue.jobs(limits()), queue.jobs(limits(), separate=True)
    job = jobs.submit(queue.projects[0], "work", "test", {})
    seen: dict[str, object] = {}

    def handler(j: Job, progress: Progress) -> Outcome:
        progress.report(1, 1, 0, 0)  # still ours
        queue.clock.advance(LEASE + 1)  # ... then the worker hangs past its lease
        taken = other.claim(MAIN, "new")
        seen["taken"] = taken is not None and taken.id == j.id
        try:
            progress.report(2, 2, 0, 0)
        except LeaseLost:
            seen["lost"] = progress.lost and progress.cancelled.is_set()
            seen["cancelled"] = jobs.cancelled()  # what the import's stop check reads
            raise
        return Outcome(True, "stale")

    jobs.register("work", handler)
    claimed = jobs.claim(MAIN, "old")
    assert claimed is not None
    jobs.run(claimed, "old")
    assert seen == {"taken": True, "lost": True, "cancelled": True}
    after = jobs.get(queue.projects[0], job.id)
    assert (after.state, after.owner, after.rows_read) == ("running", "new", 1)


def test_a_check_before_a_step_refuses_a_lost_job(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    job = jobs.submit(queue.projects[0], "work", "test", {})
    assert jobs.claim(MAIN, "w") is not None
    progress = Progress(jobs, job.id, "w")
    progress.check()  # held: renewed
    queue.clock.advance(LEASE * 0.9)
    progress.check()  # the check renewed it: still held
    queue.clock.advance(LEASE + 1)
    with pytest.raises(LeaseLost):
        progress.check()


def test_a_job_that_keeps_losing_its_worker_fails_for_good(queue: Queue) -> None:
    jobs = queue.jobs(limits(max_lost=2))
    job = jobs.submit(queue.projects[0], "work", "test", {})
    ran: list[int] = []
    jobs.register("work", lambda j, p: ran.append(j.id) or Outcome(True, "done"))
    for n in range(2):  # two workers die holding it
        assert jobs.claim(MAIN, f"dies-{n}") is not None
        queue.clock.advance(LEASE + 1)
    last = jobs.claim(MAIN, "third")
    assert last is not None and last.lost_leases == 2
    jobs.run(last, "third")
    assert ran == []  # not run again
    done = jobs.get(queue.projects[0], job.id)
    assert done.state == "failed" and "stopped 2 times" in done.message
    assert done.lease_until is None and jobs.claim(MAIN, "fourth") is None


def test_a_job_stopped_by_a_passing_fault_waits_for_its_retry_time(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    jobs._transient = lambda exc: isinstance(exc, OSError)
    job = jobs.submit(queue.projects[0], "work", "test", {})
    calls: list[int] = []

    def handler(j: Job, progress: Progress) -> Outcome:
        calls.append(j.id)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return Outcome(True, "done")

    jobs.register("work", handler)
    first = jobs.claim(MAIN, "w")
    assert first is not None
    jobs.run(first, "w")
    waiting = jobs.get(queue.projects[0], job.id)
    assert waiting.state == "queued" and "waiting to resume" in waiting.message
    assert jobs.claim(MAIN, "w") is None  # not before its retry time
    queue.clock.advance(1.0)
    again = jobs.claim(MAIN, "w")
    assert again is not None and again.lost_leases == 0  # a retry, not a lost lease
    jobs.run(again, "w")
    assert jobs.get(queue.projects[0], job.id).state == "complete"


def test_a_stopping_worker_gives_its_job_back(queue: Queue) -> None:
    from opencdp.jobs.service import Interrupted

    jobs = queue.jobs(limits())
    job = jobs.submit(queue.projects[0], "work", "test", {})

    def handler(j: Job, progress: Progress) -> Outcome:
        raise Interrupted

    jobs.register("work", handler)
    claimed = jobs.claim(MAIN, "w")
    assert claimed is not None
    jobs.run(claimed, "w")
    back = jobs.get(queue.projects[0], job.id)
    assert (back.state, back.owner, back.lease_until) == ("queued", None, None)
    again = queue.jobs(limits(), separate=True).claim(MAIN, "next")
    assert again is not None and again.lost_leases == 0  # at once, and not counted as lost


# ---- fairness and lanes -------------------------------------------------------------------------
def test_claims_go_to_the_project_with_the_fewest_running_jobs_first(queue: Queue) -> None:
    jobs = queue.jobs(limits(concurrent_per_project=3))
    a, b, c = queue.projects
    for project, count in ((a, 5), (b, 2), (c, 1)):  # a's backlog was queued first
        for _ in range(count):
            jobs.submit(project, "work", "test", {})
    order = []
    while (job := jobs.claim(MAIN, "w")) is not None:
        order.append(job.project_id)
    # One each first (oldest first among equals), then again; a stops at its limit of 3.
    assert order == [a, b, c, a, b, a]


def test_exports_are_not_starved_by_the_import_limits(queue: Queue) -> None:
    jobs = queue.jobs(
        limits(concurrent_per_project=1, queued_per_project=2, workers=1, export_workers=1)
    )
    release = threading.Event()

    def hold(job: Job, progress: Progress) -> Outcome:
        release.wait(60)
        return Outcome(True, "import done")

    jobs.register("import", hold)
    jobs.register("export", lambda job, progress: Outcome(True, "exported"), lane=EXPORT)
    project = queue.projects[0]
    imports = [jobs.submit(project, "import", "test", {}).id for _ in range(2)]
    with pytest.raises(CdpError) as full:
        jobs.submit(project, "import", "test", {})
    assert full.value.code is Code.BUSY  # the import queue is full ...
    exports = [jobs.submit(project, "export", "scheduler", {}).id for _ in range(5)]  # ... not this
    jobs.start()
    try:
        wait_for(lambda: jobs.get(project, imports[0]).state == "running", "the import runs")
        wait_for(
            lambda: all(jobs.get(project, i).state == "complete" for i in exports),
            "the exports complete while an import holds the project's only slot",
        )
        states = [jobs.get(project, i).state for i in imports]
        assert states == ["running", "queued"]  # the import still holds the slot
    finally:
        release.set()
        jobs.stop()


# ---- de-duplication -----------------------------------------------------------------------------
def test_work_with_a_key_is_not_queued_twice_until_done(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    project = queue.projects[0]
    first = jobs.submit(project, "scheduled", "test", {}, dedupe="period:1")
    with pytest.raises(CdpError) as again:
        jobs.submit(project, "scheduled", "test", {}, dedupe="period:1")
    assert again.value.code is Code.BUSY
    jobs.submit(project, "scheduled", "test", {}, dedupe="period:2")  # another key: queued
    assert jobs.active_keys("scheduled") == {"period:1", "period:2"}
    claimed = jobs.claim(MAIN, "w")
    assert claimed is not None and claimed.id == first.id
    with pytest.raises(CdpError):  # running: still not queued again
        jobs.submit(project, "scheduled", "test", {}, dedupe="period:1")
    assert jobs.finish(first.id, "w", Outcome(True, "done"))
    assert jobs.active_keys("scheduled") == {"period:2"}
    jobs.submit(project, "scheduled", "test", {}, dedupe="period:1")  # done: queued again


def test_work_with_a_key_is_queued_once_across_processes(queue: Queue) -> None:
    keys = [f"period:{i}" for i in range(60)]
    queued = run_processes(processes.submit_keys, queue.url, queue.projects[1], keys)
    assert sum(map(len, queued)) == len(keys)  # type: ignore[arg-type]
    rows = job_rows(queue.engine)
    assert sorted(r.dedupe_key for r in rows) == sorted(keys)


def test_finished_jobs_of_a_kind_are_purged_and_active_ones_kept(queue: Queue) -> None:
    jobs = queue.jobs(limits())
    project = queue.projects[0]
    old = jobs.submit(project, "scheduled", "test", {}, dedupe="a")
    other = jobs.submit(project, "work", "test", {})
    kept = jobs.submit(project, "scheduled", "test", {}, dedupe="b")
    for job in (old, other):
        claimed = jobs.claim(MAIN, "w")
        assert claimed is not None and claimed.id == job.id
        assert jobs.finish(job.id, "w", Outcome(True, "done"))
    queue.clock.advance(3600)
    assert jobs.purge("scheduled", queue.clock()) == 1
    assert [r.id for r in job_rows(queue.engine)] == [other.id, kept.id]


# ---- the schema ---------------------------------------------------------------------------------
def test_a_database_of_the_previous_schema_is_migrated_and_its_running_jobs_taken_over(
    tmp_path: Path,
) -> None:
    """A metadata DB written before leases existed: its jobs table gains the new columns, and a
    job left running there (no owner, no lease) is taken over by the first worker."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        with engine.begin() as conn:
            later = ("jobs", "catalog_version", "ingest_progress", "import_batches")
            for table in t.metadata.sorted_tables:
                if table.name not in later:  # (tables of step 9 and after)
                    table.create(conn)
            conn.execute(
                sa.text(
                    "CREATE TABLE jobs (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL "
                    "REFERENCES projects(id), kind VARCHAR(32) NOT NULL, surface VARCHAR(32) "
                    "NOT NULL, state VARCHAR(16) NOT NULL, params JSON NOT NULL, file_id "
                    "INTEGER REFERENCES files(id), rows_read BIGINT NOT NULL, imported BIGINT "
                    "NOT NULL, failed BIGINT NOT NULL, warnings BIGINT NOT NULL, message TEXT "
                    "NOT NULL, attempts INTEGER NOT NULL, created_at DATETIME NOT NULL, "
                    "started_at DATETIME, finished_at DATETIME)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO projects (id, key, name, timezone, strict_schema, export_format, "
                    "created_at) VALUES (1, 'k', 'p', 'UTC', 0, 'csv', '2024-01-01 00:00:00')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO jobs VALUES (1, 1, 'import', 'admin', 'running', '{}', NULL, "
                    "40, 40, 0, 0, '', 1, '2024-01-01 00:00:00', '2024-01-01 00:00:01', NULL)"
                )
            )
            conn.execute(sa.insert(t.schema_version).values(version=8))
        assert upgrade(engine) == LATEST
        with engine.connect() as conn:
            assert current_version(conn) == LATEST
        jobs = Jobs(engine, JobLimits(workers=0))
        job = jobs.claim(MAIN, "w")
        assert job is not None and job.id == 1
        assert (job.lane, job.attempts, job.lost_leases, job.rows_read) == ("main", 2, 1, 40)
        with pytest.raises(CdpError):  # the unique index of keys exists
            jobs.submit(1, "x", "t", {}, dedupe="k")
            jobs.submit(1, "x", "t", {}, dedupe="k")
    finally:
        engine.dispose()
