"""Identity normalization and resolution (identity.py) against a real DuckDB store."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.identity import Resolution, matched_users, normalize, resolve
from opencdp.store import open_store
from opencdp.store.base import EventRows, ProfileRows, Store, Token

PID = 3
MOBILE = Property(1, "user", "mobile", PropertyType.STRING, True)
EMAIL = Property(2, "user", "email", PropertyType.STRING, True)
WECHAT = Property(3, "user", "wechat_id", PropertyType.STRING, True)
CITY = Property(4, "user", "city", PropertyType.STRING)
LEVEL = Property(5, "user", "level", PropertyType.NUMBER)
USER_PROPS = [MOBILE, EMAIL, WECHAT, CITY, LEVEL]


def m(v: str) -> Token:
    return (MOBILE.id, v)


def e(v: str) -> Token:
    return (EMAIL.id, v)


def w(v: str) -> Token:
    return (WECHAT.id, v)


# ---- normalize --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("mobile", "18366668888", "18366668888"),
        ("mobile", " 183 ", "183"),
        ("mobile", 18366668888, "18366668888"),
        ("mobile", 18366668888.0, "18366668888"),
        ("mobile", 1.5, "1.5"),
        ("mobile", 0, "0"),
        ("mobile", "ABC", "ABC"),  # only e-mail addresses are case-folded
        ("email", " Zhang.San@Example.COM ", "zhang.san@example.com"),
        ("work_email", "A@B.C", "a@b.c"),
        ("Email", "A@B.C", "a@b.c"),
        ("mobile", "", None),
        ("mobile", "   ", None),
        ("mobile", None, None),
        ("mobile", True, None),
        ("mobile", False, None),
        ("mobile", [], None),
        ("mobile", {"a": 1}, None),
    ],
)
def test_normalize(key: str, value: Any, expected: str | None) -> None:
    assert normalize(key, value) == expected


@given(st.sampled_from(["mobile", "email", "wechat_id"]), st.text())
def test_normalize_is_idempotent(key: str, value: str) -> None:
    once = normalize(key, value)
    if once is None:
        assert not value.strip()
    else:
        assert normalize(key, once) == once
        assert once == once.strip()


# ---- resolve against DuckDB -------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"duckdb:///{tmp_path / 'store.duckdb'}")
    with s.writer() as wr:
        wr.ensure_project(PID)
        wr.ensure_columns(PID, USER_PROPS)
    yield s
    s.close()


def run(store: Store, *records: Sequence[Token]) -> Resolution:
    with store.writer() as wr:
        return resolve(wr, PID, [list(r) for r in records], USER_PROPS)


def owner(store: Store, token: Token) -> int | None:
    return store.find_user(PID, token)


def put_profile(store: Store, user_id: int, at: int, **values: Any) -> None:
    ids = {p.name: p for p in USER_PROPS}
    props = [ids[n] for n in values]
    with store.writer() as wr:
        wr.upsert_profiles(
            PID,
            ProfileRows([user_id], [at], [{ids[n].id: v for n, v in values.items()}]),
            props,
        )


def put_events(store: Store, user_id: int, *event_ids: str) -> None:
    n = len(event_ids)
    with store.writer() as wr:
        wr.upsert_events(
            PID,
            EventRows(list(event_ids), ["x"] * n, [0] * n, [0] * n, [user_id] * n, [{}] * n),
            [],
        )


def test_new_users_get_fresh_ids(store: Store) -> None:
    res = run(store, [m("1")], [m("2")], [e("a@x")])
    assert len(set(res.user_ids)) == 3
    assert res.new_users == set(res.user_ids)
    assert res.merges == {}
    assert owner(store, m("1")) == res.user_ids[0]
    assert owner(store, e("a@x")) == res.user_ids[2]
    # Ids are never reused: the next batch continues after them.
    nxt = run(store, [m("3")])
    assert nxt.user_ids[0] > max(res.user_ids)


def test_known_identity_matches(store: Store) -> None:
    first = run(store, [m("1")]).user_ids[0]
    res = run(store, [m("1")], [m("1"), e("new@x")])
    assert res.user_ids == [first, first]
    assert res.new_users == set() and res.merges == {}
    assert owner(store, e("new@x")) == first
    assert sorted(store.identities(PID, first)) == [m("1"), e("new@x")]


def test_records_in_one_batch_sharing_a_value_are_one_person(store: Store) -> None:
    res = run(store, [m("1")], [m("1"), e("a")], [e("a"), w("z")], [m("9")])
    assert res.user_ids[0] == res.user_ids[1] == res.user_ids[2] != res.user_ids[3]
    assert len(res.new_users) == 2
    assert sorted(store.identities(PID, res.user_ids[0])) == [m("1"), e("a"), w("z")]


def test_record_without_tokens_gets_user_zero(store: Store) -> None:
    res = run(store, [], [m("1")])
    assert res.user_ids[0] == 0
    assert res.user_ids[1] != 0


def test_three_way_merge(store: Store) -> None:
    a = run(store, [m("1")]).user_ids[0]
    b = run(store, [e("b")]).user_ids[0]
    c = run(store, [w("c")]).user_ids[0]
    put_profile(store, a, 100, mobile="1", city="A-city", level=1.0)
    put_profile(store, b, 200, email="b", city="B-city")
    put_profile(store, c, 300, wechat_id="c", level=3.0)
    put_events(store, a, "a1", "a2")
    put_events(store, b, "b1", "b2", "b3")
    put_events(store, c, "c1")

    res = run(store, [m("1"), e("b"), w("c")])
    assert res.user_ids == [a]  # the oldest survives
    assert res.merges == {b: a, c: a}
    assert res.new_users == set()

    for tok in (m("1"), e("b"), w("c")):
        assert owner(store, tok) == a
    assert sorted(store.identities(PID, a)) == [m("1"), e("b"), w("c")]
    assert store.identities(PID, b) == [] and store.identities(PID, c) == []
    assert store.event_count(PID, a) == 6
    assert store.event_count(PID, b) == store.event_count(PID, c) == 0
    assert store.profile(PID, b, USER_PROPS) is None
    assert store.profile(PID, c, USER_PROPS) is None
    prof = store.profile(PID, a, USER_PROPS)
    assert prof is not None
    assert prof["values"] == {
        MOBILE.id: "1",
        EMAIL.id: "b",
        WECHAT.id: "c",
        CITY.id: "B-city",  # B's profile is newer than A's
        LEVEL.id: 3.0,  # C's is the newest
    }
    assert store.counts(PID) == {"profiles": 1, "events": 6, "identities": 3}


def test_merge_takes_each_property_from_the_most_recently_updated_profile(
    store: Store,
) -> None:
    """The rule is per profile (one ``updated_at`` per row): the most recently updated profile
    that has a value for a property gives it, even if another profile set it later."""
    a = run(store, [m("1")]).user_ids[0]
    b = run(store, [e("b")]).user_ids[0]
    put_profile(store, a, 100, city="A-city")
    put_profile(store, b, 200, city="B-city", level=2.0)
    put_profile(store, a, 300, level=1.0)  # A is now the most recently updated profile
    run(store, [m("1"), e("b")])
    prof = store.profile(PID, a, USER_PROPS)
    assert prof is not None
    assert prof["values"][CITY.id] == "A-city"
    assert prof["values"][LEVEL.id] == 1.0


def test_merge_through_a_chain_within_one_batch(store: Store) -> None:
    """Records linking stored users only through each other merge them all."""
    users = [run(store, [m(str(i))]).user_ids[0] for i in range(4)]
    res = run(store, [m("0"), e("x")], [e("x"), w("y")], [w("y"), m("3")], [m("1"), m("2")])
    assert res.user_ids[:3] == [users[0]] * 3
    assert res.user_ids[3] == users[1]  # m1 and m2 are joined, but not to the others
    assert res.merges == {users[3]: users[0], users[2]: users[1]}
    assert owner(store, m("3")) == users[0]
    assert owner(store, m("2")) == users[1]


def test_merge_into_survivor_with_a_value_already_on_the_loser(store: Store) -> None:
    """A key the survivor already has with another value: both values stay identities."""
    a = run(store, [m("1")]).user_ids[0]
    b = run(store, [m("2"), e("b")]).user_ids[0]
    res = run(store, [m("1"), e("b")])
    assert res.merges == {b: a}
    assert sorted(store.identities(PID, a)) == [m("1"), m("2"), e("b")]


def test_merges_in_consecutive_batches(store: Store) -> None:
    a = run(store, [m("1")]).user_ids[0]
    b = run(store, [e("b")]).user_ids[0]
    c = run(store, [w("c")]).user_ids[0]
    assert run(store, [w("c"), e("b")]).merges == {c: b}
    assert run(store, [e("b"), m("1")]).merges == {b: a}
    assert sorted(store.identities(PID, a)) == [m("1"), e("b"), w("c")]
    assert store.counts(PID)["identities"] == 3


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    a = run(store, [m("1")]).user_ids[0]
    b = run(store, [e("b")]).user_ids[0]
    with pytest.raises(RuntimeError), store.writer() as wr:
        resolve(wr, PID, [[m("1"), e("b")]], USER_PROPS)
        raise RuntimeError("crash before commit")
    assert owner(store, e("b")) == b
    assert owner(store, m("1")) == a


def test_matched_users(store: Store) -> None:
    a = run(store, [m("1")]).user_ids[0]
    b = run(store, [e("b")]).user_ids[0]
    with store.writer() as wr:
        assert matched_users(wr, PID, [m("1"), e("b"), m("1"), w("none")]) == {a, b}
        assert matched_users(wr, PID, [w("none")]) == set()
        assert matched_users(wr, PID, []) == set()


_pids = itertools.count(1000)
_store: list[Store] = []


def _shared_store() -> Store:
    """One in-memory store for all examples of a property test (opening one costs more than the
    example); closed when the process ends."""
    if not _store:
        _store.append(open_store("duckdb:///:memory:"))
    return _store[0]


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from("abcde")), min_size=1, max_size=3
        ),
        min_size=1,
        max_size=8,
    )
)
def test_batches_resolve_to_connected_components(records: list[list[Token]]) -> None:
    """Every record of a batch gets a user, and two records share one exactly when their values
    are connected; the store agrees afterwards."""
    s = _shared_store()
    pid = next(_pids)  # a project of its own for each example
    with s.writer() as wr:
        wr.ensure_project(pid)
        res = resolve(wr, pid, records, USER_PROPS)
    # Connected components by brute force.
    comp: dict[Token, int] = {}
    for i, toks in enumerate(records):
        labels = {comp[t] for t in toks if t in comp} | {i}
        new = min(labels)
        for t, lab in list(comp.items()):
            if lab in labels:
                comp[t] = new
        for t in toks:
            comp[t] = new
    for i, toks in enumerate(records):
        for j, other in enumerate(records):
            same = comp[toks[0]] == comp[other[0]]
            assert (res.user_ids[i] == res.user_ids[j]) == same
        for t in toks:
            assert s.find_user(pid, t) == res.user_ids[i]
    assert len(res.new_users) == len(set(comp.values()))


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def file_of(store: Store) -> str | None:
        row = store._conn.execute("PRAGMA database_list").fetchone()  # type: ignore[attr-defined]
        store.close()
        return None if row is None else row[2]

    assert file_of(open_store("duckdb:///:memory:")) is None
    assert file_of(open_store("duckdb://:memory:")) is None
    assert file_of(open_store("duckdb:///rel.duckdb")) == str(tmp_path / "rel.duckdb")
    assert file_of(open_store(f"duckdb:///{tmp_path / 'abs.duckdb'}")) == str(
        tmp_path / "abs.duckdb"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abs.duckdb", "rel.duckdb"]
    with pytest.raises(ValueError, match="unsupported"):
        open_store("mysql://localhost/db")
