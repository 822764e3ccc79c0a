"""The store contract, set-based profile imports (``StoreWriter.import_profiles``): matching
by an identity key or by user id, the row of a lookup value that wins, new profiles, links of
the other identity keys, static lists, and a check that writes nothing."""

from __future__ import annotations

import pyarrow as pa

from opencdp.store.base import ImportOutcome, Store, StoreWriter
from tests.store.kit import (
    CITY,
    EMAIL,
    MOBILE,
    SCORE,
    SECOND,
    T0,
    USER_PROPS,
    P,
    at,
    import_rows,
    profiles,
    values,
    write,
)

LATER = T0 + 60 * SECOND


def cities(*v: str | None) -> pa.Array:
    return pa.array(v, pa.string())


def scores(*v: float | None) -> pa.Array:
    return pa.array(v, pa.float64())


def keys(*v: str | None) -> pa.Array:
    return pa.array(v, pa.string())


def two_users(w: StoreWriter) -> tuple[int, int]:
    """Users a (a@x, mobile 1; city A, score 1) and b (b@x, mobile 2), with allocated ids."""
    a = w.allocate_user_ids(P, 2)
    w.upsert_profiles(
        P, profiles([(a, T0, {CITY.id: "A", SCORE.id: 1.0}), (a + 1, T0, {})]), USER_PROPS
    )
    w.insert_identities(
        P, [(EMAIL, "a@x"), (MOBILE, "1"), (EMAIL, "b@x"), (MOBILE, "2")], [a, a, a + 1, a + 1]
    )
    return a, a + 1


def setup(store: Store) -> tuple[int, int]:
    (users,) = write(store, two_users)
    a, b = users
    return a, b


def test_a_match_is_updated_and_a_row_matching_nothing_creates_a_profile(store: Store) -> None:
    a, b = setup(store)
    rows = import_rows(
        ["a@x", "n@x"], {CITY.column: cities("A2", "N"), SCORE.column: scores(None, 2.0)}, LATER
    )
    (out,) = write(
        store, lambda w: w.import_profiles(P, rows, EMAIL, [], [CITY, SCORE], False, True)
    )
    assert (out.imported, out.failures, out.warnings) == (2, {}, {})
    assert values(store, a) == {CITY.id: "A2", SCORE.id: 1.0}  # a null leaves the stored value
    row = store.profile(P, a, USER_PROPS)
    assert row is not None and (row["created_at"], row["updated_at"]) == (at(T0), at(LATER))
    n = store.find_user(P, (EMAIL, "n@x"))
    assert n is not None and n not in (a, b)
    created = store.profile(P, n, USER_PROPS)
    assert created is not None
    assert (created["created_at"], created["updated_at"]) == (at(LATER), at(LATER))
    assert created["values"] == {CITY.id: "N", SCORE.id: 2.0}
    assert store.identities(P, n) == [(EMAIL, "n@x")]
    assert store.counts(P) == {"profiles": 3, "events": 0, "identities": 5}
    (fresh,) = write(store, lambda w: w.allocate_user_ids(P, 1))
    assert fresh > n  # the new profile's id is taken


def test_the_last_row_of_a_lookup_value_wins(store: Store) -> None:
    rows = import_rows(
        ["z@x", "y@x", "z@x"],
        {CITY.column: cities("Z1", "Y", "Z2"), SCORE.column: scores(1.0, None, None)},
    )
    (out,) = write(
        store, lambda w: w.import_profiles(P, rows, EMAIL, [], [CITY, SCORE], False, True)
    )
    assert (out.imported, out.failures) == (3, {})
    z = store.find_user(P, (EMAIL, "z@x"))
    assert z is not None
    assert values(store, z) == {CITY.id: "Z2"}  # the last row alone: not a blend of the rows
    assert store.counts(P)["profiles"] == 2


def test_an_insert_only_import_keeps_the_first_row_and_fails_the_others(store: Store) -> None:
    a, _ = setup(store)
    rows = import_rows(["c@x", "a@x", "c@x", "d@x"], {CITY.column: cities("C1", "A", "C2", "D")})
    (out,) = write(store, lambda w: w.import_profiles(P, rows, EMAIL, [], [CITY], True, True))
    assert out.imported == 2 and sorted(out.failures) == [2, 3]
    assert f"already belongs to profile {a}" in out.failures[2]
    assert "repeats an earlier row" in out.failures[3]
    c = store.find_user(P, (EMAIL, "c@x"))
    assert c is not None and values(store, c) == {CITY.id: "C1"}
    assert values(store, a) == {CITY.id: "A", SCORE.id: 1.0}  # the failed row wrote nothing
    assert store.counts(P)["profiles"] == 4


def test_an_import_by_user_id_updates_those_users_and_fails_a_missing_id(store: Store) -> None:
    a, b = setup(store)
    missing = b + 1000
    rows = import_rows([b, missing, a], {CITY.column: cities("B", "M", "A3")})
    (out,) = write(store, lambda w: w.import_profiles(P, rows, None, [], [CITY], False, True))
    assert out.imported == 2 and list(out.failures) == [2]
    assert str(missing) in out.failures[2]
    assert values(store, a) == {CITY.id: "A3", SCORE.id: 1.0}
    assert values(store, b) == {CITY.id: "B"}
    assert values(store, missing) is None
    assert store.counts(P)["profiles"] == 2


def test_other_identity_keys_are_linked_unless_another_profile_holds_them(store: Store) -> None:
    a, b = setup(store)
    rows = import_rows(
        ["a@x", "n@x", "b@x", "m@x"],
        {f"_k{MOBILE}": keys("3", "2", None, "1"), CITY.column: cities(None, "N", None, "M")},
    )
    (out,) = write(
        store, lambda w: w.import_profiles(P, rows, EMAIL, [MOBILE], [CITY], False, True)
    )
    assert out.imported == 4 and out.failures == {}
    assert sorted(out.warnings) == [2, 4]  # mobile 2 is b's, mobile 1 is a's
    assert f"({b})" in out.warnings[2] and f"({a})" in out.warnings[4]
    assert sorted(store.identities(P, a)) == [(EMAIL, "a@x"), (MOBILE, "1"), (MOBILE, "3")]
    assert store.find_user(P, (MOBILE, "2")) == b and store.find_user(P, (MOBILE, "1")) == a
    n = store.find_user(P, (EMAIL, "n@x"))
    assert n is not None and store.identities(P, n) == [(EMAIL, "n@x")]
    assert values(store, n) == {CITY.id: "N"}


def test_imported_profiles_are_put_on_the_list_once(store: Store) -> None:
    a, b = setup(store)
    first = import_rows(["a@x", "n@x", "a@x"])
    again = import_rows(["n@x", "b@x"])
    out = write(
        store,
        lambda w: w.import_profiles(P, first, EMAIL, [], [], False, True, 5),
        lambda w: w.import_profiles(P, again, EMAIL, [], [], False, True, 5),
        lambda w: w.import_profiles(P, import_rows(["b@x"]), EMAIL, [], [], False, True, 6),
    )
    assert [o.imported for o in out] == [3, 2, 1]
    n = store.find_user(P, (EMAIL, "n@x"))
    assert n is not None
    assert store.list_members(P, 5, 10, 0) == sorted([a, b, n])
    assert store.list_members(P, 6, 10, 0) == [b]


def test_an_import_that_does_not_write_only_reports_its_failures(store: Store) -> None:
    a, b = setup(store)
    (before,) = write(store, lambda w: w.allocate_user_ids(P, 1))
    counts = store.counts(P)

    def check(w: StoreWriter) -> list[ImportOutcome]:
        by_key = import_rows(["a@x", "n@x", "n@x"], {CITY.column: cities("X", "Y", "Z")})
        by_id = import_rows([a, b + 1000], {CITY.column: cities("X", "Y")})
        return [
            w.import_profiles(P, by_key, EMAIL, [], [CITY], True, False, 5),
            w.import_profiles(P, by_key, EMAIL, [], [CITY], False, False, 5),
            w.import_profiles(P, by_id, None, [], [CITY], False, False, 5),
        ]

    (outs,) = write(store, check)
    assert [sorted(o.failures) for o in outs] == [[1, 3], [], [2]]
    assert all(o.warnings == {} for o in outs)
    assert store.counts(P) == counts
    assert values(store, a) == {CITY.id: "A", SCORE.id: 1.0}
    assert store.find_user(P, (EMAIL, "n@x")) is None
    assert store.list_members(P, 5, 10, 0) == []
    (after,) = write(store, lambda w: w.allocate_user_ids(P, 1))
    assert after == before + 1  # no ids were taken


def test_an_empty_batch_does_nothing(store: Store) -> None:
    rows = import_rows([], {CITY.column: cities()})
    (out,) = write(store, lambda w: w.import_profiles(P, rows, EMAIL, [], [CITY], False, True, 5))
    assert (out.imported, out.failures, out.warnings) == (0, {}, {})
    assert store.counts(P)["profiles"] == 0 and store.list_members(P, 5, 10, 0) == []
