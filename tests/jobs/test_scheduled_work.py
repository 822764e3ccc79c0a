"""Scheduled work as jobs, on a real runtime whose workers stay off (the tests claim and run
the jobs): exports of closed periods and dynamic segment refreshes are queued once, whichever
queue (process) the scheduler ticks in, and an export job writes its period."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opencdp.config import Settings
from opencdp.exports.columns import LAYOUT
from opencdp.exports.content import ExportState
from opencdp.exports.service import JOB_KIND
from opencdp.ingest.records import build_record
from opencdp.jobs.service import EXPORT, MAIN, JobLimits, Jobs
from opencdp.meta.db import connect
from opencdp.runtime import Runtime
from opencdp.segments.kinds import SegmentKind
from opencdp.segments.service import KIND as REFRESH
from opencdp.segments.service import Spec


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path / "data", job_workers=0, export_concurrency=0, scheduler_interval=1e6
    )
    runtime = Runtime.open(settings)
    runtime.start(announce=False)
    yield runtime
    runtime.stop()


def other_process_jobs(rt: Runtime) -> Jobs:
    """A queue over connections of its own, on the same metadata DB: as another process."""
    jobs = Jobs(connect(rt.settings.meta_url_resolved), JobLimits(workers=0, export_workers=0))
    jobs.register(JOB_KIND, rt.exports.run_job, lane=EXPORT)
    return jobs


def test_due_exports_are_queued_once_and_a_job_writes_its_period(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"e{time.monotonic_ns()}")
    props = {"event_id": "x1", "mobile": "1", "create_time": "2024-05-06 07:08:09"}
    doc = {"type": "event", "event": "buy", "properties": props}
    record = build_record(
        doc, project, rt.catalog.schema(project.id), rt.settings.limits, time.time_ns() // 1000,
        lambda table, wanted: rt.catalog.ensure_properties(project.id, table, wanted),
    )  # fmt: skip
    rt.ingest.submit_wait(record)
    later = datetime.now(UTC) + timedelta(hours=3)
    rt.exports.clock = lambda: later
    due = [(p, dt) for p, dt in rt.exports.due(project, later)]
    periods = {(p.export_type, p.start) for p, _ in due}
    queued = rt.exports.submit_due(rt.jobs, later)
    assert queued >= len(periods) > 0  # (the runtime's own project may have some too)
    assert rt.exports.backlog == 0
    keys = rt.jobs.active_keys(JOB_KIND)
    # Ticking again, here or in another process, queues nothing more.
    assert rt.exports.submit_due(rt.jobs, later) == 0
    other = other_process_jobs(rt)
    assert rt.exports.submit_due(other, later) == 0
    assert rt.jobs.active_keys(JOB_KIND) == keys
    # The export lane's worker (of the other process) writes the periods.
    while (job := other.claim(EXPORT, "exporter")) is not None:
        other.run(job, "exporter")
        done = other.get(job.project_id, job.id)
        assert done.state == "complete", done.message
    assert rt.jobs.active_keys(JOB_KIND) == set()
    assert rt.exports.due(project, later) == []
    for period, dt in due:
        export = rt.exports.find(project.id, period, dt)
        assert export is not None and export.state == ExportState.FINISHED and export.attempts == 1
    assert {dt for _, dt in due} == set(LAYOUT.names)
    hourly = [rt.exports.find(project.id, p, "custom_event") for p, dt in due if dt == "user"]
    assert sum(e.rows for e in hourly if e and e.export_type == "hour") == 1  # the event, once
    assert rt.exports.submit_due(rt.jobs, later) == 0  # nothing due any more


def test_a_tick_queues_at_most_a_round_of_exports(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"r{time.monotonic_ns()}")
    later = datetime.now(UTC) + timedelta(hours=6)
    rt.exports.clock = lambda: later
    rt.exports.round_size = len(LAYOUT.names)  # one period's worth
    due = len(rt.exports.due(project, later))
    assert rt.exports.submit_due(rt.jobs, later) == 1
    assert rt.exports.backlog > 0
    assert rt.exports.submit_due(rt.jobs, later) == 0  # the round is still queued
    while (job := rt.jobs.claim(EXPORT, "exporter")) is not None:
        rt.jobs.run(job, "exporter")
    assert rt.exports.submit_due(rt.jobs, later) == 1  # the next round
    assert due > len(LAYOUT.names)


def test_a_due_segment_refresh_is_queued_once(rt: Runtime) -> None:
    pid = rt.catalog.create_project(f"s{time.monotonic_ns()}")[0].id
    qp = {"filts": [{"columnName": "mobile", "comparator": "notEqual", "ftv": ["0"]}]}
    daily = SegmentKind.CLUSTER_CONDITIONS_DAILY
    spec = Spec(name="daily", display_name="d", kind=daily, definition=qp)
    seg = rt.segments.create(pid, spec, "test")
    first = rt.jobs.claim(MAIN, "w")
    assert first is not None and first.kind == REFRESH
    rt.jobs.run(first, "w")
    assert rt.jobs.get(pid, first.id).state == "complete"
    tomorrow = datetime.now(UTC) + timedelta(days=1, hours=1)
    assert rt.segments.schedule(tomorrow) == [seg.id]
    assert rt.segments.schedule(tomorrow) == []  # queued already
    keys = rt.jobs.active_keys(REFRESH)
    assert len(keys) == 1
    # Another process's scheduler, reading the same segment, queues nothing either.
    other = other_process_jobs(rt)
    from opencdp.segments.service import Segments

    elsewhere = Segments(
        connect(rt.settings.meta_url_resolved), rt.catalog, rt.store, other, rt.ingest.barrier,
        rt.settings.limits,
    )  # fmt: skip
    assert elsewhere.schedule(tomorrow) == []
    assert rt.jobs.active_keys(REFRESH) == keys


def test_the_runtime_s_export_workers_write_what_a_tick_queued(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", job_workers=0, scheduler_interval=1e6)
    rt = Runtime.open(settings)
    rt.start(announce=False)
    try:
        project, _ = rt.catalog.create_project(f"w{time.monotonic_ns()}")
        later = datetime.now(UTC) + timedelta(hours=2)
        rt.exports.clock = lambda: later
        assert rt.exports.submit_due(rt.jobs, later) > 0
        deadline = time.monotonic() + 120  # a hang guard, not a performance limit
        while rt.exports.due(project, later) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rt.exports.due(project, later) == []
        done = rt.jobs.list(project.id, kind=JOB_KIND)
        assert done and all(j.state == "complete" and j.lane == EXPORT for j in done)
    finally:
        rt.stop()
