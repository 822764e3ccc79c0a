"""What the DuckDB store's SQL is made of: its capabilities, generated identifiers, and the
expressions shared by its reads and writes.

Every identifier in the SQL of this package is generated here (``p{project id}_events``,
``p_{property id}``) and checked by :func:`ident`; every value is a bound parameter or an Arrow
column.
"""

from __future__ import annotations

import re

import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store import tree
from opencdp.store.base import Capabilities


def _number_text(node: exp.Expr) -> exp.Expr:
    v = node.this
    whole = exp.func("ROUND", v).eq(v)
    small = exp.func("ABS", v) < exp.Literal.number("1e15")
    as_int = exp.cast(exp.cast(v, "BIGINT"), "VARCHAR")
    return exp.Case().when(exp.and_(whole, small), as_int).else_(exp.cast(v, "VARCHAR"))


def _local_time_text(node: exp.Expr) -> exp.Expr:
    utc = exp.AtTimeZone(this=node.this, zone=exp.Literal.string("UTC"))
    local = exp.func("TIMEZONE", node.args["zone"], utc)
    return exp.func("STRFTIME", local, exp.Literal.string("%Y-%m-%d %H:%M:%S"))


# How DuckDB writes the operations of a segment's neutral tree.
SQL = tree.SqlDialect(
    engine="duckdb",
    sqlglot="duckdb",
    operations={
        tree.ArgMinNull: tree.function("ARG_MIN_NULL"),
        tree.ArgMaxNull: tree.function("ARG_MAX_NULL"),
        tree.ListHasAny: tree.function("LIST_HAS_ANY"),
        tree.ListLength: tree.function("LENGTH"),
        tree.ListText: tree.function("ARRAY_TO_STRING"),
        tree.NumberText: _number_text,
        tree.LocalTimeText: _local_time_text,
        tree.Timestamp: lambda node: exp.cast(node.this, "TIMESTAMP"),
    },
)

CAPABILITIES = Capabilities(
    name="duckdb",
    sql=SQL,
    column_types={
        PropertyType.STRING: "VARCHAR",
        PropertyType.NUMBER: "DOUBLE",
        PropertyType.BOOL: "BOOLEAN",
        PropertyType.DATETIME: "TIMESTAMP",
        PropertyType.LIST: "VARCHAR[]",
    },
    transactions=True,
    upsert="merge",
    isolation="tables",
    # DuckDB's memory for a transaction that adds columns grows with the square of their
    # number (1,000 columns: 350 MB; 5,000: 7 GB).
    columns_per_transaction=64,
)

ARROW_TYPES: dict[PropertyType, pa.DataType] = {
    PropertyType.STRING: pa.string(),
    PropertyType.NUMBER: pa.float64(),
    PropertyType.BOOL: pa.bool_(),
    PropertyType.DATETIME: pa.timestamp("us"),
    PropertyType.LIST: pa.list_(pa.string()),
}


_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def ident(name: str) -> str:
    """A generated identifier, quoted; anything else is a bug, never user input.

    >>> ident("p1_events")
    '"p1_events"'
    """
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not a generated identifier: {name!r}")
    return f'"{name}"'


KINDS = ("profiles", "identities", "events", "list_members", "segment_members")


def collection_table(project_id: int, collection_id: int) -> str:
    if not isinstance(project_id, int) or not isinstance(collection_id, int):
        raise ValueError("bad table reference")
    return ident(f"p{project_id}_c{collection_id}")


# The largest magnitude below which every integer is a DOUBLE: a whole number up to it is
# exported as an integer (``3``, not ``3.0``).
EXACT_INT = 2**53


def text_value(p: Property, col: str) -> str:
    """SQL for a property's value as text (a whole number without ``.0``): an exported
    ``loginUserId``. ``col`` is a generated column reference."""
    return col if p.type is PropertyType.STRING else json_value(p, col)


def json_value(p: Property, col: str) -> str:
    """SQL for a property's value as JSON text, null where there is none: whole numbers
    (within ±2^53) as integers, datetimes as epoch milliseconds, lists as arrays; NaN and
    infinities as null. ``col`` is a generated column reference."""
    if p.type is PropertyType.NUMBER:
        return (
            f"CASE WHEN NOT isfinite({col}) THEN NULL "
            f"WHEN {col} = trunc({col}) AND abs({col}) <= {EXACT_INT} "
            f"THEN CAST(CAST({col} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST(to_json({col}) AS VARCHAR) END"
        )
    if p.type is PropertyType.DATETIME:
        return f"CAST(epoch_ms({col}) AS VARCHAR)"
    return f"CAST(to_json({col}) AS VARCHAR)"


def table(project_id: int, kind: str) -> str:
    return ident(table_name(project_id, kind))


def table_name(project_id: int, kind: str) -> str:
    """A project's table, unquoted (:func:`table` quotes it)."""
    if not isinstance(project_id, int) or kind not in KINDS:
        raise ValueError("bad table reference")
    return f"p{project_id}_{kind}"


def logical_tables(project_id: int) -> dict[str, str]:
    """The physical tables behind the logical tables of a project's segment queries."""
    kinds = {tree.USERS: "profiles", tree.EVENTS: "events", tree.LISTS: "list_members"}
    return {logical: table_name(project_id, kind) for logical, kind in kinds.items()}
