"""The segment service in-process, on the real SQLite and DuckDB: refresh jobs, concurrent
refreshes, deletion during a refresh, the daily scheduler, definitions that go stale."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from opencdp.config import Settings
from opencdp.errors import CdpError, Code
from opencdp.ingest.records import build_record
from opencdp.jobs.service import Progress
from opencdp.runtime import Runtime
from opencdp.segments.service import SegmentKind, Segments, Spec

QP = {"filts": [{"columnName": "level", "comparator": "greater", "ftv": ["1"]}]}
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    # No job workers: the tests run the refresh jobs themselves, when they choose.
    runtime = Runtime.open(Settings(data_dir=tmp_path / "data", job_workers=0))
    runtime.start(announce=False)
    yield runtime
    runtime.stop()


def users(rt: Runtime, pid: int, levels: list[int]) -> None:
    project, schema = rt.catalog.project(pid), rt.catalog.schema(pid)
    for i, level in enumerate(levels):
        doc = {"type": "user", "properties": {"mobile": f"138{i:08d}", "level": level}}
        record = build_record(
            doc, project, schema, rt.settings.limits, time.time_ns() // 1000,
            lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
        )  # fmt: skip
        rt.ingest.submit_wait(record)
        schema = rt.catalog.schema(pid)


def run(rt: Runtime, segments: Segments, pid: int, name: str) -> Any:
    seg = segments.get(pid, name)
    assert seg.job_id is not None
    job = rt.jobs.get(pid, seg.job_id)
    return segments.run_refresh(job, Progress(rt.jobs, job.id))


def project(rt: Runtime) -> int:
    p, _ = rt.catalog.create_project(f"p{time.monotonic_ns()}")
    return p.id


def test_a_second_refresh_while_one_is_queued_is_reported(rt: Runtime) -> None:
    pid = project(rt)
    users(rt, pid, [1, 2, 3])
    rt.segments.create(pid, Spec(name="lvl", display_name="lvl", definition=QP), "test")
    with pytest.raises(CdpError) as exc:
        rt.segments.refresh(pid, "lvl", "test")
    assert exc.value.code is Code.BUSY and "already being refreshed" in exc.value.message
    assert run(rt, rt.segments, pid, "lvl").ok
    seg = rt.segments.get(pid, "lvl")
    assert (seg.progress, seg.users_num, seg.version) == (100, 2, 1)
    rt.segments.refresh(pid, "lvl", "test")  # once it is done, refreshing again is fine


def test_deleting_a_queued_or_running_refresh_leaves_nothing(rt: Runtime) -> None:
    pid = project(rt)
    users(rt, pid, [2, 3])
    rt.segments.create(pid, Spec(name="gone", display_name="gone", definition=QP), "test")
    seg = rt.segments.get(pid, "gone")
    job = rt.jobs.get(pid, seg.job_id or 0)
    rt.segments.delete(pid, "gone")
    outcome = rt.segments.run_refresh(job, Progress(rt.jobs, job.id))
    assert not outcome.ok and "deleted" in outcome.message
    assert rt.store.segment_members(pid, seg.id, 1, 10, 0) == []

    # Deleted while it computes: the barrier (the refresh's first step) deletes it here.
    holder: dict[str, Any] = {}

    def barrier() -> bool:
        flushed = rt.ingest.barrier()
        holder["segments"].delete(pid, "gone2")
        return flushed

    segments = Segments(
        rt.catalog._engine, rt.catalog, rt.store, rt.jobs, barrier, rt.settings.limits
    )
    holder["segments"] = segments
    segments.create(pid, Spec(name="gone2", display_name="gone2", definition=QP), "test")
    seg = segments.get(pid, "gone2")
    outcome = run(rt, segments, pid, "gone2")
    assert not outcome.ok and "deleted" in outcome.message
    assert rt.store.segment_members(pid, seg.id, 1, 10, 0) == []


def test_a_definition_whose_property_is_gone_fails_with_the_reason(rt: Runtime) -> None:
    pid = project(rt)
    users(rt, pid, [2])
    qp = {"filts": [{"columnName": "level", "comparator": "equal", "ftv": ["2"]}]}
    rt.segments.create(pid, Spec(name="stale", display_name="s", definition=qp), "test")
    assert run(rt, rt.segments, pid, "stale").ok
    rt.catalog.delete_property(pid, "user", "level")
    rt.segments.refresh(pid, "stale", "test")
    outcome = run(rt, rt.segments, pid, "stale")
    seg = rt.segments.get(pid, "stale")
    assert not outcome.ok and seg.progress == -1
    assert "unknown user property 'level'" in seg.message
    assert seg.users_num == 1  # the last good version stays


def test_dynamic_segments_are_refreshed_daily_at_their_local_time(rt: Runtime) -> None:
    pid = project(rt)
    users(rt, pid, [2, 3])
    now = {"t": datetime(2024, 3, 1, 10, 0, tzinfo=SHANGHAI)}
    segments = Segments(
        rt.catalog._engine, rt.catalog, rt.store, rt.jobs, rt.ingest.barrier,
        rt.settings.limits, clock=lambda: now["t"].astimezone(UTC),
    )  # fmt: skip
    spec = Spec(
        name="daily", display_name="d", kind=SegmentKind.CLUSTER_CONDITIONS_DAILY, definition=QP,
        refresh_at="06:30",
    )  # fmt: skip
    segments.create(pid, spec, "test")
    static = Spec(name="once", display_name="o", definition=QP)
    segments.create(pid, static, "test")
    for name in ("daily", "once"):
        assert run(rt, segments, pid, name).ok

    def due(local: datetime) -> list[str]:
        return [s.name for s in segments.due(local.astimezone(UTC)) if s.project_id == pid]

    assert due(datetime(2024, 3, 1, 23, 0, tzinfo=SHANGHAI)) == []
    assert due(datetime(2024, 3, 2, 6, 29, tzinfo=SHANGHAI)) == []
    assert due(datetime(2024, 3, 2, 6, 31, tzinfo=SHANGHAI)) == ["daily"]
    # Missed days (the server was down) give one refresh, not one per day.
    assert due(datetime(2024, 3, 5, 9, 0, tzinfo=SHANGHAI)) == ["daily"]
    now["t"] = datetime(2024, 3, 2, 6, 31, tzinfo=SHANGHAI)
    assert pid in {segments.get(pid, "daily").project_id}
    queued = segments.schedule(now["t"].astimezone(UTC))
    assert segments.get(pid, "daily").id in queued
    assert run(rt, segments, pid, "daily").ok
    assert due(datetime(2024, 3, 2, 8, 0, tzinfo=SHANGHAI)) == []


def test_a_cluster_whose_refresh_cannot_be_queued_is_not_created(rt: Runtime) -> None:
    pid = project(rt)
    users(rt, pid, [2])
    for i in range(10):  # the project's job queue holds 10
        rt.segments.create(pid, Spec(name=f"q{i}", display_name="q", definition=QP), "test")
    with pytest.raises(CdpError) as exc:
        rt.segments.create(pid, Spec(name="q10", display_name="q", definition=QP), "test")
    assert exc.value.code is Code.BUSY
    with pytest.raises(CdpError):
        rt.segments.get(pid, "q10")
    # An update while its refresh waits is saved; the queued refresh reads it when it runs.
    qp = {"filts": [{"columnName": "level", "comparator": "equal", "ftv": ["2"]}]}
    rt.segments.update(pid, "q0", Spec(definition=qp), "test")
    assert rt.segments.get(pid, "q0").definition == qp
    assert run(rt, rt.segments, pid, "q0").ok
    assert rt.segments.get(pid, "q0").users_num == 1
