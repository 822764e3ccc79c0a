"""The analytic store interface.

Engine differences are data (:class:`Capabilities`), not ``if engine == ...`` in shared code.
Writes go through one :class:`StoreWriter` at a time (one transaction where the engine has
them); reads may run from any thread.

Progress (the ingest LSN applied, an import job's batches) lives in the metadata DB, not here.
Every write is idempotent by a key (an event id, a user id, a batch key), and a batch's outcome
is kept here under its key (:meth:`StoreWriter.record_batch`), so a batch replayed after a crash
between "store written" and "progress recorded" changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store.tree import SqlDialect

Token = tuple[int, str]  # (identity key property id, normalized value)


@dataclass(frozen=True)
class Capabilities:
    """What shared code reads about an engine, the one place where engines differ (never the
    engine's name), modelled on dlt's destination capabilities: its SQL (:class:`SqlDialect`:
    the sqlglot dialect and how each operation of a segment's neutral tree is written), its
    column types, and how it runs writes."""

    name: str
    sql: SqlDialect
    column_types: dict[PropertyType, str]
    # ---- writes: transactions, keyed writes, isolation ----------------------------------
    # Several statements (and DDL) commit or roll back as one. With them, a batch's marker
    # (StoreWriter.record_batch) commits in the transaction of the rows it describes; without,
    # it is written after them, and each write is idempotent by its key, so a batch replayed
    # between the two changes nothing (docs/architecture.md, failure model).
    transactions: bool = True
    # How a keyed write meets the stored row: "merge" updates it in place (MERGE, ON CONFLICT);
    # "version" inserts a new version of the row, of which the engine keeps the latest by key
    # (ClickHouse's ReplacingMergeTree).
    upsert: Literal["merge", "version"] = "merge"
    # How projects are kept apart: tables of their own ("tables") or a project column in
    # shared tables ("column").
    isolation: Literal["tables", "column"] = "tables"
    # Store columns added in one write turn: an import adds a file's new columns a few turns
    # at a time before the batch that needs them.
    columns_per_transaction: int = 64
    # Whether text may hold the character U+0000 (PostgreSQL's cannot): where it may not, a
    # record holding one is refused before it is acknowledged, and an imported row fails.
    text_nul: bool = True


@dataclass(frozen=True)
class Budget:
    """What one segment query may spend: seconds of wall time, bytes of working memory."""

    seconds: float
    memory_bytes: int


class QueryError(Exception):
    """A query the store could not run (the engine's message, first line): a user's query
    that does not bind, or data it cannot cast."""


class OverBudget(Exception):
    """A query stopped for spending more than its :class:`Budget` allows."""

    def __init__(self, resource: str) -> None:  # "time" | "memory"
        super().__init__(f"over its {resource} budget")
        self.resource = resource


# Columns of a segment query's result, in this order.
SEGMENT_ROWS = pa.schema([("user_id", pa.int64()), ("tag_value", pa.string())])


@dataclass
class ProfileRows:
    """Profile changes: only the columns a row carries are updated (None leaves a value)."""

    user_ids: list[int] = field(default_factory=list)
    touched_at: list[int] = field(default_factory=list)  # epoch µs
    values: list[dict[int, Any]] = field(default_factory=list)  # property id -> value
    # The ingest log position of the last record folded into each row (empty: not from the
    # log): what a store without transactions keeps per profile to tell a replay
    # (:meth:`StoreWriter.profile_stamps`). A position is the record's frame LSN shifted
    # left by 32 bits plus its index within the frame (a frame holds a request's records).
    positions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass
class EventRows:
    event_ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # epoch µs, UTC
    received: list[int] = field(default_factory=list)
    user_ids: list[int] = field(default_factory=list)
    values: list[dict[int, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_ids)


@dataclass
class ImportOutcome:
    """What a set-based profile import did; failures and warnings are keyed by row number."""

    imported: int = 0
    failures: dict[int, str] = field(default_factory=dict)
    warnings: dict[int, str] = field(default_factory=dict)


def survivors(merges: dict[int, int]) -> dict[int, int]:
    """Each loser of ``merges`` with the survivor it ends with, following chains.

    >>> survivors({3: 2, 2: 1, 5: 4})
    {3: 1, 2: 1, 5: 4}
    """
    out = {}
    for loser in merges:
        survivor, seen = merges[loser], {loser}
        while survivor in merges and survivor not in seen:  # (a cycle stops where it closes)
            seen.add(survivor)
            survivor = merges[survivor]
        out[loser] = survivor
    return out


class StoreWriter(ABC):
    """One write transaction."""

    @abstractmethod
    def ensure_project(self, project_id: int) -> None: ...

    @abstractmethod
    def ensure_columns(self, project_id: int, props: Iterable[Property]) -> None: ...

    @abstractmethod
    def allocate_user_ids(self, project_id: int, count: int, key: str | None = None) -> int:
        """Reserve ``count`` new user ids; returns the first. Ids are never reused.

        With ``key`` (a batch's), a later call with the same key and no larger ``count``
        returns the ids the first call reserved: a replayed batch gives its new users the same
        ids as its first attempt did."""

    @abstractmethod
    def lookup_identities(self, project_id: int, tokens: Sequence[Token]) -> dict[Token, int]: ...

    @abstractmethod
    def insert_identities(
        self, project_id: int, tokens: Sequence[Token], user_ids: Sequence[int]
    ) -> None: ...

    @abstractmethod
    def merge_users(
        self, project_id: int, merges: dict[int, int], user_props: Sequence[Property]
    ) -> None:
        """Move every loser's identities, events and properties to its survivor (loser -> survivor).

        Where both have a property the most recently updated value wins. A survivor that is
        itself a loser passes everything on to its own survivor (:func:`survivors`)."""

    @abstractmethod
    def upsert_profiles(
        self, project_id: int, rows: ProfileRows, props: Sequence[Property]
    ) -> None: ...

    @abstractmethod
    def upsert_events(
        self, project_id: int, rows: EventRows, props: Sequence[Property]
    ) -> None: ...

    @abstractmethod
    def delete_users(self, project_id: int, user_ids: Sequence[int]) -> None: ...

    @abstractmethod
    def profile_values(
        self, project_id: int, user_ids: Sequence[int], props: Sequence[Property]
    ) -> dict[int, dict[int, Any]]:
        """The stored values of ``props`` (non-null ones only) of each of ``user_ids`` that has
        a profile: user id -> property id -> value, as :meth:`Store.profile` reads them."""

    def profile_stamps(self, project_id: int, user_ids: Sequence[int]) -> dict[int, int]:
        """The ingest log position of the last record folded into each of ``user_ids``'s
        profiles (:attr:`ProfileRows.positions`), where the store keeps it.

        A store without transactions writes a flush's rows before its marker: a batch
        replayed after a crash in between finds its records' folds (``user_add``,
        ``user_append``) already in the profiles these positions cover, and leaves them out.
        A store with transactions commits rows and marker together and never replays a
        written record: it keeps none (an empty answer)."""
        return {}

    @abstractmethod
    def clear_profile_values(
        self, project_id: int, clears: Sequence[tuple[Property, Sequence[int]]]
    ) -> None:
        """Set each property to null in the profiles of its users."""

    @abstractmethod
    def clear_event_properties(self, project_id: int, event_ids: Sequence[str]) -> None:
        """Set every property of the named events to null (before they are written anew)."""

    @abstractmethod
    def set_checkpoint(self, name: str, value: int) -> None:
        """Keep a number under ``name``: a property of the store (its deployment id) or the
        marker of a stream of batches (the highest ingest LSN the store holds)."""

    @abstractmethod
    def checkpoint_for_update(self, name: str) -> int:
        """The number kept under ``name`` (0 if none), read in this turn and, where several
        processes write to the store, held until the turn ends: another turn asking for it
        waits and then reads what this one set. A stream's writer that may overlap with
        another (a shared queue's new leader and the one it replaced) reads its marker so
        and skips what the store holds already."""

    @abstractmethod
    def record_batch(self, key: str, outcome: bytes) -> None:
        """Keep a batch's outcome under its key: written in the transaction of the batch's
        rows where the engine has transactions, else after them. A batch replayed after a crash
        finds it (:meth:`Store.batch_outcome`) and reports it instead of writing again."""

    @abstractmethod
    def forget_batches(self, prefix: str) -> None:
        """Drop the outcomes and the id reservations of the batches whose keys begin with
        ``prefix`` (once their progress is recorded and no replay can need them)."""

    @abstractmethod
    def existing_event_ids(self, project_id: int, event_ids: Sequence[str]) -> set[str]: ...

    @abstractmethod
    def existing_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str]
    ) -> set[str]: ...

    @abstractmethod
    def upsert_documents(
        self, project_id: int, collection_id: int, ids: Sequence[str], docs: Sequence[str]
    ) -> None:
        """Insert or replace documents (JSON text) of a collection by their ``_id``."""

    @abstractmethod
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
        """Match and upsert a batch of profile rows, set-based.

        ``rows`` is an Arrow table: ``_row`` (row number), ``_lookup`` (the normalised lookup
        value, or a user id when ``lookup_key`` is None), ``_k<key id>`` (normalised values of
        other identity keys), ``_touched`` and one column per property in ``props``. Within the
        batch the last row of a lookup value wins (insert-only: the first, the others fail).
        A row matching no profile creates one (not when looking up by user id: it fails); an
        existing match fails an insert-only row. Other identity values are linked to the
        profile unless another profile holds them (a warning). With ``list_id``, every imported
        profile is put on that static list. With ``write`` False nothing is written: only the
        failures are reported. New profiles take ids reserved under ``key`` (the batch's), so
        that a replay gives them the same ids.
        """

    @abstractmethod
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
        """Resolve and upsert a batch of profile rows matched by every identity key, set-based,
        as the single-record API resolves records (``docs/architecture.md``, "Identity
        resolution").

        ``rows`` is an Arrow table: ``_row`` (row number), ``_k<key id>`` for each of ``keys``
        (the row's normalised value of that identity key, null when it has none; every row
        has at least one), ``_touched`` and one column per property in ``props``. Rows that
        share an identity value, directly or through a stored user, are one person; a person
        matching no user becomes a new user (ids reserved under ``key``, the batch's), one
        matching several stored users merges them into the lowest id (``user_props``: every user
        property, which the merge carries over). Each person's profile
        takes, property by property, the value of its last row that has one. Insert-only: a
        row holding a stored value, or a value of an earlier row of the batch, fails. With
        ``write`` False nothing is written: only the failures are reported.
        """

    @abstractmethod
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
        """Resolve and upsert a batch of event rows, set-based, as the single-record API
        applies a batch of event records.

        ``rows`` is an Arrow table: ``_row``, ``_k<key id>`` and ``_touched`` as for
        :meth:`resolve_profiles`; one column per identity key property in ``key_props`` (the
        values the person's profile takes, as an event record's identity values); and
        ``event_id``, ``event_name``, ``event_time`` and one column per property in
        ``event_props``. People are resolved as :meth:`resolve_profiles` resolves them (no row
        fails for its identities). One event per ``event_id``: rows sharing one make one event
        with the name, time and person of the last, each property's value from the last row
        that has one; a stored event with that id is updated the same way (a null leaves its
        value). Insert-only: a row whose ``event_id`` is stored, or repeats an earlier row's,
        fails. With ``write`` False nothing is written: only the failures are reported.
        """

    # ---- segments --------------------------------------------------------------------
    @abstractmethod
    def write_segment(
        self, project_id: int, segment_id: int, version: int, query: exp.Select
    ) -> int:
        """Store the rows of ``query`` (``user_id, tag_value``: a neutral tree over the
        logical tables of :mod:`opencdp.store.tree`, which the store scopes to the project
        and renders) as ``version`` of the segment's members, keep the previous version,
        drop older ones; returns the number of members."""

    @abstractmethod
    def write_segment_rows(
        self, project_id: int, segment_id: int, version: int, rows: pa.Table
    ) -> int:
        """Like :meth:`write_segment`, from rows (:data:`SEGMENT_ROWS`): a user given twice
        keeps the last row, and users that no longer exist (merged or deleted since the rows
        were computed) are left out."""

    @abstractmethod
    def delete_segment(self, project_id: int, segment_id: int) -> None: ...

    @abstractmethod
    def existing_users(self, project_id: int, user_ids: Sequence[int]) -> set[int]: ...

    @abstractmethod
    def match_property(
        self, project_id: int, prop: Property, values: Sequence[Any]
    ) -> dict[Any, list[int]]:
        """The users whose property ``prop`` equals each of ``values`` (typed)."""


class Store(ABC):
    capabilities: Capabilities

    @abstractmethod
    def writer(self) -> AbstractContextManager[StoreWriter]:
        """A write transaction: committed on normal exit, rolled back on an exception."""

    @abstractmethod
    def checkpoint(self, name: str) -> int:
        """The number kept under ``name`` (:meth:`StoreWriter.set_checkpoint`), 0 if none."""

    @abstractmethod
    def batch_outcome(self, key: str) -> bytes | None:
        """The outcome a batch recorded (:meth:`StoreWriter.record_batch`), or None when the
        store does not hold the batch."""

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by this store, is a passing condition (I/O, a full disk,
        a conflict, memory) that a later retry can get past, rather than something wrong
        with the data written. The store recovers by itself once the condition is gone."""
        return False

    @abstractmethod
    def find_user(self, project_id: int, token: Token) -> int | None: ...

    @abstractmethod
    def profile(
        self, project_id: int, user_id: int, props: Sequence[Property]
    ) -> dict[str, Any] | None:
        """``{"user_id", "created_at", "updated_at", "values": {property id: value}}``."""

    @abstractmethod
    def identities(self, project_id: int, user_id: int) -> list[Token]: ...

    @abstractmethod
    def event_count(self, project_id: int, user_id: int) -> int: ...

    @abstractmethod
    def latest_events(
        self, project_id: int, user_id: int, limit: int, props: Sequence[Property]
    ) -> list[dict[str, Any]]: ...

    @abstractmethod
    def counts(self, project_id: int) -> dict[str, int]: ...

    @abstractmethod
    def list_members(self, project_id: int, list_id: int, limit: int, after: int) -> list[int]:
        """User ids on a static list, ascending, after ``after`` (paging)."""

    @abstractmethod
    def document(self, project_id: int, collection_id: int, doc_id: str) -> str | None: ...

    @abstractmethod
    def document_count(self, project_id: int, collection_id: int) -> int: ...

    # ---- exports ---------------------------------------------------------------------
    # The export queries name every column themselves: fixed names for the record's own
    # fields, and a property's physical column (``p_<id>``) for its value as JSON text
    # (null where there is none; whole numbers within ±2^53 as integers, datetimes as epoch
    # milliseconds, lists as arrays). Times are epoch milliseconds (BIGINT), UTC.
    @abstractmethod
    def export_events(
        self,
        project_id: int,
        props: Sequence[Property],
        start: datetime,
        end: datetime,
        names: Sequence[str] | None,
        exclude: Sequence[str] | None,
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The events received in ``[start, end)`` (UTC), streamed in ``received_at`` order,
        with ``names`` only or without ``exclude``: ``event_id, event_name, time, send_time,
        user_id``, with ``login`` (a user property) its user's value of it as text in a column
        ``login``, then the properties of ``props`` the store has a column for."""

    @abstractmethod
    def export_profiles(
        self,
        project_id: int,
        props: Sequence[Property],
        start: datetime,
        end: datetime,
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The profiles changed in ``[start, end)`` (UTC) by user id: ``user_id, created,
        updated`` (and ``login``), then the properties of ``props``, like
        :meth:`export_events`."""

    @abstractmethod
    def received_counts(
        self, project_id: int, start: datetime, end: datetime
    ) -> tuple[dict[str | None, int], int]:
        """How many events were received in ``[start, end)`` (UTC) by event name, and how many
        profiles changed in it: what :meth:`export_events` and :meth:`export_profiles` would
        stream, counted without reading the rows."""

    @abstractmethod
    def export_members(
        self,
        project_id: int,
        versions: Sequence[tuple[int, int]],
        props: Sequence[Property],
        login: Property | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """``segment_id, version, user_id, tag_value`` (and ``login``) of the given (segment,
        version)s, then the member's current values of the user properties ``props``
        (identity keys), like :meth:`export_events`."""

    # ---- segments --------------------------------------------------------------------
    # A segment query is a neutral tree (:mod:`opencdp.store.tree`) over the logical tables
    # ``users``, ``events`` and ``lists``: the store scopes it to the project (its own
    # physical tables) and renders it in its dialect; an operation its dialect lacks is a
    # ``CdpError`` (unsupported), an engine's error a :class:`QueryError`.
    @abstractmethod
    def pattern_error(self, pattern: str) -> str | None:
        """Why this store's regular-expression engine cannot run ``pattern`` (the engine's
        reason), or None when it can."""

    @abstractmethod
    def count_query(self, project_id: int, query: exp.Select, budget: Budget) -> int:
        """How many rows a compiled segment query returns (a size preview; writes nothing).

        Raises :class:`OverBudget` or :class:`QueryError`."""

    @abstractmethod
    def segment_rows(self, project_id: int, query: exp.Select, budget: Budget) -> pa.Table:
        """The rows (:data:`SEGMENT_ROWS`) of a compiled segment query, read from a snapshot
        without holding up writers. Raises :class:`OverBudget` or :class:`QueryError`."""

    @abstractmethod
    def dump_table(
        self,
        project_id: int,
        logical: str,
        columns: Sequence[tuple[str, str]],
        path: Path,
        budget: Budget,
        empty: bool = False,
    ) -> None:
        """Write columns of the project's ``users`` or ``events`` (``logical``) to an Arrow
        IPC file at ``path``, as ``(stored column, name in the file)`` pairs: the one way a
        SQL segment's sandbox sees data. With ``empty``, the schema only."""

    @abstractmethod
    def segment_members(
        self, project_id: int, segment_id: int, version: int, limit: int, after: int
    ) -> list[tuple[int, str | None]]:
        """``(user_id, tag_value)`` of one version, by ascending user id after ``after``."""

    @abstractmethod
    def segment_changes(
        self, project_id: int, segment_id: int, version: int, limit: int
    ) -> tuple[list[int], list[int]]:
        """Who entered and who left at ``version`` (against ``version - 1``)."""

    @abstractmethod
    def user_segments(self, project_id: int, user_id: int) -> list[tuple[int, int, str | None]]:
        """``(segment_id, version, tag_value)`` of every stored version holding the user."""

    @abstractmethod
    def close(self) -> None: ...
