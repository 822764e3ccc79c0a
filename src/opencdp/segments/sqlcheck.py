"""SQL segments: a read-only query over this project's ``users`` and ``events``.

The language is one fixed dialect, whatever engine holds the data: DuckDB's SQL syntax
(:data:`LANGUAGE`), a single SELECT (WITH, joins, subqueries, set operations, window
functions), the functions sqlglot models (other than those that read files) and the few
plain computations of ``_SAFE_FUNCTIONS``. The checked tree is then rendered for the engine
that runs it (``check_sql(..., engine=...)``): the sandbox's.

The text is parsed with sqlglot and accepted only if it is one query whose
every table reference, resolved with SQL's own scoping rules (sqlglot's scopes: a CTE is
visible in its query and in the CTEs after it, nowhere else), names ``users``, ``events`` or a
CTE visible at that point. No DDL or DML, no table functions or file reads, no other schema,
no recursion. A rejected query gets an error saying why.

This check is the first of two walls. The checked query then runs in a sandbox process
(:mod:`opencdp.segments.sandbox`) that holds nothing but this project's ``users`` and
``events`` columns the query names, with file access disabled and its configuration locked,
under a time and a memory budget: a bug here cannot reach another project's data.

Property names are the columns' names there, so the query reads them as written
(``sum(amount)``, ``"#vip_level"``); the check collects the names the query refers to, so
that only those columns are handed to the sandbox.

>>> q = check_sql("SELECT user_id FROM events WHERE amount > 5", 1)
>>> sorted(q.reads), sorted(q.names or ())
(['events'], ['amount', 'events', 'user_id'])
>>> check_sql("SELECT * FROM p2_profiles", 1)
Traceback (most recent call last):
...
opencdp.errors.CdpError: sql: table 'p2_profiles': a segment query reads only users, events ...
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
import sqlglot.errors
import sqlglot.expressions as exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.scope import traverse_scope

from opencdp.errors import invalid

USERS, EVENTS = "users", "events"
TABLES = (USERS, EVENTS)
USER_COLUMNS = ("user_id", "created_at", "updated_at")
EVENT_COLUMNS = ("event_id", "event_name", "event_time", "received_at", "user_id")
MAX_SQL = 64 << 10
LANGUAGE = "duckdb"  # the sqlglot dialect SQL segments are written (and parsed) in
DIALECT = LANGUAGE  # (what the messages below quote a piece of the query in)

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


@dataclass(frozen=True)
class SqlSegment:
    """A checked SQL segment: what to run, and what it needs."""

    sql: str  # the query as checked, rendered for the engine that runs it
    columns: int  # 1: a cluster (user ids); 2: a tag (user ids and values)
    reads: frozenset[str]  # which of users/events it reads
    names: frozenset[str] | None  # lower-cased column names it refers to; None: all (a star)


def check_sql(sql: object, columns: int, engine: str = LANGUAGE) -> SqlSegment:
    """Check a segment query; ``columns`` is 2 for a tag (``user_id, tag_value``), else 1.
    The checked query is rendered in ``engine``'s sqlglot dialect."""
    if not isinstance(sql, str) or not sql.strip():
        raise invalid("sql", "a SELECT returning user ids is required")
    if len(sql) > MAX_SQL:
        raise invalid("sql", f"longer than {MAX_SQL} characters")
    if "\x00" in sql:
        raise invalid("sql", "contains a NUL character")
    try:
        statements = [s for s in sqlglot.parse(sql, read=LANGUAGE) if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise invalid("sql", f"not valid SQL: {str(exc).splitlines()[0][:200]}") from None
    if len(statements) != 1:
        raise invalid("sql", "exactly one SELECT statement is accepted")
    query = statements[0]
    if not isinstance(query, exp.Query):
        raise invalid("sql", f"only a SELECT is accepted, not {query.key.upper()}")
    # DuckDB matches names case-insensitively, quoted or not: so does the check.
    query = normalize_identifiers(query, dialect=LANGUAGE)
    for node in query.walk():
        _refuse(node)
    reads = _resolve_tables(query)
    return SqlSegment(query.sql(dialect=engine), columns, frozenset(reads), _names(query))


def _refuse(node: exp.Expr) -> None:
    if isinstance(node, _FORBIDDEN):
        raise invalid("sql", f"{node.key.upper()} is not allowed: a segment query only reads")
    if isinstance(node, exp.With) and node.args.get("recursive"):
        raise invalid("sql", "WITH RECURSIVE is not allowed in a segment query")
    if isinstance(node, exp.CTE) and node.alias_or_name in TABLES:
        raise invalid("sql", "a WITH clause cannot redefine users or events")
    if isinstance(node, exp.UDTF | exp.Lateral) and not isinstance(node, exp.Explode):
        raise invalid("sql", f"{node.sql(DIALECT)[:80]}: reading from a function is not allowed")
    if isinstance(node, exp.Table):
        if not isinstance(node.this, exp.Identifier):
            raise invalid(
                "sql", "reading from a function or a file is not allowed; read users and events"
            )
        if node.args.get("db") or node.args.get("catalog"):
            raise invalid(
                "sql", f"{node.sql(DIALECT)}: a segment query reads only users and events"
            )
    if isinstance(node, exp.Anonymous) and str(node.name).lower() not in _SAFE_FUNCTIONS:
        raise invalid("sql", f"function {node.name}() is not allowed in a segment query")
    if isinstance(node, exp.Func) and type(node).__name__.startswith("Read"):
        raise invalid("sql", f"{node.sql(DIALECT)[:80]}: reading files is not allowed")


def _resolve_tables(query: exp.Query) -> set[str]:
    """Resolve every table reference in its scope; returns which of users/events are read.

    Every ``Table`` node of the tree must be one that a scope resolved: a reference in a place
    the scopes do not cover is refused rather than trusted."""
    reads: set[str] = set()
    resolved: set[int] = set()
    try:
        scopes = list(traverse_scope(query))
    except sqlglot.errors.SqlglotError as exc:
        raise invalid("sql", f"cannot resolve the query's tables: {exc}") from None
    for scope in scopes:
        for tbl in scope.tables:
            resolved.add(id(tbl))
            name = tbl.name
            if name in scope.cte_sources:
                continue  # a WITH query visible here
            if name not in TABLES:
                raise invalid(
                    "sql",
                    f"table {tbl.name!r}: a segment query reads only users, events and its own "
                    "WITH queries",
                )
            reads.add(name)
    for tbl in query.find_all(exp.Table):
        if id(tbl) not in resolved:
            raise invalid("sql", f"{tbl.sql(DIALECT)[:80]}: a table in this place is not allowed")
    if not reads:
        raise invalid("sql", "the query reads neither users nor events")
    return reads


def _names(query: exp.Query) -> frozenset[str] | None:
    """Every name the query uses (over-including is harmless: it only hands the sandbox a
    column more), or None when it takes whole rows: a star, ``COLUMNS(…)``, a positional
    column, or a table used as a value (DuckDB makes that the whole row)."""
    tables = {t.alias_or_name for t in query.find_all(exp.Table)}
    names: set[str] = set()
    for node in query.walk():
        if isinstance(node, exp.Star | exp.Columns | exp.PositionalColumn):
            return None
        if isinstance(node, exp.Column) and not node.table and node.name in tables:
            return None
        if isinstance(node, exp.Identifier):
            names.add(node.name)
    return frozenset(names)
