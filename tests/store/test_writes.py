"""The store contract, writes: tables and columns, user ids, identities, profile and event
upserts, deletes and clears, documents, and the lookups a write turn makes."""

from __future__ import annotations

import json
from datetime import datetime

from opencdp.catalog.model import Property
from opencdp.catalog.types import COLUMN_TYPES, PropertyType
from opencdp.store.base import Store
from tests.store.conftest import Opener
from tests.store.kit import (
    AMOUNT,
    AT,
    CITY,
    EMAIL,
    EMAIL_KEY,
    EVENT_PROPS,
    ITEMS,
    MOBILE,
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
    import_rows,
    members,
    on_list,
    profiles,
    values,
    write,
)

LATER = Property(30, "user", "later", PropertyType.STRING)


def test_the_capabilities_describe_every_property_type(store: Store) -> None:
    caps = store.capabilities
    assert set(caps.column_types) >= set(COLUMN_TYPES)  # the types a column may have
    assert caps.sql.engine and caps.sql.sqlglot and caps.name
    assert caps.columns_per_transaction >= 1
    assert not store.transient(ValueError("not the store's"))


def test_ensure_project_and_columns_are_idempotent(store: Store) -> None:
    for _ in range(2):
        with store.writer() as w:
            w.ensure_project(P)
            w.ensure_project(P)
            w.ensure_columns(P, USER_PROPS)
            w.ensure_columns(P, [*USER_PROPS, *EVENT_PROPS])
            w.upsert_profiles(P, profiles([(1, T0, {CITY.id: "A"})]), [CITY])
    with store.writer() as w:  # a column added later: the rows already there keep their values
        w.ensure_project(P)
        w.ensure_columns(P, [LATER, CITY])
        w.upsert_profiles(P, profiles([(2, T0, {LATER.id: "x"})]), [LATER])
    assert store.profile(P, 1, [CITY, LATER]) is not None
    assert (store.profile(P, 1, [CITY, LATER]) or {})["values"] == {CITY.id: "A"}
    assert (store.profile(P, 2, [CITY, LATER]) or {})["values"] == {LATER.id: "x"}
    assert store.counts(P) == {"profiles": 2, "events": 0, "identities": 0}


def test_a_property_without_a_column_reads_as_no_value(store: Store) -> None:
    write(store, lambda w: w.upsert_profiles(P, profiles([(1, T0, {CITY.id: "A"})]), [CITY]))
    row = store.profile(P, 1, [CITY, LATER])
    assert row is not None and row["values"] == {CITY.id: "A"}
    (found,) = write(store, lambda w: w.profile_values(P, [1], [CITY, LATER]))
    assert found == {1: {CITY.id: "A"}}


def test_user_ids_are_never_reused_also_after_reopening(store: Store, open_again: Opener) -> None:
    a, b = write(store, lambda w: w.allocate_user_ids(P, 3), lambda w: w.allocate_user_ids(P, 2))
    assert b >= a + 3
    (c,) = write(store, lambda w: w.allocate_user_ids(P, 1))
    assert c >= b + 2
    store.close()
    again = open_again()
    (d,) = write(again, lambda w: w.allocate_user_ids(P, 4))
    assert d > c
    assert a >= 1


def test_identities_are_looked_up_and_each_value_belongs_to_one_user(store: Store) -> None:
    write(
        store,
        lambda w: w.insert_identities(P, [(EMAIL, "a@x"), (MOBILE, "1"), (EMAIL, "1")], [1, 2, 3]),
    )
    (found,) = write(
        store,
        lambda w: w.lookup_identities(P, [(EMAIL, "a@x"), (MOBILE, "1"), (EMAIL, "zz"), (9, "1")]),
    )
    assert found == {(EMAIL, "a@x"): 1, (MOBILE, "1"): 2}
    assert write(store, lambda w: w.lookup_identities(P, []))[0] == {}
    # the same key and value given to another user moves it there: a value has one owner
    write(store, lambda w: w.insert_identities(P, [(EMAIL, "a@x")], [4]))
    assert store.find_user(P, (EMAIL, "a@x")) == 4
    assert store.identities(P, 1) == []
    assert store.identities(P, 4) == [(EMAIL, "a@x")]
    assert store.find_user(P, (EMAIL, "1")) == 3 and store.find_user(P, (MOBILE, "1")) == 2
    assert store.counts(P)["identities"] == 3


def test_a_profile_upsert_keeps_created_at_moves_updated_at_and_a_null_leaves_a_value(
    store: Store,
) -> None:
    first = profiles([(1, T0, {CITY.id: "Paris", SCORE.id: 2.5, VIP.id: True})])
    write(store, lambda w: w.upsert_profiles(P, first, USER_PROPS))
    later = profiles([(1, T0 + 5 * SECOND, {CITY.id: None, SCORE.id: 3.0, VIP.id: False})])
    write(store, lambda w: w.upsert_profiles(P, later, USER_PROPS))
    row = store.profile(P, 1, USER_PROPS)
    assert row is not None
    assert row["user_id"] == 1
    assert (row["created_at"], row["updated_at"]) == (at(T0), at(T0 + 5 * SECOND))
    assert row["values"] == {CITY.id: "Paris", SCORE.id: 3.0, VIP.id: False}
    assert store.counts(P)["profiles"] == 1


def test_values_of_every_type_are_read_back_as_written(store: Store) -> None:
    seen = datetime(2024, 2, 29, 23, 59, 58, 123456)
    user = {
        EMAIL: "a@x",
        CITY.id: "Zürich \"'\n",
        SCORE.id: -12.75,
        TAGS.id: ["b", "a", "a"],
        VIP.id: True,
        SEEN.id: seen,
    }
    event = {AMOUNT.id: 3.0, OS.id: "ios", PAID.id: False, AT.id: seen, ITEMS.id: ["x", "y"]}
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(1, T0, user)]), USER_PROPS),
        lambda w: w.upsert_events(P, event_rows([Event("e1", 1, values=event)]), EVENT_PROPS),
    )
    assert values(store, 1) == user
    (got,) = store.latest_events(P, 1, 10, EVENT_PROPS)
    assert got["values"] == event
    assert (got["event_id"], got["event"]) == ("e1", "pay")
    assert (got["event_time"], got["received_at"]) == (at(T0), at(T0 + SECOND))
    (stored,) = write(store, lambda w: w.profile_values(P, [1], USER_PROPS))
    assert stored == {1: user}


def test_an_empty_list_is_a_value_and_times_of_any_year_are_kept(store: Store) -> None:
    """Data comes out as it went in at the edges: an empty list is kept as one (not as no
    value, and it replaces a stored list), and times from year 1 to 9999 keep every
    microsecond, in reads and in exports (epoch milliseconds rounded down)."""
    early, late = datetime(1, 1, 2, 0, 0, 0, 1), datetime(9999, 12, 29, 23, 59, 59, 999999)
    write(
        store,
        lambda w: w.upsert_profiles(
            P,
            profiles([(1, T0, {TAGS.id: ["a"]}), (2, T0, {TAGS.id: [], SEEN.id: early})]),
            USER_PROPS,
        ),
        lambda w: w.upsert_profiles(P, profiles([(1, T0 + 1, {TAGS.id: []})]), USER_PROPS),
        lambda w: w.upsert_events(
            P, event_rows([Event("e1", 2, values={AT.id: late, ITEMS.id: []})]), EVENT_PROPS
        ),
    )
    assert values(store, 1) == {TAGS.id: []}
    assert values(store, 2) == {TAGS.id: [], SEEN.id: early}
    (got,) = store.latest_events(P, 2, 10, EVENT_PROPS)
    assert got["values"] == {AT.id: late, ITEMS.id: []}
    rows = [
        r
        for b in store.export_profiles(P, [TAGS, SEEN], datetime(1, 1, 2), datetime(9999, 12, 30))
        for r in b.to_pylist()
    ]
    assert [(r[TAGS.column], r[SEEN.column]) for r in rows] == [
        ("[]", None),
        ("[]", str(-62135510400000)),  # (0001-01-02 00:00:00.000001, rounded down)
    ]  # fmt: skip


def test_an_event_upsert_replaces_by_event_id_and_keeps_properties_not_given(
    store: Store,
) -> None:
    first = Event("e1", 1, "pay", T0, T0 + SECOND, {AMOUNT.id: 1.0, OS.id: "ios"})
    write(store, lambda w: w.upsert_events(P, event_rows([first]), EVENT_PROPS))
    again = Event("e1", 2, "refund", T0 + 9 * SECOND, T0 + 10 * SECOND, {OS.id: "android"})
    write(store, lambda w: w.upsert_events(P, event_rows([again]), EVENT_PROPS))
    assert store.counts(P)["events"] == 1
    assert (store.event_count(P, 1), store.event_count(P, 2)) == (0, 1)
    (got,) = store.latest_events(P, 2, 10, EVENT_PROPS)
    assert (got["event"], got["event_time"], got["received_at"]) == (
        "refund",
        at(T0 + 9 * SECOND),
        at(T0 + 10 * SECOND),
    )
    assert got["values"] == {AMOUNT.id: 1.0, OS.id: "android"}


def test_existing_event_ids(store: Store) -> None:
    assert write(store, lambda w: w.existing_event_ids(P, ["e1"]))[0] == set()
    write(store, lambda w: w.upsert_events(P, event_rows([Event("e1", 1), Event("e2", 1)]), []))
    found = write(
        store,
        lambda w: w.existing_event_ids(P, ["e2", "e9", "E1"]),
        lambda w: w.existing_event_ids(P, []),
    )
    assert found == [{"e2"}, set()]


def test_deleting_a_user_removes_everything_of_it(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(
            P, profiles([(1, T0, {CITY.id: "A"}), (2, T0, {CITY.id: "B"})]), USER_PROPS
        ),
        lambda w: w.insert_identities(
            P, [(EMAIL, "a@x"), (MOBILE, "1"), (EMAIL, "b@x")], [1, 1, 2]
        ),
        lambda w: w.upsert_events(
            P, event_rows([Event("e1", 1), Event("e2", 1), Event("e3", 2)]), []
        ),
        lambda w: on_list(w, 5, [1, 2]),
        lambda w: w.write_segment_rows(P, 4, 1, members([1, 2], ["t", "u"])),
    )
    write(store, lambda w: w.delete_users(P, [1, 99]), lambda w: w.delete_users(P, []))
    assert store.profile(P, 1, USER_PROPS) is None
    assert store.identities(P, 1) == [] and store.find_user(P, (MOBILE, "1")) is None
    assert store.event_count(P, 1) == 0 and store.latest_events(P, 1, 10, []) == []
    assert store.list_members(P, 5, 10, 0) == [2]
    assert store.segment_members(P, 4, 1, 10, 0) == [(2, "u")]
    assert store.user_segments(P, 1) == []
    assert write(store, lambda w: w.existing_users(P, [1, 2]))[0] == {2}
    # the other user keeps all of it
    assert values(store, 2) == {CITY.id: "B"} and store.identities(P, 2) == [(EMAIL, "b@x")]
    assert store.event_count(P, 2) == 1 and store.user_segments(P, 2) == [(4, 1, "u")]
    assert store.counts(P) == {"profiles": 1, "events": 1, "identities": 1}


def test_profile_values_are_the_stored_non_null_values_of_users_with_a_profile(
    store: Store,
) -> None:
    assert write(store, lambda w: w.profile_values(P, [1], USER_PROPS))[0] == {}
    rows = profiles([(1, T0, {CITY.id: "A", SCORE.id: 0.0}), (2, T0, {}), (3, T0, {VIP.id: False})])
    write(store, lambda w: w.upsert_profiles(P, rows, USER_PROPS))
    got = write(
        store,
        lambda w: w.profile_values(P, [1, 2, 3, 9], [CITY, SCORE, VIP]),
        lambda w: w.profile_values(P, [1], [CITY]),
        lambda w: w.profile_values(P, [], [CITY]),
    )
    assert got == [
        {1: {CITY.id: "A", SCORE.id: 0.0}, 2: {}, 3: {VIP.id: False}},
        {1: {CITY.id: "A"}},
        {},
    ]


def test_clearing_profile_values_sets_each_property_to_null_for_its_users(store: Store) -> None:
    rows = profiles(
        [(u, T0, {CITY.id: f"c{u}", SCORE.id: float(u), TAGS.id: ["x"]}) for u in (1, 2, 3)]
    )
    write(store, lambda w: w.upsert_profiles(P, rows, USER_PROPS))
    write(
        store,
        lambda w: w.clear_profile_values(
            P, [(SCORE, [1, 2]), (TAGS, [2]), (CITY, []), (LATER, [1])]
        ),
    )
    assert values(store, 1) == {CITY.id: "c1", TAGS.id: ["x"]}
    assert values(store, 2) == {CITY.id: "c2"}
    assert values(store, 3) == {CITY.id: "c3", SCORE.id: 3.0, TAGS.id: ["x"]}
    row = store.profile(P, 1, USER_PROPS)
    assert row is not None and row["updated_at"] == at(T0)


def test_clearing_event_properties_nulls_them_all_and_a_new_write_sets_them(
    store: Store,
) -> None:
    full = {AMOUNT.id: 1.0, OS.id: "ios", PAID.id: True, AT.id: at(T0), ITEMS.id: ["a"]}
    rows = [Event("e1", 1, values=full), Event("e2", 1, time=T0 - 1, values=full)]
    write(store, lambda w: w.upsert_events(P, event_rows(rows), EVENT_PROPS))
    write(store, lambda w: w.clear_event_properties(P, ["e1", "e9"]))
    got = {e["event_id"]: e for e in store.latest_events(P, 1, 10, EVENT_PROPS)}
    assert got["e1"]["values"] == {} and got["e1"]["event"] == "pay"
    assert got["e2"]["values"] == full
    again = [Event("e1", 1, values={OS.id: "web"})]  # written anew: only what it carries
    write(store, lambda w: w.upsert_events(P, event_rows(again), EVENT_PROPS))
    assert store.latest_events(P, 1, 1, EVENT_PROPS)[0]["values"] == {OS.id: "web"}
    assert store.counts(P)["events"] == 2


def test_documents_are_inserted_replaced_and_read_by_id(store: Store) -> None:
    assert write(store, lambda w: w.existing_documents(P, 3, ["a"]))[0] == set()
    assert store.document(P, 3, "a") is None and store.document_count(P, 3) == 0
    docs = ['{"_id": "a", "n": 1, "s": "x"}', '{"_id": "b", "n": [1, {"k": null}]}']
    write(store, lambda w: w.upsert_documents(P, 3, ["a", "b"], docs))
    write(store, lambda w: w.upsert_documents(P, 3, ["a"], ['{"_id": "a", "n": 2}']))
    write(store, lambda w: w.upsert_documents(P, 8, ["a"], ['{"_id": "a", "other": true}']))
    assert json.loads(store.document(P, 3, "a") or "") == {"_id": "a", "n": 2}
    assert json.loads(store.document(P, 3, "b") or "") == {"_id": "b", "n": [1, {"k": None}]}
    assert json.loads(store.document(P, 8, "a") or "") == {"_id": "a", "other": True}
    assert store.document(P, 3, "z") is None
    assert (store.document_count(P, 3), store.document_count(P, 8)) == (2, 1)
    found = write(
        store,
        lambda w: w.existing_documents(P, 3, ["a", "b", "z"]),
        lambda w: w.existing_documents(P, 8, ["b"]),
        lambda w: w.existing_documents(P, 3, []),
    )
    assert found == [{"a", "b"}, set(), set()]


def test_existing_users_are_the_ones_with_a_profile(store: Store) -> None:
    assert write(store, lambda w: w.existing_users(P, [1]))[0] == set()
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(1, T0, {}), (2, T0, {})]), []),
        lambda w: w.insert_identities(P, [(EMAIL, "c@x")], [3]),  # an identity is no profile
    )
    found = write(
        store, lambda w: w.existing_users(P, [2, 3, 9, 1]), lambda w: w.existing_users(P, [])
    )
    assert found == [{1, 2}, set()]


def test_a_property_is_matched_by_its_typed_value(store: Store) -> None:
    day = datetime(2024, 1, 2, 3, 4, 5)
    rows = profiles(
        [
            (1, T0, {CITY.id: "Paris", SCORE.id: 2.0, VIP.id: True, SEEN.id: day}),
            (2, T0, {CITY.id: "Paris", SCORE.id: 2.5, VIP.id: False}),
            (3, T0, {CITY.id: "paris", SCORE.id: 2.0, VIP.id: True, SEEN.id: day}),
            (4, T0, {EMAIL: "d@x"}),
        ]
    )
    write(store, lambda w: w.upsert_profiles(P, rows, USER_PROPS))

    def match(prop: Property, wanted: list[object]) -> dict[object, list[int]]:
        (found,) = write(store, lambda w: w.match_property(P, prop, wanted))
        return {v: sorted(users) for v, users in found.items()}

    assert match(CITY, ["Paris", "Rome"]) == {"Paris": [1, 2]}
    assert match(SCORE, [2.0, 2.5, 7.0]) == {2.0: [1, 3], 2.5: [2]}
    assert match(VIP, [True]) == {True: [1, 3]}
    assert match(VIP, [False, True]) == {False: [2], True: [1, 3]}
    assert match(SEEN, [day, datetime(2024, 1, 2)]) == {day: [1, 3]}
    assert match(EMAIL_KEY, ["d@x"]) == {"d@x": [4]}
    assert match(CITY, []) == {}
    assert match(LATER, ["x"]) == {}  # a property the store has no column for


def test_one_turn_runs_any_sequence_of_operations(store: Store) -> None:
    """Each operation leaves the turn ready for the next, whatever it was (a lookup that
    answered, a count a segment write returned)."""
    rows = profiles([(1, T0, {CITY.id: "A"}), (2, T0, {CITY.id: "B"})])
    steps = [
        lambda w: w.upsert_profiles(P, rows, USER_PROPS),
        lambda w: w.allocate_user_ids(P, 2, "import:1:1"),
        lambda w: w.allocate_user_ids(P, 2, "import:1:1"),  # held: answered from the store
        lambda w: w.insert_identities(P, [(EMAIL, "a@x")], [1]),
        lambda w: w.lookup_identities(P, [(EMAIL, "a@x")]),
        lambda w: w.write_segment_rows(P, 4, 1, members([1, 2])),
        lambda w: w.upsert_profiles(P, profiles([(2, T0 + 1, {SCORE.id: 1.0})]), USER_PROPS),
        lambda w: w.profile_values(P, [1, 2], USER_PROPS),
        lambda w: w.upsert_events(P, event_rows([Event("e1", 1)]), EVENT_PROPS),
        lambda w: w.existing_event_ids(P, ["e1"]),
        lambda w: w.existing_users(P, [1, 2]),
        lambda w: w.match_property(P, CITY, ["A"]),
        lambda w: w.upsert_documents(P, 3, ["a"], ['{"_id": "a"}']),
        lambda w: w.existing_documents(P, 3, ["a"]),
        lambda w: w.import_profiles(P, import_rows([1]), None, [], [], False, False, 5),
        lambda w: w.clear_event_properties(P, ["e1"]),
        lambda w: w.import_profiles(P, import_rows(["b@x"]), EMAIL, [], [], False, True, 5),
        lambda w: w.clear_profile_values(P, [(SCORE, [2])]),
        lambda w: w.merge_users(P, {2: 1}, USER_PROPS),
        lambda w: w.delete_users(P, [9]),
    ]
    for first in range(len(steps)):  # each operation, followed by every other kind
        with store.writer() as w:
            w.ensure_project(P)
            w.ensure_columns(P, [*USER_PROPS, *EVENT_PROPS])
            for step in steps[first:] + steps[:first]:
                step(w)
    assert store.find_user(P, (EMAIL, "a@x")) == 1 and store.profile(P, 2, USER_PROPS) is None
