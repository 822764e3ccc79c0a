"""A profile import matched by every identity key resolves set-based in the store to the same
people as its rows applied as records.

Hypothesis builds rows full of merge chains (a-b in one row, b-c in another, c held by a stored
user) on top of stored users with events, then applies them once as single-API records (one
batch, as the record path does) and once as a file's batch through the import target
(``StoreWriter.resolve_profiles``), each on its own project with the same stored state, on the
real SQLite catalog and DuckDB store. The two must give the same partition of identity values
into people, the same property values and the same events per person; and the same people and
events as the rows sent one record at a time.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencdp.imports.readers import RowBatch
from opencdp.imports.spec import IDENTITY, ImportSpec, Kind, Mode
from opencdp.imports.targets import make_target
from opencdp.ingest.apply import apply_records
from opencdp.ingest.records import build_record
from opencdp.runtime import Runtime
from tests.unit.test_identity_batches import KEYS, build, people, project, record, rt

__all__ = ["rt"]  # the module's runtime, shared with the batches' test

row = st.fixed_dictionaries(
    {
        "ids": st.lists(
            st.tuples(st.sampled_from(KEYS), st.sampled_from("abcdef")),
            min_size=1,
            max_size=3,
            unique_by=lambda x: x[0],
        ),
        "city": st.none() | st.sampled_from(["Paris", "Rome", "Oslo"]),
        "event": st.just(False),
    }
)


def apply_batch(
    rt: Runtime, pid: int, spec: ImportSpec, columns: list[str], data: dict[str, pa.Array]
) -> Any:
    """Type ``data`` (text columns) as one batch of a file imported by ``spec``, and write it."""
    target = make_target(rt.catalog, rt.settings.limits, pid, spec)
    n = len(data[columns[0]])
    batch = RowBatch(columns, pa.table(data), pa.array(range(1, n + 1), pa.int64()), [])
    prepared = target.prepare(batch)
    prepared.key = f"test:{pid}:1"
    with rt.store.writer() as w:
        return target.apply(w, prepared)


def import_rows(rt: Runtime, pid: int, rows: list[dict[str, Any]], insert_only: bool) -> Any:
    spec = ImportSpec(
        Kind.PROFILES, lookup=IDENTITY, mode=Mode.INSERT if insert_only else Mode.UPSERT
    )
    columns = [*KEYS, "city"]
    data = {
        c: pa.array(
            [dict(r["ids"]).get(c) and f"{c}-{dict(r['ids'])[c]}" for r in rows]
            if c in KEYS
            else [r["city"] for r in rows],
            pa.string(),
        )
        for c in columns
    }
    return apply_batch(rt, pid, spec, columns, data)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(record, max_size=5),
    rows=st.lists(row, min_size=1, max_size=10),
)
def test_an_import_resolves_like_its_rows_as_records(
    rt: Runtime, stored: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    as_records, as_file, one_by_one = project(rt), project(rt), project(rt)
    for pid in (as_records, as_file, one_by_one):  # the same stored people (with events) in both
        for n, spec in enumerate(stored):
            with rt.store.writer() as w:
                apply_records(w, rt.catalog, [build(rt, pid, spec, 1000 + n)])
    with rt.store.writer() as w:
        apply_records(
            w, rt.catalog, [build(rt, as_records, spec, n) for n, spec in enumerate(rows)]
        )
    res = import_rows(rt, as_file, rows, insert_only=False)
    assert (res.failures, res.imported) == ({}, len(rows))
    assert people(rt, as_file, stored + rows) == people(rt, as_records, stored + rows)
    # Records one at a time: the same people and events (properties merged one record at a
    # time may differ, see docs/architecture.md, "Identity resolution").
    for n, spec in enumerate(rows):
        with rt.store.writer() as w:
            apply_records(w, rt.catalog, [build(rt, one_by_one, spec, n)])
    assert people(rt, as_file, stored + rows, with_city=False) == people(
        rt, one_by_one, stored + rows, with_city=False
    )


@pytest.mark.parametrize("insert_only", [False, True])
def test_a_chain_across_rows_and_a_stored_user(rt: Runtime, insert_only: bool) -> None:
    """a-b in one row, b-c in another, c stored with another user: one person (insert-only:
    the rows holding a stored or an earlier value fail, the others are people of their own)."""
    pid = project(rt)
    c = {"ids": [("email", "c")], "city": None, "event": True}
    with rt.store.writer() as w:
        apply_records(w, rt.catalog, [build(rt, pid, c, 7)])
    rows = [
        {"ids": [("mobile", "a"), ("email", "b")], "city": "Oslo"},
        {"ids": [("email", "b"), ("wechat_id", "c")], "city": None},
        {"ids": [("wechat_id", "c"), ("email", "c")], "city": None},
        {"ids": [("mobile", "z")], "city": "Paris"},
    ]
    res = import_rows(rt, pid, rows, insert_only)
    found = people(rt, pid, [c, *(rows if not insert_only else [rows[0], rows[3]])])
    if insert_only:
        assert sorted(res.failures) == [1, 2] and res.imported == 2
        assert found == {
            frozenset({"email:email-c"}): (None, frozenset({"ev7"})),
            frozenset({"mobile:mobile-a", "email:email-b"}): ("Oslo", frozenset()),
            frozenset({"mobile:mobile-z"}): ("Paris", frozenset()),
        }
    else:
        assert res.failures == {} and res.imported == 4
        person = frozenset(
            {"mobile:mobile-a", "email:email-b", "wechat_id:wechat_id-c", "email:email-c"}
        )
        assert found == {
            person: ("Oslo", frozenset({"ev7"})),
            frozenset({"mobile:mobile-z"}): ("Paris", frozenset()),
        }


# An event row: identity values, an event id from a small set (so that rows repeat one another
# and stored events), a name, a time, and properties that may be absent.
event_row = st.fixed_dictionaries(
    {
        "ids": st.lists(
            st.tuples(st.sampled_from(KEYS), st.sampled_from("abcdef")),
            min_size=1,
            max_size=3,
            unique_by=lambda x: x[0],
        ),
        "eid": st.sampled_from(["e1", "e2", "e3", "e4", "e5", "e6"]),
        "name": st.sampled_from(["visit", "buy"]),
        "day": st.integers(1, 28),
        "amount": st.none() | st.sampled_from(["1", "2.5", "40"]),
        "channel": st.none() | st.sampled_from(["web", "app"]),
    }
)
EVENT_COLUMNS = ["event", "event_id", "create_time", "amount", "channel"]


def event_doc(spec: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {k: f"{k}-{v}" for k, v in spec["ids"]}
    props.update(event_id=spec["eid"], create_time=f"2024-01-{spec['day']:02d} 03:04:05")
    for name in ("amount", "channel"):
        if spec[name] is not None:
            props[name] = spec[name]
    return {"type": "event", "event": spec["name"], "properties": props}


def event_record(rt: Runtime, pid: int, spec: dict[str, Any], n: int) -> Any:
    return build_record(
        event_doc(spec), rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits,
        1_700_000_000_000_000 + n,
        lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
    )  # fmt: skip


def import_events(rt: Runtime, pid: int, rows: list[dict[str, Any]], insert_only: bool) -> Any:
    spec = ImportSpec(Kind.EVENTS, mode=Mode.INSERT if insert_only else Mode.UPSERT)
    docs = [event_doc(r) for r in rows]
    columns = [*KEYS, *EVENT_COLUMNS]
    data = {
        c: pa.array(
            [d["event"] if c == "event" else d["properties"].get(c) for d in docs], pa.string()
        )
        for c in columns
    }
    return apply_batch(rt, pid, spec, columns, data)


def events_of(rt: Runtime, pid: int, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each event by id: its name, time, properties (by name) and its person's identities."""
    schema = rt.catalog.schema(pid)
    keys = {p.id: name for name, p in schema.identity_keys.items()}
    names = {p.id: n for n, p in schema.event.items()}
    out: dict[str, Any] = {}
    users = {
        rt.store.find_user(pid, (schema.identity_keys[k].id, f"{k}-{v}"))
        for spec in specs
        for k, v in spec["ids"]
    }
    for uid in users:
        assert uid is not None
        person = frozenset(f"{keys[k]}:{v}" for k, v in rt.store.identities(pid, uid))
        for e in rt.store.latest_events(pid, uid, 10_000, list(schema.event.values())):
            values = {names[k]: v for k, v in e["values"].items()}
            out[e["event_id"]] = (e["event"], e["event_time"], values, person)
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stored=st.lists(event_row, max_size=4),
    rows=st.lists(event_row, min_size=1, max_size=10),
)
def test_an_events_import_resolves_like_its_rows_as_records(
    rt: Runtime, stored: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    """The same people, the same events per person, and each event with the same name, time
    and properties (re-sent ids update the event: the last row's name and time, each property
    from the last row that has one)."""
    as_records, as_file = project(rt), project(rt)
    for pid in (as_records, as_file):
        for n, spec in enumerate(stored):
            with rt.store.writer() as w:
                apply_records(w, rt.catalog, [event_record(rt, pid, spec, n)])
    with rt.store.writer() as w:
        apply_records(w, rt.catalog, [event_record(rt, as_records, spec, 100) for spec in rows])
    res = import_events(rt, as_file, rows, insert_only=False)
    assert (res.failures, res.imported) == ({}, len(rows))
    everyone = stored + rows
    assert people(rt, as_file, everyone, with_city=False) == people(
        rt, as_records, everyone, with_city=False
    )
    assert events_of(rt, as_file, everyone) == events_of(rt, as_records, everyone)


def test_an_insert_only_events_import_fails_stored_and_repeated_ids(rt: Runtime) -> None:
    pid = project(rt)
    base = {"name": "visit", "day": 1, "amount": None, "channel": None}
    with rt.store.writer() as w:
        stored = {**base, "ids": [("mobile", "a")], "eid": "e1"}
        apply_records(w, rt.catalog, [event_record(rt, pid, stored, 0)])
    rows = [
        {**base, "ids": [("mobile", "b")], "eid": "e1"},  # stored
        {**base, "ids": [("mobile", "b")], "eid": "e2"},
        {**base, "ids": [("email", "c")], "eid": "e2", "amount": "5"},  # repeats row 2
        {**base, "ids": [("email", "c")], "eid": "e3"},
    ]
    res = import_events(rt, pid, rows, insert_only=True)
    assert res.failures == {
        0: "event_id: 'e1' already exists",
        2: "event_id: 'e2' repeats an earlier row of the file",
    }
    assert res.imported == 2
    found = events_of(rt, pid, [stored, *rows])
    assert sorted(found) == ["e1", "e2", "e3"]
    assert found["e1"][3] == frozenset({"mobile:mobile-a"})  # the stored event is untouched
    assert found["e2"][2] == {}  # the repeated row's amount was not written
