"""Where imported rows go: profiles (upsert by a lookup field) and events (backfill).

A target turns a batch of text rows into typed columns checked against the catalog, and hands
them to the store as a whole: profile imports are one set-based match-and-upsert per batch;
events go through the same identity resolution and event upsert as the single-record API.

An import keeps the identity keys the project had when it was submitted (``identity_keys`` of
its spec), as a record keeps those it was received with: changing the keys applies to
imports submitted afterwards. An import whose key was deleted since fails, naming it.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from opencdp.catalog.model import Property, Schema
from opencdp.catalog.service import Catalog
from opencdp.catalog.types import (
    PropertyType,
    check_string,
    coerce,
    exact_number,
    public_number,
)
from opencdp.config import Limits
from opencdp.errors import CdpError, Code, invalid
from opencdp.imports.columns import coerce_column, infer
from opencdp.imports.readers import RowBatch, too_many_columns
from opencdp.imports.spec import IDENTITY, USER_ID, ImportSpec, Kind, Membership
from opencdp.ingest.records import MAX_ID
from opencdp.store.base import ImportOutcome, StoreWriter


@dataclass
class BatchResult:
    """What a target did with a batch: rows written, and per-row failures and warnings."""

    imported: int = 0
    failures: dict[int, str] = field(default_factory=dict)  # index in the batch -> reason
    warnings: dict[int, str] = field(default_factory=dict)


@dataclass
class Prepared:
    """A batch made ready for the store by :meth:`Target.prepare`: typed, validated against
    the catalog, with the problems found so far in ``res``."""

    batch: RowBatch
    res: BatchResult = field(default_factory=BatchResult)
    data: Any = None  # the target's own form of the batch
    # The properties whose store columns the batch writes (the import adds the missing ones
    # before the batch's transaction, a few at a time).
    columns: list[Property] = field(default_factory=list)
    # The batch's key (its job and number): what the store reserves its new user ids under.
    key: str | None = None


class Target(ABC):
    # Rows per batch: set-based targets gain from large batches (each batch is a few scans of
    # the stored table); record-based ones hold a Python object per row.
    batch_rows = 50_000
    # Text per batch (the batch's Arrow columns): whatever the shape of the rows, a batch and
    # what a target makes of it stay within a few times this.
    batch_bytes = 16 << 20
    # Whether prepare() is vectorized (Arrow compute, GIL released) and so gains from running
    # in a thread of its own, one batch ahead of the writes.
    read_ahead = False
    # The catalog table the file's columns are properties of, and the columns that are not.
    table = "user"
    reserved: frozenset[str] = frozenset()
    # Whether prepare() reads a JSON batch's records themselves (``RowBatch.objects``), not only
    # its text columns and their first_type.
    needs_objects = False

    def __init__(
        self,
        catalog: Catalog,
        limits: Limits,
        project_id: int,
        insert_only: bool,
        keys: dict[str, int] | None = None,
    ):
        self.catalog = catalog
        self.limits = limits
        self.project_id = project_id
        self.insert_only = insert_only
        self.tz = catalog.project(project_id).tz
        schema = catalog.schema(project_id)
        # The identity keys (name -> property id) this import keeps from start to end.
        self.keys = (
            {n: p.id for n, p in schema.identity_keys.items()} if keys is None else dict(keys)
        )
        self._pinned: tuple[Schema, Schema] | None = None

    def _schema(self) -> Schema:
        """The project's schema as this import sees it: as it is now, but with the identity
        keys the import was submitted with."""
        schema = self.catalog.schema(self.project_id)
        cached = self._pinned
        if cached is not None and cached[0] is schema:
            return cached[1]
        for name, pid in self.keys.items():
            prop = schema.user.get(name)
            if prop is None or prop.id != pid:
                raise CdpError(
                    Code.CONFLICT,
                    f"{name}: this identity key was deleted after the import was submitted",
                    name,
                )
        user = {
            n: p
            if p.is_identity == (n in self.keys)
            else dataclasses.replace(p, is_identity=n in self.keys)
            for n, p in schema.user.items()
        }
        pinned = Schema(self.project_id, user, schema.event)
        self._pinned = (schema, pinned)
        return pinned

    def check_columns(self, columns: list[str]) -> None:
        """Refuse a file whose columns pass the limits: more columns than a record may have
        properties, a name longer than a property's, or more new properties than the project
        (or collection) may still take. Called with a delimited file's header before any row
        is read, and at submission."""
        limits = self.limits
        if len(columns) > limits.max_properties:
            raise too_many_columns(len(columns), limits.max_properties)
        for i, name in enumerate(columns, 1):
            if len(name) > limits.max_name_length:
                raise CdpError(
                    Code.LIMIT_EXCEEDED,
                    f"file: the name of column {i} ({name[:40]!r}…) has {len(name)} "
                    f"characters, at most {limits.max_name_length} are allowed",
                    "file",
                )
        new, room, what, per = self._new_columns(columns)
        if len(new) > room:
            raise CdpError(
                Code.LIMIT_EXCEEDED,
                f"file: {len(new)} columns would be new {what}, but the {per} may take only "
                f"{room} more (at most {self.catalog.max_properties} {what} per {per})",
                "file",
            )

    def _new_columns(self, columns: list[str]) -> tuple[list[str], int, str, str]:
        """The columns that would become new properties, how many more the project may take,
        and what they are and whose (for the message)."""
        if self.catalog.project(self.project_id).strict_schema:
            return [], 0, "", ""
        schema = self._schema()
        known = schema.table(self.table)
        new = [
            n
            for n in columns
            if n not in self.reserved and n not in known and n not in schema.identity_keys
        ]
        return new, self.catalog.property_room(self.project_id), "properties", "project"

    @abstractmethod
    def prepare(self, batch: RowBatch) -> Prepared:
        """Type and validate the batch without touching the store (an import prepares the
        next batch while the store writes this one)."""

    @abstractmethod
    def apply(self, w: StoreWriter, p: Prepared) -> BatchResult:
        """Write the batch's good rows; report the others."""

    @abstractmethod
    def check(self, w: StoreWriter, p: Prepared) -> BatchResult:
        """Report the rows :meth:`apply` would refuse, writing nothing."""

    def _columns(
        self, schema: Schema, table: str, batch: RowBatch, reserved: set[str], res: BatchResult
    ) -> dict[str, Property]:
        """The batch's columns as catalog properties; new ones are added with an inferred type
        (or, in a strict project, ignored with a warning on each row that has a value)."""
        known = schema.table(table)
        wanted: dict[str, PropertyType] = {}
        strict = self.catalog.project(self.project_id).strict_schema
        for name in batch.columns:
            if name in reserved or name in known or name in schema.identity_keys:
                continue
            if strict:
                present = pc.is_valid(batch.rows.column(name))
                for i in pc.indices_nonzero(present).to_pylist():
                    res.warnings.setdefault(i, f"{name}: unknown column ignored")
                continue
            if len(name) > self.limits.max_name_length or not name.strip():
                raise invalid("file", f"column name {name[:80]!r} is not a valid property name")
            if batch.json:
                # JSON records: typed by their JSON values (see RowBatch.first_type); a value
                # that cannot take the type fails its row, naming the column.
                wanted[name] = batch.first_type(name)
            else:
                wanted[name] = infer(batch.rows.column(name))
        if wanted:
            self.catalog.ensure_properties(self.project_id, table, wanted)
            known = self._schema().table(table)
        return {n: known[n] for n in batch.columns if n in known and n not in reserved}


def make_target(
    catalog: Catalog, limits: Limits, project_id: int, spec: ImportSpec, file_tag: str = ""
) -> Target:
    """The target of an import; ``file_tag`` (the start of the file's digest) names the
    documents of a file whose rows have no ``_id``."""
    keys = spec.identity_keys
    insert_only = spec.insert_only
    if spec.kind is Kind.PROFILES and spec.lookup == IDENTITY:
        return UsersByIdentityTarget(catalog, limits, project_id, insert_only, keys)
    if spec.kind is Kind.PROFILES and spec.membership is not None:
        return MembershipTarget(
            catalog, limits, project_id, insert_only, spec.lookup, spec.membership, keys
        )
    if spec.kind is Kind.PROFILES:
        return ProfilesTarget(
            catalog, limits, project_id, insert_only, spec.lookup, spec.list_id, keys
        )
    if spec.kind is Kind.DOCUMENTS:
        if spec.collection is None:
            raise CdpError(Code.MISSING_PARAMETER, "collection: is required", "collection")
        return CollectionTarget(
            catalog, limits, project_id, insert_only, spec.collection, spec, file_tag, keys
        )
    return EventsTarget(catalog, limits, project_id, insert_only, keys)


def identity_keys(catalog: Catalog, project_id: int) -> dict[str, int]:
    """The project's identity keys (name -> property id), as an import keeps them."""
    return {n: p.id for n, p in catalog.schema(project_id).identity_keys.items()}


def _all_objects(values: pa.Array) -> bool:
    """Whether every value is the JSON text of an object (a nested object of a JSON file)."""
    present = pc.drop_null(values)
    if len(present) == 0 or not pc.all(pc.starts_with(present, "{")).as_py():
        return False
    for text in present.to_pylist():
        try:
            if not isinstance(orjson.loads(text), dict):
                return False
        except orjson.JSONDecodeError:
            return False
    return True


def check_lookup_field(
    schema: Schema, lookup: str, insert_only: bool, field: str = "lookup_field"
) -> None:
    """Refuse a lookup field that cannot identify a profile (before a job is queued)."""
    if lookup == IDENTITY:
        return
    if lookup == USER_ID:
        if insert_only:
            raise invalid(field, "insert-only imports look profiles up by an identity key")
        return
    if lookup not in schema.identity_keys:
        keys = ", ".join([*schema.identity_keys, USER_ID])
        raise invalid(field, f"{lookup!r} is not an identity key (one of {keys})")


def _trimmed(values: pa.Array) -> pa.Array:
    """Trimmed, and null when empty."""
    out = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(out, ""), pa.scalar(None, pa.string()), out)


def _normalize(trimmed: pa.Array, key: str) -> pa.Array:
    """Identity values (already :func:`_trimmed`) as ``identity.normalize`` makes them:
    e-mail lower-cased."""
    return pc.utf8_lower(trimmed) if "email" in key.lower() else trimmed


class _Resolved(Target):
    """A target whose batches the store writes whole; its failures and warnings come back by
    row number."""

    @abstractmethod
    def _resolve(self, w: StoreWriter, p: Prepared, write: bool) -> ImportOutcome:
        """The store's outcome for the batch (written with ``write``, else only checked)."""

    def _imported(self, p: Prepared, outcome: ImportOutcome) -> int:
        """The rows imported: the batch's but those that failed, here or in the store."""
        return int(p.batch.rows.num_rows) - len(p.res.failures)

    def _run(self, w: StoreWriter, p: Prepared, write: bool) -> BatchResult:
        batch, res = p.batch, p.res
        outcome = self._resolve(w, p, write)
        if outcome.failures or outcome.warnings:
            index = {n: i for i, n in enumerate(batch.row_numbers.to_pylist())}
            for row, reason in outcome.failures.items():
                res.failures.setdefault(index[row], reason)
            for row, reason in outcome.warnings.items():
                res.warnings.setdefault(index[row], reason)
        res.imported = self._imported(p, outcome)
        return res

    def apply(self, w: StoreWriter, p: Prepared) -> BatchResult:
        return self._run(w, p, True)

    def check(self, w: StoreWriter, p: Prepared) -> BatchResult:
        return self._run(w, p, False)


class ProfilesTarget(_Resolved):
    batch_rows = 250_000
    batch_bytes = 32 << 20
    read_ahead = True
    reserved = frozenset({USER_ID})

    def __init__(
        self,
        catalog: Catalog,
        limits: Limits,
        project_id: int,
        insert_only: bool,
        lookup: str,
        list_id: int | None = None,
        keys: dict[str, int] | None = None,
    ) -> None:
        super().__init__(catalog, limits, project_id, insert_only, keys)
        check_lookup_field(self._schema(), lookup, insert_only)
        self.lookup = lookup
        self.list_id = list_id

    def prepare(self, batch: RowBatch) -> Prepared:
        p = Prepared(batch)
        p.data = self._typed(batch, p.res)
        p.columns = p.data[1]
        return p

    def _typed(
        self, batch: RowBatch, res: BatchResult
    ) -> tuple[pa.Table, list[Property], int | None, list[int]]:
        """The batch as typed columns, its properties, and the ids of its lookup key and of
        the other identity keys among its columns (as the import keeps them)."""
        if self.lookup not in batch.columns:
            raise invalid("file", f"the lookup field {self.lookup!r} is not a column of the file")
        schema = self._schema()
        props = self._columns(schema, "user", batch, {USER_ID}, res)
        schema = self._schema()
        n = batch.rows.num_rows
        data: dict[str, pa.Array] = {"_row": batch.row_numbers}
        trimmed: dict[str, pa.Array] = {}

        def identity(name: str) -> pa.Array:
            if name not in trimmed:
                trimmed[name] = _trimmed(batch.rows.column(name).combine_chunks())
            return trimmed[name]

        if self.lookup == USER_ID:
            problems: dict[int, str] = {}
            raw_lookup = batch.rows.column(self.lookup).combine_chunks()
            ids = coerce_column(
                PropertyType.NUMBER, raw_lookup, USER_ID, self.limits, self.tz, problems, {}
            )
            whole = pc.and_(pc.is_valid(ids), pc.equal(pc.round(ids), ids))
            for i in pc.indices_nonzero(pc.invert(pc.fill_null(whole, False))).to_pylist():
                res.failures.setdefault(i, f"{USER_ID}: expected a user id")
            data["_lookup"] = pc.cast(pc.if_else(whole, ids, None), pa.int64())
        else:
            lookup = _normalize(identity(self.lookup), self.lookup)
            for i in pc.indices_nonzero(pc.is_null(lookup)).to_pylist():
                res.failures.setdefault(i, f"{self.lookup}: the lookup field is empty")
            data["_lookup"] = lookup
        for name, prop in schema.identity_keys.items():
            if name in batch.columns and name != self.lookup:
                data[f"_k{prop.id}"] = _normalize(identity(name), name)
        table = _profile_rows(
            data, props, res, n, self.limits, self.tz,
            lambda name, prop: identity(name)
            if prop.is_identity
            else batch.rows.column(name).combine_chunks(),
        )  # fmt: skip
        key = None if self.lookup == USER_ID else schema.identity_keys[self.lookup].id
        others = [
            p.id for n, p in schema.identity_keys.items() if n in batch.columns and n != self.lookup
        ]
        return table, list(props.values()), key, others

    def _resolve(self, w: StoreWriter, p: Prepared, write: bool) -> ImportOutcome:
        table, props, key, others = p.data
        return w.import_profiles(
            self.project_id, table, key, others, props, self.insert_only, write, self.list_id,
            p.key,
        )  # fmt: skip

    def _imported(self, p: Prepared, outcome: ImportOutcome) -> int:
        return outcome.imported


EVENT_NAME = ("event", "event_name")
EVENT_RESERVED = {"event", "event_name", "event_id", "create_time", "event_time"}
_CONTROL_CHARS = "[\\x00-\\x1f\\x7f]"


class EventsTarget(_Resolved):
    """Events, typed column by column as the single-record API validates an event record (the
    same checks in the same order, so a row fails with the reason its record would), and
    resolved and upserted by the store for the whole batch (:meth:`StoreWriter.resolve_events`).

    A row's identity key values identify its person and are set on the person's profile;
    ``event`` (or ``event_name``) names the event, ``event_id`` identifies it, ``create_time``
    (or ``event_time``) dates it, and the other columns are event properties.
    """

    table = "event"
    reserved = frozenset(EVENT_RESERVED)
    # Large batches: a batch's cost is mostly per person it names (resolved, profile
    # updated), and the same people come back in every batch of an events file.
    batch_rows = 1_000_000
    batch_bytes = 128 << 20
    read_ahead = True

    def prepare(self, batch: RowBatch) -> Prepared:
        p = Prepared(batch)
        p.data = self._typed(batch, p.res)
        p.columns = [*p.data[1], *p.data[2]]
        return p

    def _typed(
        self, batch: RowBatch, res: BatchResult
    ) -> tuple[pa.Table, list[Property], list[Property]]:
        """The batch's good rows as typed columns, the identity key properties among its
        columns and its event properties."""
        schema = self._schema()
        props = self._columns(schema, "event", batch, EVENT_RESERVED, res)
        schema = self._schema()
        n, limits, fails = batch.rows.num_rows, self.limits, res.failures

        def column(name: str) -> pa.Array:
            if name in batch.columns:
                return batch.rows.column(name).combine_chunks()
            return pa.nulls(n, pa.string())

        def fail(where: pa.Array, reason: str | Callable[[int], str]) -> None:
            where = pc.fill_null(where, False)
            if pc.any(where).as_py():
                for i in pc.indices_nonzero(where).to_pylist():
                    fails.setdefault(i, reason if isinstance(reason, str) else reason(i))

        # What a record of the row would hold as its properties: nothing at all fails it.
        held = [*props, *(k for k in schema.identity_keys if k in batch.columns)]
        held += [c for c in ("event_id", "create_time", "event_time") if c in batch.columns]
        anything = pa.repeat(False, n)
        for name in held:
            anything = pc.or_(anything, pc.is_valid(column(name)))
        fail(pc.invert(anything), "properties: is missing or empty")

        def raw_at(name: str, i: int) -> bool:
            return bool(batch.rows.column(name)[i].is_valid)

        # Its identities: at least one key present, and one of those not empty.
        data: dict[str, pa.Array] = {"_row": batch.row_numbers}
        trimmed: dict[str, pa.Array] = {}
        present = pa.repeat(False, n)
        some = pa.repeat(False, n)
        for name, prop in schema.identity_keys.items():
            if name in batch.columns:
                raw = column(name)
                trimmed[name] = _trimmed(raw)
                data[f"_k{prop.id}"] = _normalize(trimmed[name], name)
                present = pc.or_(present, pc.is_valid(raw))
                some = pc.or_(some, pc.is_valid(trimmed[name]))
        keys = ", ".join(schema.identity_keys)
        fail(pc.invert(present), f"properties: no identity key is present (identity keys: {keys})")
        fail(
            pc.invert(some),
            lambda i: (
                "properties: identity keys "
                + ", ".join(k for k in schema.identity_keys if k in trimmed and raw_at(k, i))
                + " are present but all empty"
            ),
        )

        # The event's name: the first of ``event``, ``event_name`` that is not empty.
        first, second = column("event"), column("event_name")
        name = pc.if_else(pc.fill_null(pc.greater(pc.utf8_length(first), 0), False), first, second)
        fail(
            pc.invert(
                pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(name)), 0), False)
            ),
            "event: required for events: the event name as a non-empty string",
        )
        fail(
            pc.or_(
                pc.greater(pc.utf8_length(name), limits.max_name_length),
                pc.match_substring_regex(name, _CONTROL_CHARS),
            ),
            f"event: at most {limits.max_name_length} printable characters",
        )
        data["event_name"] = name
        # Its id.
        raw_id = column("event_id")
        event_id = pc.utf8_trim_whitespace(raw_id)
        fail(pc.is_null(raw_id), "event_id: required for events")
        fail(pc.equal(event_id, ""), "event_id: must not be empty")
        fail(
            pc.greater(pc.utf8_length(event_id), MAX_ID),
            f"event_id: longer than {MAX_ID} characters",
        )
        data["event_id"] = event_id
        # Its time: ``create_time``, else ``event_time``.
        created = pc.coalesce(column("create_time"), column("event_time"))
        fail(pc.is_null(created), "create_time: required for events")
        data["event_time"] = coerce_column(
            PropertyType.DATETIME, created, "create_time", limits, self.tz, fails, res.warnings
        )
        # The person's identity values and the event's properties, in the file's order.
        typed = {
            n: p
            for n in batch.columns
            if (p := schema.identity_keys.get(n) or props.get(n)) is not None
        }
        table = _profile_rows(
            data, typed, res, n, limits, self.tz,
            lambda name, _: trimmed[name] if name in trimmed else column(name),
        )  # fmt: skip
        key_props = [p for n, p in typed.items() if n in schema.identity_keys]
        return table, key_props, list(props.values())

    def _resolve(self, w: StoreWriter, p: Prepared, write: bool) -> ImportOutcome:
        table, key_props, event_props = p.data
        return w.resolve_events(
            self.project_id, table, [k.id for k in key_props], key_props, event_props,
            list(self._schema().user.values()), self.insert_only, write, p.key,
        )  # fmt: skip


class UsersByIdentityTarget(_Resolved):
    """Profiles matched by every identity key they carry (users that turn out to be one are
    merged), as the single-record API does with ``type: user``: typed column by column and
    resolved by the store for the whole batch (:meth:`StoreWriter.resolve_profiles`)."""

    batch_rows = 250_000
    batch_bytes = 32 << 20
    read_ahead = True
    reserved = frozenset({"_id"})

    def prepare(self, batch: RowBatch) -> Prepared:
        p = Prepared(batch)
        p.data = self._typed(batch, p.res)
        p.columns = p.data[1]
        return p

    def _typed(self, batch: RowBatch, res: BatchResult) -> tuple[pa.Table, list[Property]]:
        """The batch's good rows as typed columns (each identity key's normalised values in
        ``_k<key id>``) and its properties; a row without an identity value fails as a
        record without one does."""
        schema = self._schema()
        props = self._columns(schema, "user", batch, {"_id"}, res)
        schema = self._schema()
        n = batch.rows.num_rows
        data: dict[str, pa.Array] = {"_row": batch.row_numbers}
        trimmed: dict[str, pa.Array] = {}
        has_value = pa.repeat(False, n)
        for name, prop in schema.identity_keys.items():
            if name in batch.columns:
                trimmed[name] = _trimmed(batch.rows.column(name).combine_chunks())
                values = _normalize(trimmed[name], name)
                data[f"_k{prop.id}"] = values
                has_value = pc.or_(has_value, pc.is_valid(values))
        keep = [n for n in batch.columns if n in props or n in schema.identity_keys]
        for i in pc.indices_nonzero(pc.invert(has_value)).to_pylist():
            res.failures[i] = self._no_identity(batch, keep, schema, i)
        table = _profile_rows(
            data, props, res, n, self.limits, self.tz,
            lambda name, _: trimmed[name]
            if name in trimmed
            else batch.rows.column(name).combine_chunks(),
        )  # fmt: skip
        return table, list(props.values())

    @staticmethod
    def _no_identity(batch: RowBatch, keep: list[str], schema: Schema, i: int) -> str:
        """Why row ``i``, which has no identity value, fails (as a record would)."""
        row = {c: batch.rows.column(c)[i].as_py() for c in keep}
        if all(v is None for v in row.values()):
            return "properties: is missing or empty"
        present = [k for k in schema.identity_keys if row.get(k) is not None]
        if not present:
            keys = ", ".join(schema.identity_keys)
            return f"properties: no identity key is present (identity keys: {keys})"
        return f"properties: identity keys {', '.join(present)} are present but all empty"

    def _resolve(self, w: StoreWriter, p: Prepared, write: bool) -> ImportOutcome:
        table, props = p.data
        schema = self._schema()
        keys = [k.id for n, k in schema.identity_keys.items() if n in p.batch.columns]
        return w.resolve_profiles(
            self.project_id, table, keys, props,
            list(schema.user.values()), self.insert_only, write, p.key,
        )  # fmt: skip


def _profile_rows(
    data: dict[str, pa.Array],
    props: dict[str, Property],
    res: BatchResult,
    n: int,
    limits: Limits,
    tz: tzinfo,
    column: Callable[[str, Property], pa.Array],
) -> pa.Table:
    """A profile batch for the store: ``data`` (row numbers, identity values) with each
    property's ``column`` typed (a value that does not fit fails its row), the time it was
    touched, and only the rows that did not fail."""
    for name, prop in props.items():
        data[prop.column] = coerce_column(
            prop.type, column(name, prop), name, limits, tz, res.failures, res.warnings
        )
    now = time.time_ns() // 1000
    data["_touched"] = pa.repeat(pa.scalar(now, pa.timestamp("us")), n)
    table = pa.table(data)
    if res.failures:
        table = table.filter(pa.array([i not in res.failures for i in range(n)]))
    return table


_MISSING: Any = object()  # a field a JSON document does not have (null is a value)


def _json_type(values: Iterable[Any]) -> PropertyType:
    """The catalog type of a new field of JSON documents: its first value's JSON type."""
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            return PropertyType.BOOL
        if isinstance(v, int | float | Decimal):
            return PropertyType.NUMBER
        if isinstance(v, list):
            return PropertyType.LIST
        if isinstance(v, dict):
            return PropertyType.OBJECT
        return PropertyType.STRING
    return PropertyType.STRING


def json_value(value: Any, name: str, limits: Limits) -> Any:
    """A JSON value of a document as stored: the same value and JSON type, checked against the
    limits; numbers a double cannot hold exactly are refused, never rounded."""
    if isinstance(value, str):
        return check_string(value, name, limits)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return exact_number(value, name)
    if isinstance(value, list | dict):
        _exact_nested(value, name)
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:
            raise invalid(name, "nested too deeply") from None
        if size > limits.max_string_bytes:
            raise invalid(name, f"value larger than {limits.max_string_bytes} bytes")
        return value
    raise invalid(name, f"unsupported value {value!r:.40}")


def _exact_nested(value: list[Any] | dict[str, Any], name: str) -> None:
    stack = [value]
    while stack:
        node = stack.pop()
        for v in node.values() if isinstance(node, dict) else node:
            if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
                exact_number(v, name)
            elif isinstance(v, list | dict):
                stack.append(v)


class CollectionTarget(Target):
    """Documents of a custom collection, keyed by their ``_id``.

    A row without ``_id`` gets one made from the file's digest and the row number, so that
    importing the same file again (or resuming it) replaces rather than duplicates.
    """

    needs_objects = True  # documents keep the JSON type of each value

    def __init__(
        self,
        catalog: Catalog,
        limits: Limits,
        project_id: int,
        insert_only: bool,
        name: str,
        spec: ImportSpec,
        file_tag: str = "",
        keys: dict[str, int] | None = None,
    ) -> None:
        super().__init__(catalog, limits, project_id, insert_only, keys)
        self.collection_id = catalog.collection(project_id, name)
        self.file_tag = file_tag[:16] or "row"
        # The fields whose values identify a document; without them, the key is the file's
        # first column (with ``first_column_key``) or ``_id``.
        self.dedupe = list(spec.key_fields)
        self.first_column = not self.dedupe and spec.first_column_key

    def check_columns(self, columns: list[str]) -> None:
        super().check_columns(columns)
        missing = [f for f in self.dedupe if f not in columns]
        if missing:
            raise invalid(
                "file",
                f"no column for the dedupe field(s) {', '.join(missing)} of this object: every "
                "record must name them",
            )

    def _new_columns(self, columns: list[str]) -> tuple[list[str], int, str, str]:
        if self.catalog.project(self.project_id).strict_schema:
            return [], 0, "", ""
        fields = self.catalog.collection_fields(self.collection_id)
        key = columns[0] if self.first_column and columns else "_id"
        new = [n for n in columns if n not in fields and n not in (key, "_id")]
        return new, self.catalog.collection_room(self.collection_id), "fields", "collection"

    def _fields(self, batch: RowBatch, key: str, res: BatchResult) -> dict[str, PropertyType]:
        """The collection's fields for this batch's columns; new ones are inferred (in a strict
        project: ignored, with a warning on each row that has a value)."""
        fields = self.catalog.collection_fields(self.collection_id)
        strict = self.catalog.project(self.project_id).strict_schema
        wanted: dict[str, PropertyType] = {}
        for name in batch.columns:
            if name in fields or name in (key, "_id"):
                continue
            if strict:
                present = pc.is_valid(batch.rows.column(name))
                for i in pc.indices_nonzero(present).to_pylist():
                    res.warnings.setdefault(i, f"{name}: unknown field ignored")
                continue
            if batch.objects is not None:
                wanted[name] = _json_type(o.get(name) for o in batch.objects)
                continue
            column = batch.rows.column(name).combine_chunks()
            ptype = infer(column)
            if ptype is PropertyType.STRING and _all_objects(column):
                ptype = PropertyType.OBJECT  # nested documents stay documents
            wanted[name] = ptype
        if wanted:
            fields = self.catalog.ensure_collection_fields(self.collection_id, wanted)
        return {n: fields[n] for n in batch.columns if n in fields and n not in (key, "_id")}

    def _docs(self, batch: RowBatch, res: BatchResult) -> tuple[str, dict[str, tuple[int, str]]]:
        docs: dict[str, tuple[int, str]] = {}
        numbers = batch.row_numbers.to_pylist()
        key = batch.columns[0] if self.first_column and batch.columns else "_id"
        fields = self._fields(batch, key, res)
        if batch.objects is not None:
            # JSON documents keep their own JSON types, value by value, as in the vendor's
            # document database: the field's catalog type only describes it.
            typed = {name: self._json_values(name, batch.objects, res) for name in fields}
        else:
            typed = {
                name: self._typed(name, ptype, batch.rows.column(name).combine_chunks(), res)
                for name, ptype in fields.items()
            }
        if self.dedupe:
            keys = self._dedupe_keys(batch, res)
        elif key in batch.columns:
            keys = batch.rows.column(key).to_pylist()
        else:
            keys = [None] * len(numbers)
        for i, key_value in enumerate(keys):
            if i in res.failures:
                continue
            if self.first_column and not key_value:
                res.failures[i] = f"{key}: the key field is empty"
                continue
            doc_id = str(key_value or f"{self.file_tag}-{numbers[i]}")
            if len(doc_id) > self.limits.max_string_bytes:
                res.failures[i] = f"{key}: too long"
                continue
            if doc_id in docs and self.insert_only:
                res.failures[i] = f"{key}: {doc_id!r} repeats an earlier row of the file"
                continue
            doc = {"_id": doc_id}
            if key != "_id":
                doc[key] = doc_id
            for name, values in typed.items():
                if values[i] is not _MISSING and (values[i] is not None or batch.objects):
                    doc[name] = values[i]
            docs[doc_id] = (i, orjson.dumps(doc, option=orjson.OPT_NAIVE_UTC).decode())
        return key, docs

    def _dedupe_keys(self, batch: RowBatch, res: BatchResult) -> list[str | None]:
        """Each row's document id: its dedupe field's value, or the JSON list of its values."""
        columns = [
            batch.rows.column(f).to_pylist() if f in batch.columns else [None] * batch.rows.num_rows
            for f in self.dedupe
        ]
        out: list[str | None] = []
        for i, values in enumerate(zip(*columns, strict=True)):
            empty = [f for f, v in zip(self.dedupe, values, strict=True) if not (v or "").strip()]
            if empty:
                res.failures.setdefault(i, f"{empty[0]}: a dedupe field of this object is empty")
                out.append(None)
            elif len(values) == 1:
                out.append(values[0].strip())
            else:
                out.append(orjson.dumps([v.strip() for v in values]).decode())
        return out

    def _json_values(self, name: str, objects: list[dict[str, Any]], res: BatchResult) -> list[Any]:
        out: list[Any] = []
        for i, o in enumerate(objects):
            if name not in o:
                out.append(_MISSING)
                continue
            try:
                out.append(json_value(o[name], name, self.limits))
            except CdpError as exc:
                res.failures.setdefault(i, exc.message)
                out.append(_MISSING)
        return out

    def _typed(
        self, name: str, ptype: PropertyType, values: pa.Array, res: BatchResult
    ) -> list[Any]:
        if ptype is not PropertyType.OBJECT:
            typed = coerce_column(
                ptype, values, name, self.limits, self.tz, res.failures, res.warnings
            )
            if ptype is PropertyType.NUMBER:  # whole numbers stay integers in the document
                return [None if v is None else public_number(v) for v in typed.to_pylist()]
            return list(typed.to_pylist())
        out: list[Any] = []
        for i, v in enumerate(values.to_pylist()):
            try:
                out.append(None if v is None else coerce(ptype, v, name, self.limits, self.tz))
            except CdpError as exc:
                res.failures.setdefault(i, exc.message)
                out.append(None)
        return out

    def prepare(self, batch: RowBatch) -> Prepared:
        p = Prepared(batch)
        p.data = self._docs(batch, p.res)
        return p

    def _valid(self, w: StoreWriter, p: Prepared) -> dict[str, tuple[int, str]]:
        key, docs = p.data
        if self.insert_only:
            for doc_id in w.existing_documents(self.project_id, self.collection_id, list(docs)):
                p.res.failures[docs.pop(doc_id)[0]] = f"{key}: {doc_id!r} already exists"
        return dict(docs)

    def apply(self, w: StoreWriter, p: Prepared) -> BatchResult:
        docs = self._valid(w, p)
        w.upsert_documents(
            self.project_id,
            self.collection_id,
            list(docs),
            [d for _, d in docs.values()],
        )
        p.res.imported = p.batch.rows.num_rows - len(p.res.failures)
        return p.res

    def check(self, w: StoreWriter, p: Prepared) -> BatchResult:
        self._valid(w, p)
        return p.res


class MembershipTarget(ProfilesTarget):
    """Profiles (found by the lookup field, created when new), each also recorded as a member
    of a group with a status (see :class:`~opencdp.imports.spec.Membership`)."""

    def __init__(
        self,
        catalog: Catalog,
        limits: Limits,
        project_id: int,
        insert_only: bool,
        lookup: str,
        membership: Membership,
        keys: dict[str, int] | None = None,
    ) -> None:
        super().__init__(catalog, limits, project_id, insert_only, lookup, keys=keys)
        if lookup in (USER_ID, IDENTITY):
            raise invalid("lookup_field", "memberships are recorded by an identity key")
        self.membership = membership
        self.collection_id = catalog.collection(project_id, membership.collection)

    def apply(self, w: StoreWriter, p: Prepared) -> BatchResult:
        res, batch = super().apply(w, p), p.batch
        m, lookup = self.membership, self.lookup
        values = _normalize(_trimmed(batch.rows.column(lookup).combine_chunks()), lookup)
        docs: dict[str, str] = {}
        for i, value in enumerate(values.to_pylist()):
            if i in res.failures or value is None:
                continue
            doc_id = f"{m.group_id}:{value}"
            docs[doc_id] = orjson.dumps(
                {"_id": doc_id, m.group_field: m.group_id, lookup: value, "status": m.status}
            ).decode()
        w.upsert_documents(self.project_id, self.collection_id, list(docs), list(docs.values()))
        return res
