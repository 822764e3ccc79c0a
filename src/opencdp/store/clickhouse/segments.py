"""Segment queries under a budget, and segment members: versions written, read and compared.

A segment query's neutral tree is rendered in ClickHouse's dialect over three CTEs standing
for the logical tables (``users``, ``events``, ``lists``): each selects the project's rows of
the shared table (its latest versions), with the property columns the query names; events
carry the user they belong to now (:meth:`.connection.ClickHouseBase.events_source`). The
query runs with the project's table filters too, and with ClickHouse's own limits as its
budget (``max_execution_time``, ``max_memory_usage``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot.expressions as exp
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store import tree
from opencdp.store.base import SEGMENT_ROWS, Budget, OverBudget, QueryError
from opencdp.store.clickhouse.connection import ClickHouseBase, error_code, first_line
from opencdp.store.clickhouse.sql import CAPABILITIES, SQL, column, seen
from opencdp.store.clickhouse.writer import Writes, literals
from opencdp.store.duckdb.sql import ARROW_TYPES
from opencdp.store.names import ident

_PROPERTY = re.compile(r"p_([0-9]{1,18})")
_CTES = {tree.USERS: "_users", tree.EVENTS: "_events", tree.LISTS: "_lists"}
_OWN = {
    tree.USERS: ("user_id", "created_at", "updated_at"),
    tree.EVENTS: ("event_id", "event_name", "event_time", "received_at", "user_id"),
    tree.LISTS: ("list_id", "user_id"),
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
_TIME_CODES = {159, 160}  # TIMEOUT_EXCEEDED, TOO_SLOW
_MEMORY_CODES = {241}  # MEMORY_LIMIT_EXCEEDED


def _logical(
    store: ClickHouseBase, c: Client, project_id: int, logical: str, names: set[str]
) -> tuple[str, list[str]]:
    """A logical table's body (a query of the project's rows), and its columns: its own and
    those of the property columns ``names`` that exist."""
    pid = int(project_id)
    if logical == tree.LISTS:
        body = (
            f"SELECT list_id, user_id FROM {store.final('list_members')} WHERE project_id = {pid}"
        )
        return body, list(_OWN[logical])
    table = "profiles" if logical == tree.USERS else "events"
    props = sorted(store.has_columns(c, table, names))
    if logical == tree.USERS:
        cols = [*_OWN[logical], *props]
        exprs = [*_OWN[logical], *(f"{seen(p, p in store.lists)} AS {ident(p)}" for p in props)]
        body = f"SELECT {', '.join(exprs)} FROM {store.final('profiles')} WHERE project_id = {pid}"
        return body, cols
    source, user = store.events_source(c, pid)
    cols = [*_OWN[logical], *props]
    values = [f"{seen(f'e.{p}', p in store.lists)} AS {ident(p)}" for p in props]
    if user == "e.user_id":  # (no merged users: the events as they are)
        exprs = [f"e.{c_}" for c_ in _OWN[logical]] + values
        return f"SELECT {', '.join(exprs)} FROM {source} WHERE e.project_id = {pid}", cols
    # Each event's user as it is now, named user_id outside the join that maps it.
    exprs = [f"e.{c_}" for c_ in _OWN[logical] if c_ != "user_id"] + [f"{user} AS _uid", *values]
    inner = f"SELECT {', '.join(exprs)} FROM {source} WHERE e.project_id = {pid}"
    outer = ", ".join("_uid AS user_id" if c_ == "user_id" else ident(c_) for c_ in cols)
    return f"SELECT {outer} FROM ({inner})", cols


def render(store: ClickHouseBase, c: Client, project_id: int, query: exp.Select) -> str:
    """A segment query as ClickHouse SQL, with its logical tables as CTEs."""
    names = {c_.name for c_ in query.find_all(exp.Column) if _PROPERTY.fullmatch(c_.name)}
    query = _named(query)
    ctes = [
        f"{ident(cte)} AS ({_logical(store, c, project_id, logical, names)[0]})"
        for logical, cte in _CTES.items()
    ]
    return "WITH " + ", ".join(ctes) + " " + tree.render(query, SQL, _CTES)


def _named(query: exp.Select) -> exp.Select:
    """The query with its two result columns named ``user_id`` and ``tag_value`` (ClickHouse
    names an unnamed column by its expression, ``e0.user_id``)."""
    if not isinstance(query, exp.Select) or len(query.expressions) != 2:
        return query
    named = query.copy()
    named.set(
        "expressions",
        [
            e
            if e.alias_or_name == name and isinstance(e, exp.Alias)
            else exp.alias_(e.unalias() if isinstance(e, exp.Alias) else e, name)
            for e, name in zip(named.expressions, ("user_id", "tag_value"), strict=True)
        ],
    )
    return named


def budget_settings(budget: Budget) -> dict[str, Any]:
    return {
        "max_execution_time": max(0.001, float(budget.seconds)),
        "max_memory_usage": max(1 << 20, int(budget.memory_bytes)),
    }


class SegmentReads(ClickHouseBase):
    def pattern_error(self, pattern: str) -> str | None:
        with self._client() as c:
            try:
                c.query("SELECT match('', {p:String})", parameters={"p": pattern})
            except ClickHouseError as exc:
                if error_code(exc) != 427:
                    raise
                return re.sub(r"^OptimizedRegularExpression: ", "", first_line(exc))
        return None

    @contextmanager
    def _guarded(self, budget: Budget) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except ClickHouseError as exc:
            code = error_code(exc)
            if code in _TIME_CODES:
                raise OverBudget("time") from None
            if code in _MEMORY_CODES:
                raise OverBudget("memory") from None
            if self.transient(exc):
                raise
            raise QueryError(first_line(exc)) from None
        if time.monotonic() - started > budget.seconds:
            raise OverBudget("time")

    def _settings(self, project_id: int, budget: Budget) -> dict[str, Any]:
        return {**self.scoped(project_id), **budget_settings(budget)}

    def count_query(self, project_id: int, query: exp.Select, budget: Budget) -> int:
        with self._client() as c, self._guarded(budget):
            sql = render(self, c, project_id, query)
            rows = c.query(
                f"SELECT count() FROM ({sql})", settings=self._settings(project_id, budget)
            ).result_rows
        return int(rows[0][0])

    def segment_rows(self, project_id: int, query: exp.Select, budget: Budget) -> pa.Table:
        with self._client() as c, self._guarded(budget):
            sql = render(self, c, project_id, query)
            table = c.query_arrow(
                f"SELECT CAST(q.user_id AS Int64) AS user_id, "
                f"CAST(q.tag_value AS Nullable(String)) AS tag_value FROM ({sql}) AS q",
                settings=self._settings(project_id, budget),
            )
        return pa.table(
            [table.column(i).cast(f.type) for i, f in enumerate(SEGMENT_ROWS)], schema=SEGMENT_ROWS
        )

    def dump_table(
        self,
        project_id: int,
        logical: str,
        columns: Sequence[tuple[str, str]],
        path: Path,
        budget: Budget,
        empty: bool = False,
    ) -> None:
        names = {s for s, _ in columns if _PROPERTY.fullmatch(s)}
        with self._client() as c:
            body, known = _logical(self, c, project_id, logical, names)
            missing = [stored for stored, _ in columns if stored not in known]
            if missing:
                raise QueryError(f"column {missing[0]} does not exist")
            types = self._types(c, logical, [s for s, _ in columns])
            schema = pa.schema([(name, types[stored]) for stored, name in columns])
            exprs = ", ".join(
                f"q.{ident(stored)} AS _c{i}" for i, (stored, _) in enumerate(columns)
            )
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
                if empty:
                    return
                with (
                    self._guarded(budget),
                    c.query_arrow_stream(
                        f"SELECT {exprs} FROM ({body}) AS q",
                        settings=self._settings(project_id, budget),
                    ) as stream,
                ):
                    for batch in stream:
                        arrays = [batch.column(i).cast(f.type) for i, f in enumerate(schema)]
                        out.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))

    def _types(self, c: Client, logical: str, stored: list[str]) -> dict[str, pa.DataType]:
        table = "profiles" if logical == tree.USERS else "events"
        out = {s: _OWN_TYPES[s] for s in stored if s in _OWN_TYPES}
        ids = [int(m.group(1)) for s in stored if (m := _PROPERTY.fullmatch(s))]
        if ids:
            rows = c.query(
                "SELECT name, type FROM system.columns WHERE database = {d:String} "
                "AND table = {t:String}",
                parameters={"d": self.database, "t": table},
            ).result_rows
            by_type = {v: k for k, v in CAPABILITIES.column_types.items()}
            for name, typ in rows:
                if name in stored:
                    kind = PropertyType.LIST if name in self.lists else by_type.get(typ)
                    if kind is not None:
                        out[name] = ARROW_TYPES[kind]
        return out

    def segment_members(
        self, project_id: int, segment_id: int, version: int, limit: int, after: int
    ) -> list[tuple[int, str | None]]:
        with self._client() as c:
            rows = c.query(
                f"SELECT user_id, tag_value FROM {self.final('segment_members')} "
                f"WHERE project_id = {int(project_id)} AND segment_id = {int(segment_id)} "
                f"AND version = {int(version)} AND user_id > {int(after)} "
                f"ORDER BY user_id LIMIT {int(limit)}",
                settings=self.scoped(project_id),
            ).result_rows
        return [(int(u), t) for u, t in rows]

    def segment_changes(
        self, project_id: int, segment_id: int, version: int, limit: int
    ) -> tuple[list[int], list[int]]:
        pid, sid = int(project_id), int(segment_id)
        of = (
            f"SELECT user_id FROM {self.final('segment_members')} WHERE project_id = {pid} "
            f"AND segment_id = {sid} AND version = "
        )
        out: list[list[int]] = []
        with self._client() as c:
            for a, b in ((version, version - 1), (version - 1, version)):
                rows = c.query(
                    f"{of}{int(a)} AND user_id NOT IN ({of}{int(b)}) ORDER BY user_id "
                    f"LIMIT {int(limit)}",
                    settings=self.scoped(pid),
                ).result_rows
                out.append([int(r[0]) for r in rows])
        return out[0], out[1]

    def user_segments(self, project_id: int, user_id: int) -> list[tuple[int, int, str | None]]:
        with self._client() as c:
            rows = c.query(
                f"SELECT segment_id, version, tag_value FROM {self.final('segment_members')} "
                f"WHERE project_id = {int(project_id)} AND user_id = {int(user_id)} "
                "ORDER BY segment_id, version",
                settings=self.scoped(project_id),
            ).result_rows
        return [(int(s), int(v), t) for s, v, t in rows]


class SegmentWrites(Writes):
    def _members(self, project_id: int, segment_id: int, where: str) -> None:
        """Delete the rows of a segment's versions that ``where`` picks (when there are any)."""
        pid, sid = int(project_id), int(segment_id)
        cond = f"project_id = {pid} AND segment_id = {sid} AND ({where})"
        if self._one(f"SELECT count() FROM {self.t('segment_members')} WHERE {cond}")[0]:
            self._x(f"DELETE FROM {self._store.deletes('segment_members')} WHERE {cond}")

    def _keep_two(self, project_id: int, segment_id: int, version: int) -> int:
        v = int(version)
        self._members(project_id, segment_id, f"version < {v - 1} OR version > {v}")
        row = self._one(
            f"SELECT count() FROM {self.final('segment_members')} WHERE project_id = "
            f"{int(project_id)} AND segment_id = {int(segment_id)} AND version = {v}"
        )
        return int(row[0])

    def write_segment(
        self, project_id: int, segment_id: int, version: int, query: exp.Select
    ) -> int:
        self._lock(project_id)
        # (leftovers of a refresh that did not record its state)
        self._members(project_id, segment_id, f"version >= {int(version)}")
        sql = render(self._store, self._c, project_id, query)
        self._x(
            f"INSERT INTO {self.t('segment_members')} (project_id, segment_id, version, "
            "user_id, tag_value, _version, _deleted) "
            f"SELECT {int(project_id)}, {int(segment_id)}, {int(version)}, q.user_id, "
            f"q.tag_value, {self._v()}, 0 FROM ({sql}) AS q"
        )
        return self._keep_two(project_id, segment_id, version)

    def write_segment_rows(
        self, project_id: int, segment_id: int, version: int, rows: pa.Table
    ) -> int:
        self._lock(project_id)
        self._members(project_id, segment_id, f"version >= {int(version)}")
        data = rows.select(["user_id", "tag_value"]).cast(SEGMENT_ROWS)
        staged = self._stage(data.append_column("n", pa.array(range(len(data)), pa.int64())))
        pid = int(project_id)
        try:
            self._x(
                f"INSERT INTO {self.t('segment_members')} (project_id, segment_id, version, "
                "user_id, tag_value, _version, _deleted) "
                f"SELECT {pid}, {int(segment_id)}, {int(version)}, user_id, "
                f"argMax(tag_value, n), {self._v()}, 0 FROM {ident(staged)} "
                f"WHERE user_id IN (SELECT user_id FROM {self.final('profiles')} "
                f"WHERE project_id = {pid}) GROUP BY user_id"
            )
        finally:
            self._unstage(staged)
        return self._keep_two(project_id, segment_id, version)

    def delete_segment(self, project_id: int, segment_id: int) -> None:
        self._lock(project_id)
        self._members(project_id, segment_id, "1")

    def existing_users(self, project_id: int, user_ids: Sequence[int]) -> set[int]:
        if not user_ids:
            return set()
        self._pid = int(project_id)
        rows = self._all(
            f"SELECT user_id FROM {self.final('profiles')} WHERE project_id = "
            f"{int(project_id)} AND user_id IN {literals(map(int, user_ids))}"
        )
        return {int(r[0]) for r in rows}

    def match_property(
        self, project_id: int, prop: Property, values: Sequence[Any]
    ) -> dict[Any, list[int]]:
        self._pid = int(project_id)
        if not values or not self.present([prop]):
            return {}
        staged = self._stage(pa.table({"v": pa.array(values, ARROW_TYPES[prop.type])}))
        try:
            rows = self._all(
                f"SELECT s.v, p.user_id FROM (SELECT DISTINCT v FROM {ident(staged)}) AS s "
                f"JOIN {self.final('profiles', 'p')} ON p.{column(prop)} = s.v "
                f"WHERE p.project_id = {int(project_id)}"
            )
        finally:
            self._unstage(staged)
        out: dict[Any, list[int]] = {}
        for v, uid in rows:
            out.setdefault(v, []).append(int(uid))
        return out
