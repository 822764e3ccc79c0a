"""Injection attempts in segment definitions: refused, or read as plain values.

Everything a definition names goes through the catalog (``columnName``, ``quota``, the
first/last ``property``): only catalog names are known, never a physical column or a piece of
SQL. Everything it compares with (``ftv``, ``eventName``, ``tagValue``, ``num``) becomes a
literal built by sqlglot after being read as the property's type, or is refused with the field
that is wrong. The compiled SQL runs on DuckDB against data holding the same hostile texts, and
the tables are still there afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from opencdp.catalog.model import Property, Schema
from opencdp.catalog.types import PropertyType as T
from opencdp.catalog.types import zone
from opencdp.errors import CdpError, Code
from opencdp.segments.compiler import Compiler
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.store.duckdb import DuckDBStore
from opencdp.store.duckdb.sql import SQL
from opencdp.store.tree import EVENTS, USERS

Json = dict[str, Any]

SCHEMA = Schema(
    1,
    user={
        "level": Property(1, "user", "level", T.NUMBER),
        "name": Property(2, "user", "name", T.STRING),
        "vip": Property(3, "user", "vip", T.BOOL),
        "seen": Property(4, "user", "seen", T.DATETIME),
        "tags": Property(5, "user", "tags", T.LIST),
    },
    event={
        "amount": Property(6, "event", "amount", T.NUMBER),
        "os": Property(7, "event", "os", T.STRING),
    },
)
TABLES = {USERS: "p1_profiles", EVENTS: "p1_events"}
NOW = datetime(2020, 1, 10, 2, 51, tzinfo=UTC)
WHEN = datetime(2020, 1, 9, 12)

# Texts that would change a query pasted into SQL, or a LIKE pattern, or a C string.
HOSTILE = [
    "'; DROP TABLE p1_events; --",
    "x'); DROP TABLE p1_profiles; --",
    "' OR '1'='1",
    "a'b",
    "''",
    '"',
    'x"; DROP TABLE p1_profiles; --',
    "a\\b",
    "\\",
    "\\'",
    "%",
    "_",
    "a%b",
    "a_b",
    "中文 😀 é",
    "\u202eevil",
    "line\nbreak",
    "tab\there",
    "$1",
    "?",
    ":name",
    "/* c */",
    "--",
    ";",
]
WITH_NUL = ["a\x00b", "\x00", "'\x00'; DROP TABLE p1_events; --"]


def compiler() -> Compiler:
    return Compiler(SCHEMA, zone("Asia/Shanghai"), NOW)


_STORE: list[DuckDBStore] = []


def pattern_error(pattern: str) -> str | None:
    """What the DuckDB store says of a regular expression (the service asks it the same)."""
    if not _STORE:
        _STORE.append(DuckDBStore(":memory:"))
    return _STORE[0].pattern_error(pattern)


def cluster_sql(d: Json) -> str:
    compiled = compiler().cluster(parse_cluster(d))
    compiled.check(SQL, pattern_error)
    return compiled.sql(SQL, TABLES)


def tag_sql(t: Json) -> str:
    compiled = compiler().tag(parse_tag(t))
    compiled.check(SQL, pattern_error)
    return compiled.sql(SQL, TABLES)


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str


def refused(call: Any, *args: Any) -> Refusal:
    """The validation error ``call(*args)`` raises; its message starts with the field."""
    with pytest.raises(CdpError) as err:
        call(*args)
    assert err.value.code is Code.VALIDATION_FAILED
    assert err.value.field is not None
    assert err.value.message.startswith(f"{err.value.field}: ")
    return Refusal(err.value.field, err.value.message)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """Users 1.. named by the hostile texts (and listing them as tags); each has one event named
    by its text, with its text as ``os``."""
    c = duckdb.connect()
    c.execute(
        "CREATE TABLE p1_profiles (user_id BIGINT NOT NULL, p_1 DOUBLE, p_2 VARCHAR, "
        "p_3 BOOLEAN, p_4 TIMESTAMP, p_5 VARCHAR[])"
    )
    c.execute(
        "CREATE TABLE p1_events (event_id VARCHAR NOT NULL, event_name VARCHAR NOT NULL, "
        "event_time TIMESTAMP NOT NULL, user_id BIGINT NOT NULL, p_6 DOUBLE, p_7 VARCHAR)"
    )
    for uid, text in users():
        c.execute(
            "INSERT INTO p1_profiles VALUES (?, ?, ?, NULL, NULL, ?)", [uid, uid, text, [text]]
        )
        c.execute(
            "INSERT INTO p1_events VALUES (?, ?, ?, ?, ?, ?)",
            [f"e{uid}", text, WHEN, uid, uid, text],
        )
    yield c
    assert_tables_intact(c)
    c.close()


def users() -> list[tuple[int, str]]:
    texts = [*HOSTILE, *WITH_NUL, "plain", "xx'; DROP TABLE p1_events; --yy", "a%%b", "ab"]
    return list(enumerate(texts, start=1))


def assert_tables_intact(c: duckdb.DuckDBPyConnection) -> None:
    n = len(users())
    assert c.execute("SELECT count(*) FROM p1_profiles").fetchall() == [(n,)]
    assert c.execute("SELECT count(*) FROM p1_events").fetchall() == [(n,)]


def selected(c: duckdb.DuckDBPyConnection, sql: str) -> set[int]:
    return {u for u, _ in c.execute(sql).fetchall()}


def ids(test: Any) -> set[int]:
    return {uid for uid, text in users() if test(text)}


# ---- names: only the catalog's -------------------------------------------------------------

BAD_NAMES = [
    "p_1",
    "p_2",
    "user_id",
    "event_id",
    "event_time",
    "event_name",
    "tag_value",
    'x"; DROP TABLE p1_profiles; --',
    "name; --",
    "name)",
    '"p_2"',
    "p1_profiles.p_2",
    "*",
    "NAME",
    " name",
    "name ",
    "名",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_user_filter_knows_only_catalog_names(name: str) -> None:
    d = {"filts": [{"columnName": name, "comparator": "isNull"}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.filts.0.columnName"
    assert "unknown user property" in err.message


@pytest.mark.parametrize("name", [*BAD_NAMES, "level"])  # a user property is not an event's
def test_an_event_filter_knows_only_catalog_names(name: str) -> None:
    f = {"columnName": name, "comparator": "isNull", "tableType": "event"}
    d = {"events": [{"eventName": "pay", "comparator": "less", "num": "1", "filts": [f]}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.events.0.filts.0.columnName"
    assert "unknown event property" in err.message


@pytest.mark.parametrize("name", [*BAD_NAMES, "level"])
def test_a_measure_knows_only_catalog_names(name: str) -> None:
    e = {"eventName": "pay", "comparator": "less", "num": "1"}
    d = {"events": [{**e, "taPropQuota": {"analysis": "SUM", "quota": name}}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.events.0.taPropQuota.quota"
    assert "unknown event property" in err.message


@pytest.mark.parametrize("name", BAD_NAMES)
def test_tags_know_only_catalog_names(name: str) -> None:
    prop = {"property": {"columnName": name, "tableType": "event"}}
    first = {"eventName": "pay", "calcPropVo": prop}
    err = refused(tag_sql, {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": first}})
    assert err.field.endswith("calcPropVo")
    assert "unknown event property" in err.message
    quota = {"eventName": "pay", "analysis": "MAX", "quota": name}
    err = refused(tag_sql, {"userTagConQuotaDef": {"userTagConQuotaEvent": quota}})
    assert err.field.endswith(".quota")
    assert "unknown event property" in err.message
    d = {"filts": [{"columnName": name, "comparator": "notNull"}]}
    err = refused(tag_sql, {"userTagValueDefs": [{"tagValue": "v", "userClusterDef": d}]})
    assert err.field.endswith("filts.0.columnName")
    assert "unknown user property" in err.message


# ---- values: plain values ------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_string_filters_compare_hostile_texts_literally(
    con: duckdb.DuckDBPyConnection, text: str
) -> None:
    def run(comparator: str, value: str, column: str = "name") -> set[int]:
        f = {"columnName": column, "comparator": comparator, "ftv": [value]}
        return selected(con, cluster_sql({"filts": [f]}))

    assert run("equal", text) == ids(lambda t: t == text)
    assert run("notEqual", text) == ids(lambda t: t != text)
    assert run("include", text) == ids(lambda t: text in t)
    assert run("notInclude", text) == ids(lambda t: text not in t)
    assert run("regexMatch", re.escape(text)) == ids(lambda t: text in t)
    assert run("notRegexMatch", re.escape(text)) == ids(lambda t: text not in t)
    assert run("include", text, "tags") == ids(lambda t: t == text)
    assert run("notEqual", text, "tags") == ids(lambda t: t != text)
    # In an event filter too.
    f = {"columnName": "os", "comparator": "equal", "ftv": [text], "tableType": "event"}
    e = {"eventName": text, "comparator": "greater", "num": "0", "filts": [f]}
    assert selected(con, cluster_sql({"events": [e]})) == ids(lambda t: t == text)


@pytest.mark.parametrize("text", [*HOSTILE, *WITH_NUL])
def test_event_names_match_literally(con: duckdb.DuckDBPyConnection, text: str) -> None:
    e = {"eventName": text, "comparator": "greaterEqual", "num": "1"}
    assert selected(con, cluster_sql({"events": [e]})) == ids(lambda t: t == text)
    # A condition true without events: everyone but the users who have one.
    e = {"eventName": text, "comparator": "equal", "num": "0", "recentDay": "0-3"}
    assert selected(con, cluster_sql({"events": [e]})) == ids(lambda t: t != text)


def test_wildcards_are_not_wildcards(con: duckdb.DuckDBPyConnection) -> None:
    for text in ("%", "_", "a%b", "a_b"):
        e = {"eventName": text, "comparator": "greater", "num": "0"}
        assert selected(con, cluster_sql({"events": [e]})) == ids(lambda t, x=text: t == x)
        f = {"columnName": "name", "comparator": "include", "ftv": [text]}
        assert selected(con, cluster_sql({"filts": [f]})) == ids(lambda t, x=text: x in t)


@pytest.mark.parametrize("text", [*HOSTILE, *WITH_NUL])
def test_tag_values_come_back_as_given(con: duckdb.DuckDBPyConnection, text: str) -> None:
    def level(n: int) -> Json:
        return {"filts": [{"columnName": "level", "comparator": "equal", "ftv": [str(n)]}]}

    t = {
        "userTagValueDefs": [
            {"tagValue": text, "userClusterDef": level(1)},
            {"tagValue": text + "'2", "userClusterDef": level(2)},
        ]
    }
    assert dict(con.execute(tag_sql(t)).fetchall()) == {1: text, 2: text + "'2"}


def test_first_last_tags_return_hostile_values_as_stored(con: duckdb.DuckDBPyConnection) -> None:
    for uid, text in users():
        first = {
            "eventName": text,
            "calcPropVo": {"property": {"columnName": "os", "tableType": "event"}},
        }
        t = {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": first}}
        assert con.execute(tag_sql(t)).fetchall() == [(uid, text)]


@pytest.mark.parametrize("text", WITH_NUL)
@pytest.mark.parametrize(
    ("column", "comparator"),
    [
        ("name", "equal"),
        ("name", "notEqual"),
        ("name", "include"),
        ("name", "regexMatch"),
        ("tags", "include"),
        ("tags", "notEqual"),
    ],
)
def test_nul_in_a_filter_value_is_refused(column: str, comparator: str, text: str) -> None:
    d = {"filts": [{"columnName": column, "comparator": comparator, "ftv": [text]}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.filts.0.ftv"
    assert "NUL" in err.message


@pytest.mark.parametrize(
    ("column", "text"),
    [
        ("level", "1; DROP TABLE p1_profiles"),
        ("level", "1 OR 1=1"),
        ("level", "1\x00"),
        ("level", "0x10"),
        ("level", "nan"),
        ("level", "inf"),
        ("level", "1e400"),
        ("level", ""),
        ("seen", "2020-01-01'; DROP TABLE p1_profiles; --"),
        ("seen", "2020-01-01 00:00:00 OR 1=1"),
        ("seen", "2020-13-01"),
        ("seen", "now()"),
        ("vip", "true; DROP TABLE p1_profiles"),
        ("vip", "t"),
    ],
)
def test_typed_filter_values_are_read_as_their_type(column: str, text: str) -> None:
    d = {"filts": [{"columnName": column, "comparator": "equal", "ftv": [text]}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.filts.0.ftv"


@pytest.mark.parametrize("item", [None, {"x": 1}, ["a"]])
def test_a_filter_value_is_text_not_a_python_repr(item: Any) -> None:
    """``ftv: [null]`` (or an object, or a list) is no text to compare with; it is refused
    rather than read as Python's ``'None'`` (or ``"{'x': 1}"``, ``"['a']"``)."""
    d = {"filts": [{"columnName": "name", "comparator": "equal", "ftv": [item]}]}
    err = refused(lambda: cluster_sql(d))
    assert err.field.startswith("qp.filts.0.ftv")


NOT_NUMBERS = [
    "1; DROP TABLE p1_events",
    "1; DROP",
    "1 OR 1=1",
    "1)",
    "0x10",
    "",
    " ",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "abc",
    "1 2",
    "1\x00",
    "1,2",
    "1--",
]


@pytest.mark.parametrize("num", NOT_NUMBERS)
def test_num_is_a_number(num: str) -> None:
    d = {"events": [{"eventName": "pay", "comparator": "greater", "num": num}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.events.0.num"


@pytest.mark.parametrize(
    "num", ["1", "1,2,3", "2,1", "a,b", "1;2", ",", "1,nan", "1,2; DROP TABLE p1_events", "0,"]
)
def test_a_range_num_is_low_comma_high(num: str) -> None:
    d = {"events": [{"eventName": "pay", "comparator": "range", "num": num}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.events.0.num"


def test_num_in_a_value_tag_names_its_field() -> None:
    e = {"eventName": "pay", "comparator": "less", "num": "1; DROP"}
    t = {"userTagValueDefs": [{"tagValue": "v", "userClusterDef": {"events": [e]}}]}
    err = refused(tag_sql, t)
    assert err.field.startswith("tagQp.userTagValueDefs.0.")
    assert err.field.endswith("events.0.num")


@pytest.mark.parametrize(
    "recent",
    [
        "1-x",
        "x",
        "7-1",
        "-1-3",
        "1--3",
        "1-2-3",
        "1.5-2",
        "123456-123457",
        "1 2",
        "1-",
        "-1",
        "1-7; DROP TABLE p1_events",
        "1-7'",
        5,
        [1, 7],
        True,
    ],
)
def test_recent_day_garbage_is_refused(recent: Any) -> None:
    e = {"eventName": "pay", "comparator": "less", "num": "1", "recentDay": recent}
    err = refused(parse_cluster, {"events": [e]})
    assert err.field == "qp.events.0.recentDay"


@pytest.mark.parametrize("window", [{"near": 5, "far": 1}, {"near": -3, "far": 2}])
def test_a_window_given_as_an_object_is_checked_like_text(window: Json) -> None:
    """``recentDay`` as the object ``{near, far}`` must obey the rules of ``"a-b"``: whole
    days ago, the nearer first (a window ending before it starts, or reaching into the future,
    is refused, as ``"5-1"`` and ``"-3-2"`` are)."""
    e = {"eventName": "pay", "comparator": "less", "num": "1", "recentDay": window}
    err = refused(lambda: cluster_sql({"events": [e]}))
    assert err.field.startswith("qp.events.0.recentDay")


@pytest.mark.parametrize("pattern", ["(", "[a", "*a", "a**", "a{2,1}", "[z-a]", "(?P<>a)", "\\"])
def test_an_invalid_regex_is_refused(pattern: str) -> None:
    d = {"filts": [{"columnName": "name", "comparator": "regexMatch", "ftv": [pattern]}]}
    err = refused(cluster_sql, d)
    assert err.field == "qp.filts.0.ftv"
    assert "regular expression" in err.message


@pytest.mark.parametrize("pattern", ["(?=a)", "(?<=a)b", "(a)\\1", "a{1001}", "a++"])
def test_a_regex_the_store_cannot_run_is_refused(
    con: duckdb.DuckDBPyConnection, pattern: str
) -> None:
    """Python's ``re`` accepts these, the store's engine (RE2 in DuckDB) does not: accepting
    them at definition time makes a segment that fails at every refresh."""
    for comparator in ("regexMatch", "notRegexMatch"):
        d = {"filts": [{"columnName": "name", "comparator": comparator, "ftv": [pattern]}]}
        try:
            sql = cluster_sql(d)
        except CdpError as exc:
            assert exc.code is Code.VALIDATION_FAILED
            assert exc.field == "qp.filts.0.ftv"
            continue
        con.execute(sql).fetchall()  # if it compiles, it must run


# ---- parsing: errors name the field --------------------------------------------------------

EVENT: Json = {"eventName": "pay", "comparator": "less", "num": "1"}


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"events": [{**EVENT, "recentDay": "x"}]}, "qp.events.0.recentDay"),
        ({"events": [EVENT, {**EVENT, "recentDay": "3-1"}]}, "qp.events.1.recentDay"),
        ({"events": [{**EVENT, "eventName": ""}]}, "qp.events.0.eventName"),
        ({"events": [{**EVENT, "eventName": "e" * 201}]}, "qp.events.0.eventName"),
        (
            {"events": [{**EVENT, "taPropQuota": {"analysis": "SUM; DROP"}}]},
            "qp.events.0.taPropQuota.analysis",
        ),
        ({"events": [{**EVENT, "relation": "and or"}]}, "qp.events.0.relation"),
        ({"events": [EVENT], "event_relation": "xor"}, "qp.event_relation"),
        ({"events": [EVENT], "relation": "; DROP"}, "qp.relation"),
        ({"events": [EVENT], "event_user_relation": 1}, "qp.event_user_relation"),
        (
            {"filts": [{"columnName": "name", "comparator": "like", "ftv": ["a"]}]},
            "qp.filts.0.comparator",
        ),
        (
            {"filts": [{"columnName": "name", "comparator": "equal", "tableType": "sql"}]},
            "qp.filts.0.tableType",
        ),
        ({"filts": [{"columnName": "", "comparator": "isNull"}]}, "qp.filts.0.columnName"),
        ({"filts": [{"columnName": "name", "comparator": "equal", "ftv": "a"}]}, "qp.filts.0.ftv"),
    ],
)
def test_parse_errors_name_the_field(definition: Json, field: str) -> None:
    err = refused(parse_cluster, definition)
    assert err.field == field


@pytest.mark.parametrize(
    ("definition", "field", "words"),
    [
        ({}, "qp", "at least one condition"),
        ({"events": [{**EVENT, "comparator": "isNull"}]}, "qp.events.0", "comparator"),
        (
            {"filts": [{"columnName": "name", "comparator": "range", "ftv": ["a"]}]},
            "qp.filts.0",
            "ftv",
        ),
        (
            {"filts": [{"columnName": "name", "comparator": "include", "ftv": ["a", "b"]}]},
            "qp.filts.0",
            "ftv",
        ),
    ],
)
def test_whole_object_errors_name_the_object_and_the_field(
    definition: Json, field: str, words: str
) -> None:
    err = refused(parse_cluster, definition)
    assert err.field == field
    assert words in err.message


@pytest.mark.parametrize("data", [None, [], "qp", 1])
def test_a_definition_is_an_object(data: Any) -> None:
    assert refused(parse_cluster, data).field == "qp"
    assert refused(parse_tag, data).field == "tagQp"


def test_a_nested_definition_names_its_path() -> None:
    t = {"userTagValueDefs": [{"tagValue": "v", "userClusterDef": {"events": [
        {**EVENT, "recentDay": "x"}
    ]}}]}  # fmt: skip
    err = refused(parse_tag, t)
    assert err.field == "tagQp.userTagValueDefs.0.userClusterDef.events.0.recentDay"
    t = {"userTagValueDefs": [{"tagValue": "", "userClusterDef": {"events": [EVENT]}}]}
    assert refused(parse_tag, t).field == "tagQp.userTagValueDefs.0.tagValue"
    assert refused(parse_cluster, {"events": [{}]}, "userClusterDef").field.startswith(
        "userClusterDef.events.0"
    )


FIRST_LAST: Json = {
    "eventName": "pay",
    "calcPropVo": {"property": {"columnName": "amount", "tableType": "event"}},
}
QUOTA: Json = {"eventName": "pay", "analysis": "SUM", "quota": "amount"}


@pytest.mark.parametrize(
    ("tag", "last"),
    [
        (
            {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
                **FIRST_LAST, "recentDay": "x"
            }}},
            "recentDay",
        ),
        (
            {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
                **FIRST_LAST, "relation": "; DROP"
            }}},
            "relation",
        ),
        (
            {"userTagConQuotaDef": {"userTagConQuotaEvent": {**QUOTA, "recentDay": "7-"}}},
            "recentDay",
        ),
        (
            {"userTagConQuotaDef": {"userTagConQuotaEvent": {**QUOTA, "analysis": "SUM; DROP"}}},
            "analysis",
        ),
    ],
)  # fmt: skip
def test_tag_parse_errors_name_the_field_as_sent(tag: Json, last: str) -> None:
    """The path names the keys the client sent (``userTagConFirstLastEvent``, not the model's
    own ``first_last``), so that the client can find the field."""
    err = refused(parse_tag, tag)
    assert err.field.endswith(f".{last}")
    assert walk("tagQp", tag, err.field) is not None


def walk(root: str, definition: Json, field: str) -> Any:
    """The value at ``field`` (a dotted path from ``root``) in the definition as sent."""
    parts = field.split(".")
    assert parts[0] == root, field
    node: Any = definition
    for part in parts[1:]:
        if isinstance(node, list):
            node = node[int(part)]
        else:
            assert isinstance(node, dict) and part in node, f"{field}: no {part!r} in {node!r}"
            node = node[part]
    return node


@pytest.mark.parametrize(
    "tag",
    [
        {"userTagValueDefs": [{"tagValue": "v", "userClusterDef": {"events": [
            {**EVENT, "num": "x"}
        ]}}]},
        {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
            **FIRST_LAST, "calcPropVo": {"property": {"columnName": "nope"}}
        }}},
        {"userTagConQuotaDef": {"userTagConQuotaEvent": {**QUOTA, "quota": "nope"}}},
    ],
)  # fmt: skip
def test_tag_compile_errors_name_a_field_of_the_definition_sent(tag: Json) -> None:
    """A compile error's path leads to the field in the JSON the client sent."""
    err = refused(tag_sql, tag)
    walk("tagQp", tag, err.field)


@pytest.mark.parametrize(
    "definition",
    [
        {"events": [{**EVENT, "num": "x"}]},
        {"events": [{**EVENT, "comparator": "range", "num": "2,1"}]},
        {"events": [{**EVENT, "taPropQuota": {"analysis": "AVG", "quota": "os"}}]},
        {"filts": [{"columnName": "nope", "comparator": "isNull"}]},
        {"filts": [{"columnName": "name", "comparator": "greater", "ftv": ["a"]}]},
        {"filts": [{"columnName": "level", "comparator": "range", "ftv": ["2", "1"]}]},
    ],
)
def test_cluster_compile_errors_name_a_field_of_the_definition_sent(definition: Json) -> None:
    err = refused(cluster_sql, definition)
    walk("qp", definition, err.field)
