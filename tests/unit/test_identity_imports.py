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


def import_rows(rt: Runtime, pid: int, rows: list[dict[str, Any]], insert_only: bool) -> Any:
    spec = ImportSpec(
        Kind.PROFILES, lookup=IDENTITY, mode=Mode.INSERT if insert_only else Mode.UPSERT
    )
    target = make_target(rt.catalog, rt.settings.limits, pid, spec)
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
    batch = RowBatch(columns, pa.table(data), pa.array(range(1, len(rows) + 1), pa.int64()), [])
    prepared = target.prepare(batch)
    prepared.key = f"test:{pid}:1"
    with rt.store.writer() as w:
        return target.apply(w, prepared)


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
