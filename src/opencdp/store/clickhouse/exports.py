"""The export queries: events, profiles and segment members streamed as Arrow batches, one
query each (memory is bounded by a block of rows; the sort spills to disk beyond a bound)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from opencdp.catalog.model import Property
from opencdp.store.clickhouse.connection import ClickHouseBase
from opencdp.store.clickhouse.sql import column, epoch_ms, json_value, text_value

PAGE_ROWS = 65_536
SORT_BYTES = 256 << 20
Column = tuple[str, str, pa.DataType]  # name, SQL, Arrow type
_MS = epoch_ms("{0}")


def when(d: datetime) -> str:
    """A UTC datetime as a ``DateTime64`` parameter's text (every year in four digits)."""
    if d.tzinfo is not None:
        d = d.astimezone(UTC).replace(tzinfo=None)
    return f"{d.year:04d}-{d:%m-%d %H:%M:%S}.{d.microsecond:06d}"


class ExportReads(ClickHouseBase):
    def _pages(
        self,
        project_id: int,
        cols: list[Column],
        rest: str,
        where: str,
        keys: list[tuple[str, str]],
        params: dict[str, Any],
    ) -> Iterator[pa.RecordBatch]:
        """``SELECT <cols> FROM <rest> WHERE <where> ORDER BY <keys>`` streamed as Arrow
        batches of at most :data:`PAGE_ROWS` rows, with the columns' names and types. A sort
        larger than :data:`SORT_BYTES` spills to disk."""
        schema = pa.schema([(name, typ) for name, _, typ in cols])
        select = ", ".join(f"{sql} AS _c{i}" for i, (_, sql, _) in enumerate(cols))
        order = ", ".join(sql for sql, _ in keys)
        settings = {
            **self.scoped(project_id),
            "max_block_size": PAGE_ROWS,
            "max_bytes_before_external_sort": SORT_BYTES,
        }
        with (
            self._client() as c,
            c.query_arrow_stream(
                f"SELECT {select} FROM {rest} WHERE {where} ORDER BY {order}",
                parameters=params,
                settings=settings,
            ) as stream,
        ):
            for batch in stream:
                if batch.num_rows:
                    arrays = [batch.column(i).cast(f.type) for i, f in enumerate(schema)]
                    yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    def _login(
        self, c: Client, project_id: int, login: Property | None, user: str
    ) -> tuple[list[Column], str]:
        """The ``login`` column (the user's value as text) and the join it needs."""
        if login is None or not self.present(c, [login]):
            return [], ""
        join = (
            f" LEFT JOIN (SELECT user_id, {column(login)} FROM {self.final('profiles')} "
            f"WHERE project_id = {int(project_id)}) AS _u ON _u.user_id = {user}"
        )
        return [("login", text_value(login, f"_u.{column(login)}"), pa.string())], join

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
        pid = int(project_id)
        with self._client() as c:
            source, user = self.events_source(c, pid)
            present = self.present(c, props)
            logins, join = self._login(c, pid, login, user)
        cols: list[Column] = [
            ("event_id", "e.event_id", pa.string()),
            ("event_name", "e.event_name", pa.string()),
            ("time", _MS.format("e.event_time"), pa.int64()),
            ("send_time", _MS.format("e.received_at"), pa.int64()),
            ("user_id", user, pa.int64()),
            *logins,
            *((p.column, json_value(p, f"e.{column(p)}"), pa.string()) for p in present),
        ]
        where = (
            f"e.project_id = {pid} AND e.received_at >= {{s:DateTime64(6, 'UTC')}} "
            "AND e.received_at < {t:DateTime64(6, 'UTC')}"
        )
        params: dict[str, Any] = {"s": when(start), "t": when(end)}
        if names is not None:
            where += " AND e.event_name IN (SELECT arrayJoin({n:Array(String)}))"
            params["n"] = list(names)
        if exclude:
            where += " AND e.event_name NOT IN (SELECT arrayJoin({x:Array(String)}))"
            params["x"] = list(exclude)
        keys = [("e.received_at", "DateTime64(6, 'UTC')"), ("e.event_id", "String")]
        yield from self._pages(pid, cols, source + join, where, keys, params)

    def export_profiles(
        self,
        project_id: int,
        props: Sequence[Property],
        start: datetime,
        end: datetime,
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        pid = int(project_id)
        with self._client() as c:
            present = self.present(c, props)
            logins = (
                [("login", text_value(login, f"u.{column(login)}"), pa.string())]
                if login is not None and self.present(c, [login])
                else []
            )
        cols: list[Column] = [
            ("user_id", "u.user_id", pa.int64()),
            ("created", _MS.format("u.created_at"), pa.int64()),
            ("updated", _MS.format("u.updated_at"), pa.int64()),
            *logins,
            *((p.column, json_value(p, f"u.{column(p)}"), pa.string()) for p in present),
        ]
        where = (
            f"u.project_id = {pid} AND u.updated_at >= {{s:DateTime64(6, 'UTC')}} "
            "AND u.updated_at < {t:DateTime64(6, 'UTC')}"
        )
        keys = [("u.user_id", "Int64")]
        yield from self._pages(
            pid, cols, self.final("profiles", "u"), where, keys, {"s": when(start), "t": when(end)}
        )

    def received_counts(
        self, project_id: int, start: datetime, end: datetime
    ) -> tuple[dict[str | None, int], int]:
        pid = int(project_id)
        window = "BETWEEN {s:DateTime64(6, 'UTC')} AND {t:DateTime64(6, 'UTC')}"
        params = {"s": when(start), "t": when(end)}
        with self._client() as c:
            rows = c.query(
                f"SELECT event_name, count() FROM {self.t('events')} WHERE project_id = {pid} "
                f"AND received_at {window} AND received_at < {{t:DateTime64(6, 'UTC')}} "
                "GROUP BY event_name",
                parameters=params,
                settings=self.scoped(pid),
            ).result_rows
            changed = c.query(
                f"SELECT count() FROM {self.final('profiles')} WHERE project_id = {pid} "
                f"AND updated_at {window} AND updated_at < {{t:DateTime64(6, 'UTC')}}",
                parameters=params,
                settings=self.scoped(pid),
            ).result_rows
        return {r[0]: int(r[1]) for r in rows}, int(changed[0][0])

    def export_members(
        self,
        project_id: int,
        versions: Sequence[tuple[int, int]],
        props: Sequence[Property],
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        if not versions:
            return
        pid = int(project_id)
        with self._client() as c:
            present = self.present(c, props)
            logins, _ = self._login(c, pid, login, "m.user_id")
        wanted = [p for p in present] + ([login] if logins and login is not None else [])
        values = ", ".join(["user_id", *{column(p) for p in wanted}])
        cols: list[Column] = [
            ("segment_id", "m.segment_id", pa.int64()),
            ("version", "m.version", pa.int64()),
            ("user_id", "m.user_id", pa.int64()),
            ("tag_value", "m.tag_value", pa.string()),
        ]
        if logins and login is not None:
            cols.append(("login", text_value(login, f"u.{column(login)}"), pa.string()))
        cols += [(p.column, json_value(p, f"u.{column(p)}"), pa.string()) for p in present]
        rest = (
            f"{self.final('segment_members', 'm')} LEFT JOIN (SELECT {values} FROM "
            f"{self.final('profiles')} WHERE project_id = {pid}) AS u ON u.user_id = m.user_id"
        )
        where = (
            f"m.project_id = {pid} AND (m.segment_id, m.version) IN "
            "(SELECT arrayJoin({v:Array(Tuple(Int64, Int64))}))"
        )
        keys = [("m.segment_id", "Int64"), ("m.user_id", "Int64"), ("m.version", "Int64")]
        params = {"v": [(int(s), int(n)) for s, n in versions]}
        yield from self._pages(pid, cols, rest, where, keys, params)
