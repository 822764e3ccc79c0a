"""Set-based profile imports: match a batch against identities, then write it in a few
statements."""

from __future__ import annotations

from collections.abc import Sequence

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome
from opencdp.store.duckdb.sql import ident, table
from opencdp.store.duckdb.writer import WriterBase
from opencdp.store.setbased import SetBasedWrites


class ImportWrites(WriterBase, SetBasedWrites):
    def _drop_import_temps(self, other_keys: Sequence[int]) -> None:
        self._cur.execute("DROP VIEW IF EXISTS _imp")
        self._cur.execute("DROP TABLE IF EXISTS _matched; DROP TABLE IF EXISTS _picked")

    def _import_matches(
        self,
        project_id: int,
        staged: str,
        lookup_key: int | None,
        other_keys: Sequence[int],
        insert_only: bool,
        out: ImportOutcome,
    ) -> set[int]:
        """Define ``_imp``: one row per lookup value (the last; insert-only: the first) with
        the profile it matches (``_match``), over the staged batch. Only the matches and, when
        a value repeats, the picked rows are materialized: an initial load copies nothing.
        Returns the other identity keys whose values the batch holds once each."""
        cur = self._cur
        if lookup_key is None:
            match = f"JOIN {table(project_id, 'profiles')} m ON m.user_id = s._lookup"
        else:
            match = (
                f"JOIN {table(project_id, 'identities')} m "
                f"ON m.key_id = {int(lookup_key)} AND m.value = s._lookup"
            )
        # Which columns hold each value once (the common case: no grouping needed).
        keys = [ident(f"_k{int(k)}") for k in other_keys]
        counts = self._one(
            "SELECT count(*), count(DISTINCT _lookup)"
            + "".join(f", count({c}) = count(DISTINCT {c})" for c in keys)
            + f" FROM {staged}"
        )
        assert counts is not None
        unique = {int(k) for k, u in zip(other_keys, counts[2:], strict=True) if u}
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE _matched AS SELECT s._row, m.user_id AS _match "
            f"FROM {staged} s {match}"
        )
        picked = ""
        if counts[1] != counts[0]:  # a grouped pick and hash joins: no sort of the batch
            pick = "min" if insert_only else "max"
            cur.execute(
                f"CREATE OR REPLACE TEMP TABLE _picked AS SELECT {pick}(_row) AS _row "
                f"FROM {staged} GROUP BY _lookup"
            )
            picked = "SEMI JOIN _picked p ON p._row = s._row"
        cur.execute(
            "CREATE OR REPLACE TEMP VIEW _imp AS SELECT s.*, m._match "
            f"FROM {staged} s {picked} LEFT JOIN _matched m ON m._row = s._row"
        )
        if insert_only and picked:
            for row, value in cur.execute(
                f"SELECT s._row, s._lookup FROM {staged} s ANTI JOIN _picked p "
                "ON s._row = p._row ORDER BY s._row"
            ).fetchall():
                out.failures[row] = f"{value!r} repeats an earlier row of the file"
        if lookup_key is None:
            missing = "SELECT _row, _lookup FROM _imp WHERE _match IS NULL"
            for row, value in cur.execute(missing).fetchall():
                out.failures[row] = f"id: no profile with user id {value}"
        elif insert_only:
            for row, value, uid in cur.execute(
                "SELECT s._row, s._lookup, m._match FROM _matched m "
                f"JOIN {staged} s ON s._row = m._row"
            ).fetchall():
                out.failures.setdefault(row, f"{value!r} already belongs to profile {uid}")
        return unique

    def _import_write(
        self,
        project_id: int,
        num_rows: int,
        lookup_key: int | None,
        other_keys: Sequence[int],
        unique: set[int],
        props: Sequence[Property],
        insert_only: bool,
        write: bool,
        list_id: int | None,
        out: ImportOutcome,
        reserve: str | None = None,
    ) -> ImportOutcome:
        """Write what ``_imp`` defines: new profiles, updated ones, their identities and list
        memberships."""
        cur = self._cur
        profiles, identities = table(project_id, "profiles"), table(project_id, "identities")
        keep = (
            "_match IS NOT NULL"
            if lookup_key is None
            else ("_match IS NULL" if insert_only else "TRUE")
        )
        new_rows = f"({keep}) AND _match IS NULL"
        stats = self._one(
            f"SELECT count(*) FILTER (WHERE {keep}), count(*) FILTER (WHERE {new_rows}), "
            f"min(_row) FILTER (WHERE {new_rows}), max(_row) FILTER (WHERE {new_rows}) FROM _imp"
        )
        assert stats is not None
        kept, new, lo, hi = int(stats[0]), int(stats[1]), stats[2], stats[3]
        out.imported = num_rows - len(out.failures)
        if not write or kept == 0:
            return out
        # New profiles take ids by row number: one allocation per batch (reserved under the
        # batch's key), no ranking; ids of rows that matched or failed are simply never used.
        base = self.allocate_user_ids(project_id, int(hi) - int(lo) + 1, reserve) if new else 0
        uid = f"COALESCE(_match, {int(base)} + _row - {int(lo or 0)})"
        cols = [ident(p.column) for p in props]
        names = ", ".join(["user_id", "created_at", "updated_at", *cols])
        if new:
            cur.execute(
                f"INSERT INTO {profiles} ({names}) SELECT {uid}, _touched, _touched"
                f"{''.join(', ' + c for c in cols)} FROM _imp WHERE {new_rows}"
            )
        if kept > new:
            sets = ", ".join(
                ["updated_at = s._touched"]
                + [f"{c} = COALESCE(s.{c}, {profiles}.{c})" for c in cols]
            )
            cur.execute(
                f"UPDATE {profiles} SET {sets} FROM (SELECT * FROM _imp WHERE ({keep}) "
                f"AND _match IS NOT NULL) s WHERE {profiles}.user_id = s._match"
            )
        # Identities in one statement: the lookup values of new profiles, and the values of
        # the other keys that no profile holds yet.
        links = [
            self._key_links(project_id, int(key), uid, keep, int(key) in unique, out)
            for key in other_keys
        ]
        if new and lookup_key is not None:
            links.append(f"SELECT {int(lookup_key)}, _lookup, {uid} FROM _imp WHERE {new_rows}")
        if links:
            cur.execute(f"INSERT INTO {identities} " + " UNION ALL ".join(links))
        for key in other_keys:
            cur.execute(
                f"DROP TABLE IF EXISTS _held{int(key)}; DROP TABLE IF EXISTS _link{int(key)}"
            )
        if list_id is not None:
            lists = table(project_id, "list_members")
            cur.execute(
                f"INSERT INTO {lists} SELECT {int(list_id)}, s.u FROM (SELECT DISTINCT {uid} AS u "
                f"FROM _imp WHERE {keep}) s ANTI JOIN (SELECT user_id FROM {lists} "
                f"WHERE list_id = {int(list_id)}) l ON l.user_id = s.u"
            )
        return out

    def _key_links(
        self, project_id: int, key: int, uid: str, keep: str, unique: bool, out: ImportOutcome
    ) -> str:
        """The rows linking the values of identity key ``key`` (column ``_k{key}`` of
        ``_imp``) to their rows' profiles: each value to the last row's profile, unless a
        profile holds it already. A row whose value ends up with another profile gets a
        warning."""
        cur, identities = self._cur, table(project_id, "identities")
        col, held, link = ident(f"_k{key}"), f"_held{key}", f"_link{key}"
        # The values some profile holds already: one join with the batch.
        cur.execute(
            f"CREATE OR REPLACE TEMP TABLE {held} AS SELECT i._row, i.{col} AS v, "
            f"m.user_id AS owner, {uid} AS u FROM _imp i JOIN {identities} m "
            f"ON m.key_id = {key} AND m.value = i.{col} WHERE {keep}"
        )
        conflicts = f"SELECT _row, v, owner FROM {held} WHERE owner <> u"
        rows = f"SELECT {col} AS v, {uid} AS u, _row FROM _imp WHERE ({keep}) AND {col} IS NOT NULL"
        if not unique:  # a value on rows of different profiles goes with the last of them
            cur.execute(
                f"CREATE OR REPLACE TEMP TABLE {link} AS "
                f"SELECT v, arg_max(u, _row) AS u FROM ({rows}) GROUP BY v"
            )
            rows = f"SELECT v, u FROM {link}"
            conflicts += (
                f" UNION ALL SELECT i._row, i.{col}, s.u FROM _imp i JOIN {link} s "
                f"ON s.v = i.{col} ANTI JOIN {held} h ON h.v = s.v "
                f"WHERE ({keep}) AND s.u <> {uid}"
            )
        for row_no, value, owner in cur.execute(conflicts).fetchall():
            out.warnings.setdefault(
                row_no, f"{value!r} belongs to another profile ({owner}); not linked"
            )
        return f"SELECT {key}, s.v, s.u FROM ({rows}) s ANTI JOIN {held} h ON h.v = s.v"
