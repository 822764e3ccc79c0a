"""What ClickHouse's SQL is made of: its capabilities, column types and how it writes the
operations of a segment's neutral tree.

Trees are rendered for ClickHouse from the neutral tree, never transpiled from DuckDB's SQL
text: the two differ where a transpiler cannot tell (a ``TIMESTAMP`` would become a
``DateTime`` of whole seconds). Timestamps are ``DateTime64(6, 'UTC')``; a session pins
``session_timezone = 'UTC'``.
"""

from __future__ import annotations

import sqlglot.expressions as exp

from opencdp.catalog.types import PropertyType
from opencdp.store import tree
from opencdp.store.base import Capabilities


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
    },
)

# A list is never null in ClickHouse (an Array cannot be Nullable): no items is no value,
# which is how segment definitions read an empty list anyway.
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
    # An INSERT is atomic per block and nothing more: a batch's marker follows its rows, which
    # are versions of their keys that a ReplacingMergeTree keeps the latest of.
    transactions=False,
    upsert="version",
    isolation="tables",
)
