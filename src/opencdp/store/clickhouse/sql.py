"""What ClickHouse's SQL is made of: its capabilities, column types, how it writes the
operations of a segment's neutral tree, and the store's tables.

Trees are rendered for ClickHouse from the neutral tree, never transpiled from DuckDB's SQL
text: the two differ where a transpiler cannot tell (a ``TIMESTAMP`` would become a
``DateTime`` of whole seconds). Timestamps are ``DateTime64(6, 'UTC')``; every session pins
``session_timezone = 'UTC'``.

Physical model (``docs/architecture.md``, "The ClickHouse store"): the tables are shared by
every project, with ``project_id`` leading each sort key, and a typed column per property
(``p_<property id>``: property ids are unique across projects). ClickHouse has no UPDATE and
no transactions, so a changed row is a new version of its key (``ReplacingMergeTree`` keyed by
``_version``, with ``_deleted`` for a removal), read exactly with ``FINAL``; except events,
which are never versioned: each event id is one row, de-duplicated before it is inserted
(``event_ids``), and a merge of users maps a loser's events to its survivor when they are read
(``overrides``) instead of rewriting them.
"""

from __future__ import annotations

import re

import sqlglot.expressions as exp

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store import tree
from opencdp.store.base import Capabilities
from opencdp.store.names import ident


def _arg_null(name: str) -> tree.Rewrite:
    """``argMin``/``argMax`` skip a null value; a one-item tuple is never null, so the value
    on the first (last) row is kept even when it is null."""

    def write(node: exp.Expr) -> exp.Expr:
        kept = exp.Anonymous(this="tuple", expressions=[node.this])
        pick = exp.Anonymous(this=name, expressions=[kept, node.expression])
        return exp.Anonymous(this="tupleElement", expressions=[pick, exp.Literal.number(1)])

    return write


def _local_time_text(node: exp.Expr) -> exp.Expr:
    local = exp.Anonymous(this="toTimeZone", expressions=[node.this, node.args["zone"]])
    fmt = exp.Literal.string("%Y-%m-%d %H:%i:%S")
    return exp.Anonymous(this="formatDateTime", expressions=[local, fmt])


def _timestamp(node: exp.Expr) -> exp.Expr:
    args = [node.this, exp.Literal.number(6), exp.Literal.string("UTC")]
    return exp.Anonymous(this="toDateTime64", expressions=args)


def _strict_cast(node: exp.Expr) -> exp.Expr:
    """A cast to a number, a boolean or a time fails on a value it cannot read, as on the
    other engines (ClickHouse's cast to a ``Nullable`` type would give null), and keeps a
    null. A cast of null, or to text, never fails: written as it is."""
    assert isinstance(node, exp.Cast)
    to = node.to
    if isinstance(node.this, exp.Null) or to.is_type(*exp.DataType.TEXT_TYPES):
        return node
    strict = to.copy()
    strict.set("nullable", False)
    inner = exp.Cast(
        this=exp.Anonymous(this="assumeNotNull", expressions=[node.this.copy()]), to=strict
    )
    return exp.If(
        this=exp.Is(this=node.this.copy(), expression=exp.null()), true=exp.null(), false=inner
    )


# How ClickHouse writes the operations of a segment's neutral tree.
SQL = tree.SqlDialect(
    engine="clickhouse",
    sqlglot="clickhouse",
    operations={
        tree.ArgMinNull: _arg_null("argMin"),
        tree.ArgMaxNull: _arg_null("argMax"),
        tree.ListHasAny: tree.function("hasAny"),
        tree.ListLength: tree.function("length"),
        tree.ListText: tree.function("arrayStringConcat"),
        tree.NumberText: tree.function("toString"),  # whole numbers without ".0"
        tree.LocalTimeText: _local_time_text,
        tree.Timestamp: _timestamp,
        exp.Cast: _strict_cast,
    },
)

# ``column_types``: the types a segment query sees a property as. A list is an ``Array`` there
# (no items for none: an Array cannot be Nullable, and definitions read an empty list as no
# value anyway); it is stored as JSON text (STORAGE_TYPES), which keeps null and [] apart.
CAPABILITIES = Capabilities(
    name="clickhouse",
    sql=SQL,
    column_types={
        PropertyType.STRING: "Nullable(String)",
        PropertyType.NUMBER: "Nullable(Float64)",
        PropertyType.BOOL: "Nullable(Bool)",
        PropertyType.DATETIME: "Nullable(DateTime64(6, 'UTC'))",
        PropertyType.LIST: "Array(String)",
    },
    # An INSERT is atomic per block and nothing more: a batch's marker follows its rows,
    # whose writes are idempotent by key (a new version of a key, or an event id written
    # once).
    transactions=False,
    upsert="version",
    isolation="column",
    # ADD COLUMN changes metadata only.
    columns_per_transaction=1_000,
)

TIME = "DateTime64(6, 'UTC')"
VERSIONED = "_version UInt64, _deleted UInt8"
REPLACING = "ReplacingMergeTree(_version, _deleted)"

# The store's tables: name -> (columns, engine and keys). Every project's rows share them,
# ``project_id`` leading each key.
TABLES: dict[str, tuple[str, str]] = {
    # ``_position``: the ingest log position of the last record folded into the profile (a
    # replayed flush leaves out what it covers: StoreWriter.profile_stamps).
    "profiles": (
        f"project_id UInt64, user_id Int64, created_at {TIME}, updated_at {TIME}, "
        f"_position UInt128, {VERSIONED}",
        f"{REPLACING} ORDER BY (project_id, user_id)",
    ),
    "identities": (
        f"project_id UInt64, key_id Int64, value String, user_id Int64, {VERSIONED}, "
        "INDEX user_idx user_id TYPE bloom_filter GRANULARITY 1",
        f"{REPLACING} ORDER BY (project_id, key_id, value)",
    ),
    # A merged user's events keep the user id they were written with; ``overrides`` maps
    # each loser to its (final) survivor, and every read of events applies it.
    "overrides": (
        f"project_id UInt64, old_user_id Int64, user_id Int64, {VERSIONED}",
        f"{REPLACING} ORDER BY (project_id, old_user_id)",
    ),
    # Sorted by event name, then user, then time: what segment conditions select by
    # (3-5x faster than time order in measurements); partitioned by the month received,
    # what exports read by.
    "events": (
        f"project_id UInt64, event_name String, user_id Int64, event_time {TIME}, "
        f"event_id String, received_at {TIME}, _version UInt64, "
        "INDEX received_idx received_at TYPE minmax GRANULARITY 1",
        "MergeTree PARTITION BY toYYYYMM(received_at) "
        "ORDER BY (project_id, event_name, user_id, event_time, event_id)",
    ),
    # Each stored event's key in ``events``: found by event id before a batch is written.
    "event_ids": (
        f"project_id UInt64, event_id String, event_name String, user_id Int64, "
        f"event_time {TIME}, {VERSIONED}",
        f"{REPLACING} ORDER BY (project_id, event_id)",
    ),
    "list_members": (
        f"project_id UInt64, list_id Int64, user_id Int64, {VERSIONED}",
        f"{REPLACING} ORDER BY (project_id, list_id, user_id)",
    ),
    "segment_members": (
        f"project_id UInt64, segment_id Int64, version Int64, user_id Int64, "
        f"tag_value Nullable(String), {VERSIONED}, "
        "INDEX user_idx user_id TYPE bloom_filter GRANULARITY 1",
        f"{REPLACING} ORDER BY (project_id, segment_id, version, user_id)",
    ),
    "documents": (
        f"project_id UInt64, collection_id Int64, _id String, doc String, updated_at {TIME}, "
        f"{VERSIONED}",
        f"{REPLACING} ORDER BY (project_id, collection_id, _id)",
    ),
    # The store's own rows, not a project's.
    "_opencdp_state": (f"name String, value Int64, {VERSIONED}", f"{REPLACING} ORDER BY name"),
    "_opencdp_batches": (f"key String, outcome String, {VERSIONED}", f"{REPLACING} ORDER BY key"),
    "_opencdp_user_ids": (
        "project_id UInt64, next_id Int64",
        "MergeTree ORDER BY project_id",
    ),
    "_opencdp_reserved_ids": (
        f"key String, project_id UInt64, first_id Int64, count Int64, {VERSIONED}",
        f"{REPLACING} ORDER BY key",
    ),
}
# How a cluster spreads each table over its shards: a function of the leading columns of the
# table's key, so that every version of a row lands on one shard (where FINAL, and a
# de-duplication by key, see them all). A user's profile, memberships and the events written
# with its id share a shard.
SHARDING = {
    "profiles": "cityHash64(project_id, user_id)",
    "identities": "cityHash64(project_id, key_id, value)",
    "overrides": "cityHash64(project_id, old_user_id)",
    "events": "cityHash64(project_id, user_id)",
    "event_ids": "cityHash64(project_id, event_id)",
    "list_members": "cityHash64(project_id, user_id)",
    "segment_members": "cityHash64(project_id, user_id)",
    "documents": "cityHash64(project_id, collection_id, _id)",
    "_opencdp_state": "cityHash64(name)",
    "_opencdp_batches": "cityHash64(key)",
    "_opencdp_user_ids": "cityHash64(project_id)",
    "_opencdp_reserved_ids": "cityHash64(key)",
}
LOCAL = "_local"  # a cluster's tables on each shard: <name>_local; <name> is the Distributed one


def cluster_ddl(database: str, cluster: str) -> list[str]:
    """The schema of the store on a ClickHouse cluster: each table as a replicated table on
    every shard (``<name>_local``) behind a ``Distributed`` table of the name the store's
    queries use. Run once, by an operator, before the first server starts (the store does
    not create tables on a cluster). ``database`` and ``cluster`` are an operator's names."""
    db, on = ident(database), f"ON CLUSTER {ident(cluster)}"
    out = [f"CREATE DATABASE IF NOT EXISTS {db} {on}"]
    for name, (columns, engine) in TABLES.items():
        m = re.fullmatch(r"(\w+)(?:\(([^)]*)\))? (.*)", engine)
        assert m is not None, engine
        kind, params, keys = m.group(1), m.group(2) or "", m.group(3)
        path = f"'/clickhouse/tables/{{shard}}/{database}/{name}', '{{replica}}'"
        replicated = f"Replicated{kind}({path}{', ' + params if params else ''})"
        local = ident(name + LOCAL)
        out.append(
            f"CREATE TABLE IF NOT EXISTS {db}.{local} {on} ({columns}) ENGINE = {replicated} {keys}"
        )
        out.append(
            f"CREATE TABLE IF NOT EXISTS {db}.{ident(name)} {on} AS {db}.{local} "
            f"ENGINE = Distributed({ident(cluster)}, {db}, {local}, {SHARDING[name]})"
        )
    return out


# The tables holding projects' rows, each read by a query of a project through the
# ``additional_table_filters`` of its settings (the second wall between tenants).
PROJECT_TABLES = tuple(t for t in TABLES if not t.startswith("_") or t == "_opencdp_user_ids")
# Tables read with FINAL (versions of a key).
FINAL = {t for t, (_, engine) in TABLES.items() if engine.startswith("Replacing")}
# Kinds of property and the table each belongs to.
PROP_TABLES = {"user": "profiles", "event": "events"}

# How a property is stored: as it is seen, but a list as its JSON text (``["a","b"]``), with
# the column's comment saying it is a list.
STORAGE_TYPES = {**CAPABILITIES.column_types, PropertyType.LIST: "Nullable(String)"}
LIST_COMMENT = "list"


def storage_column(p: Property) -> str:
    """The definition of a property's column."""
    comment = f" COMMENT '{LIST_COMMENT}'" if p.type is PropertyType.LIST else ""
    return f"{column(p)} {STORAGE_TYPES[p.type]}{comment}"


def seen(col: str, is_list: bool) -> str:
    """SQL for a stored property column (a generated reference, ``e.p_12`` or ``p_12``) as a
    segment query sees it."""
    return f"JSONExtract(ifNull({col}, '[]'), 'Array(String)')" if is_list else col


def epoch_ms(col: str) -> str:
    """SQL: a time as epoch milliseconds, rounded down (before 1970 too)."""
    us = f"toUnixTimestamp64Micro({col})"
    return f"(intDiv({us}, 1000) - (modulo({us}, 1000) < 0))"


# The largest magnitude below which every integer is a double: exported as an integer.
EXACT_INT = 2**53


def json_value(p: Property, col: str) -> str:
    """SQL for a stored property's value as JSON text, null where there is none: whole numbers
    (within ±2^53) as integers, datetimes as epoch milliseconds, lists as arrays; NaN and
    infinities as null. ``col`` is a generated column reference."""
    if p.type is PropertyType.NUMBER:
        return (
            f"if(NOT isFinite({col}), NULL, if({col} = trunc({col}) AND abs({col}) <= "
            f"{EXACT_INT}, toString(toInt64({col})), toString({col})))"
        )
    if p.type is PropertyType.DATETIME:
        return f"toString({epoch_ms(col)})"
    if p.type is PropertyType.LIST:  # (stored as its JSON text)
        return col
    if p.type is PropertyType.BOOL:
        return f"if(isNull({col}), NULL, if({col}, 'true', 'false'))"
    return f"if(isNull({col}), NULL, toJSONString({col}))"


def text_value(p: Property, col: str) -> str:
    """SQL for a property's value as text (a whole number without ``.0``)."""
    return col if p.type is PropertyType.STRING else json_value(p, col)


def kept(new: str, old: str) -> str:
    """SQL for a property's value after a write of ``new`` over ``old`` (generated column
    references): a null leaves the stored value."""
    return f"coalesce({new}, {old})"


def column(p: Property) -> str:
    return ident(p.column)
