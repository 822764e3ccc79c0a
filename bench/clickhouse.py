"""The ClickHouse store against the embedded DuckDB store (part of ``make bench``), in the same
run on the same machine, ClickHouse's engine running in-process (chdb):

1. **Segment refresh**: the four definitions of ``bench.segments`` on its data set (20M
   events, 1M profiles), loaded into a DuckDB store and copied into a ClickHouse store, each
   run through ``Store.segment_rows`` (the refresh's query); alternating rounds, medians; the
   member sets must be equal. For the two-condition definition also: a hand-written ClickHouse
   query, and the compiled query over the two other ways of reading events exactly (``FINAL``
   over a ``ReplacingMergeTree`` copy, ``argMax`` by event id), which the store does not use.
2. **One-day export**: GrowingIO's ``custom_event`` export of one day of that data set (the
   export engine, as the scheduler runs it), from each store; alternating rounds.
3. **HTTP refresh**: the two-condition definition refreshed over HTTP (ThinkingData's API),
   from the request to progress 100, on a server over each store.
4. **Bulk import**: 1,000,000 profiles through the Marketo surface into a server over each
   store; alternating rounds.

    python -m bench.clickhouse [--users 1000000] [--events 20000000] [--rows 1000000]
                               [--rounds 3] [--only segments|http|imports]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from bench import segments as seg_bench
from bench.imports import marketo_import, profiles_csv
from bench.ingest import ADMIN_TOKEN, OUT, Server, free_port
from bench.scaled import BUDGET, _same
from opencdp.config import Settings
from opencdp.datadir import DEPLOYMENT
from opencdp.runtime import Runtime
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.store import open_store
from opencdp.store.base import Store
from opencdp.store.clickhouse.segments import render
from opencdp.store.names import table

WORK = OUT / "clickhouse"
DATA = WORK / "data"
CHDB = WORK / "chdb"


def chdb_url() -> str:
    return f"chdb://{CHDB}"


# ---- loading --------------------------------------------------------------------------------
def copy_into(ch: Store, duck: Any, rt: Runtime, pid: int) -> None:
    """Copy the project's rows from the DuckDB store into the ClickHouse store's tables (as
    the store writes them: one version of each row, each event id once)."""
    schema = rt.catalog.schema(pid)
    with ch.writer() as w:
        w.ensure_project(pid)
        w.ensure_columns(pid, [*schema.user.values(), *schema.event.values()])
    user_cols = ", ".join(p.column for p in schema.user.values())
    event_cols = ", ".join(p.column for p in schema.event.values())
    profiles, identities, events = (table(pid, k) for k in ("profiles", "identities", "events"))
    copies = [
        ("profiles", f"SELECT user_id, created_at, updated_at, {user_cols} FROM {profiles}"),
        ("identities", f"SELECT key_id, value, user_id FROM {identities}"),
        ("events", f"SELECT event_name, user_id, event_time, event_id, received_at, "
                   f"{event_cols} FROM {events}"),
        ("event_ids", f"SELECT event_id, event_name, user_id, event_time FROM {events}"),
    ]  # fmt: skip
    with ch._client() as c:  # type: ignore[attr-defined]  # the benchmark loads through raw SQL
        for name, select in copies:
            for batch in duck.sql(select).to_arrow_reader(1_000_000):
                n = batch.num_rows
                data = pa.Table.from_batches([batch])
                data = data.append_column("project_id", pa.array([pid] * n, pa.uint64()))
                data = data.append_column("_version", pa.array([1] * n, pa.uint64()))
                if name != "events":
                    data = data.append_column("_deleted", pa.array([0] * n, pa.uint8()))
                c.insert_arrow(name, data, database="opencdp")
        c.command("OPTIMIZE TABLE opencdp.profiles FINAL")


# ---- 1 and 2: queries and exports in one process ----------------------------------------------
def measure(args: argparse.Namespace) -> dict[str, Any]:
    now = datetime.now(UTC)
    rt = Runtime.open(Settings(data_dir=DATA, admin_token=ADMIN_TOKEN))
    pid = rt.catalog.create_project("bench")[0].id
    started = time.perf_counter()
    seg_bench.load(rt, pid, args.users, args.events, now)
    duck_load = time.perf_counter() - started
    ch = open_store(chdb_url())
    started = time.perf_counter()
    with rt.store.writer() as w:
        copy_into(ch, w._cur, rt, pid)  # type: ignore[attr-defined]
    with ch.writer() as w:
        w.set_checkpoint(DEPLOYMENT, rt.store.checkpoint(DEPLOYMENT))
    ch_load = time.perf_counter() - started
    print(
        f"loaded {args.users:,} profiles and {args.events:,} events: DuckDB {duck_load:.1f} s, "
        f"then copied into ClickHouse (chdb) in {ch_load:.1f} s",
        flush=True,
    )
    out: dict[str, Any] = {"users": args.users, "events": args.events, "definitions": {}}
    definitions = {
        "seed": parse_cluster(seg_bench.SEED),
        "two_conditions": parse_cluster(seg_bench.TWO),
        "first_event_tag": parse_tag(seg_bench.FIRST),
        "metric_tag": parse_tag(seg_bench.METRIC),
    }
    for name, d in definitions.items():
        query = rt.segments._compile(pid, d, now).query
        times: dict[str, list[float]] = {"duckdb": [], "clickhouse": []}
        members: dict[str, Any] = {}
        for _ in range(args.rounds):
            for engine, store in (("duckdb", rt.store), ("clickhouse", ch)):
                t0 = time.perf_counter()
                rows = store.segment_rows(pid, query, BUDGET)
                times[engine].append(time.perf_counter() - t0)
                members[engine] = sorted(
                    zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(), strict=True)
                )
        same = _same(members["duckdb"], members["clickhouse"])
        med = {k: statistics.median(v) for k, v in times.items()}
        out["definitions"][name] = {
            "members": len(members["duckdb"]),
            "duckdb_s": med["duckdb"],
            "clickhouse_s": med["clickhouse"],
            "ratio": med["clickhouse"] / med["duckdb"],
            "same_members": same,
        }
        print(
            f"{name}: {len(members['duckdb']):,} members; DuckDB {med['duckdb'] * 1000:.0f} ms, "
            f"ClickHouse {med['clickhouse'] * 1000:.0f} ms "
            f"(ratio {med['clickhouse'] / med['duckdb']:.2f}); "
            f"{'same members' if same else 'MEMBERS DIFFER'}",
            flush=True,
        )
        if not same:
            sys.exit(f"{name}: the stores disagree")
    out["two_conditions_reads"] = event_reads(ch, rt, pid, definitions["two_conditions"], now, args)
    out["export"] = exports(rt, ch, pid, args)
    rt.stop()
    ch.close()
    return out


def event_reads(
    ch: Store, rt: Runtime, pid: int, d: Any, now: datetime, args: argparse.Namespace
) -> dict[str, float]:
    """The two-condition definition, compiled, over the store's events (each event id one row,
    de-duplicated before insert) against the same query over the two other exact reads of
    events: ``FINAL`` over a ``ReplacingMergeTree`` copy keyed by the event, and ``argMax``
    of each event id's rows. And a hand-written ClickHouse query of the same members."""
    query = rt.segments._compile(pid, d, now).query
    events = '"opencdp"."events" AS "e"'
    with ch._client() as c:  # type: ignore[attr-defined]
        c.command("DROP TABLE IF EXISTS opencdp.events_final")
        c.command(
            "CREATE TABLE opencdp.events_final AS opencdp.events "
            "ENGINE = ReplacingMergeTree(_version) PARTITION BY toYYYYMM(received_at) "
            "ORDER BY (project_id, event_name, user_id, event_time, event_id)"
        )
        c.command("INSERT INTO opencdp.events_final SELECT * FROM opencdp.events")
        sql = render(ch, c, pid, query)  # type: ignore[arg-type]
        columns = [r[0] for r in c.query("DESCRIBE TABLE opencdp.events").result_rows]
        latest = ", ".join(
            f"argMax({col}, _version) AS {col}" for col in columns if col != "event_id"
        )
        variants = {
            "deduplicated_before_insert": sql,
            "final": sql.replace(events, '"opencdp"."events_final" AS "e" FINAL'),
            "argmax": sql.replace(
                events,
                f"(SELECT event_id, {latest} FROM opencdp.events WHERE project_id = {pid} "
                'GROUP BY event_id) AS "e"',
            ),
            "handwritten": handwritten_two(rt, pid, now),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        counts: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, q in variants.items():
                t0 = time.perf_counter()
                counts[name] = len(c.query_arrow(q, settings=ch.scoped(pid)))  # type: ignore[attr-defined]
                times[name].append(time.perf_counter() - t0)
        c.command("DROP TABLE opencdp.events_final")
    if len(set(counts.values())) != 1:
        sys.exit(f"the reads of events disagree: {counts}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        "two conditions on ClickHouse, by how events are read: "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in med.items()),
        flush=True,
    )
    return med


def handwritten_two(rt: Runtime, pid: int, now: datetime) -> str:
    """The two-condition definition as one would write it for the store's tables by hand."""
    s = rt.catalog.schema(pid)
    lvl, city = s.user["user_level"].column, s.user["city"].column
    amount = s.event["amount"].column
    today = now.astimezone(rt.catalog.project(pid).tz).date()

    def utc(day_offset: int) -> str:
        tz = rt.catalog.project(pid).tz
        local = datetime.combine(today - timedelta(days=day_offset), datetime.min.time(), tz)
        return f"toDateTime64('{local.astimezone(UTC).replace(tzinfo=None)}', 6, 'UTC')"

    ev = f"opencdp.events WHERE project_id = {pid}"
    return (
        f"SELECT user_id FROM opencdp.profiles FINAL WHERE project_id = {pid} "
        f"AND {city} IN ('city1', 'city2', 'city3') AND {lvl} >= 3 AND (user_id IN "
        f"(SELECT user_id FROM {ev} AND event_name = 'pay' AND event_time >= {utc(7)} "
        f"AND event_time < {utc(-1)} GROUP BY user_id HAVING sum({amount}) > 300) "
        f"OR user_id IN (SELECT user_id FROM {ev} AND event_name = 'login' "
        f"AND event_time >= {utc(3)} AND event_time < {utc(-1)} GROUP BY user_id "
        "HAVING count() >= 3))"
    )


def exports(rt: Runtime, ch: Store, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Yesterday's ``custom_event`` export from each store (the export engine's own writing
    of gzip CSV parts), alternating."""
    project = rt.catalog.project(pid)
    yesterday = datetime.now(UTC).astimezone(project.tz).date() - timedelta(days=1)
    period = rt.exports.period(project, "day", yesterday.strftime("%Y%m%d"))
    export = rt.exports._claim(pid, period, "custom_event")
    duck_store = rt.exports.store
    times: dict[str, list[float]] = {"duckdb": [], "clickhouse": []}
    rows: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):
        for engine, store in (("duckdb", duck_store), ("clickhouse", ch)):
            rt.exports.store = store
            t0 = time.perf_counter()
            parts, rows[engine] = rt.exports._write(export)
            times[engine].append(time.perf_counter() - t0)
            sizes[engine] = sum(p.bytes for p in parts)
    rt.exports.store = duck_store
    if rows["duckdb"] != rows["clickhouse"]:
        sys.exit(f"the exports disagree: {rows}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"one-day export ({rows['duckdb']:,} events, {sizes['duckdb'] / 1e6:.1f} MB gzip): "
        f"DuckDB {med['duckdb']:.2f} s, ClickHouse {med['clickhouse']:.2f} s "
        f"(ratio {med['clickhouse'] / med['duckdb']:.2f})",
        flush=True,
    )
    return {"events": rows["duckdb"], "mb": sizes["duckdb"] / 1e6, **med}


# ---- 3: the HTTP refresh ----------------------------------------------------------------------
def serve(name: str, env: dict[str, str], data: Path = DATA) -> Server:
    port = free_port()
    return Server(
        [sys.executable, "-m", "opencdp", "serve", "--data-dir", str(data), "--port", str(port),
         "--log-level", "warning"],
        port,
        {"OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN, **env},
        OUT / f"clickhouse-{name}.log",
    )  # fmt: skip


def http_refresh(args: argparse.Namespace) -> dict[str, float]:
    """The two-condition definition refreshed over HTTP on a server over each store (the
    same metadata DB: one server at a time)."""
    rt = Runtime.open(Settings(data_dir=DATA, admin_token=ADMIN_TOKEN))
    project = rt.catalog.projects()[0]
    creds = rt.catalog.rotate_credentials(project.id)
    rt.stop()
    out: dict[str, float] = {}
    for engine, env in (("duckdb", {}), ("clickhouse", {"OPENCDP_STORE_URL": chdb_url()})):
        srv = serve(f"http-{engine}", env)
        try:
            http = httpx.Client(base_url=srv.url, timeout=600)
            q = {"token": creds.api_token, "projectId": project.id}
            name = f"two_{engine}"
            body = {"projectId": project.id, "clusterName": name, "displayName": name,
                    "qp": seg_bench.TWO}  # fmt: skip
            r = http.post("/open/user-cluster-add", params=q, json=body).json()
            assert r["return_code"] == 0, r
            times = []
            for _ in range(args.rounds):
                seg_bench.wait_done(http, q, name)
                t0 = time.perf_counter()
                r = http.post(
                    "/open/user-cluster-refresh-by-name", params={**q, "clusterName": name}
                )
                assert r.json()["return_code"] == 0, r.text
                detail = seg_bench.wait_done(http, q, name)
                times.append(time.perf_counter() - t0)
            out[engine] = statistics.median(times)
            out[f"{engine}_members"] = detail["usersNum"]
        finally:
            srv.stop()
    if out["duckdb_members"] != out["clickhouse_members"]:
        sys.exit(f"the refreshes disagree: {out}")
    print(
        f"refresh over HTTP (two conditions, {out['duckdb_members']:,} members): DuckDB "
        f"{out['duckdb']:.3f} s, ClickHouse {out['clickhouse']:.3f} s "
        f"(ratio {out['clickhouse'] / out['duckdb']:.2f})",
        flush=True,
    )
    return out


# ---- 4: the bulk import ----------------------------------------------------------------------
def imports(args: argparse.Namespace) -> dict[str, float]:
    work = WORK / "imports"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    csv_path = work / "profiles.csv"
    profiles_csv(csv_path, args.rows)
    big = {"OPENCDP_MARKETO_MAX_FILE_BYTES": str(1 << 30)}
    servers = {
        "duckdb": serve("import-duckdb", big, work / "duckdb"),
        "clickhouse": serve(
            "import-clickhouse",
            {"OPENCDP_STORE_URL": f"chdb://{work / 'chdb'}", **big},
            work / "clickhouse",
        ),
    }
    seconds: dict[str, list[float]] = {k: [] for k in servers}
    try:
        for n in range(args.rounds):
            for engine, srv in servers.items():
                s, _ = marketo_import(srv.url, f"{engine}{n}", csv_path, args.rows)
                seconds[engine].append(s)
                print(f"round {n + 1}: {engine} store {args.rows / s:,.0f} rows/s", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {
        "rows": args.rows,
        "duckdb_rows_per_s": args.rows / med["duckdb"],
        "clickhouse_rows_per_s": args.rows / med["clickhouse"],
        "ratio": med["duckdb"] / med["clickhouse"],
    }
    print(
        f"Marketo import of {args.rows:,} profiles: DuckDB store "
        f"{out['duckdb_rows_per_s']:,.0f} rows/s, ClickHouse store "
        f"{out['clickhouse_rows_per_s']:,.0f} rows/s (ratio {out['ratio']:.2f})",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["segments", "http", "imports"])
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    if args.measure:  # (in a process of its own: chdb's data path is one process's)
        (WORK / "measure.json").write_text(json.dumps(measure(args), default=str))
        return
    results: dict[str, Any] = {}
    if args.only in (None, "segments", "http"):
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        sizes = ["--users", str(args.users), "--events", str(args.events)]
        cmd = [sys.executable, "-m", "bench.clickhouse", "--measure", *sizes,
               "--rounds", str(args.rounds)]  # fmt: skip
        subprocess.run(cmd, check=True)
        results.update(json.loads((WORK / "measure.json").read_text()))
        if args.only != "segments":
            results["http_refresh"] = http_refresh(args)
    if args.only in (None, "imports"):
        results["import"] = imports(args)
    (OUT / "clickhouse.json").write_text(json.dumps(results, indent=2, default=str))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
