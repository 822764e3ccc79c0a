"""The store contract, reads: a user found by an identity, its profile, identities and
events, a project's counts and static lists; and a project without tables answers empty."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import sqlglot.expressions as exp

from opencdp.store.base import SEGMENT_ROWS, Budget, Store
from opencdp.store.tree import USERS
from tests.store.kit import (
    AMOUNT,
    CITY,
    EMAIL,
    EVENT_PROPS,
    MOBILE,
    OS,
    SECOND,
    T0,
    USER_PROPS,
    Event,
    P,
    at,
    event_rows,
    members,
    on_list,
    profiles,
    write,
)

BUDGET = Budget(seconds=60.0, memory_bytes=1 << 30)
NOBODY = 42  # a project the store never saw


def test_a_user_is_found_by_its_identities_and_read_whole(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(
            P, profiles([(7, T0, {CITY.id: "A", EMAIL: "a@x"})]), USER_PROPS
        ),
        lambda w: w.insert_identities(
            P, [(MOBILE, "9"), (EMAIL, "a@x"), (EMAIL, "b@x")], [7, 7, 7]
        ),
    )
    assert store.find_user(P, (EMAIL, "a@x")) == 7
    assert store.find_user(P, (EMAIL, "A@x")) is None  # values are stored normalised, as given
    assert store.find_user(P, (MOBILE, "a@x")) is None
    assert sorted(store.identities(P, 7)) == [(EMAIL, "a@x"), (EMAIL, "b@x"), (MOBILE, "9")]
    assert store.identities(P, 8) == []
    row = store.profile(P, 7, USER_PROPS)
    assert row == {
        "user_id": 7,
        "created_at": at(T0),
        "updated_at": at(T0),
        "values": {CITY.id: "A", EMAIL: "a@x"},
    }
    assert store.profile(P, 8, USER_PROPS) is None
    assert (store.profile(P, 7, [CITY]) or {})["values"] == {CITY.id: "A"}  # only those asked


def test_latest_events_are_newest_first_up_to_the_limit(store: Store) -> None:
    rows = [
        Event("e1", 1, "view", T0 + 1 * SECOND, values={OS.id: "ios"}),
        Event("e3", 1, "pay", T0 + 3 * SECOND, values={AMOUNT.id: 3.0}),
        Event("e2", 1, "pay", T0 + 2 * SECOND),
        Event("e0", 2, "pay", T0 + 9 * SECOND),
    ]
    write(store, lambda w: w.upsert_events(P, event_rows(rows), EVENT_PROPS))
    latest = store.latest_events(P, 1, 10, EVENT_PROPS)
    assert [(e["event_id"], e["event"], e["event_time"]) for e in latest] == [
        ("e3", "pay", at(T0 + 3 * SECOND)),
        ("e2", "pay", at(T0 + 2 * SECOND)),
        ("e1", "view", at(T0 + 1 * SECOND)),
    ]
    assert [e["values"] for e in latest] == [{AMOUNT.id: 3.0}, {}, {OS.id: "ios"}]
    assert [e["event_id"] for e in store.latest_events(P, 1, 2, EVENT_PROPS)] == ["e3", "e2"]
    assert store.latest_events(P, 3, 10, EVENT_PROPS) == []
    assert (store.event_count(P, 1), store.event_count(P, 2), store.event_count(P, 3)) == (3, 1, 0)


def test_counts_of_a_project(store: Store) -> None:
    write(store)
    assert store.counts(P) == {"profiles": 0, "events": 0, "identities": 0}
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(1, T0, {}), (2, T0, {})]), []),
        lambda w: w.insert_identities(P, [(EMAIL, "a"), (EMAIL, "b"), (MOBILE, "a")], [1, 2, 3]),
        lambda w: w.upsert_events(P, event_rows([Event(f"e{i}", 1) for i in range(4)]), []),
    )
    assert store.counts(P) == {"profiles": 2, "events": 4, "identities": 3}


def test_list_members_are_paged_by_ascending_user_id(store: Store) -> None:
    users = [13, 3, 8, 5, 21]
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(u, T0, {}) for u in users]), []),
        lambda w: on_list(w, 5, [13, 3, 8]),
        lambda w: on_list(w, 5, [5, 3]),
        lambda w: on_list(w, 6, [21]),
    )
    assert store.list_members(P, 5, 2, 0) == [3, 5]
    assert store.list_members(P, 5, 2, 5) == [8, 13]
    assert store.list_members(P, 5, 2, 13) == []
    assert store.list_members(P, 5, 100, 4) == [5, 8, 13]
    assert store.list_members(P, 6, 10, 0) == [21]
    assert store.list_members(P, 7, 10, 0) == []


@pytest.mark.parametrize("seen", ["never", "other project"])
def test_a_project_without_tables_answers_empty(store: Store, seen: str, tmp_path: Path) -> None:
    if seen == "other project":
        write(
            store,
            lambda w: w.upsert_profiles(P, profiles([(1, T0, {CITY.id: "A"})]), USER_PROPS),
            lambda w: w.upsert_events(P, event_rows([Event("e1", 1)]), EVENT_PROPS),
            lambda w: w.write_segment_rows(P, 4, 1, members([1])),
        )
    start, end = datetime(2000, 1, 1), datetime(2100, 1, 1)
    assert store.find_user(NOBODY, (EMAIL, "a@x")) is None
    assert store.profile(NOBODY, 1, USER_PROPS) is None
    assert store.identities(NOBODY, 1) == []
    assert store.event_count(NOBODY, 1) == 0
    assert store.latest_events(NOBODY, 1, 10, EVENT_PROPS) == []
    assert store.counts(NOBODY) == {"profiles": 0, "events": 0, "identities": 0}
    assert store.list_members(NOBODY, 5, 10, 0) == []
    assert store.document(NOBODY, 3, "a") is None and store.document_count(NOBODY, 3) == 0
    assert sum(b.num_rows for b in store.export_events(NOBODY, [], start, end, None, None)) == 0
    assert sum(b.num_rows for b in store.export_profiles(NOBODY, [], start, end)) == 0
    assert sum(b.num_rows for b in store.export_members(NOBODY, [(4, 1)], [])) == 0
    assert store.received_counts(NOBODY, start, end) == ({}, 0)
    assert store.segment_members(NOBODY, 4, 1, 10, 0) == []
    assert store.segment_changes(NOBODY, 4, 1, 10) == ([], [])
    assert store.user_segments(NOBODY, 1) == []
    everyone = exp.select(exp.column("user_id"), exp.null().as_("tag_value")).from_(USERS)
    assert store.count_query(NOBODY, everyone, BUDGET) == 0
    rows = store.segment_rows(NOBODY, everyone, BUDGET)
    assert rows.schema.equals(SEGMENT_ROWS) and rows.num_rows == 0


def test_reads_do_not_wait_for_an_open_write_turn(store: Store) -> None:
    """Reads (segment queries among them) run while a writer holds its turn, and, where the
    engine has transactions, see what was committed before it."""
    write(store, lambda w: w.upsert_profiles(P, profiles([(1, T0, {CITY.id: "A"})]), USER_PROPS))
    everyone = exp.select(exp.column("user_id"), exp.null().as_("tag_value")).from_(USERS)
    with store.writer() as w:
        w.upsert_profiles(P, profiles([(2, T0, {CITY.id: "B"})]), USER_PROPS)
        seen = (
            store.counts(P)["profiles"],
            store.count_query(P, everyone, BUDGET),
            store.segment_rows(P, everyone, BUDGET).num_rows,
            store.profile(P, 2, USER_PROPS) is not None,
        )
    if store.capabilities.transactions:
        assert seen == (1, 1, 1, False)
    assert store.count_query(P, everyone, BUDGET) == 2
