"""Set-based identity resolution of a batch of profile or event rows matched by every identity
key: the DuckDB store's graph (``opencdp.store.duckdb.resolve``: the batch's identity values
are nodes, a row's values and a stored user's values are joined by edges, components are
people, found by minimum-label propagation with pointer jumping), in PostgreSQL's SQL.

A person's properties, the value of its last row that has one, are one ``jsonb_object_agg``
of its rows' ``props`` objects in row order (a later key replaces an earlier one).
"""

from __future__ import annotations

from collections.abc import Sequence

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome
from opencdp.store.duckdb.resolve import ALREADY_STORED, REPEATED
from opencdp.store.names import ident, table
from opencdp.store.postgres.sql import props_object
from opencdp.store.postgres.writer import Writes
from opencdp.store.setbased import SetBasedWrites

_TEMPS = ("_rtok", "_rv", "_rown", "_re", "_rl", "_rl2", "_rc", "_ru", "_rrow", "_rsrc", "_rev")


def _latest(obj: str, rows: str, group: str, order: str) -> str:
    """SQL: per ``group``, the ``props`` objects ``obj`` of ``rows`` folded in ``order``
    (each key's value from the last row that has one)."""
    return (
        f"SELECT {group}, coalesce(jsonb_object_agg(kv.key, kv.value ORDER BY {order}) "
        f"FILTER (WHERE kv.key IS NOT NULL), '{{}}') AS props FROM {rows} "
        f"LEFT JOIN LATERAL jsonb_each({obj}) kv ON true GROUP BY {group}"
    )


class ResolveWrites(Writes, SetBasedWrites):
    def _drop_temps(self) -> None:
        for name in _TEMPS:
            self._x(f"DROP TABLE IF EXISTS {ident(name)}")

    def _exists_stored(self, project_id: int, rows: str, keys: Sequence[int]) -> str:
        """SQL: whether any identity value of ``rows`` (a generated source) is stored."""
        identities = table(project_id, "identities")
        return " OR ".join(
            f"EXISTS (SELECT 1 FROM {rows} s JOIN {identities} i "
            f"ON i.key_id = {int(k)} AND i.value = s.{ident(f'_k{int(k)}')})"
            for k in keys
        )

    def _all_new(self, project_id: int, staged: str, keys: Sequence[int]) -> bool:
        """Whether every identity value of the batch is in one row only, and none is stored:
        then each row is a person of its own, new (most batches of a first load)."""
        src = ident(staged)
        # A batch of people the store holds (a file imported again) shows in its first rows.
        first = f"(SELECT * FROM {src} LIMIT 1000)"
        held = self._one(f"SELECT {self._exists_stored(project_id, first, keys)}")
        if held and held[0]:
            return False
        cols = [ident(f"_k{int(k)}") for k in keys]
        unique = " AND ".join(f"count({c}) = count(DISTINCT {c})" for c in cols)
        found = self._one(
            f"SELECT ({unique}) AND NOT ({self._exists_stored(project_id, src, keys)}) FROM {src}"
        )
        return bool(found and found[0])

    def _each_row_new(
        self,
        project_id: int,
        staged: str,
        keys: Sequence[int],
        props: Sequence[Property],
        key: str | None,
    ) -> None:
        """Write a batch of which each row is a new person: ids in one allocation in row
        order, the identities and profiles inserted as they are."""
        src = ident(staged)
        count = self._one(f"SELECT count(*) FROM {src}")
        base = self.allocate_user_ids(project_id, int(count[0]), key)
        self._temp(
            "_rrow",
            f"SELECT _row, {int(base)} - 1 + row_number() OVER (ORDER BY _row) AS user_id, "
            f"true AS new FROM {src}",
        )
        self._x(
            f"INSERT INTO {table(project_id, 'identities')} (key_id, value, user_id) "
            + " UNION ALL ".join(
                f"SELECT {int(k)}, s.{ident(f'_k{int(k)}')}, r.user_id FROM {src} s "
                f"JOIN _rrow r ON r._row = s._row WHERE s.{ident(f'_k{int(k)}')} IS NOT NULL"
                for k in keys
            )
        )
        self._x(
            f"INSERT INTO {table(project_id, 'profiles')} (user_id, created_at, updated_at, "
            f"props) SELECT r.user_id, s._touched, s._touched, {props_object(list(props), 's')} "
            f"FROM {src} s JOIN _rrow r ON r._row = s._row"
        )

    def _screen_events(self, project_id: int, staged: str, out: ImportOutcome) -> None:
        """Insert-only: fail the rows whose event id an earlier row has, or the store holds."""
        src = ident(staged)
        for row, eid in self._all(
            f"SELECT s._row, s.event_id FROM {src} s JOIN (SELECT event_id, min(_row) AS f "
            f"FROM {src} GROUP BY event_id) f ON f.event_id = s.event_id WHERE s._row > f.f"
        ):
            out.failures[int(row)] = f"event_id: {eid!r} repeats an earlier row of the file"
        for row, eid in self._all(
            f"SELECT s._row, s.event_id FROM {src} s WHERE EXISTS (SELECT 1 FROM "
            f"{table(project_id, 'events')} e WHERE e.event_id = s.event_id)"
        ):
            out.failures.setdefault(int(row), f"event_id: {eid!r} already exists")

    def _write_events(self, project_id: int, staged: str, props: Sequence[Property]) -> None:
        """One event per event id: the name, time and person of its last row, each property
        from the last row that has one; upserted as the record path upserts events."""
        src, events = ident(staged), table(project_id, "events")
        obj = props_object(list(props), "s")
        fresh = self._one(
            f"SELECT count(*) = count(DISTINCT event_id) AND NOT EXISTS (SELECT 1 FROM {src} s "
            f"JOIN {events} e ON e.event_id = s.event_id) FROM {src}"
        )
        if fresh and fresh[0]:  # (most batches: events with ids of their own) inserted as they are
            self._x(
                f"INSERT INTO {events} (event_id, event_name, event_time, received_at, user_id, "
                f"props) SELECT s.event_id, s.event_name, s.event_time, s._touched, r.user_id, "
                f"{obj} FROM {src} s JOIN _rrow r ON r._row = s._row"
            )
            return
        rows = (
            f"(SELECT s.event_id, s._row, s.event_name, s.event_time, s._touched, r.user_id, "
            f"{obj} AS props FROM {src} s JOIN _rrow r ON r._row = s._row) x"
        )
        self._temp(
            "_rev",
            "SELECT l.event_id, l.event_name, l.event_time, a.received_at, l.user_id, p.props "
            f"FROM (SELECT DISTINCT ON (event_id) * FROM {rows} ORDER BY event_id, _row DESC) l "
            f"JOIN (SELECT event_id, max(_touched) AS received_at FROM {rows} "
            "GROUP BY event_id) a ON a.event_id = l.event_id "
            f"JOIN ({_latest('x.props', rows, 'x.event_id', 'x._row')}) p "
            "ON p.event_id = l.event_id",
        )
        self._upsert_events(project_id, "_rev", "s.props")

    def _tokens(
        self,
        project_id: int,
        staged: str,
        keys: Sequence[int],
        insert_only: bool,
        out: ImportOutcome,
    ) -> None:
        """``_rtok``: the (row, key, value) of every identity value of the batch's good rows;
        ``_rv``: each distinct value once, numbered by its first row (``t``); ``_rown``: the
        stored user of each value that has one."""
        src, identities = ident(staged), table(project_id, "identities")
        self._temp(
            "_rtok",
            " UNION ALL ".join(
                f"SELECT _row, {int(k)} AS key_id, {ident(f'_k{int(k)}')} AS value "
                f"FROM {src} WHERE {ident(f'_k{int(k)}')} IS NOT NULL"
                for k in keys
            ),
        )
        if insert_only:  # a row holding a stored value, or one of an earlier row, fails
            for (row,) in self._all(
                f"SELECT DISTINCT t._row FROM _rtok t WHERE EXISTS (SELECT 1 FROM {identities} "
                "i WHERE i.key_id = t.key_id AND i.value = t.value)"
            ):
                out.failures[int(row)] = ALREADY_STORED
            for (row,) in self._all(
                "SELECT DISTINCT t._row FROM _rtok t JOIN (SELECT key_id, value, min(_row) AS f "
                "FROM _rtok GROUP BY key_id, value) f "
                "ON f.key_id = t.key_id AND f.value = t.value WHERE t._row > f.f"
            ):
                out.failures.setdefault(int(row), REPEATED)
        if out.failures:  # (insert-only: these rows are not written)
            self._x("DELETE FROM _rtok WHERE _row = ANY(%s::bigint[])", [sorted(out.failures)])
        self._temp(
            "_rv",
            "SELECT key_id, value, min(_row) AS first, "
            "row_number() OVER (ORDER BY min(_row), key_id, value) AS t "
            "FROM _rtok GROUP BY key_id, value",
        )
        self._temp(
            "_rown",
            "SELECT v.t, i.user_id FROM _rv v "
            f"JOIN {identities} i ON i.key_id = v.key_id AND i.value = v.value",
        )

    def _components(self, keys: int) -> bool:
        """``_rl``: each value's component, labelled by its smallest value number. False when
        there is no edge: every value is a component of its own."""
        rows = (
            "SELECT min(v.t) OVER (PARTITION BY r._row) AS a, v.t AS b FROM _rtok r "
            "JOIN _rv v ON v.key_id = r.key_id AND v.value = r.value UNION ALL "
            if keys > 1
            else ""
        )
        self._temp(
            "_re",
            f"WITH star AS ({rows}"
            "SELECT min(t) OVER (PARTITION BY user_id) AS a, t AS b FROM _rown) "
            "SELECT DISTINCT a, b FROM (SELECT a, b FROM star UNION ALL SELECT b, a FROM star) x "
            "WHERE a <> b",
        )
        self._temp("_rl", "SELECT t, t AS l FROM _rv")
        edges = self._one("SELECT count(*) FROM _re")
        if not edges[0]:
            return False
        while True:
            # One round: each value takes the smallest label among its neighbours and its
            # own, then the label of that label (pointer jumping).
            self._temp(
                "_rl2",
                "WITH p AS (SELECT e.a AS t, min(l.l) AS m FROM _re e JOIN _rl l ON l.t = e.b "
                "GROUP BY e.a), q AS (SELECT l.t, least(l.l, coalesce(p.m, l.l)) AS l FROM _rl l "
                "LEFT JOIN p ON p.t = l.t) "
                "SELECT q.t, least(q.l, j.l) AS l FROM q JOIN q j ON j.t = q.l",
            )
            changed = self._one(
                "SELECT count(*) FROM _rl2 n JOIN _rl o ON o.t = n.t WHERE n.l <> o.l"
            )
            self._x("DROP TABLE _rl")
            self._x("ALTER TABLE _rl2 RENAME TO _rl")
            if not changed[0]:
                return True

    def _resolve(
        self,
        project_id: int,
        staged: str,
        keys: int,
        props: Sequence[Property],
        user_props: Sequence[Property],
        key: str | None,
    ) -> None:
        if self._each_row_stored():
            count, stored = 0, True
        else:
            count, stored = self._people(project_id, keys, user_props, key)
        # Profiles: per person, each property's value of its last row that has one.
        src, obj = ident(staged), props_object(list(props), "s")
        one_row = self._one("SELECT count(*) = count(DISTINCT user_id) FROM _rrow")
        if one_row[0]:  # each person has one row: its values as they are
            self._temp(
                "_rsrc",
                f"SELECT r.user_id AS _uid, r.new AS _new, s._touched, {obj} AS props "
                f"FROM {src} s JOIN _rrow r ON r._row = s._row",
            )
        else:
            rows = (
                f"(SELECT r.user_id, r.new, s._row, s._touched, {obj} AS props "
                f"FROM {src} s JOIN _rrow r ON r._row = s._row) x"
            )
            self._temp(
                "_rsrc",
                "SELECT a.user_id AS _uid, a._new, a._touched, p.props FROM "
                f"(SELECT user_id, bool_or(new) AS _new, max(_touched) AS _touched FROM {rows} "
                f"GROUP BY user_id) a JOIN ({_latest('x.props', rows, 'x.user_id', 'x._row')}) p "
                "ON p.user_id = a.user_id",
            )
        profiles = table(project_id, "profiles")
        if count:
            self._x(
                f"INSERT INTO {profiles} (user_id, created_at, updated_at, props) "
                "SELECT _uid, _touched, _touched, props FROM _rsrc WHERE _new"
            )
        if stored:
            self._x(
                f"UPDATE {profiles} AS t SET updated_at = s._touched, props = t.props || s.props "
                "FROM _rsrc s WHERE t.user_id = s._uid AND NOT s._new"
            )

    def _each_row_stored(self) -> bool:
        """Whether every value of the batch is held by a stored user, and the values of each
        row by one: then each row is that user's. ``_rrow``: each row's user."""
        held = self._one("SELECT (SELECT count(*) FROM _rown) = (SELECT count(*) FROM _rv)")
        if not held[0]:
            return False
        self._temp(
            "_rrow",
            "SELECT t._row, min(o.user_id) AS user_id, false AS new, "
            "min(o.user_id) = max(o.user_id) AS one FROM _rtok t "
            "JOIN _rv v ON v.key_id = t.key_id AND v.value = t.value "
            "JOIN _rown o ON o.t = v.t GROUP BY t._row",
        )
        one = self._one("SELECT coalesce(bool_and(one), true) FROM _rrow")
        return bool(one[0])

    def _people(
        self, project_id: int, keys: int, user_props: Sequence[Property], key: str | None
    ) -> tuple[int, bool]:
        """Resolve the batch's people through its graph: merge the stored users a person
        joins, allocate the new people's ids, link the new values. ``_rrow``: each row's
        person. Returns how many people are new, and whether any is stored."""
        linked = self._components(keys)
        merges: dict[int, int] = {}
        if linked:
            merges = {
                int(loser): int(survivor)
                for loser, survivor in self._all(
                    "WITH d AS (SELECT DISTINCT l.l, o.user_id FROM _rown o "
                    "JOIN _rl l ON l.t = o.t) SELECT user_id, s FROM (SELECT user_id, "
                    "min(user_id) OVER (PARTITION BY l) AS s FROM d) x WHERE user_id <> s"
                )
            }
        if merges:
            self.merge_users(project_id, merges, user_props)
        # New people take ids in one allocation, in the order of their first rows.
        self._temp(
            "_rc",
            "SELECT l.l, min(v.first) AS first, min(o.user_id) AS user_id FROM _rl l "
            "JOIN _rv v ON v.t = l.t LEFT JOIN _rown o ON o.t = l.t GROUP BY l.l",
        )
        counts = self._one("SELECT count(*) FILTER (WHERE user_id IS NULL), count(*) FROM _rc")
        count, people = int(counts[0]), int(counts[1])
        base = self.allocate_user_ids(project_id, count, key) if count else 0
        self._temp(
            "_ru",
            "SELECT l, user_id, false AS new FROM _rc WHERE user_id IS NOT NULL UNION ALL "
            f"SELECT l, {int(base)} - 1 + row_number() OVER (ORDER BY first), true FROM _rc "
            "WHERE user_id IS NULL",
        )
        # Identities: the values no user holds yet (those of merged users moved with them).
        self._x(
            f"INSERT INTO {table(project_id, 'identities')} (key_id, value, user_id) "
            "SELECT v.key_id, v.value, u.user_id FROM _rv v JOIN _rl l ON l.t = v.t "
            "JOIN _ru u ON u.l = l.l WHERE NOT EXISTS (SELECT 1 FROM _rown o WHERE o.t = v.t)"
        )
        self._temp(
            "_rrow",
            f"SELECT {'DISTINCT ' if keys > 1 else ''}t._row, u.user_id, u.new FROM _rtok t "
            "JOIN _rv v ON v.key_id = t.key_id AND v.value = t.value "
            "JOIN _rl l ON l.t = v.t JOIN _ru u ON u.l = l.l",
        )
        return count, count < people
