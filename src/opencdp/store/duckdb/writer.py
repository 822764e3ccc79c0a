"""The write transaction: identities, merges, profile and event upserts, documents.

One writer at a time (:meth:`DuckDBStore.writer`); rows arrive as Arrow tables, registered
under generated names for the statements that read them, never one INSERT per record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from opencdp.catalog.model import Property
from opencdp.store.base import EventRows, ProfileRows, StoreWriter, Token, survivors
from opencdp.store.duckdb.connection import DuckDBBase
from opencdp.store.duckdb.sql import ARROW_TYPES, CAPABILITIES, collection_table, ident, table


class WriterBase(StoreWriter):
    """The transaction's cursor, staging of Arrow tables, and the project's tables."""

    def __init__(self, store: DuckDBBase, cur: duckdb.DuckDBPyConnection) -> None:
        self._store = store
        self._cur = cur
        self._n = 0

    def _stage(self, data: pa.Table) -> str:
        """Register an Arrow table under a fresh generated name for the next statement(s)."""
        self._n += 1
        name = f"_staged_{self._n}"
        self._cur.register(name, data)
        return name

    def _unstage(self, name: str) -> None:
        self._cur.unregister(name)

    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        """The first row of a statement (None without one), its result read to the end: a
        result left unfinished on the transaction's cursor refuses the next registration of
        an Arrow table (:meth:`_stage`)."""
        rows = self._cur.execute(sql, params).fetchall()
        return rows[0] if rows else None

    def ensure_project(self, project_id: int) -> None:
        cur = self._cur
        profiles, identities, events = (
            table(project_id, k) for k in ("profiles", "identities", "events")
        )
        if self._store.known_columns(cur, profiles):
            return
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {profiles} (user_id BIGINT NOT NULL, "
            "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)"
        )
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {identities} (key_id INTEGER NOT NULL, "
            "value VARCHAR NOT NULL, user_id BIGINT NOT NULL)"
        )
        cur.execute(
            # (no primary key: see _merge_events)
            f"CREATE TABLE IF NOT EXISTS {events} (event_id VARCHAR NOT NULL, "
            "event_name VARCHAR NOT NULL, event_time TIMESTAMP NOT NULL, "
            "received_at TIMESTAMP NOT NULL, user_id BIGINT NOT NULL)"
        )
        # Static lists (Marketo listId): who is on which list; no index, unique by construction.
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table(project_id, 'list_members')} "
            "(list_id BIGINT NOT NULL, user_id BIGINT NOT NULL)"
        )
        for tbl in (profiles, identities, events):
            self._store.changed(cur, tbl)

    def ensure_columns(self, project_id: int, props: Iterable[Property]) -> None:
        cur = self._cur
        for p in props:
            tbl = table(project_id, "profiles" if p.table == "user" else "events")
            cols = self._store.known_columns(cur, tbl)
            if p.column not in cols:
                sql_type = CAPABILITIES.column_types[p.type]
                cur.execute(f"ALTER TABLE {tbl} ADD COLUMN {ident(p.column)} {sql_type}")
                self._store.changed(cur, tbl)


class Writes(WriterBase):
    def allocate_user_ids(self, project_id: int, count: int, key: str | None = None) -> int:
        if key is not None:
            held = self._one(
                "SELECT first_id FROM _opencdp_reserved_ids "
                "WHERE key = ? AND project_id = ? AND count >= ?",
                [key, project_id, count],
            )
            if held is not None:
                return int(held[0])
        row = self._one(
            "INSERT INTO _opencdp_user_ids VALUES (?, 1 + ?) ON CONFLICT (project_id) "
            "DO UPDATE SET next_id = next_id + EXCLUDED.next_id - 1 RETURNING next_id",
            [project_id, count],
        )
        assert row is not None
        first = int(row[0]) - count
        if key is not None:
            self._cur.execute(
                "INSERT INTO _opencdp_reserved_ids VALUES (?, ?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET project_id = EXCLUDED.project_id, first_id = EXCLUDED.first_id, "
                "count = EXCLUDED.count",
                [key, project_id, first, count],
            )
        return first

    def lookup_identities(self, project_id: int, tokens: Sequence[Token]) -> dict[Token, int]:
        if not tokens:
            return {}
        staged = self._stage(
            pa.table(
                {
                    "key_id": pa.array([k for k, _ in tokens], pa.int32()),
                    "value": pa.array([v for _, v in tokens], pa.string()),
                }
            )
        )
        try:
            rows = self._cur.execute(
                f"SELECT i.key_id, i.value, i.user_id FROM {staged} s "
                f"JOIN {table(project_id, 'identities')} i "
                "ON i.key_id = s.key_id AND i.value = s.value"
            ).fetchall()
        finally:
            self._unstage(staged)
        return {(int(k), str(v)): int(u) for k, v, u in rows}

    def insert_identities(
        self, project_id: int, tokens: Sequence[Token], user_ids: Sequence[int]
    ) -> None:
        if not tokens:
            return
        staged = self._stage(
            pa.table(
                {
                    "key_id": pa.array([k for k, _ in tokens], pa.int32()),
                    "value": pa.array([v for _, v in tokens], pa.string()),
                    "user_id": pa.array(user_ids, pa.int64()),
                }
            )
        )
        try:
            self._cur.execute(
                f"MERGE INTO {table(project_id, 'identities')} AS t USING {staged} AS s "
                "ON t.key_id = s.key_id AND t.value = s.value "
                "WHEN MATCHED THEN UPDATE SET user_id = s.user_id "
                "WHEN NOT MATCHED THEN INSERT (key_id, value, user_id) "
                "VALUES (s.key_id, s.value, s.user_id)"
            )
        finally:
            self._unstage(staged)

    def merge_users(
        self, project_id: int, merges: dict[int, int], user_props: Sequence[Property]
    ) -> None:
        if not merges:
            return
        cur = self._cur
        final = survivors(merges)
        members = {**final, **{s: s for s in final.values()}}
        staged = self._stage(
            pa.table(
                {
                    "member": pa.array(list(members), pa.int64()),
                    "survivor": pa.array(list(members.values()), pa.int64()),
                }
            )
        )
        profiles = table(project_id, "profiles")
        try:
            for kind in ("events", "identities", "list_members"):
                cur.execute(
                    f"UPDATE {table(project_id, kind)} AS t SET user_id = m.survivor "
                    f"FROM {staged} AS m WHERE t.user_id = m.member AND m.member <> m.survivor"
                )
            lists = table(project_id, "list_members")
            kept = f"(SELECT DISTINCT survivor FROM {staged})"
            cur.execute(  # a survivor on a list twice (it and a loser were both there): once
                f"DELETE FROM {lists} WHERE user_id IN {kept} AND rowid NOT IN "
                f"(SELECT min(rowid) FROM {lists} WHERE user_id IN {kept} "
                "GROUP BY list_id, user_id)"
            )
            seg = table(project_id, "segment_members")
            if self._store.known_columns(cur, seg):  # members move to the survivor, once
                cur.execute(
                    f"UPDATE {seg} AS t SET user_id = m.survivor FROM {staged} AS m "
                    "WHERE t.user_id = m.member AND m.member <> m.survivor"
                )
                cur.execute(
                    f"DELETE FROM {seg} WHERE user_id IN {kept} AND rowid NOT IN "
                    f"(SELECT min(rowid) FROM {seg} WHERE user_id IN {kept} "
                    "GROUP BY segment_id, version, user_id)"
                )
            present = [
                p for p in user_props if p.column in self._store.known_columns(cur, profiles)
            ]
            # Each property comes from the most recently updated profile that has a value.
            picks = "".join(
                f", arg_max(p.{ident(c.column)}, p.updated_at) "
                f"FILTER (WHERE p.{ident(c.column)} IS NOT NULL) AS {ident(c.column)}"
                for c in present
            )
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _merged AS "
                f"SELECT m.survivor AS user_id, min(p.created_at) AS created_at, "
                f"max(p.updated_at) AS updated_at{picks} FROM {profiles} p "
                f"JOIN {staged} m ON p.user_id = m.member GROUP BY m.survivor"
            )
            cur.execute(f"DELETE FROM {profiles} WHERE user_id IN (SELECT member FROM {staged})")
            cols = ", ".join(
                ["user_id", "created_at", "updated_at", *(ident(c.column) for c in present)]
            )
            cur.execute(f"INSERT INTO {profiles} ({cols}) SELECT {cols} FROM _merged")
            cur.execute("DROP TABLE _merged")
        finally:
            self._unstage(staged)

    def upsert_profiles(
        self, project_id: int, rows: ProfileRows, props: Sequence[Property]
    ) -> None:
        if not rows:
            return
        touched = pa.array(rows.touched_at, pa.timestamp("us"))
        data: dict[str, pa.Array] = {
            "user_id": pa.array(rows.user_ids, pa.int64()),
            "created_at": touched,
            "updated_at": touched,
        }
        for p in props:
            data[p.column] = pa.array([v.get(p.id) for v in rows.values], ARROW_TYPES[p.type])
        staged = self._stage(pa.table(data))
        try:
            self._merge_profiles(project_id, staged, "user_id", "created_at", props)
        finally:
            self._unstage(staged)

    def _merge_profiles(
        self, project_id: int, source: str, uid: str, touched: str, props: Sequence[Property]
    ) -> None:
        """Upsert profiles from ``source`` (one row per user): a null leaves a stored value.

        A MERGE rather than INSERT ... ON CONFLICT: the profiles table has no index to keep up
        (bulk upserts are several times faster without one); user ids are unique because every
        write goes through the single writer with sources of unique ids.
        """
        cols = [ident(p.column) for p in props]
        sets = ", ".join(
            [f"updated_at = s.{touched}"] + [f"{c} = COALESCE(s.{c}, t.{c})" for c in cols]
        )
        names = ", ".join(["user_id", "created_at", "updated_at", *cols])
        values = ", ".join([f"s.{uid}", f"s.{touched}", f"s.{touched}", *(f"s.{c}" for c in cols)])
        self._cur.execute(
            f"MERGE INTO {table(project_id, 'profiles')} AS t USING {source} AS s "
            f"ON t.user_id = s.{uid} WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
        )

    def _insert_profiles(
        self,
        project_id: int,
        source: str,
        uid: str,
        touched: str,
        props: Sequence[Property],
        where: str = "true",
    ) -> None:
        """Insert profiles from the rows of ``source`` (one per user) that ``where`` picks,
        none of them stored."""
        cols = [ident(p.column) for p in props]
        names = ", ".join(["user_id", "created_at", "updated_at", *cols])
        values = ", ".join([uid, touched, touched, *cols])
        self._cur.execute(
            f"INSERT INTO {table(project_id, 'profiles')} ({names}) "
            f"SELECT {values} FROM {source} WHERE {where}"
        )

    def _update_profiles(
        self,
        project_id: int,
        source: str,
        uid: str,
        touched: str,
        props: Sequence[Property],
        where: str = "true",
    ) -> None:
        """Update the stored profiles of the rows of ``source`` (``s``, one per user) that
        ``where`` picks: a null leaves a stored value."""
        sets = ", ".join(
            [f"updated_at = s.{touched}"]
            + [f"{c} = COALESCE(s.{c}, t.{c})" for c in (ident(p.column) for p in props)]
        )
        self._cur.execute(
            f"UPDATE {table(project_id, 'profiles')} AS t SET {sets} FROM {source} AS s "
            f"WHERE t.user_id = s.{uid} AND {where}"
        )

    def upsert_events(self, project_id: int, rows: EventRows, props: Sequence[Property]) -> None:
        if not rows:
            return
        data: dict[str, pa.Array] = {
            "event_id": pa.array(rows.event_ids, pa.string()),
            "event_name": pa.array(rows.names, pa.string()),
            "event_time": pa.array(rows.times, pa.timestamp("us")),
            "received_at": pa.array(rows.received, pa.timestamp("us")),
            "user_id": pa.array(rows.user_ids, pa.int64()),
        }
        for p in props:
            data[p.column] = pa.array([v.get(p.id) for v in rows.values], ARROW_TYPES[p.type])
        staged = self._stage(pa.table(data))
        try:
            self._merge_events(project_id, staged, props)
        finally:
            self._unstage(staged)

    def _merge_events(self, project_id: int, source: str, props: Sequence[Property]) -> None:
        """Upsert events from ``source`` (one row per event id): a stored event takes the
        name, time, person and receipt of the new one, and its non-null properties.

        A MERGE, as for profiles (:meth:`_merge_profiles`): the events table has no index to
        keep up; event ids are unique because every write goes through the single writer with
        sources of unique ids.
        """
        cols = [ident(p.column) for p in props]
        names = ["event_id", "event_name", "event_time", "received_at", "user_id", *cols]
        sets = ", ".join(
            [f"{c} = s.{c}" for c in ("event_name", "event_time", "received_at", "user_id")]
            + [f"{c} = COALESCE(s.{c}, t.{c})" for c in cols]
        )
        self._cur.execute(
            f"MERGE INTO {table(project_id, 'events')} AS t USING {source} AS s "
            f"ON t.event_id = s.event_id WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
            f"VALUES ({', '.join(f's.{c}' for c in names)})"
        )

    def delete_users(self, project_id: int, user_ids: Sequence[int]) -> None:
        if not user_ids:
            return
        staged = self._stage(pa.table({"user_id": pa.array(list(user_ids), pa.int64())}))
        try:
            kinds = ["events", "identities", "profiles", "list_members"]
            if self._store.known_columns(self._cur, table(project_id, "segment_members")):
                kinds.append("segment_members")
            for kind in kinds:
                self._cur.execute(
                    f"DELETE FROM {table(project_id, kind)} "
                    f"WHERE user_id IN (SELECT user_id FROM {staged})"
                )
        finally:
            self._unstage(staged)

    def profile_values(
        self, project_id: int, user_ids: Sequence[int], props: Sequence[Property]
    ) -> dict[int, dict[int, Any]]:
        if not user_ids:
            return {}
        self.ensure_project(project_id)
        tbl = table(project_id, "profiles")
        known = self._store.known_columns(self._cur, tbl)
        present = [p for p in props if p.column in known]
        cols = "".join(f", t.{ident(p.column)}" for p in present)
        staged = self._stage(pa.table({"user_id": pa.array(list(user_ids), pa.int64())}))
        try:
            rows = self._cur.execute(
                f"SELECT t.user_id{cols} FROM {tbl} t JOIN {staged} s ON t.user_id = s.user_id"
            ).fetchall()
        finally:
            self._unstage(staged)
        return {
            int(r[0]): {p.id: v for p, v in zip(present, r[1:], strict=True) if v is not None}
            for r in rows
        }

    def clear_profile_values(
        self, project_id: int, clears: Sequence[tuple[Property, Sequence[int]]]
    ) -> None:
        tbl = table(project_id, "profiles")
        known = self._store.known_columns(self._cur, tbl)
        for prop, user_ids in clears:
            if not user_ids or prop.column not in known:
                continue
            staged = self._stage(pa.table({"user_id": pa.array(list(user_ids), pa.int64())}))
            try:
                self._cur.execute(
                    f"UPDATE {tbl} SET {ident(prop.column)} = NULL FROM {staged} s "
                    f"WHERE {tbl}.user_id = s.user_id"
                )
            finally:
                self._unstage(staged)

    def clear_event_properties(self, project_id: int, event_ids: Sequence[str]) -> None:
        tbl = table(project_id, "events")
        cols = sorted(c for c in self._store.known_columns(self._cur, tbl) if c.startswith("p_"))
        if not event_ids or not cols:
            return
        sets = ", ".join(f"{ident(c)} = NULL" for c in cols)
        staged = self._stage(pa.table({"event_id": pa.array(list(event_ids), pa.string())}))
        try:
            self._cur.execute(
                f"UPDATE {tbl} SET {sets} FROM {staged} s WHERE {tbl}.event_id = s.event_id"
            )
        finally:
            self._unstage(staged)

    def existing_event_ids(self, project_id: int, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        self.ensure_project(project_id)
        staged = self._stage(pa.table({"event_id": pa.array(list(event_ids), pa.string())}))
        try:
            rows = self._cur.execute(
                f"SELECT e.event_id FROM {table(project_id, 'events')} e "
                f"JOIN {staged} s ON e.event_id = s.event_id"
            ).fetchall()
        finally:
            self._unstage(staged)
        return {r[0] for r in rows}

    def _collection(self, project_id: int, collection_id: int) -> str:
        tbl = collection_table(project_id, collection_id)
        if not self._store.known_columns(self._cur, tbl):
            self._cur.execute(
                f"CREATE TABLE IF NOT EXISTS {tbl} (_id VARCHAR PRIMARY KEY, doc JSON NOT NULL, "
                "updated_at TIMESTAMP NOT NULL)"
            )
            self._store.changed(self._cur, tbl)
        return tbl

    def existing_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str]
    ) -> set[str]:
        if not ids:
            return set()
        tbl = self._collection(project_id, collection_id)
        staged = self._stage(pa.table({"_id": pa.array(list(ids), pa.string())}))
        try:
            rows = self._cur.execute(
                f"SELECT d._id FROM {tbl} d JOIN {staged} s ON d._id = s._id"
            ).fetchall()
        finally:
            self._unstage(staged)
        return {r[0] for r in rows}

    def upsert_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str], docs: Sequence[str]
    ) -> None:
        if not ids:
            return
        tbl = self._collection(project_id, collection_id)
        staged = self._stage(
            pa.table({"_id": pa.array(list(ids), pa.string()), "doc": pa.array(list(docs))})
        )
        try:
            self._cur.execute(
                f"INSERT INTO {tbl} SELECT _id, doc::JSON, now() FROM {staged} "
                "ON CONFLICT (_id) DO UPDATE SET doc = EXCLUDED.doc, "
                "updated_at = EXCLUDED.updated_at"
            )
        finally:
            self._unstage(staged)

    def set_checkpoint(self, name: str, value: int) -> None:
        self._cur.execute(
            "INSERT INTO _opencdp_state VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            [name, value],
        )

    def checkpoint_for_update(self, name: str) -> int:
        # (the single writer: no other turn runs until this one ends)
        row = self._one("SELECT value FROM _opencdp_state WHERE name = ?", [name])
        return int(row[0]) if row else 0

    def record_batch(self, key: str, outcome: bytes) -> None:
        self._cur.execute(
            "INSERT INTO _opencdp_batches VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET outcome = EXCLUDED.outcome",
            [key, outcome],
        )

    def forget_batches(self, prefix: str) -> None:
        for tbl in ("_opencdp_batches", "_opencdp_reserved_ids"):
            self._cur.execute(f"DELETE FROM {tbl} WHERE starts_with(key, ?)", [prefix])
