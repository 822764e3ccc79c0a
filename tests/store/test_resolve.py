"""The store contract, profile rows resolved by every identity key
(``StoreWriter.resolve_profiles``): people as connected identity values, within the batch and
through stored users, merges into the lowest id, new users, the last value of a property, and
insert-only failures."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pyarrow as pa

from opencdp.store.base import ImportOutcome, Store, StoreWriter
from tests.store.conftest import Opener
from tests.store.kit import (
    CITY,
    EMAIL,
    EMAIL_KEY,
    MOBILE,
    MOBILE_KEY,
    SCORE,
    SECOND,
    T0,
    USER_PROPS,
    Event,
    P,
    event_rows,
    profiles,
    values,
    write,
)

LATER = T0 + 60 * SECOND
PROPS = [EMAIL_KEY, MOBILE_KEY, CITY, SCORE]


def batch(
    emails: Sequence[str | None],
    mobiles: Sequence[str | None],
    cities: Sequence[str | None],
    scores: Sequence[float | None] | None = None,
) -> pa.Table:
    n = len(emails)
    return pa.table(
        {
            "_row": pa.array(range(1, n + 1), pa.int64()),
            f"_k{EMAIL}": pa.array(emails, pa.string()),
            f"_k{MOBILE}": pa.array(mobiles, pa.string()),
            "_touched": pa.array([LATER] * n, pa.timestamp("us")),
            EMAIL_KEY.column: pa.array(emails, pa.string()),
            MOBILE_KEY.column: pa.array(mobiles, pa.string()),
            CITY.column: pa.array(cities, pa.string()),
            SCORE.column: pa.array(scores or [None] * n, pa.float64()),
        }
    )


def resolve(
    store: Store, rows: pa.Table, insert_only: bool = False, write_: bool = True
) -> ImportOutcome:
    (out,) = write(
        store,
        lambda w: w.resolve_profiles(
            P, rows, [EMAIL, MOBILE], PROPS, USER_PROPS, insert_only, write_, "job-1:0"
        ),
    )
    assert isinstance(out, ImportOutcome)
    return out


def stored_user(w: StoreWriter, email: str, city: str, score: float, at: int = T0) -> int:
    uid = w.allocate_user_ids(P, 1)
    w.upsert_profiles(P, profiles([(uid, at, {CITY.id: city, SCORE.id: score})]), USER_PROPS)
    w.insert_identities(P, [(EMAIL, email)], [uid])
    return uid


def test_a_chain_through_the_batch_merges_stored_users_into_the_lowest(store: Store) -> None:
    a, c = write(
        store,
        lambda w: stored_user(w, "a@x", "A", 1.0),
        lambda w: stored_user(w, "c@x", "C", 3.0, T0 + SECOND),
    )
    write(store, lambda w: w.upsert_events(P, event_rows([Event("e1", c)]), []))
    # a@x and b@x share mobile 1, b@x and c@x (stored with c) mobile 5.
    out = resolve(
        store,
        batch(
            ["a@x", "b@x", "b@x", "c@x", None],
            ["1", "1", "5", "5", "9"],
            ["X", None, None, None, "N"],
        ),
    )
    out2 = resolve(store, batch(["b@x"], ["2"], [None]))  # a later batch joins mobile 2
    assert (out.failures, out.imported, out2.imported) == ({}, 5, 1)
    for token in [(EMAIL, "a@x"), (EMAIL, "b@x"), (EMAIL, "c@x"), (MOBILE, "5"), (MOBILE, "2")]:
        assert store.find_user(P, token) == a
    assert store.event_count(P, a) == 1 and values(store, c) is None
    got = values(store, a)
    assert got is not None and (got[CITY.id], got[SCORE.id]) == ("X", 3.0)
    new = store.find_user(P, (MOBILE, "9"))
    assert new is not None and new > c and (values(store, new) or {})[CITY.id] == "N"


def test_later_rows_win_and_nulls_leave_values(store: Store) -> None:
    resolve(
        store, batch(["a@x", "a@x", "a@x"], [None, "1", None], ["A", "B", None], [1, None, None])
    )
    uid = store.find_user(P, (MOBILE, "1"))
    assert uid is not None and store.find_user(P, (EMAIL, "a@x")) == uid
    got = values(store, uid)
    assert got is not None and (got[CITY.id], got[SCORE.id]) == ("B", 1.0)


def test_insert_only_fails_stored_and_repeated_values_and_check_writes_nothing(
    store: Store,
) -> None:
    (a,) = write(store, lambda w: stored_user(w, "a@x", "A", 1.0))
    rows = batch(["a@x", "b@x", None, "c@x"], ["1", "2", "2", None], ["X", "Y", "Z", "W"])
    checked = resolve(store, rows, insert_only=True, write_=False)
    assert store.find_user(P, (EMAIL, "b@x")) is None
    out = resolve(store, rows, insert_only=True)
    assert checked.failures == out.failures
    assert set(out.failures) == {1, 3} and "already exists" in out.failures[1]
    assert "earlier row" in out.failures[3] and out.imported == 2
    assert store.find_user(P, (MOBILE, "1")) is None  # the failed row linked nothing
    b = store.find_user(P, (EMAIL, "b@x"))
    assert b is not None and b != a and store.find_user(P, (MOBILE, "2")) == b
    assert (values(store, a) or {})[CITY.id] == "A"


def test_new_people_keep_their_ids_when_the_batch_is_replayed(store: Store) -> None:
    rows = batch(["a@x", "b@x"], ["1", "2"], ["A", "B"])
    with store.writer() as w:
        w.ensure_project(P)
        w.resolve_profiles(P, rows, [EMAIL, MOBILE], PROPS, USER_PROPS, False, True, "job:7")
        first = w.lookup_identities(P, [(EMAIL, "a@x"), (EMAIL, "b@x")])
        w.delete_users(P, sorted(set(first.values())))
        w.resolve_profiles(P, rows, [EMAIL, MOBILE], PROPS, USER_PROPS, False, True, "job:7")
        again = w.lookup_identities(P, [(EMAIL, "a@x"), (EMAIL, "b@x")])
    assert first == again and len(set(first.values())) == 2


def test_turns_resolving_the_same_new_values_at_once_make_one_user_of_each(
    store: Store, open_again: Opener
) -> None:
    """Four writers (two opened stores: two processes, where the engine allows it) resolve
    the same new identity values at once; every turn succeeds and each value has one user."""
    stores = [store, store] if store.capabilities.name == "duckdb" else [store, open_again()]
    rows = batch(["a@x", "b@x", None], ["m1", None, "m1"], ["A", "B", "C"])
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def turn(s: Store, n: int) -> None:
        start.wait()
        try:
            write(s, lambda w: w.resolve_profiles(
                P, rows, [EMAIL, MOBILE], PROPS, USER_PROPS, False, True, f"job-{n}:0"
            ))  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=turn, args=(stores[n % 2], n)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    users = {store.find_user(P, t) for t in [(EMAIL, "a@x"), (EMAIL, "b@x"), (MOBILE, "m1")]}
    assert len(users) == 2 and None not in users  # a@x and m1 are one person, b@x another
    assert store.counts(P)["profiles"] == 2
