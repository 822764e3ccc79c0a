"""Reads of one profile, its identities and events, lists and documents.

A user's events include those written for the users merged into it (``overrides``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from opencdp.catalog.model import Property
from opencdp.store.base import Token
from opencdp.store.clickhouse.connection import ClickHouseBase
from opencdp.store.clickhouse.sql import column
from opencdp.store.clickhouse.writer import values_of


def naive(v: Any) -> Any:
    """A datetime as the naive UTC value the store's reads return."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v


class Reads(ClickHouseBase):
    def _rows(self, project_id: int, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        with self._client() as c:
            return list(
                c.query(sql, parameters=params, settings=self.scoped(project_id)).result_rows
            )

    def find_user(self, project_id: int, token: Token) -> int | None:
        rows = self._rows(
            project_id,
            f"SELECT user_id FROM {self.final('identities')} WHERE project_id = "
            f"{int(project_id)} AND key_id = {{k:Int64}} AND value = {{v:String}}",
            {"k": int(token[0]), "v": str(token[1])},
        )
        return int(rows[0][0]) if rows else None

    def profile(
        self, project_id: int, user_id: int, props: Sequence[Property]
    ) -> dict[str, Any] | None:
        with self._client() as c:
            props = self.present(c, props)
            cols = "".join(f", {column(p)}" for p in props)
            rows = c.query(
                f"SELECT user_id, created_at, updated_at{cols} FROM {self.final('profiles')} "
                f"WHERE project_id = {int(project_id)} AND user_id = {int(user_id)}",
                settings=self.scoped(project_id),
            ).result_rows
        if not rows:
            return None
        r = rows[0]
        return {
            "user_id": int(r[0]),
            "created_at": naive(r[1]),
            "updated_at": naive(r[2]),
            "values": {k: naive(v) for k, v in values_of(props, r[3:]).items()},
        }

    def identities(self, project_id: int, user_id: int) -> list[Token]:
        rows = self._rows(
            project_id,
            f"SELECT key_id, value FROM {self.final('identities')} WHERE project_id = "
            f"{int(project_id)} AND user_id = {int(user_id)} ORDER BY key_id, value",
        )
        return [(int(k), str(v)) for k, v in rows]

    def event_count(self, project_id: int, user_id: int) -> int:
        rows = self._rows(
            project_id,
            f"SELECT count() FROM {self.t('events')} WHERE project_id = {int(project_id)} "
            f"AND user_id IN {self.own_users(project_id, [user_id])}",
        )
        return int(rows[0][0])

    def latest_events(
        self, project_id: int, user_id: int, limit: int, props: Sequence[Property]
    ) -> list[dict[str, Any]]:
        with self._client() as c:
            props = self.present(c, props)
            cols = "".join(f", {column(p)}" for p in props)
            rows = c.query(
                f"SELECT event_id, event_name, event_time, received_at{cols} "
                f"FROM {self.t('events')} WHERE project_id = {int(project_id)} "
                f"AND user_id IN {self.own_users(project_id, [user_id])} "
                f"ORDER BY event_time DESC, event_id DESC LIMIT {int(limit)}",
                settings=self.scoped(project_id),
            ).result_rows
        return [
            {
                "event_id": r[0],
                "event": r[1],
                "event_time": naive(r[2]),
                "received_at": naive(r[3]),
                "values": {k: naive(v) for k, v in values_of(props, r[4:]).items()},
            }
            for r in rows
        ]

    def counts(self, project_id: int) -> dict[str, int]:
        pid = int(project_id)
        out = {}
        for kind in ("profiles", "events", "identities"):
            rows = self._rows(
                pid, f"SELECT count() FROM {self.final(kind)} WHERE project_id = {pid}"
            )
            out[kind] = int(rows[0][0])
        return out

    def list_members(self, project_id: int, list_id: int, limit: int, after: int) -> list[int]:
        rows = self._rows(
            project_id,
            f"SELECT user_id FROM {self.final('list_members')} WHERE project_id = "
            f"{int(project_id)} AND list_id = {int(list_id)} AND user_id > {int(after)} "
            f"ORDER BY user_id LIMIT {int(limit)}",
        )
        return [int(r[0]) for r in rows]

    def document(self, project_id: int, collection_id: int, doc_id: str) -> str | None:
        rows = self._rows(
            project_id,
            f"SELECT doc FROM {self.final('documents')} WHERE project_id = {int(project_id)} "
            f"AND collection_id = {int(collection_id)} AND _id = {{i:String}}",
            {"i": doc_id},
        )
        return str(rows[0][0]) if rows else None

    def document_count(self, project_id: int, collection_id: int) -> int:
        rows = self._rows(
            project_id,
            f"SELECT count() FROM {self.final('documents')} WHERE project_id = "
            f"{int(project_id)} AND collection_id = {int(collection_id)}",
        )
        return int(rows[0][0])
