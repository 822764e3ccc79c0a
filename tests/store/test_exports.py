"""The store contract, exports: events by their received time, profiles by their update time,
segment members of given versions; each property's value as JSON text, times as epoch
milliseconds, and counts that agree with what is streamed."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pyarrow as pa

from opencdp.store.base import Store
from tests.store.kit import (
    AMOUNT,
    AT,
    CITY,
    EMAIL,
    EMAIL_KEY,
    EVENT_PROPS,
    ITEMS,
    MOBILE,
    MOBILE_KEY,
    OS,
    PAID,
    SCORE,
    SECOND,
    SEEN,
    T0,
    TAGS,
    USER_PROPS,
    VIP,
    Event,
    P,
    at,
    event_rows,
    members,
    ms,
    profiles,
    write,
)

START, END = at(T0), at(T0 + 60 * SECOND)
EVENT_COLUMNS = ["event_id", "event_name", "time", "send_time", "user_id"]


def rows(batches: Iterable[pa.RecordBatch]) -> list[dict[str, Any]]:
    return [r for b in batches for r in b.to_pylist()]


def received(store: Store) -> None:
    """Events around the window [T0, T0 + 60 s), by received time."""
    evs = [
        Event("e1", 1, "pay", T0 - 3600 * SECOND, T0),  # at the start: in
        Event("e2", 1, "view", T0, T0 + 30 * SECOND),
        Event("e3", 2, "pay", T0, T0 + 59 * SECOND),
        Event("e4", 1, "pay", T0, T0 + 60 * SECOND),  # at the end: out
        Event("e5", 1, "pay", T0, T0 - 1),
        Event("e6", 2, "login", T0 + 5 * SECOND, T0 + 10 * SECOND),
    ]
    write(store, lambda w: w.upsert_events(P, event_rows(evs), []))


def test_events_are_exported_by_received_window_in_received_order(store: Store) -> None:
    received(store)
    got = rows(store.export_events(P, [], START, END, None, None))
    assert [r["event_id"] for r in got] == ["e1", "e6", "e2", "e3"]
    assert got[1] == {
        "event_id": "e6",
        "event_name": "login",
        "time": ms(T0 + 5 * SECOND),
        "send_time": ms(T0 + 10 * SECOND),
        "user_id": 2,
    }
    batches = list(store.export_events(P, [], START, END, None, None))
    assert batches and batches[0].schema.names == EVENT_COLUMNS
    for column in ("time", "send_time", "user_id"):
        assert pa.types.is_integer(batches[0].schema.field(column).type)


def test_events_are_exported_with_names_only_or_without_excluded_ones(store: Store) -> None:
    received(store)

    def ids(only: list[str] | None, exclude: list[str] | None) -> list[str]:
        return [r["event_id"] for r in rows(store.export_events(P, [], START, END, only, exclude))]

    assert ids(["pay"], None) == ["e1", "e3"]
    assert ids(["pay", "login", "nothing"], None) == ["e1", "e6", "e3"]
    assert ids(None, ["pay"]) == ["e6", "e2"]
    assert ids(None, []) == ["e1", "e6", "e2", "e3"]
    assert ids(["pay", "view"], ["view"]) == ["e1", "e3"]
    assert ids([], None) == []


def test_received_counts_agree_with_what_the_exports_stream(store: Store) -> None:
    received(store)
    ps = [(1, T0 - 1, {}), (2, T0, {}), (3, T0 + 59 * SECOND, {}), (4, T0 + 60 * SECOND, {})]
    write(store, lambda w: w.upsert_profiles(P, profiles(ps), []))
    by_name, changed = store.received_counts(P, START, END)
    streamed = Counter(
        r["event_name"] for r in rows(store.export_events(P, [], START, END, None, None))
    )
    assert by_name == dict(streamed) == {"pay": 2, "view": 1, "login": 1}
    assert changed == len(rows(store.export_profiles(P, [], START, END))) == 2
    assert store.received_counts(P, END, at(T0 + 3600 * SECOND)) == ({"pay": 1}, 1)


def test_profiles_are_exported_by_update_window(store: Store) -> None:
    ps = [
        (1, T0 - 1, {CITY.id: "early"}),
        (2, T0, {CITY.id: "B"}),
        (3, T0 - 100 * SECOND, {CITY.id: "C"}),
        (4, T0 + 60 * SECOND, {CITY.id: "late"}),
    ]
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles(ps), USER_PROPS),
        lambda w: w.upsert_profiles(P, profiles([(3, T0 + 5 * SECOND, {})]), USER_PROPS),
    )
    batches = list(store.export_profiles(P, [CITY], START, END))
    assert batches[0].schema.names == ["user_id", "created", "updated", CITY.column]
    assert sorted(rows(batches), key=lambda r: r["user_id"]) == [
        {"user_id": 2, "created": ms(T0), "updated": ms(T0), CITY.column: '"B"'},
        {
            "user_id": 3,
            "created": ms(T0 - 100 * SECOND),
            "updated": ms(T0 + 5 * SECOND),
            CITY.column: '"C"',
        },
    ]


def json_values(row: dict[str, Any], props: Iterable[Any]) -> dict[int, Any]:
    """A row's property columns read as JSON (the text's own types: 3 is an int)."""
    out = {}
    for p in props:
        text = row[p.column]
        out[p.id] = None if text is None else json.loads(text)
    return out


SEEN_AT = datetime(2024, 2, 29, 12, 0, 0, 250000)


def test_each_type_is_exported_as_its_json_text(store: Store) -> None:
    nan = float("nan")
    evs = [
        Event(
            "n1",
            1,
            values={
                AMOUNT.id: 3.0,
                OS.id: 'a"b\\c',
                PAID.id: True,
                AT.id: SEEN_AT,
                ITEMS.id: ["x", "y"],
            },
        ),
        Event("n2", 1, time=T0 + 1, values={AMOUNT.id: 2.5, PAID.id: False, ITEMS.id: ["z"]}),
        Event("n3", 1, time=T0 + 2, values={AMOUNT.id: nan}),
        Event("n4", 1, time=T0 + 3, values={AMOUNT.id: -(2.0**53)}),
        Event("n5", 1, time=T0 + 4, values={AMOUNT.id: 2.0**53 + 2}),
        Event("n6", 1, time=T0 + 5, values={AMOUNT.id: 1e300}),
        Event("n7", 1, time=T0 + 6, values={AMOUNT.id: float("inf")}),
    ]
    user = {CITY.id: "Zürich", SCORE.id: 42.0, TAGS.id: ["a", "b"], VIP.id: False, SEEN.id: SEEN_AT}
    write(
        store,
        lambda w: w.upsert_events(P, event_rows(evs), EVENT_PROPS),
        lambda w: w.upsert_profiles(
            P, profiles([(1, T0, user), (2, T0, {SCORE.id: nan})]), USER_PROPS
        ),
    )
    got = {
        r["event_id"]: r for r in rows(store.export_events(P, EVENT_PROPS, START, END, None, None))
    }
    epoch = int((SEEN_AT - datetime(1970, 1, 1)).total_seconds() * 1000)
    assert json_values(got["n1"], EVENT_PROPS) == {
        AMOUNT.id: 3,
        OS.id: 'a"b\\c',
        PAID.id: True,
        AT.id: epoch,
        ITEMS.id: ["x", "y"],
    }
    assert type(json.loads(got["n1"][AMOUNT.column])) is int  # a whole number: no ".0"
    assert type(json.loads(got["n1"][AT.column])) is int
    assert json_values(got["n2"], EVENT_PROPS) == {
        AMOUNT.id: 2.5,
        OS.id: None,
        PAID.id: False,
        AT.id: None,
        ITEMS.id: ["z"],
    }
    assert got["n3"][AMOUNT.column] is None and got["n7"][AMOUNT.column] is None  # NaN, inf
    assert json.loads(got["n4"][AMOUNT.column]) == -(2**53)
    assert type(json.loads(got["n4"][AMOUNT.column])) is int
    assert json.loads(got["n5"][AMOUNT.column]) == 2.0**53 + 2  # past 2^53: not as an integer
    assert json.loads(got["n6"][AMOUNT.column]) == 1e300
    users = {r["user_id"]: r for r in rows(store.export_profiles(P, USER_PROPS, START, END))}
    assert json_values(users[1], [CITY, SCORE, TAGS, VIP, SEEN, EMAIL_KEY]) == {
        CITY.id: "Zürich",
        SCORE.id: 42,
        TAGS.id: ["a", "b"],
        VIP.id: False,
        SEEN.id: epoch,
        EMAIL: None,
    }
    assert type(json.loads(users[1][SCORE.column])) is int
    assert users[2][SCORE.column] is None


def test_the_login_column_is_the_users_value_as_text(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(
            P, profiles([(1, T0, {EMAIL: "a@x", SCORE.id: 42.0}), (3, T0, {})]), USER_PROPS
        ),
        lambda w: w.upsert_events(
            P, event_rows([Event("e1", 1), Event("e2", 2), Event("e3", 3)]), []
        ),
    )
    batches = list(store.export_events(P, [AMOUNT], START, END, None, None, EMAIL_KEY))
    assert batches[0].schema.names == [*EVENT_COLUMNS, "login", AMOUNT.column]
    logins = {r["event_id"]: r["login"] for r in rows(batches)}
    assert logins == {"e1": "a@x", "e2": None, "e3": None}  # 2 has no profile, 3 no value
    by_number = rows(store.export_events(P, [], START, END, None, None, SCORE))
    assert {r["event_id"]: r["login"] for r in by_number} == {"e1": "42", "e2": None, "e3": None}
    profile_batches = list(store.export_profiles(P, [CITY], START, END, EMAIL_KEY))
    assert profile_batches[0].schema.names == [
        "user_id",
        "created",
        "updated",
        "login",
        CITY.column,
    ]
    assert {r["user_id"]: r["login"] for r in rows(profile_batches)} == {1: "a@x", 3: None}


def test_members_of_given_versions_are_exported_with_current_identity_values(
    store: Store,
) -> None:
    ps = [(1, T0, {EMAIL: "a@x", MOBILE: "1"}), (2, T0, {EMAIL: "b@x"}), (3, T0, {})]
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles(ps), USER_PROPS),
        lambda w: w.write_segment_rows(P, 4, 1, members([1, 2], ["x", "y"])),
        lambda w: w.write_segment_rows(P, 4, 2, members([2, 3], ["z", None])),
        lambda w: w.write_segment_rows(P, 7, 1, members([1])),
        lambda w: w.upsert_profiles(P, profiles([(1, T0 + 1, {EMAIL: "a2@x"})]), USER_PROPS),
    )
    keys = [EMAIL_KEY, MOBILE_KEY]
    batches = list(store.export_members(P, [(4, 2), (7, 1)], keys, EMAIL_KEY))
    assert batches[0].schema.names == [
        "segment_id",
        "version",
        "user_id",
        "tag_value",
        "login",
        EMAIL_KEY.column,
        MOBILE_KEY.column,
    ]
    assert sorted(tuple(r.values()) for r in rows(batches)) == [
        (4, 2, 2, "z", "b@x", '"b@x"', None),
        (4, 2, 3, None, None, None, None),
        (7, 1, 1, None, "a2@x", '"a2@x"', '"1"'),
    ]
    plain = list(store.export_members(P, [(4, 1)], []))
    assert plain[0].schema.names == ["segment_id", "version", "user_id", "tag_value"]
    assert sorted(tuple(r.values()) for r in rows(plain)) == [(4, 1, 1, "x"), (4, 1, 2, "y")]
    assert rows(store.export_members(P, [(4, 3), (9, 1)], keys)) == []
    assert rows(store.export_members(P, [], keys)) == []
