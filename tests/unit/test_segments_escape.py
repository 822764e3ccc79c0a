"""SQL segments cannot reach outside their project, and cannot exhaust the server.

Two walls, each tested on its own:
- the check (:mod:`opencdp.segments.sqlcheck`) refuses, with the reason, every query that
  names anything but ``users``, ``events`` and the WITH queries visible where it is named,
  resolved with SQL's scoping (a CTE of one subquery is not visible in another), in any
  quoting or case, and refuses files, table functions, catalogs and statements;
- the sandbox process the query runs in holds only the project's own columns: a query that
  slips past the check (here: handed to the sandbox directly) finds nothing else there, no
  file, no setting it can change.
Resource bombs end at the segment budget, with an error that names it. Legitimate SQL
segments still give exactly the right members.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlglot

from opencdp.config import Settings
from opencdp.errors import CdpError, Code
from opencdp.ingest.records import build_record
from opencdp.runtime import Runtime
from opencdp.segments.service import CLUSTER, Segment, SegmentKind, Spec
from opencdp.segments.sqlcheck import SqlSegment
from opencdp.store.base import Budget, OverBudget, QueryError

SMALL = Budget(seconds=3.0, memory_bytes=256 << 20)
PEOPLE = 24
WHEN = {"create_time": "2024-01-02 03:04:05"}


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("escape") / "data",
        job_workers=0,
        segment_timeout=SMALL.seconds,
        segment_memory_bytes=SMALL.memory_bytes,
    )
    runtime = Runtime.open(settings)
    runtime.start(announce=False)
    yield runtime
    runtime.stop()


def send(rt: Runtime, pid: int, doc: dict[str, Any]) -> None:
    record = build_record(
        doc, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits,
        time.time_ns() // 1000,
        lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
    )  # fmt: skip
    rt.ingest.submit_wait(record)


def person(i: int) -> dict[str, Any]:
    return {
        "mobile": f"139{i:08d}",
        "city": "Paris" if i % 3 == 0 else "Rome",
        "level": i % 5,
        "#vip level": i % 4 == 0,
        "城市": "北京" if i % 2 else "上海",
    }


def pays(i: int) -> list[float]:
    return [float(i + k) for k in range(i % 4)]


@pytest.fixture(scope="module")
def projects(rt: Runtime) -> tuple[int, int]:
    """(victim, attacker): the victim holds secrets; the attacker holds ordinary people."""
    victim, _ = rt.catalog.create_project("victim")
    attacker, _ = rt.catalog.create_project("attacker")
    for i in range(10):
        send(rt, victim.id, {"type": "user", "properties": {"mobile": f"1{i:010d}", "secret": "S"}})
    for i in range(PEOPLE):
        send(rt, attacker.id, {"type": "user", "properties": person(i)})
        for k, amount in enumerate(pays(i)):
            props = {"mobile": f"139{i:08d}", "event_id": f"pay-{i}-{k}", "amount": amount, **WHEN}
            send(rt, attacker.id, {"type": "event", "event": "pay", "properties": props})
        if i % 2:
            props = {"mobile": f"139{i:08d}", "event_id": f"view-{i}", **WHEN}
            send(rt, attacker.id, {"type": "event", "event": "view", "properties": props})
    assert rt.ingest.barrier()
    return victim.id, attacker.id


def uid(rt: Runtime, pid: int, i: int) -> int:
    key = rt.catalog.schema(pid).identity_keys["mobile"]
    found = rt.store.find_user(pid, (key.id, f"139{i:08d}"))
    assert found is not None
    return found


_n = iter(range(1, 1_000_000))


def create(rt: Runtime, pid: int, sql: str, tag: bool = False) -> str:
    name = f"s{next(_n)}"
    kind = SegmentKind.TAG_SQL if tag else SegmentKind.CLUSTER_SQL
    spec = Spec(name=name, display_name=name, kind=kind, definition={"sql": sql})
    rt.segments.create(pid, spec, "test")
    seg = refreshed(rt, pid, name)
    assert seg.progress == 100, seg.message
    return name


def refreshed(rt: Runtime, pid: int, name: str) -> Segment:
    """Run the segment's queued refresh job here (the runtime has no job workers)."""
    seg = rt.segments.get(pid, name)
    assert seg.job_id is not None
    rt.jobs.run(rt.jobs.get(pid, seg.job_id), None)
    return rt.segments.get(pid, name)


def members(rt: Runtime, pid: int, name: str) -> dict[int, str | None]:
    return dict(rt.segments.members(pid, name, limit=10_000)[1])


# ---- wall one: the check ----------------------------------------------------------------
V = "p{victim}"  # the victim's physical tables, filled in per test

HOSTILE = [
    # Scopes: a CTE is visible only in its own query.
    "(WITH {v}_profiles AS (SELECT user_id FROM users) SELECT user_id FROM {v}_profiles) "
    "UNION ALL SELECT user_id FROM {v}_profiles",
    "SELECT user_id FROM users WHERE user_id IN (WITH {v}_profiles AS (SELECT 1 AS user_id) "
    "SELECT user_id FROM {v}_profiles) OR user_id IN (SELECT user_id FROM {v}_profiles)",
    "SELECT (WITH x AS (SELECT 1) SELECT count(*) FROM x), user_id FROM {v}_profiles",
    "WITH a AS (WITH {v}_events AS (SELECT 1 AS user_id) SELECT * FROM {v}_events) "
    "SELECT user_id FROM {v}_events",
    "SELECT user_id FROM (SELECT user_id FROM (WITH t AS (SELECT 1 AS user_id) SELECT * FROM t)"
    " AS q) AS r WHERE user_id IN (SELECT user_id FROM t)",
    "WITH users AS (SELECT user_id FROM {v}_profiles) SELECT user_id FROM users",
    "WITH events AS (SELECT user_id FROM {v}_events) SELECT user_id FROM events",
    "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r) SELECT n FROM r, users",
    # Subqueries, joins and set operations reaching the victim.
    "SELECT user_id FROM users WHERE (SELECT count(*) FROM {v}_profiles) > 0",
    "SELECT user_id FROM users WHERE EXISTS (SELECT 1 FROM {v}_profiles)",
    "SELECT user_id FROM users WHERE user_id IN (SELECT user_id FROM {v}_profiles)",
    "SELECT u.user_id FROM users u JOIN {v}_profiles p ON p.user_id = u.user_id",
    "SELECT u.user_id FROM users u, LATERAL (SELECT * FROM {v}_profiles) x",
    "SELECT user_id FROM users UNION SELECT user_id FROM {v}_profiles",
    "SELECT user_id FROM users INTERSECT SELECT user_id FROM {v}_identities",
    "SELECT user_id FROM users EXCEPT SELECT user_id FROM {v}_events",
    "SELECT user_id FROM users WHERE user_id = ANY(SELECT user_id FROM {v}_profiles)",
    "SELECT user_id FROM users WHERE 1 IN (FROM {v}_profiles)",
    # Quoting and case.
    'SELECT user_id FROM "{V}_PROFILES"',
    "SELECT user_id FROM {V}_Profiles",
    'SELECT user_id FROM "{v}_profiles"',
    "SELECT user_id FROM main.{v}_profiles",
    'SELECT user_id FROM "main"."{v}_profiles"',
    "SELECT user_id FROM store.main.{v}_profiles",
    "SELECT user_id FROM memory.main.users",
    "SELECT user_id FROM system.main.users",
    # Files as tables, and file-reading functions.
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'data/store.duckdb'",
    "SELECT * FROM 'data/meta.db'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('data/dead-letter.jsonl')",
    "SELECT * FROM read_parquet('data/exports/*/*/*.parquet')",
    "SELECT * FROM read_json_auto('data/log/*.log')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('data/*')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT user_id FROM users WHERE user_id IN (SELECT 1 FROM 'data/secret.key')",
    # Catalogs, internal tables and engine functions.
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pragma_table_info('{v}_profiles')",
    "SELECT * FROM _opencdp_state",
    "SELECT * FROM _opencdp_user_ids",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM query('SELECT * FROM {v}_profiles')",
    "SELECT * FROM query_table('{v}_profiles')",
    "SELECT user_id FROM users WHERE current_setting('memory_limit') IS NOT NULL",
    "SELECT user_id, getenv('HOME') FROM users",
    "SELECT * FROM range(10)",
    "SELECT * FROM generate_series(1, 100000000)",
    "SELECT * FROM users, unnest([1, 2]) AS t(x)",
    # Statements that are not a query.
    "DROP TABLE users",
    "SELECT user_id FROM users; SELECT user_id FROM {v}_profiles",
    "ATTACH 'data/store.duckdb' AS s",
    "COPY (SELECT * FROM users) TO '/tmp/out.csv'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "PRAGMA database_list",
    "CREATE TABLE x AS SELECT * FROM users",
    "INSERT INTO users SELECT * FROM {v}_profiles",
    "EXPORT DATABASE '/tmp/x'",
    "SELECT 1",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_queries_are_refused_with_the_reason(
    rt: Runtime, projects: tuple[int, int], template: str
) -> None:
    victim, attacker = projects
    sql = template.format(v=f"p{victim}", V=f"P{victim}")
    for tag in (False, True):
        before = rt.segments.search(attacker)[1]
        with pytest.raises(CdpError) as err:
            create(rt, attacker, sql, tag)
        assert err.value.code is Code.VALIDATION_FAILED, err.value
        assert err.value.message.startswith("sql: ") and len(err.value.message) > 10
        assert rt.segments.search(attacker)[1] == before  # nothing was created
        with pytest.raises(CdpError):
            rt.segments.preview(attacker, CLUSTER, SegmentKind.CLUSTER_SQL, {"sql": sql})
    assert rt.store.counts(victim)["profiles"] == 10  # and the victim is untouched


def test_the_hostile_list_is_long_enough() -> None:
    assert len(HOSTILE) >= 40


# ---- wall two: the sandbox, handed queries the check would refuse --------------------------
def sandboxed(rt: Runtime, pid: int, sql: str, mode: str = "members") -> Any:
    rt.segments._ensure_columns(pid)
    seg = SqlSegment(sql, 2, frozenset({"users", "events"}), None)
    return rt.segments.sandbox.run(pid, rt.catalog.schema(pid), seg, mode, SMALL)  # type: ignore[arg-type]


def seen(rt: Runtime, pid: int, expression: str) -> str | None:
    """What ``expression`` evaluates to inside the sandbox (as one member's tag value)."""
    rows = sandboxed(rt, pid, f"SELECT min(user_id), ({expression})::VARCHAR FROM users")
    assert isinstance(rows, pa.Table) and rows.num_rows == 1
    return rows.column("tag_value")[0].as_py()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT user_id, 'x' FROM {v}_profiles",
        "SELECT user_id, 'x' FROM main.{v}_profiles",
        "SELECT user_id, 'x' FROM store.main.{v}_profiles",
        "SELECT user_id, 'x' FROM _opencdp_state",
        "SELECT user_id, 'x' FROM _opencdp_user_ids",
        "SELECT 1, content FROM read_text('/etc/hostname')",
        "SELECT 1, 'x' FROM read_csv('{data}/dead-letter.jsonl')",
        "SELECT 1, 'x' FROM '{data}/store.duckdb'",
        "SELECT 1, 'x' FROM glob('{data}/*')",
        "SELECT 1, x FROM query('SELECT 1 AS x FROM {v}_profiles')",
        "SELECT 1, 'x' FROM (SELECT 1) WHERE (SELECT count(*) FROM {v}_events) > 0",
    ],
)
def test_the_sandbox_has_nothing_else_to_read(
    rt: Runtime, projects: tuple[int, int], sql: str
) -> None:
    victim, attacker = projects
    text = sql.format(v=f"p{victim}", data=rt.settings.data_dir.resolve())
    with pytest.raises(QueryError) as err:
        sandboxed(rt, attacker, text)
    message = str(err.value)
    assert "does not exist" in message or "disabled by configuration" in message, message


def test_the_sandbox_sees_only_this_projects_tables_and_no_files(
    rt: Runtime, projects: tuple[int, int]
) -> None:
    _, attacker = projects
    assert seen(rt, attacker, "SELECT string_agg(table_name, ',') FROM duckdb_tables()") is None
    views = "SELECT string_agg(view_name, ',' ORDER BY view_name) FROM duckdb_views() "
    assert seen(rt, attacker, views + "WHERE NOT internal") == "events,users"
    paths = "SELECT string_agg(coalesce(path, ''), ',') FROM duckdb_databases()"
    assert seen(rt, attacker, paths) == ",,"  # in-memory databases only
    assert seen(rt, attacker, "current_setting('enable_external_access')") == "false"
    assert seen(rt, attacker, "current_setting('lock_configuration')") == "true"


def test_the_sandbox_holds_only_the_columns_the_query_names(
    rt: Runtime, projects: tuple[int, int]
) -> None:
    _, attacker = projects
    rt.segments._ensure_columns(attacker)
    seg = SqlSegment(
        "SELECT user_id, (SELECT string_agg(column_name, ',' ORDER BY column_name) "
        "FROM duckdb_columns() WHERE table_name = 'users') FROM users",
        2,
        frozenset({"users"}),
        frozenset({"user_id", "city"}),
    )
    rows = rt.segments.sandbox.run(attacker, rt.catalog.schema(attacker), seg, "members", SMALL)
    assert isinstance(rows, pa.Table)
    assert set(rows.column("tag_value").to_pylist()) == {"city,user_id"}


def test_a_run_leaves_nothing_behind(rt: Runtime, projects: tuple[int, int]) -> None:
    _, attacker = projects
    sandboxed(rt, attacker, "SELECT user_id, city FROM users")
    folder = rt.segments.sandbox.folder
    assert list(folder.glob("q-*")) == []
    assert folder.stat().st_mode & 0o077 == 0  # private to the server's user


# ---- budgets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT user_id FROM users WHERE user_id IN (SELECT unnest(generate_series(1, 100000000)))",
        "SELECT user_id FROM users WHERE length(repeat('x', 2000000000)) > 0",
        "SELECT user_id FROM users WHERE user_id IN "
        "(SELECT count(*) FROM (SELECT list(x) FROM (SELECT unnest(range(60000000)) AS x)))",
    ],
)
def test_a_memory_bomb_ends_at_the_memory_budget(
    rt: Runtime, projects: tuple[int, int], sql: str
) -> None:
    _, attacker = projects
    with pytest.raises(CdpError) as err:
        rt.segments.preview(attacker, CLUSTER, SegmentKind.CLUSTER_SQL, {"sql": sql})
    assert err.value.code is Code.LIMIT_EXCEEDED
    assert "memory budget of 256 MiB" in err.value.message, err.value.message


def test_a_time_bomb_ends_at_the_time_budget_and_fails_its_refresh(
    rt: Runtime, projects: tuple[int, int]
) -> None:
    _, attacker = projects
    sql = (  # some 10^10 rows, each looked at: far more than 3 s of work
        "SELECT a.user_id FROM events a, events b, events c, events d, events e, events f "
        "WHERE a.event_id || b.event_id || c.event_id || d.event_id || e.event_id "
        "|| f.event_id = 'x'"
    )
    spec = Spec(
        name="slow", display_name="slow", kind=SegmentKind.CLUSTER_SQL, definition={"sql": sql}
    )
    rt.segments.create(attacker, spec, "test")  # an empty check binds at once
    seg = refreshed(rt, attacker, "slow")
    assert seg.progress == -1
    assert seg.job_id is not None and rt.jobs.get(attacker, seg.job_id).state == "failed"
    assert "time budget of 3 s (OPENCDP_SEGMENT_TIMEOUT)" in seg.message, seg.message


def test_compiled_queries_have_a_time_budget(
    rt: Runtime, projects: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, attacker = projects
    monkeypatch.setattr(rt.segments, "budget", Budget(seconds=1e-6, memory_bytes=1 << 30))
    qp = {"filts": [{"columnName": "city", "comparator": "equal", "ftv": ["Paris"]}]}
    with pytest.raises(CdpError) as err:
        rt.segments.preview(attacker, CLUSTER, None, qp)
    assert err.value.code is Code.LIMIT_EXCEEDED and "time budget" in err.value.message
    rt.segments.create(attacker, Spec(name="paris_t", display_name="p", definition=qp), "test")
    seg = refreshed(rt, attacker, "paris_t")
    assert seg.progress == -1 and "time budget" in seg.message


def test_the_store_watchdog_stops_a_query_over_its_memory_budget(
    rt: Runtime, projects: tuple[int, int]
) -> None:
    _, attacker = projects
    heavy = sqlglot.parse_one(  # a query tree as the compiler hands the store one
        "SELECT k AS user_id, NULL AS tag_value FROM (SELECT g % 1000003 AS k, count(*) "
        "FROM UNNEST(generate_series(1, 5000000)) AS t(g) GROUP BY k)",
        read="duckdb",
    )
    assert isinstance(heavy, sqlglot.exp.Select)
    with pytest.raises(OverBudget) as err:
        rt.store.segment_rows(attacker, heavy, Budget(seconds=600, memory_bytes=1 << 20))
    assert err.value.resource == "memory"
    # The same query within a budget that fits it runs to the end.
    rows = rt.store.segment_rows(attacker, heavy, Budget(seconds=600, memory_bytes=8 << 30))
    assert rows.num_rows == 1000003


# ---- legitimate SQL segments ----------------------------------------------------------------
def expected(rt: Runtime, pid: int, keep: Any) -> set[int]:
    return {uid(rt, pid, i) for i in range(PEOPLE) if keep(i)}


LEGIT: list[tuple[str, Any]] = [
    ("SELECT user_id FROM users WHERE city = 'Paris'", lambda i: i % 3 == 0),
    ("SELECT user_id FROM USERS WHERE City = 'Paris' AND level >= 2",
     lambda i: i % 3 == 0 and i % 5 >= 2),
    ('SELECT user_id FROM "Users" WHERE "#VIP LEVEL"', lambda i: i % 4 == 0),
    ("SELECT user_id FROM users WHERE 城市 = '北京'", lambda i: i % 2 == 1),
    ("SELECT user_id FROM events WHERE event_name = 'pay' GROUP BY 1 HAVING sum(amount) > 30",
     lambda i: sum(pays(i)) > 30),
    ("WITH big AS (SELECT user_id, sum(amount) AS s FROM events GROUP BY 1), "
     "rich AS (SELECT user_id FROM big WHERE s > 20) "
     "SELECT user_id FROM rich WHERE user_id IN (SELECT user_id FROM users WHERE level < 4)",
     lambda i: sum(pays(i)) > 20 and i % 5 < 4),
    ("SELECT user_id FROM events WHERE event_name = 'view' "
     "UNION SELECT user_id FROM users WHERE city = 'Paris'",
     lambda i: i % 2 == 1 or i % 3 == 0),
    ("SELECT user_id FROM events WHERE event_name = 'pay' "
     "EXCEPT SELECT user_id FROM events WHERE event_name = 'view'",
     lambda i: len(pays(i)) > 0 and i % 2 == 0),
    ("SELECT u.user_id FROM users u WHERE EXISTS "
     "(SELECT 1 FROM events e WHERE e.user_id = u.user_id AND e.amount >= 20)",
     lambda i: any(a >= 20 for a in pays(i))),
    ("SELECT user_id FROM (SELECT user_id, row_number() OVER (PARTITION BY user_id "
     "ORDER BY event_id) AS n FROM events WHERE event_name = 'pay') WHERE n = 3",
     lambda i: len(pays(i)) >= 3),
    ("SELECT u.user_id FROM users u JOIN events e USING (user_id) "
     "WHERE u.city = 'Rome' AND e.event_name = 'view'",
     lambda i: i % 3 != 0 and i % 2 == 1),
    ("(WITH x AS (SELECT user_id FROM users WHERE level = 1) SELECT * FROM x) "
     "UNION ALL (WITH x AS (SELECT user_id FROM users WHERE level = 2) SELECT * FROM x)",
     lambda i: i % 5 in (1, 2)),
    ("SELECT * FROM users WHERE level = 0", lambda i: i % 5 == 0),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "keep"), LEGIT)
def test_legitimate_sql_segments_give_exactly_the_right_members(
    rt: Runtime, projects: tuple[int, int], sql: str, keep: Any
) -> None:
    _, attacker = projects
    name = create(rt, attacker, sql)
    assert set(members(rt, attacker, name)) == expected(rt, attacker, keep)
    preview = rt.segments.preview(attacker, CLUSTER, SegmentKind.CLUSTER_SQL, {"sql": sql})
    assert preview == len(expected(rt, attacker, keep))


def test_sql_tags_give_one_value_per_member(rt: Runtime, projects: tuple[int, int]) -> None:
    _, attacker = projects
    name = create(rt, attacker, "SELECT user_id, city FROM users WHERE level > 2", tag=True)
    want = {uid(rt, attacker, i): person(i)["city"] for i in range(PEOPLE) if i % 5 > 2}
    assert members(rt, attacker, name) == want
    # Several values for one user: the least is kept.
    name = create(rt, attacker, "SELECT user_id, amount FROM events WHERE event_name = 'pay'", True)
    want2 = {uid(rt, attacker, i): min(str(a) for a in pays(i)) for i in range(PEOPLE) if pays(i)}
    assert members(rt, attacker, name) == want2


def test_a_query_that_does_not_bind_is_refused_at_once_with_the_engines_reason(
    rt: Runtime, projects: tuple[int, int]
) -> None:
    _, attacker = projects
    with pytest.raises(CdpError) as err:
        create(rt, attacker, "SELECT user_id FROM users WHERE nosuchcolumn = 1")
    assert err.value.code is Code.VALIDATION_FAILED
    assert "nosuchcolumn" in err.value.message
    # A property of the victim's is no column here either.
    with pytest.raises(CdpError) as err:
        create(rt, attacker, "SELECT user_id FROM users WHERE secret = 'S'")
    assert "secret" in err.value.message


def test_settings_name_the_budgets(tmp_path: Path) -> None:
    settings = replace(Settings(), segment_timeout=7.5, segment_memory_bytes=123 << 20)
    rt = Runtime.open(replace(settings, data_dir=tmp_path / "d", job_workers=0))
    try:
        assert rt.segments.budget == Budget(7.5, 123 << 20)
    finally:
        rt.stop()
