"""Set-based profile imports: match a batch against identities, then write it in a few
statements (the other stores' steps, in ClickHouse's SQL: a matched profile gets a new
version, never an UPDATE)."""

from __future__ import annotations

from collections.abc import Sequence

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome
from opencdp.store.clickhouse.writer import Writes
from opencdp.store.names import ident
from opencdp.store.setbased import SetBasedWrites

_TEMPS = ("_imp", "_matched", "_picked", "_impw")


class ImportWrites(Writes, SetBasedWrites):
    def _drop_import_temps(self, other_keys: Sequence[int]) -> None:
        held = [f"_held{int(k)}" for k in other_keys] + [f"_link{int(k)}" for k in other_keys]
        for name in (*_TEMPS, *held):
            self._x(f"DROP TEMPORARY TABLE IF EXISTS {ident(name)}")
            self._temps.discard(name)

    def _key_values(self, project_id: int, key: int) -> str:
        """SQL: the stored values of identity key ``key`` and their users."""
        return (
            f"(SELECT value, user_id FROM {self.final('identities')} "
            f"WHERE project_id = {int(project_id)} AND key_id = {int(key)})"
        )

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
        src, pid = ident(staged), int(project_id)
        if lookup_key is None:
            match = (
                f"JOIN (SELECT user_id, user_id AS value FROM {self.final('profiles')} "
                f"WHERE project_id = {pid}) AS m ON m.value = s._lookup"
            )
        else:
            match = f"JOIN {self._key_values(pid, lookup_key)} AS m ON m.value = s._lookup"
        keys = [ident(f"_k{int(k)}") for k in other_keys]
        counts = self._one(
            "SELECT count(), uniqExact(_lookup)"
            + "".join(f", count({c}) = uniqExact({c})" for c in keys)
            + f" FROM {src}"
        )
        unique = {int(k) for k, u in zip(other_keys, counts[2:], strict=True) if u}
        self._temp(
            "_matched", f"SELECT s._row AS _row, m.user_id AS _match FROM {src} AS s {match}"
        )
        picked = ""
        if counts[1] != counts[0]:
            pick = "min" if insert_only else "max"
            self._temp("_picked", f"SELECT {pick}(_row) AS _row FROM {src} GROUP BY _lookup")
            picked = "WHERE s._row IN (SELECT _row FROM _picked)"
        self._temp(
            "_imp",
            f"SELECT s.*, m._match AS _match FROM {src} AS s "
            f"LEFT JOIN _matched AS m ON m._row = s._row {picked}",
        )
        if insert_only and picked:
            for row, value in self._all(
                f"SELECT _row, _lookup FROM {src} WHERE _row NOT IN "
                "(SELECT _row FROM _picked) ORDER BY _row"
            ):
                out.failures[int(row)] = f"{value!r} repeats an earlier row of the file"
        if lookup_key is None:
            for row, value in self._all("SELECT _row, _lookup FROM _imp WHERE _match IS NULL"):
                out.failures[int(row)] = f"id: no profile with user id {value}"
        elif insert_only:
            for row, value, uid in self._all(
                f"SELECT s._row, s._lookup, m._match FROM _matched AS m JOIN {src} AS s "
                "ON s._row = m._row ORDER BY s._row"
            ):
                out.failures.setdefault(int(row), f"{value!r} already belongs to profile {uid}")
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
        pid = int(project_id)
        keep = (
            "_match IS NOT NULL"
            if lookup_key is None
            else ("_match IS NULL" if insert_only else "1")
        )
        new_rows = f"({keep}) AND _match IS NULL"
        stats = self._one(
            f"SELECT countIf({keep}), countIf({new_rows}), minIf(_row, {new_rows}), "
            f"maxIf(_row, {new_rows}) FROM _imp"
        )
        kept, new, lo, hi = int(stats[0]), int(stats[1]), stats[2], stats[3]
        out.imported = num_rows - len(out.failures)
        if not write or kept == 0:
            return out
        # New profiles take ids by row number: one allocation per batch (reserved under the
        # batch's key), no ranking; ids of rows that matched or failed are simply never used.
        base = self.allocate_user_ids(pid, int(hi) - int(lo) + 1, reserve) if new else 0
        uid = f"coalesce(_match, toInt64({int(base)} + _row - {int(lo or 0)}))"
        props = self.present(props)
        cols = "".join(f", {ident(p.column)}" for p in props)
        self._temp("_impw", f"SELECT {uid} AS _uid, _touched{cols} FROM _imp WHERE {keep}")
        self._upsert_profiles(pid, "_impw", "_uid", "_touched", props)
        # Identities in one statement: the lookup values of new profiles, and the values of
        # the other keys that no profile holds yet.
        links = [self._key_links(pid, int(k), uid, keep, int(k) in unique, out) for k in other_keys]
        if new and lookup_key is not None:
            links.append(f"SELECT {int(lookup_key)}, _lookup, {uid} FROM _imp WHERE {new_rows}")
        if links:
            self._x(
                f"INSERT INTO {self.t('identities')} (project_id, key_id, value, user_id, "
                f"_version, _deleted) SELECT {pid}, k, v, u, {self._v()}, 0 FROM ("
                + " UNION ALL ".join(f"SELECT * FROM ({q})" for q in links)
                + ") AS l (k, v, u)"
            )
        if list_id is not None:
            self._x(
                f"INSERT INTO {self.t('list_members')} (project_id, list_id, user_id, _version, "
                f"_deleted) SELECT DISTINCT {pid}, {int(list_id)}, {uid}, {self._v()}, 0 "
                f"FROM _imp WHERE {keep}"
            )
        return out

    def _key_links(
        self, project_id: int, key: int, uid: str, keep: str, unique: bool, out: ImportOutcome
    ) -> str:
        """The rows linking the values of identity key ``key`` (column ``_k{key}`` of
        ``_imp``) to their rows' profiles: each value to the last row's profile, unless a
        profile holds it already. A row whose value ends up with another profile gets a
        warning."""
        col, held, link = ident(f"_k{key}"), f"_held{key}", f"_link{key}"
        self._temp(
            held,
            f"SELECT i._row AS _row, i.{col} AS v, m.user_id AS owner, {uid} AS u FROM _imp AS i "
            f"JOIN {self._key_values(project_id, key)} AS m ON m.value = i.{col} WHERE {keep}",
        )
        conflicts = f"SELECT _row, v, owner FROM {ident(held)} WHERE owner <> u"
        rows = f"SELECT {col} AS v, {uid} AS u, _row FROM _imp WHERE ({keep}) AND {col} IS NOT NULL"
        if not unique:  # a value on rows of different profiles goes with the last of them
            self._temp(link, f"SELECT v, argMax(u, _row) AS u FROM ({rows}) GROUP BY v")
            rows = f"SELECT v, u FROM {ident(link)}"
            conflicts += (
                f" UNION ALL SELECT i._row, i.{col}, s.u FROM _imp AS i JOIN {ident(link)} AS s "
                f"ON s.v = i.{col} WHERE s.v NOT IN (SELECT v FROM {ident(held)}) AND ({keep}) "
                f"AND s.u <> {uid}"
            )
        for row_no, value, owner in self._all(conflicts):
            out.warnings.setdefault(
                int(row_no), f"{value!r} belongs to another profile ({owner}); not linked"
            )
        return (
            f"SELECT {key}, s.v, s.u FROM ({rows}) AS s "
            f"WHERE s.v NOT IN (SELECT v FROM {ident(held)})"
        )
