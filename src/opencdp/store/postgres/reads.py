"""Reads of one profile, its identities and events, lists and documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opencdp.catalog.model import Property
from opencdp.store.base import Token
from opencdp.store.names import collection_table, table
from opencdp.store.postgres.connection import PostgresBase
from opencdp.store.postgres.sql import decode_all


class Reads(PostgresBase):
    def find_user(self, project_id: int, token: Token) -> int | None:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return None
            row = cur.execute(
                f"SELECT user_id FROM {table(project_id, 'identities')} "
                "WHERE key_id = %s AND value = %s",
                [token[0], token[1]],
            ).fetchone()
        return int(row[0]) if row else None

    def profile(
        self, project_id: int, user_id: int, props: Sequence[Property]
    ) -> dict[str, Any] | None:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return None
            row = cur.execute(
                "SELECT user_id, created_at, updated_at, props "
                f"FROM {table(project_id, 'profiles')} WHERE user_id = %s",
                [user_id],
            ).fetchone()
        if row is None:
            return None
        values = decode_all(list(props), row[3])
        return {"user_id": row[0], "created_at": row[1], "updated_at": row[2], "values": values}

    def identities(self, project_id: int, user_id: int) -> list[Token]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return []
            rows = cur.execute(
                f"SELECT key_id, value FROM {table(project_id, 'identities')} "
                "WHERE user_id = %s ORDER BY key_id, value",
                [user_id],
            ).fetchall()
        return [(int(k), str(v)) for k, v in rows]

    def event_count(self, project_id: int, user_id: int) -> int:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return 0
            row = cur.execute(
                f"SELECT count(*) FROM {table(project_id, 'events')} WHERE user_id = %s",
                [user_id],
            ).fetchone()
        return int(row[0]) if row else 0

    def latest_events(
        self, project_id: int, user_id: int, limit: int, props: Sequence[Property]
    ) -> list[dict[str, Any]]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return []
            rows = cur.execute(
                "SELECT event_id, event_name, event_time, received_at, props "
                f"FROM {table(project_id, 'events')} WHERE user_id = %s "
                "ORDER BY event_time DESC, event_id DESC LIMIT %s",
                [user_id, limit],
            ).fetchall()
        return [
            {
                "event_id": r[0],
                "event": r[1],
                "event_time": r[2],
                "received_at": r[3],
                "values": decode_all(list(props), r[4]),
            }
            for r in rows
        ]

    def counts(self, project_id: int) -> dict[str, int]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return {"profiles": 0, "events": 0, "identities": 0}
            out = {}
            for kind in ("profiles", "events", "identities"):
                row = cur.execute(f"SELECT count(*) FROM {table(project_id, kind)}").fetchone()
                out[kind] = int(row[0]) if row else 0
        return out

    def list_members(self, project_id: int, list_id: int, limit: int, after: int) -> list[int]:
        with self._read() as cur:
            if not self._has_tables(cur, project_id):
                return []
            rows = cur.execute(
                f"SELECT user_id FROM {table(project_id, 'list_members')} WHERE list_id = %s "
                "AND user_id > %s ORDER BY user_id LIMIT %s",
                [list_id, after, limit],
            ).fetchall()
        return [int(r[0]) for r in rows]

    def document(self, project_id: int, collection_id: int, doc_id: str) -> str | None:
        tbl = collection_table(project_id, collection_id)
        with self._read() as cur:
            if not self.exists(cur, tbl):
                return None
            row = cur.execute(f"SELECT doc::text FROM {tbl} WHERE _id = %s", [doc_id]).fetchone()
        return None if row is None else str(row[0])

    def document_count(self, project_id: int, collection_id: int) -> int:
        tbl = collection_table(project_id, collection_id)
        with self._read() as cur:
            if not self.exists(cur, tbl):
                return 0
            row = cur.execute(f"SELECT count(*) FROM {tbl}").fetchone()
        return int(row[0]) if row else 0
