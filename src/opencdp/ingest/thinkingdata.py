"""ThinkingData records (what its server SDKs send to ``/sync_server``) as :class:`Record`\\ s.

A record is ``{"#type", "#account_id" and/or "#distinct_id", "#time", "#event_name", "#uuid",
"#event_id", "#first_check_id", "#ip", "#app_id", "properties"}``. ``#account_id`` and
``#distinct_id`` are identity keys of the project; other identity keys found in
``properties`` identify the person too. Every ``#`` name inside ``properties`` (``#os``,
``#lib``, …) is an ordinary property of that name.

- ``track``: an event. Its id is ``#uuid``; without one, a digest of the record's content
  (a batch sent again is not counted twice). With ``#first_check_id``: a first event, only
  the first one of that name and id is kept.
- ``track_update``: the event ``#event_id``; the properties given replace theirs, the others
  stay. ``track_overwrite``: its properties become exactly those given.
- ``user_set`` sets the properties; ``user_setOnce`` those that have no value yet;
  ``user_add`` adds numbers (an empty property counts as 0); ``user_unset`` empties the named
  properties; ``user_append`` appends list items, ``user_uniq_append`` those not already there.
- ``user_del`` deletes the person, with their events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from opencdp.catalog.model import Project, Schema
from opencdp.catalog.types import PropertyType, coerce, infer_type
from opencdp.config import Limits
from opencdp.errors import CdpError, Code, invalid
from opencdp.identity import normalize
from opencdp.ingest.records import (
    ADD,
    APPEND,
    EVENT,
    FIRST,
    OVERWRITE,
    SET_ONCE,
    UNIQ_APPEND,
    UNSET,
    USER,
    USER_DELETE,
    Ensure,
    Record,
    check_new_name,
    check_property_count,
    event_name,
    id_text,
)

ACCOUNT_ID, DISTINCT_ID = "#account_id", "#distinct_id"
IDENTITY_KEYS = (ACCOUNT_ID, DISTINCT_ID)

TRACK, TRACK_UPDATE, TRACK_OVERWRITE = "track", "track_update", "track_overwrite"
USER_TYPES: dict[str, str | None] = {
    "user_set": None,
    "user_setOnce": SET_ONCE,
    "user_add": ADD,
    "user_unset": UNSET,
    "user_append": APPEND,
    "user_uniq_append": UNIQ_APPEND,
}
USER_DEL = "user_del"
TYPES = (TRACK, TRACK_UPDATE, TRACK_OVERWRITE, *USER_TYPES, USER_DEL)

# What an operation needs of its property's type.
_OP_TYPES = {ADD: PropertyType.NUMBER, APPEND: PropertyType.LIST, UNIQ_APPEND: PropertyType.LIST}


class RecordError(CdpError):
    """A record of a batch that is refused: which one, the field and the reason."""

    def __init__(self, index: int, cause: CdpError) -> None:
        super().__init__(cause.code, f"data[{index}]: {cause.message}", cause.field)
        self.index = index
        self.reason = cause.message
        self.cause = cause


def build_records(
    docs: list[Any],
    project: Project,
    schema: Callable[[], Schema],
    limits: Limits,
    received_at: int,
    ensure: Ensure,
) -> list[Record]:
    """Validate every record of a batch; the first bad one refuses the batch (RecordError).

    Each record is read against the schema as it is then: with the properties that the
    records before it added (a user_unset of a property set earlier in the batch clears it).
    """
    records = []
    for i, doc in enumerate(docs):
        try:
            records.append(build_record(doc, project, schema(), limits, received_at, ensure))
        except CdpError as exc:
            raise RecordError(i, exc) from None
    return records


def build_record(
    doc: Any,
    project: Project,
    schema: Schema,
    limits: Limits,
    received_at: int,
    ensure: Ensure,
) -> Record:
    if not isinstance(doc, dict):
        raise invalid("record", "must be a JSON object")
    kind = doc.get("#type")
    if kind not in TYPES:
        raise CdpError(
            Code.INVALID_TYPE, f"#type: must be one of {', '.join(TYPES)}, got {kind!r}", "#type"
        )
    props = doc.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise invalid("properties", "must be a JSON object")
    check_property_count(props, limits)
    tz = project.tz
    tokens, key_values = _identities(doc, props, schema, limits, tz)
    if kind == USER_DEL:
        return Record(USER_DELETE, project.id, tokens, received_at=received_at)
    time_value = doc.get("#time")
    event_time = received_at
    if time_value is not None:
        event_time = coerce(PropertyType.DATETIME, time_value, "#time", limits, tz)

    skip = set(schema.identity_keys)
    if kind in USER_TYPES:
        record = Record(USER, project.id, tokens, received_at=received_at)
        record.user_values.update(key_values)
        op = USER_TYPES[kind]
        values = _typed(props, "user", skip, project, schema, limits, op, ensure)
        record.user_values.update(values)
        if op is not None:
            record.ops = dict.fromkeys(values, op)
        return record

    record = Record(EVENT, project.id, tokens, received_at=received_at, event_time=event_time)
    record.user_values.update(key_values)
    record.event_name = event_name(doc.get("#event_name"), limits, "#event_name")
    if kind == TRACK:
        first = doc.get("#first_check_id")
        if first is not None:
            record.event_id = f"{record.event_name}:{id_text(first, '#first_check_id')}"
            record.event_mode = FIRST
        elif doc.get("#uuid") is not None:
            record.event_id = id_text(doc["#uuid"], "#uuid")
        else:
            record.event_id = content_id(project.id, doc)
    else:
        record.event_id = id_text(doc.get("#event_id"), "#event_id")
        if kind == TRACK_OVERWRITE:
            record.event_mode = OVERWRITE
    given: dict[str, Any] = dict(props)
    if doc.get("#ip") is not None:
        given["#ip"] = doc["#ip"]
    record.event_values.update(_typed(given, "event", skip, project, schema, limits, None, ensure))
    return record


def content_id(project_id: int, doc: Mapping[str, Any]) -> str:
    """The id of an event sent without ``#uuid``: a digest of everything it says, so the same
    record sent again (a retried batch) is the same event. Two events identical in every
    property, to the millisecond, are one."""
    canonical = orjson.dumps([project_id, doc], option=orjson.OPT_SORT_KEYS)
    return "td-" + hashlib.sha256(canonical).hexdigest()[:32]


def _identities(
    doc: Mapping[str, Any],
    props: Mapping[str, Any],
    schema: Schema,
    limits: Limits,
    tz: Any,
) -> tuple[list[tuple[int, str]], dict[int, Any]]:
    keys = schema.identity_keys
    tokens: list[tuple[int, str]] = []
    values: dict[int, Any] = {}
    for name in IDENTITY_KEYS:
        raw = doc.get(name)
        if raw is None:
            continue
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise invalid(name, "must be a string or a number")
        token = normalize(name, raw)
        if token is None:
            continue
        prop = keys.get(name)
        if prop is None:  # cannot happen: the surface makes them identity keys first
            raise invalid(name, "is not an identity key of the project")
        tokens.append((prop.id, coerce(PropertyType.STRING, token, name, limits, tz)))
        values[prop.id] = str(raw).strip() if isinstance(raw, str) else token
    if not tokens:
        raise CdpError(
            Code.MISSING_IDENTITY,
            f"{ACCOUNT_ID}: required (or {DISTINCT_ID}): at least one of them, not empty",
            ACCOUNT_ID,
        )
    for name, prop in keys.items():  # other identity keys among the properties
        if name in IDENTITY_KEYS or props.get(name) is None:
            continue
        raw = props[name]
        if isinstance(raw, dict | list):
            raise invalid(name, "an identity key must be a string or a number")
        token = normalize(name, raw)
        if token is not None:
            tokens.append((prop.id, coerce(PropertyType.STRING, token, name, limits, tz)))
            values[prop.id] = str(raw).strip() if isinstance(raw, str) else token
    return tokens, values


def _typed(
    props: Mapping[str, Any],
    table: str,
    skip: set[str],
    project: Project,
    schema: Schema,
    limits: Limits,
    op: str | None,
    ensure: Ensure,
) -> dict[int, Any]:
    """``props`` as stored values by property id, registering new properties (typed by their
    value, or by what ``op`` needs) through ``ensure``. A user_unset names properties only:
    one the project does not have is empty already and is skipped."""
    known = schema.table(table)
    out: dict[int, Any] = {}
    unknown: dict[str, PropertyType] = {}
    tz = project.tz
    for name, value in props.items():
        if name in skip or (value is None and op != UNSET):
            continue
        prop = known.get(name)
        if op == UNSET:
            if prop is not None:
                out[prop.id] = None
            continue
        if prop is not None:
            out[prop.id] = _value(prop.type, value, name, limits, tz, op)
            continue
        check_new_name(name, limits)
        if project.strict_schema:
            raise invalid(name, f"unknown {table} property (the project's schema is strict)")
        # (The SDKs send typed JSON: text stays text, as in ThinkingData.)
        inferred = _OP_TYPES.get(op or "") or infer_type(value, numeric_text=False)
        if inferred is None:
            raise invalid(name, "nested objects are not supported")
        _value(inferred, value, name, limits, tz, op)  # refuse before anything is registered
        unknown[name] = inferred
    if unknown:
        for name, prop in ensure(table, unknown).items():
            out[prop.id] = _value(prop.type, props[name], name, limits, tz, op)
    return out


def _value(
    ptype: PropertyType, value: Any, name: str, limits: Limits, tz: Any, op: str | None
) -> Any:
    need = _OP_TYPES.get(op or "")
    if need is not None and ptype is not need:
        what = _OP_NAMES[op or ""]
        raise invalid(name, f"{what} needs a {need.value} property, this one is {ptype.value}")
    if op == ADD and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid(name, f"user_add needs a number, got {value!r:.40}")
    return coerce(ptype, value, name, limits, tz)


_OP_NAMES = {ADD: "user_add", APPEND: "user_append", UNIQ_APPEND: "user_uniq_append"}
