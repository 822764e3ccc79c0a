"""Segment queries under a budget, and segment members: versions written, read and compared."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.catalog.model import Property
from opencdp.store import tree
from opencdp.store.base import SEGMENT_ROWS, Budget, OverBudget, QueryError
from opencdp.store.duckdb.connection import DuckDBBase
from opencdp.store.duckdb.sql import ARROW_TYPES, SQL, ident, logical_tables, table
from opencdp.store.duckdb.writer import WriterBase

# The logical tables a segment query reads, and the stored tables behind them.
LOGICAL = {"users": "profiles", "events": "events"}
# How often a segment query's watchdog looks at the clock and the store's working memory.
WATCH_INTERVAL = 0.02
# Memory the watchdog does not count: cached table data and catalog, not a query's work.
_RESIDENT = ("BASE_TABLE", "METADATA", "ART_INDEX")


def render(project_id: int, query: exp.Select) -> str:
    """A segment query's neutral tree as DuckDB SQL over the project's own tables."""
    return tree.render(query, SQL, logical_tables(project_id))


class SegmentReads(DuckDBBase):
    def pattern_error(self, pattern: str) -> str | None:
        with self._read() as cur:
            try:
                cur.execute("SELECT regexp_matches('', ?)", [pattern])
            except duckdb.Error as exc:
                return str(exc).splitlines()[0].removeprefix("Invalid Input Error: ")
        return None

    @contextmanager
    def _guarded(self, cur: duckdb.DuckDBPyConnection, budget: Budget) -> Iterator[None]:
        """Run a segment query on ``cur`` under ``budget``: a watchdog thread interrupts it
        once it has run too long or the store's working memory (hash tables, sorts,
        intermediate results: what ``duckdb_memory()`` counts beyond cached table data) has
        grown by more than the budget since it started. A result that arrives after the
        deadline is over budget too."""
        started = time.monotonic()
        base = self._working_memory()
        done = threading.Event()
        tripped: list[str] = []

        def watch() -> None:
            while not done.wait(WATCH_INTERVAL):
                if time.monotonic() - started > budget.seconds:
                    tripped.append("time")
                elif self._working_memory() - base > budget.memory_bytes:
                    tripped.append("memory")
                else:
                    continue
                cur.interrupt()
                return

        watchdog = threading.Thread(target=watch, name="segment-watchdog", daemon=True)
        watchdog.start()
        try:
            yield
        except duckdb.InterruptException:
            raise OverBudget(tripped[0] if tripped else "time") from None
        except duckdb.OutOfMemoryException:
            raise OverBudget("memory") from None
        except duckdb.Error as exc:
            raise QueryError(str(exc).splitlines()[0][:300]) from None
        finally:
            done.set()
            watchdog.join()
        if tripped:
            raise OverBudget(tripped[0])
        if time.monotonic() - started > budget.seconds:
            raise OverBudget("time")

    def _working_memory(self) -> int:
        with self._read() as cur:
            row = cur.execute(
                "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() "
                f"WHERE tag NOT IN {_RESIDENT}"
            ).fetchone()
        return int(row[0]) if row else 0

    def count_query(self, project_id: int, query: exp.Select, budget: Budget) -> int:
        sql = render(project_id, query)
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return 0
            with self._guarded(cur, budget):
                row = cur.execute(f"SELECT count(*) FROM ({sql})").fetchone()
        return int(row[0]) if row else 0

    def segment_rows(self, project_id: int, query: exp.Select, budget: Budget) -> pa.Table:
        sql = render(project_id, query)
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return SEGMENT_ROWS.empty_table()
            with self._guarded(cur, budget):
                reader = cur.sql(
                    "SELECT CAST(q.user_id AS BIGINT) AS user_id, "
                    f"CAST(q.tag_value AS VARCHAR) AS tag_value FROM ({sql}) q"
                ).to_arrow_reader(65_536)
                assert reader is not None
                rows = reader.read_all()
        return rows.cast(SEGMENT_ROWS)

    def dump_table(
        self,
        project_id: int,
        logical: str,
        columns: Sequence[tuple[str, str]],
        path: Path,
        budget: Budget,
        empty: bool = False,
    ) -> None:
        tbl = table(project_id, LOGICAL[logical])
        exprs = ", ".join(ident(stored) for stored, _ in columns)
        names = [name for _, name in columns]
        with self._read() as cur, self._guarded(cur, budget):
            reader = cur.sql(
                f"SELECT {exprs} FROM {tbl}" + (" LIMIT 0" if empty else "")
            ).to_arrow_reader(65_536)
            assert reader is not None
            schema = pa.schema(
                [pa.field(n, f.type) for n, f in zip(names, reader.schema, strict=True)]
            )
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
                for batch in reader:
                    out.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))

    def segment_members(
        self, project_id: int, segment_id: int, version: int, limit: int, after: int
    ) -> list[tuple[int, str | None]]:
        with self._read() as cur:
            if not self._has_members(cur, project_id):
                return []
            rows = cur.execute(
                f"SELECT user_id, tag_value FROM {table(project_id, 'segment_members')} "
                "WHERE segment_id = ? AND version = ? AND user_id > ? ORDER BY user_id LIMIT ?",
                [segment_id, version, after, limit],
            ).fetchall()
        return [(int(u), t) for u, t in rows]

    def segment_changes(
        self, project_id: int, segment_id: int, version: int, limit: int
    ) -> tuple[list[int], list[int]]:
        members = table(project_id, "segment_members")
        out: list[list[int]] = []
        with self._read() as cur:
            if not self._has_members(cur, project_id):
                return [], []
            for a, b in ((version, version - 1), (version - 1, version)):
                rows = cur.execute(
                    f"SELECT user_id FROM {members} WHERE segment_id = ? AND version = ? "
                    f"EXCEPT SELECT user_id FROM {members} WHERE segment_id = ? AND version = ? "
                    "ORDER BY user_id LIMIT ?",
                    [segment_id, a, segment_id, b, limit],
                ).fetchall()
                out.append([int(r[0]) for r in rows])
        return out[0], out[1]

    def user_segments(self, project_id: int, user_id: int) -> list[tuple[int, int, str | None]]:
        with self._read() as cur:
            if not self._has_members(cur, project_id):
                return []
            rows = cur.execute(
                f"SELECT segment_id, version, tag_value FROM "
                f"{table(project_id, 'segment_members')} WHERE user_id = ? "
                "ORDER BY segment_id, version",
                [user_id],
            ).fetchall()
        return [(int(s), int(v), t) for s, v, t in rows]


class SegmentWrites(WriterBase):
    def _members(self, project_id: int) -> str:
        self.ensure_project(project_id)
        members = table(project_id, "segment_members")
        if not self._store.known_columns(self._cur, members):
            self._cur.execute(
                f"CREATE TABLE IF NOT EXISTS {members} (segment_id BIGINT NOT NULL, "
                "version INTEGER NOT NULL, user_id BIGINT NOT NULL, tag_value VARCHAR)"
            )
            self._store.changed(self._cur, members)
        return members

    def _keep_two(self, members: str, segment_id: int, version: int) -> int:
        self._cur.execute(
            f"DELETE FROM {members} WHERE segment_id = ? AND (version < ? OR version > ?)",
            [segment_id, version - 1, version],
        )
        row = self._one(
            f"SELECT count(*) FROM {members} WHERE segment_id = ? AND version = ?",
            [segment_id, version],
        )
        return int(row[0]) if row else 0

    def write_segment(
        self, project_id: int, segment_id: int, version: int, query: exp.Select
    ) -> int:
        sql = render(project_id, query)
        members = self._members(project_id)
        # Versions above the new one are leftovers of a refresh that did not commit its state.
        self._cur.execute(
            f"DELETE FROM {members} WHERE segment_id = ? AND version >= ?", [segment_id, version]
        )
        self._cur.execute(
            f"INSERT INTO {members} SELECT {int(segment_id)}, {int(version)}, q.user_id, "
            f"q.tag_value FROM ({sql}) q"
        )
        return self._keep_two(members, segment_id, version)

    def write_segment_rows(
        self, project_id: int, segment_id: int, version: int, rows: pa.Table
    ) -> int:
        members = self._members(project_id)
        self._cur.execute(
            f"DELETE FROM {members} WHERE segment_id = ? AND version >= ?", [segment_id, version]
        )
        data = rows.select(["user_id", "tag_value"]).cast(SEGMENT_ROWS)
        staged = self._stage(data.append_column("n", pa.array(range(len(data)), pa.int64())))
        try:
            self._cur.execute(
                f"INSERT INTO {members} SELECT {int(segment_id)}, {int(version)}, s.user_id, "
                f"arg_max(s.tag_value, s.n) FROM {staged} s "
                f"SEMI JOIN {table(project_id, 'profiles')} p ON p.user_id = s.user_id "
                "GROUP BY s.user_id"
            )
        finally:
            self._unstage(staged)
        return self._keep_two(members, segment_id, version)

    def delete_segment(self, project_id: int, segment_id: int) -> None:
        members = table(project_id, "segment_members")
        if self._store.known_columns(self._cur, members):
            self._cur.execute(f"DELETE FROM {members} WHERE segment_id = ?", [segment_id])

    def existing_users(self, project_id: int, user_ids: Sequence[int]) -> set[int]:
        self.ensure_project(project_id)
        if not user_ids:
            return set()
        staged = self._stage(pa.table({"u": pa.array(user_ids, pa.int64())}))
        try:
            rows = self._cur.execute(
                f"SELECT user_id FROM {table(project_id, 'profiles')} "
                f"WHERE user_id IN (SELECT u FROM {staged})"
            ).fetchall()
        finally:
            self._unstage(staged)
        return {int(r[0]) for r in rows}

    def match_property(
        self, project_id: int, prop: Property, values: Sequence[Any]
    ) -> dict[Any, list[int]]:
        self.ensure_project(project_id)
        profiles = table(project_id, "profiles")
        if prop.column not in self._store.known_columns(self._cur, profiles) or not values:
            return {}
        staged = self._stage(pa.table({"v": pa.array(values, ARROW_TYPES[prop.type])}))
        try:
            rows = self._cur.execute(
                f"SELECT s.v, p.user_id FROM (SELECT DISTINCT v FROM {staged}) s "
                f"JOIN {profiles} p ON p.{ident(prop.column)} = s.v"
            ).fetchall()
        finally:
            self._unstage(staged)
        out: dict[Any, list[int]] = {}
        for v, uid in rows:
            out.setdefault(v, []).append(int(uid))
        return out
