"""The export engine in-process on the real SQLite, DuckDB and files, with its clock moved:
scheduled exports of closed periods, catch-up after downtime, retention, backfill."""

from __future__ import annotations

import csv
import gzip
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opencdp.config import Settings
from opencdp.exports.service import DATA_TYPES, FINISHED, PURGED
from opencdp.ingest.records import build_record
from opencdp.runtime import Runtime


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime.open(Settings(data_dir=tmp_path / "data", export_part_bytes=800))
    runtime.start(announce=False)
    yield runtime
    runtime.stop()


def events(rt: Runtime, pid: int, count: int) -> None:
    project = rt.catalog.project(pid)
    for i in range(count):
        doc = {"type": "event", "event": "buy", "properties": {
            "event_id": f"x{i}", "mobile": f"1{i % 7:010d}", "n": i,
            "create_time": "2024-05-06 07:08:09"}}  # fmt: skip
        record = build_record(
            doc, project, rt.catalog.schema(pid), rt.settings.limits, time.time_ns() // 1000,
            lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
        )  # fmt: skip
        rt.ingest.submit_wait(record)


def rows_of(rt: Runtime, export_parts: list[dict[str, object]], export_id: int) -> list[dict]:
    export = rt.exports.by_id(export_id)
    out: list[dict] = []
    for part in export_parts:
        data = gzip.decompress(rt.exports.path(export, str(part["name"])).read_bytes())
        out += list(csv.DictReader(io.StringIO(data.decode())))
    return out


def test_scheduled_exports_catch_up_and_expire(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"e{time.monotonic_ns()}")
    events(rt, project.id, 120)
    started = datetime.now(UTC)
    exports = rt.exports
    # Within the hour, and within the delay after it, nothing is due.
    assert exports.due(project, started) == []
    later = started + timedelta(hours=3)
    exports.clock = lambda: later
    due = exports.due(project, later)
    hours = sorted({p.start for p, _ in due if p.export_type == "hour"})
    assert len(hours) in (2, 3)  # the hour of the events and the closed ones after it
    assert {dt for _, dt in due} == set(DATA_TYPES)
    written = 0
    while n := exports.schedule(later):  # rounds of at most 50, as the scheduler runs them
        written += n
    assert written >= len(due)
    assert exports.due(project, later) == []  # nothing left: the scheduler caught up
    first = exports.period(project, "hour", started.astimezone(project.tz).strftime("%Y%m%d%H"))
    export = exports.find(project.id, first, "custom_event")
    assert export is not None and export.state == FINISHED and export.rows == 120
    assert len(export.parts or []) > 1  # split under 800 bytes
    rows = rows_of(rt, export.parts or [], export.id)
    assert sorted(int(r["n"]) for r in rows) == list(range(120))
    assert all(int(p["bytes"]) <= 800 for p in export.parts or [])
    status, _ = exports.status(project, first, "custom_event")
    assert status == "FINISHED"
    # Past retention the files are purged and the period answers NOT_EXISTS.
    purge_at = later + timedelta(days=16)
    exports.clock = lambda: purge_at
    assert exports.purge(purge_at) >= 1
    gone = exports.get(project.id, export.id)
    folder = rt.settings.data_dir / "exports" / str(project.id) / str(export.id)
    assert gone.state == PURGED and not folder.exists()
    assert exports.status(project, first, "custom_event")[0] == "NOT_EXISTS"


def test_backfill_writes_only_what_is_missing(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"b{time.monotonic_ns()}")
    events(rt, project.id, 10)
    now = datetime.now(UTC)
    rt.exports.clock = lambda: now + timedelta(days=2)
    start = now.replace(tzinfo=None) - timedelta(hours=1)
    end = (now + timedelta(days=2)).replace(tzinfo=None)
    written = rt.exports.backfill(project, start, end, "day")
    assert written >= len(DATA_TYPES)  # the day of the events, every data type
    assert rt.exports.backfill(project, start, end, "day") == 0  # nothing missing any more
    day = rt.exports.period(project, "day", now.astimezone(project.tz).strftime("%Y%m%d"))
    export = rt.exports.find(project.id, day, "custom_event")
    assert export is not None and export.rows == 10


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_json_lines_and_parquet_exports(rt: Runtime, fmt: str) -> None:
    import json

    import pyarrow.parquet as pq

    project, _ = rt.catalog.create_project(f"f{fmt}{time.monotonic_ns()}")
    project = rt.catalog.set_export_format(project.id, fmt)
    events(rt, project.id, 30)
    now = datetime.now(UTC)
    rt.exports.clock = lambda: now + timedelta(hours=2)
    hour = rt.exports.period(project, "hour", now.astimezone(project.tz).strftime("%Y%m%d%H"))
    export = rt.exports.run(project.id, hour, "custom_event")
    assert export.state == FINISHED and export.format == fmt and export.rows == 30
    seen: list[int] = []
    for part in export.parts or []:
        path = rt.exports.path(export, str(part["name"]))
        if fmt == "jsonl":
            assert path.name.endswith(".jsonl.gz")
            seen += [
                json.loads(line)["n"] for line in gzip.decompress(path.read_bytes()).splitlines()
            ]
        else:
            assert path.name.endswith(".parquet")
            table = pq.read_table(path)
            assert table.schema.field("event_time").type == "string"
            seen += table.column("n").to_pylist()
    assert sorted(int(x) for x in seen) == list(range(30))


def test_user_cluster_exports_hold_the_memberships_refreshed_in_the_period(rt: Runtime) -> None:
    from opencdp.segments.service import Spec

    project, _ = rt.catalog.create_project(f"uc{time.monotonic_ns()}")
    events(rt, project.id, 20)  # 7 users (mobiles), each with a property n on their events
    qp = {"events": [{"eventName": "buy", "comparator": "greaterEqual", "num": "3"}]}
    seg = rt.segments.create(project.id, Spec(name="buyers", display_name="b", definition=qp), "t")
    deadline = time.monotonic() + 60  # a hang guard: the job workers run the refresh
    while rt.segments.get(project.id, "buyers").progress != 100:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    now = datetime.now(UTC)
    rt.exports.clock = lambda: now + timedelta(hours=2)
    hour = rt.exports.period(project, "hour", now.astimezone(project.tz).strftime("%Y%m%d%H"))
    export = rt.exports.run(project.id, hour, "user_cluster")
    rows = rows_of(rt, export.parts or [], export.id)
    members = {u for u, _ in rt.store.segment_members(project.id, seg.id, 1, 100, 0)}
    assert {int(r["user_id"]) for r in rows} == members and len(members) == 6
    assert {(r["segment_name"], r["kind"], r["version"]) for r in rows} == {
        ("buyers", "cluster", "1")
    }
