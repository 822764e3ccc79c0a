"""The segment compiler against a reference evaluator written in plain Python.

The reference below restates the semantics of ``opencdp.segments`` (the module docstring of
``compiler.py`` and the docstrings of ``model.py``) directly over the vendor's condition JSON,
without the models or SQL. Hypothesis draws small worlds (users, events, a project timezone and
"now") and definitions; the compiled query, rendered for each engine, runs on DuckDB, on
the ClickHouse store (on chdb, its engine in-process) and on the PostgreSQL store (both written
and queried through the store's interface, so their physical models, PostgreSQL's ``jsonb`` and
ClickHouse's versioned rows, and the CTEs of the logical tables are exercised) over the same
rows, and must select exactly the users (or tag values) the reference computes on each.

Where the reference has to choose (the documented semantics leave room), the choice is noted
where it is made.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencdp.catalog.model import Property, Schema
from opencdp.catalog.types import PropertyType as T
from opencdp.catalog.types import zone
from opencdp.errors import CdpError, Code
from opencdp.segments.compiler import Compiled, Compiler, Span
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.store import open_store
from opencdp.store.base import Budget, EventRows, ProfileRows, Store
from opencdp.store.clickhouse.sql import CAPABILITIES as CLICKHOUSE
from opencdp.store.duckdb.sql import CAPABILITIES as DUCKDB
from opencdp.store.tree import EVENTS as EVENTS_TABLE
from opencdp.store.tree import USERS as USERS_TABLE
from tests import clickhouse

Json = dict[str, Any]

# ---- the project ---------------------------------------------------------------------------

TABLES = {USERS_TABLE: "p1_profiles", EVENTS_TABLE: "p1_events"}
ENGINES = ["duckdb", "clickhouse", "postgresql"]

# name -> (type, attribute of User / Event, property id)
USER_PROPS: dict[str, tuple[T, str, int]] = {
    "level": (T.NUMBER, "level", 1),
    "name": (T.STRING, "name", 2),
    "vip": (T.BOOL, "vip", 3),
    "seen": (T.DATETIME, "seen", 4),
    "tags": (T.LIST, "tags", 5),
}
EVENT_PROPS: dict[str, tuple[T, str, int]] = {
    "amount": (T.NUMBER, "amount", 6),
    "os": (T.STRING, "os", 7),
}
SCHEMA = Schema(
    1,
    user={n: Property(i, "user", n, t) for n, (t, _, i) in USER_PROPS.items()},
    event={n: Property(i, "event", n, t) for n, (t, _, i) in EVENT_PROPS.items()},
)

# Comparators that apply to each property type (everything else is a validation error).
APPLICABLE: dict[T, list[str]] = {
    T.NUMBER: ["equal", "notEqual", "greater", "greaterEqual", "less", "lessEqual", "range"],
    T.DATETIME: ["equal", "notEqual", "greater", "greaterEqual", "less", "lessEqual", "range"],
    T.STRING: ["equal", "notEqual", "include", "notInclude", "regexMatch", "notRegexMatch"],
    T.BOOL: ["isTrue", "isFalse", "equal", "notEqual"],
    T.LIST: ["equal", "notEqual", "include", "notInclude"],
}
for _cs in APPLICABLE.values():
    _cs += ["isNull", "notNull"]
ALL_COMPARATORS = [
    "equal",
    "notEqual",
    "greater",
    "greaterEqual",
    "less",
    "lessEqual",
    "range",
    "isTrue",
    "isFalse",
    "isNull",
    "notNull",
    "include",
    "notInclude",
    "regexMatch",
    "notRegexMatch",
]
MEASURE_COMPARATORS = ["equal", "notEqual", "greater", "greaterEqual", "less", "lessEqual", "range"]
ANALYSES = ["TIMES", "SUM", "AVG", "MAX", "MIN", "DISTINCT"]


@dataclass(frozen=True)
class User:
    id: int
    level: float | None = None
    name: str | None = None
    vip: bool | None = None
    seen: datetime | None = None  # UTC, naive
    tags: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Event:
    id: str
    name: str
    time: datetime  # UTC, naive
    user_id: int
    amount: float | None = None
    os: str | None = None


@dataclass(frozen=True)
class World:
    zone_name: str
    now: datetime  # aware
    users: tuple[User, ...]
    events: tuple[Event, ...]

    @property
    def tz(self) -> tzinfo:
        return zone(self.zone_name)

    @property
    def today(self) -> date:
        return self.now.astimezone(self.tz).date()

    def compiler(self) -> Compiler:
        return Compiler(SCHEMA, self.tz, self.now)


def utc_naive(local: datetime, tz: tzinfo) -> datetime:
    """A wall-clock time in ``tz`` as the store keeps it: UTC, naive."""
    return local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


# ---- the reference evaluator ---------------------------------------------------------------


def _relation(value: Any) -> str:
    return "and" if value is None or value == "" else str(value).lower()


def _join(results: list[bool], relation: Any) -> bool:
    return all(results) if _relation(relation) == "and" else any(results)


def _typed(text: str, ptype: T, tz: tzinfo) -> Any:
    if ptype is T.NUMBER:
        return float(text)
    if ptype is T.DATETIME:
        if text.strip().isdigit():  # epoch seconds
            return datetime.fromtimestamp(int(text), UTC).replace(tzinfo=None)
        dt = datetime.fromisoformat(text)  # local, unless it carries an offset
        return utc_naive(dt, tz) if dt.tzinfo is None else dt.astimezone(UTC).replace(tzinfo=None)
    if ptype is T.BOOL:
        return text.strip().lower() in ("true", "1", "yes")
    return text


def filter_holds(value: Any, ptype: T, f: Json, tz: tzinfo) -> bool:
    """One filter on one value.

    A null value fails every comparator except ``isNull``. The reference reads an empty list as
    null throughout, as ``isNull``/``notNull`` do for list properties: a user whose list is
    empty has no value, so the negated comparators (``notEqual``, ``notInclude``), which "match
    users who have a value", do not match it.
    """
    c = f["comparator"]
    ftv = [x if isinstance(x, str) else _text(x) for x in f.get("ftv") or []]
    empty = value is None or (ptype is T.LIST and len(value) == 0)
    if c == "isNull":
        return empty
    if c == "notNull":
        return not empty
    if empty:
        return False
    if c in ("isTrue", "isFalse"):
        return bool(value is (c == "isTrue"))
    if ptype is T.LIST:
        hit = any(v in value for v in ftv)
        return hit if c in ("equal", "include") else not hit
    if c in ("include", "notInclude"):
        return bool((ftv[0] in value) == (c == "include"))
    if c in ("regexMatch", "notRegexMatch"):
        return bool((re.search(ftv[0], value) is not None) == (c == "regexMatch"))
    typed = [_typed(v, ptype, tz) for v in ftv]
    return _compare(value, c, typed)


def _compare(value: Any, c: str, typed: list[Any]) -> bool:
    if c == "equal":
        return value in typed
    if c == "notEqual":
        return value not in typed
    if c == "greater":
        return bool(value > typed[0])
    if c == "greaterEqual":
        return bool(value >= typed[0])
    if c == "less":
        return bool(value < typed[0])
    if c == "lessEqual":
        return bool(value <= typed[0])
    assert c == "range", c
    return bool(typed[0] <= value <= typed[1])


def _text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _window(recent: Any) -> tuple[int, int] | None:
    if recent is None or recent.strip() == "":
        return None
    near, far = (int(x) for x in recent.split("-"))
    return near, far


def in_window(t: datetime, recent: Any, world: World) -> bool:
    """``recentDay: "a-b"``: the local day of the event is from ``b`` to ``a`` days ago."""
    window = _window(recent)
    if window is None:
        return True
    near, far = window
    day = t.replace(tzinfo=UTC).astimezone(world.tz).date()
    return world.today - timedelta(days=far) <= day <= world.today - timedelta(days=near)


def expected_span(recent: Any, world: World) -> Span | None:
    window = _window(recent)
    if window is None:
        return None
    near, far = window
    first = world.today - timedelta(days=far)
    last = world.today - timedelta(days=near)
    start = datetime.combine(first, time())
    return Span(
        start_local=start,
        end_local=datetime.combine(last, time(23, 59, 59)),
        start_utc=utc_naive(start, world.tz),
        end_utc=utc_naive(datetime.combine(last + timedelta(days=1), time()), world.tz),
    )


def event_value(e: Event, name: str) -> Any:
    return getattr(e, EVENT_PROPS[name][1])


def user_value(u: User, name: str) -> Any:
    return getattr(u, USER_PROPS[name][1])


def matching_events(world: World, user_id: int, cond: Json) -> list[Event]:
    """The user's events of the condition's name, in its window, passing its filters."""
    out = []
    for e in world.events:
        if e.user_id != user_id or e.name != cond["eventName"]:
            continue
        if not in_window(e.time, cond.get("recentDay"), world):
            continue
        filts = cond.get("filts") or []
        if filts:
            tests = [
                filter_holds(
                    event_value(e, f["columnName"]), EVENT_PROPS[f["columnName"]][0], f, world.tz
                )
                for f in filts
            ]
            if not _join(tests, cond.get("relation")):
                continue
        out.append(e)
    return out


def measure(events: list[Event], analysis: str, quota: str | None) -> float | None:
    """TIMES, SUM and DISTINCT of no events are 0; AVG, MAX and MIN of nothing are nothing."""
    if analysis == "TIMES":
        return float(len(events))
    assert quota is not None
    values = [event_value(e, quota) for e in events]
    present = [v for v in values if v is not None]
    if analysis == "DISTINCT":
        return float(len(set(present)))
    if analysis == "SUM":
        return float(sum(present))
    if not present:
        return None
    if analysis == "AVG":
        return float(sum(present) / len(present))
    return float(max(present) if analysis == "MAX" else min(present))


def compare_measure(m: float | None, comparator: str, num: Any) -> bool:
    if m is None:  # nothing compares true with nothing
        return False
    text = num if isinstance(num, str) else _text(num)
    if comparator == "range":
        low, high = (float(x) for x in text.split(","))
        return low <= m <= high
    return _compare(m, comparator, [float(text)])


def event_holds(cond: Json, user: User, world: World) -> bool:
    quota_def = cond.get("taPropQuota") or {}
    analysis = str(quota_def.get("analysis", "TIMES")).upper()
    m = measure(matching_events(world, user.id, cond), analysis, quota_def.get("quota"))
    comparator = cond.get("comparator") or cond["uceCalcuSymbol"]
    return compare_measure(m, comparator, cond["num"])


def cluster_holds(d: Json, user: User, world: World) -> bool:
    parts = []
    filts = d.get("filts") or []
    if filts:
        tests = [
            filter_holds(
                user_value(user, f["columnName"]), USER_PROPS[f["columnName"]][0], f, world.tz
            )
            for f in filts
        ]
        parts.append(_join(tests, d.get("relation")))
    events = d.get("events") or []
    if events:
        parts.append(_join([event_holds(e, user, world) for e in events], d.get("event_relation")))
    return _join(parts, d.get("event_user_relation"))


def reference_cluster(d: Json, world: World) -> set[int]:
    return {u.id for u in world.users if cluster_holds(d, u, world)}


def reference_tag(t: Json, world: World) -> dict[int, Any]:
    """user id -> tag value (a str, or a float for numbers)."""
    out: dict[int, Any] = {}
    if "userTagValueDefs" in t:
        for u in world.users:
            for v in t["userTagValueDefs"]:  # the first value whose definition holds
                if cluster_holds(v["userClusterDef"], u, world):
                    out[u.id] = _text(v["tagValue"])
                    break
        return out
    if "userTagConFirstLastEventDef" in t:
        d = t["userTagConFirstLastEventDef"]["userTagConFirstLastEvent"]
        prop = (d.get("calcPropVo") or d)["property"]["columnName"]
        for u in world.users:
            evs = matching_events(world, u.id, d)
            if not evs:
                continue
            key = [(e.time, e.id) for e in evs]
            pick = min if d.get("isFirstEvent", True) else max
            # The value on the first (last) matching event: a null there is no tag value.
            value = event_value(evs[key.index(pick(key))], prop)
            if value is not None:
                out[u.id] = value
        return out
    d = t["userTagConQuotaDef"]["userTagConQuotaEvent"]
    for u in world.users:
        evs = matching_events(world, u.id, d)
        # A metric tag is the measure of the user's matching events; a user without such events
        # has no tag value (the compiler's choice: it groups the events).
        if not evs:
            continue
        m = measure(evs, str(d.get("analysis", "TIMES")).upper(), d.get("quota"))
        if m is not None:
            out[u.id] = m
    return out


# ---- running on DuckDB and ClickHouse -------------------------------------------------------


_CON: list[duckdb.DuckDBPyConnection] = []
_ARROW = {
    T.NUMBER: pa.float64(),
    T.STRING: pa.string(),
    T.BOOL: pa.bool_(),
    T.DATETIME: pa.timestamp("us"),
    T.LIST: pa.list_(pa.string()),
}
PROFILES = pa.schema(
    [("user_id", pa.int64()), *((f"p_{i}", _ARROW[t]) for t, _, i in USER_PROPS.values())]
)
EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_name", pa.string()),
        ("event_time", pa.timestamp("us")),
        ("user_id", pa.int64()),
        *((f"p_{i}", _ARROW[t]) for t, _, i in EVENT_PROPS.values()),
    ]
)


def load(world: World) -> duckdb.DuckDBPyConnection:
    """The world as the project's two tables (Arrow tables registered with one connection that
    serves all tests: each world replaces the previous one)."""
    if not _CON:
        _CON.append(duckdb.connect())
    con = _CON[0]
    users = [
        [u.id, u.level, u.name, u.vip, u.seen, None if u.tags is None else list(u.tags)]
        for u in world.users
    ]
    events = [[e.id, e.name, e.time, e.user_id, e.amount, e.os] for e in world.events]
    for name, schema, rows in (("p1_profiles", PROFILES, users), ("p1_events", EVENTS, events)):
        columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in schema]
        con.register(name, pa.table(columns, schema=schema))
    return con


# The same columns in ClickHouse, typed as the ClickHouse store types them.
CH_TYPES = CLICKHOUSE.column_types
CH_EVENTS = [
    ("event_id", "String"),
    ("event_name", "String"),
    ("event_time", "DateTime64(6, 'UTC')"),
    ("user_id", "Int64"),
    *((f"p_{i}", CH_TYPES[t]) for t, _, i in EVENT_PROPS.values()),
]
_STORES: dict[str, Store] = {}
_projects = itertools.count(1)
_BUDGET = Budget(seconds=60.0, memory_bytes=1 << 30)


def store_of(engine: str) -> Store:
    """The engine's analytic store, one for the whole run (each world is a project of it)."""
    if engine not in _STORES:
        if engine == "postgresql":
            from tests.engines import new_database

            _STORES[engine] = open_store(new_database())
        else:
            url = f"chdb://{clickhouse.path()}?database=segments_reference_store"
            _STORES[engine] = open_store(url)
    return _STORES[engine]


def load_store(world: World, engine: str) -> int:
    """The world written into a new project of the engine's store, through its writer; the
    project's id."""
    store, project = store_of(engine), next(_projects)
    user_props = [SCHEMA.user[n] for n in USER_PROPS]
    event_props = [SCHEMA.event[n] for n in EVENT_PROPS]
    epoch = datetime(1970, 1, 1)

    def us(t: datetime) -> int:
        return (t - epoch) // timedelta(microseconds=1)

    def values(obj: Any, props: dict[str, tuple[T, str, int]]) -> dict[int, Any]:
        out = {pid: getattr(obj, attr) for _, attr, pid in props.values()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    with store.writer() as w:
        w.ensure_project(project)
        w.ensure_columns(project, [*user_props, *event_props])
        w.upsert_profiles(
            project,
            ProfileRows(
                [u.id for u in world.users],
                [0] * len(world.users),
                [values(u, USER_PROPS) for u in world.users],
            ),
            user_props,
        )
        w.upsert_events(
            project,
            EventRows(
                [e.id for e in world.events],
                [e.name for e in world.events],
                [us(e.time) for e in world.events],
                [0] * len(world.events),
                [e.user_id for e in world.events],
                [values(e, EVENT_PROPS) for e in world.events],
            ),
            event_props,
        )
    return project


def run(compiled: Compiled, world: World, engine: str = "duckdb") -> list[tuple[int, str | None]]:
    rows: list[tuple[int, str | None]]
    if engine in ("postgresql", "clickhouse"):
        project = load_store(world, engine)
        got = store_of(engine).segment_rows(project, compiled.query, _BUDGET)
        return [(r["user_id"], r["tag_value"]) for r in got.to_pylist()]
    rows = load(world).execute(compiled.sql(DUCKDB.sql, TABLES)).fetchall()
    return rows


def run_cluster(d: Json, world: World, engine: str = "duckdb") -> set[int]:
    compiled = world.compiler().cluster(parse_cluster(d))
    assert compiled.spans == [expected_span(e.get("recentDay"), world) for e in d.get("events", [])]
    rows = run(compiled, world, engine)
    assert all(v is None for _, v in rows)
    ids = [u for u, _ in rows]
    assert len(ids) == len(set(ids)), "a user selected twice"
    return set(ids)


def run_tag(t: Json, world: World, engine: str = "duckdb") -> dict[int, str]:
    rows = run(world.compiler().tag(parse_tag(t)), world, engine)
    out: dict[int, str] = {}
    for u, v in rows:
        assert u not in out, "a user tagged twice"
        assert v is not None
        out[u] = v
    return out


def assert_number_text(text: str, expected: float) -> None:
    """A number as the compiler renders it: whole numbers below 1e15 without ``.0``."""
    if expected.is_integer() and abs(expected) < 1e15:
        assert text == str(int(expected)), (text, expected)
    else:
        assert math.isclose(float(text), expected, rel_tol=1e-12), (text, expected)


def assert_tags_equal(got: dict[int, str], want: dict[int, Any]) -> None:
    assert set(got) == set(want), (got, want)
    for u, value in want.items():
        if isinstance(value, float):
            assert_number_text(got[u], value)
        else:
            assert got[u] == value, (u, got[u], value)


# ---- worlds --------------------------------------------------------------------------------

# Local "now"s: ordinary, just after and just before local midnight, and days after DST changes,
# so that some windowed days are 23 or 25 hours long.
NOWS: dict[str, list[datetime]] = {
    "Asia/Shanghai": [
        datetime(2020, 1, 10, 10, 51),
        datetime(2020, 1, 10, 0, 0, 0),
        datetime(2020, 1, 9, 23, 59, 59),
    ],
    "UTC": [datetime(2020, 1, 10, 2, 51), datetime(2020, 1, 10, 0, 0, 1)],
    # DST changes at midnight: 2020-03-08 starts at 01:00, 2020-11-01 has two 00:xx hours.
    "America/Havana": [datetime(2020, 3, 9, 0, 30), datetime(2020, 11, 1, 23, 59)],
    "America/New_York": [datetime(2020, 3, 9, 0, 30), datetime(2020, 11, 2, 23, 59, 59)],
}
# Times of day near local midnight (and near UTC midnight seen from Shanghai, and the reverse).
TIMES_OF_DAY = [
    time(0, 0, 0),
    time(0, 0, 0, 1),
    time(7, 59, 59),
    time(8, 0, 0),
    time(12, 0, 0),
    time(16, 0, 0),
    time(23, 59, 59),
    time(23, 59, 59, 999999),
]
NUMS = [-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.5, 5.0]
AMOUNTS = [-2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]
NAMES = ["", "a", "ab", "b", "ba"]
ITEMS = ["a", "b", "x", ""]
OSES = ["android", "ios", "", "and"]
EVENT_NAMES = ["pay", "login", "view"]
REGEXES = ["^a", "b$", "a.b", "^$", "a|b", "^a?b$", "[ab]{2}"]


def _local(world_day: date, days: int, tod: time) -> datetime:
    return datetime.combine(world_day + timedelta(days=days), tod)


def _maybe(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


# A user's properties; the datetime as (days from today, time of day), local.
_USER_ROW = st.tuples(
    _maybe(st.sampled_from(NUMS)),
    _maybe(st.sampled_from(NAMES)),
    _maybe(st.booleans()),
    _maybe(st.tuples(st.integers(-3, 1), st.sampled_from(TIMES_OF_DAY))),
    _maybe(st.lists(st.sampled_from(ITEMS), max_size=3).map(tuple)),
)
# An event: local day and time, name, owner (an index), amount, os.
_EVENT_ROW = st.tuples(
    st.integers(-12, 3),
    st.sampled_from(TIMES_OF_DAY),
    st.sampled_from(EVENT_NAMES),
    st.integers(0, 11),
    _maybe(st.sampled_from(AMOUNTS)),
    _maybe(st.sampled_from(OSES)),
)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    zone_name = draw(st.sampled_from(sorted(NOWS)))
    tz = zone(zone_name)
    now_local = draw(st.sampled_from(NOWS[zone_name]))
    today = now_local.date()
    ids = draw(st.lists(st.integers(1, 20), unique=True, max_size=12))
    rows = draw(st.lists(_USER_ROW, min_size=len(ids), max_size=len(ids)))
    users = tuple(
        User(
            id=uid,
            level=level,
            name=name,
            vip=vip,
            seen=None if seen is None else utc_naive(_local(today, *seen), tz),
            tags=tags,
        )
        for uid, (level, name, vip, seen, tags) in zip(ids, rows, strict=True)
    )
    # Events of the users, but not of the last two (users without events). The store keeps no
    # events of users without a profile (deleting a user deletes its events; a merge moves them).
    owners = ids[: max(1, len(ids) - 2)]
    erows = draw(st.lists(_EVENT_ROW, max_size=40)) if owners else []
    order = draw(st.permutations(range(len(erows))))  # event ids do not follow time order
    events = tuple(
        Event(
            id=f"e{order[k]:02d}",
            name=name,
            time=utc_naive(_local(today, days, tod), tz),
            user_id=owners[owner % len(owners)],
            amount=amount,
            os=os,
        )
        for k, (days, tod, name, owner, amount, os) in enumerate(erows)
    )
    return World(zone_name, now_local.replace(tzinfo=tz).astimezone(UTC), users, events)


# ---- definitions ---------------------------------------------------------------------------


def _num_json(draw: st.DrawFn, x: float) -> Any:
    """A number as clients send it: bare, or as text in one of a few spellings."""
    return draw(st.sampled_from([_text(x), repr(x), f" {_text(x)} ", x]))


def _datetime_texts(world: World) -> list[str]:
    out = []
    for days in (-3, -2, -1, 0, 1):
        for tod in TIMES_OF_DAY:
            local = _local(world.today, days, tod)
            out.append(local.strftime("%Y-%m-%d %H:%M:%S"))
            if tod.microsecond:
                out.append(local.strftime("%Y-%m-%d %H:%M:%S.%f"))
            if tod in (time(0), time(16)):  # the same instant in UTC, and in epoch seconds
                aware = local.replace(tzinfo=world.tz)
                out.append(aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                out.append(str(int(aware.timestamp())))
    return out


@st.composite
def filters(
    draw: st.DrawFn, world: World, props: dict[str, tuple[T, str, int]], table: str
) -> Json:
    name = draw(st.sampled_from(sorted(props)))
    ptype = props[name][0]
    c = draw(st.sampled_from(APPLICABLE[ptype]))
    f: Json = {"columnName": name, "tableType": table, "comparator": c}
    if c in ("isNull", "notNull", "isTrue", "isFalse"):
        return f
    pool: list[Any]
    if ptype is T.NUMBER:
        pool = NUMS
    elif ptype is T.DATETIME:
        pool = _datetime_texts(world)
    elif ptype is T.BOOL:
        pool = ["true", "false", "1", "0", "yes", "no", "TRUE"]
    elif ptype is T.LIST:
        pool = ITEMS
    elif c in ("regexMatch", "notRegexMatch"):
        pool = REGEXES
    elif c in ("include", "notInclude"):
        pool = ["", "a", "b", "ab", "an", "ro"]
    elif table == "event":
        pool = OSES
    else:
        pool = NAMES
    if c in ("equal", "notEqual"):
        values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    elif c == "range":
        pair = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=2))
        key = (lambda v: _typed(v, ptype, world.tz)) if ptype is T.DATETIME else float
        values = sorted(pair, key=key)
    else:
        values = [draw(st.sampled_from(pool))]
    f["ftv"] = [_num_json(draw, v) if ptype is T.NUMBER else v for v in values]
    return f


RECENT = st.one_of(
    st.none(),
    st.just(""),
    st.tuples(st.integers(0, 10), st.integers(0, 10)).map(
        lambda p: f"{min(p)}-{max(p)}" if p[0] != 3 else f" {min(p)} - {max(p)} "
    ),
)
RELATIONS = st.sampled_from(["and", "or", "AND", "Or"])


@st.composite
def measures(draw: st.DrawFn) -> Json:
    analysis = draw(st.sampled_from(ANALYSES))
    if analysis == "TIMES":
        return draw(st.sampled_from([{}, {"analysis": "TIMES"}, {"analysis": "times"}]))
    quota = draw(st.sampled_from(["amount", "os"])) if analysis == "DISTINCT" else "amount"
    return {"analysis": analysis, "quota": quota}


@st.composite
def event_conditions(draw: st.DrawFn, world: World) -> Json:
    c = draw(st.sampled_from(MEASURE_COMPARATORS))
    if c == "range":
        low, high = sorted(draw(st.lists(st.sampled_from(NUMS), min_size=2, max_size=2)))
        num: Any = f"{_text(low)},{_text(high)}"
    else:
        num = _num_json(draw, draw(st.sampled_from(NUMS)))
    cond: Json = {"eventName": draw(st.sampled_from([*EVENT_NAMES, "nope"]))}
    cond[draw(st.sampled_from(["comparator", "uceCalcuSymbol"]))] = c
    cond["num"] = num
    m = draw(measures())
    if m:
        cond["taPropQuota"] = m
    recent = draw(RECENT)
    if recent is not None:
        cond["recentDay"] = recent
    filts = draw(st.lists(filters(world, EVENT_PROPS, "event"), max_size=2))
    if filts:
        cond["filts"] = filts
        cond["relation"] = draw(RELATIONS)
    return cond


@st.composite
def cluster_defs(draw: st.DrawFn, world: World) -> Json:
    filts = draw(st.lists(filters(world, USER_PROPS, "user"), max_size=3))
    events = draw(st.lists(event_conditions(world), min_size=0 if filts else 1, max_size=3))
    d: Json = {"filts": filts, "events": events}
    for k in ("relation", "event_relation", "event_user_relation"):
        d[k] = draw(st.one_of(RELATIONS, st.none()))
    return d


@st.composite
def value_tags(draw: st.DrawFn, world: World) -> Json:
    labels = draw(
        st.lists(
            st.sampled_from(["gold", "silver", "bronze", "1", "2.5"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    return {
        "userTagValueDefs": [
            {
                "tagValue": float(v) if v == "2.5" and draw(st.booleans()) else v,
                "userClusterDef": draw(cluster_defs(world)),
            }
            for v in labels
        ]
    }


def _event_scope(draw: st.DrawFn, world: World, d: Json) -> Json:
    recent = draw(RECENT)
    if recent is not None:
        d["recentDay"] = recent
    filts = draw(st.lists(filters(world, EVENT_PROPS, "event"), max_size=2))
    if filts:
        d["filts"] = filts
        d["relation"] = draw(RELATIONS)
    return d


@st.composite
def first_last_tags(draw: st.DrawFn, world: World) -> Json:
    prop = {"columnName": draw(st.sampled_from(["amount", "os"])), "tableType": "event"}
    d: Json = {
        "eventName": draw(st.sampled_from(EVENT_NAMES)),
        "isFirstEvent": draw(st.booleans()),
        "calcPropVo": {"property": prop},
    }
    return {
        "userTagConFirstLastEventDef": {"userTagConFirstLastEvent": _event_scope(draw, world, d)}
    }


@st.composite
def quota_tags(draw: st.DrawFn, world: World) -> Json:
    d: Json = {"type": "normal", "eventName": draw(st.sampled_from(EVENT_NAMES))}
    d.update(draw(measures()))
    return {"userTagConQuotaDef": {"userTagConQuotaEvent": _event_scope(draw, world, d)}}


@st.composite
def cases(draw: st.DrawFn, kind: str) -> tuple[World, Json]:
    world = draw(worlds())
    make = {
        "cluster": cluster_defs,
        "values": value_tags,
        "first_last": first_last_tags,
        "quota": quota_tags,
    }[kind]
    return world, draw(make(world))


# ---- properties ----------------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(cases("cluster"))
def test_cluster_matches_reference(case: tuple[World, Json]) -> None:
    world, d = case
    want = reference_cluster(d, world)
    for engine in ENGINES:
        assert run_cluster(d, world, engine) == want, engine


@settings(max_examples=120, deadline=None)
@given(cases("values"))
def test_value_tag_matches_reference(case: tuple[World, Json]) -> None:
    world, t = case
    for engine in ENGINES:
        assert_tags_equal(run_tag(t, world, engine), reference_tag(t, world))
    compiled = world.compiler().tag(parse_tag(t))  # the windows of all values, in order
    events = [e for v in t["userTagValueDefs"] for e in v["userClusterDef"]["events"]]
    assert compiled.spans == [expected_span(e.get("recentDay"), world) for e in events]


@settings(max_examples=120, deadline=None)
@given(cases("first_last"))
def test_first_last_tag_matches_reference(case: tuple[World, Json]) -> None:
    world, t = case
    for engine in ENGINES:
        assert_tags_equal(run_tag(t, world, engine), reference_tag(t, world))


@settings(max_examples=120, deadline=None)
@given(cases("quota"))
def test_quota_tag_matches_reference(case: tuple[World, Json]) -> None:
    world, t = case
    for engine in ENGINES:
        assert_tags_equal(run_tag(t, world, engine), reference_tag(t, world))


# ---- examples: the edges, spelled out ------------------------------------------------------

SHANGHAI = "Asia/Shanghai"
REFRESHED = datetime(2020, 1, 10, 2, 51, tzinfo=UTC)  # 2020-01-10 10:51 in Shanghai


def world_of(users: list[User], events: list[Event], zone_name: str = SHANGHAI) -> World:
    return World(zone_name, REFRESHED, tuple(users), tuple(events))


_event_ids = itertools.count()


def ev(
    user_id: int,
    name: str,
    when: datetime,
    amount: float | None = None,
    os: str | None = None,
    event_id: str | None = None,
) -> Event:
    return Event(event_id or f"x{next(_event_ids):04d}", name, when, user_id, amount, os)


SEED: Json = {
    "events": [
        {
            "comparator": "greater",
            "eventName": "consume_item",
            "num": "4",
            "recentDay": "1-7",
            "taPropQuota": {"analysis": "TIMES"},
        },
        {
            "comparator": "less",
            "eventName": "pay",
            "num": "3",
            "filts": [
                {
                    "columnName": "os",
                    "comparator": "include",
                    "ftv": ["and'roid"],
                    "tableType": "event",
                }
            ],
        },
    ],
    "event_relation": "or",
    "filts": [
        {"columnName": "level", "comparator": "equal", "ftv": ["3", "4"], "tableType": "user"},
        {"columnName": "tags", "comparator": "include", "ftv": ["x"], "tableType": "user"},
    ],
    "relation": "and",
    "event_user_relation": "and",
}


@pytest.mark.parametrize("engine", ENGINES)
def test_seed_example_window_and_users(engine: str) -> None:
    """Refreshed 2020-01-10 in Shanghai, "1-7" is 2020-01-03 00:00:00 to 2020-01-09 23:59:59
    local: 2020-01-02 16:00 to 2020-01-09 16:00 UTC."""
    compiled = world_of([], []).compiler().cluster(parse_cluster(SEED))
    assert compiled.spans == [
        Span(
            start_local=datetime(2020, 1, 3),
            end_local=datetime(2020, 1, 9, 23, 59, 59),
            start_utc=datetime(2020, 1, 2, 16),
            end_utc=datetime(2020, 1, 9, 16),
        ),
        None,
    ]
    inside = datetime(2020, 1, 5, 12)
    first_in = datetime(2020, 1, 2, 16, 0, 0)  # 2020-01-03 00:00:00 local
    last_in = datetime(2020, 1, 9, 15, 59, 59, 999999)  # 2020-01-09 23:59:59.999999 local
    before = datetime(2020, 1, 2, 15, 59, 59, 999999)  # 2020-01-02 23:59:59.999999 local
    after = datetime(2020, 1, 9, 16, 0, 0)  # 2020-01-10 00:00:00 local (today)
    users = [
        User(1, level=3, tags=("x",)),
        User(2, level=4, tags=("x", "y")),
        User(3, level=3, tags=("x",)),  # no events: pays fewer than 3 times
        User(4, level=5, tags=("x",)),  # wrong level
        User(5, level=3, tags=()),  # no "x"
        User(6, level=4, tags=("x",)),
        User(7, level=None, tags=("x",)),
    ]
    events = [
        *(ev(1, "consume_item", inside) for _ in range(5)),
        *(ev(2, "consume_item", inside) for _ in range(4)),
        ev(2, "consume_item", before),
        ev(2, "consume_item", after),
        *(ev(2, "pay", inside, os="x and'roid y") for _ in range(3)),
        *(ev(6, "pay", inside, os="and'roid") for _ in range(3)),
        *(ev(6, "consume_item", inside) for _ in range(3)),
        ev(6, "consume_item", first_in),
        ev(6, "consume_item", last_in),
        *(ev(5, "consume_item", inside) for _ in range(5)),
        *(ev(4, "consume_item", inside) for _ in range(5)),
    ]
    world = world_of(users, events)
    assert run_cluster(SEED, world, engine) == {1, 3, 6}
    assert reference_cluster(SEED, world) == {1, 3, 6}


def _times(num: str, comparator: str = "less", **extra: Any) -> Json:
    return {"events": [{"eventName": "pay", "comparator": comparator, "num": num, **extra}]}


@pytest.mark.parametrize("engine", ENGINES)
def test_times_less_includes_users_without_events(engine: str) -> None:
    now = datetime(2020, 1, 10)
    users = [User(1), User(2), User(3), User(4)]
    events = [
        ev(2, "pay", now),
        ev(2, "pay", now),
        *(ev(3, "pay", now) for _ in range(3)),
        *(ev(4, "login", now) for _ in range(5)),  # other events do not count
    ]
    world = world_of(users, events)
    assert run_cluster(_times("3"), world, engine) == {1, 2, 4}
    assert run_cluster(_times("0", "equal"), world, engine) == {1, 4}
    assert run_cluster(_times("0,2", "range"), world, engine) == {1, 2, 4}
    assert run_cluster(_times("1", "greaterEqual"), world, engine) == {2, 3}
    # In a window without any of their events, every user has 0.
    assert run_cluster(_times("1", recentDay="5-9"), world, engine) == {1, 2, 3, 4}


@pytest.mark.parametrize("analysis", ["SUM", "DISTINCT"])
@pytest.mark.parametrize("engine", ENGINES)
def test_sum_and_distinct_are_zero_without_events(engine: str, analysis: str) -> None:
    now = datetime(2020, 1, 10)
    users = [User(1), User(2), User(3)]
    events = [ev(2, "pay", now, amount=None), ev(3, "pay", now, amount=2)]
    world = world_of(users, events)
    d = _times("1", taPropQuota={"analysis": analysis, "quota": "amount"})
    assert run_cluster(d, world, engine) == {1, 2} == reference_cluster(d, world)


@pytest.mark.parametrize("analysis", ["AVG", "MAX", "MIN"])
@pytest.mark.parametrize(
    ("comparator", "num"),
    [
        ("less", "100"),
        ("lessEqual", "0"),
        ("equal", "0"),
        ("notEqual", "5"),
        ("greater", "-100"),
        ("greaterEqual", "-100"),
        ("range", "-100,100"),
    ],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_avg_max_min_never_match_users_without_values(
    engine: str, analysis: str, comparator: str, num: str
) -> None:
    now = datetime(2020, 1, 10)
    users = [User(1), User(2), User(3)]
    # 1: no events; 2: events without the property; 3: an amount of 0.
    events = [ev(2, "pay", now), ev(2, "pay", now), ev(3, "pay", now, amount=0)]
    world = world_of(users, events)
    d = _times(num, comparator, taPropQuota={"analysis": analysis, "quota": "amount"})
    assert run_cluster(d, world, engine) == {3} == reference_cluster(d, world)


NULL_NEGATIONS = [
    ("level", "notEqual", ["1"]),
    ("level", "notEqual", ["1", "2", "3"]),
    ("name", "notEqual", ["a"]),
    ("name", "notInclude", ["a"]),
    ("name", "notRegexMatch", ["^a"]),
    ("vip", "notEqual", ["true"]),
    ("vip", "isFalse", []),
    ("seen", "notEqual", ["2020-01-01 00:00:00"]),
    ("tags", "notEqual", ["a"]),
    ("tags", "notInclude", ["a"]),
]


@pytest.mark.parametrize(("column", "comparator", "ftv"), NULL_NEGATIONS)
@pytest.mark.parametrize("engine", ENGINES)
def test_negated_comparators_do_not_match_null(
    engine: str, column: str, comparator: str, ftv: list[str]
) -> None:
    world = world_of([User(1)], [])
    d = {"filts": [{"columnName": column, "comparator": comparator, "ftv": ftv}]}
    assert run_cluster(d, world, engine) == set()
    isnull = {"filts": [{"columnName": column, "comparator": "isNull"}]}
    assert run_cluster(isnull, world, engine) == {1}


@pytest.mark.parametrize("comparator", ["notEqual", "notInclude"])
@pytest.mark.parametrize("engine", ENGINES)
def test_negated_list_comparators_do_not_match_an_empty_list(engine: str, comparator: str) -> None:
    """``isNull`` reads an empty list as no value; a negated comparator "matches users who have a
    value", so it must not match a user whose list is empty, as it does not match one whose list
    is null. (Two users who both have no tags per ``isNull`` should not split on notInclude.)"""
    world = world_of([User(1, tags=None), User(2, tags=()), User(3, tags=("b",))], [])
    isnull = {"filts": [{"columnName": "tags", "comparator": "isNull"}]}
    assert run_cluster(isnull, world, engine) == {1, 2}
    d = {"filts": [{"columnName": "tags", "comparator": comparator, "ftv": ["a"]}]}
    assert run_cluster(d, world, engine) == {3}


def _first_last(first: bool, prop: str = "amount", **extra: Any) -> Json:
    return {
        "userTagConFirstLastEventDef": {
            "userTagConFirstLastEvent": {
                "eventName": "pay",
                "isFirstEvent": first,
                "calcPropVo": {"property": {"columnName": prop, "tableType": "event"}},
                **extra,
            }
        }
    }


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
def test_first_last_ties_on_time_go_to_the_event_id(engine: str, first: bool) -> None:
    at = datetime(2020, 1, 9)
    events = [
        ev(1, "pay", at, amount=2, os="b", event_id="e2"),
        ev(1, "pay", at, amount=1, os="a", event_id="e1"),
        ev(1, "pay", at, amount=3, os="c", event_id="e3"),
        ev(1, "pay", at - timedelta(seconds=1), amount=9, os="early", event_id="e9"),
        ev(1, "pay", at + timedelta(seconds=1), amount=8, os="late", event_id="e0"),
        ev(2, "pay", at, amount=1.5, os="x", event_id="b"),
        ev(2, "pay", at, amount=2.5, os="y", event_id="a"),
    ]
    world = world_of([User(1), User(2), User(3)], events)
    got = run_tag(_first_last(first), world, engine)
    assert got == ({1: "9", 2: "2.5"} if first else {1: "8", 2: "1.5"})
    assert run_tag(_first_last(first, "os"), world, engine) == (
        {1: "early", 2: "y"} if first else {1: "late", 2: "x"}
    )
    # Without the earliest and latest events, the tie decides.
    events = [e for e in events if e.id not in ("e9", "e0")]
    world = world_of([User(1), User(2), User(3)], events)
    assert run_tag(_first_last(first), world, engine) == (
        {1: "1", 2: "2.5"} if first else {1: "3", 2: "1.5"}
    )


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
def test_first_last_tag_is_the_value_on_that_event(engine: str, first: bool) -> None:
    """The value of the property on the user's first (last) matching event: when that event has
    no value, the user has none, rather than the value of some other event."""
    events = [
        ev(1, "pay", datetime(2020, 1, 8), amount=None, os=None),  # first
        ev(1, "pay", datetime(2020, 1, 9), amount=7, os="ios"),
        ev(1, "pay", datetime(2020, 1, 10), amount=None, os=None),  # last
        ev(2, "pay", datetime(2020, 1, 9), amount=4, os="android"),
    ]
    world = world_of([User(1), User(2)], events)
    assert run_tag(_first_last(first), world, engine) == {2: "4"}
    assert run_tag(_first_last(first, "os"), world, engine) == {2: "android"}


@pytest.mark.parametrize("engine", ENGINES)
def test_quota_tag_renders_numbers_and_omits_users_without_events(engine: str) -> None:
    now = datetime(2020, 1, 9)
    events = [
        ev(1, "pay", now, amount=1),
        ev(1, "pay", now, amount=2),
        ev(2, "pay", now, amount=0.5),
        ev(3, "pay", now, amount=None),
    ]
    world = world_of([User(1), User(2), User(3), User(4)], events)

    def tag(analysis: str) -> dict[int, str]:
        q = {"eventName": "pay", "analysis": analysis, "quota": "amount"}
        return run_tag({"userTagConQuotaDef": {"userTagConQuotaEvent": q}}, world, engine)

    assert tag("SUM") == {1: "3", 2: "0.5", 3: "0"}
    assert tag("AVG") == {1: "1.5", 2: "0.5"}
    assert tag("MAX") == {1: "2", 2: "0.5"}
    assert tag("TIMES") == {1: "2", 2: "1", 3: "1"}
    assert tag("DISTINCT") == {1: "2", 2: "1", 3: "0"}


@pytest.mark.parametrize("engine", ENGINES)
def test_value_tag_first_matching_value_wins(engine: str) -> None:
    world = world_of([User(1, level=5), User(2, level=3), User(3, level=1), User(4)], [])

    def at_least(n: int) -> Json:
        return {"filts": [{"columnName": "level", "comparator": "greaterEqual", "ftv": [n]}]}

    t = {
        "userTagValueDefs": [
            {"tagValue": "gold", "userClusterDef": at_least(5)},
            {"tagValue": "silver", "userClusterDef": at_least(3)},
            {"tagValue": 1, "userClusterDef": at_least(1)},
        ]
    }
    assert run_tag(t, world, engine) == {1: "gold", 2: "silver", 3: "1"} == reference_tag(t, world)


@pytest.mark.parametrize(
    ("ptype", "comparator"),
    [(t, c) for t in APPLICABLE for c in ALL_COMPARATORS],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_comparators_apply_to_their_types_only(engine: str, ptype: T, comparator: str) -> None:
    name = next(n for n, (t, _, _) in USER_PROPS.items() if t is ptype)
    ftv = {
        T.NUMBER: ["1", "2"],
        T.DATETIME: ["2020-01-01 00:00:00", "2020-01-02 00:00:00"],
        T.STRING: ["a", "b"],
        T.BOOL: ["true", "false"],
        T.LIST: ["a", "b"],
    }[ptype]
    ftv = ftv if comparator in ("equal", "notEqual", "range") else ftv[:1]
    d = parse_cluster({"filts": [{"columnName": name, "comparator": comparator, "ftv": ftv}]})
    world = world_of([User(1)], [])
    if comparator in APPLICABLE[ptype]:
        run(world.compiler().cluster(d), world, engine)
    else:
        with pytest.raises(CdpError) as err:
            world.compiler().cluster(d)
        assert err.value.code is Code.VALIDATION_FAILED
        assert err.value.field == "qp.filts.0.comparator"


def test_a_compiler_compiles_each_definition_on_its_own() -> None:
    """``Compiled.spans`` holds the windows of the definition compiled, one per event
    condition; compiling a second definition with the same compiler leaves the first alone."""
    compiler = world_of([], []).compiler()
    a = compiler.cluster(parse_cluster(_times("3", recentDay="0-1")))
    assert len(a.spans) == 1
    b = compiler.cluster(parse_cluster(_times("3", recentDay="2-3")))
    assert len(b.spans) == 1
    assert len(a.spans) == 1


@pytest.mark.parametrize(
    "tag",
    [
        _first_last(True, recentDay="1-7"),
        {"userTagConQuotaDef": {"userTagConQuotaEvent": {"eventName": "pay", "recentDay": "1-7"}}},
    ],
)
def test_event_tags_report_their_window(tag: Json) -> None:
    world = world_of([], [])
    compiled = world.compiler().tag(parse_tag(tag))
    assert compiled.spans == [expected_span("1-7", world)]


@pytest.mark.parametrize("session", ["UTC", "America/New_York"])
@pytest.mark.parametrize(
    ("zone_name", "paid"),
    [
        (SHANGHAI, datetime(2020, 1, 9, 16, 30)),  # 2020-01-10 00:30:00 in Shanghai
        ("America/Havana", datetime(2020, 3, 8, 5, 0)),  # 01:00 CDT; 00:00 CST did not happen
        ("America/Havana", datetime(2020, 11, 1, 4, 30)),  # 00:30 CDT, the first 00:30
        ("America/Havana", datetime(2020, 11, 1, 5, 30)),  # 00:30 CST, the second
        ("UTC", datetime(2020, 1, 9, 23, 59, 59, 999999)),
    ],
)
def test_first_last_tag_of_a_datetime_reads_in_the_project_timezone(
    session: str, zone_name: str, paid: datetime
) -> None:
    """Datetimes in definitions are read in the project's timezone, and the ThinkingData surface
    shows stored datetimes in it; a tag value taken from a datetime property reads the same
    way (not as the stored UTC wall clock), whatever the database session's own timezone."""
    schema = Schema(1, event={"paid_at": Property(8, "event", "paid_at", T.DATETIME)})
    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{session}'")
    con.execute(
        "CREATE TABLE p1_events (event_id VARCHAR, event_name VARCHAR, event_time TIMESTAMP, "
        "user_id BIGINT, p_8 TIMESTAMP)"
    )
    con.execute("INSERT INTO p1_events VALUES ('e1', 'pay', ?, 1, ?)", [paid, paid])
    compiled = Compiler(schema, zone(zone_name), REFRESHED).tag(
        parse_tag(_first_last(True, "paid_at"))
    )
    local = paid.replace(tzinfo=UTC).astimezone(zone(zone_name))
    want = local.strftime("%Y-%m-%d %H:%M:%S")
    assert con.execute(compiled.sql(DUCKDB.sql, TABLES)).fetchall() == [(1, want)]
    # ClickHouse: the same, with the session's time zone set otherwise.
    clickhouse.database("segments_reference")
    clickhouse.create(
        "p1_datetimes",
        [*CH_EVENTS[:4], ("p_8", CLICKHOUSE.column_types[T.DATETIME])],
    )
    clickhouse.fill("p1_datetimes", [["e1", "pay", paid, 1, paid]])
    sql = compiled.sql(CLICKHOUSE.sql, {EVENTS_TABLE: "p1_datetimes"})
    settings = f" SETTINGS session_timezone = '{session}'"
    assert clickhouse.query(sql + settings) == [(1, want)]
