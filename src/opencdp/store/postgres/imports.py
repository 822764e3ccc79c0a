"""Set-based profile imports: match a batch against identities, then write it in a few
statements (the DuckDB store's steps, in PostgreSQL's SQL)."""

from __future__ import annotations

from collections.abc import Sequence

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome
from opencdp.store.names import ident, table
from opencdp.store.postgres.sql import props_object
from opencdp.store.postgres.writer import WriterBase
from opencdp.store.setbased import SetBasedWrites

_TEMPS = ("_imp", "_matched", "_picked")


class ImportWrites(WriterBase, SetBasedWrites):
    def _drop_import_temps(self, other_keys: Sequence[int]) -> None:
        held = [f"_held{int(k)}" for k in other_keys] + [f"_link{int(k)}" for k in other_keys]
        for name in (*_TEMPS, *held):
            self._x(f"DROP TABLE IF EXISTS {ident(name)}")

    def _import_matches(
        self,
        project_id: int,
        staged: str,
        lookup_key: int | None,
        other_keys: Sequence[int],
        insert_only: bool,
        out: ImportOutcome,
    ) -> set[int]:
        """``_imp``: one row per lookup value (the last; insert-only: the first) with the
        profile it matches (``_match``). Returns the other identity keys whose values the
        batch holds once each."""
        src = ident(staged)
        if lookup_key is None:
            match = f"JOIN {table(project_id, 'profiles')} m ON m.user_id = s._lookup"
        else:
            match = (
                f"JOIN {table(project_id, 'identities')} m "
                f"ON m.key_id = {int(lookup_key)} AND m.value = s._lookup"
            )
        keys = [ident(f"_k{int(k)}") for k in other_keys]
        counts = self._one(
            "SELECT count(*), count(DISTINCT _lookup)"
            + "".join(f", count({c}) = count(DISTINCT {c})" for c in keys)
            + f" FROM {src}"
        )
        unique = {int(k) for k, u in zip(other_keys, counts[2:], strict=True) if u}
        self._temp("_matched", f"SELECT s._row, m.user_id AS _match FROM {src} s {match}")
        picked = ""
        if counts[1] != counts[0]:
            pick = "min" if insert_only else "max"
            self._temp("_picked", f"SELECT {pick}(_row) AS _row FROM {src} GROUP BY _lookup")
            picked = "WHERE s._row IN (SELECT _row FROM _picked)"
        self._temp(
            "_imp",
            f"SELECT s.*, m._match FROM {src} s LEFT JOIN _matched m ON m._row = s._row {picked}",
        )
        if insert_only and picked:
            for row, value in self._all(
                f"SELECT s._row, s._lookup FROM {src} s WHERE s._row NOT IN "
                "(SELECT _row FROM _picked) ORDER BY s._row"
            ):
                out.failures[row] = f"{value!r} repeats an earlier row of the file"
        if lookup_key is None:
            for row, value in self._all("SELECT _row, _lookup FROM _imp WHERE _match IS NULL"):
                out.failures[row] = f"id: no profile with user id {value}"
        elif insert_only:
            for row, value, uid in self._all(
                f"SELECT s._row, s._lookup, m._match FROM _matched m JOIN {src} s "
                "ON s._row = m._row ORDER BY s._row"
            ):
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
        """Write what ``_imp`` holds: new profiles, updated ones, their identities and list
        memberships."""
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
        kept, new, lo, hi = int(stats[0]), int(stats[1]), stats[2], stats[3]
        out.imported = num_rows - len(out.failures)
        if not write or kept == 0:
            return out
        # New profiles take ids by row number: one allocation per batch (reserved under the
        # batch's key), no ranking; ids of rows that matched or failed are simply never used.
        base = self.allocate_user_ids(project_id, int(hi) - int(lo) + 1, reserve) if new else 0
        uid = f"COALESCE(_match, {int(base)} + _row - {int(lo or 0)})"
        obj = props_object(list(props), "s")
        if new:
            self._x(
                f"INSERT INTO {profiles} (user_id, created_at, updated_at, props) "
                f"SELECT {uid}, _touched, _touched, {obj} FROM _imp s WHERE {new_rows}"
            )
        if kept > new:
            self._x(
                f"UPDATE {profiles} AS t SET updated_at = s._touched, props = t.props || {obj} "
                f"FROM _imp s WHERE t.user_id = s._match AND ({keep})"
            )
        # Identities in one statement: the lookup values of new profiles, and the values of
        # the other keys that no profile holds yet.
        links = [
            self._key_links(project_id, int(k), uid, keep, int(k) in unique, out)
            for k in other_keys
        ]
        if new and lookup_key is not None:
            links.append(f"SELECT {int(lookup_key)}, _lookup, {uid} FROM _imp WHERE {new_rows}")
        if links:
            self._x(
                f"INSERT INTO {identities} (key_id, value, user_id) " + " UNION ALL ".join(links)
            )
        if list_id is not None:
            self._x(
                f"INSERT INTO {table(project_id, 'list_members')} (list_id, user_id) "
                f"SELECT DISTINCT {int(list_id)}, {uid} FROM _imp WHERE {keep} "
                "ON CONFLICT DO NOTHING"
            )
        return out

    def _key_links(
        self, project_id: int, key: int, uid: str, keep: str, unique: bool, out: ImportOutcome
    ) -> str:
        """The rows linking the values of identity key ``key`` (column ``_k{key}`` of
        ``_imp``) to their rows' profiles: each value to the last row's profile, unless a
        profile holds it already. A row whose value ends up with another profile gets a
        warning."""
        identities = table(project_id, "identities")
        col, held, link = ident(f"_k{key}"), f"_held{key}", f"_link{key}"
        self._temp(
            held,
            f"SELECT i._row, i.{col} AS v, m.user_id AS owner, {uid} AS u FROM _imp i "
            f"JOIN {identities} m ON m.key_id = {key} AND m.value = i.{col} WHERE {keep}",
        )
        conflicts = f"SELECT _row, v, owner FROM {ident(held)} WHERE owner <> u"
        rows = f"SELECT {col} AS v, {uid} AS u, _row FROM _imp WHERE ({keep}) AND {col} IS NOT NULL"
        if not unique:  # a value on rows of different profiles goes with the last of them
            self._temp(link, f"SELECT DISTINCT ON (v) v, u FROM ({rows}) r ORDER BY v, _row DESC")
            rows = f"SELECT v, u FROM {ident(link)}"
            conflicts += (
                f" UNION ALL SELECT i._row, i.{col}, s.u FROM _imp i JOIN {ident(link)} s "
                f"ON s.v = i.{col} WHERE NOT EXISTS (SELECT 1 FROM {ident(held)} h "
                f"WHERE h.v = s.v) AND ({keep}) AND s.u <> {uid}"
            )
        for row_no, value, owner in self._all(conflicts):
            out.warnings.setdefault(
                row_no, f"{value!r} belongs to another profile ({owner}); not linked"
            )
        return (
            f"SELECT {key}, s.v, s.u FROM ({rows}) s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {ident(held)} h WHERE h.v = s.v)"
        )
