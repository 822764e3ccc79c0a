"""The export queries: events, profiles and segment members streamed as Arrow batches, read
through a server-side cursor (memory bounded by one batch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
import pyarrow as pa

from opencdp.catalog.model import Property
from opencdp.store.names import table
from opencdp.store.postgres.connection import PostgresBase
from opencdp.store.postgres.sql import json_value, text_value

BATCH_ROWS = 65_536
_MS = "CAST(floor(extract(epoch FROM {}) * 1000) AS BIGINT)"
Column = tuple[str, str, pa.DataType]  # name, SQL, Arrow type


class ExportReads(PostgresBase):
    def export_events(
        self,
        project_id: int,
        props: Sequence[Property],
        start: datetime,
        end: datetime,
        names: Sequence[str] | None,
        exclude: Sequence[str] | None,
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        events, profiles = table(project_id, "events"), table(project_id, "profiles")
        cols: list[Column] = [
            ("event_id", "e.event_id", pa.string()),
            ("event_name", "e.event_name", pa.string()),
            ("time", _MS.format("e.event_time"), pa.int64()),
            ("send_time", _MS.format("e.received_at"), pa.int64()),
            ("user_id", "e.user_id", pa.int64()),
        ]
        where = "e.received_at >= %s AND e.received_at < %s"
        params: list[Any] = [start, end]
        if names is not None:
            where += " AND e.event_name = ANY(%s::text[])"
            params.append(list(names))
        if exclude:
            where += " AND NOT (e.event_name = ANY(%s::text[]))"
            params.append(list(exclude))
        with self._connection() as conn:
            with conn.cursor() as cur:
                if not self._has_tables(cur, project_id):
                    return
                present = self.present(cur, project_id, props)
                source = f"{events} e"
                if login is not None and self.present(cur, project_id, [login]):
                    cols.append(("login", text_value(login, "u.props"), pa.string()))
                    source += f" LEFT JOIN {profiles} u ON u.user_id = e.user_id"
            cols += [(p.column, json_value(p, "e.props"), pa.string()) for p in present]
            yield from _stream(
                conn, cols, f"{source} WHERE {where} ORDER BY e.received_at, e.event_id", params
            )

    def export_profiles(
        self,
        project_id: int,
        props: Sequence[Property],
        start: datetime,
        end: datetime,
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        cols: list[Column] = [
            ("user_id", "u.user_id", pa.int64()),
            ("created", _MS.format("u.created_at"), pa.int64()),
            ("updated", _MS.format("u.updated_at"), pa.int64()),
        ]
        with self._connection() as conn:
            with conn.cursor() as cur:
                if not self._has_tables(cur, project_id):
                    return
                present = self.present(cur, project_id, props)
                if login is not None and self.present(cur, project_id, [login]):
                    cols.append(("login", text_value(login, "u.props"), pa.string()))
            cols += [(p.column, json_value(p, "u.props"), pa.string()) for p in present]
            rest = (
                f"{table(project_id, 'profiles')} u WHERE u.updated_at >= %s "
                "AND u.updated_at < %s ORDER BY u.user_id"
            )
            yield from _stream(conn, cols, rest, [start, end])

    def received_counts(
        self, project_id: int, start: datetime, end: datetime
    ) -> tuple[dict[str | None, int], int]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return {}, 0
            rows = cur.execute(
                f"SELECT event_name, count(*) FROM {table(project_id, 'events')} "
                "WHERE received_at >= %s AND received_at < %s GROUP BY event_name",
                [start, end],
            ).fetchall()
            row = cur.execute(
                f"SELECT count(*) FROM {table(project_id, 'profiles')} "
                "WHERE updated_at >= %s AND updated_at < %s",
                [start, end],
            ).fetchone()
        return {r[0]: int(r[1]) for r in rows}, int(row[0]) if row else 0

    def export_members(
        self,
        project_id: int,
        versions: Sequence[tuple[int, int]],
        props: Sequence[Property],
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        if not versions:
            return
        members, profiles = table(project_id, "segment_members"), table(project_id, "profiles")
        cols: list[Column] = [
            ("segment_id", "m.segment_id", pa.int64()),
            ("version", "m.version", pa.int64()),
            ("user_id", "m.user_id", pa.int64()),
            ("tag_value", "m.tag_value", pa.string()),
        ]
        with self._connection() as conn:
            with conn.cursor() as cur:
                if not self._has_tables(cur, project_id):
                    return
                present = self.present(cur, project_id, props)
                if login is not None and self.present(cur, project_id, [login]):
                    cols.append(("login", text_value(login, "u.props"), pa.string()))
            cols += [(p.column, json_value(p, "u.props"), pa.string()) for p in present]
            rest = (
                f"{members} m LEFT JOIN {profiles} u ON u.user_id = m.user_id "
                "JOIN unnest(%s::bigint[], %s::bigint[]) AS v(s, n) "
                "ON m.segment_id = v.s AND m.version = v.n ORDER BY m.segment_id, m.user_id"
            )
            params = [[int(s) for s, _ in versions], [int(v) for _, v in versions]]
            yield from _stream(conn, cols, rest, params)


def _stream(
    conn: psycopg.Connection[Any], cols: list[Column], rest: str, params: list[Any]
) -> Iterator[pa.RecordBatch]:
    """``SELECT <cols> FROM <rest>`` as Arrow batches with the columns' names and types (every
    name and expression generated here, never a user's), through a server-side cursor."""
    schema = pa.schema([(name, typ) for name, _, typ in cols])
    sql = f"SELECT {', '.join(s for _, s, _ in cols)} FROM {rest}"
    with conn.cursor(name="opencdp_export") as cur:
        cur.itersize = BATCH_ROWS
        cur.execute(sql, params)
        while rows := cur.fetchmany(BATCH_ROWS):
            yield batch_of(rows, schema)


def batch_of(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.RecordBatch:
    """Rows (tuples in the schema's order) as one Arrow batch."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.RecordBatch.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )
