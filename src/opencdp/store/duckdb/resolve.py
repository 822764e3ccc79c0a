"""Set-based identity resolution of a batch of profile rows matched by every identity key.

The batch's identity values are the nodes of a graph whose edges join the values of one row
and the values one stored user holds; its connected components are the people. Components are
found by minimum-label propagation with pointer jumping, one statement over the batch's edges
per round, until no label changes (a few rounds: pointer jumping halves chains). Everything
is a table of the batch's size; the stored tables are only joined with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome
from opencdp.store.duckdb.sql import ident, table
from opencdp.store.duckdb.writer import Writes
from opencdp.store.setbased import SetBasedWrites

ALREADY_STORED = "a profile with one of these identities already exists"
REPEATED = "repeats the identity of an earlier row of the file"

_TEMPS = (
    "_rtok", "_rfail", "_rv", "_rown", "_re", "_rl", "_rl2", "_rc", "_ru", "_rrow", "_rsrc", "_rev",
)  # fmt: skip


class ResolveWrites(Writes, SetBasedWrites):
    def _all_new(self, project_id: int, staged: str, keys: Sequence[int]) -> bool:
        """Whether every identity value of the batch is in one row only, and none is stored:
        then each row is a person of its own, new (most batches of a first load)."""
        identities = table(project_id, "identities")
        columns = [(int(k), ident(f"_k{int(k)}")) for k in keys]

        def stored(rows: str) -> str:
            return " OR ".join(
                f"EXISTS (SELECT 1 FROM {rows} s SEMI JOIN {identities} i "
                f"ON i.key_id = {k} AND i.value = s.{c})"
                for k, c in columns
            )

        # A batch of people the store holds (a file imported again) shows in its first rows.
        held = self._one(f"SELECT {stored(f'(SELECT * FROM {staged} LIMIT 1000)')}")
        if held and held[0]:
            return False
        unique = " AND ".join(f"count({c}) = count(DISTINCT {c})" for _, c in columns)
        found = self._one(f"SELECT {unique} AND NOT ({stored(staged)}) FROM {staged}")
        return bool(found and found[0])

    def _each_row_new(
        self,
        project_id: int,
        staged: str,
        keys: Sequence[int],
        props: Sequence[Property],
        key: str | None,
    ) -> None:
        """Write a batch of which each row is a new person (see :meth:`_all_new`): ids in one
        allocation in row order (as :meth:`_resolve` numbers one-row people), the identities
        and profiles inserted as they are."""
        cur = self._cur
        count = self._one(f"SELECT count(*) FROM {staged}")
        base = self.allocate_user_ids(project_id, int(count[0]) if count else 0, key)
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _rrow AS SELECT _row, {int(base)} - 1 + "
            f"row_number() OVER (ORDER BY _row) AS user_id, true AS new FROM {staged}"
        )
        cur.execute(
            f"INSERT INTO {table(project_id, 'identities')} "
            + " UNION ALL ".join(
                f"SELECT {int(k)}::INTEGER, s.{ident(f'_k{int(k)}')}, r.user_id FROM {staged} s "
                f"JOIN _rrow r ON r._row = s._row WHERE s.{ident(f'_k{int(k)}')} IS NOT NULL"
                for k in keys
            )
        )
        rows = f"(SELECT r.user_id AS _uid, s.* FROM {staged} s JOIN _rrow r ON r._row = s._row)"
        self._insert_profiles(project_id, rows, "_uid", "_touched", props)

    def _drop_temps(self) -> None:
        for name in _TEMPS:
            self._cur.execute(f"DROP TABLE IF EXISTS {name}")

    def _screen_events(self, project_id: int, staged: str, out: ImportOutcome) -> None:
        """Insert-only: fail the rows whose event id an earlier row has, or the store holds."""
        for row, eid in self._cur.execute(
            f"SELECT s._row, s.event_id FROM {staged} s JOIN (SELECT event_id, min(_row) AS f "
            f"FROM {staged} GROUP BY event_id) f ON f.event_id = s.event_id WHERE s._row > f.f"
        ).fetchall():
            out.failures[int(row)] = f"event_id: {eid!r} repeats an earlier row of the file"
        for row, eid in self._cur.execute(
            f"SELECT s._row, s.event_id FROM {staged} s "
            f"SEMI JOIN {table(project_id, 'events')} e ON e.event_id = s.event_id"
        ).fetchall():
            out.failures.setdefault(int(row), f"event_id: {eid!r} already exists")

    def _write_events(self, project_id: int, staged: str, props: Sequence[Property]) -> None:
        """One event per event id: the name, time and person of its last row, each property
        from the last row that has one; upserted as the record path upserts events."""
        cols = [ident(p.column) for p in props]
        picks = "".join(
            f", arg_max(s.{c}, s._row) FILTER (WHERE s.{c} IS NOT NULL) AS {c}" for c in cols
        )
        events = table(project_id, "events")
        fresh = self._one(
            f"SELECT count(*) = count(DISTINCT event_id) AND NOT EXISTS (SELECT 1 FROM {staged} "
            f"s SEMI JOIN {events} e ON e.event_id = s.event_id) FROM {staged}"
        )
        if fresh and fresh[0]:  # (most batches: events with ids of their own) inserted as they are
            names = ", ".join(["event_id", "event_name", "event_time", "received_at", "user_id"])
            self._cur.execute(
                f"INSERT INTO {events} ({names}{''.join(f', {c}' for c in cols)}) "
                "SELECT s.event_id, s.event_name, s.event_time, s._touched, r.user_id"
                f"{''.join(f', s.{c}' for c in cols)} "
                f"FROM {staged} s JOIN _rrow r ON r._row = s._row"
            )
            return
        self._cur.execute(
            "CREATE OR REPLACE TEMP TABLE _rev AS SELECT s.event_id, "
            "arg_max(s.event_name, s._row) AS event_name, "
            "arg_max(s.event_time, s._row) AS event_time, max(s._touched) AS received_at, "
            f"arg_max(r.user_id, s._row) AS user_id{picks} "
            f"FROM {staged} s JOIN _rrow r ON r._row = s._row GROUP BY s.event_id"
        )
        self._merge_events(project_id, "_rev", props)

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
        cur, identities = self._cur, table(project_id, "identities")
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _rtok AS "
            + " UNION ALL ".join(
                f"SELECT _row, {int(k)}::INTEGER AS key_id, {ident(f'_k{int(k)}')} AS value "
                f"FROM {staged} WHERE {ident(f'_k{int(k)}')} IS NOT NULL"
                for k in keys
            )
        )
        if insert_only:  # a row holding a stored value, or one of an earlier row, fails
            for (row,) in cur.execute(
                f"SELECT DISTINCT t._row FROM _rtok t SEMI JOIN {identities} i "
                "ON i.key_id = t.key_id AND i.value = t.value"
            ).fetchall():
                out.failures[int(row)] = ALREADY_STORED
            for (row,) in cur.execute(
                "SELECT DISTINCT t._row FROM _rtok t JOIN (SELECT key_id, value, min(_row) AS f "
                "FROM _rtok GROUP BY key_id, value) f "
                "ON f.key_id = t.key_id AND f.value = t.value WHERE t._row > f.f"
            ).fetchall():
                out.failures.setdefault(int(row), REPEATED)
        if out.failures:  # (insert-only: these rows are not written)
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _rfail AS SELECT unnest(?::BIGINT[]) AS _row",
                [sorted(out.failures)],
            )
            cur.execute("DELETE FROM _rtok WHERE _row IN (SELECT _row FROM _rfail)")
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _rv AS SELECT key_id, value, min(_row) AS first, "
            "row_number() OVER (ORDER BY min(_row), key_id, value) AS t "
            "FROM _rtok GROUP BY key_id, value"
        )
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _rown AS SELECT v.t, i.user_id FROM _rv v "
            f"JOIN {identities} i ON i.key_id = v.key_id AND i.value = v.value"
        )

    def _components(self, keys: int) -> bool:
        """``_rl``: each value's component, labelled by its smallest value number (``keys``:
        how many identity key columns the batch has). False when there is no edge: every
        value is a component of its own."""
        cur = self._cur
        # Edges: each value of a row (or of a stored user) to the row's (user's) first value,
        # both ways. (A row of a batch with one key column holds one value: no edge.)
        rows = (
            "SELECT min(v.t) OVER (PARTITION BY r._row) AS a, v.t AS b FROM _rtok r "
            "JOIN _rv v ON v.key_id = r.key_id AND v.value = r.value UNION ALL "
            if keys > 1
            else ""
        )
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _re AS WITH star AS ({rows}"
            "SELECT min(t) OVER (PARTITION BY user_id) AS a, t AS b FROM _rown) "
            "SELECT DISTINCT a, b FROM (SELECT a, b FROM star UNION ALL SELECT b, a FROM star) "
            "WHERE a <> b"
        )
        cur.execute("CREATE OR REPLACE TEMP TABLE _rl AS SELECT t, t AS l FROM _rv")
        edges = self._one("SELECT count(*) FROM _re")
        if not edges or not edges[0]:  # every value a person of its own (one key, no merges)
            return False
        while True:
            # One round: each value takes the smallest label among its neighbours and its
            # own, then the label of that label (pointer jumping).
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _rl2 AS WITH p AS ("
                "SELECT e.a AS t, min(l.l) AS m FROM _re e JOIN _rl l ON l.t = e.b GROUP BY e.a"
                "), q AS (SELECT l.t, least(l.l, coalesce(p.m, l.l)) AS l FROM _rl l "
                "LEFT JOIN p ON p.t = l.t) "
                "SELECT q.t, least(q.l, j.l) AS l FROM q JOIN q j ON j.t = q.l"
            )
            changed = self._one(
                "SELECT count(*) FROM _rl2 n JOIN _rl o ON o.t = n.t WHERE n.l <> o.l"
            )
            cur.execute("DROP TABLE _rl; ALTER TABLE _rl2 RENAME TO _rl")
            if not changed or not changed[0]:
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
        cur = self._cur
        cols = [ident(p.column) for p in props]
        picks = "".join(
            f", arg_max(s.{c}, s._row) FILTER (WHERE s.{c} IS NOT NULL) AS {c}" for c in cols
        )
        one_row = self._one("SELECT count(*) = count(DISTINCT user_id) FROM _rrow")
        if one_row and one_row[0]:  # each person has one row: its values as they are
            cur.execute(
                "CREATE OR REPLACE TEMP TABLE _rsrc AS SELECT r.user_id AS _uid, r.new AS _new, "
                f"s._touched{''.join(f', s.{c}' for c in cols)} "
                f"FROM {staged} s JOIN _rrow r ON r._row = s._row"
            )
        else:
            cur.execute(
                f"CREATE OR REPLACE TEMP TABLE _rsrc AS SELECT r.user_id AS _uid, "
                f"any_value(r.new) AS _new, max(s._touched) AS _touched{picks} "
                f"FROM {staged} s JOIN _rrow r ON r._row = s._row GROUP BY r.user_id"
            )
        # New people's profiles are inserted, stored people's updated: an UPDATE and an INSERT
        # rather than one MERGE, which DuckDB runs many times slower on a table whose rows
        # were just written in bulk.
        if count:
            self._insert_profiles(project_id, "_rsrc", "_uid", "_touched", props, "_new")
        if stored:
            self._update_profiles(project_id, "_rsrc", "_uid", "_touched", props, "NOT s._new")

    def _each_row_stored(self) -> bool:
        """Whether every value of the batch is held by a stored user, and the values of each
        row by one: then each row is that user's (a file imported again), no value links two
        people and nobody is new, so the graph has nothing to find. ``_rrow``: each row's
        user."""
        held = self._one("SELECT (SELECT count(*) FROM _rown) = (SELECT count(*) FROM _rv)")
        if not held or not held[0]:
            return False
        self._cur.execute(
            "CREATE OR REPLACE TEMP TABLE _rrow AS SELECT t._row, min(o.user_id) AS user_id, "
            "false AS new, min(o.user_id) = max(o.user_id) AS one FROM _rtok t "
            "JOIN _rv v ON v.key_id = t.key_id AND v.value = t.value "
            "JOIN _rown o ON o.t = v.t GROUP BY t._row"
        )
        one = self._one("SELECT bool_and(one) FROM _rrow")
        return bool(one and one[0])

    def _people(
        self, project_id: int, keys: int, user_props: Sequence[Property], key: str | None
    ) -> tuple[int, bool]:
        """Resolve the batch's people through its graph: merge the stored users a person
        joins, allocate the new people's ids, link the new values. ``_rrow``: each row's
        person. Returns how many people are new, and whether any is stored."""
        cur = self._cur
        linked = self._components(keys)
        # Each component's stored users: the lowest survives, the others merge into it. (A
        # component of one value has one stored user at most.)
        merges: dict[int, int] = {}
        if linked:
            merges = {
                int(loser): int(survivor)
                for loser, survivor in cur.execute(
                    "WITH d AS (SELECT DISTINCT l.l, o.user_id FROM _rown o "
                    "JOIN _rl l ON l.t = o.t) SELECT user_id, s FROM (SELECT user_id, "
                    "min(user_id) OVER (PARTITION BY l) AS s FROM d) WHERE user_id <> s"
                ).fetchall()
            }
        if merges:
            self.merge_users(project_id, merges, user_props)
        # New people take ids in one allocation, in the order of their first rows.
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _rc AS SELECT l.l, min(v.first) AS first, "
            "min(o.user_id) AS user_id FROM _rl l JOIN _rv v ON v.t = l.t "
            "LEFT JOIN _rown o ON o.t = l.t GROUP BY l.l"
        )
        counts = self._one("SELECT count(*) FILTER (WHERE user_id IS NULL), count(*) FROM _rc")
        count, people = (int(counts[0]), int(counts[1])) if counts else (0, 0)
        base = self.allocate_user_ids(project_id, count, key) if count else 0
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _ru AS SELECT l, user_id, false AS new FROM _rc "
            "WHERE user_id IS NOT NULL UNION ALL "
            f"SELECT l, {int(base)} - 1 + row_number() OVER (ORDER BY first), true FROM _rc "
            "WHERE user_id IS NULL"
        )
        # Identities: the values no user holds yet (those of merged users moved with them).
        cur.execute(
            f"INSERT INTO {table(project_id, 'identities')} "
            "SELECT v.key_id, v.value, u.user_id FROM _rv v JOIN _rl l ON l.t = v.t "
            "JOIN _ru u ON u.l = l.l ANTI JOIN _rown o ON o.t = v.t"
        )
        # ``_rrow``: each row's person.
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _rrow AS SELECT {'DISTINCT ' if keys > 1 else ''}"
            "t._row, u.user_id, u.new "
            "FROM _rtok t "
            "JOIN _rv v ON v.key_id = t.key_id AND v.value = t.value "
            "JOIN _rl l ON l.t = v.t JOIN _ru u ON u.l = l.l"
        )
        return count, count < people
