"""The neutral query tree a segment is compiled to, and how a store renders it.

A segment query is a sqlglot ``SELECT user_id, tag_value`` over *logical* tables (``users``,
``events``, ``lists``) that the store scopes to a project: it maps each to the physical table
it generated, so that no name in the tree, and no user string, ever becomes a physical
identifier. The operations whose spelling differs between engines and that sqlglot has no
portable node for are the small :class:`Op` classes below; each engine's :class:`SqlDialect`
says how to write each of them (a function name or a small rewrite). An operation a dialect
does not list is refused with :func:`unsupported`, never passed through for the engine to
guess at. Nothing here reaches a database: rendering is a pure function of the tree, the
dialect and the table names.

>>> from sqlglot import exp
>>> q = exp.select("user_id").from_(USERS).where(ListLength(this=exp.column("p_1")) > 0)
>>> dialect = SqlDialect("demo", "duckdb", {ListLength: function("LEN")})
>>> render(q, dialect, {USERS: "p1_profiles"})
'SELECT user_id FROM "p1_profiles" WHERE LEN(p_1) > 0'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import sqlglot.expressions as exp

from opencdp.errors import CdpError, Code

USERS, EVENTS, LISTS = "users", "events", "lists"
LOGICAL_TABLES = (USERS, EVENTS, LISTS)


class Op(exp.Expression, exp.Func):
    """An operation without a portable sqlglot node; each dialect says how to write it."""

    operation: ClassVar[str] = "an operation"  # how an error names it


class ArgMinNull(Op):
    """The value (null included) on the row whose ``expression`` (a tuple) is least."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "expression": True}
    operation = "the value on the first event"


class ArgMaxNull(Op):
    """The value (null included) on the row whose ``expression`` (a tuple) is greatest."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "expression": True}
    operation = "the value on the last event"


class ListHasAny(Op):
    """Whether the list ``this`` holds any item of the array ``expression``."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "expression": True}
    operation = "a list holding any of the values"


class ListLength(Op):
    """The number of items of the list ``this``."""

    operation = "the length of a list"


class ListText(Op):
    """The items of the list ``this`` joined by the text ``expression``."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "expression": True}
    operation = "a list as text"


class NumberText(Op):
    """A number as text: a whole number below 1e15 without ``.0``."""

    operation = "a number as text"


class LocalTimeText(Op):
    """A UTC timestamp ``this`` as ``YYYY-MM-DD HH:MM:SS`` wall-clock time in the time zone
    named by ``zone`` (an IANA name)."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True, "zone": True}
    operation = "a time as local text"


class Timestamp(Op):
    """A timestamp literal: ``this`` is the text ``YYYY-MM-DD HH:MM:SS.ffffff``, UTC, to the
    microsecond."""

    operation = "a timestamp"


Rewrite = Callable[[exp.Expr], exp.Expr]


@dataclass(frozen=True)
class SqlDialect:
    """What an engine's SQL is made of: the sqlglot dialect it is written in, and how each
    operation of the neutral tree is written in it."""

    engine: str  # its name in messages
    sqlglot: str  # the sqlglot dialect the tree is written in
    operations: Mapping[type[exp.Expr], Rewrite] = field(default_factory=dict)


def function(name: str) -> Rewrite:
    """Write an operation as the engine's function ``name`` of the same arguments."""

    def write(node: exp.Expr) -> exp.Expr:
        args = [a for a in node.args.values() if isinstance(a, exp.Expr)]
        return exp.Anonymous(this=name, expressions=args)

    return write


def unsupported(operation: str, engine: str) -> CdpError:
    return CdpError(Code.UNSUPPORTED, f"{operation} is not supported on {engine}")


def check(query: exp.Expr, dialect: SqlDialect) -> None:
    """Refuse a tree with an operation the dialect cannot write."""
    for node in query.find_all(Op):
        if type(node) not in dialect.operations:
            raise unsupported(type(node).operation, dialect.engine)


def render(query: exp.Expr, dialect: SqlDialect, tables: Mapping[str, str]) -> str:
    """The tree as SQL text of ``dialect``, its logical tables replaced by ``tables``
    (logical name -> the physical name the store generated). A table the mapping does not
    name, or a qualified or computed one, is a bug in the caller: refused."""
    check(query, dialect)
    tree = query.copy()
    for tbl in list(tree.find_all(exp.Table)):
        name = tbl.this
        if (
            not isinstance(name, exp.Identifier)
            or tbl.args.get("db")
            or tbl.args.get("catalog")
            or name.name not in tables
        ):
            raise ValueError(f"not a logical table of a segment query: {tbl.sql()!r}")
        tbl.set("this", exp.to_identifier(tables[name.name], quoted=True))
    # Children before their parents, so that a rewrite sees rewritten arguments.
    for node in reversed(list(tree.dfs())):
        write = dialect.operations.get(type(node))
        if write is not None and node is not tree:
            node.replace(write(node))
    return tree.sql(dialect=dialect.sqlglot)
