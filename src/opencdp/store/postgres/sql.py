"""What the PostgreSQL store's SQL is made of: its capabilities, how it writes the operations
of a segment's neutral tree, and how a property's value is kept and read.

Physical model: a row's properties are one ``jsonb`` object, ``props``, keyed by property id
(``{"12": "Paris", "13": 4.5}``), not a column per property. Adding a property is then a row
in ``_opencdp_columns`` rather than an ``ALTER TABLE``, whose ACCESS EXCLUSIVE lock would queue
every other process's reads and writes of the table behind one long segment query; a project
is not bound by PostgreSQL's 1,600 columns a table; and a batch's "a null leaves the stored
value" is ``props || new``. Values are JSON of their type: strings, numbers (NaN and the
infinities as the strings ``"NaN"``/``"Infinity"``/``"-Infinity"``, which ``float8`` reads back),
booleans, datetimes as ISO text (``2024-02-29T23:59:58.123456``, UTC) and lists as arrays of
strings. A segment query reads them as typed columns (:func:`value`), extracted in a
``NOT MATERIALIZED`` CTE per logical table that PostgreSQL inlines into the query. A list stays
a JSON array there (``?|``, ``jsonb_array_length``): ``array_agg``, which takes the value on a
first or last event, cannot aggregate ``text[]`` values of different lengths.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlglot
import sqlglot.expressions as exp

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store import tree
from opencdp.store.base import Capabilities
from opencdp.store.names import ident

# Advisory lock scopes (first key) of the store: schema set-up, and a project's writes.
SCHEMA_LOCK = (0x4F43_5353, 1)
PROJECT_WRITES = 0x4F43_5357


def _arg_null(direction: str) -> tree.Rewrite:
    """The value on the first (last) row by the tuple ``expression``, null included: the first
    item of the values aggregated in that order."""

    def write(node: exp.Expr) -> exp.Expr:
        keys = node.expression
        items = keys.expressions if isinstance(keys, exp.Tuple) else [keys]
        order = exp.Order(
            expressions=[exp.Ordered(this=k, desc=direction == "desc") for k in items]
        )
        agg = exp.ArrayAgg(this=exp.Order(this=node.this, expressions=order.expressions))
        return exp.Bracket(
            this=exp.Paren(this=agg), expressions=[exp.Literal.number(0)]
        )  # (sqlglot counts from 0)

    return write


def _number_text(node: exp.Expr) -> exp.Expr:
    v = node.this
    whole = exp.func("TRUNC", v).eq(v)
    small = exp.func("ABS", v) < exp.Literal.number("1e15")
    as_int = exp.cast(exp.cast(v, "BIGINT"), "TEXT")
    return exp.Case().when(exp.and_(whole, small), as_int).else_(exp.cast(v, "TEXT"))


def _local_time_text(node: exp.Expr) -> exp.Expr:
    utc = exp.AtTimeZone(this=node.this, zone=exp.Literal.string("UTC"))
    local = exp.AtTimeZone(this=utc, zone=node.args["zone"])
    return exp.func("TO_CHAR", local, exp.Literal.string("YYYY-MM-DD HH24:MI:SS"))


def _has_any(node: exp.Expr) -> exp.Expr:
    """``list ?| ARRAY[…]``: the JSON array holds any of the strings."""
    return exp.JSONBContainsAnyTopKeys(this=node.this, expression=node.expression)


_JOINED = sqlglot.parse_one(
    "SELECT STRING_AGG(_e, _sep ORDER BY _n) "
    "FROM JSONB_ARRAY_ELEMENTS_TEXT(_list) WITH ORDINALITY AS _a(_e, _n)",
    read="postgres",
)


def _list_text(node: exp.Expr) -> exp.Expr:
    """The items of a JSON array joined by the separator, in order ('' for no items)."""
    items = _JOINED.copy()
    for col in list(items.find_all(exp.Column)):
        if col.name == "_list":
            col.replace(node.this.copy())
        elif col.name == "_sep":
            col.replace(node.expression.copy())
    joined = exp.func("COALESCE", exp.Subquery(this=items), exp.Literal.string(""))
    return exp.Case().when(node.this.is_(exp.null()), exp.null()).else_(joined)


# How PostgreSQL writes the operations of a segment's neutral tree.
SQL = tree.SqlDialect(
    engine="postgresql",
    sqlglot="postgres",
    operations={
        tree.ArgMinNull: _arg_null("asc"),
        tree.ArgMaxNull: _arg_null("desc"),
        tree.ListHasAny: _has_any,
        tree.ListLength: tree.function("JSONB_ARRAY_LENGTH"),
        tree.ListText: _list_text,
        tree.NumberText: _number_text,
        tree.LocalTimeText: _local_time_text,
        tree.Timestamp: lambda node: exp.cast(node.this, "TIMESTAMP"),
    },
)

CAPABILITIES = Capabilities(
    name="postgresql",
    sql=SQL,
    # The types a segment query sees a property as (extracted from ``props``).
    column_types={
        PropertyType.STRING: "TEXT",
        PropertyType.NUMBER: "DOUBLE PRECISION",
        PropertyType.BOOL: "BOOLEAN",
        PropertyType.DATETIME: "TIMESTAMP",
        PropertyType.LIST: "JSONB",  # (an array of strings)
    },
    transactions=True,
    upsert="merge",
    isolation="tables",
    # A new property is a row of _opencdp_columns: no DDL, no limit worth a turn of its own.
    columns_per_transaction=10_000,
    text_nul=False,
)

# The largest magnitude below which every integer is a double: exported as an integer.
EXACT_INT = 2**53


def key(p: Property) -> str:
    """A property's key in ``props`` (its id: generated, never a user's string)."""
    return f"'{int(p.id)}'"


def value(p: Property, props: str = "props") -> str:
    """SQL for a property's typed value from the ``props`` object ``props`` (a generated
    reference), null where it has none."""
    text = f"({props} ->> {key(p)})"
    if p.type is PropertyType.NUMBER:
        return f"CAST({text} AS DOUBLE PRECISION)"
    if p.type is PropertyType.BOOL:
        return f"CAST({text} AS BOOLEAN)"
    if p.type is PropertyType.DATETIME:
        return f"CAST({text} AS TIMESTAMP)"
    if p.type is PropertyType.LIST:  # (a JSON array: aggregates take it as it is)
        return f"({props} -> {key(p)})"
    return text


def json_value(p: Property, props: str = "props") -> str:
    """SQL for a property's value as JSON text, null where there is none: whole numbers
    (within ±2^53) as integers, datetimes as epoch milliseconds, lists as arrays; NaN and
    infinities as null (as the DuckDB store exports them)."""
    if p.type is PropertyType.NUMBER:
        v = value(p, props)
        return (
            f"(CASE WHEN {v} IN ('NaN', 'Infinity', '-Infinity') THEN NULL "
            f"WHEN {v} = trunc({v}) AND abs({v}) <= {EXACT_INT} "
            f"THEN CAST(CAST({v} AS BIGINT) AS TEXT) "
            f"ELSE CAST({v} AS TEXT) END)"
        )
    if p.type is PropertyType.DATETIME:
        return f"CAST(floor(extract(epoch FROM {value(p, props)}) * 1000) AS BIGINT)::TEXT"
    return f"CAST(({props} -> {key(p)}) AS TEXT)"


def text_value(p: Property, props: str = "props") -> str:
    """SQL for a property's value as text (a whole number without ``.0``)."""
    return value(p, props) if p.type is PropertyType.STRING else json_value(p, props)


def props_object(props: list[Property] | tuple[Property, ...], alias: str) -> str:
    """SQL building the ``props`` object of a staged row (alias ``alias``, a column per property
    named by its column) from its non-null values."""
    cols = [(key(p), f"{alias}.{ident(p.column)}") for p in props]
    if not cols:
        return "'{}'::jsonb"
    # (a function takes at most 100 arguments: 50 pairs an object)
    parts = [
        "jsonb_build_object(" + ", ".join(f"{k}, {c}" for k, c in cols[i : i + 50]) + ")"
        for i in range(0, len(cols), 50)
    ]
    return f"jsonb_strip_nulls({' || '.join(parts)})"


def decode(p: Property, v: Any) -> Any:
    """A value as ``props`` holds it (parsed JSON), as the store's reads return it."""
    if v is None:
        return None
    if p.type is PropertyType.NUMBER:
        return float(v)
    if p.type is PropertyType.DATETIME:
        return datetime.fromisoformat(v)
    return v


def decode_all(
    props: list[Property] | tuple[Property, ...], obj: dict[str, Any] | None
) -> dict[int, Any]:
    """The non-null values of ``props`` in a ``props`` object: property id -> value."""
    if not obj:
        return {}
    out = {}
    for p in props:
        v = obj.get(str(p.id))
        if v is not None:
            out[p.id] = decode(p, v)
    return out
