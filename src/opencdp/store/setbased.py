"""The set-based imports' order of steps, the same on every engine: stage the batch, match or
resolve it, write it, drop what was staged. Each engine writes the steps in its own SQL
(``store/<engine>/imports.py`` and ``resolve.py``); only the order lives here, so that the
engines cannot drift apart in it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from opencdp.catalog.model import Property
from opencdp.store.base import ImportOutcome, StoreWriter


class SetBasedWrites(StoreWriter):
    # ---- the steps an engine writes ----------------------------------------------------
    @abstractmethod
    def _stage(self, data: Any) -> str:
        """Make an Arrow table readable by the next statements; its generated name."""

    @abstractmethod
    def _unstage(self, name: str) -> None: ...

    @abstractmethod
    def _import_matches(
        self,
        project_id: int,
        staged: str,
        lookup_key: int | None,
        other_keys: Sequence[int],
        insert_only: bool,
        out: ImportOutcome,
    ) -> set[int]: ...

    @abstractmethod
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
    ) -> ImportOutcome: ...

    @abstractmethod
    def _drop_import_temps(self, other_keys: Sequence[int]) -> None: ...

    @abstractmethod
    def _all_new(self, project_id: int, staged: str, keys: Sequence[int]) -> bool: ...

    @abstractmethod
    def _each_row_new(
        self,
        project_id: int,
        staged: str,
        keys: Sequence[int],
        props: Sequence[Property],
        key: str | None,
    ) -> None: ...

    @abstractmethod
    def _tokens(
        self,
        project_id: int,
        staged: str,
        keys: Sequence[int],
        insert_only: bool,
        out: ImportOutcome,
    ) -> None: ...

    @abstractmethod
    def _resolve(
        self,
        project_id: int,
        staged: str,
        keys: int,
        props: Sequence[Property],
        user_props: Sequence[Property],
        key: str | None,
    ) -> None: ...

    @abstractmethod
    def _screen_events(self, project_id: int, staged: str, out: ImportOutcome) -> None: ...

    @abstractmethod
    def _write_events(self, project_id: int, staged: str, props: Sequence[Property]) -> None: ...

    @abstractmethod
    def _drop_temps(self) -> None: ...

    # ---- the order ---------------------------------------------------------------------
    def import_profiles(
        self,
        project_id: int,
        rows: Any,
        lookup_key: int | None,
        other_keys: Sequence[int],
        props: Sequence[Property],
        insert_only: bool,
        write: bool,
        list_id: int | None = None,
        key: str | None = None,
    ) -> ImportOutcome:
        out = ImportOutcome()
        if rows.num_rows == 0:
            return out
        self.ensure_project(project_id)
        if write:
            self.ensure_columns(project_id, props)
        staged = self._stage(rows)
        try:
            unique = self._import_matches(
                project_id, staged, lookup_key, other_keys, insert_only, out
            )
            return self._import_write(
                project_id, rows.num_rows, lookup_key, other_keys, unique, props,
                insert_only, write, list_id, out, key,
            )  # fmt: skip
        finally:
            self._drop_import_temps(other_keys)
            self._unstage(staged)

    def resolve_profiles(
        self,
        project_id: int,
        rows: Any,
        keys: Sequence[int],
        props: Sequence[Property],
        user_props: Sequence[Property],
        insert_only: bool,
        write: bool,
        key: str | None = None,
    ) -> ImportOutcome:
        out = ImportOutcome()
        if rows.num_rows == 0:
            return out
        if not keys:  # (the import target fails rows without an identity value before this)
            raise ValueError("resolving profiles needs at least one identity key column")
        self.ensure_project(project_id)
        if write:
            self.ensure_columns(project_id, props)
        staged = self._stage(rows)
        try:
            if self._all_new(project_id, staged, keys):
                if write:
                    self._each_row_new(project_id, staged, keys, props, key)
            else:
                self._tokens(project_id, staged, keys, insert_only, out)
                if write:
                    self._resolve(project_id, staged, len(keys), props, user_props, key)
            self._drop_temps()
        finally:  # (after an error the transaction is rolled back, its temporary tables too)
            self._unstage(staged)
        out.imported = rows.num_rows - len(out.failures)
        return out

    def resolve_events(
        self,
        project_id: int,
        rows: Any,
        keys: Sequence[int],
        key_props: Sequence[Property],
        event_props: Sequence[Property],
        user_props: Sequence[Property],
        insert_only: bool,
        write: bool,
        key: str | None = None,
    ) -> ImportOutcome:
        out = ImportOutcome()
        if rows.num_rows == 0:
            return out
        if not keys:
            raise ValueError("resolving events needs at least one identity key column")
        self.ensure_project(project_id)
        if write:
            self.ensure_columns(project_id, [*key_props, *event_props])
        staged = self._stage(rows)
        try:
            if insert_only:
                self._screen_events(project_id, staged, out)
            if write:
                if not out.failures and self._all_new(project_id, staged, keys):
                    self._each_row_new(project_id, staged, keys, key_props, key)
                else:
                    self._tokens(project_id, staged, keys, False, out)
                    self._resolve(project_id, staged, len(keys), key_props, user_props, key)
                self._write_events(project_id, staged, event_props)
            self._drop_temps()
        finally:
            self._unstage(staged)
        out.imported = rows.num_rows - len(out.failures)
        return out
