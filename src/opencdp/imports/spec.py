"""What an import does, whichever API asked for it: :class:`ImportSpec`.

Each surface translates its vendor's parameters into a spec (and refuses what it cannot
translate, with its own error code); the import job reads the spec and nothing else. A spec
is kept with its job as the job's stored parameters (:meth:`ImportSpec.to_params`), so a job
queued before a restart runs as it was submitted. Jobs stored before specs existed kept a
plain dictionary of the surfaces' words; :meth:`ImportSpec.from_params` reads those too.

>>> spec = ImportSpec(Kind.PROFILES, lookup="email", list_id=7)
>>> ImportSpec.from_params(spec.to_params()) == spec
True
>>> ImportSpec.from_params({"target": "collection", "collection": "orders", "mode": "insert"})
... # doctest: +NORMALIZE_WHITESPACE
ImportSpec(kind=<Kind.DOCUMENTS: 'documents'>, format='csv', charset=None,
    mode=<Mode.INSERT: 'insert'>, stop_on_error=False, lookup='email', list_id=None,
    membership=None, collection='orders', key_fields=(), first_column_key=False,
    identity_keys=None)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from opencdp.errors import CdpError, Code

USER_ID = "id"  # the lookup field naming our own user id
IDENTITY = "*"  # look profiles up by every identity key, merging as the single-record API does
VERSION = 2  # the form of the stored parameters (1: the surfaces' own dictionary)


class Kind(StrEnum):
    """Where the rows go."""

    PROFILES = "profiles"  # users, matched by a lookup field (or by every identity key)
    EVENTS = "events"
    DOCUMENTS = "documents"  # documents of a collection


class Mode(StrEnum):
    UPSERT = "upsert"  # insert new rows, update the ones that exist
    INSERT = "insert"  # insert new rows; a row whose key exists fails


@dataclass(frozen=True)
class Membership:
    """Each imported profile also recorded as a member of a group, with a status: a document
    ``{"_id": "<group id>:<lookup value>", <group_field>: <group id>, <lookup>: <value>,
    "status": <status>}`` of the collection ``collection``."""

    collection: str
    group_field: str
    group_id: int
    status: str


@dataclass(frozen=True)
class ImportSpec:
    """The typed parameters of an import job.

    ``lookup``, ``list_id`` and ``membership`` concern profiles; ``collection``,
    ``key_fields`` and ``first_column_key`` documents. A document's id is the value of its
    key fields (the JSON list of their values when there are several), else, with
    ``first_column_key``, of the file's first column, else its ``_id``. ``identity_keys`` are
    the project's identity keys (name -> property id) when the import was submitted, which
    it keeps to the end (None: as they are when it runs).
    """

    kind: Kind
    format: str = "csv"
    charset: str | None = None
    mode: Mode = Mode.UPSERT
    stop_on_error: bool = False
    lookup: str = "email"
    list_id: int | None = None
    membership: Membership | None = None
    collection: str | None = None
    key_fields: tuple[str, ...] = ()
    first_column_key: bool = False
    identity_keys: dict[str, int] | None = field(default=None, hash=False)

    @property
    def insert_only(self) -> bool:
        return self.mode is Mode.INSERT

    def with_identity_keys(self, keys: dict[str, int]) -> ImportSpec:
        return dataclasses.replace(self, identity_keys=dict(keys))

    def to_params(self) -> dict[str, Any]:
        """The spec as a job's stored parameters (JSON)."""
        out: dict[str, Any] = {
            "spec": VERSION,
            "kind": self.kind.value,
            "format": self.format,
            "charset": self.charset,
            "mode": self.mode.value,
            "stop_on_error": self.stop_on_error,
        }
        if self.kind is Kind.PROFILES:
            out["lookup"] = self.lookup
            out["list_id"] = self.list_id
            if self.membership is not None:
                out["membership"] = dataclasses.asdict(self.membership)
        if self.kind is Kind.DOCUMENTS:
            out["collection"] = self.collection
            out["key_fields"] = list(self.key_fields)
            out["first_column_key"] = self.first_column_key
        if self.identity_keys is not None:
            out["identity_keys"] = dict(self.identity_keys)
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ImportSpec:
        """A spec from a job's stored parameters, in either form."""
        if "spec" not in params:
            return _legacy(params)
        membership = params.get("membership")
        return cls(
            kind=_kind(params.get("kind")),
            format=str(params.get("format") or "csv"),
            charset=params.get("charset"),
            mode=_mode(params.get("mode")),
            stop_on_error=bool(params.get("stop_on_error")),
            lookup=str(params.get("lookup") or "email"),
            list_id=_int_or_none(params.get("list_id")),
            membership=Membership(
                str(membership["collection"]),
                str(membership["group_field"]),
                int(membership["group_id"]),
                str(membership["status"]),
            )
            if isinstance(membership, dict)
            else None,
            collection=params.get("collection"),
            key_fields=tuple(str(f) for f in params.get("key_fields") or ()),
            first_column_key=bool(params.get("first_column_key")),
            identity_keys=_keys(params.get("identity_keys")),
        )


def _kind(value: Any) -> Kind:
    try:
        return Kind(value)
    except ValueError:
        raise CdpError(
            Code.UNSUPPORTED, f"target: cannot import into {value!r}", "target"
        ) from None


def _mode(value: Any) -> Mode:
    return Mode.INSERT if value == Mode.INSERT.value else Mode.UPSERT


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _keys(value: Any) -> dict[str, int] | None:
    return {str(n): int(i) for n, i in value.items()} if isinstance(value, dict) else None


# Jobs stored before specs existed: the dictionary the surfaces built, in their words.
_LEGACY_TARGETS = {"users": Kind.PROFILES, "events": Kind.EVENTS, "collection": Kind.DOCUMENTS}
_LEGACY_FIRST_COLUMN = "*first"
_LEGACY_MEMBERS = "program_members"  # memberships of the bulk API's programs


def _legacy(params: dict[str, Any]) -> ImportSpec:
    target = params.get("target", "users")
    common: dict[str, Any] = {
        "format": str(params.get("format") or "csv"),
        "charset": params.get("charset"),
        "mode": _mode(params.get("mode")),
        "stop_on_error": bool(params.get("stop_on_error")),
        "identity_keys": _keys(params.get("identity_keys")),
    }
    if target == _LEGACY_MEMBERS:
        membership = Membership(
            _LEGACY_MEMBERS, "programId", int(params["program_id"]), str(params["status"])
        )
        return ImportSpec(Kind.PROFILES, **{**common, "mode": Mode.UPSERT}, membership=membership)
    kind = _LEGACY_TARGETS.get(str(target))
    if kind is None:
        raise CdpError(Code.UNSUPPORTED, f"target: cannot import into {target!r}", "target")
    if kind is Kind.PROFILES:
        return ImportSpec(
            kind,
            **common,
            lookup=str(params.get("lookup_field") or "email"),
            list_id=_int_or_none(params.get("list_id")),
        )
    if kind is Kind.DOCUMENTS:
        return ImportSpec(
            kind,
            **common,
            collection=str(params["collection"]),
            key_fields=tuple(str(f) for f in params.get("dedupe_fields") or ()),
            first_column_key=params.get("key") == _LEGACY_FIRST_COLUMN,
        )
    return ImportSpec(kind, **common)
