"""Raw-data export (part of ``make bench``).

Writes ~700,000 events received over one day (a fixed, hash-derived data set) into a project,
then exports that day to gzip CSV parts — the export engine, as the scheduler runs it, in
GrowingIO's ``custom_event`` columns — and, in the same run, has DuckDB write the same rows
(same columns, same text, the vendor's escape character) with
``COPY … (FORMAT csv, ESCAPE '\\', COMPRESSION gzip)``. Rounds alternate the two; medians
are compared. Reports MB/s of compressed output and the ratio (target ≥ 1.0).

    python -m bench.exports [--events 700000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from bench.ingest import OUT
from opencdp.catalog.types import PropertyType
from opencdp.config import Settings
from opencdp.exports.columns import COLUMNS
from opencdp.runtime import Runtime
from opencdp.store.duckdb import table

NAMES = ["pay", "login", "view_page", "share", "consume_item"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=700_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    work = OUT / "exports"
    shutil.rmtree(work, ignore_errors=True)
    rt = Runtime.open(Settings(data_dir=work / "data"))
    project, _ = rt.catalog.create_project("bench", timezone="Asia/Shanghai")
    pid = project.id
    props = rt.catalog.ensure_properties(
        pid,
        "event",
        {
            "amount": PropertyType.NUMBER,
            "os": PropertyType.STRING,
            "page": PropertyType.STRING,
            "campaign": PropertyType.STRING,
        },
    )
    yesterday = datetime.now(UTC).astimezone(project.tz).date() - timedelta(days=1)
    period = rt.exports.period(project, "day", yesterday.strftime("%Y%m%d"))
    events = table(pid, "events")
    cols = {n: p.column for n, p in props.items()}
    with rt.store.writer() as w:
        w.ensure_project(pid)
        w.ensure_columns(pid, list(props.values()))
        names = "[" + ", ".join(f"'{n}'" for n in NAMES) + "]"
        day_us = 86_400_000_000
        w._cur.execute(  # type: ignore[attr-defined]  # the benchmark loads through raw SQL
            f"INSERT INTO {events} (event_id, event_name, event_time, received_at, user_id, "
            f"{cols['amount']}, {cols['os']}, {cols['page']}, {cols['campaign']}) "
            f"SELECT 'ev' || i, {names}[(1 + hash(i, 1) % {len(NAMES)})::BIGINT], "
            f"TIMESTAMP '{period.start}' + to_microseconds((i::HUGEINT * {day_us} "
            f"// {args.events})::BIGINT), "
            f"TIMESTAMP '{period.start}' + to_microseconds((i::HUGEINT * {day_us} "
            f"// {args.events})::BIGINT), 1 + hash(i, 2) % 200000, (hash(i, 3) % 100000) / 100.0, "
            "['android', 'ios', 'web'][(1 + hash(i, 4) % 3)::BIGINT], "
            "'/page/' || (hash(i, 5) % 5000), 'campaign_' || (hash(i, 6) % 300) "
            f"FROM range(0, {args.events}) t(i)"
        )
    export = rt.exports._claim(pid, period, "custom_event")

    # The same columns and text as the export: GrowingIO's custom_event columns (null where
    # we hold nothing), the properties as one JSON object (whole numbers as integers).
    def value(name: str, col: str) -> str:
        if name == "amount":
            return (
                f"CASE WHEN {col} = trunc({col}) AND abs({col}) <= 9007199254740992 "
                f"THEN CAST({col} AS BIGINT)::JSON ELSE {col}::JSON END"
            )
        return f"to_json({col})"

    variables = ", ".join(
        f"'{p.name}', {value(p.name, p.column)}" for p in rt.catalog.schema(pid).event.values()
    )
    filled = {
        "visitUserId": "CAST(user_id AS VARCHAR)",
        "time": "epoch_ms(event_time)",
        "sendTime": "epoch_ms(received_at)",
        "eventName": "event_name",
        "eventVariable": f"CAST(json_object({variables}) AS VARCHAR)",
        "loginUserId": "CAST(user_id AS VARCHAR)",
        "eventId": "event_id",
    }
    copy_sql = (
        "SELECT "
        + ", ".join(f'{filled.get(c, "NULL")} AS "{c}"' for c in COLUMNS["custom_event"])
        + f" FROM {events} WHERE received_at >= TIMESTAMP '{period.start}' AND received_at < "
        f"TIMESTAMP '{period.end}' ORDER BY received_at, event_id"
    )
    ours: list[float] = []
    theirs: list[float] = []
    ours_bytes = theirs_bytes = rows = 0
    target = work / "copy.csv.gz"
    for _ in range(args.rounds):
        started = time.perf_counter()
        parts, rows = rt.exports._write(export)
        ours.append(time.perf_counter() - started)
        ours_bytes = sum(p.bytes for p in parts)
        target.unlink(missing_ok=True)
        # The store's connection may touch no file but its own, so the rows stream (as Arrow)
        # from the store's query into a second DuckDB that writes them.
        with rt.store._read() as cur, duckdb.connect() as writer:  # type: ignore[attr-defined]
            started = time.perf_counter()
            reader = cur.sql(copy_sql).to_arrow_reader(65_536)
            writer.register("copy_rows", reader)
            writer.execute(
                f"COPY copy_rows TO '{target}' (FORMAT csv, ESCAPE '\\', COMPRESSION gzip)"
            )
            theirs.append(time.perf_counter() - started)
        theirs_bytes = target.stat().st_size
    o, t = statistics.median(ours), statistics.median(theirs)
    results: dict[str, Any] = {
        "events": rows,
        "parts": len(parts),
        "export_seconds": round(o, 2),
        "export_mb": round(ours_bytes / 1e6, 1),
        "export_mb_per_s": round(ours_bytes / 1e6 / o, 1),
        "copy_seconds": round(t, 2),
        "copy_mb": round(theirs_bytes / 1e6, 1),
        "copy_mb_per_s": round(theirs_bytes / 1e6 / t, 1),
        "ratio": round(t / o, 2),
    }
    print(
        f"export of one day, {rows:,} events: {o:.2f} s, {ours_bytes / 1e6:.1f} MB in "
        f"{len(parts)} parts ({ours_bytes / 1e6 / o:.1f} MB/s); DuckDB COPY gzip {t:.2f} s, "
        f"{theirs_bytes / 1e6:.1f} MB ({theirs_bytes / 1e6 / t:.1f} MB/s); ratio {t / o:.2f} "
        f"(target >= 1.0; medians of {args.rounds})",
        flush=True,
    )
    rt.store.close()
    (OUT / "exports.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
