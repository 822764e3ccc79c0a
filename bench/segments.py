"""Segment refresh (part of ``make bench``).

Loads 1,000,000 profiles and 20,000,000 events (a fixed, hash-derived data set: 20 event names
over 30 days, skewed activity, events in arrival order) into a project's tables, then for four
definitions — the seed's example, a two-event-condition OR with two user filters, a first-event
tag and a metric tag — times the compiled SQL against a hand-written DuckDB query computing the
same members (alternating rounds, same connection, each run to completion into a temporary
table; medians compared; the member sets must be equal). Then it starts the server on that
data and times a refresh of the two-condition definition requested over HTTP, from the request
to progress 100.

    python -m bench.segments [--users 1000000] [--events 20000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.ingest import ADMIN_TOKEN, OUT, Server, free_port
from opencdp.catalog.types import PropertyType
from opencdp.config import Settings
from opencdp.runtime import Runtime
from opencdp.segments.model import ClusterDef, TagDef, parse_cluster, parse_tag
from opencdp.store.duckdb import table
from opencdp.store.duckdb.segments import render

NAMES = ["consume_item", "pay", "login", "view_page", "share"] + [f"event_{i}" for i in range(15)]
CITIES = 50

SEED = {
    "events": [
        {"comparator": "greater", "eventName": "consume_item", "num": "4", "recentDay": "1-7",
         "taPropQuota": {"analysis": "TIMES"}}
    ],
    "filts": [{"columnName": "user_level", "comparator": "equal", "ftv": ["3"],
               "tableType": "user"}],
}  # fmt: skip
TWO = {
    "events": [
        {"eventName": "pay", "comparator": "greater", "num": "300", "recentDay": "0-7",
         "taPropQuota": {"analysis": "SUM", "quota": "amount"}},
        {"eventName": "login", "comparator": "greaterEqual", "num": "3", "recentDay": "0-3",
         "taPropQuota": {"analysis": "TIMES"}},
    ],
    "event_relation": "or",
    "filts": [
        {"columnName": "city", "comparator": "equal", "ftv": ["city1", "city2", "city3"]},
        {"columnName": "user_level", "comparator": "greaterEqual", "ftv": ["3"]},
    ],
    "relation": "and",
    "event_user_relation": "and",
}  # fmt: skip
FIRST = {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
    "calcPropVo": {"property": {"columnName": "os", "tableType": "event"}},
    "eventName": "pay", "isFirstEvent": True, "recentDay": "0-30",
}}}  # fmt: skip
METRIC = {"userTagConQuotaDef": {"userTagConQuotaEvent": {
    "quota": "amount", "analysis": "SUM", "eventName": "pay", "recentDay": "0-30",
}}}  # fmt: skip


def load(rt: Runtime, pid: int, users: int, events: int, now: datetime) -> dict[str, int]:
    """The data set, written with set-based SQL straight into the project's tables."""
    cat = rt.catalog
    cat.set_identity_keys(pid, ["mobile"])
    user = cat.ensure_properties(
        pid, "user", {"user_level": PropertyType.NUMBER, "city": PropertyType.STRING}
    )
    event = cat.ensure_properties(
        pid, "event", {"amount": PropertyType.NUMBER, "os": PropertyType.STRING}
    )
    mobile = cat.schema(pid).identity_keys["mobile"]
    level, city = user["user_level"].column, user["city"].column
    amount, os_ = event["amount"].column, event["os"].column
    profiles, identities, ev = (table(pid, k) for k in ("profiles", "identities", "events"))
    start = (now - timedelta(days=30)).astimezone(UTC).replace(tzinfo=None)
    span_us = 30 * 86_400_000_000
    names = "[" + ", ".join(f"'{n}'" for n in NAMES) + "]"
    with rt.store.writer() as w:
        w.ensure_project(pid)
        w.ensure_columns(pid, [*cat.schema(pid).user.values(), *cat.schema(pid).event.values()])
        cur = w._cur  # type: ignore[attr-defined]  # the benchmark loads through raw SQL
        cur.execute(
            f"INSERT INTO {profiles} (user_id, created_at, updated_at, {mobile.column}, "
            f"{level}, {city}) SELECT i, TIMESTAMP '{start}', TIMESTAMP '{start}', "
            f"'1' || lpad(i::VARCHAR, 10, '0'), 1 + hash(i, 1) % 5, "
            f"'city' || (hash(i, 2) % {CITIES}) FROM range(1, {users + 1}) t(i)"
        )
        cur.execute(
            f"INSERT INTO {identities} SELECT {mobile.id}, '1' || lpad(i::VARCHAR, 10, '0'), i "
            f"FROM range(1, {users + 1}) t(i)"
        )
        # Skewed: a few users and a few names make most events; times follow arrival order.
        cur.execute(
            f"INSERT INTO {ev} (event_id, event_name, event_time, received_at, user_id, "
            f"{amount}, {os_}) SELECT 'e' || i, "
            f"{names}[1 + floor(pow((hash(i, 3) % 1000000) / 1e6, 2) * {len(NAMES)})::INT], "
            f"TIMESTAMP '{start}' + to_microseconds((i::HUGEINT * {span_us} // {events})::BIGINT), "
            f"TIMESTAMP '{start}' + to_microseconds((i::HUGEINT * {span_us} // {events})::BIGINT), "
            f"1 + floor(pow((hash(i, 4) % 1000000) / 1e6, 3) * {users})::BIGINT, "
            f"(hash(i, 5) % 20000) / 100.0, "
            "['android', 'ios', 'web'][(1 + hash(i, 6) % 3)::BIGINT] "
            f"FROM range(0, {events}) t(i)"
        )
    return {"users": users, "events": events}


def handwritten(pid: int, rt: Runtime, now: datetime) -> dict[str, str]:
    """What one would write by hand for each definition (same windows, same meaning)."""
    s = rt.catalog.schema(pid)
    lvl, city = s.user["user_level"].column, s.user["city"].column
    amount, os_ = s.event["amount"].column, s.event["os"].column
    profiles, ev = table(pid, "profiles"), table(pid, "events")
    tz = rt.catalog.project(pid).tz
    today = now.astimezone(tz).date()

    def utc(day_offset: int) -> str:
        local = datetime.combine(today - timedelta(days=day_offset), datetime.min.time(), tz)
        return f"TIMESTAMP '{local.astimezone(UTC).replace(tzinfo=None)}'"

    return {
        "seed": (
            f"SELECT user_id FROM {profiles} WHERE {lvl} = 3 AND user_id IN ("
            f"SELECT user_id FROM {ev} WHERE event_name = 'consume_item' AND event_time >= "
            f"{utc(7)} AND event_time < {utc(0)} GROUP BY user_id HAVING count(*) > 4)"
        ),
        "two_conditions": (
            f"SELECT user_id FROM {profiles} WHERE {city} IN ('city1', 'city2', 'city3') "
            f"AND {lvl} >= 3 AND (user_id IN (SELECT user_id FROM {ev} WHERE event_name = 'pay' "
            f"AND event_time >= {utc(7)} AND event_time < {utc(-1)} GROUP BY user_id "
            f"HAVING sum({amount}) > 300) OR user_id IN (SELECT user_id FROM {ev} "
            f"WHERE event_name = 'login' AND event_time >= {utc(3)} AND event_time < {utc(-1)} "
            "GROUP BY user_id HAVING count(*) >= 3))"
        ),
        "first_event_tag": (
            f"SELECT user_id, arg_min({os_}, (event_time, event_id)) FROM {ev} "
            f"WHERE event_name = 'pay' AND event_time >= {utc(30)} AND event_time < {utc(-1)} "
            f"GROUP BY user_id HAVING arg_min({os_}, (event_time, event_id)) IS NOT NULL"
        ),
        "metric_tag": (
            f"SELECT user_id, sum({amount}) FROM {ev} WHERE event_name = 'pay' "
            f"AND event_time >= {utc(30)} AND event_time < {utc(-1)} GROUP BY user_id"
        ),
    }


def two_conditions_sql(tz: Any, now: datetime) -> str:
    """The two-condition definition as a user would write it as a SQL segment."""
    today = now.astimezone(tz).date()

    def utc(day_offset: int) -> str:
        local = datetime.combine(today - timedelta(days=day_offset), datetime.min.time(), tz)
        return f"TIMESTAMP '{local.astimezone(UTC).replace(tzinfo=None)}'"

    return (
        "SELECT user_id FROM users WHERE city IN ('city1', 'city2', 'city3') AND user_level >= 3 "
        "AND (user_id IN (SELECT user_id FROM events WHERE event_name = 'pay' AND event_time >= "
        f"{utc(7)} AND event_time < {utc(-1)} GROUP BY user_id HAVING sum(amount) > 300) OR "
        "user_id IN (SELECT user_id FROM events WHERE event_name = 'login' AND event_time >= "
        f"{utc(3)} AND event_time < {utc(-1)} GROUP BY user_id HAVING count(*) >= 3))"
    )


def compiled(pid: int, rt: Runtime, now: datetime) -> dict[str, str]:
    """The compiled definitions, rendered as the DuckDB store renders them."""
    seg = rt.segments

    def sql(d: ClusterDef | TagDef) -> str:
        return render(pid, seg._compile(pid, d, now).query)

    return {
        "seed": sql(parse_cluster(SEED)),
        "two_conditions": sql(parse_cluster(TWO)),
        "first_event_tag": sql(parse_tag(FIRST)),
        "metric_tag": sql(parse_tag(METRIC)),
    }


def timed(cur: Any, sql: str) -> tuple[float, set[Any]]:
    """Run ``sql`` to completion inside DuckDB (into a temporary table, as a refresh writes its
    members into the store, not to Python); then read its user ids for the comparison."""
    started = time.perf_counter()
    cur.execute(f"CREATE OR REPLACE TEMP TABLE _bench AS {sql}")
    seconds = time.perf_counter() - started
    ids = {r[0] for r in cur.execute("SELECT * FROM _bench").fetchall()}
    return seconds, ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    work = OUT / "segments"
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    results: dict[str, Any] = {"users": args.users, "events": args.events, "rounds": args.rounds}
    now = datetime.now(UTC)

    rt = Runtime.open(Settings(data_dir=data, admin_token=ADMIN_TOKEN))
    project, creds = rt.catalog.create_project("bench")
    pid = project.id
    started = time.perf_counter()
    load(rt, pid, args.users, args.events, now)
    results["load_seconds"] = round(time.perf_counter() - started, 1)
    print(
        f"loaded {args.users:,} profiles and {args.events:,} events in {results['load_seconds']} s",
        flush=True,
    )
    hand, ours = handwritten(pid, rt, now), compiled(pid, rt, now)
    with rt.store._read() as cur:  # type: ignore[attr-defined]
        for name in hand:
            t_hand, t_ours = [], []
            for _ in range(args.rounds):
                th, members_hand = timed(cur, hand[name])
                to, members_ours = timed(cur, ours[name])
                t_hand.append(th)
                t_ours.append(to)
            if members_hand != members_ours:
                sys.exit(f"{name}: the compiled SQL and the hand-written query disagree")
            h, o = statistics.median(t_hand), statistics.median(t_ours)
            results[name] = {
                "members": len(members_ours),
                "compiled_s": round(o, 3),
                "handwritten_s": round(h, 3),
                "ratio": round(o / h, 2),
            }
            print(
                f"{name}: {len(members_ours):,} members; compiled {o:.3f} s, hand-written "
                f"{h:.3f} s (median of {args.rounds}); ratio {o / h:.2f} (target <= 1.5)",
                flush=True,
            )
    rt_tz = rt.catalog.project(pid).tz
    rt.store.close()

    port = free_port()
    srv = Server(
        [sys.executable, "-m", "opencdp", "serve", "--data-dir", str(data), "--port", str(port),
         "--log-level", "warning"],
        port,
        {"OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN},
        OUT / "segments-server.log",
    )  # fmt: skip
    try:
        http = httpx.Client(base_url=srv.url, timeout=120)
        q = {"token": creds.api_token, "projectId": pid}
        body = {"projectId": pid, "clusterName": "two", "displayName": "two", "qp": TWO}
        r = http.post("/open/user-cluster-add", params=q, json=body).json()
        assert r["return_code"] == 0, r
        times = []
        for _ in range(args.rounds):
            wait_done(http, q, "two")
            started = time.perf_counter()
            r = http.post("/open/user-cluster-refresh-by-name", params={**q, "clusterName": "two"})
            assert r.json()["return_code"] == 0, r.text
            detail = wait_done(http, q, "two")
            times.append(time.perf_counter() - started)
        refresh = statistics.median(times)
        results["http_refresh_two_conditions_s"] = round(refresh, 3)
        results["http_refresh_users"] = detail["usersNum"]
        print(
            f"refresh over HTTP (two conditions, {detail['usersNum']:,} members): median "
            f"{refresh:.3f} s to progress 100 over {args.rounds} refreshes (target <= 2 s); "
            f"server peak RSS {srv.peak_rss_mb():.0f} MB",
            flush=True,
        )
        # The same members as a SQL cluster: it runs in the sandbox process, on the columns
        # it names, copied out of the store for it.
        sql = {"sql": two_conditions_sql(rt_tz, now)}
        body = {"projectId": pid, "clusterName": "two_sql", "displayName": "two_sql",
                "clusterType": "cluster_by_static_sql", "qp": sql}  # fmt: skip
        r = http.post("/open/user-cluster-add", params=q, json=body).json()
        assert r["return_code"] == 0, r
        sql_times = []
        for _ in range(args.rounds):
            wait_done(http, q, "two_sql")
            started = time.perf_counter()
            r = http.post(
                "/open/user-cluster-refresh-by-name", params={**q, "clusterName": "two_sql"}
            )
            assert r.json()["return_code"] == 0, r.text
            sql_detail = wait_done(http, q, "two_sql")
            sql_times.append(time.perf_counter() - started)
        if sql_detail["usersNum"] != detail["usersNum"]:
            sys.exit("the SQL cluster and the compiled one disagree")
        sql_refresh = statistics.median(sql_times)
        results["http_refresh_two_conditions_sql_s"] = round(sql_refresh, 3)
        results["sql_vs_compiled_ratio"] = round(sql_refresh / refresh, 1)
        print(
            f"refresh over HTTP of the same as a SQL cluster (sandboxed): median "
            f"{sql_refresh:.3f} s, {sql_refresh / refresh:.1f}x the compiled refresh",
            flush=True,
        )
    finally:
        srv.stop()
    (OUT / "segments.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)


def wait_done(http: httpx.Client, q: dict[str, Any], name: str) -> dict[str, Any]:
    while True:
        r = http.get("/open/user-cluster-detail", params={**q, "clusterName": name}).json()
        assert r["return_code"] == 0, r
        if r["data"]["progress"] == 100:
            return dict(r["data"])
        if r["data"]["progress"] == -1:
            sys.exit(f"refresh failed: {r['data'].get('errorMsg')}")
        time.sleep(0.01)


if __name__ == "__main__":
    main()
