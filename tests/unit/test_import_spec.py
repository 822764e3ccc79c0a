"""Import specs (imports/spec.py): stored and read back, jobs stored in the older form read and
run as they were submitted; and the profile lookup of the core (profiles.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencdp.config import Settings
from opencdp.errors import CdpError, Code
from opencdp.imports.spec import IDENTITY, USER_ID, ImportSpec, Kind, Membership, Mode
from opencdp.profiles import Profiles
from opencdp.runtime import Runtime

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
specs = st.builds(
    ImportSpec,
    kind=st.sampled_from(Kind),
    format=st.sampled_from(["csv", "tsv", "ssv", "jsonl", "json"]),
    charset=st.none() | st.sampled_from(["utf-8", "gbk"]),
    mode=st.sampled_from(Mode),
    stop_on_error=st.booleans(),
    lookup=st.sampled_from(["email", "mobile", USER_ID, IDENTITY]),
    list_id=st.none() | st.integers(1, 2**63 - 1),
    membership=st.none() | st.builds(Membership, names, names, st.integers(1, 2**63 - 1), names),
    collection=st.none() | names,
    key_fields=st.lists(names, max_size=3).map(tuple),
    first_column_key=st.booleans(),
    identity_keys=st.none() | st.dictionaries(names, st.integers(1, 10_000), max_size=4),
)


def _kept(spec: ImportSpec) -> ImportSpec:
    """What a spec keeps of itself: only the fields of its kind."""
    profiles, documents = spec.kind is Kind.PROFILES, spec.kind is Kind.DOCUMENTS
    return ImportSpec(
        spec.kind,
        spec.format,
        spec.charset,
        spec.mode,
        spec.stop_on_error,
        spec.lookup if profiles else "email",
        spec.list_id if profiles else None,
        spec.membership if profiles else None,
        spec.collection if documents else None,
        spec.key_fields if documents else (),
        spec.first_column_key if documents else False,
        spec.identity_keys,
    )


@given(specs)
def test_a_spec_is_read_back_from_its_stored_parameters(spec: ImportSpec) -> None:
    stored = orjson.loads(orjson.dumps(spec.to_params()))  # as the metadata DB keeps it
    assert ImportSpec.from_params(stored) == _kept(spec)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"target": "users", "format": "tsv", "lookup_field": "mobile", "mode": "upsert",
             "list_id": 12, "partition": None, "charset": "gbk"},
            ImportSpec(Kind.PROFILES, "tsv", "gbk", lookup="mobile", list_id=12),
        ),
        (
            {"target": "users", "lookup_field": "*", "mode": "insert", "stop_on_error": True,
             "format": "jsonl", "identity_keys": {"email": 2}},
            ImportSpec(Kind.PROFILES, "jsonl", mode=Mode.INSERT, stop_on_error=True,
                       lookup=IDENTITY, identity_keys={"email": 2}),
        ),
        ({"target": "events", "format": "csv"}, ImportSpec(Kind.EVENTS)),
        (
            {"target": "collection", "collection": "car_c", "key": "*first",
             "dedupe_fields": ["vin", "plate"], "format": "csv", "mode": "upsert"},
            ImportSpec(Kind.DOCUMENTS, collection="car_c", key_fields=("vin", "plate"),
                       first_column_key=True),
        ),
        (
            {"target": "program_members", "program_id": 1044, "status": "Registered",
             "format": "csv", "mode": "upsert"},
            ImportSpec(Kind.PROFILES, membership=Membership(
                "program_members", "programId", 1044, "Registered")),
        ),
    ],
)  # fmt: skip
def test_parameters_stored_before_specs_are_read(
    params: dict[str, Any], expected: ImportSpec
) -> None:
    assert ImportSpec.from_params(params) == expected


def test_an_unknown_target_is_refused_naming_it() -> None:
    for params in ({"target": "orders"}, {"spec": 2, "kind": "orders"}):
        with pytest.raises(CdpError) as err:
            ImportSpec.from_params(params)
        assert err.value.code is Code.UNSUPPORTED and err.value.field == "target"


# ---- a data directory's queued jobs, stored in the older form, still run --------------------


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _wait(rt: Runtime, project_id: int, job_id: int) -> None:
    deadline = time.monotonic() + 120  # a hang guard, not a performance limit
    while not rt.jobs.get(project_id, job_id).done:
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.02)


def test_jobs_queued_in_the_older_form_run_after_a_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", job_workers=0)
    rt = Runtime.open(settings)
    try:
        project, _ = rt.catalog.create_project("legacy")
        leads = b"email,city\nA@x.com,Rome\nb@x.com,Oslo\n"
        docs = b"vin,color\nV1,red\nV2,blue\n"
        f1 = asyncio.run(rt.files.write(project.id, "leads.csv", _chunks(leads), 1 << 20))
        f2 = asyncio.run(rt.files.write(project.id, "cars.csv", _chunks(docs), 1 << 20))
        f3 = asyncio.run(rt.files.write(project.id, "members.csv", _chunks(leads), 1 << 20))
        keys = {n: p.id for n, p in rt.catalog.schema(project.id).identity_keys.items()}
        queued = [
            rt.jobs.submit(project.id, "import", "marketo", {
                "target": "users", "format": "csv", "lookup_field": "email", "mode": "upsert",
                "list_id": 5, "partition": None, "charset": None, "identity_keys": keys,
            }, f1.id),
            rt.jobs.submit(project.id, "import", "marketo", {
                "target": "collection", "collection": "car_c", "key": "*first",
                "dedupe_fields": [], "format": "csv", "mode": "upsert", "charset": None,
            }, f2.id),
            rt.jobs.submit(project.id, "import", "marketo", {
                "target": "program_members", "program_id": 7, "status": "Attended",
                "format": "csv", "mode": "upsert", "charset": None,
            }, f3.id),
        ]  # fmt: skip
    finally:
        rt.stop()

    rt = Runtime.open(Settings(data_dir=tmp_path / "data", job_workers=1))
    rt.start(announce=False)
    try:
        for job in queued:
            _wait(rt, project.id, job.id)
            done = rt.jobs.get(project.id, job.id)
            assert (done.state, done.imported, done.failed) == ("complete", 2, 0), done.message
        found = Profiles(rt.catalog, rt.store, rt.ingest.barrier).find(
            project.id, "email", "a@x.com"
        )
        assert found.properties["city"] == "Rome"
        assert rt.store.list_members(project.id, 5, 10, 0) == sorted(
            [found.user_id, rt.store.find_user(project.id, (keys["email"], "b@x.com"))]
        )
        cars = rt.catalog.collection(project.id, "car_c", create=False)
        assert orjson.loads(rt.store.document(project.id, cars, "V2") or b"null") == {
            "_id": "V2",
            "vin": "V2",
            "color": "blue",
        }
        members = rt.catalog.collection(project.id, "program_members", create=False)
        assert orjson.loads(rt.store.document(project.id, members, "7:a@x.com") or b"null") == {
            "_id": "7:a@x.com",
            "programId": 7,
            "email": "a@x.com",
            "status": "Attended",
        }
    finally:
        rt.stop()


def test_profile_lookups_refuse_what_names_no_user(tmp_path: Path) -> None:
    rt = Runtime.open(Settings(data_dir=tmp_path / "data", job_workers=0))
    try:
        project, _ = rt.catalog.create_project("p")
        profiles = Profiles(rt.catalog, rt.store, lambda: None)
        for args, code, field in [
            ((None, None, None), Code.VALIDATION_FAILED, "key"),
            (("city", "x", None), Code.VALIDATION_FAILED, "key"),
            (("mobile", "  ", None), Code.VALIDATION_FAILED, "value"),
            (("mobile", "nobody", None), Code.NOT_FOUND, "value"),
            ((None, None, 42), Code.NOT_FOUND, "user_id"),
        ]:
            with pytest.raises(CdpError) as err:
                profiles.find(project.id, *args)
            assert (err.value.code, err.value.field) == (code, field), args
    finally:
        rt.stop()
