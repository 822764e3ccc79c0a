"""The store contract, segments: queries compiled to neutral trees over the logical tables,
run under a budget, written as versions of a segment's members (the current and the previous
one kept), read back, compared and dumped for the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlglot.expressions as exp

from opencdp.segments.compiler import Compiler
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.store.base import SEGMENT_ROWS, Budget, OverBudget, QueryError, Store
from opencdp.store.tree import EVENTS, LISTS, USERS
from tests.store.kit import (
    AMOUNT,
    CITY,
    EVENT_PROPS,
    SCHEMA,
    SCORE,
    T0,
    USER_PROPS,
    Event,
    P,
    event_rows,
    members,
    on_list,
    profiles,
    write,
)

BUDGET = Budget(seconds=60.0, memory_bytes=1 << 30)
NOW = datetime(2024, 1, 10, tzinfo=UTC)


def compiler() -> Compiler:
    return Compiler(SCHEMA, UTC, NOW)


def city_is(city: str) -> exp.Select:
    d = {"filts": [{"columnName": "city", "comparator": "equal", "ftv": [city]}]}
    return compiler().cluster(parse_cluster(d)).query


def everyone(table: str = USERS) -> exp.Select:
    return exp.select(exp.column("user_id"), exp.null().as_("tag_value")).from_(table)


def cities(store: Store, by_user: dict[int, str], touched: int = T0) -> None:
    rows = profiles([(u, touched, {CITY.id: c}) for u, c in by_user.items()])
    write(store, lambda w: w.upsert_profiles(P, rows, USER_PROPS))


def ids(pairs: list[tuple[int, str | None]]) -> list[int]:
    return [u for u, _ in pairs]


def test_a_compiled_cluster_is_written_and_the_previous_version_kept(store: Store) -> None:
    cities(store, {1: "Paris", 2: "Rome", 3: "Paris"})
    assert write(store, lambda w: w.write_segment(P, 4, 1, city_is("Paris"))) == [2]
    assert store.segment_members(P, 4, 1, 10, 0) == [(1, None), (3, None)]
    cities(store, {2: "Paris", 3: "Rome"})
    assert write(store, lambda w: w.write_segment(P, 4, 2, city_is("Paris"))) == [2]
    assert ids(store.segment_members(P, 4, 1, 10, 0)) == [1, 3]  # the previous version: kept
    assert ids(store.segment_members(P, 4, 2, 10, 0)) == [1, 2]
    assert store.segment_changes(P, 4, 2, 10) == ([2], [3])
    cities(store, {1: "Rome"})
    write(store, lambda w: w.write_segment(P, 4, 3, city_is("Paris")))
    assert store.segment_members(P, 4, 1, 10, 0) == []  # older than the previous: dropped
    assert ids(store.segment_members(P, 4, 2, 10, 0)) == [1, 2]
    assert ids(store.segment_members(P, 4, 3, 10, 0)) == [2]
    assert store.segment_changes(P, 4, 3, 10) == ([], [1])
    assert store.user_segments(P, 2) == [(4, 2, None), (4, 3, None)]
    assert store.user_segments(P, 1) == [(4, 2, None)]
    assert store.user_segments(P, 3) == []


def test_a_compiled_tag_keeps_each_users_value(store: Store) -> None:
    rows = profiles(
        [(u, T0, {SCORE.id: s}) for u, s in ((1, 12.0), (2, 3.0), (3, 10.0), (4, None))]
    )
    write(store, lambda w: w.upsert_profiles(P, rows, USER_PROPS))

    def value_def(tag: str, comparator: str) -> dict[str, Any]:
        filt = {"columnName": "score", "comparator": comparator, "ftv": ["10"]}
        return {"tagValue": tag, "userClusterDef": {"filts": [filt]}}

    t = {"userTagValueDefs": [value_def("big", "greaterEqual"), value_def("small", "less")]}
    query = compiler().tag(parse_tag(t)).query
    assert write(store, lambda w: w.write_segment(P, 9, 1, query)) == [3]
    assert store.segment_members(P, 9, 1, 10, 0) == [(1, "big"), (2, "small"), (3, "big")]
    assert store.user_segments(P, 2) == [(9, 1, "small")]


def test_trees_over_events_and_lists(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(u, T0, {}) for u in (1, 2, 3)]), []),
        lambda w: w.upsert_events(
            P,
            event_rows([Event("a", 1), Event("b", 1), Event("c", 2), Event("d", 3, "view")]),
            EVENT_PROPS,
        ),
        lambda w: on_list(w, 5, [2, 3]),
        lambda w: on_list(w, 6, [1]),
    )
    d = {
        "events": [
            {
                "eventName": "pay",
                "comparator": "greaterEqual",
                "num": "2",
                "taPropQuota": {"analysis": "TIMES"},
            }
        ]
    }
    twice = compiler().cluster(parse_cluster(d)).query
    on_five = everyone(LISTS).where(exp.column("list_id").eq(exp.Literal.number(5)))
    payers = everyone(EVENTS).where(exp.column("event_name").eq(exp.Literal.string("pay")))
    payers = payers.distinct()
    write(
        store,
        lambda w: w.write_segment(P, 1, 1, twice),
        lambda w: w.write_segment(P, 2, 1, on_five),
        lambda w: w.write_segment(P, 3, 1, payers),
    )
    assert ids(store.segment_members(P, 1, 1, 10, 0)) == [1]
    assert ids(store.segment_members(P, 2, 1, 10, 0)) == [2, 3]
    assert ids(store.segment_members(P, 3, 1, 10, 0)) == [1, 2]


def test_a_query_is_counted_and_read_without_writing(store: Store) -> None:
    cities(store, {1: "Paris", 2: "Rome", 3: "Paris", 4: "Paris"})
    assert store.count_query(P, city_is("Paris"), BUDGET) == 3
    assert store.count_query(P, city_is("Oslo"), BUDGET) == 0
    rows = store.segment_rows(P, city_is("Paris"), BUDGET)
    assert rows.schema.equals(SEGMENT_ROWS)
    assert sorted(rows.to_pylist(), key=lambda r: r["user_id"]) == [
        {"user_id": u, "tag_value": None} for u in (1, 3, 4)
    ]
    tagged = exp.select(exp.column("user_id"), exp.column(CITY.column).as_("tag_value"))
    rows = store.segment_rows(P, tagged.from_(USERS), BUDGET)
    assert rows.schema.equals(SEGMENT_ROWS) and rows.num_rows == 4
    assert store.counts(P) == {"profiles": 4, "events": 0, "identities": 0}
    assert store.user_segments(P, 1) == []


def test_rows_written_as_a_version_leave_out_users_gone_since(store: Store) -> None:
    cities(store, {u: "A" for u in (1, 2, 3, 4)})
    write(
        store,
        lambda w: w.delete_users(P, [2]),
        lambda w: w.merge_users(P, {4: 3}, USER_PROPS),
    )
    rows = members([1, 2, 3, 4, 1], ["a", "b", "c", "d", "a2"])
    assert write(store, lambda w: w.write_segment_rows(P, 4, 1, rows)) == [2]
    assert store.segment_members(P, 4, 1, 10, 0) == [(1, "a2"), (3, "c")]
    assert write(store, lambda w: w.write_segment_rows(P, 4, 2, members([]))) == [0]
    assert store.segment_changes(P, 4, 2, 10) == ([], [1, 3])


def test_members_and_changes_are_paged(store: Store) -> None:
    users = list(range(1, 11))
    cities(store, {u: "A" for u in users})
    write(
        store,
        lambda w: w.write_segment_rows(P, 4, 1, members(users[:5], [str(u) for u in users[:5]])),
        lambda w: w.write_segment_rows(P, 4, 2, members(users[3:])),
    )
    assert store.segment_members(P, 4, 1, 2, 0) == [(1, "1"), (2, "2")]
    assert store.segment_members(P, 4, 1, 2, 2) == [(3, "3"), (4, "4")]
    assert store.segment_members(P, 4, 1, 2, 4) == [(5, "5")]
    assert store.segment_members(P, 4, 1, 2, 5) == []
    assert ids(store.segment_members(P, 4, 2, 100, 7)) == [8, 9, 10]
    assert store.segment_changes(P, 4, 2, 100) == ([6, 7, 8, 9, 10], [1, 2, 3])
    assert store.segment_changes(P, 4, 2, 2) == ([6, 7], [1, 2])
    assert store.segment_changes(P, 4, 1, 100) == ([1, 2, 3, 4, 5], [])  # against nothing


def test_deleting_a_segment_drops_its_versions_only(store: Store) -> None:
    cities(store, {1: "A", 2: "B"})
    write(
        store,
        lambda w: w.write_segment_rows(P, 4, 1, members([1])),
        lambda w: w.write_segment_rows(P, 4, 2, members([1, 2])),
        lambda w: w.write_segment_rows(P, 5, 1, members([1], ["t"])),
    )
    write(store, lambda w: w.delete_segment(P, 4), lambda w: w.delete_segment(P, 99))
    assert store.segment_members(P, 4, 1, 10, 0) == []
    assert store.segment_members(P, 4, 2, 10, 0) == []
    assert store.user_segments(P, 1) == [(5, 1, "t")]
    assert store.user_segments(P, 2) == []


def test_a_segment_version_written_again_replaces_it(store: Store) -> None:
    cities(store, {1: "Paris", 2: "Rome"})
    write(store, lambda w: w.write_segment(P, 4, 1, city_is("Paris")))
    write(store, lambda w: w.write_segment(P, 4, 1, city_is("Rome")))
    assert store.segment_members(P, 4, 1, 10, 0) == [(2, None)]


def cross_join(n: int) -> exp.Select:
    """A tree of ``n`` copies of the events joined with each other, compared as one text: far
    more work than any budget below allows, on the few hundred events of the test."""
    aliases = [f"e{i}" for i in range(n)]
    key: exp.Expr = exp.column("event_id", aliases[0])
    for a in aliases[1:]:
        key = exp.DPipe(this=key, expression=exp.column("event_id", a))
    q = exp.select(exp.column("user_id", aliases[0]), exp.null().as_("tag_value"))
    q = q.from_(exp.alias_(exp.to_table(EVENTS), aliases[0], table=True))
    for a in aliases[1:]:
        q = q.join(exp.alias_(exp.to_table(EVENTS), a, table=True), join_type="cross")
    return q.where(key.eq(exp.Literal.string("x"))).group_by(exp.column("user_id", aliases[0]))


def many_events(store: Store, n: int = 200) -> None:
    evs = event_rows(
        [Event(f"event-{i:05d}", i % 7, values={AMOUNT.id: float(i)}) for i in range(n)]
    )
    write(store, lambda w: w.upsert_events(P, evs, EVENT_PROPS))


@pytest.mark.parametrize(
    "budget",
    [Budget(seconds=0.05, memory_bytes=1 << 30), Budget(seconds=600.0, memory_bytes=1)],
    ids=["time", "memory"],
)
def test_a_query_over_its_budget_is_stopped(store: Store, budget: Budget) -> None:
    many_events(store)
    heavy = cross_join(4)
    if budget.memory_bytes == 1:  # many distinct groups: memory grows from the start
        key = exp.DPipe(
            this=exp.DPipe(
                this=exp.column("event_id", "e0"), expression=exp.column("event_id", "e1")
            ),
            expression=exp.column("event_id", "e2"),
        )
        heavy = cross_join(3).where(exp.true(), append=False).group_by(key)
    with pytest.raises(OverBudget):
        store.segment_rows(P, heavy, budget)
    with pytest.raises(OverBudget):
        store.count_query(P, heavy, budget)
    assert store.count_query(P, everyone(EVENTS), BUDGET) == 200  # the store still answers


def test_a_query_that_cannot_run_raises_query_error(store: Store) -> None:
    many_events(store, 3)
    no_column = everyone().where(exp.column("p_999").eq(exp.Literal.number(1)))
    no_cast = everyone(EVENTS).where(exp.cast(exp.column("event_id"), "DOUBLE") > 0)
    for query in (no_column, no_cast):
        with pytest.raises(QueryError) as err:
            store.segment_rows(P, query, BUDGET)
        assert str(err.value)
        assert not store.transient(err.value)  # the query's fault: no retry gets past it
        with pytest.raises(QueryError):
            store.count_query(P, query, BUDGET)


def test_a_regular_expression_is_judged_by_the_stores_engine(store: Store) -> None:
    assert store.pattern_error("^a.*b$") is None
    assert store.pattern_error("[0-9]+(x|y)?") is None
    for bad in ("(", "a[", "*a"):
        reason = store.pattern_error(bad)
        assert reason, bad


def test_a_table_is_dumped_as_arrow_with_the_names_asked(store: Store, tmp_path: Path) -> None:
    cities(store, {1: "Paris", 2: "Rome"})
    many_events(store, 3)
    users, evs = tmp_path / "users.arrow", tmp_path / "events.arrow"
    columns = [("user_id", "id"), (CITY.column, "city"), (SCORE.column, "score")]
    store.dump_table(P, "users", columns, users, BUDGET)
    store.dump_table(P, "events", [("event_name", "name"), (AMOUNT.column, "amount")], evs, BUDGET)
    with pa.ipc.open_file(users) as f:
        table = f.read_all()
    assert table.schema.names == ["id", "city", "score"]
    assert pa.types.is_integer(table.schema.field("id").type)
    assert pa.types.is_floating(table.schema.field("score").type)
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "city": "Paris", "score": None},
        {"id": 2, "city": "Rome", "score": None},
    ]
    with pa.ipc.open_file(evs) as f:
        table = f.read_all()
    assert sorted(table.to_pylist(), key=lambda r: r["amount"]) == [
        {"name": "pay", "amount": float(i)} for i in range(3)
    ]
    empty = tmp_path / "empty.arrow"
    store.dump_table(P, "users", [("user_id", "id"), (CITY.column, "city")], empty, BUDGET, True)
    with pa.ipc.open_file(empty) as f:
        table = f.read_all()
    assert table.schema.names == ["id", "city"] and table.num_rows == 0
