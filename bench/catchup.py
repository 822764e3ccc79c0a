"""Raw-data export catch-up after downtime (part of ``make bench``).

Three projects, the server down for a day: the busiest project (created last) received
``--per-hour`` events (5 names, 2 of them data types of their own) and a tenth as many profile
changes in every hour of that day; the two others received nothing. The scheduler's rounds run
back to back from the restart until nothing is due, as the server runs them. Reports the time
until every project's first missed hour was published, the time to catch up, and, in the same
run, what one export costs: an empty one as published now, an empty one through the part
writer (claim, files, manifest, publish: how every empty period used to be written), and an
hourly export with rows.

    python -m bench.catchup [--per-hour 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.ingest import OUT
from opencdp.catalog.types import PropertyType
from opencdp.config import Settings
from opencdp.exports.content import Export, ExportStatus
from opencdp.meta import tables as t
from opencdp.runtime import Runtime
from opencdp.store.duckdb import table

NAMES = ["visit", "page", "pay", "login", "share"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-hour", type=int, default=10_000)
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    work = OUT / "catchup"
    shutil.rmtree(work, ignore_errors=True)
    # The scheduler thread stays idle: the bench runs its rounds, the way it runs them.
    rt = Runtime.open(Settings(data_dir=work / "data", scheduler_interval=1e9))
    rt.start(announce=False)
    exports = rt.exports
    projects = [
        rt.catalog.create_project("quiet_a")[0],
        rt.catalog.create_project("quiet_b", timezone="Europe/Berlin")[0],
        rt.catalog.create_project("busy")[0],
    ]
    busy = projects[-1]
    created = datetime.now(UTC).replace(tzinfo=None)
    _load(rt, busy.id, created, args.per_hour)
    later = (created + timedelta(days=1, hours=1)).replace(tzinfo=UTC)  # a day down
    exports.clock = lambda: later
    due = sum(len(exports.due(p, later)) for p in projects)

    started = time.perf_counter()
    rounds, first_round, firsts = 0, 0.0, [False]
    while exports.schedule(later):
        rounds += 1
        if rounds == 1:
            first_round = time.perf_counter() - started
            firsts = [_first_hour_published(rt, p, later) for p in projects]
    catch_up = time.perf_counter() - started
    assert all(firsts), "a project's first missed hour was not in the first round"
    assert not any(exports.due(p, later) for p in projects)
    published = Counter(e.rows == 0 for p in projects for e in _exports(rt, p.id))

    # What one export costs, measured in the same run on periods of two fresh projects.
    empty_now, empty_writer = _empty_costs(rt, later)
    full, full_rows = _full_cost(rt, busy, created)

    results: dict[str, Any] = {
        "projects": len(projects),
        "events": args.per_hour * 24,
        "exports": due,
        "empty_exports": published[True],
        "exports_with_rows": published[False],
        "rounds": rounds,
        "first_hours_seconds": round(first_round, 2),
        "catch_up_seconds": round(catch_up, 2),
        "empty_ms": round(empty_now * 1000, 2),
        "empty_via_writer_ms": round(empty_writer * 1000, 2),
        "hour_with_rows_ms": round(full * 1000, 1),
        "hour_rows": full_rows,
        "writer_over_empty": round(empty_writer / empty_now, 1),
        "hour_with_rows_over_empty": round(full / empty_now, 1),
    }
    print(
        f"catch-up of a day of downtime, {len(projects)} projects, {due} exports "
        f"({published[True]} empty, {published[False]} with rows, {args.per_hour * 24:,} "
        f"events): every project's first missed hour published after {first_round:.2f} s "
        f"(round 1 of {rounds}), caught up in {catch_up:.2f} s; one empty export "
        f"{empty_now * 1000:.2f} ms against {empty_writer * 1000:.2f} ms through the part writer "
        f"(ratio {empty_writer / empty_now:.1f}) and {full * 1000:.0f} ms for an hourly export "
        f"of {full_rows:,} rows (ratio {full / empty_now:.0f})",
        flush=True,
    )
    rt.stop()
    (OUT / "catchup.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def _load(rt: Runtime, pid: int, start: datetime, per_hour: int) -> None:
    """``per_hour`` events and ``per_hour // 10`` profile changes received in every hour of
    the day from ``start`` (UTC), through raw SQL (the bench measures exports, not ingest)."""
    props = rt.catalog.ensure_properties(
        pid, "event", {"amount": PropertyType.NUMBER, "page": PropertyType.STRING}
    )
    cols = {n: p.column for n, p in props.items()}
    n, day_us = per_hour * 24, 86_400_000_000
    names = "[" + ", ".join(f"'{x}'" for x in NAMES) + "]"
    at = f"TIMESTAMP '{start}' + to_microseconds((i::HUGEINT * {day_us} // {{n}})::BIGINT)"
    with rt.store.writer() as w:
        w.ensure_project(pid)
        w.ensure_columns(pid, list(props.values()))
        cur = w._cur  # type: ignore[attr-defined]  # the benchmark loads through raw SQL
        cur.execute(
            f"INSERT INTO {table(pid, 'events')} (event_id, event_name, event_time, "
            f"received_at, user_id, {cols['amount']}, {cols['page']}) "
            f"SELECT 'ev' || i, {names}[(1 + hash(i, 1) % {len(NAMES)})::BIGINT], "
            f"{at.format(n=n)}, {at.format(n=n)}, 1 + hash(i, 2) % 50000, "
            f"(hash(i, 3) % 100000) / 100.0, '/page/' || (hash(i, 4) % 500) "
            f"FROM range(0, {n}) t(i)"
        )
        m = n // 10
        cur.execute(
            f"INSERT INTO {table(pid, 'profiles')} (user_id, created_at, updated_at) "
            f"SELECT i + 1, {at.format(n=m)}, {at.format(n=m)} FROM range(0, {m}) t(i)"
        )


def _exports(rt: Runtime, pid: int) -> list[Export]:
    with rt.exports._engine.connect() as conn:
        rows = conn.execute(sa.select(t.exports).where(t.exports.c.project_id == pid))
        return [Export.from_row(r) for r in rows]


def _first_hour_published(rt: Runtime, project: Any, now: datetime) -> bool:
    first = _naive(project.created_at)
    hour = rt.exports.period(
        project, "hour", first.replace(tzinfo=UTC).astimezone(project.tz).strftime("%Y%m%d%H")
    )
    return all(
        rt.exports.status(project, hour, dt)[0] is ExportStatus.READY
        for dt in ("visit", "page", "custom_event", "user", "user_cluster", "evar")
    )


def _empty_costs(rt: Runtime, now: datetime) -> tuple[float, float]:
    """Seconds per empty export: as published now (one count per period, one metadata
    transaction), and through the part writer (claim, files, manifest, publish)."""
    exports = rt.exports
    cheap, writer = (rt.catalog.create_project(n)[0] for n in ("empty_a", "empty_b"))
    a = _by_period(exports.due(cheap, now))[:10]
    b = _by_period(exports.due(writer, now))[:10]
    started = time.perf_counter()
    for period, dts in a:
        exports._export_period(cheap, period, dts, True, None)
    now_s = (time.perf_counter() - started) / sum(len(d) for _, d in a)
    started = time.perf_counter()
    for period, dts in b:
        for dt in dts:
            exports._write_one(writer.id, period, dt, None)
    writer_s = (time.perf_counter() - started) / sum(len(d) for _, d in b)
    return now_s, writer_s


def _full_cost(rt: Runtime, project: Any, created: datetime) -> tuple[float, int]:
    """Seconds to write one hourly ``custom_event`` export with rows (median of 3): the busy
    project's second hour, rewritten in place (its content is the same each time)."""
    local = (created + timedelta(hours=1)).replace(tzinfo=UTC).astimezone(project.tz)
    hour = rt.exports.period(project, "hour", local.strftime("%Y%m%d%H"))
    export = rt.exports.find(project.id, hour, "custom_event")
    assert export is not None and export.rows > 0
    times = []
    for _ in range(3):
        started = time.perf_counter()
        rt.exports._write(export)
        times.append(time.perf_counter() - started)
    return statistics.median(times), export.rows


def _by_period(due: list[Any]) -> list[tuple[Any, list[str]]]:
    periods: dict[Any, list[str]] = {}
    for period, dt in due:
        periods.setdefault(period, []).append(dt)
    return list(periods.items())


def _naive(dt: datetime) -> datetime:
    return dt if dt.tzinfo is None else dt.astimezone(UTC).replace(tzinfo=None)


if __name__ == "__main__":
    main()
