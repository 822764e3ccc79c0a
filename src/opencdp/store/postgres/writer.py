"""The write transaction: identities, merges, profile and event upserts, documents.

A write turn is one transaction on a connection of its own. Its first step on a project takes
the project's advisory lock (held to the commit), so that the turns of every process that
touch one project (identity resolution above all: one identity value, one user) run one at a
time, while other projects' turns run alongside. Rows arrive as Arrow tables and are copied in
(``COPY … FROM STDIN``, CSV written by Arrow) into temporary tables, never one INSERT per
record.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv

from opencdp.catalog.model import Property
from opencdp.store.base import EventRows, ProfileRows, StoreWriter, Token, survivors
from opencdp.store.duckdb.sql import ARROW_TYPES
from opencdp.store.names import collection_table, ident, table
from opencdp.store.postgres.connection import PostgresBase
from opencdp.store.postgres.sql import PROJECT_WRITES, decode_all, key, props_object

_COPY_ROWS = 65_536  # rows per CSV chunk copied in
# Temporary tables of at least this many rows get statistics for the statements joining them
# (an import batch); a flush's few hundred rows are planned well enough without, and skip the
# cost on every flush.
ANALYZE_ROWS = 10_000


def _column(arr: pa.ChunkedArray | pa.Array) -> tuple[pa.ChunkedArray | pa.Array, str]:
    """A staged column as CSV can carry it, with its PostgreSQL type."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _column(arr.cast(t.value_type))
    if pa.types.is_integer(t):
        return arr, "BIGINT"
    if pa.types.is_floating(t):
        return arr, "DOUBLE PRECISION"
    if pa.types.is_boolean(t):
        return arr, "BOOLEAN"
    if pa.types.is_timestamp(t):
        if t.tz is not None:  # (the instant, as naive UTC)
            arr = arr.cast(pa.timestamp(t.unit))
        return arr, "TIMESTAMP"
    if pa.types.is_list(t) or pa.types.is_large_list(t):  # as a JSON array
        items = [None if v is None else orjson.dumps(v).decode() for v in arr.to_pylist()]
        return pa.array(items, pa.string()), "JSONB"
    if pa.types.is_null(t):
        return arr.cast(pa.string()), "TEXT"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr, "TEXT"
    raise TypeError(f"cannot stage a column of type {t}")


class WriterBase(StoreWriter):
    """The transaction's connection, staging of Arrow tables, and the project's tables."""

    def __init__(self, store: PostgresBase, conn: psycopg.Connection[Any]) -> None:
        self._store = store
        self._conn = conn
        self._cur = conn.cursor()
        self._n = 0
        self._locked: set[int] = set()
        self.created: set[str] = set()  # tables this turn created (known once it commits)

    def _x(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        return self._cur.execute(sql, params)

    def _one(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        return self._x(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        return self._x(sql, params).fetchall()

    def _temp(self, name: str, select: str, params: Sequence[Any] | None = None) -> None:
        """(Re)create the temporary table ``name`` (generated) from a query; gone at commit."""
        self._x(f"DROP TABLE IF EXISTS {ident(name)}")
        rows = self._x(f"CREATE TEMP TABLE {ident(name)} ON COMMIT DROP AS {select}", params)
        if rows.rowcount >= ANALYZE_ROWS:
            self._x(f"ANALYZE {ident(name)}")

    def _stage(self, data: pa.Table) -> str:
        """Copy an Arrow table into a fresh temporary table; its (generated) name."""
        self._n += 1
        name = f"_staged_{self._n}"
        cols, types = [], []
        for f, arr in zip(data.schema, data.columns, strict=True):
            col, sql_type = _column(arr)
            cols.append(col)
            types.append(f"{ident(f.name)} {sql_type}")
        self._x(f"CREATE TEMP TABLE {ident(name)} ({', '.join(types)}) ON COMMIT DROP")
        if data.num_rows:
            staged = pa.table(cols, names=data.schema.names)
            options = pacsv.WriteOptions(include_header=False)
            with self._cur.copy(f"COPY {ident(name)} FROM STDIN (FORMAT csv)") as copy:
                for batch in staged.to_batches(_COPY_ROWS):
                    buf = io.BytesIO()
                    pacsv.write_csv(batch, buf, options)
                    copy.write(buf.getbuffer())
            if data.num_rows >= ANALYZE_ROWS:
                self._x(f"ANALYZE {ident(name)}")
        return name

    def _unstage(self, name: str) -> None:
        self._x(f"DROP TABLE IF EXISTS {ident(name)}")

    def _lock(self, project_id: int) -> None:
        """Take the project's write lock for the rest of the transaction (once)."""
        if project_id not in self._locked:
            self._x("SELECT pg_advisory_xact_lock(%s, %s)", [PROJECT_WRITES, project_id])
            self._locked.add(project_id)

    def ensure_project(self, project_id: int) -> None:
        self._lock(project_id)
        profiles = table(project_id, "profiles")
        if profiles in self.created or self._store.exists(self._cur, profiles):
            return
        statements = [
            f"CREATE TABLE IF NOT EXISTS {profiles} (user_id BIGINT PRIMARY KEY, "
            "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL, "
            "props JSONB NOT NULL DEFAULT '{}')",
            # (exports of the profiles changed in a period)
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_profiles_updated')} "
            f"ON {profiles} (updated_at)",
            f"CREATE TABLE IF NOT EXISTS {table(project_id, 'identities')} ("
            "key_id INTEGER NOT NULL, value TEXT NOT NULL, user_id BIGINT NOT NULL, "
            "PRIMARY KEY (key_id, value))",
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_identities_user')} "
            f"ON {table(project_id, 'identities')} (user_id)",
            f"CREATE TABLE IF NOT EXISTS {table(project_id, 'events')} ("
            "event_id TEXT PRIMARY KEY, event_name TEXT NOT NULL, "
            "event_time TIMESTAMP NOT NULL, received_at TIMESTAMP NOT NULL, "
            "user_id BIGINT NOT NULL, props JSONB NOT NULL DEFAULT '{}')",
            # A person's events (profiles, merges); one event's occurrences in a window
            # (segment conditions); a period's receipts in order (exports).
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_events_user')} "
            f"ON {table(project_id, 'events')} (user_id, event_time)",
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_events_name')} "
            f"ON {table(project_id, 'events')} (event_name, event_time)",
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_events_received')} "
            f"ON {table(project_id, 'events')} (received_at)",
            f"CREATE TABLE IF NOT EXISTS {table(project_id, 'list_members')} ("
            "list_id BIGINT NOT NULL, user_id BIGINT NOT NULL, PRIMARY KEY (list_id, user_id))",
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_list_members_user')} "
            f"ON {table(project_id, 'list_members')} (user_id)",
            f"CREATE TABLE IF NOT EXISTS {table(project_id, 'segment_members')} ("
            "segment_id BIGINT NOT NULL, version INTEGER NOT NULL, user_id BIGINT NOT NULL, "
            "tag_value TEXT, PRIMARY KEY (segment_id, version, user_id))",
            f"CREATE INDEX IF NOT EXISTS {ident(f'p{project_id}_segment_members_user')} "
            f"ON {table(project_id, 'segment_members')} (user_id)",
        ]
        for statement in statements:
            self._x(statement)
        self.created.add(profiles)

    def ensure_columns(self, project_id: int, props: Iterable[Property]) -> None:
        props = list(props)
        if not props:
            return
        have = {
            kind: self._store.registered(
                self._cur, project_id, kind, (p.id for p in props if p.table == kind)
            )
            for kind in ("user", "event")
        }
        new = [p for p in props if p.id not in have[p.table]]
        if new:
            self._lock(project_id)
            self._x(
                "INSERT INTO _opencdp_columns (project_id, kind, prop_id, type) "
                "SELECT %s, k, i, t FROM unnest(%s::text[], %s::bigint[], %s::text[]) "
                "AS x(k, i, t) "
                "ON CONFLICT DO NOTHING",
                [
                    project_id,
                    [p.table for p in new],
                    [p.id for p in new],
                    [p.type.value for p in new],
                ],
            )


class Writes(WriterBase):
    def allocate_user_ids(self, project_id: int, count: int, key: str | None = None) -> int:
        self._lock(project_id)
        if key is not None:
            held = self._one(
                "SELECT first_id FROM _opencdp_reserved_ids "
                "WHERE key = %s AND project_id = %s AND count >= %s",
                [key, project_id, count],
            )
            if held is not None:
                return int(held[0])
        row = self._one(
            "INSERT INTO _opencdp_user_ids AS t VALUES (%s, 1 + %s) ON CONFLICT (project_id) "
            "DO UPDATE SET next_id = t.next_id + EXCLUDED.next_id - 1 RETURNING next_id",
            [project_id, count],
        )
        first = int(row[0]) - count
        if key is not None:
            self._x(
                "INSERT INTO _opencdp_reserved_ids VALUES (%s, %s, %s, %s) ON CONFLICT (key) "
                "DO UPDATE SET project_id = EXCLUDED.project_id, first_id = EXCLUDED.first_id, "
                "count = EXCLUDED.count",
                [key, project_id, first, count],
            )
        return first

    def lookup_identities(self, project_id: int, tokens: Sequence[Token]) -> dict[Token, int]:
        if not tokens:
            return {}
        rows = self._all(
            f"SELECT i.key_id, i.value, i.user_id FROM {table(project_id, 'identities')} i "
            "JOIN unnest(%s::integer[], %s::text[]) AS s(key_id, value) "
            "ON i.key_id = s.key_id AND i.value = s.value",
            [[k for k, _ in tokens], [v for _, v in tokens]],
        )
        return {(int(k), str(v)): int(u) for k, v, u in rows}

    def insert_identities(
        self, project_id: int, tokens: Sequence[Token], user_ids: Sequence[int]
    ) -> None:
        if not tokens:
            return
        self._lock(project_id)
        self._x(
            f"INSERT INTO {table(project_id, 'identities')} AS t (key_id, value, user_id) "
            "SELECT * FROM unnest(%s::integer[], %s::text[], %s::bigint[]) "
            "ON CONFLICT (key_id, value) DO UPDATE SET user_id = EXCLUDED.user_id",
            [[k for k, _ in tokens], [v for _, v in tokens], list(user_ids)],
        )

    def merge_users(
        self, project_id: int, merges: dict[int, int], user_props: Sequence[Property]
    ) -> None:
        if not merges:
            return
        self._lock(project_id)
        final = survivors(merges)
        members = {**final, **{s: s for s in final.values()}}
        self._temp(
            "_members",
            "SELECT * FROM unnest(%s::bigint[], %s::bigint[]) AS m(member, survivor)",
            [list(members), list(members.values())],
        )
        moved = "FROM _members m WHERE t.user_id = m.member AND m.member <> m.survivor"
        for kind in ("events", "identities"):
            self._x(f"UPDATE {table(project_id, kind)} AS t SET user_id = m.survivor {moved}")
        # Lists and segment versions: a survivor on one twice (it and a loser were both
        # there) is there once.
        for kind, cols in (
            ("list_members", "t.list_id"),
            ("segment_members", "t.segment_id, t.version"),
        ):
            tbl = table(project_id, kind)
            tag = ", t.tag_value" if kind == "segment_members" else ""
            self._x(
                f"INSERT INTO {tbl} SELECT {cols}, m.survivor{tag} FROM {tbl} t "
                "JOIN _members m ON t.user_id = m.member WHERE m.member <> m.survivor "
                "ON CONFLICT DO NOTHING"
            )
            self._x(
                f"DELETE FROM {tbl} AS t USING _members m "
                "WHERE t.user_id = m.member AND m.member <> m.survivor"
            )
        # Each property comes from the most recently updated profile that has a value.
        profiles = table(project_id, "profiles")
        self._temp(
            "_merged",
            "SELECT m.survivor AS user_id, min(p.created_at) AS created_at, "
            "max(p.updated_at) AS updated_at, coalesce(jsonb_object_agg(kv.key, kv.value "
            "ORDER BY p.updated_at) FILTER (WHERE kv.key IS NOT NULL), '{}') AS props "
            f"FROM {profiles} p JOIN _members m ON p.user_id = m.member "
            "LEFT JOIN LATERAL jsonb_each(p.props) kv ON true GROUP BY m.survivor",
        )
        self._x(f"DELETE FROM {profiles} WHERE user_id IN (SELECT member FROM _members)")
        self._x(
            f"INSERT INTO {profiles} (user_id, created_at, updated_at, props) "
            "SELECT user_id, created_at, updated_at, props FROM _merged"
        )
        self._x("DROP TABLE _merged; DROP TABLE _members")

    def upsert_profiles(
        self, project_id: int, rows: ProfileRows, props: Sequence[Property]
    ) -> None:
        if not rows:
            return
        self._lock(project_id)
        data: dict[str, pa.Array] = {
            "user_id": pa.array(rows.user_ids, pa.int64()),
            "touched": pa.array(rows.touched_at, pa.timestamp("us")),
        }
        for p in props:
            data[p.column] = pa.array([v.get(p.id) for v in rows.values], ARROW_TYPES[p.type])
        staged = self._stage(pa.table(data))
        try:
            self._upsert_profiles(project_id, staged, "user_id", "touched", props)
        finally:
            self._unstage(staged)

    def _upsert_profiles(
        self,
        project_id: int,
        source: str,
        uid: str,
        touched: str,
        props: Sequence[Property],
        where: str = "true",
    ) -> None:
        """Upsert profiles from the rows of ``source`` (``s``, one per user) that ``where``
        picks: a null leaves a stored value."""
        self._x(
            f"INSERT INTO {table(project_id, 'profiles')} AS t "
            "(user_id, created_at, updated_at, props) "
            f"SELECT s.{ident(uid)}, s.{ident(touched)}, s.{ident(touched)}, "
            f"{props_object(list(props), 's')} FROM {ident(source)} s WHERE {where} "
            "ON CONFLICT (user_id) DO UPDATE SET updated_at = EXCLUDED.updated_at, "
            "props = t.props || EXCLUDED.props"
        )

    def upsert_events(self, project_id: int, rows: EventRows, props: Sequence[Property]) -> None:
        if not rows:
            return
        self._lock(project_id)
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
            self._upsert_events(project_id, staged, props_object(list(props), "s"))
        finally:
            self._unstage(staged)

    def _upsert_events(self, project_id: int, source: str, props: str) -> None:
        """Upsert events from ``source`` (``s``, one row per event id, ``props`` its SQL): a
        stored event takes the name, time, person and receipt of the new one, and its
        non-null properties."""
        self._x(
            f"INSERT INTO {table(project_id, 'events')} AS t (event_id, event_name, event_time, "
            "received_at, user_id, props) SELECT s.event_id, s.event_name, s.event_time, "
            f"s.received_at, s.user_id, {props} FROM {ident(source)} s "
            "ON CONFLICT (event_id) DO UPDATE SET event_name = EXCLUDED.event_name, "
            "event_time = EXCLUDED.event_time, received_at = EXCLUDED.received_at, "
            "user_id = EXCLUDED.user_id, props = t.props || EXCLUDED.props"
        )

    def delete_users(self, project_id: int, user_ids: Sequence[int]) -> None:
        if not user_ids:
            return
        self._lock(project_id)
        for kind in ("events", "identities", "profiles", "list_members", "segment_members"):
            self._x(
                f"DELETE FROM {table(project_id, kind)} WHERE user_id = ANY(%s::bigint[])",
                [list(user_ids)],
            )

    def profile_values(
        self, project_id: int, user_ids: Sequence[int], props: Sequence[Property]
    ) -> dict[int, dict[int, Any]]:
        if not user_ids:
            return {}
        self.ensure_project(project_id)
        rows = self._all(
            f"SELECT user_id, props FROM {table(project_id, 'profiles')} "
            "WHERE user_id = ANY(%s::bigint[])",
            [list(user_ids)],
        )
        return {int(u): decode_all(list(props), obj) for u, obj in rows}

    def clear_profile_values(
        self, project_id: int, clears: Sequence[tuple[Property, Sequence[int]]]
    ) -> None:
        tbl = table(project_id, "profiles")
        for prop, user_ids in clears:
            if user_ids:
                self._lock(project_id)
                self._x(
                    f"UPDATE {tbl} SET props = props - {key(prop)} "
                    "WHERE user_id = ANY(%s::bigint[])",
                    [list(user_ids)],
                )

    def clear_event_properties(self, project_id: int, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        self._lock(project_id)
        self._x(
            f"UPDATE {table(project_id, 'events')} SET props = '{{}}' "
            "WHERE event_id = ANY(%s::text[])",
            [list(event_ids)],
        )

    def existing_event_ids(self, project_id: int, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        self.ensure_project(project_id)
        rows = self._all(
            f"SELECT event_id FROM {table(project_id, 'events')} WHERE event_id = ANY(%s::text[])",
            [list(event_ids)],
        )
        return {r[0] for r in rows}

    def _collection(self, project_id: int, collection_id: int) -> str:
        self._lock(project_id)
        tbl = collection_table(project_id, collection_id)
        if tbl not in self.created and not self._store.exists(self._cur, tbl):
            # (``json`` keeps a document's text as it was given)
            self._x(
                f"CREATE TABLE IF NOT EXISTS {tbl} (_id TEXT PRIMARY KEY, doc JSON NOT NULL, "
                "updated_at TIMESTAMP NOT NULL)"
            )
            self.created.add(tbl)
        return tbl

    def existing_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str]
    ) -> set[str]:
        if not ids:
            return set()
        tbl = self._collection(project_id, collection_id)
        rows = self._all(f"SELECT _id FROM {tbl} WHERE _id = ANY(%s::text[])", [list(ids)])
        return {r[0] for r in rows}

    def upsert_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str], docs: Sequence[str]
    ) -> None:
        if not ids:
            return
        tbl = self._collection(project_id, collection_id)
        self._x(
            f"INSERT INTO {tbl} SELECT i, CAST(d AS JSON), now() AT TIME ZONE 'UTC' "
            "FROM unnest(%s::text[], %s::text[]) AS s(i, d) "
            "ON CONFLICT (_id) DO UPDATE SET doc = EXCLUDED.doc, updated_at = EXCLUDED.updated_at",
            [list(ids), list(docs)],
        )

    def set_checkpoint(self, name: str, value: int) -> None:
        self._x(
            "INSERT INTO _opencdp_state VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            [name, value],
        )

    def checkpoint_for_update(self, name: str) -> int:
        # The row, created if missing, is locked until the turn ends (another turn waits for
        # it, then reads the value this one committed).
        self._x("INSERT INTO _opencdp_state VALUES (%s, 0) ON CONFLICT (name) DO NOTHING", [name])
        row = self._one("SELECT value FROM _opencdp_state WHERE name = %s FOR UPDATE", [name])
        return int(row[0])

    def record_batch(self, key: str, outcome: bytes) -> None:
        self._x(
            "INSERT INTO _opencdp_batches VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET outcome = EXCLUDED.outcome",
            [key, outcome],
        )

    def forget_batches(self, prefix: str) -> None:
        for tbl in ("_opencdp_batches", "_opencdp_reserved_ids"):
            self._x(f"DELETE FROM {tbl} WHERE starts_with(key, %s)", [prefix])
