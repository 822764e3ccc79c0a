"""The shared engines against the embedded default (part of ``make bench``), in the same run on
the same machine, on a PostgreSQL 15 cluster started here (durable: fsync and synchronous
commit on) and moto's S3 server:

1. **Ingest**: the single-record import driven by wrk against one embedded server, then
   against two ``opencdp serve --no-workers`` processes (wrk on each, half the connections
   each) whose records an ``opencdp worker`` applies from the PostgreSQL queue; alternating
   rounds, ratio of the medians. Every acknowledged record is counted in each store.
2. **Segment refresh**: the four definitions of ``bench.segments`` on the same data set loaded
   into a DuckDB store and a PostgreSQL store, each run through ``Store.segment_rows`` (the
   refresh's query); alternating rounds, medians, and the member sets must be equal.
3. **Bulk import**: a profiles CSV through the Marketo surface into a server on the embedded
   store and one on the PostgreSQL store; alternating rounds.

    python -m bench.scaled [--duration 8] [--rounds 3] [--users 200000] [--events 4000000]
                           [--rows 200000] [--only ingest|segments|imports]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow.csv as pacsv

from bench import segments as seg_bench
from bench.imports import marketo_import, profiles_csv
from bench.ingest import ADMIN_TOKEN, IMPORT_PATH, OUT, Server, free_port, wrk
from opencdp.config import Settings
from opencdp.runtime import Runtime
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.store import open_store
from opencdp.store.base import Budget, Store
from opencdp.store.names import table

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BUDGET = Budget(seconds=3600.0, memory_bytes=4 << 30)


def cluster() -> Any:
    """A durable PostgreSQL cluster of the tests' kind (run as ``postgres``, loopback)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.engines import PostgresCluster

    return PostgresCluster(durable=True)


def serve(data: Path, env: dict[str, str], name: str, *extra: str) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "opencdp", "serve", "--data-dir", str(data), "--port",
            str(port), "--log-level", "warning", *extra]  # fmt: skip
    return Server(argv, port, {"OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN, **env}, OUT / f"{name}.log")


def project(url: str, name: str) -> dict[str, Any]:
    resp = httpx.post(url + "/admin/v1/projects", json={"name": name}, headers=AUTH)
    resp.raise_for_status()
    return dict(resp.json())


# ---- 1. ingest ------------------------------------------------------------------------------
def run_ingest(pg: Any, args: argparse.Namespace) -> dict[str, Any]:
    work = OUT / "scaled-ingest"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    database = pg.new_database()
    shared = {
        "OPENCDP_META_URL": database,
        "OPENCDP_STORE_URL": database,
        "OPENCDP_SECRET_KEY": "be" * 32,
        "OPENCDP_SERVE_WORKERS": "0",
    }
    embedded = serve(work / "embedded", {}, "scaled-embedded")
    servers = [serve(work / f"server{n}", shared, f"scaled-server{n}") for n in (1, 2)]
    worker_log = (OUT / "scaled-worker.log").open("wb")
    import subprocess

    worker = subprocess.Popen(
        [sys.executable, "-m", "opencdp", "worker", "--data-dir", str(work / "worker"),
         "--log-level", "warning"],
        env={**os.environ, "OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN, **shared},
        stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    one = project(embedded.url, "bench")
    two = project(servers[0].url, "bench")
    rounds: list[dict[str, float]] = []
    acked = {"embedded": 0, "shared": 0}
    half = argparse.Namespace(**{**vars(args), "connections": max(1, args.connections // 2),
                                 "threads": 1, "td_batch": 20})  # fmt: skip
    whole = argparse.Namespace(**{**vars(args), "threads": 2, "td_batch": 20})
    try:
        time.sleep(1.5)  # (the other server's catalog knows the new project)
        whole.path = f"{IMPORT_PATH}?secret={one['api_token']}"
        half.path = f"{IMPORT_PATH}?secret={two['api_token']}"
        acked["embedded"] += wrk(embedded.url, whole, "warm", 2)["acked"]
        acked["shared"] += sum(r["acked"] for r in _both(servers, half, "warm", 2))
        for n in range(args.rounds):
            e = wrk(embedded.url, whole, f"e{n}", args.duration)
            s = _both(servers, half, f"s{n}", args.duration)
            acked["embedded"] += e["acked"]
            acked["shared"] += sum(r["acked"] for r in s)
            shared_rate = sum(r["acked_per_s"] for r in s)
            rounds.append({"embedded": e["acked_per_s"], "shared": shared_rate})
            print(
                f"round {n + 1}: embedded {e['acked_per_s']:,.0f} acked/s "
                f"(p50 {e['p50_us'] / 1000:.1f} ms); two servers over PostgreSQL "
                f"{shared_rate:,.0f} acked/s (p50 {max(r['p50_us'] for r in s) / 1000:.1f} ms); "
                f"ratio {shared_rate / e['acked_per_s']:.2f}",
                flush=True,
            )
        # Wait until the worker has applied the queue, then count.
        deadline = time.monotonic() + 600
        while _stats(servers[1].url)["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for srv in (embedded, *servers):
            srv.stop()
        worker.terminate()
        worker.wait(120)
    stored = {
        "embedded": _events(open_store(f"duckdb:///{work / 'embedded' / 'store.duckdb'}"), one),
        "shared": _events(open_store(database), two),
    }
    out = {
        "rounds": rounds,
        "median_embedded_acked_per_s": statistics.median(r["embedded"] for r in rounds),
        "median_shared_acked_per_s": statistics.median(r["shared"] for r in rounds),
        "acked": acked,
        "stored": stored,
        "every_acked_record_stored": all(stored[k] >= acked[k] for k in acked),
    }
    out["ratio"] = out["median_shared_acked_per_s"] / out["median_embedded_acked_per_s"]
    print(
        f"ingest: embedded {out['median_embedded_acked_per_s']:,.0f} acked/s, two servers + a "
        f"worker over PostgreSQL {out['median_shared_acked_per_s']:,.0f} acked/s, ratio "
        f"{out['ratio']:.2f}; stored {stored} of acknowledged {acked}",
        flush=True,
    )
    return out


def _both(servers: list[Server], args: argparse.Namespace, prefix: str, duration: float) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(servers)) as pool:
        futures = [
            pool.submit(wrk, s.url, args, f"{prefix}-{n}", duration) for n, s in enumerate(servers)
        ]
        return [f.result() for f in futures]


def _stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/admin/v1/projects/bench/stats", headers=AUTH).json())


def _events(store: Store, info: dict[str, Any]) -> int:
    try:
        return store.counts(int(info["project_id"]))["events"]
    finally:
        store.close()


# ---- 2. segment refresh -----------------------------------------------------------------------
def load_postgres(pg_store: Store, duck: duckdb.DuckDBPyConnection, rt: Runtime, pid: int) -> None:
    """Copy the project's rows from the DuckDB store into the PostgreSQL store's tables, each
    row's properties as its ``props`` object."""
    schema = rt.catalog.schema(pid)
    user_props = [*schema.user.values()]
    event_props = [*schema.event.values()]
    with pg_store.writer() as w:
        w.ensure_project(pid)
        w.ensure_columns(pid, [*user_props, *event_props])
    profiles, identities, events = (table(pid, k) for k in ("profiles", "identities", "events"))

    def obj(props: list[Any]) -> str:
        return "json_object(" + ", ".join(f"'{p.id}', {p.column}" for p in props) + ")::VARCHAR"

    copies = [
        (profiles, f"SELECT user_id, created_at, updated_at, {obj(user_props)} FROM {profiles}"),
        (identities, f"SELECT key_id, value, user_id FROM {identities}"),
        (events, f"SELECT event_id, event_name, event_time, received_at, user_id, "
                 f"{obj(event_props)} FROM {events}"),
    ]  # fmt: skip
    options = pacsv.WriteOptions(include_header=False)
    with pg_store._connection() as conn:  # type: ignore[attr-defined]
        for tbl, select in copies:
            reader = duck.sql(select).to_arrow_reader(100_000)
            with conn.cursor() as cur, cur.copy(f"COPY {tbl} FROM STDIN (FORMAT csv)") as copy:
                for batch in reader:
                    buf = io.BytesIO()
                    pacsv.write_csv(batch, buf, options)
                    copy.write(buf.getbuffer())
            conn.commit()
        for tbl in (profiles, identities, events):
            conn.execute(f"ANALYZE {tbl}")
        conn.commit()


def run_segments(pg: Any, args: argparse.Namespace) -> dict[str, Any]:
    work = OUT / "scaled-segments"
    shutil.rmtree(work, ignore_errors=True)
    now = datetime.now(UTC)
    rt = Runtime.open(Settings(data_dir=work / "data", admin_token=ADMIN_TOKEN))
    pid = rt.catalog.create_project("bench")[0].id
    started = time.perf_counter()
    seg_bench.load(rt, pid, args.users, args.events, now)
    duck_load = time.perf_counter() - started
    pg_store = open_store(pg.new_database())
    started = time.perf_counter()
    with rt.store.writer() as w:
        load_postgres(pg_store, w._cur, rt, pid)  # type: ignore[attr-defined]
    pg_load = time.perf_counter() - started
    print(
        f"loaded {args.users:,} profiles and {args.events:,} events: DuckDB {duck_load:.1f} s, "
        f"then copied into PostgreSQL in {pg_load:.1f} s",
        flush=True,
    )
    definitions = {
        "seed": parse_cluster(seg_bench.SEED),
        "two_conditions": parse_cluster(seg_bench.TWO),
        "first_event_tag": parse_tag(seg_bench.FIRST),
        "metric_tag": parse_tag(seg_bench.METRIC),
    }
    out: dict[str, Any] = {"users": args.users, "events": args.events, "definitions": {}}
    try:
        for name, d in definitions.items():
            query = rt.segments._compile(pid, d, now).query
            times: dict[str, list[float]] = {"duckdb": [], "postgresql": []}
            members: dict[str, Any] = {}
            for _ in range(args.rounds):
                for engine, store in (("duckdb", rt.store), ("postgresql", pg_store)):
                    t0 = time.perf_counter()
                    rows = store.segment_rows(pid, query, BUDGET)
                    times[engine].append(time.perf_counter() - t0)
                    pairs = zip(
                        rows.column("user_id").to_pylist(),
                        rows.column("tag_value").to_pylist(),
                        strict=True,
                    )
                    members[engine] = sorted(pairs)
            same = _same(members["duckdb"], members["postgresql"])
            med = {k: statistics.median(v) for k, v in times.items()}
            out["definitions"][name] = {
                "members": len(members["duckdb"]),
                "duckdb_s": med["duckdb"],
                "postgresql_s": med["postgresql"],
                "ratio": med["postgresql"] / med["duckdb"],
                "same_members": same,
            }
            print(
                f"{name}: {len(members['duckdb']):,} members; "
                f"DuckDB {med['duckdb'] * 1000:.0f} ms, "
                f"PostgreSQL {med['postgresql'] * 1000:.0f} ms "
                f"(x{med['postgresql'] / med['duckdb']:.1f}); "
                f"{'same members' if same else 'MEMBERS DIFFER'}",
                flush=True,
            )
    finally:
        pg_store.close()
        rt.stop()
    return out


def _same(a: list[tuple[int, Any]], b: list[tuple[int, Any]]) -> bool:
    """The same members with the same tag values; a sum of doubles may differ in its last bits
    with the order the engine adds them in (both engines', and DuckDB's own across threads)."""

    def close(x: Any, y: Any) -> bool:
        if x == y:
            return True
        try:
            return math.isclose(float(x), float(y), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False

    return len(a) == len(b) and all(
        u == v and close(x, y) for (u, x), (v, y) in zip(a, b, strict=True)
    )


# ---- 3. bulk import ---------------------------------------------------------------------------
def run_imports(pg: Any, args: argparse.Namespace) -> dict[str, Any]:
    work = OUT / "scaled-imports"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    csv_path = work / "profiles.csv"
    profiles_csv(csv_path, args.rows)
    big = {"OPENCDP_MARKETO_MAX_FILE_BYTES": str(1 << 30)}
    embedded = serve(work / "embedded", big, "scaled-import-embedded")
    shared = serve(work / "shared", {"OPENCDP_STORE_URL": pg.new_database(), **big},
                   "scaled-import-postgres")  # fmt: skip
    seconds: dict[str, list[float]] = {"duckdb": [], "postgresql": []}
    try:
        for n in range(args.rounds):
            for engine, srv in (("duckdb", embedded), ("postgresql", shared)):
                s, _ = marketo_import(srv.url, f"{engine}{n}", csv_path, args.rows)
                seconds[engine].append(s)
                print(f"round {n + 1}: {engine} store {args.rows / s:,.0f} rows/s", flush=True)
    finally:
        embedded.stop()
        shared.stop()
    med = {k: statistics.median(v) for k, v in seconds.items()}
    out = {
        "rows": args.rows,
        "duckdb_rows_per_s": args.rows / med["duckdb"],
        "postgresql_rows_per_s": args.rows / med["postgresql"],
        "ratio": med["duckdb"] / med["postgresql"],
    }
    print(
        f"Marketo import of {args.rows:,} profiles: DuckDB store {out['duckdb_rows_per_s']:,.0f} "
        f"rows/s, PostgreSQL store {out['postgresql_rows_per_s']:,.0f} rows/s, ratio "
        f"{out['ratio']:.2f}",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--only", choices=["ingest", "segments", "imports"])
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None and args.only in (None, "ingest"):
        sys.exit("wrk is not installed (Debian package 'wrk'); `make bench` installs it")
    OUT.mkdir(exist_ok=True)
    pg = cluster()
    results: dict[str, Any] = {"command": "python -m bench.scaled", "cores": os.cpu_count()}
    try:
        for name, run in (("ingest", run_ingest), ("segments", run_segments),
                          ("imports", run_imports)):  # fmt: skip
            if args.only in (None, name):
                print(f"-- {name}", flush=True)
                results[name] = run(pg, args)
    finally:
        pg.remove()
    (OUT / "scaled.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"details: {OUT / 'scaled.json'}")
    ok = results.get("ingest", {}).get("every_acked_record_stored", True) and all(
        d["same_members"] for d in results.get("segments", {}).get("definitions", {}).values()
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
