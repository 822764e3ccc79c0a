"""Segment queries under a budget, and segment members: versions written, read and compared.

A segment query's neutral tree is rendered in PostgreSQL's dialect over three CTEs that stand
for the logical tables (``users``, ``events``, ``lists``): each selects the project's own
table, with the properties the query names extracted from ``props`` as typed columns
(:func:`.sql.value`). They are ``NOT MATERIALIZED``, so PostgreSQL plans them into the query
(an event condition's ``event_name`` and time still reach the index). A property the project
has not registered is not a column of its CTE, so the query fails to bind, as on the other
engines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.catalog.model import Property
from opencdp.store import tree
from opencdp.store.base import SEGMENT_ROWS, Budget, OverBudget, QueryError
from opencdp.store.duckdb.sql import ARROW_TYPES
from opencdp.store.names import ident, table
from opencdp.store.postgres.connection import PostgresBase
from opencdp.store.postgres.exports import batch_of
from opencdp.store.postgres.sql import SQL, value
from opencdp.store.postgres.writer import WriterBase

_PROPERTY = re.compile(r"p_([0-9]{1,18})")
# The logical tables: their CTE, the stored table, its own columns, the kind of property.
_LOGICAL = {
    tree.USERS: ("_users", "profiles", ("user_id", "created_at", "updated_at"), "user"),
    tree.EVENTS: (
        "_events",
        "events",
        ("event_id", "event_name", "event_time", "received_at", "user_id"),
        "event",
    ),
    tree.LISTS: ("_lists", "list_members", ("list_id", "user_id"), None),
}
_OWN_TYPES = {
    "user_id": pa.int64(),
    "created_at": pa.timestamp("us"),
    "updated_at": pa.timestamp("us"),
    "event_id": pa.string(),
    "event_name": pa.string(),
    "event_time": pa.timestamp("us"),
    "received_at": pa.timestamp("us"),
    "list_id": pa.int64(),
}


def _logical(
    store: PostgresBase, cur: psycopg.Cursor[Any], project_id: int, logical: str, ids: set[int]
) -> tuple[str, dict[str, tuple[str, pa.DataType]]]:
    """A logical table's CTE body, and its columns (name -> SQL, Arrow type)."""
    _, kind, own, prop_kind = _LOGICAL[logical]
    columns = {c: (c, _OWN_TYPES[c]) for c in own}
    if prop_kind is not None:
        for pid, typ in sorted(store.registered(cur, project_id, prop_kind, ids).items()):
            p = Property(pid, prop_kind, "", typ)
            columns[p.column] = (value(p), ARROW_TYPES[typ])
    body = ", ".join(f"{sql} AS {ident(name)}" for name, (sql, _) in columns.items())
    return f"SELECT {body} FROM {table(project_id, kind)}", columns


def render(
    store: PostgresBase, cur: psycopg.Cursor[Any], project_id: int, query: exp.Select
) -> tuple[str, str]:
    """A segment query as PostgreSQL SQL: its ``WITH`` clause (the logical tables) and the
    query itself, which reads them."""
    ids = {
        int(m.group(1))
        for c in query.find_all(exp.Column)
        if (m := _PROPERTY.fullmatch(c.name)) is not None
    }
    ctes = []
    for logical, (cte, *_) in _LOGICAL.items():
        body, _ = _logical(store, cur, project_id, logical, ids)
        ctes.append(f"{ident(cte)} AS NOT MATERIALIZED ({body})")
    sql = tree.render(query, SQL, {logical: spec[0] for logical, spec in _LOGICAL.items()})
    return "WITH " + ", ".join(ctes), sql


class SegmentReads(PostgresBase):
    def pattern_error(self, pattern: str) -> str | None:
        with self._read() as cur:
            try:
                cur.execute("SELECT '' ~ %s", [pattern])
            except psycopg.errors.InvalidRegularExpression as exc:
                return str(exc).splitlines()[0].removeprefix("invalid regular expression: ")
        return None

    @contextmanager
    def _guarded(self, cur: psycopg.Cursor[Any], budget: Budget) -> Iterator[None]:
        """Run a segment query on ``cur`` (in its transaction) under ``budget``: the server
        cancels it past its time (``statement_timeout``); its sorts and hash tables get the
        memory budget (``work_mem``) and spill to temporary files beyond it, and, where the
        store's role may set it, the temporary files are bounded by the budget too
        (``temp_file_limit``). A result that arrives after the deadline is over budget."""
        started = time.monotonic()
        cur.execute(f"SET LOCAL statement_timeout = {max(1, int(budget.seconds * 1000))}")
        kb = max(64, budget.memory_bytes // 1024)
        cur.execute(f"SET LOCAL work_mem = '{min(kb, 2**31 - 1)}kB'")
        if self._superuser:
            cur.execute(f"SET LOCAL temp_file_limit = '{max(1, budget.memory_bytes // 1024)}kB'")
        try:
            yield
        except psycopg.errors.QueryCanceled:
            raise OverBudget("time") from None
        except (psycopg.errors.ConfigurationLimitExceeded, psycopg.errors.OutOfMemory):
            raise OverBudget("memory") from None
        except psycopg.Error as exc:
            if self.transient(exc):
                raise
            raise QueryError(str(exc).splitlines()[0][:300]) from None
        if time.monotonic() - started > budget.seconds:
            raise OverBudget("time")

    def count_query(self, project_id: int, query: exp.Select, budget: Budget) -> int:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return 0
            with_, sql = render(self, cur, project_id, query)
            with self._guarded(cur, budget):
                row = cur.execute(f"{with_} SELECT count(*) FROM ({sql}) q").fetchone()
        return int(row[0]) if row else 0

    def segment_rows(self, project_id: int, query: exp.Select, budget: Budget) -> pa.Table:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return SEGMENT_ROWS.empty_table()
            with_, sql = render(self, cur, project_id, query)
            with self._guarded(cur, budget):
                rows = cur.execute(
                    f"{with_} SELECT CAST(q.user_id AS BIGINT), CAST(q.tag_value AS TEXT) "
                    f"FROM ({sql}) q"
                ).fetchall()
        return pa.Table.from_batches([batch_of(rows, SEGMENT_ROWS)])

    def dump_table(
        self,
        project_id: int,
        logical: str,
        columns: Sequence[tuple[str, str]],
        path: Path,
        budget: Budget,
        empty: bool = False,
    ) -> None:
        ids = {int(m.group(1)) for s, _ in columns if (m := _PROPERTY.fullmatch(s))}
        with self._connection() as conn:
            with conn.cursor() as cur:
                body, known = _logical(self, cur, project_id, logical, ids)
                if not self._has_tables(cur, project_id):
                    body = f"SELECT {', '.join(f'NULL AS {ident(c)}' for c in known)} LIMIT 0"
            missing = [stored for stored, _ in columns if stored not in known]
            if missing:
                raise QueryError(f"column {missing[0]} does not exist")
            schema = pa.schema([(name, known[stored][1]) for stored, name in columns])
            exprs = ", ".join(f"q.{ident(stored)}" for stored, _ in columns)
            with (
                pa.OSFile(str(path), "wb") as sink,
                pa.ipc.new_file(sink, schema) as out,
                conn.cursor() as guard,
                self._guarded(guard, budget),
            ):
                if empty:
                    return
                with conn.cursor(name="opencdp_dump") as cur:
                    cur.execute(f"SELECT {exprs} FROM ({body}) q")
                    while rows := cur.fetchmany(65_536):
                        out.write_batch(batch_of(rows, schema))

    def segment_members(
        self, project_id: int, segment_id: int, version: int, limit: int, after: int
    ) -> list[tuple[int, str | None]]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return []
            rows = cur.execute(
                f"SELECT user_id, tag_value FROM {table(project_id, 'segment_members')} "
                "WHERE segment_id = %s AND version = %s AND user_id > %s "
                "ORDER BY user_id LIMIT %s",
                [segment_id, version, after, limit],
            ).fetchall()
        return [(int(u), t) for u, t in rows]

    def segment_changes(
        self, project_id: int, segment_id: int, version: int, limit: int
    ) -> tuple[list[int], list[int]]:
        members = table(project_id, "segment_members")
        out: list[list[int]] = []
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return [], []
            for a, b in ((version, version - 1), (version - 1, version)):
                rows = cur.execute(
                    f"SELECT user_id FROM {members} m WHERE segment_id = %s AND version = %s "
                    f"AND NOT EXISTS (SELECT 1 FROM {members} o WHERE o.segment_id = %s "
                    "AND o.version = %s AND o.user_id = m.user_id) ORDER BY user_id LIMIT %s",
                    [segment_id, a, segment_id, b, limit],
                ).fetchall()
                out.append([int(r[0]) for r in rows])
        return out[0], out[1]

    def user_segments(self, project_id: int, user_id: int) -> list[tuple[int, int, str | None]]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return []
            rows = cur.execute(
                f"SELECT segment_id, version, tag_value FROM "
                f"{table(project_id, 'segment_members')} WHERE user_id = %s "
                "ORDER BY segment_id, version",
                [user_id],
            ).fetchall()
        return [(int(s), int(v), t) for s, v, t in rows]


class SegmentWrites(WriterBase):
    def _members(self, project_id: int, segment_id: int, version: int) -> str:
        """The project's members table, without the versions at and above ``version``
        (leftovers of a refresh that did not commit its state)."""
        self.ensure_project(project_id)
        members = table(project_id, "segment_members")
        self._x(
            f"DELETE FROM {members} WHERE segment_id = %s AND version >= %s",
            [segment_id, version],
        )
        return members

    def _keep_two(self, members: str, segment_id: int, version: int) -> int:
        self._x(
            f"DELETE FROM {members} WHERE segment_id = %s AND (version < %s OR version > %s)",
            [segment_id, version - 1, version],
        )
        row = self._one(
            f"SELECT count(*) FROM {members} WHERE segment_id = %s AND version = %s",
            [segment_id, version],
        )
        return int(row[0]) if row else 0

    def write_segment(
        self, project_id: int, segment_id: int, version: int, query: exp.Select
    ) -> int:
        members = self._members(project_id, segment_id, version)
        with_, sql = render(self._store, self._cur, project_id, query)
        # (no parameters: a pattern's "%" in the rendered query is text, not a placeholder)
        self._x(
            f"{with_} INSERT INTO {members} SELECT {int(segment_id)}, {int(version)}, "
            f"q.user_id, q.tag_value FROM ({sql}) q ON CONFLICT DO NOTHING"
        )
        return self._keep_two(members, segment_id, version)

    def write_segment_rows(
        self, project_id: int, segment_id: int, version: int, rows: pa.Table
    ) -> int:
        members = self._members(project_id, segment_id, version)
        data = rows.select(["user_id", "tag_value"]).cast(SEGMENT_ROWS)
        staged = self._stage(data.append_column("n", pa.array(range(len(data)), pa.int64())))
        try:
            self._x(
                f"INSERT INTO {members} SELECT DISTINCT ON (s.user_id) %s, %s, s.user_id, "
                f"s.tag_value FROM {ident(staged)} s WHERE EXISTS (SELECT 1 FROM "
                f"{table(project_id, 'profiles')} p WHERE p.user_id = s.user_id) "
                "ORDER BY s.user_id, s.n DESC",
                [segment_id, version],
            )
        finally:
            self._unstage(staged)
        return self._keep_two(members, segment_id, version)

    def delete_segment(self, project_id: int, segment_id: int) -> None:
        self.ensure_project(project_id)
        self._x(
            f"DELETE FROM {table(project_id, 'segment_members')} WHERE segment_id = %s",
            [segment_id],
        )

    def existing_users(self, project_id: int, user_ids: Sequence[int]) -> set[int]:
        self.ensure_project(project_id)
        if not user_ids:
            return set()
        rows = self._all(
            f"SELECT user_id FROM {table(project_id, 'profiles')} "
            "WHERE user_id = ANY(%s::bigint[])",
            [list(user_ids)],
        )
        return {int(r[0]) for r in rows}

    def match_property(
        self, project_id: int, prop: Property, values: Sequence[Any]
    ) -> dict[Any, list[int]]:
        self.ensure_project(project_id)
        if not values:
            return {}
        staged = self._stage(pa.table({"v": pa.array(values, ARROW_TYPES[prop.type])}))
        try:
            rows = self._all(
                f"SELECT s.v, p.user_id FROM (SELECT DISTINCT v FROM {ident(staged)}) s "
                f"JOIN {table(project_id, 'profiles')} p ON {value(prop, 'p.props')} = s.v"
            )
        finally:
            self._unstage(staged)
        out: dict[Any, list[int]] = {}
        for v, uid in rows:
            out.setdefault(v, []).append(int(uid))
        return out
