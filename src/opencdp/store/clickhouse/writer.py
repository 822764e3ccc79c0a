"""The write turn: identities, merges, profile and event upserts, documents.

A turn holds one client (a session: its temporary tables are its own) and its project's lock
(:mod:`.locks`). Statements take effect one by one, as ClickHouse has no transactions; each
write is idempotent by its key, so a turn replayed after a failure ends where the first one
would have:

* a changed profile, identity, membership or document is a new version of its key (the
  turn's versions are above every earlier turn's), read exactly through ``FINAL``;
* an event id is one row of ``events``. A batch's ids are looked up in ``event_ids`` first:
  new events are inserted; a stored event that the batch changes is written anew and its
  older rows are deleted after (a crash in between leaves two rows, which the replay's delete
  removes); one the batch leaves as it is, a client re-sending it, is not written again;
* a merge writes the loser → survivor mapping (``overrides``), the survivor's merged profile
  and the loser's identities and memberships as the survivor's, never the loser's events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store.base import EventRows, ProfileRows, StoreWriter, Token, survivors
from opencdp.store.clickhouse.connection import ClickHouseBase
from opencdp.store.clickhouse.locks import MARKER, PROJECT, Turn, marker_key
from opencdp.store.clickhouse.sql import PROP_TABLES, STORAGE_TYPES, column, kept, storage_column
from opencdp.store.duckdb.sql import ARROW_TYPES
from opencdp.store.names import ident

# Rows of ids written into one statement as literals (a delete's conditions).
_LITERAL_ROWS = 10_000


def _stage_type(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "Nullable(Int64)"
    if pa.types.is_floating(t):
        return "Nullable(Float64)"
    if pa.types.is_boolean(t):
        return "Nullable(Bool)"
    if pa.types.is_timestamp(t):
        return "Nullable(DateTime64(6, 'UTC'))"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return "Nullable(String)"
    raise TypeError(f"cannot stage a column of type {t}")


def _stageable(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _stageable(arr.cast(t.value_type))
    if pa.types.is_null(t):
        return arr.cast(pa.string())
    if pa.types.is_timestamp(t) and (t.tz is not None or t.unit != "us"):
        return arr.cast(pa.timestamp("us"))
    if pa.types.is_integer(t) and t != pa.int64():
        return arr.cast(pa.int64())
    if pa.types.is_large_string(t):
        return arr.cast(pa.string())
    if pa.types.is_list(t) or pa.types.is_large_list(t):  # (as its JSON text)
        items = [None if v is None else orjson.dumps(v).decode() for v in arr.to_pylist()]
        return pa.array(items, pa.string())
    return arr


def literals(values: Iterable[Any]) -> str:
    """Values (ints, or text) as a ClickHouse list of literals."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise TypeError(f"not a literal: {v!r}")
        out.append(str(int(v)) if isinstance(v, int) else _quote(v))
    return "(" + (", ".join(out) or "NULL") + ")"


def _quote(text: str) -> str:
    """Text as a ClickHouse string literal (backslash, quote and NUL escaped)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\\0")
    return "'" + escaped + "'"


class WriterBase(StoreWriter):
    """The turn's client and locks, staging of Arrow tables, and property columns."""

    def __init__(self, store: ClickHouseBase, client: Client, turn: Turn) -> None:
        self._store = store
        self._c = client
        self._turn = turn
        self._n = 0
        self._temps: set[str] = set()
        self._locked: set[int] = set()
        self._pid = 0  # the project of the statements being run

    # ---- statements -----------------------------------------------------------------------
    def _x(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._c.command(sql, parameters=params, settings=self._store.scoped(self._pid))

    def _all(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return list(
            self._c.query(
                sql, parameters=params, settings=self._store.scoped(self._pid)
            ).result_rows
        )

    def _one(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _v(self) -> int:
        return self._turn.version()

    def t(self, name: str) -> str:
        return self._store.t(name)

    def final(self, name: str, alias: str = "") -> str:
        return self._store.final(name, alias)

    def _temp(self, name: str, select: str) -> None:
        """(Re)create the temporary table ``name`` (generated) from a query."""
        self._x(f"DROP TEMPORARY TABLE IF EXISTS {ident(name)}")
        self._x(f"CREATE TEMPORARY TABLE {ident(name)} ENGINE = Memory AS {select}")
        self._temps.add(name)

    def _stage(self, data: pa.Table) -> str:
        """Copy an Arrow table into a fresh temporary table; its (generated) name."""
        self._n += 1
        name = f"_staged_{self._n}"
        cols = [_stageable(a) for a in data.columns]
        types = [
            f"{ident(f.name)} {_stage_type(a.type)}" for f, a in zip(data.schema, cols, strict=True)
        ]
        self._x(f"CREATE TEMPORARY TABLE {ident(name)} ({', '.join(types)}) ENGINE = Memory")
        self._temps.add(name)
        if data.num_rows:
            self._c.insert_arrow(name, pa.table(cols, names=data.schema.names))
        return name

    def _unstage(self, name: str) -> None:
        self._x(f"DROP TEMPORARY TABLE IF EXISTS {ident(name)}")
        self._temps.discard(name)

    def end(self) -> None:
        """Drop what the turn staged (the session outlives the turn)."""
        for name in list(self._temps):
            self._unstage(name)

    # ---- projects, locks and columns --------------------------------------------------------
    def _lock(self, project_id: int) -> None:
        """Take the project's write lock for the rest of the turn (once), and see the columns
        any process added before it."""
        self._pid = int(project_id)
        if project_id not in self._locked:
            self._turn.lock(PROJECT, int(project_id))
            self._locked.add(project_id)
            if self._turn.shared:  # (another process may have added columns)
                self._store._load_columns(self._c)

    def ensure_project(self, project_id: int) -> None:
        self._lock(project_id)  # (the tables are every project's)

    def ensure_columns(self, project_id: int, props: Iterable[Property]) -> None:
        self._lock(project_id)
        for kind, tbl in PROP_TABLES.items():
            mine = [p for p in props if p.table == kind]
            have = self._store.has_columns(self._c, tbl, (p.column for p in mine))
            new = [p for p in mine if p.column not in have]
            if new:
                adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {storage_column(p)}" for p in new)
                for target in self._store.targets(tbl):
                    self._x(f"ALTER TABLE {target} {adds}")
                self._store.added(tbl, new)

    def present(self, props: Iterable[Property]) -> list[Property]:
        return self._store.present(self._c, props)

    def _props_columns(self, table: str) -> list[str]:
        """Every property column of a table (the store's, not only this project's)."""
        return sorted(c for c in self._store._columns.get(table, set()) if c.startswith("p_"))

    def _tombstone(self, name: str, where: str, params: dict[str, Any] | None = None) -> None:
        """Remove the rows of a versioned table (``t``) that ``where`` picks: a deleted
        version. (The conditions of a ``* REPLACE`` name ``t.column``: a bare name would be
        the replaced value.)"""
        self._x(
            f"INSERT INTO {self.t(name)} SELECT t.* REPLACE ({self._v()} AS _version, "
            f"1 AS _deleted) FROM {self.final(name, 't')} WHERE {where}",
            params,
        )


class Writes(WriterBase):
    # ---- ids and identities -----------------------------------------------------------------
    def allocate_user_ids(self, project_id: int, count: int, key: str | None = None) -> int:
        self._lock(project_id)
        pid = int(project_id)
        if key is not None:
            held = self._one(
                f"SELECT first_id FROM {self.final('_opencdp_reserved_ids')} WHERE key = "
                "{k:String} AND project_id = {p:UInt64} AND count >= {n:Int64}",
                {"k": key, "p": pid, "n": count},
            )
            if held is not None:
                return int(held[0])
        row = self._one(
            f"SELECT max(next_id) FROM {self.t('_opencdp_user_ids')} WHERE project_id = {pid}"
        )
        first = max(1, int(row[0] or 0) if row else 1)
        self._c.insert(
            "_opencdp_user_ids",
            [[pid, first + count]],
            column_names=["project_id", "next_id"],
            database=self._store.database,
        )
        if key is not None:
            self._insert("_opencdp_reserved_ids", ["key", "project_id", "first_id", "count"],
                         [[key, pid, first, count]])  # fmt: skip
        return first

    def _insert(self, name: str, names: list[str], rows: list[list[Any]]) -> None:
        """Insert rows (values of ``names``) as a new version of their keys."""
        v = self._v()
        self._c.insert(
            name,
            [[*r, v, 0] for r in rows],
            column_names=[*names, "_version", "_deleted"],
            database=self._store.database,
        )

    def lookup_identities(self, project_id: int, tokens: Sequence[Token]) -> dict[Token, int]:
        if not tokens:
            return {}
        self._pid = int(project_id)
        rows = self._all(
            f"SELECT key_id, value, user_id FROM {self.final('identities')} "
            f"WHERE project_id = {int(project_id)} AND (key_id, value) IN "
            "(SELECT arrayJoin({t:Array(Tuple(Int64, String))}))",
            {"t": [(int(k), str(v)) for k, v in tokens]},
        )
        return {(int(k), str(v)): int(u) for k, v, u in rows}

    def insert_identities(
        self, project_id: int, tokens: Sequence[Token], user_ids: Sequence[int]
    ) -> None:
        if not tokens:
            return
        self._lock(project_id)
        pid = int(project_id)
        self._insert(
            "identities",
            ["project_id", "key_id", "value", "user_id"],
            [[pid, int(k), str(v), int(u)] for (k, v), u in zip(tokens, user_ids, strict=True)],
        )

    # ---- merges -----------------------------------------------------------------------------
    def merge_users(
        self, project_id: int, merges: dict[int, int], user_props: Sequence[Property]
    ) -> None:
        if not merges:
            return
        self._lock(project_id)
        pid = int(project_id)
        final = survivors(merges)
        losers = list(final)
        new = [int(final[u]) for u in losers]
        to = f"transform(t.user_id, {list(map(int, losers))}, {new})"
        mine = f"t.project_id = {pid} AND t.user_id IN {literals(losers)}"
        # Events stay as they were written: a loser's (and its own losers') now read as the
        # survivor's.
        v = self._v()
        self._x(
            f"INSERT INTO {self.t('overrides')} SELECT t.project_id, t.old_user_id, {to}, {v}, 0 "
            f"FROM {self.final('overrides', 't')} WHERE {mine}"
        )
        self._insert("overrides", ["project_id", "old_user_id", "user_id"],
                     [[pid, int(u), final[u]] for u in losers])  # fmt: skip
        # Identities and memberships become the survivor's.
        for name in ("identities", "list_members", "segment_members"):
            self._x(
                f"INSERT INTO {self.t(name)} SELECT t.* REPLACE ({to} AS user_id, {self._v()} AS "
                f"_version) FROM {self.final(name, 't')} WHERE {mine}"
            )
            if name != "identities":
                self._tombstone(name, mine)
        # The survivor's profile: each property from the most recently updated profile that
        # has a value.
        members = sorted({*losers, *new})
        group = f"transform(user_id, {list(map(int, losers))}, {new})"
        cols = self._props_columns("profiles")
        picks = ", ".join(
            f"argMaxIf({ident(c)}, updated_at, {ident(c)} IS NOT NULL) AS {ident(c)}" for c in cols
        )
        v = self._v()
        self._x(
            f"INSERT INTO {self.t('profiles')} (project_id, user_id, created_at, updated_at, "
            f"{', '.join(['_position', '_version', '_deleted', *map(ident, cols)])}) "
            f"SELECT {pid}, {group} AS survivor, min(created_at), max(updated_at), "
            "max(_position), "
            f"{v}, 0"
            f"{', ' + picks if picks else ''} FROM {self.final('profiles')} "
            f"WHERE project_id = {pid} AND user_id IN {literals(members)} GROUP BY survivor"
        )
        self._tombstone("profiles", mine)

    def _column_types(self, table: str) -> dict[str, str]:
        rows = self._all(
            "SELECT name, type FROM system.columns WHERE database = {d:String} AND "
            "table = {t:String}",
            {"d": self._store.database, "t": table},
        )
        return {n: t for n, t in rows}

    # ---- profiles ---------------------------------------------------------------------------
    def upsert_profiles(
        self, project_id: int, rows: ProfileRows, props: Sequence[Property]
    ) -> None:
        if not rows:
            return
        self._lock(project_id)
        props = self.present(props)
        data: dict[str, pa.Array] = {
            "user_id": pa.array(rows.user_ids, pa.int64()),
            "touched": pa.array(rows.touched_at, pa.timestamp("us")),
            # (a position as two halves: Arrow has no 128-bit integers)
            "_pos_hi": pa.array([p >> 32 for p in rows.positions or [0] * len(rows)], pa.int64()),
            "_pos_lo": pa.array(
                [p & 0xFFFFFFFF for p in rows.positions or [0] * len(rows)], pa.int64()
            ),
        }
        for p in props:
            data[p.column] = pa.array([v.get(p.id) for v in rows.values], ARROW_TYPES[p.type])
        staged = self._stage(pa.table(data))
        try:
            self._upsert_profiles(project_id, staged, "user_id", "touched", props, positioned=True)
        finally:
            self._unstage(staged)

    def _upsert_profiles(
        self,
        project_id: int,
        source: str,
        uid: str,
        touched: str,
        props: Sequence[Property],
        where: str = "1",
        positioned: bool = False,
    ) -> None:
        """Upsert profiles from the rows of ``source`` (one per user) that ``where`` picks: a
        stored profile gets a new version with the rows' values (a null leaves a stored value),
        a new one is inserted. With ``positioned``, ``source`` has each row's ingest log
        position (of its last record: ``_pos_hi``, ``_pos_lo``) for the profile to keep."""
        pid, src = int(project_id), ident(source)
        s_uid, s_t = f"s.{ident(uid)}", f"s.{ident(touched)}"
        position = "bitShiftLeft(toUInt128(s._pos_hi), 32) + toUInt128(s._pos_lo)"
        stamp = f"greatest(o._position, {position})" if positioned else "o._position"
        replace = ", ".join(
            [f"{s_t} AS updated_at", f"{stamp} AS _position", f"{self._v()} AS _version"]
            + [f"{kept(f's.{column(p)}', f'o.{column(p)}')} AS {column(p)}" for p in props]
        )
        self._x(
            f"INSERT INTO {self.t('profiles')} SELECT o.* REPLACE ({replace}) "
            f"FROM {self.final('profiles', 'o')} JOIN {src} AS s ON {s_uid} = o.user_id "
            f"WHERE o.project_id = {pid} AND ({where})"
        )
        cols = ", ".join(["project_id", "user_id", "created_at", "updated_at", "_position",
                          "_version", "_deleted", *(column(p) for p in props)])  # fmt: skip
        values = ", ".join(
            [str(pid), s_uid, s_t, s_t, position if positioned else "0", str(self._v()), "0"]
            + [f"s.{column(p)}" for p in props]
        )
        self._x(
            f"INSERT INTO {self.t('profiles')} ({cols}) SELECT {values} FROM {src} AS s "
            f"WHERE ({where}) AND {s_uid} NOT IN (SELECT user_id FROM {self.final('profiles')} "
            f"WHERE project_id = {pid} AND user_id IN (SELECT {ident(uid)} FROM {src}))"
        )

    @staticmethod
    def _typed_none(p: Property) -> str:
        return f"CAST(NULL AS {STORAGE_TYPES[p.type]})"

    # ---- events -----------------------------------------------------------------------------
    def upsert_events(self, project_id: int, rows: EventRows, props: Sequence[Property]) -> None:
        if not rows:
            return
        self._lock(project_id)
        props = self.present(props)
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
            self._upsert_events(project_id, staged, props)
        finally:
            self._unstage(staged)

    def _stored_events(self, project_id: int, ids: str) -> bool:
        """``_evcur``: the stored row of each event whose id the query ``ids`` gives (the
        newest, where a replay left two). Whether there is any."""
        pid = int(project_id)
        self._temp(
            "_evkey",
            f"SELECT event_id, event_name, user_id FROM {self.final('event_ids')} "
            f"WHERE project_id = {pid} AND event_id IN ({ids})",
        )
        if not self._one("SELECT count() FROM _evkey")[0]:
            return False
        self._temp(
            "_evcur",
            f"SELECT * FROM {self.t('events')} WHERE project_id = {pid} "
            "AND event_name IN (SELECT event_name FROM _evkey) "
            "AND user_id IN (SELECT user_id FROM _evkey) "
            "AND event_id IN (SELECT event_id FROM _evkey) "
            "ORDER BY _version DESC LIMIT 1 BY event_id",
        )
        return True

    def _upsert_events(self, project_id: int, source: str, props: Sequence[Property]) -> None:
        """Upsert events from ``source`` (``s``, one row per event id): a stored event takes
        the name, time, person and receipt of the new one, and its non-null properties."""
        pid, src = int(project_id), ident(source)
        fixed = ["event_name", "user_id", "event_time", "event_id", "received_at"]
        if self._stored_events(project_id, f"SELECT event_id FROM {src}"):
            # Stored events the batch changes: written anew, their older rows deleted.
            v = self._v()
            merged = [f"s.{c} AS {c}" for c in fixed if c != "event_id"] + [
                f"{kept(f's.{column(p)}', f'o.{column(p)}')} AS {column(p)}" for p in props
            ]
            before = ", ".join([*(f"o.{c}" for c in fixed), *(f"o.{column(p)}" for p in props)])
            after = ", ".join(
                [*(f"s.{c}" for c in fixed)]
                + [kept(f"s.{column(p)}", f"o.{column(p)}") for p in props]
            )
            self._temp(
                "_evnew",
                f"SELECT o.* REPLACE ({', '.join([*merged, f'{v} AS _version'])}) "
                f"FROM _evcur AS o JOIN {src} AS s ON s.event_id = o.event_id "
                f"WHERE toString(tuple({before})) != toString(tuple({after}))",
            )
            self._rewrite_events(project_id, v)
            where = "event_id NOT IN (SELECT event_id FROM _evcur)"
        else:
            where = "1"
        cols = ", ".join(["project_id", *fixed, "_version", *(column(p) for p in props)])
        values = ", ".join(
            [str(pid), *(f"s.{c}" for c in fixed), str(self._v())]
            + [f"s.{column(p)}" for p in props]
        )
        self._x(
            f"INSERT INTO {self.t('events')} ({cols}) SELECT {values} FROM {src} AS s WHERE {where}"
        )
        self._x(
            f"INSERT INTO {self.t('event_ids')} SELECT {pid}, event_id, event_name, user_id, "
            f"event_time, {self._v()}, 0 FROM {src} WHERE {where}"
        )

    def _rewrite_events(self, project_id: int, v: int) -> None:
        """Write the rows of ``_evnew`` (version ``v``) over the stored rows of their events:
        inserted first, the older rows deleted after, then their keys."""
        pid = int(project_id)
        rows = self._all("SELECT event_id, event_name, user_id FROM _evnew")
        if not rows:
            return
        self._x(f"INSERT INTO {self.t('events')} SELECT * FROM _evnew")
        old = self._all(
            "SELECT event_id, event_name, user_id FROM _evcur "
            "WHERE event_id IN (SELECT event_id FROM _evnew)"
        )
        for i in range(0, len(rows), _LITERAL_ROWS):
            chunk = rows[i : i + _LITERAL_ROWS] + old[i : i + _LITERAL_ROWS]
            self._x(
                f"DELETE FROM {self._store.deletes('events')} WHERE project_id = {pid} "
                f"AND event_name IN {literals({r[1] for r in chunk})} "
                f"AND user_id IN {literals({int(r[2]) for r in chunk})} "
                f"AND event_id IN {literals({r[0] for r in chunk})} AND _version < {int(v)}"
            )
        for i in range(len(rows), len(old), _LITERAL_ROWS):  # (old rows beyond the new ones)
            chunk = old[i : i + _LITERAL_ROWS]
            self._x(
                f"DELETE FROM {self._store.deletes('events')} WHERE project_id = {pid} "
                f"AND event_name IN {literals({r[1] for r in chunk})} "
                f"AND user_id IN {literals({int(r[2]) for r in chunk})} "
                f"AND event_id IN {literals({r[0] for r in chunk})} AND _version < {int(v)}"
            )
        self._x(
            f"INSERT INTO {self.t('event_ids')} SELECT {pid}, event_id, event_name, user_id, "
            f"event_time, {self._v()}, 0 FROM _evnew"
        )

    def clear_event_properties(self, project_id: int, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        self._lock(project_id)
        staged = self._stage(pa.table({"event_id": pa.array(list(event_ids), pa.string())}))
        try:
            if not self._stored_events(project_id, f"SELECT event_id FROM {ident(staged)}"):
                return
            v = self._v()
            types = self._column_types("events")
            nulls = [
                f"CAST(NULL AS {types[c]}) AS {ident(c)}" for c in self._props_columns("events")
            ]
            none = " OR ".join(f"t.{ident(c)} IS NOT NULL" for c in self._props_columns("events"))
            self._temp(
                "_evnew",
                f"SELECT t.* REPLACE ({', '.join([*nulls, f'{v} AS _version'])}) "
                f"FROM _evcur AS t WHERE {none or '0'}",
            )
            self._rewrite_events(project_id, v)
        finally:
            self._unstage(staged)

    def existing_event_ids(self, project_id: int, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        self._pid = int(project_id)
        rows = self._all(
            f"SELECT event_id FROM {self.final('event_ids')} WHERE project_id = "
            f"{int(project_id)} AND event_id IN (SELECT arrayJoin({{i:Array(String)}}))",
            {"i": list(event_ids)},
        )
        return {r[0] for r in rows}

    # ---- deletes and clears -------------------------------------------------------------------
    def delete_users(self, project_id: int, user_ids: Sequence[int]) -> None:
        if not user_ids:
            return
        self._lock(project_id)
        pid, ids = int(project_id), literals(map(int, user_ids))
        # A user's events include those of the users merged into it (as literals: a delete
        # runs on the shards, where the store's other tables are not what it reads).
        owners = literals(
            int(r[0]) for r in self._all(f"SELECT * FROM {self._store.own_users(pid, user_ids)}")
        )
        self._tombstone("event_ids", f"t.project_id = {pid} AND t.user_id IN {owners}")
        self._x(
            f"DELETE FROM {self._store.deletes('events')} WHERE project_id = {pid} "
            f"AND user_id IN {owners}"
        )
        for name in ("identities", "list_members", "segment_members", "profiles"):
            self._tombstone(name, f"t.project_id = {pid} AND t.user_id IN {ids}")

    def profile_stamps(self, project_id: int, user_ids: Sequence[int]) -> dict[int, int]:
        if not user_ids:
            return {}
        self._pid = int(project_id)
        rows = self._all(
            f"SELECT user_id, _position FROM {self.final('profiles')} WHERE project_id = "
            f"{int(project_id)} AND user_id IN {literals(map(int, user_ids))} AND _position > 0"
        )
        return {int(u): int(n) for u, n in rows}

    def profile_values(
        self, project_id: int, user_ids: Sequence[int], props: Sequence[Property]
    ) -> dict[int, dict[int, Any]]:
        if not user_ids:
            return {}
        self._pid = int(project_id)
        props = self.present(props)
        cols = "".join(f", {column(p)}" for p in props)
        rows = self._all(
            f"SELECT user_id{cols} FROM {self.final('profiles')} WHERE project_id = "
            f"{int(project_id)} AND user_id IN {literals(map(int, user_ids))}"
        )
        return {int(r[0]): values_of(props, r[1:]) for r in rows}

    def clear_profile_values(
        self, project_id: int, clears: Sequence[tuple[Property, Sequence[int]]]
    ) -> None:
        for prop, user_ids in clears:
            if not user_ids or not self.present([prop]):
                continue
            self._lock(project_id)
            self._x(
                f"INSERT INTO {self.t('profiles')} SELECT t.* REPLACE ({self._typed_none(prop)} "
                f"AS {column(prop)}, {self._v()} AS _version) FROM {self.final('profiles', 't')} "
                f"WHERE t.project_id = {int(project_id)} AND t.user_id IN "
                f"{literals(map(int, user_ids))}"
            )

    # ---- documents ----------------------------------------------------------------------------
    def existing_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str]
    ) -> set[str]:
        if not ids:
            return set()
        self._pid = int(project_id)
        rows = self._all(
            f"SELECT _id FROM {self.final('documents')} WHERE project_id = {int(project_id)} "
            f"AND collection_id = {int(collection_id)} AND _id IN "
            "(SELECT arrayJoin({i:Array(String)}))",
            {"i": list(ids)},
        )
        return {r[0] for r in rows}

    def upsert_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str], docs: Sequence[str]
    ) -> None:
        if not ids:
            return
        self._lock(project_id)
        now = self._one("SELECT now64(6)")[0]
        self._insert(
            "documents",
            ["project_id", "collection_id", "_id", "doc", "updated_at"],
            [
                [int(project_id), int(collection_id), i, d, now]
                for i, d in zip(ids, docs, strict=True)
            ],
        )

    # ---- the store's own rows ---------------------------------------------------------------
    def set_checkpoint(self, name: str, value: int) -> None:
        self._insert("_opencdp_state", ["name", "value"], [[name, int(value)]])

    def checkpoint_for_update(self, name: str) -> int:
        self._turn.lock(MARKER, marker_key(name))
        row = self._one(
            f"SELECT value FROM {self.final('_opencdp_state')} WHERE name = {{n:String}}",
            {"n": name},
        )
        return int(row[0]) if row else 0

    def record_batch(self, key: str, outcome: bytes) -> None:
        self._insert("_opencdp_batches", ["key", "outcome"], [[key, outcome]])

    def forget_batches(self, prefix: str) -> None:
        for name in ("_opencdp_batches", "_opencdp_reserved_ids"):
            self._tombstone(name, "startsWith(t.key, {k:String})", {"k": prefix})


def values_of(props: Sequence[Property], row: Sequence[Any]) -> dict[int, Any]:
    """The values of ``props`` in a row (their stored columns, in order) that are not null;
    a list from its JSON text."""
    out = {}
    for p, v in zip(props, row, strict=True):
        if v is not None:
            out[p.id] = orjson.loads(v) if p.type is PropertyType.LIST else v
    return out
