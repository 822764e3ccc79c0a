"""A batch of records resolves to the same people as the same records one at a time.

The flusher applies whatever the log holds in one batch; a bulk import applies its rows in
batches. Either way the result must not depend on how records were grouped: the same
partition of identity values into people, the same events per person, and no value left on a
user merged away. Hypothesis builds batches full of merge chains (a-b in one record, b-c in another,
c held by a stored user) on top of stored users, and compares one batch against one record per
transaction, on the real SQLite catalog and DuckDB store.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencdp.config import Settings
from opencdp.ingest.apply import apply_records
from opencdp.ingest.records import Record, build_record
from opencdp.runtime import Runtime

KEYS = ("mobile", "email", "wechat_id")
_names = itertools.count(1)
_clock = itertools.count(1_700_000_000_000_000, 1_000)


@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def rt(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Runtime]:
    """A runtime on the embedded store, and one on the PostgreSQL store."""
    data = tmp_path_factory.mktemp("batches") / "data"
    store = {}
    if request.param == "postgresql":
        from tests.engines import new_database

        store["store_url"] = new_database()
    runtime = Runtime.open(Settings(data_dir=data, job_workers=0, **store))
    yield runtime
    runtime.stop()


# A record: some identity values (from a small alphabet, so that chains form), maybe a city,
# maybe an event.
identity = st.tuples(st.sampled_from(KEYS), st.sampled_from("abcdef"))
record = st.fixed_dictionaries(
    {
        "ids": st.lists(identity, min_size=1, max_size=3, unique_by=lambda x: x[0]),
        "city": st.none() | st.sampled_from(["Paris", "Rome", "Oslo"]),
        "event": st.booleans(),
    }
)


def project(rt: Runtime) -> int:
    p, _ = rt.catalog.create_project(f"b{next(_names)}")
    rt.catalog.set_identity_keys(p.id, list(KEYS))
    return p.id


def build(rt: Runtime, pid: int, spec: dict[str, Any], n: int) -> Record:
    props: dict[str, Any] = {k: f"{k}-{v}" for k, v in spec["ids"]}
    if spec["city"] is not None:
        props["city"] = spec["city"]
    doc: dict[str, Any] = {"type": "user", "properties": props}
    if spec["event"]:
        props.update(event_id=f"ev{n}", create_time="2024-01-02 03:04:05")
        doc = {"type": "event", "event": "visit", "properties": props}
    return build_record(
        doc, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits, next(_clock),
        lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
    )  # fmt: skip


def people(
    rt: Runtime, pid: int, specs: list[dict[str, Any]], with_city: bool = True
) -> dict[frozenset[str], Any]:
    """Each person as the set of its identity values, with its city and its events."""
    schema = rt.catalog.schema(pid)
    keys = {p.id: name for name, p in schema.identity_keys.items()}
    city = schema.user.get("city")
    users: set[int] = set()
    for spec in specs:
        for k, v in spec["ids"]:
            found = rt.store.find_user(pid, (schema.identity_keys[k].id, f"{k}-{v}"))
            assert found is not None
            users.add(found)
    out: dict[frozenset[str], Any] = {}
    for uid in users:
        values = frozenset(f"{keys[k]}:{v}" for k, v in rt.store.identities(pid, uid))
        profile = rt.store.profile(pid, uid, list(schema.user.values()))
        assert profile is not None, f"user {uid} holds identities but has no profile"
        events = {e["event_id"] for e in rt.store.latest_events(pid, uid, 10_000, [])}
        kept = profile["values"].get(city.id) if city and with_city else None
        out[values] = (kept, frozenset(events))
    return out


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stored=st.lists(record, max_size=5),
    batch=st.lists(record, min_size=1, max_size=10),
)
def test_a_batch_resolves_like_its_records_one_at_a_time(
    rt: Runtime, stored: list[dict[str, Any]], batch: list[dict[str, Any]]
) -> None:
    together, alone = project(rt), project(rt)
    for pid in (together, alone):  # the same stored people in both
        for n, spec in enumerate(stored):
            with rt.store.writer() as w:
                apply_records(w, rt.catalog, [build(rt, pid, spec, 1000 + n)])
    records = [build(rt, together, spec, n) for n, spec in enumerate(batch)]
    with rt.store.writer() as w:
        apply_records(w, rt.catalog, records)
    for n, spec in enumerate(batch):
        with rt.store.writer() as w:
            apply_records(w, rt.catalog, [build(rt, alone, spec, n)])
    # The same people, each with the same events. (Their merged properties can differ in one
    # case: records one at a time take each property from the profile updated last, even by a
    # record that set no value, while a batch applies its values in record order; see
    # docs/architecture.md, "Identity resolution".)
    assert people(rt, together, stored + batch, with_city=False) == people(
        rt, alone, stored + batch, with_city=False
    )


def test_a_record_matching_a_user_merged_away_in_the_same_batch_follows_the_merge(
    rt: Runtime, tmp_path: Path
) -> None:
    """The chain from the finding: c is stored with user 2; one record of the batch links
    user 1 and user 2; another carries only c. Its event belongs to the merged person."""
    pid = project(rt)
    a = {"ids": [("mobile", "a")], "city": None, "event": False}
    c = {"ids": [("mobile", "c"), ("email", "c")], "city": None, "event": False}
    for n, spec in enumerate((a, c)):
        with rt.store.writer() as w:
            apply_records(w, rt.catalog, [build(rt, pid, spec, 100 + n)])
    link = {"ids": [("mobile", "a"), ("email", "c")], "city": "Oslo", "event": False}
    only_c = {"ids": [("mobile", "c")], "city": None, "event": True}
    with rt.store.writer() as w:
        apply_records(w, rt.catalog, [build(rt, pid, link, 1), build(rt, pid, only_c, 2)])
    assert people(rt, pid, [a, c]) == {
        frozenset({"mobile:mobile-a", "mobile:mobile-c", "email:email-c"}): (
            "Oslo",
            frozenset({"ev2"}),
        )
    }
