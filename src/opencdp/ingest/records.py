"""Validation of single records into the form the log keeps (pure, apart from the injected
``ensure`` that registers properties seen for the first time).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from opencdp.catalog.model import Project, Property, Schema
from opencdp.catalog.types import PropertyType, coerce, infer_type, loads_exact
from opencdp.config import Limits
from opencdp.errors import CdpError, Code, invalid
from opencdp.identity import normalize

EVENT = "event"
USER = "user"
USER_DELETE = "user_delete"
KINDS = (EVENT, USER, USER_DELETE)
BATCH = "batch"  # the first field of a log frame holding several records

# Operations on user properties other than setting them (Record.ops).
SET_ONCE, ADD, UNSET, APPEND, UNIQ_APPEND = "set_once", "add", "unset", "append", "uniq_append"
OPS = (SET_ONCE, ADD, UNSET, APPEND, UNIQ_APPEND)
OVERWRITE, FIRST = "overwrite", "first"  # Record.event_mode

Ensure = Callable[[str, dict[str, PropertyType]], dict[str, Property]]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_ID = 256  # characters of an event or user id


@dataclass(slots=True)
class Record:
    """A validated record: what the durable log keeps and the flusher applies."""

    kind: str
    project_id: int
    tokens: list[tuple[int, str]]  # (identity key property id, normalized value)
    user_values: dict[int, Any] = field(default_factory=dict)  # property id -> stored value
    event_values: dict[int, Any] = field(default_factory=dict)
    event_name: str = ""
    event_id: str = ""
    event_time: int = 0  # epoch µs, UTC
    received_at: int = 0  # epoch µs, UTC
    # Property id -> how its value in ``user_values`` applies, for those that are not simply
    # set (the ``OPS``: set only if empty, add, clear, append, append the new items).
    ops: dict[int, str] = field(default_factory=dict)
    # How an event applies to a stored one with its id: "" merges its properties into it,
    # OVERWRITE replaces them all, FIRST keeps the stored one and drops this one.
    event_mode: str = ""

    def holds_nul(self) -> bool:
        """Whether any text of the record (a name, an id, an identity value, a property's
        value or list item) holds the character U+0000."""
        texts: list[Any] = [self.event_name, self.event_id, *(v for _, v in self.tokens)]
        for values in (self.user_values, self.event_values):
            for v in values.values():
                texts += v if isinstance(v, list) else [v]
        return any(isinstance(t, str) and "\x00" in t for t in texts)

    def _fields(self) -> list[Any]:
        out = [
            self.kind,
            self.project_id,
            self.tokens,
            self.user_values,
            self.event_values,
            self.event_name,
            self.event_id,
            self.event_time,
            self.received_at,
        ]
        if self.ops or self.event_mode:  # (older frames have nine fields; those stay as they are)
            out += [self.ops, self.event_mode]
        return out

    def encode(self) -> bytes:
        return orjson.dumps(self._fields(), option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def _from(cls, fields: list[Any]) -> Record:
        kind, pid, tokens, uv, ev, name, eid, etime, recv, *rest = fields
        ops, mode = rest if rest else ({}, "")
        return cls(
            kind,
            pid,
            [(int(k), v) for k, v in tokens],
            {int(k): v for k, v in uv.items()},
            {int(k): v for k, v in ev.items()},
            name,
            eid,
            etime,
            recv,
            {int(k): v for k, v in ops.items()},
            mode,
        )

    @classmethod
    def decode(cls, data: bytes) -> Record:
        return cls._from(orjson.loads(data))

    @staticmethod
    def encode_batch(records: list[Record]) -> bytes:
        """One log frame for records that are kept all together or not at all."""
        return orjson.dumps([BATCH, [r._fields() for r in records]], option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def decode_frame(cls, data: bytes) -> list[Record]:
        """The records of a log frame: one record, or a batch of them."""
        fields = orjson.loads(data)
        if fields and fields[0] == BATCH:
            return [cls._from(f) for f in fields[1]]
        return [cls._from(fields)]


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object in ``body``; malformed JSON or UTF-8, or a non-object, is invalid_json."""
    try:
        doc = loads_exact(body)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise CdpError(Code.INVALID_JSON, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CdpError(Code.INVALID_JSON, "body must be a JSON object")
    return doc


def build_record(
    doc: Mapping[str, Any],
    project: Project,
    schema: Schema,
    limits: Limits,
    received_at: int,
    ensure: Ensure,
) -> Record:
    """Validate one import request body (already parsed) into a :class:`Record`."""
    kind = doc.get("type")
    if kind not in KINDS:
        raise CdpError(
            Code.INVALID_TYPE, f"type: must be one of {', '.join(KINDS)}, got {kind!r}", "type"
        )
    props = _properties(doc.get("properties"))
    check_property_count(props, limits)
    tz = project.tz
    keys = schema.identity_keys
    tokens, key_values = _identities(props, keys, limits, tz)
    record = Record(kind, project.id, tokens, received_at=received_at)
    if kind == USER_DELETE:
        return record

    record.user_values.update(key_values)
    if kind == EVENT:
        record.event_name = event_name(doc.get("event"), limits)
        record.event_id = id_text(_pick(props, doc, "event_id"), "event_id", "required for events")
        created = _pick(props, doc, "create_time")
        if created is None:
            raise invalid("create_time", "required for events")
        record.event_time = coerce(PropertyType.DATETIME, created, "create_time", limits, tz)
        skip = {"event_id", "create_time", *keys}
        target, tbl = record.event_values, "event"
    else:
        skip = set(keys)
        target, tbl = record.user_values, "user"

    known = schema.table(tbl)
    unknown: dict[str, PropertyType] = {}
    for name, value in props.items():
        if value is None or name in skip:
            continue
        prop = known.get(name)
        if prop is not None:
            target[prop.id] = coerce(prop.type, value, name, limits, tz)
            continue
        check_new_name(name, limits)
        if project.strict_schema:
            raise invalid(name, f"unknown {tbl} property (the project's schema is strict)")
        inferred = infer_type(value)
        if inferred is None:
            raise invalid(name, "nested objects are not supported")
        coerce(inferred, value, name, limits, tz)  # reject before anything is registered
        unknown[name] = inferred
    if unknown:
        # Registered with the inferred type unless another request registered it first.
        for name, prop in ensure(tbl, unknown).items():
            target[prop.id] = coerce(prop.type, props[name], name, limits, tz)
    return record


def _properties(value: Any) -> dict[str, Any]:
    if isinstance(value, str) and value.strip().startswith("{"):
        # The vendor documents `properties` as a string: accept a JSON object encoded in one.
        try:
            value = loads_exact(value)
        except (orjson.JSONDecodeError, ValueError):
            raise invalid("properties", "is a string that does not hold a JSON object") from None
    if value is None or value == {} or value == "" or value == []:
        raise CdpError(Code.EMPTY_PROPERTIES, "properties: is missing or empty", "properties")
    if not isinstance(value, dict):
        raise invalid("properties", "must be a JSON object")
    return value


def _identities(
    props: Mapping[str, Any], keys: Mapping[str, Property], limits: Limits, tz: Any
) -> tuple[list[tuple[int, str]], dict[int, Any]]:
    present = [name for name in keys if name in props]
    if not present:
        raise CdpError(
            Code.MISSING_IDENTITY,
            f"properties: no identity key is present (identity keys: {', '.join(keys)})",
            "properties",
        )
    tokens: list[tuple[int, str]] = []
    values: dict[int, Any] = {}
    for name in present:
        raw = props[name]
        if isinstance(raw, dict | list):
            raise invalid(name, "an identity key must be a string or a number")
        prop = keys[name]
        token = normalize(name, raw)
        if token is not None:
            tokens.append((prop.id, coerce(PropertyType.STRING, token, name, limits, tz)))
            values[prop.id] = str(raw).strip() if isinstance(raw, str) else token
    if not tokens:
        raise CdpError(
            Code.EMPTY_IDENTITY,
            f"properties: identity keys {', '.join(present)} are present but all empty",
            "properties",
        )
    return tokens, values


def _pick(props: Mapping[str, Any], doc: Mapping[str, Any], name: str) -> Any:
    value = props.get(name)
    return doc.get(name) if value is None else value


def event_name(value: Any, limits: Limits, field: str = "event") -> str:
    """An event's name, as ``field`` carries it: a non-empty printable string."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "required for events: the event name as a non-empty string")
    if len(value) > limits.max_name_length or _CONTROL.search(value):
        raise invalid(field, f"at most {limits.max_name_length} printable characters")
    return value


def id_text(value: Any, field: str, absent: str = "required") -> str:
    """An id (an event's, a user's) as text: a string or an integer, not empty, not long."""
    if value is None:
        raise invalid(field, absent)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid(field, "must be a string or an integer")
    text = str(value).strip()
    if not text:
        raise invalid(field, "must not be empty")
    if len(text) > MAX_ID:
        raise invalid(field, f"longer than {MAX_ID} characters")
    return text


def check_property_count(props: Mapping[str, Any], limits: Limits) -> None:
    if len(props) > limits.max_properties:
        raise CdpError(
            Code.LIMIT_EXCEEDED,
            f"properties: {len(props)} properties, at most {limits.max_properties} are allowed",
            "properties",
        )


def check_new_name(name: str, limits: Limits) -> None:
    """A property name seen for the first time: not empty, not long, printable."""
    if not name.strip():
        raise invalid("properties", "a property name is empty")
    if len(name) > limits.max_name_length:
        raise invalid(name[:40] + "...", f"property name longer than {limits.max_name_length}")
    if _CONTROL.search(name):
        raise invalid(repr(name), "property name contains control characters")
