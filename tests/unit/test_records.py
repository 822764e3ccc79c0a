"""Validation of import bodies into records, and the record's log encoding (ingest/records.py)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencdp.catalog.model import Project, Property, Schema
from opencdp.catalog.types import PropertyType
from opencdp.config import Limits
from opencdp.errors import CdpError, Code
from opencdp.ingest.records import (
    EVENT,
    FIRST,
    KINDS,
    OPS,
    OVERWRITE,
    USER,
    USER_DELETE,
    Record,
    build_record,
    parse_json,
)

T = PropertyType
LIMITS = Limits()
RECEIVED = 1_700_000_000_000_000


class Env:
    """A project and its schema, with an ``ensure`` that registers new properties like the
    catalog does (fresh ids, existing names keep their type)."""

    def __init__(self, strict: bool = False, keys: tuple[str, ...] = ("mobile", "email")) -> None:
        self.project = Project(7, "k7", "p", "Asia/Shanghai", strict, datetime(2024, 1, 1))
        self.ids = itertools.count(1)
        self.user = {k: Property(next(self.ids), "user", k, T.STRING, True) for k in keys}
        self.event: dict[str, Property] = {}
        self.ensured: list[tuple[str, dict[str, PropertyType]]] = []

    @property
    def schema(self) -> Schema:
        return Schema(self.project.id, dict(self.user), dict(self.event))

    def add(self, table: str, name: str, ptype: PropertyType) -> Property:
        prop = Property(next(self.ids), table, name, ptype)
        (self.user if table == "user" else self.event)[name] = prop
        return prop

    def ensure(self, table: str, wanted: dict[str, PropertyType]) -> dict[str, Property]:
        self.ensured.append((table, dict(wanted)))
        current = self.user if table == "user" else self.event
        for name, ptype in wanted.items():
            if name not in current:
                self.add(table, name, ptype)
        return {n: current[n] for n in wanted}

    def build(self, doc: Any, limits: Limits = LIMITS) -> Record:
        return build_record(doc, self.project, self.schema, limits, RECEIVED, self.ensure)

    def fails(self, doc: Any, code: Code, field: str | None = None) -> CdpError:
        with pytest.raises(CdpError) as info:
            self.build(doc)
        assert info.value.code is code, info.value
        if field is not None:
            assert info.value.field == field, info.value
            assert field in info.value.message
        return info.value


def event(**props: Any) -> dict[str, Any]:
    props.setdefault("event_id", "e1")
    props.setdefault("create_time", "2024-01-02 03:04:05")
    return {"type": "event", "event": "order", "properties": props}


def ts(*args: int) -> int:
    delta = datetime(*args, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)  # type: ignore[misc]
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# ---- parse_json -------------------------------------------------------------------------------
def test_parse_json() -> None:
    assert parse_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_json('{"城市": "上海"}'.encode()) == {"城市": "上海"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"a": 1,}',
        b"{'a': 1}",
        b'{"a": NaN}',
        b'{"a": "\xff"}',
        b"\xef\xbb\xbf\xff",
        b'{"a": "\\ud800"}',
        b"[1, 2]",
        b'"text"',
        b"3",
        b"null",
        b"true",
    ],
)
def test_parse_json_errors(body: bytes) -> None:
    with pytest.raises(CdpError) as info:
        parse_json(body)
    assert info.value.code is Code.INVALID_JSON


# ---- build_record: events ---------------------------------------------------------------------
def test_event_record() -> None:
    env = Env()
    rec = env.build(
        event(
            mobile=" 138 ",
            email="A@B.com",
            amount=9.5,
            shop="静安",
            paid=True,
            tags=["x"],
            at="2024-05-06 07:08:09",
        )
    )
    assert rec.kind == EVENT
    assert rec.project_id == 7
    assert rec.event_name == "order"
    assert rec.event_id == "e1"
    assert rec.event_time == ts(2024, 1, 1, 19, 4, 5)  # read in Asia/Shanghai
    assert rec.received_at == RECEIVED
    mobile, email = env.user["mobile"].id, env.user["email"].id
    assert rec.tokens == [(mobile, "138"), (email, "a@b.com")]
    # Identity keys are profile values (as sent, trimmed), not event values.
    assert rec.user_values == {mobile: "138", email: "A@B.com"}
    named = {env.schema.by_id[k].name: v for k, v in rec.event_values.items()}
    assert named == {
        "amount": 9.5,
        "shop": "静安",
        "paid": True,
        "tags": ["x"],
        "at": ts(2024, 5, 5, 23, 8, 9),
    }
    assert {n: p.type for n, p in env.event.items()} == {
        "amount": T.NUMBER,
        "shop": T.STRING,
        "paid": T.BOOL,
        "tags": T.LIST,
        "at": T.DATETIME,
    }
    # event_id and create_time are fields of the event, not properties.
    assert "event_id" not in env.event and "create_time" not in env.event


def test_event_id_and_create_time_may_sit_at_the_top_level() -> None:
    rec = Env().build(
        {
            "type": "event",
            "event": "v",
            "event_id": 123,
            "create_time": 0,
            "properties": {"mobile": 1},
        }
    )
    assert rec.event_id == "123"
    assert rec.event_time == 0
    assert rec.tokens[0][1] == "1"


def test_known_properties_are_coerced_to_their_type() -> None:
    env = Env()
    amount = env.add("event", "amount", T.NUMBER)
    level = env.add("user", "level", T.NUMBER)
    rec = env.build(event(mobile="1", amount="12"))
    assert rec.event_values == {amount.id: 12.0}
    rec = env.build({"type": "user", "properties": {"mobile": "1", "level": "3"}})
    assert rec.user_values[level.id] == 3.0
    assert env.ensured == []  # nothing new to register
    err = env.fails(event(mobile="1", amount="lots"), Code.VALIDATION_FAILED, "amount")
    assert "expected a number" in err.message


def test_properties_as_a_json_string() -> None:
    doc = {"type": "user", "properties": orjson.dumps({"mobile": "9", "city": "x"}).decode()}
    rec = Env().build(doc)
    assert rec.tokens[0][1] == "9"
    assert "x" in rec.user_values.values()


def test_null_values_are_skipped() -> None:
    env = Env()
    rec = env.build({"type": "user", "properties": {"mobile": "1", "email": None, "city": None}})
    assert rec.tokens == [(env.user["mobile"].id, "1")]
    assert "city" not in env.user


@pytest.mark.parametrize(
    ("doc", "code", "field"),
    [
        ({"properties": {"mobile": "1"}}, Code.INVALID_TYPE, "type"),
        ({"type": "Event", "properties": {"mobile": "1"}}, Code.INVALID_TYPE, "type"),
        ({"type": ["user"], "properties": {"mobile": "1"}}, Code.INVALID_TYPE, "type"),
        ({"type": "user"}, Code.EMPTY_PROPERTIES, "properties"),
        ({"type": "user", "properties": {}}, Code.EMPTY_PROPERTIES, "properties"),
        ({"type": "user", "properties": ""}, Code.EMPTY_PROPERTIES, "properties"),
        ({"type": "user", "properties": []}, Code.EMPTY_PROPERTIES, "properties"),
        ({"type": "user", "properties": "{bad"}, Code.VALIDATION_FAILED, "properties"),
        ({"type": "user", "properties": [1]}, Code.VALIDATION_FAILED, "properties"),
        ({"type": "user", "properties": "mobile=1"}, Code.VALIDATION_FAILED, "properties"),
        ({"type": "user", "properties": {"city": "x"}}, Code.MISSING_IDENTITY, "properties"),
        ({"type": "user", "properties": {"mobile": " "}}, Code.EMPTY_IDENTITY, "properties"),
        (
            {"type": "user", "properties": {"mobile": None, "email": ""}},
            Code.EMPTY_IDENTITY,
            "properties",
        ),
        ({"type": "user", "properties": {"mobile": True}}, Code.EMPTY_IDENTITY, "properties"),
        ({"type": "user", "properties": {"mobile": [1]}}, Code.VALIDATION_FAILED, "mobile"),
        ({"type": "user", "properties": {"mobile": {"a": 1}}}, Code.VALIDATION_FAILED, "mobile"),
        ({"type": "user", "properties": {"mobile": "1", "x": {}}}, Code.VALIDATION_FAILED, "x"),
        ({"type": "user", "properties": {"mobile": "1", "x": [[]]}}, Code.VALIDATION_FAILED, "x"),
        (
            {"type": "user_delete", "properties": {"city": "x"}},
            Code.MISSING_IDENTITY,
            "properties",
        ),
        (event(mobile="1", event_id=None), Code.VALIDATION_FAILED, "event_id"),
        (event(mobile="1", event_id=""), Code.VALIDATION_FAILED, "event_id"),
        (event(mobile="1", event_id="  "), Code.VALIDATION_FAILED, "event_id"),
        (event(mobile="1", event_id=True), Code.VALIDATION_FAILED, "event_id"),
        (event(mobile="1", event_id=1.5), Code.VALIDATION_FAILED, "event_id"),
        (event(mobile="1", event_id="x" * 257), Code.VALIDATION_FAILED, "event_id"),
        (event(mobile="1", create_time=None), Code.VALIDATION_FAILED, "create_time"),
        (event(mobile="1", create_time="soon"), Code.VALIDATION_FAILED, "create_time"),
        (event(mobile="1", create_time="99999-1-1"), Code.VALIDATION_FAILED, "create_time"),
        (event(mobile="1", create_time=False), Code.VALIDATION_FAILED, "create_time"),
        (
            {**event(mobile="1"), "event": ""},
            Code.VALIDATION_FAILED,
            "event",
        ),
        (
            {k: v for k, v in event(mobile="1").items() if k != "event"},
            Code.VALIDATION_FAILED,
            "event",
        ),
        ({**event(mobile="1"), "event": 3}, Code.VALIDATION_FAILED, "event"),
        ({**event(mobile="1"), "event": "a\nb"}, Code.VALIDATION_FAILED, "event"),
        ({**event(mobile="1"), "event": "e" * 129}, Code.VALIDATION_FAILED, "event"),
    ],
)
def test_invalid_records(doc: dict[str, Any], code: Code, field: str) -> None:
    env = Env()
    env.fails(doc, code, field)
    assert env.ensured == []  # nothing was registered for a rejected record


def test_a_bad_value_registers_no_property() -> None:
    env = Env()
    env.fails(
        {"type": "user", "properties": {"mobile": "1", "good": 1, "bad": {"a": 1}}},
        Code.VALIDATION_FAILED,
        "bad",
    )
    assert env.ensured == []
    env.fails(event(mobile="1", when="2024-02-30 00:00:00"), Code.VALIDATION_FAILED, "when")
    assert env.ensured == []


def test_new_property_names_are_checked() -> None:
    env = Env()
    env.fails({"type": "user", "properties": {"mobile": "1", " ": 1}}, Code.VALIDATION_FAILED)
    env.fails({"type": "user", "properties": {"mobile": "1", "a\x00b": 1}}, Code.VALIDATION_FAILED)
    err = env.fails(
        {"type": "user", "properties": {"mobile": "1", "n" * 200: 1}}, Code.VALIDATION_FAILED
    )
    assert "longer than 128" in err.message
    assert env.ensured == []


def test_strict_schema() -> None:
    env = Env(strict=True)
    city = env.add("user", "city", T.STRING)
    err = env.fails(
        {"type": "user", "properties": {"mobile": "1", "city": "x", "age": 3}},
        Code.VALIDATION_FAILED,
        "age",
    )
    assert "strict" in err.message
    rec = env.build({"type": "user", "properties": {"mobile": "1", "city": "x"}})
    assert rec.user_values[city.id] == "x"
    env.fails(event(mobile="1", amount=1), Code.VALIDATION_FAILED, "amount")
    assert env.ensured == []


def test_too_many_properties() -> None:
    env = Env()
    props = {"mobile": "1", **{f"p{i}": i for i in range(10)}}
    small = Limits(max_properties=10)
    with pytest.raises(CdpError) as info:
        env.build({"type": "user", "properties": props}, small)
    assert info.value.code is Code.LIMIT_EXCEEDED
    assert info.value.field == "properties"
    props.pop("p0")
    env.build({"type": "user", "properties": props}, small)


def test_another_request_registering_first_decides_the_type() -> None:
    """Two requests see a property as new; the one that registers it first wins, and the other
    is checked against that type."""
    env = Env()
    stale = env.schema
    env.add("user", "age", T.STRING)
    rec = build_record(
        {"type": "user", "properties": {"mobile": "1", "age": 30}},
        env.project,
        stale,
        LIMITS,
        RECEIVED,
        env.ensure,
    )
    assert rec.user_values[env.user["age"].id] == "30"
    env2 = Env()
    stale = env2.schema
    env2.add("user", "age", T.NUMBER)
    with pytest.raises(CdpError) as info:
        build_record(
            {"type": "user", "properties": {"mobile": "1", "age": "old"}},
            env2.project,
            stale,
            LIMITS,
            RECEIVED,
            env2.ensure,
        )
    assert info.value.field == "age"


def test_user_delete_keeps_only_the_identities() -> None:
    env = Env()
    rec = env.build({"type": "user_delete", "properties": {"email": "X@Y.com", "city": "z"}})
    assert rec.kind == USER_DELETE
    assert rec.tokens == [(env.user["email"].id, "x@y.com")]
    assert rec.user_values == {} and rec.event_values == {}
    assert env.ensured == []


def test_custom_identity_keys() -> None:
    env = Env(keys=("wechat_id",))
    env.fails({"type": "user", "properties": {"mobile": "1"}}, Code.MISSING_IDENTITY)
    rec = env.build({"type": "user", "properties": {"wechat_id": "W", "mobile": "13800138000"}})
    assert rec.kind == USER
    assert rec.tokens == [(env.user["wechat_id"].id, "W")]
    assert env.user["mobile"].type is T.STRING  # a phone number is not a number


# ---- encode / decode --------------------------------------------------------------------------
values = st.one_of(
    st.text(max_size=30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.lists(st.text(max_size=10), max_size=5),
)
prop_values = st.dictionaries(st.integers(min_value=1, max_value=10**6), values, max_size=8)
records = st.builds(
    Record,
    kind=st.sampled_from(KINDS),
    project_id=st.integers(min_value=1, max_value=2**31),
    tokens=st.lists(
        st.tuples(st.integers(min_value=1, max_value=10**6), st.text(min_size=1, max_size=30)),
        max_size=4,
    ),
    user_values=prop_values,
    event_values=prop_values,
    event_name=st.text(max_size=20),
    event_id=st.text(max_size=20),
    event_time=st.integers(min_value=-(2**62), max_value=2**62),
    received_at=st.integers(min_value=0, max_value=2**62),
    ops=st.dictionaries(st.integers(min_value=1, max_value=10**6), st.sampled_from(OPS)),
    event_mode=st.sampled_from(["", OVERWRITE, FIRST]),
)


@given(records)
def test_encode_decode_round_trip(rec: Record) -> None:
    data = rec.encode()
    assert isinstance(data, bytes)
    back = Record.decode(data)
    assert back == rec
    assert back.encode() == data
    assert all(type(k) is int for k in (*back.user_values, *back.event_values))
    for (k1, v1), (k2, v2) in zip(rec.tokens, back.tokens, strict=True):
        assert (type(k1), type(v1)) == (type(k2), type(v2))


@given(st.lists(records, min_size=1, max_size=5))
def test_a_batch_frame_holds_its_records_in_order(recs: list[Record]) -> None:
    assert Record.decode_frame(Record.encode_batch(recs)) == recs


def test_frames_written_before_operations_existed_still_decode() -> None:
    """A frame of nine fields (no ``ops``, no ``event_mode``) is what older logs hold."""
    old = orjson.dumps(["user", 7, [[1, "139"]], {"1": "139", "5": 2.0}, {}, "", "", 0, 42])
    rec = Record.decode(old)
    assert (rec.kind, rec.user_values, rec.ops, rec.event_mode) == (
        "user", {1: "139", 5: 2.0}, {}, "",
    )  # fmt: skip
    assert Record.decode_frame(old) == [rec]
    assert rec.encode() == old  # a record without operations is written as before


def _doc() -> st.SearchStrategy[dict[str, Any]]:
    scalar = st.one_of(
        st.text(max_size=20),
        st.integers(min_value=-(10**12), max_value=10**12),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    )
    extra = st.dictionaries(
        st.text(alphabet="abcdefgh", min_size=1, max_size=6),
        st.one_of(scalar, st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3)),
        max_size=6,
    )
    return st.builds(
        lambda extra, mobile, kind, eid: {
            "type": kind,
            "event": "e",
            "properties": {
                **extra,
                "mobile": mobile,
                "event_id": eid,
                "create_time": "2024-01-02 03:04:05",
            },
        },
        extra,
        st.text(alphabet="0123456789", min_size=1, max_size=11),
        st.sampled_from(KINDS),
        st.text(alphabet="abc123", min_size=1, max_size=8),
    )


@given(_doc())
def test_every_valid_record_survives_the_log_encoding(doc: dict[str, Any]) -> None:
    env = Env()
    try:
        rec = env.build(doc)
    except CdpError:
        return
    assert Record.decode(rec.encode()) == rec
