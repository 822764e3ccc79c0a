"""Golden SQL: every comparator, analysis and tag kind, rendered for DuckDB, ClickHouse and
PostgreSQL.

Each case's compiled tree is rendered by each dialect table and compared with the text under
``golden/<case>.sql``; each rendering is then run against empty tables of the project's
columns on its engine (DuckDB, ClickHouse through chdb, and the tests' PostgreSQL cluster, with
the columns a segment query sees there), so that a golden text that does not run on its
engine fails here (whether it selects the right users is the reference suite's job). After a
deliberate change, ``OPENCDP_UPDATE_GOLDEN=1`` rewrites the files; review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pytest

from opencdp.catalog.model import Property, Schema
from opencdp.catalog.types import PropertyType as T
from opencdp.catalog.types import zone
from opencdp.errors import CdpError, Code
from opencdp.segments.compiler import Compiled, Compiler
from opencdp.segments.model import (
    Analysis,
    Comparator,
    parse_cluster,
    parse_tag,
)
from opencdp.store import tree
from opencdp.store.clickhouse.sql import CAPABILITIES as CLICKHOUSE
from opencdp.store.duckdb.sql import CAPABILITIES as DUCKDB
from opencdp.store.postgres.sql import CAPABILITIES as POSTGRES
from tests import clickhouse

Json = dict[str, Any]
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("OPENCDP_UPDATE_GOLDEN") == "1"
ENGINES = {"duckdb": DUCKDB, "clickhouse": CLICKHOUSE, "postgresql": POSTGRES}
TABLES = {tree.USERS: "p1_profiles", tree.EVENTS: "p1_events", tree.LISTS: "p1_list_members"}
NOW = datetime(2020, 1, 10, 2, 51, tzinfo=UTC)  # 2020-01-10 10:51 in Shanghai

USER = {
    "level": Property(1, "user", "level", T.NUMBER),
    "name": Property(2, "user", "name", T.STRING),
    "vip": Property(3, "user", "vip", T.BOOL),
    "seen": Property(4, "user", "seen", T.DATETIME),
    "tags": Property(5, "user", "tags", T.LIST),
}
EVENT = {
    "amount": Property(6, "event", "amount", T.NUMBER),
    "os": Property(7, "event", "os", T.STRING),
    "paid_at": Property(8, "event", "paid_at", T.DATETIME),
    "items": Property(9, "event", "items", T.LIST),
}
SCHEMA = Schema(1, user=USER, event=EVENT)


def _filter(column: str, comparator: str, *ftv: str) -> Json:
    return {"filts": [{"columnName": column, "comparator": comparator, "ftv": list(ftv)}]}


# Every comparator, on each type of property it applies to.
FILTERS: dict[str, Json] = {
    "equal_number": _filter("level", "equal", "3"),
    "equal_number_several": _filter("level", "equal", "3", "4.5"),
    "equal_string": _filter("name", "equal", "a'b"),
    "equal_bool": _filter("vip", "equal", "true"),
    "equal_datetime": _filter("seen", "equal", "2020-01-01 08:00:00.5"),
    "equal_list": _filter("tags", "equal", "x", "y"),
    "notEqual_number_several": _filter("level", "notEqual", "1", "2"),
    "notEqual_string": _filter("name", "notEqual", "a"),
    "notEqual_list": _filter("tags", "notEqual", "x"),
    "greater_number": _filter("level", "greater", "2"),
    "greaterEqual_datetime": _filter("seen", "greaterEqual", "2020-01-01"),
    "less_number": _filter("level", "less", "-0.5"),
    "lessEqual_datetime": _filter("seen", "lessEqual", "1577836800"),
    "range_number": _filter("level", "range", "1", "5"),
    "range_datetime": _filter("seen", "range", "2020-01-01 00:00:00", "2020-01-02 00:00:00"),
    "isTrue": _filter("vip", "isTrue"),
    "isFalse": _filter("vip", "isFalse"),
    "isNull_string": _filter("name", "isNull"),
    "isNull_list": _filter("tags", "isNull"),
    "notNull_number": _filter("level", "notNull"),
    "notNull_list": _filter("tags", "notNull"),
    "include_string": _filter("name", "include", "%_"),
    "include_list": _filter("tags", "include", "x"),
    "notInclude_string": _filter("name", "notInclude", "ab"),
    "notInclude_list": _filter("tags", "notInclude", "x"),
    "regexMatch": _filter("name", "regexMatch", "^a.b$"),
    "notRegexMatch": _filter("name", "notRegexMatch", "[0-9]{3}"),
}


def _measure(analysis: str, comparator: str, num: str, **extra: Any) -> Json:
    quota = {"analysis": analysis, "quota": "amount" if analysis != "TIMES" else None}
    cond = {"eventName": "pay", "comparator": comparator, "num": num, "taPropQuota": quota}
    return {"events": [{**cond, **extra}]}


# Every analysis, inside and outside a window; "holds without events" compiles as NOT IN.
MEASURES: dict[str, Json] = {
    "times_greater_window": _measure("TIMES", "greater", "4", recentDay="1-7"),
    "times_less_no_events_hold": _measure("TIMES", "less", "3"),
    "sum_range": _measure("SUM", "range", "10,20.5"),
    "avg_lessEqual": _measure("AVG", "lessEqual", "0"),
    "max_equal": _measure("MAX", "equal", "9"),
    "min_notEqual": _measure("MIN", "notEqual", "1"),
    "distinct_greaterEqual_string": {
        "events": [
            {
                "eventName": "view",
                "comparator": "greaterEqual",
                "num": "2",
                "taPropQuota": {"analysis": "DISTINCT", "quota": "os"},
                "recentDay": "0-0",
            }
        ]
    },
    "event_filters_or": {
        "events": [
            {
                "eventName": "pay",
                "comparator": "greater",
                "num": "0",
                "relation": "or",
                "filts": [
                    {
                        "columnName": "os",
                        "tableType": "event",
                        "comparator": "include",
                        "ftv": ["and"],
                    },
                    {
                        "columnName": "items",
                        "tableType": "event",
                        "comparator": "notInclude",
                        "ftv": ["gift"],
                    },
                ],
            }
        ]
    },
    "users_and_events_or": {
        "filts": [
            {"columnName": "level", "comparator": "greater", "ftv": ["1"]},
            {"columnName": "vip", "comparator": "isTrue"},
        ],
        "relation": "and",
        "events": [
            {"eventName": "pay", "comparator": "greater", "num": "1"},
            {"eventName": "login", "comparator": "equal", "num": "0", "recentDay": "0-1"},
        ],
        "event_relation": "or",
        "event_user_relation": "or",
    },
}


def _first_last(first: bool, prop: str) -> Json:
    d = {
        "eventName": "pay",
        "isFirstEvent": first,
        "calcPropVo": {"property": {"columnName": prop, "tableType": "event"}},
        "recentDay": "1-30",
    }
    return {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": d}}


def _quota(analysis: str) -> Json:
    d = {"eventName": "pay", "analysis": analysis, "quota": "amount"}
    return {"userTagConQuotaDef": {"userTagConQuotaEvent": d}}


# Every tag kind, and each way a tag value becomes text.
TAGS: dict[str, Json] = {
    "tag_values": {
        "userTagValueDefs": [
            {"tagValue": "gold", "userClusterDef": _filter("level", "greaterEqual", "5")},
            {"tagValue": "silver", "userClusterDef": _measure("TIMES", "greater", "2")},
        ]
    },
    "tag_first_number": _first_last(True, "amount"),
    "tag_last_string": _first_last(False, "os"),
    "tag_first_datetime": _first_last(True, "paid_at"),
    "tag_last_list": _first_last(False, "items"),
    **{f"tag_quota_{a.lower()}": _quota(a) for a in ("TIMES", "SUM", "AVG", "MAX", "MIN")},
    "tag_quota_distinct": _quota("DISTINCT"),
}

CASES = {**FILTERS, **MEASURES, **TAGS}


def compiled(name: str) -> Compiled:
    compiler = Compiler(SCHEMA, zone("Asia/Shanghai"), NOW)
    d = CASES[name]
    return (
        compiler.tag(parse_tag(d))
        if name.startswith("tag_")
        else compiler.cluster(parse_cluster(d))
    )


def rendered(name: str) -> str:
    c = compiled(name)
    parts = [f"-- {engine}\n{c.sql(caps.sql, TABLES)}\n" for engine, caps in ENGINES.items()]
    return "".join(parts)


def test_every_comparator_analysis_and_tag_kind_has_a_case() -> None:
    comparators = {k.split("_")[0] for k in FILTERS}
    assert comparators == {c.value for c in Comparator}
    analyses = {v["events"][0]["taPropQuota"]["analysis"] for v in MEASURES.values()
                if "taPropQuota" in v["events"][0]}  # fmt: skip
    assert analyses == {a.value for a in Analysis}
    quota_tags = {k.removeprefix("tag_quota_").upper() for k in TAGS if "quota" in k}
    assert quota_tags == {a.value for a in Analysis}
    kinds = {next(iter(t)) for t in TAGS.values()}
    assert kinds == {
        "userTagValueDefs",
        "userTagConFirstLastEventDef",
        "userTagConQuotaDef",
    }
    texts = {EVENT[t["userTagConFirstLastEventDef"]["userTagConFirstLastEvent"]["calcPropVo"]
                   ["property"]["columnName"]].type
             for t in TAGS.values() if "userTagConFirstLastEventDef" in t}  # fmt: skip
    assert texts == {T.NUMBER, T.STRING, T.DATETIME, T.LIST}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_sql(name: str) -> None:
    path = GOLDEN / f"{name}.sql"
    text = rendered(name)
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text


# ---- the goldens run on their engines ------------------------------------------------------

BUILTIN_USER = [("user_id", T.NUMBER, "BIGINT", "Int64")]
BUILTIN_EVENT = [
    ("event_id", None, "VARCHAR", "String"),
    ("event_name", None, "VARCHAR", "String"),
    ("event_time", None, "TIMESTAMP", "DateTime64(6, 'UTC')"),
    ("user_id", None, "BIGINT", "Int64"),
]


def _columns(engine: str, props: dict[str, Property], builtin: list[Any]) -> list[tuple[str, str]]:
    own = [(n, ch if engine == "clickhouse" else duck) for n, _, duck, ch in builtin]
    types = ENGINES[engine].column_types
    return own + [(p.column, types[p.type]) for p in props.values()]


@pytest.fixture(scope="module")
def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for table, props, builtin in (
        ("p1_profiles", USER, BUILTIN_USER),
        ("p1_events", EVENT, BUILTIN_EVENT),
    ):
        cols = ", ".join(f"{n} {t}" for n, t in _columns("duckdb", props, builtin))
        con.execute(f"CREATE TABLE {table} ({cols})")
    return con


@pytest.fixture(scope="module")
def chdb() -> None:
    clickhouse.database("segments_golden")
    clickhouse.create("p1_profiles", _columns("clickhouse", USER, BUILTIN_USER))
    clickhouse.create("p1_events", _columns("clickhouse", EVENT, BUILTIN_EVENT))


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg.Connection[Any]]:
    from tests.engines import new_database

    url = new_database().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as con:
        for table, props, builtin in (
            ("p1_profiles", USER, BUILTIN_USER),
            ("p1_events", EVENT, BUILTIN_EVENT),
        ):
            cols = ", ".join(f"{n} {t}" for n, t in _columns("postgresql", props, builtin))
            con.execute(f"CREATE TABLE {table} ({cols})")
        yield con


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_sql_runs_on_its_engine(
    name: str, duck: duckdb.DuckDBPyConnection, chdb: None, pg: psycopg.Connection[Any]
) -> None:
    c = compiled(name)
    assert duck.execute(c.sql(DUCKDB.sql, TABLES)).fetchall() == []
    clickhouse.database("segments_golden")
    assert clickhouse.query(c.sql(CLICKHOUSE.sql, TABLES)) == []
    assert pg.execute(c.sql(POSTGRES.sql, TABLES)).fetchall() == []


def test_an_operation_a_dialect_lacks_is_refused_by_name() -> None:
    """An engine whose table does not list an operation refuses the tree, saying which
    operation and which engine, instead of passing the node through."""
    lacking = tree.SqlDialect(
        "someengine",
        "duckdb",
        {k: v for k, v in DUCKDB.sql.operations.items() if k is not tree.ArgMinNull},
    )
    c = compiled("tag_first_number")
    with pytest.raises(CdpError) as err:
        c.check(lacking, lambda _: None)
    assert err.value.code is Code.UNSUPPORTED
    assert err.value.message == "the value on the first event is not supported on someengine"
    with pytest.raises(CdpError):
        c.sql(lacking, TABLES)
    compiled("tag_last_string").check(lacking, lambda _: None)  # it has the last value


def test_a_tree_reads_only_the_logical_tables_it_is_given() -> None:
    c = compiled("times_greater_window")
    with pytest.raises(ValueError, match="not a logical table"):
        c.sql(DUCKDB.sql, {tree.USERS: "p1_profiles"})  # no events table
