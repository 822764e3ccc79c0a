"""The store contract, merges: a loser's events, identities, list and segment memberships
move to its survivor (once each), and the merged profile takes each property from the most
recently updated profile that has a value, and the earliest creation time."""

from __future__ import annotations

from datetime import datetime

from opencdp.store.base import Store
from tests.store.kit import (
    CITY,
    EMAIL,
    MOBILE,
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
    on_list,
    profiles,
    values,
    write,
)

DAY = datetime(2024, 5, 6, 7, 8, 9)


def test_a_merge_moves_everything_of_the_loser_to_the_survivor(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(
            P,
            profiles([(1, T0, {CITY.id: "A", VIP.id: True}), (2, T0 - 100 * SECOND, {})]),
            USER_PROPS,
        ),
        lambda w: on_list(w, 5, [1, 2]),
        lambda w: on_list(w, 6, [2]),
        lambda w: w.upsert_profiles(
            P,
            profiles(
                [
                    (1, T0 + 10 * SECOND, {SEEN.id: DAY}),
                    (2, T0 + 20 * SECOND, {CITY.id: "B", SCORE.id: 5.0, TAGS.id: ["x"]}),
                ]
            ),
            USER_PROPS,
        ),
        lambda w: w.insert_identities(
            P, [(EMAIL, "a@x"), (EMAIL, "b@x"), (MOBILE, "2")], [1, 2, 2]
        ),
        lambda w: w.upsert_events(
            P, event_rows([Event("e1", 1), Event("e2", 2), Event("e3", 2)]), []
        ),
        lambda w: w.write_segment_rows(P, 4, 1, members([1, 2], ["a", "b"])),
        lambda w: w.write_segment_rows(P, 4, 2, members([2], ["b2"])),
        lambda w: w.write_segment_rows(P, 7, 1, members([2], ["c"])),
    )
    write(store, lambda w: w.merge_users(P, {2: 1}, USER_PROPS))

    row = store.profile(P, 1, USER_PROPS)
    assert row is not None
    assert (row["created_at"], row["updated_at"]) == (at(T0 - 100 * SECOND), at(T0 + 20 * SECOND))
    # CITY from the more recently updated profile; VIP from the only one that has it
    assert row["values"] == {
        CITY.id: "B",
        VIP.id: True,
        SCORE.id: 5.0,
        TAGS.id: ["x"],
        SEEN.id: DAY,
    }
    assert store.profile(P, 2, USER_PROPS) is None
    assert sorted(store.identities(P, 1)) == [(EMAIL, "a@x"), (EMAIL, "b@x"), (MOBILE, "2")]
    assert store.identities(P, 2) == [] and store.find_user(P, (MOBILE, "2")) == 1
    assert (store.event_count(P, 1), store.event_count(P, 2)) == (3, 0)
    assert store.list_members(P, 5, 10, 0) == [1]  # both were on it: the survivor once
    assert store.list_members(P, 6, 10, 0) == [1]
    assert [u for u, _ in store.segment_members(P, 4, 1, 10, 0)] == [1]
    assert store.segment_members(P, 4, 2, 10, 0) == [(1, "b2")]
    assert store.segment_members(P, 7, 1, 10, 0) == [(1, "c")]
    assert [(s, v) for s, v, _ in store.user_segments(P, 1)] == [(4, 1), (4, 2), (7, 1)]
    assert store.user_segments(P, 2) == []
    assert store.counts(P) == {"profiles": 1, "events": 3, "identities": 3}
    assert write(store, lambda w: w.existing_users(P, [1, 2]))[0] == {1}


def test_several_losers_and_survivors_in_one_call(store: Store) -> None:
    rows = [
        (4, T0, {CITY.id: "four"}),
        (2, T0 + 1, {CITY.id: "two"}),
        (3, T0 + 2, {SCORE.id: 3.0}),
        (1, T0 + 3, {CITY.id: "one"}),
        (5, T0 + 5, {CITY.id: "five"}),
    ]
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles(rows), USER_PROPS),
        lambda w: w.upsert_profiles(
            P, profiles([(2, T0 + 8, {}), (3, T0 + 9, {})]), USER_PROPS
        ),  # touched later, nothing set: updated_at moves
        lambda w: w.upsert_events(P, event_rows([Event(f"e{u}", u) for u in (1, 2, 3, 4, 5)]), []),
    )
    write(store, lambda w: w.merge_users(P, {2: 1, 3: 1, 5: 4}, USER_PROPS))
    one, four = store.profile(P, 1, USER_PROPS), store.profile(P, 4, USER_PROPS)
    assert one is not None and four is not None
    assert (one["created_at"], one["updated_at"]) == (at(T0 + 1), at(T0 + 9))
    assert one["values"] == {CITY.id: "two", SCORE.id: 3.0}  # 3 is newer but has no city
    assert (four["created_at"], four["updated_at"]) == (at(T0), at(T0 + 5))
    assert four["values"] == {CITY.id: "five"}
    assert [store.event_count(P, u) for u in (1, 2, 3, 4, 5)] == [3, 0, 0, 2, 0]
    assert store.counts(P)["profiles"] == 2


def test_a_chain_of_merges_in_one_call_ends_at_the_last_survivor(store: Store) -> None:
    """3 merges into 2, which merges into 1: everything of 2 and 3 ends with 1."""
    rows = [(1, T0, {CITY.id: "one"}), (2, T0 + 1, {SCORE.id: 2.0}), (3, T0 + 2, {CITY.id: "3"})]
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles(rows), USER_PROPS),
        lambda w: w.insert_identities(P, [(EMAIL, "1"), (EMAIL, "2"), (EMAIL, "3")], [1, 2, 3]),
        lambda w: w.upsert_events(P, event_rows([Event(f"e{u}", u) for u in (1, 2, 3)]), []),
        lambda w: on_list(w, 5, [2, 3], touched=T0 + 2),
    )
    write(store, lambda w: w.merge_users(P, {3: 2, 2: 1}, USER_PROPS))
    assert values(store, 2) is None and values(store, 3) is None
    assert values(store, 1) == {CITY.id: "3", SCORE.id: 2.0}
    assert [store.event_count(P, u) for u in (1, 2, 3)] == [3, 0, 0]
    assert sorted(store.identities(P, 1)) == [(EMAIL, "1"), (EMAIL, "2"), (EMAIL, "3")]
    assert store.list_members(P, 5, 10, 0) == [1]
    assert store.counts(P) == {"profiles": 1, "events": 3, "identities": 3}


def test_a_merge_into_a_user_without_a_profile_keeps_the_losers_values(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(2, T0, {CITY.id: "B"})]), USER_PROPS),
        lambda w: w.insert_identities(P, [(EMAIL, "a@x"), (EMAIL, "b@x")], [1, 2]),
    )
    write(store, lambda w: w.merge_users(P, {2: 1}, USER_PROPS), lambda w: w.merge_users(P, {}, []))
    assert values(store, 1) == {CITY.id: "B"} and values(store, 2) is None
    assert sorted(store.identities(P, 1)) == [(EMAIL, "a@x"), (EMAIL, "b@x")]
