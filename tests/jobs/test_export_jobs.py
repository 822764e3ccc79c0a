"""Exports asked for on demand (the admin API, backfill) go through the export jobs, and the
exports' claims and retry times live in the metadata DB: on a real runtime whose workers stay
off (the tests claim and run the jobs), with other "processes" as Exports and Jobs over
connections of their own on the same metadata DB, and time moved by the injectable clocks."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdp.blobs import open_blobs
from opencdp.catalog.model import Project
from opencdp.config import Settings
from opencdp.exports.columns import LAYOUT
from opencdp.exports.content import Export, ExportState, ExportStatus
from opencdp.exports.periods import Period
from opencdp.exports.service import JOB_KIND, Exports, job_key
from opencdp.ingest.records import build_record
from opencdp.jobs.service import EXPORT, JobLimits, Jobs
from opencdp.meta import tables as t
from opencdp.meta.db import connect
from opencdp.meta.migrations import LATEST, current_version, upgrade
from opencdp.runtime import Runtime


class Clock:
    """Naive UTC time that moves only when told to."""

    def __init__(self) -> None:
        self.now = t.utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path / "data", job_workers=0, export_concurrency=0, scheduler_interval=1e6
    )
    runtime = Runtime.open(settings)
    runtime.start(announce=False)
    yield runtime
    runtime.stop()


def received(rt: Runtime, pid: int, count: int, at: datetime | None = None) -> None:
    """``count`` events received now (or at ``at``)."""
    project = rt.catalog.project(pid)
    when = int((at or datetime.now(UTC)).timestamp() * 1_000_000)
    for i in range(count):
        doc = {"type": "event", "event": "buy", "properties": {
            "event_id": f"x{when}{i}", "mobile": f"1{i % 7:010d}", "n": i,
            "create_time": "2024-05-06 07:08:09"}}  # fmt: skip
        record = build_record(
            doc, project, rt.catalog.schema(pid), rt.settings.limits, when + i,
            lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
        )  # fmt: skip
        rt.ingest.submit_wait(record)
    assert rt.ingest.barrier()  # (in the store: exports written directly count them)


def elsewhere(
    rt: Runtime, barrier: Callable[[], bool] | None = None, clock: Clock | None = None
) -> tuple[Exports, Jobs]:
    """Exports and a job queue over connections of their own on the same metadata DB: as
    another process (``barrier``: its ingest barrier; default the runtime's)."""
    engine = connect(rt.settings.meta_url_resolved)
    jobs = Jobs(engine, JobLimits(workers=0, export_workers=0))
    exports = Exports(
        engine,
        rt.catalog,
        rt.store,
        barrier or rt.ingest.barrier,
        open_blobs(rt.settings, "exports"),
        LAYOUT,
        part_bytes=2_000,
        clock=rt.exports.clock,
        jobs=jobs,
        lease_clock=clock or t.utcnow,
    )
    jobs.register(JOB_KIND, exports.run_job, lane=EXPORT)
    return exports, jobs


def run_queued(jobs: Jobs, owner: str) -> list[int]:
    """Claim and run every queued export job, as one worker of ``jobs``' process; their ids."""
    ran = []
    while (job := jobs.claim(EXPORT, owner)) is not None:
        jobs.run(job, owner)
        ran.append(job.id)
    return ran


def closed_hour(rt: Runtime, project: Project) -> tuple[Period, datetime]:
    """The project's current hour, closed by moving the exports' clock two hours on."""
    now = datetime.now(UTC)
    later = now + timedelta(hours=2)
    rt.exports.clock = lambda: later
    return rt.exports.period(
        project, "hour", now.astimezone(project.tz).strftime("%Y%m%d%H")
    ), later


def export_rows(engine: sa.Engine, pid: int) -> list[Export]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.exports).where(t.exports.c.project_id == pid))
        return [Export.from_row(r) for r in rows]


# ---- on demand: the period's job ----------------------------------------------------------
def test_a_run_queues_the_period_s_job_and_answers_the_exports_as_stored(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"r{time.monotonic_ns()}")
    received(rt, project.id, 5)
    hour, _ = closed_hour(rt, project)
    exports = rt.exports
    # Not waited for (the workers are off): queued as the period's job, answered as stored.
    asked, job = exports.request(project.id, hour, ["custom_event", "visit"], timedelta(0))
    assert job is not None and job.state == "queued" and job.lane == EXPORT
    assert (job.kind, job.surface, job.dedupe_key) == (JOB_KIND, "admin", job_key(project.id, hour))
    assert job.params["data_types"] == ["visit", "custom_event"]  # the layout's order
    assert [(e.data_type, e.state, e.attempts) for e in asked] == [
        ("custom_event", ExportState.RUNNING, 0),
        ("visit", ExportState.RUNNING, 0),
    ]
    assert exports.status(project, hour, "visit")[0] is ExportStatus.PENDING
    # Asked again, here or in another process, while the job is queued: the same job.
    again, same = exports.request(project.id, hour, ["custom_event"], timedelta(0))
    assert same is not None and same.id == job.id and again[0].id == asked[0].id
    other, _ = elsewhere(rt)
    assert other.request(project.id, hour, ["visit"], timedelta(0))[1] == same
    assert [j.id for j in rt.jobs.list(project.id, kind=JOB_KIND)] == [job.id]
    # A worker (of any process) writes them; asked then, they are published, with no job.
    assert run_queued(rt.jobs, "w") == [job.id]
    assert rt.jobs.get(project.id, job.id).state == "complete"
    done, none = exports.request(project.id, hour, ["custom_event", "visit"], timedelta(0))
    assert none is None
    assert [(e.state, e.attempts) for e in done] == [(ExportState.FINISHED, 1)] * 2
    assert done[0].rows == 5 and done[1].rows == 0
    # A run names one export: the same, through the period's job.
    assert exports.run(project.id, hour, "custom_event", timedelta(0)) == done[0]


def test_a_run_waits_for_the_period_s_job_and_queues_again_what_it_left_failed(
    rt: Runtime,
) -> None:
    project, _ = rt.catalog.create_project(f"w{time.monotonic_ns()}")
    received(rt, project.id, 3)
    hour, _ = closed_hour(rt, project)
    key = job_key(project.id, hour)
    # The period's job, queued by the scheduler of a process whose ingest barrier fails.
    _, failing_jobs = elsewhere(rt, barrier=lambda: False)
    params = {"export_type": "hour", "label": hour.label, "data_types": ["custom_event"]}
    first = failing_jobs.submit(project.id, JOB_KIND, "scheduler", params, dedupe=key)
    # An admin run meanwhile waits for that job rather than queueing a second one.
    answers: list[Export] = []
    runner = threading.Thread(
        target=lambda: answers.append(
            rt.exports.run(project.id, hour, "custom_event", timedelta(minutes=10))
        )
    )
    runner.start()
    assert rt.exports.request(project.id, hour, ["custom_event"], timedelta(0))[1] == first
    # The other process runs its job: the export fails (nothing could be flushed).
    taken = failing_jobs.claim(EXPORT, "failing")
    assert taken is not None and taken.id == first.id
    failing_jobs.run(taken, "failing")
    failed = rt.exports.find(project.id, hour, "custom_event")
    assert failed is not None and failed.state == ExportState.ERROR
    assert "could not be flushed" in failed.error
    # The run queues the period's job again, and answers once it has written the export.
    guard = time.monotonic() + 600  # a hang guard, not a time limit
    while (second := rt.jobs.holder(key)) is None or second.id == first.id:
        assert time.monotonic() < guard and runner.is_alive(), "no job was queued again"
        time.sleep(0.02)
    assert second.surface == "admin"
    assert run_queued(rt.jobs, "w") == [second.id]
    runner.join()
    (export,) = answers
    assert export.state == ExportState.FINISHED and export.rows == 3 and export.attempts == 2


def test_backfill_queues_a_job_per_period_and_counts_those_queued_already(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"b{time.monotonic_ns()}")
    received(rt, project.id, 4)
    now = datetime.now(UTC)
    later = now + timedelta(hours=3)
    rt.exports.clock = lambda: later
    start, end = _naive(now - timedelta(hours=1)), _naive(later)
    due = rt.exports.due(project, later)
    hours = {p.start for p, _ in due if p.export_type == "hour"}
    assert hours
    # One period's job is queued already (by the scheduler): it is counted, not queued twice.
    busy = next(p for p, _ in due if p.export_type == "hour")
    params = {"export_type": "hour", "label": busy.label, "data_types": list(LAYOUT.names)}
    rt.jobs.submit(project.id, JOB_KIND, "scheduler", params, dedupe=job_key(project.id, busy))
    queued = rt.exports.backfill(project, start, end, "hour")
    assert queued == len(hours) * len(LAYOUT.names)
    jobs = rt.jobs.list(project.id, kind=JOB_KIND)
    assert len(jobs) == len(hours) and len({j.dedupe_key for j in jobs}) == len(hours)
    assert Counter(j.surface for j in jobs) == {"admin": len(hours) - 1, "scheduler": 1}
    assert rt.exports.backfill(project, start, end, "hour") == queued  # all queued already
    assert len(rt.jobs.list(project.id, kind=JOB_KIND)) == len(hours)
    run_queued(rt.jobs, "w")
    assert rt.exports.backfill(project, start, end, "hour") == 0
    rows = [e for e in export_rows(rt.exports._engine, project.id) if e.export_type == "hour"]
    assert len(rows) == len(hours) * len(LAYOUT.names)
    assert all(e.state == ExportState.FINISHED and e.attempts == 1 for e in rows)
    assert sum(e.rows for e in rows if e.data_type == "custom_event") == 4


# ---- the claim of an export, across processes -----------------------------------------------
def test_an_export_held_by_a_writer_is_not_taken_by_another_process(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"c{time.monotonic_ns()}")
    received(rt, project.id, 6)
    hour, _ = closed_hour(rt, project)
    clock = Clock()
    rt.exports.lease_clock = clock
    other, _ = elsewhere(rt, clock=clock)
    # A writer of this process holds the export (and an empty one) in the middle of them.
    held = rt.exports._claim(project.id, hour, "custom_event", "writer-a")
    empty = rt.exports._claim(project.id, hour, "page", "writer-a")
    assert held is not None and empty is not None
    # The other process takes neither, by any path, and changes nothing.
    assert other._claim(project.id, hour, "custom_event") is None
    assert other._write_one(project.id, hour, "custom_event", None) is False
    assert other._export_period(project, hour, ["custom_event", "page"], True, None) == 0
    assert rt.exports.find(project.id, hour, "custom_event") == held
    assert rt.exports.find(project.id, hour, "page") == empty
    # The writer renews its claim as it writes; once it stops renewing, the claim expires
    # and the other process takes the export over and publishes it.
    clock.advance(rt.exports.lease / 2)
    assert rt.exports._renew(held.id, "writer-a")
    clock.advance(rt.exports.lease * 3 / 4)  # past the empty one's claim, not the other's
    assert other._export_period(project, hour, ["custom_event", "page"], True, None) == 1
    page = rt.exports.find(project.id, hour, "page")
    assert page is not None and (page.state, page.attempts) == (ExportState.FINISHED, 2)
    assert rt.exports.find(project.id, hour, "custom_event") == held
    clock.advance(rt.exports.lease)
    assert other._export_period(project, hour, ["custom_event", "page"], True, None) == 1
    export = rt.exports.find(project.id, hour, "custom_event")
    assert export is not None and export.state == ExportState.FINISHED
    assert (export.rows, export.attempts) == (6, 2)
    # The first writer, back, can no longer renew, publish or fail the export.
    assert not rt.exports._renew(held.id, "writer-a")
    assert not rt.exports._update(held.id, "writer-a", state=ExportState.ERROR)
    rt.exports._fail(held, "late", "writer-a")
    assert rt.exports.find(project.id, hour, "custom_event") == export


def test_two_processes_writing_the_same_periods_write_each_export_once(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"t{time.monotonic_ns()}")
    start = datetime.now(UTC)
    for h in range(4):
        received(rt, project.id, 25, at=start + timedelta(hours=h))
    later = start + timedelta(hours=6)
    rt.exports.clock = lambda: later
    due = rt.exports.due(project, later)
    periods: dict[Period, list[str]] = {}
    for period, dt in due:
        periods.setdefault(period, []).append(dt)
    other, _ = elsewhere(rt)

    def write(exports: Exports) -> None:
        for period, dts in periods.items():
            exports._export_period(project, period, dts, True, None)

    writers = [threading.Thread(target=write, args=(e,)) for e in (rt.exports, other)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    rows = export_rows(rt.exports._engine, project.id)
    keys = Counter((e.export_type, e.data_type, e.period_start) for e in rows)
    assert set(keys) == {(p.export_type, dt, p.start) for p, dt in due}
    assert set(keys.values()) == {1}
    assert all(e.state == ExportState.FINISHED and e.attempts == 1 for e in rows)
    hourly = [e for e in rows if e.export_type == "hour" and e.data_type == "custom_event"]
    assert sum(e.rows for e in hourly) == 100


# ---- failed exports wait in the metadata DB ------------------------------------------------
def test_a_failed_export_waits_its_retry_delay_in_every_process(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"f{time.monotonic_ns()}")
    received(rt, project.id, 2)
    _, later = closed_hour(rt, project)
    clock = Clock()
    rt.exports.lease_clock = clock
    failing, failing_jobs = elsewhere(rt, barrier=lambda: False, clock=clock)
    failing.retry_delay = rt.exports.retry_delay = timedelta(minutes=5)
    # One process's scheduler queues the due exports; its worker fails them all.
    assert failing.submit_due(failing_jobs, later) > 0
    assert run_queued(failing_jobs, "failing")
    rows = export_rows(rt.exports._engine, project.id)
    assert rows and all(e.state == ExportState.ERROR for e in rows)
    # Another process's scheduler (here, or started since) leaves them until their time.
    # (every due export of every project failed there, the runtime's own project's too)
    fresh, fresh_jobs = elsewhere(rt, clock=clock)
    for exports, jobs in ((rt.exports, rt.jobs), (fresh, fresh_jobs)):
        assert exports.submit_due(jobs, later) == 0
    assert rt.jobs.active_keys(JOB_KIND) == set()
    assert rt.exports.due(project, later)  # (still due: only waiting)
    clock.advance(timedelta(minutes=5, seconds=1))
    assert rt.exports.submit_due(rt.jobs, later) > 0
    assert {j.project_id for j in rt.jobs.list(project.id, kind=JOB_KIND) if not j.done} == {
        project.id
    }
    run_queued(rt.jobs, "w")
    with rt.exports._engine.connect() as conn:
        rows = conn.execute(sa.select(t.exports).where(t.exports.c.project_id == project.id))
        assert all(r.state == ExportState.FINISHED and r.retry_after is None for r in rows)


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


# ---- the schema -------------------------------------------------------------------------------
def test_migration_12_adds_the_claim_and_the_retry_time_to_stored_exports(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        with engine.begin() as conn:  # the exports table as migration 11 left it
            conn.execute(sa.text("DROP INDEX ix_exports_retry_after"))
            for column in ("owner", "lease_until", "retry_after"):
                conn.execute(sa.text(f"ALTER TABLE exports DROP COLUMN {column}"))
            conn.execute(sa.delete(t.schema_version))
            conn.execute(sa.insert(t.schema_version).values(version=11))
            conn.execute(
                sa.text(
                    "INSERT INTO projects (id, key, name, timezone, strict_schema, export_format, "
                    "created_at) VALUES (1, 'k', 'p', 'UTC', 0, 'csv', '2024-01-01 00:00:00')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO exports (id, project_id, export_type, data_type, period_start, "
                    "period_end, state, error, attempts, rows, format, created_at) VALUES (1, 1, "
                    "'hour', 'visit', '2024-01-01 00:00:00', '2024-01-01 01:00:00', 'running', "
                    "'', 1, 0, 'csv', '2024-01-01 00:00:00')"
                )
            )
        assert upgrade(engine) == LATEST
        with engine.connect() as conn:
            assert current_version(conn) == LATEST
            row = conn.execute(sa.select(t.exports)).one()
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("exports")}
        assert (row.state, row.owner, row.lease_until, row.retry_after) == (
            "running",
            None,
            None,
            None,
        )  # an export left running by an earlier version: no writer holds it
        assert "ix_exports_retry_after" in indexes
    finally:
        engine.dispose()
