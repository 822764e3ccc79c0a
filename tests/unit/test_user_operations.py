"""ThinkingData's user operations and event modes give the same profiles and events whether
the flusher applies a run of records in one batch or one record per transaction.

Hypothesis builds sequences of operations (set, set once, add, unset, append, append new,
delete, events that merge, overwrite or come first) for a few people, on top of stored
profiles, and compares one batch against one record at a time, on the real SQLite catalog
and DuckDB store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencdp.config import Settings
from opencdp.ingest.apply import apply_records
from opencdp.ingest.records import Record
from opencdp.ingest.thinkingdata import build_record
from opencdp.runtime import Runtime

_names = itertools.count(1)
_clock = itertools.count(1_700_000_000_000_000, 1_000)


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    runtime = Runtime.open(
        Settings(data_dir=tmp_path_factory.mktemp("ops") / "data", job_workers=0)
    )
    yield runtime
    runtime.stop()


who = st.sampled_from(["a", "b", "c"])
word = st.sampled_from(["x", "y", "z"])
user_op = st.one_of(
    st.tuples(st.just("user_set"), who, st.fixed_dictionaries({}, optional={
        "n": st.integers(-5, 5), "s": word, "l": st.lists(word, max_size=2)})),
    st.tuples(st.just("user_setOnce"), who, st.fixed_dictionaries({}, optional={
        "n": st.integers(-5, 5), "s": word})),
    st.tuples(st.just("user_add"), who, st.fixed_dictionaries({"n": st.integers(-5, 5)})),
    st.tuples(st.just("user_unset"), who, st.fixed_dictionaries({}, optional={
        "n": st.just(0), "s": st.just(0), "l": st.just(0)})),
    st.tuples(st.just("user_append"), who,
              st.fixed_dictionaries({"l": st.lists(word, max_size=2)})),
    st.tuples(st.just("user_uniq_append"), who,
              st.fixed_dictionaries({"l": st.lists(word, max_size=2)})),
    st.tuples(st.just("user_del"), who, st.just({})),
    st.tuples(st.sampled_from(["track_update", "track_overwrite"]), who,
              st.fixed_dictionaries({}, optional={"e1": word, "e2": word})),
    st.tuples(st.just("track"), who, st.fixed_dictionaries({"e1": word})),
)  # fmt: skip


def doc(kind: str, person: str, props: dict[str, Any], event: str) -> dict[str, Any]:
    d: dict[str, Any] = {"#type": kind, "#account_id": person, "properties": props}
    if kind.startswith("track"):
        d.update({"#event_name": "e", "#time": "2024-01-02 03:04:05.000"})
        if kind == "track":
            d["#first_check_id"] = event
        else:
            d["#event_id"] = event
    return d


def build(rt: Runtime, pid: int, d: dict[str, Any]) -> Record:
    return build_record(
        d, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits, next(_clock),
        lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
    )  # fmt: skip


def project(rt: Runtime) -> int:
    p, _ = rt.catalog.create_project(f"ops{next(_names)}")
    rt.catalog.ensure_td_keys(p.id)
    # Typed up front, so that which record registers a property first does not matter.
    for name, ptype in (("n", "number"), ("s", "string"), ("l", "list")):
        rt.catalog.add_property(p.id, "user", name, ptype)
    for name in ("e1", "e2"):
        rt.catalog.add_property(p.id, "event", name, "string")
    return p.id


def state(rt: Runtime, pid: int) -> dict[str, Any]:
    """Each person's properties and events (by id), as the store holds them."""
    schema = rt.catalog.schema(pid)
    key = schema.identity_keys["#account_id"]
    out: dict[str, Any] = {}
    for person in "abc":
        uid = rt.store.find_user(pid, (key.id, person))
        if uid is None:
            continue
        row = rt.store.profile(pid, uid, list(schema.user.values()))
        assert row is not None
        values = {schema.by_id[k].name: v for k, v in row["values"].items()}
        events = rt.store.latest_events(pid, uid, 100, list(schema.event.values()))
        out[person] = (
            values,
            {e["event_id"]: {schema.by_id[k].name: v for k, v in e["values"].items()}
             for e in events},
        )  # fmt: skip
    return out


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.lists(user_op, max_size=4),
    ops=st.lists(user_op, min_size=1, max_size=12),
    ids=st.lists(st.sampled_from(["o1", "o2"]), min_size=12, max_size=12),
)
def test_a_batch_of_operations_equals_one_at_a_time(
    rt: Runtime, before: list[Any], ops: list[Any], ids: list[str]
) -> None:
    results = []
    for batched in (True, False):
        pid = project(rt)
        for kind, person, props in before:  # stored state the operations start from
            with rt.store.writer() as w:
                apply_records(w, rt.catalog, [build(rt, pid, doc(kind, person, props, "o1"))])
        records = [
            build(rt, pid, doc(kind, person, props, ids[i]))
            for i, (kind, person, props) in enumerate(ops)
        ]
        groups = [records] if batched else [[r] for r in records]
        for group in groups:
            with rt.store.writer() as w:
                apply_records(w, rt.catalog, group)
        results.append(state(rt, pid))
    assert results[0] == results[1]


def test_operations_fold_in_order(rt: Runtime) -> None:
    pid = project(rt)
    steps = [
        ("user_add", "a", {"n": 2}),  # empty counts as 0
        ("user_add", "a", {"n": 3}),
        ("user_setOnce", "a", {"n": 100, "s": "x"}),
        ("user_append", "a", {"l": ["x", "y"]}),
        ("user_uniq_append", "a", {"l": ["y", "z"]}),
        ("user_unset", "a", {"s": 0}),
        ("user_setOnce", "a", {"s": "y"}),
    ]
    with rt.store.writer() as w:
        apply_records(w, rt.catalog, [build(rt, pid, doc(k, p, v, "o1")) for k, p, v in steps])
    assert state(rt, pid)["a"][0] == {
        "#account_id": "a", "n": 5, "s": "y", "l": ["x", "y", "z"],
    }  # fmt: skip
