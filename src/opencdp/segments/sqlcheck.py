"""SQL segments: a read-only SELECT over this project's ``users`` and ``events``.

The text is parsed with sqlglot and accepted only if it is one query that reads the logical
tables ``users`` and ``events`` (or its own CTEs) and nothing else: no DDL or DML, no table
functions, no file or network access, no other schema or project. Properties are referred to
by their catalog names; the checked tree is rewritten so that ``users``/``events`` become this
project's tables and each property its generated column, then rendered in the store's dialect.
A rejected query gets an error saying why.
"""

from __future__ import annotations

import sqlglot
import sqlglot.errors
import sqlglot.expressions as exp

from opencdp.catalog.model import Property, Schema
from opencdp.errors import invalid
from opencdp.store.base import SegmentTables

USERS, EVENTS = "users", "events"
USER_COLUMNS = {"user_id", "created_at", "updated_at"}
EVENT_COLUMNS = {"event_id", "event_name", "event_time", "received_at", "user_id"}
MAX_SQL = 64 << 10

# Statements and clauses that write, change the session, or reach outside the database.
_FORBIDDEN = tuple(
    getattr(exp, name)
    for name in (
        "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "TruncateTable",
        "Command", "Pragma", "Set", "Copy", "Attach", "Detach", "Use", "Transaction", "Commit",
        "Rollback", "LoadData", "Describe", "Into", "Install", "Export", "Summarize", "Show",
    )
    if hasattr(exp, name)
)  # fmt: skip
# Functions sqlglot does not model that are still plain computations.
_SAFE_FUNCTIONS = {
    "list_contains", "list_has_any", "list_has_all", "array_has", "contains", "len",
    "array_length", "regexp_matches", "date_diff", "datediff", "date_part", "epoch", "epoch_ms",
    "strptime", "strftime", "least", "greatest", "nullif", "ifnull", "starts_with", "ends_with",
    "to_timestamp", "make_date", "today", "now", "current_date", "current_timestamp",
}  # fmt: skip


def check_sql(
    sql: object, schema: Schema, tables: SegmentTables, dialect: str, columns: int
) -> str:
    """The query rewritten onto this project's tables, rendered in ``dialect``, selecting
    ``user_id`` (and, with ``columns`` 2, ``tag_value``): the first columns of the query."""
    if not isinstance(sql, str) or not sql.strip():
        raise invalid("sql", "a SELECT returning user ids is required")
    if len(sql) > MAX_SQL:
        raise invalid("sql", f"longer than {MAX_SQL} characters")
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise invalid("sql", f"not valid SQL: {str(exc).splitlines()[0][:200]}") from None
    if len(statements) != 1:
        raise invalid("sql", "exactly one SELECT statement is accepted")
    query = statements[0]
    if not isinstance(query, exp.Query):
        raise invalid("sql", f"only a SELECT is accepted, not {query.key.upper()}")
    ctes = {c.alias_or_name.lower() for c in query.find_all(exp.CTE)}
    if ctes & {USERS, EVENTS}:
        raise invalid("sql", "a WITH clause cannot redefine users or events")
    sources: dict[str, str] = {}  # alias -> users | events | cte
    for node in query.walk():
        _refuse(node, ctes)
        if isinstance(node, exp.Table):
            name = node.name.lower()
            kind = name if name in (USERS, EVENTS) else "cte"
            sources[node.alias_or_name.lower()] = kind
    used = {k for k in sources.values() if k != "cte"}
    for col in list(query.find_all(exp.Column)):
        _resolve(col, sources, used, schema)
    for tbl in list(query.find_all(exp.Table)):
        name = tbl.name.lower()
        if name in (USERS, EVENTS):
            physical = exp.to_table(tables.profiles if name == USERS else tables.events)
            physical.set(
                "alias", tbl.args.get("alias") or exp.TableAlias(this=exp.to_identifier(name))
            )
            tbl.replace(physical)
    inner = query.sql(dialect=dialect)
    names = ["c0", "c1"][:columns]
    tag = "CAST(q.c1 AS VARCHAR)" if columns == 2 else "CAST(NULL AS VARCHAR)"
    return (
        f"SELECT DISTINCT TRY_CAST(q.c0 AS BIGINT) AS user_id, {tag} AS tag_value "
        f"FROM ({inner}) AS q({', '.join(names)}) "
        f"WHERE TRY_CAST(q.c0 AS BIGINT) IN (SELECT user_id FROM {tables.profiles})"
    )


def _refuse(node: exp.Expr, ctes: set[str]) -> None:
    if isinstance(node, _FORBIDDEN):
        raise invalid("sql", f"{node.key.upper()} is not allowed: a segment query only reads")
    if isinstance(node, exp.Table):
        if not isinstance(node.this, exp.Identifier):
            raise invalid(
                "sql", "reading from a function or a file is not allowed; read users and events"
            )
        if node.args.get("db") or node.args.get("catalog"):
            raise invalid("sql", f"{node.sql()}: a segment query reads only users and events")
        name = node.name.lower()
        if name not in (USERS, EVENTS) and name not in ctes:
            raise invalid(
                "sql", f"table {node.name!r}: a segment query reads only users and events"
            )
    if isinstance(node, exp.Anonymous) and str(node.name).lower() not in _SAFE_FUNCTIONS:
        raise invalid("sql", f"function {node.name}() is not allowed in a segment query")
    if isinstance(node, exp.Func) and type(node).__name__.startswith("Read"):
        raise invalid("sql", f"{node.sql()[:80]}: reading files is not allowed")


def _resolve(col: exp.Column, sources: dict[str, str], used: set[str], schema: Schema) -> None:
    """Point a column at the generated column of the property it names."""
    name, qualifier = col.name, col.table.lower()
    if qualifier:
        kind = sources.get(qualifier)
        if kind is None:
            raise invalid("sql", f"{col.sql()}: unknown table or alias {col.table!r}")
        if kind == "cte":
            return
        prop = _property(name, kind, schema)
        if prop is None and name.lower() not in _builtins(kind):
            raise invalid("sql", f"{col.sql()}: {kind} has no column {name!r}")
    else:
        found = [(k, p) for k in sorted(used) if (p := _property(name, k, schema)) is not None]
        if len(found) > 1:
            raise invalid(
                "sql", f"column {name!r} is a property of users and of events: qualify it"
            )
        prop = found[0][1] if found else None
    if prop is not None:
        col.set("this", exp.to_identifier(prop.column))


def _property(name: str, kind: str, schema: Schema) -> Property | None:
    if name.lower() in _builtins(kind):
        return None
    return schema.table("user" if kind == USERS else "event").get(name)


def _builtins(kind: str) -> set[str]:
    return USER_COLUMNS if kind == USERS else EVENT_COLUMNS
