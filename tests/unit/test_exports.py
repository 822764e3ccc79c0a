"""The export engine in-process on the real SQLite, DuckDB and files, with its clock moved:
scheduled exports of closed periods, catch-up after downtime, retention, backfill."""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdp.config import Settings
from opencdp.exports.columns import COLUMNS, LAYOUT
from opencdp.exports.content import Export, ExportState, ExportStatus
from opencdp.exports.periods import EXPORT_TYPES
from opencdp.exports.service import JOB_KIND
from opencdp.ingest.records import build_record
from opencdp.meta import tables as t
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


def variables(row: dict[str, str]) -> dict[str, object]:
    """An exported event's properties (the vendor's ``eventVariable``, a JSON object)."""
    return dict(json.loads(row["eventVariable"]))


def rows_of(rt: Runtime, export_parts: list[dict[str, object]], export_id: int) -> list[dict]:
    export = rt.exports.by_id(export_id)
    out: list[dict] = []
    for part in export_parts:
        data = gzip.decompress(b"".join(rt.exports.open(export, str(part["name"]))))
        out += list(csv.DictReader(io.StringIO(data.decode()), quotechar='"', escapechar="\\"))
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
    assert {dt for _, dt in due} == set(LAYOUT.names)
    written = 0
    while n := exports.schedule(later):  # rounds of at most 50, as the scheduler runs them
        written += n
    assert written >= len(due)
    assert exports.due(project, later) == []  # nothing left: the scheduler caught up
    first = exports.period(project, "hour", started.astimezone(project.tz).strftime("%Y%m%d%H"))
    export = exports.find(project.id, first, "custom_event")
    assert export is not None and export.state == ExportState.FINISHED and export.rows == 120
    assert len(export.parts or []) > 1  # split under 800 bytes
    rows = rows_of(rt, export.parts or [], export.id)
    assert sorted(variables(r)["n"] for r in rows) == list(range(120))  # type: ignore[type-var]
    assert all(int(p["bytes"]) <= 800 for p in export.parts or [])
    status, _ = exports.status(project, first, "custom_event")
    assert status is ExportStatus.READY
    # Past retention the files are purged and the period answers as absent.
    purge_at = later + timedelta(days=16)
    exports.clock = lambda: purge_at
    assert exports.purge(purge_at) >= 1
    gone = exports.get(project.id, export.id)
    folder = rt.settings.data_dir / "exports" / str(project.id) / str(export.id)
    assert gone.state == ExportState.PURGED and not folder.exists()
    assert exports.status(project, first, "custom_event")[0] is ExportStatus.ABSENT


def settle(rt: Runtime) -> None:
    """Wait until no export job is queued or running (the runtime's workers run them)."""
    guard = time.monotonic() + 600  # a hang guard, not a time limit
    while rt.jobs.active_keys(JOB_KIND):
        assert time.monotonic() < guard, "the export jobs did not end"
        time.sleep(0.05)


def test_backfill_queues_only_what_is_missing(rt: Runtime) -> None:
    project, _ = rt.catalog.create_project(f"b{time.monotonic_ns()}")
    events(rt, project.id, 10)
    now = datetime.now(UTC)
    rt.exports.clock = lambda: now + timedelta(days=2)
    start = now.replace(tzinfo=None) - timedelta(hours=1)
    end = (now + timedelta(days=2)).replace(tzinfo=None)
    queued = rt.exports.backfill(project, start, end, "day")
    assert queued >= len(LAYOUT.names)  # the day of the events, every data type
    jobs = rt.jobs.list(project.id, kind=JOB_KIND)
    assert len(jobs) == queued // len(LAYOUT.names)  # one job per period
    assert {j.surface for j in jobs} == {"admin"}
    settle(rt)
    assert rt.exports.backfill(project, start, end, "day") == 0  # nothing missing any more
    day = rt.exports.period(project, "day", now.astimezone(project.tz).strftime("%Y%m%d"))
    export = rt.exports.find(project.id, day, "custom_event")
    assert export is not None and export.rows == 10


def test_hours_across_daylight_saving_changes_tile_the_day(rt: Runtime) -> None:
    from opencdp.errors import CdpError

    project, _ = rt.catalog.create_project(f"dst{time.monotonic_ns()}", timezone="Europe/Berlin")
    exports = rt.exports
    # Spring forward (02:00 local is skipped) and fall back (02:00 local comes twice).
    for day in (datetime(2027, 3, 27, 22), datetime(2026, 10, 24, 22)):
        hours = list(exports.periods(project, "hour", day, day + timedelta(days=1)))
        assert [p.start for p in hours[1:]] == [p.end for p in hours[:-1]]  # no gap, no overlap
        assert all(p.end > p.start for p in hours)
        assert hours[0].start == day and hours[-1].end == day + timedelta(days=1)
        assert len({p.start for p in hours}) == len(hours)  # one export key each
    skipped = exports.period(project, "hour", "2027032802")
    after = datetime(2027, 3, 29, tzinfo=UTC)
    exports.clock = lambda: after
    assert exports.status(project, skipped, "visit") == (ExportStatus.ABSENT, None)
    with pytest.raises(CdpError):
        exports.run(project.id, skipped, "visit")  # it would take 03:00's place


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_json_lines_and_parquet_exports(rt: Runtime, fmt: str) -> None:
    import pyarrow.parquet as pq

    project, _ = rt.catalog.create_project(f"f{fmt}{time.monotonic_ns()}")
    project = rt.catalog.set_export_format(project.id, fmt)
    events(rt, project.id, 30)
    now = datetime.now(UTC)
    rt.exports.clock = lambda: now + timedelta(hours=2)
    hour = rt.exports.period(project, "hour", now.astimezone(project.tz).strftime("%Y%m%d%H"))
    export = rt.exports.run(project.id, hour, "custom_event")
    assert export.state == ExportState.FINISHED and export.format == fmt and export.rows == 30
    seen: list[object] = []
    for part in export.parts or []:
        name = str(part["name"])
        data = b"".join(rt.exports.open(export, name))
        if fmt == "jsonl":
            # The variables are a JSON object in each line, their whole numbers integers.
            assert name.endswith(".jsonl.gz")
            lines = [json.loads(x) for x in gzip.decompress(data).splitlines()]
            assert list(lines[0]) == list(COLUMNS["custom_event"])
            seen += [line["eventVariable"]["n"] for line in lines]
            assert all(isinstance(line["time"], int) for line in lines)
        else:
            # The vendor's bigint times are int64; the variables JSON text.
            assert name.endswith(".parquet")
            table = pq.read_table(io.BytesIO(data))
            assert table.schema.names == list(COLUMNS["custom_event"])
            assert table.schema.field("time").type == "int64"
            seen += [json.loads(v)["n"] for v in table.column("eventVariable").to_pylist()]
    assert sorted(seen) == list(range(30))  # type: ignore[type-var]
    assert all(type(n) is int for n in seen)


def test_user_cluster_exports_hold_the_memberships_refreshed_in_the_period(rt: Runtime) -> None:
    from opencdp.segments.service import Spec

    project, _ = rt.catalog.create_project(f"uc{time.monotonic_ns()}")
    events(rt, project.id, 20)  # 7 users (mobiles), each with a property n on their events
    qp = {"events": [{"eventName": "buy", "comparator": "greaterEqual", "num": "3"}]}
    seg = rt.segments.create(project.id, Spec(name="buyers", display_name="b", definition=qp), "t")
    deadline = time.monotonic() + 300  # a hang guard: the job workers run the refresh
    while rt.segments.get(project.id, "buyers").progress != 100:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    now = datetime.now(UTC)
    rt.exports.clock = lambda: now + timedelta(hours=2)
    hour = rt.exports.period(project, "hour", now.astimezone(project.tz).strftime("%Y%m%d%H"))
    export = rt.exports.run(project.id, hour, "user_cluster")
    rows = rows_of(rt, export.parts or [], export.id)
    members = {u for u, _ in rt.store.segment_members(project.id, seg.id, 1, 100, 0)}
    assert {int(r["loginUserId"]) for r in rows} == members and len(members) == 6
    assert {
        (r["clusterId"], r["clusterName"], r["clusterType"], r["clusterVersion"]) for r in rows
    } == {(str(seg.id), "buyers", "cluster", "1")}
    # Each member with its identity keys (mobile: the only one these events carried).
    assert all(set(json.loads(r["identities"])) == {"mobile"} for r in rows)


def busy_events(
    rt: Runtime, pid: int, start: datetime, hours: int, per_hour: int
) -> dict[str, datetime]:
    """``per_hour`` events received in each of ``hours`` hours from ``start``: id → when."""
    project, ids = rt.catalog.project(pid), {}
    names = ["visit", "buy", "page", "pay"]
    for h in range(hours):
        for i in range(per_hour):
            at = start + timedelta(hours=h, minutes=i * 50 // per_hour)
            doc = {"type": "event", "event": names[(h + i) % len(names)], "properties": {
                "event_id": f"h{h}i{i}", "mobile": f"1{i:010d}", "n": h * per_hour + i,
                "create_time": "2024-05-06 07:08:09"}}  # fmt: skip
            record = build_record(
                doc, project, rt.catalog.schema(pid), rt.settings.limits,
                int(at.timestamp() * 1_000_000),
                lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
            )  # fmt: skip
            rt.ingest.submit_wait(record)
            ids[f"h{h}i{i}"] = at.astimezone(UTC).replace(tzinfo=None)
    return ids


def export_rows(rt: Runtime) -> list[Export]:
    with rt.exports._engine.connect() as conn:
        return [Export.from_row(r) for r in conn.execute(sa.select(t.exports))]


@pytest.fixture
def quiet(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime whose own scheduler stays out of the way: the test runs the rounds."""
    settings = Settings(data_dir=tmp_path / "data", export_part_bytes=2_000)
    runtime = Runtime.open(settings.with_overrides(scheduler_interval=1e6))
    runtime.start(announce=False)
    yield runtime
    runtime.stop()


def test_catch_up_after_a_day_of_downtime_is_fair_and_exactly_once(quiet: Runtime) -> None:
    rt, exports = quiet, quiet.exports
    # Three projects; the busiest one created last (highest id), with data in 20 hours. The
    # runtime's own "default" project, created at start, has a backlog too.
    quiet_a, _ = rt.catalog.create_project(f"qa{time.monotonic_ns()}")
    quiet_b, _ = rt.catalog.create_project(f"qb{time.monotonic_ns()}", timezone="Asia/Kolkata")
    busy, _ = rt.catalog.create_project(f"busy{time.monotonic_ns()}", timezone="Europe/Berlin")
    projects = [quiet_a, quiet_b, busy]
    created = busy.created_at.replace(tzinfo=UTC)  # within the busy project's first hour
    ids = busy_events(rt, busy.id, created, hours=20, per_hour=6)
    events(rt, quiet_a.id, 3)  # a few records in quiet_a's first hour too
    later = created + timedelta(days=1, hours=1)  # a day of downtime
    exports.clock = lambda: later
    due = {p.id: exports.due(p, later) for p in rt.catalog.projects()}
    first = {
        p.id: min((period for period, _ in due[p.id] if period.export_type == "hour"),
                  key=lambda period: period.start)
        for p in projects
    }  # fmt: skip
    # What else has closed by the time the last of these first hours did depends on the time
    # of day (a day closes with its last hour, and sorts before it; another zone's day may
    # close in between), so the round is sized to hold all of it, of every project: a round
    # that takes the oldest exports first over all projects needs no more, whatever each
    # project's backlog.
    closed = max(period.end for period in first.values())
    oldest = {
        (pid, period.export_type, dt, period.start)
        for pid, d in due.items()
        for period, dt in d
        if period.end <= closed
    }
    assert len(oldest) < min(map(len, due.values()))  # less than any one project's backlog

    # ONE round: exactly the oldest exports are published, and among them every project's
    # oldest missed hour, all of its data types, although the busy project comes last in
    # the catalog.
    assert exports.schedule(later, limit=len(oldest)) == len(oldest)
    written = {(e.project_id, e.export_type, e.data_type, e.period_start) for e in export_rows(rt)}
    assert written == oldest
    for project in projects:
        for dt in LAYOUT.names:
            status, export = exports.status(project, first[project.id], dt)
            assert status is ExportStatus.READY, (project.name, dt, status)
    visit = exports.find(busy.id, first[busy.id], "visit")
    assert visit is not None and visit.rows > 0 and visit.parts
    assert exports.backlog == sum(map(len, due.values())) - len(oldest) > 0

    # Then rounds until caught up (a bounded number of them).
    rounds = 1
    while exports.schedule(later):
        rounds += 1
        assert rounds < 20
    assert exports.backlog == 0
    assert all(exports.due(p, later) == [] for p in rt.catalog.projects())

    # Every closed period of every project and data type, published exactly once.
    rows = export_rows(rt)
    keys = Counter((e.project_id, e.export_type, e.data_type, e.period_start) for e in rows)
    expected = {
        (pid, period.export_type, dt, period.start) for pid, d in due.items() for period, dt in d
    }
    assert set(keys) == expected and set(keys.values()) == {1}
    assert all(e.state == ExportState.FINISHED and e.attempts == 1 for e in rows)
    # Each busy event is in exactly one hourly export, and in one daily export once its day
    # is closed.
    for export_type in EXPORT_TYPES:
        mine = [e for e in rows if e.project_id == busy.id and e.export_type == export_type]
        until = max(e.period_end for e in mine)  # the busy project's last closed period
        seen: list[str] = []
        for e in mine:
            if e.data_type not in ("user", "user_cluster"):
                seen += [r["eventId"] for r in rows_of(rt, e.parts or [], e.id)]
        assert sorted(seen) == sorted(i for i, at in ids.items() if at < until), export_type
        assert seen, export_type
    # Empty exports: no parts, no files, published as before.
    empty = [e for e in rows if e.rows == 0]
    assert len(empty) > len(rows) // 2
    assert all(e.parts == [] for e in empty)
    folders = {p.name for d in (rt.settings.data_dir / "exports").iterdir() for p in d.iterdir()}
    assert folders == {str(e.id) for e in rows if e.parts}  # no leftovers of any attempt
    quiet_hour = exports.period(
        quiet_b, "hour", (later - timedelta(hours=3)).astimezone(quiet_b.tz).strftime("%Y%m%d%H")
    )
    status, export = exports.status(quiet_b, quiet_hour, "custom_event")
    assert status is ExportStatus.READY and export is not None and export.rows == 0


def test_an_export_interrupted_by_a_crash_or_a_stop_is_published_once_later(
    quiet: Runtime,
) -> None:
    rt, exports = quiet, quiet.exports
    project, _ = rt.catalog.create_project(f"c{time.monotonic_ns()}")
    events(rt, project.id, 40)
    now = datetime.now(UTC)
    later = now + timedelta(hours=2)
    exports.clock = lambda: later
    hour = exports.period(project, "hour", now.astimezone(project.tz).strftime("%Y%m%d%H"))
    # A crash mid-export: the claim is RUNNING and half-written parts lie in the temporary
    # folder. While the claim lasts no other writer takes the export; then it expires.
    crashed = exports._claim(project.id, hour, "custom_event")
    assert crashed is not None and exports._claim(project.id, hour, "custom_event") is None
    expired = t.utcnow() + exports.lease * 2
    exports.lease_clock = lambda: expired
    tmp = rt.settings.data_dir / "exports" / str(project.id) / f"{crashed.id}.tmp"
    tmp.mkdir(parents=True)
    (tmp / "custom_event_part0001.csv.gz").write_bytes(b"half a part")
    assert exports.status(project, hour, "custom_event")[0] is ExportStatus.PENDING
    # A stop mid-export: the writer gives up between two batches and leaves it RUNNING too.
    assert rt.ingest.barrier()
    exports.stopping.set()
    exports._write_one(project.id, hour, "custom_event", exports.stopping)
    stopped = exports.find(project.id, hour, "custom_event")
    assert stopped is not None and stopped.state == "running"
    assert exports.schedule(later) == 0  # a round started while stopping writes nothing
    exports.stopping.clear()
    # The next round (as at the next start) publishes it, once, complete.
    while exports.schedule(later):
        pass
    done = [e for e in export_rows(rt) if e.project_id == project.id]
    keys = Counter((e.export_type, e.data_type, e.period_start) for e in done)
    assert set(keys.values()) == {1} and all(e.state == ExportState.FINISHED for e in done)
    export = exports.find(project.id, hour, "custom_event")
    assert export is not None and export.id == crashed.id and export.attempts == 3
    rows = rows_of(rt, export.parts or [], export.id)
    assert sorted(variables(r)["n"] for r in rows) == list(range(40))  # type: ignore[type-var]
    assert not tmp.exists()


def test_a_restart_catches_up_in_rounds_that_follow_each_other(tmp_path: Path) -> None:
    # The interval is a million seconds: only the round at start, and rounds that follow each
    # other while exports are due, can catch up.
    settings = Settings(data_dir=tmp_path / "data", scheduler_interval=1e6, export_round=40)
    rt = Runtime.open(settings)
    rt.start(announce=False)
    projects = [rt.catalog.create_project(f"r{i}{time.monotonic_ns()}")[0] for i in range(3)]
    created = datetime.now(UTC)
    busy_events(rt, projects[2].id, created, hours=12, per_hour=3)
    rt.stop()
    later = created + timedelta(days=1, hours=1)
    rt = Runtime.open(settings)  # back after a day of downtime
    rt.exports.clock = lambda: later
    expected = {
        (p.id, period.export_type, dt, period.start)
        for p in projects
        for period, dt in rt.exports.due(p, later)
    }
    assert len(expected) > 5 * 40  # more than five rounds
    rt.start(announce=False)
    try:
        guard = time.monotonic() + 600  # a hang guard (the interval is 1e6 s), not a limit
        while any(rt.exports.due(p, later) for p in projects):
            assert time.monotonic() < guard, "the scheduler stopped before catching up"
            time.sleep(0.05)
        rows = [e for e in export_rows(rt) if e.project_id in {p.id for p in projects}]
    finally:
        rt.stop()
    keys = Counter((e.project_id, e.export_type, e.data_type, e.period_start) for e in rows)
    assert set(keys) == expected and set(keys.values()) == {1}
    assert all(e.state == ExportState.FINISHED and e.attempts == 1 for e in rows)


def test_the_scheduler_and_a_backfill_at_once_write_each_export_once(quiet: Runtime) -> None:
    rt, exports = quiet, quiet.exports
    projects = [rt.catalog.create_project(f"w{i}{time.monotonic_ns()}")[0] for i in range(2)]
    created = datetime.now(UTC)
    busy_events(rt, projects[1].id, created, hours=8, per_hour=4)
    later = created + timedelta(hours=10)
    exports.clock = lambda: later
    start, end = _naive(created - timedelta(hours=1)), _naive(later)
    backfills = [threading.Thread(target=exports.backfill, args=(p, start, end)) for p in projects]
    for thread in backfills:
        thread.start()
    while exports.schedule(later):  # the scheduler's rounds, while the backfills run
        pass
    for thread in backfills:
        thread.join()
    settle(rt)  # the jobs the backfills queued
    while exports.schedule(later):  # (what their periods' jobs left, if any)
        pass
    rows = [e for e in export_rows(rt) if e.project_id in {p.id for p in projects}]
    keys = Counter((e.project_id, e.export_type, e.data_type, e.period_start) for e in rows)
    assert len(keys) > 100 and set(keys.values()) == {1}
    assert all(e.state == ExportState.FINISHED and e.attempts == 1 for e in rows)
    assert sum(e.rows for e in rows if e.export_type == "hour" and e.data_type != "user") == 32


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def test_property_values_as_json_text() -> None:
    """The store's export expression for each property type, on a real DuckDB: whole numbers
    up to 2^53 as integers, others as the double they are, no NaN or infinity (not JSON)."""
    import duckdb

    from opencdp.catalog.model import Property
    from opencdp.catalog.types import PropertyType
    from opencdp.store.duckdb import ident, json_value

    numbers = [3.0, -0.0, 2.0**53, -(2.0**53), 2.0**53 + 2, 1.5, 0.1, 1e300, -1e-7]
    specials = ["nan", "inf", "-inf"]
    conn = duckdb.connect()
    conn.execute(
        "CREATE TABLE t (p_1 DOUBLE, p_2 VARCHAR, p_3 TIMESTAMP, p_4 VARCHAR[], p_5 BOOLEAN)"
    )
    for x in numbers:
        conn.execute("INSERT INTO t (p_1) VALUES (?)", [x])
    for x in specials:
        conn.execute("INSERT INTO t (p_1) VALUES (CAST(? AS DOUBLE))", [x])
    conn.execute(
        "INSERT INTO t VALUES (NULL, ?, TIMESTAMP '2024-01-01 19:04:05.123456', ['a', NULL], true)",
        ['quote " back \\ nl \n € 😀 \t'],
    )
    props = [
        Property(i, "event", f"x{i}", typ)
        for i, typ in enumerate(
            [PropertyType.NUMBER, PropertyType.STRING, PropertyType.DATETIME, PropertyType.LIST,
             PropertyType.BOOL], start=1)
    ]  # fmt: skip
    sql = ", ".join(json_value(p, ident(p.column)) for p in props)
    rows = conn.execute(f"SELECT {sql} FROM t").fetchall()
    texts = [r[0] for r in rows]
    assert texts[: len(numbers)] == [
        "3", "0", "9007199254740992", "-9007199254740992", "9007199254740994.0", "1.5", "0.1",
        "1e300", "-1e-7",
    ]  # fmt: skip
    assert [json.loads(t) for t in texts[: len(numbers)]] == numbers  # the same doubles
    assert texts[len(numbers) : len(numbers) + len(specials)] == [None, None, None]
    last = rows[-1]
    assert json.loads(last[1]) == 'quote " back \\ nl \n € 😀 \t'  # text exactly as stored
    assert last[2:] == ("1704135845123", '["a",null]', "true")
