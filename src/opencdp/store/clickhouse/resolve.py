"""Set-based identity resolution of a batch of profile or event rows matched by every identity
key: the DuckDB store's graph (``opencdp.store.duckdb.resolve``: the batch's identity values
are nodes, a row's values and a stored user's values are joined by edges, components are
people, found by minimum-label propagation with pointer jumping), in ClickHouse's SQL over
temporary tables of the batch's size.

A person's properties, the value of its last row that has one, are ``argMax`` over the row
number (which skips nulls).
"""

from __future__ import annotations

from collections.abc import Sequence

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome
from opencdp.store.clickhouse.sql import column
from opencdp.store.clickhouse.writer import Writes
from opencdp.store.duckdb.resolve import ALREADY_STORED, REPEATED
from opencdp.store.names import ident
from opencdp.store.setbased import SetBasedWrites

_TEMPS = (
    "_rtok", "_rv", "_rown", "_re", "_rl", "_rl2", "_rc", "_ru", "_rrow", "_rsrc", "_rev",
)  # fmt: skip


def _last(p: Property, alias: str = "s") -> str:
    """SQL: a property's value on the last row (by ``_row``) that has one (``argMax`` skips
    nulls)."""
    return f"argMax({alias}.{column(p)}, {alias}._row) AS {column(p)}"


class ResolveWrites(Writes, SetBasedWrites):
    def _drop_temps(self) -> None:
        for name in _TEMPS:
            self._x(f"DROP TEMPORARY TABLE IF EXISTS {ident(name)}")
            self._temps.discard(name)

    def _stored_values(self, project_id: int, key: int) -> str:
        return (
            f"(SELECT value FROM {self.final('identities')} WHERE project_id = "
            f"{int(project_id)} AND key_id = {int(key)})"
        )

    def _any_stored(self, project_id: int, rows: str, keys: Sequence[int]) -> bool:
        """Whether any identity value of ``rows`` (a generated source) is stored."""
        found = self._one(
            "SELECT "
            + " + ".join(
                f"(SELECT count() FROM {rows} WHERE {ident(f'_k{int(k)}')} IN "
                f"{self._stored_values(project_id, k)})"
                for k in keys
            )
        )
        return bool(found[0])

    def _all_new(self, project_id: int, staged: str, keys: Sequence[int]) -> bool:
        """Whether every identity value of the batch is in one row only, and none is stored:
        then each row is a person of its own, new (most batches of a first load)."""
        src = ident(staged)
        # A batch of people the store holds (a file imported again) shows in its first rows.
        if self._any_stored(project_id, f"(SELECT * FROM {src} LIMIT 1000)", keys):
            return False
        cols = [ident(f"_k{int(k)}") for k in keys]
        unique = self._one(
            "SELECT " + " AND ".join(f"count({c}) = uniqExact({c})" for c in cols) + f" FROM {src}"
        )
        return bool(unique[0]) and not self._any_stored(project_id, src, keys)

    def _profile_insert(self, project_id: int, props: Sequence[Property]) -> str:
        cols = ", ".join(["project_id", "user_id", "created_at", "updated_at", "_position",
                          "_version", "_deleted", *(column(p) for p in props)])  # fmt: skip
        return f"INSERT INTO {self.t('profiles')} ({cols})"

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
        src, pid = ident(staged), int(project_id)
        count = self._one(f"SELECT count() FROM {src}")
        base = self.allocate_user_ids(pid, int(count[0]), key)
        self._temp(
            "_rrow",
            f"SELECT _row, toInt64({int(base)} - 1 + row_number() OVER (ORDER BY _row)) "
            f"AS user_id, true AS new FROM {src}",
        )
        self._x(
            f"INSERT INTO {self.t('identities')} (project_id, key_id, value, user_id, _version, "
            f"_deleted) SELECT {pid}, k, v, u, {self._v()}, 0 FROM ("
            + " UNION ALL ".join(
                f"SELECT {int(k)} AS k, assumeNotNull(s.{ident(f'_k{int(k)}')}) AS v, "
                f"r.user_id AS u FROM {src} AS s JOIN _rrow AS r ON r._row = s._row "
                f"WHERE s.{ident(f'_k{int(k)}')} IS NOT NULL"
                for k in keys
            )
            + ")"
        )
        props = self.present(props)
        values = ", ".join(
            [str(pid), "r.user_id", "s._touched", "s._touched", "0", str(self._v()), "0"]
            + [f"s.{column(p)}" for p in props]
        )
        self._x(
            f"{self._profile_insert(pid, props)} SELECT {values} FROM {src} AS s "
            "JOIN _rrow AS r ON r._row = s._row"
        )

    def _screen_events(self, project_id: int, staged: str, out: ImportOutcome) -> None:
        """Insert-only: fail the rows whose event id an earlier row has, or the store holds."""
        src = ident(staged)
        for row, eid in self._all(
            f"SELECT s._row, s.event_id FROM {src} AS s JOIN (SELECT event_id, min(_row) AS f "
            f"FROM {src} GROUP BY event_id) AS f ON f.event_id = s.event_id WHERE s._row > f.f"
        ):
            out.failures[int(row)] = f"event_id: {eid!r} repeats an earlier row of the file"
        for row, eid in self._all(
            f"SELECT _row, event_id FROM {src} WHERE event_id IN (SELECT event_id FROM "
            f"{self.final('event_ids')} WHERE project_id = {int(project_id)})"
        ):
            out.failures.setdefault(int(row), f"event_id: {eid!r} already exists")

    def _write_events(self, project_id: int, staged: str, props: Sequence[Property]) -> None:
        """One event per event id: the name, time and person of its last row, each property
        from the last row that has one; upserted as the record path upserts events."""
        src = ident(staged)
        props = self.present(props)
        distinct = self._one(f"SELECT count() = uniqExact(event_id) FROM {src}")
        if distinct[0]:  # (most batches: events with ids of their own) as they are
            cols = "".join(f", s.{column(p)}" for p in props)
            self._temp(
                "_rev",
                "SELECT s.event_id AS event_id, s.event_name AS event_name, s.event_time AS "
                "event_time, s._touched AS received_at, r.user_id AS user_id"
                f"{cols} FROM {src} AS s JOIN _rrow AS r ON r._row = s._row",
            )
        else:
            cols = "".join(f", {_last(p)}" for p in props)
            self._temp(
                "_rev",
                "SELECT s.event_id AS event_id, argMax(s.event_name, s._row) AS event_name, "
                "argMax(s.event_time, s._row) AS event_time, max(s._touched) AS received_at, "
                f"argMax(r.user_id, s._row) AS user_id{cols} FROM {src} AS s "
                "JOIN _rrow AS r ON r._row = s._row GROUP BY s.event_id",
            )
        self._upsert_events(project_id, "_rev", props)

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
        src, pid = ident(staged), int(project_id)
        self._temp(
            "_rtok",
            " UNION ALL ".join(
                f"SELECT _row, toInt64({int(k)}) AS key_id, "
                f"assumeNotNull({ident(f'_k{int(k)}')}) AS value "
                f"FROM {src} WHERE {ident(f'_k{int(k)}')} IS NOT NULL"
                for k in keys
            ),
        )
        stored = (
            f"(SELECT key_id, value, user_id FROM {self.final('identities')} "
            f"WHERE project_id = {pid})"
        )
        if insert_only:  # a row holding a stored value, or one of an earlier row, fails
            for (row,) in self._all(
                "SELECT DISTINCT _row FROM _rtok WHERE (key_id, value) IN "
                f"(SELECT key_id, value FROM {stored})"
            ):
                out.failures[int(row)] = ALREADY_STORED
            for (row,) in self._all(
                "SELECT DISTINCT t._row FROM _rtok AS t JOIN (SELECT key_id, value, "
                "min(_row) AS f FROM _rtok GROUP BY key_id, value) AS f "
                "ON f.key_id = t.key_id AND f.value = t.value WHERE t._row > f.f"
            ):
                out.failures.setdefault(int(row), REPEATED)
        if out.failures:  # (insert-only: these rows are not written)
            failed = ", ".join(str(int(r)) for r in sorted(out.failures))
            self._temp("_rv", f"SELECT * FROM _rtok WHERE _row NOT IN ({failed})")
            self._temp("_rtok", "SELECT * FROM _rv")
        self._temp(
            "_rv",
            "SELECT key_id, value, min(_row) AS first, "
            "row_number() OVER (ORDER BY min(_row), key_id, value) AS t "
            "FROM _rtok GROUP BY key_id, value",
        )
        self._temp(
            "_rown",
            f"SELECT v.t AS t, i.user_id AS user_id FROM _rv AS v JOIN {stored} AS i "
            "ON i.key_id = v.key_id AND i.value = v.value",
        )

    def _components(self, keys: int) -> bool:
        """``_rl``: each value's component, labelled by its smallest value number. False when
        there is no edge: every value is a component of its own."""
        rows = (
            "SELECT min(v.t) OVER (PARTITION BY r._row) AS a, v.t AS b FROM _rtok AS r "
            "JOIN _rv AS v ON v.key_id = r.key_id AND v.value = r.value UNION ALL "
            if keys > 1
            else ""
        )
        self._temp(
            "_re",
            f"SELECT DISTINCT a, b FROM (SELECT a, b FROM ({rows}"
            "SELECT min(t) OVER (PARTITION BY user_id) AS a, t AS b FROM _rown) UNION ALL "
            f"SELECT b, a FROM ({rows}"
            "SELECT min(t) OVER (PARTITION BY user_id) AS a, t AS b FROM _rown)) WHERE a <> b",
        )
        self._temp("_rl", "SELECT t, t AS l FROM _rv")
        if not self._one("SELECT count() FROM _re")[0]:
            return False
        while True:
            # One round: each value takes the smallest label among its neighbours and its
            # own, then the label of that label (pointer jumping).
            self._temp(
                "_rl2",
                "WITH p AS (SELECT e.a AS t, min(x.l) AS m FROM _re AS e JOIN _rl AS x "
                "ON x.t = e.b GROUP BY e.a), q AS (SELECT x.t AS t, "
                "least(x.l, coalesce(p.m, x.l)) AS l FROM _rl AS x LEFT JOIN p ON p.t = x.t) "
                "SELECT q.t AS t, least(q.l, j.l) AS l FROM q JOIN q AS j ON j.t = q.l",
            )
            changed = self._one(
                "SELECT count() FROM _rl2 AS n JOIN _rl AS o ON o.t = n.t WHERE n.l <> o.l"
            )
            self._temp("_rl", "SELECT * FROM _rl2")
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
        if not self._each_row_stored():
            self._people(project_id, keys, user_props, key)
        # Profiles: per person, each property's value of its last row that has one.
        src = ident(staged)
        props = self.present(props)
        one_row = self._one("SELECT count() = uniqExact(user_id) FROM _rrow")
        if one_row[0]:  # each person has one row: its values as they are
            cols = "".join(f", s.{column(p)} AS {column(p)}" for p in props)
            self._temp(
                "_rsrc",
                f"SELECT r.user_id AS _uid, s._touched AS _touched{cols} "
                f"FROM {src} AS s JOIN _rrow AS r ON r._row = s._row",
            )
        else:
            cols = "".join(f", {_last(p)}" for p in props)
            self._temp(
                "_rsrc",
                f"SELECT r.user_id AS _uid, max(s._touched) AS _touched{cols} "
                f"FROM {src} AS s JOIN _rrow AS r ON r._row = s._row GROUP BY r.user_id",
            )
        self._upsert_profiles(project_id, "_rsrc", "_uid", "_touched", props)

    def _each_row_stored(self) -> bool:
        """Whether every value of the batch is held by a stored user, and the values of each
        row by one: then each row is that user's. ``_rrow``: each row's user."""
        held = self._one("SELECT (SELECT count() FROM _rown) = (SELECT count() FROM _rv)")
        if not held[0]:
            return False
        self._temp(
            "_rrow",
            "SELECT t._row AS _row, min(o.user_id) AS user_id, false AS new, "
            "min(o.user_id) = max(o.user_id) AS one FROM _rtok AS t "
            "JOIN _rv AS v ON v.key_id = t.key_id AND v.value = t.value "
            "JOIN _rown AS o ON o.t = v.t GROUP BY t._row",
        )
        one = self._one("SELECT count() = countIf(one) FROM _rrow")
        return bool(one[0])

    def _people(
        self, project_id: int, keys: int, user_props: Sequence[Property], key: str | None
    ) -> None:
        """Resolve the batch's people through its graph: merge the stored users a person
        joins, allocate the new people's ids, link the new values. ``_rrow``: each row's
        person."""
        linked = self._components(keys)
        merges: dict[int, int] = {}
        if linked:
            merges = {
                int(loser): int(survivor)
                for loser, survivor in self._all(
                    "SELECT user_id, s FROM (SELECT user_id, min(user_id) OVER "
                    "(PARTITION BY l) AS s FROM (SELECT DISTINCT x.l AS l, o.user_id AS "
                    "user_id FROM _rown AS o JOIN _rl AS x ON x.t = o.t)) WHERE user_id <> s"
                )
            }
        if merges:
            self.merge_users(project_id, merges, user_props)
        # New people take ids in one allocation, in the order of their first rows.
        self._temp(
            "_rc",
            "SELECT x.l AS l, min(v.first) AS first, min(o.user_id) AS user_id FROM _rl AS x "
            "JOIN _rv AS v ON v.t = x.t LEFT JOIN _rown AS o ON o.t = x.t GROUP BY x.l",
        )
        count = int(self._one("SELECT countIf(user_id IS NULL) FROM _rc")[0])
        base = self.allocate_user_ids(project_id, count, key) if count else 0
        self._temp(
            "_ru",
            "SELECT l, assumeNotNull(user_id) AS user_id, false AS new FROM _rc "
            "WHERE user_id IS NOT NULL UNION ALL "
            f"SELECT l, toInt64({int(base)} - 1 + row_number() OVER (ORDER BY first)), true "
            "FROM _rc WHERE user_id IS NULL",
        )
        # Identities: the values no user holds yet (those of merged users moved with them).
        self._x(
            f"INSERT INTO {self.t('identities')} (project_id, key_id, value, user_id, _version, "
            f"_deleted) SELECT {int(project_id)}, v.key_id, v.value, u.user_id, {self._v()}, 0 "
            "FROM _rv AS v JOIN _rl AS x ON x.t = v.t JOIN _ru AS u ON u.l = x.l "
            "WHERE v.t NOT IN (SELECT t FROM _rown)"
        )
        self._temp(
            "_rrow",
            f"SELECT {'DISTINCT ' if keys > 1 else ''}t._row AS _row, u.user_id AS user_id, "
            "u.new AS new FROM _rtok AS t "
            "JOIN _rv AS v ON v.key_id = t.key_id AND v.value = t.value "
            "JOIN _rl AS x ON x.t = v.t JOIN _ru AS u ON u.l = x.l",
        )
