"""The export queries: events, profiles and segment members streamed as Arrow batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from opencdp.catalog.model import Property
from opencdp.store.duckdb.connection import DuckDBBase
from opencdp.store.duckdb.sql import ident, json_value, table, text_value


class ExportReads(DuckDBBase):
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
        tbl = table(project_id, "events")
        profiles = table(project_id, "profiles")
        base = [
            ("event_id", "event_id"),
            ("event_name", "event_name"),
            ("time", "epoch_ms(event_time)"),
            ("send_time", "epoch_ms(received_at)"),
            ("user_id", "user_id"),
        ]
        where = "received_at >= ? AND received_at < ?"
        params: list[Any] = [start, end]
        if names is not None:
            where += f" AND event_name IN ({', '.join('?' * len(names))})"
            params += list(names)
        if exclude:
            where += f" AND event_name NOT IN ({', '.join('?' * len(exclude))})"
            params += list(exclude)
        with self._read() as cur:
            known = self.known_columns(cur, tbl)
            if not known:
                return
            present = [p for p in props if p.column in known]
            if login is not None and login.column in self.known_columns(cur, profiles):
                # (each event's user's value: a lookup DuckDB runs as one hash join)
                base = [
                    *base,
                    (
                        "login",
                        f"(SELECT {text_value(login, 'u.' + ident(login.column))} "
                        f"FROM {profiles} u WHERE u.user_id = e.user_id)",
                    ),
                ]
            cols = base + [(p.column, json_value(p, ident(p.column))) for p in present]
            yield from self._stream(
                cur, cols, f"{tbl} e WHERE {where} ORDER BY received_at, event_id", params
            )

    def export_profiles(
        self,
        project_id: int,
        props: Sequence[Property],
        start: datetime,
        end: datetime,
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        tbl = table(project_id, "profiles")
        base = [
            ("user_id", "user_id"),
            ("created", "epoch_ms(created_at)"),
            ("updated", "epoch_ms(updated_at)"),
        ]
        with self._read() as cur:
            known = self.known_columns(cur, tbl)
            if not known:
                return
            present = [p for p in props if p.column in known]
            if login is not None and login.column in known:
                base = [*base, ("login", text_value(login, ident(login.column)))]
            cols = base + [(p.column, json_value(p, ident(p.column))) for p in present]
            where = "updated_at >= ? AND updated_at < ? ORDER BY user_id"
            yield from self._stream(cur, cols, f"{tbl} WHERE {where}", [start, end])

    def received_counts(
        self, project_id: int, start: datetime, end: datetime
    ) -> tuple[dict[str | None, int], int]:
        events, profiles = table(project_id, "events"), table(project_id, "profiles")
        names: dict[str | None, int] = {}
        changed = 0
        with self._read() as cur:
            if self.known_columns(cur, events):
                rows = cur.execute(
                    f"SELECT event_name, count(*) FROM {events} "
                    "WHERE received_at >= ? AND received_at < ? GROUP BY event_name",
                    [start, end],
                ).fetchall()
                names = {r[0]: int(r[1]) for r in rows}
            if self.known_columns(cur, profiles):
                row = cur.execute(
                    f"SELECT count(*) FROM {profiles} WHERE updated_at >= ? AND updated_at < ?",
                    [start, end],
                ).fetchone()
                changed = int(row[0]) if row else 0
        return names, changed

    def export_members(
        self,
        project_id: int,
        versions: Sequence[tuple[int, int]],
        props: Sequence[Property],
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        if not versions:
            return
        members = table(project_id, "segment_members")
        profiles = table(project_id, "profiles")
        pairs = ", ".join(f"({int(s)}, {int(v)})" for s, v in versions)
        with self._read() as cur:
            if not self._has_members(cur, project_id):
                return
            known = self.known_columns(cur, profiles)
            present = [p for p in props if p.column in known]
            cols = [
                ("segment_id", "m.segment_id"),
                ("version", "m.version"),
                ("user_id", "m.user_id"),
                ("tag_value", "m.tag_value"),
            ] + [(p.column, json_value(p, f"u.{ident(p.column)}")) for p in present]
            if login is not None and login.column in known:
                cols.insert(4, ("login", text_value(login, f"u.{ident(login.column)}")))
            source = f"{members} m"
            if known:  # the members' current identity values
                source += f" LEFT JOIN {profiles} u ON u.user_id = m.user_id"
            yield from self._stream(
                cur,
                cols,
                f"{source} WHERE (m.segment_id, m.version) IN ({pairs}) "
                "ORDER BY m.segment_id, m.user_id",
                [],
            )

    def _stream(
        self,
        cur: duckdb.DuckDBPyConnection,
        cols: list[tuple[str, str]],
        rest: str,
        params: list[Any],
    ) -> Iterator[pa.RecordBatch]:
        """``SELECT <cols> FROM <rest>`` as Arrow batches with the columns' names (every name
        and expression generated here, never a user's)."""
        names = [n for n, _ in cols]
        reader = cur.sql(
            f"SELECT {', '.join(sql for _, sql in cols)} FROM {rest}", params=params
        ).to_arrow_reader(65_536)
        assert reader is not None
        for batch in reader:
            yield pa.RecordBatch.from_arrays(batch.columns, names=names)
