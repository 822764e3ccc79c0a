"""A process that writes to a data directory and may crash at a named point on the way
(``OPENCDP_CRASH_AT``, see :mod:`opencdp.crashpoints`): the tests of exactly-once run it, then
open the same data directory again.

``python -m tests.crashdriver <data dir> send``: start (replaying what the log holds), send
:data:`RECORDS` through the ingest service (one of them a batch of records in one log frame),
and flush them. ``... recover``: start and stop. ``... state``: start, print what the store
holds of the people (JSON), and stop.

The store is the tests' store for live servers (``OPENCDP_TEST_STORE``): with ``chdb``, the
ClickHouse store, whose flush writes its rows before its marker.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from opencdp.config import Settings
from opencdp.ingest.records import Record
from opencdp.ingest.thinkingdata import build_record
from opencdp.meta.progress import STORE_INGEST_LSN
from opencdp.runtime import Runtime
from tests.liveserver import TEST_STORE

PROJECT = "crash"
ADDS = 12  # user_add n=1 records for account "a"


def settings(data_dir: Path) -> Settings:
    # Nothing flushes on its own: the flush happens when the driver asks for it.
    store = f"chdb://{data_dir / 'chdb'}" if TEST_STORE == "chdb" else ""
    return Settings(data_dir=data_dir, job_workers=0, flush_interval=3600, store_url=store)


def docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(ADDS):
        out.append({"#type": "user_add", "#account_id": "a", "properties": {"n": 1}})
        out.append({"#type": "user_append", "#account_id": "a", "properties": {"l": [f"x{i}"]}})
        out.append(
            {
                "#type": "track",
                "#account_id": "a" if i % 2 else "b",
                "#event_name": "e",
                "#time": "2024-01-02 03:04:05.000",
                "#first_check_id": f"first{i}",
                "properties": {"k": i},
            }
        )
    out.append({"#type": "user_set", "#account_id": "b", "properties": {"s": "b"}})
    return out


def project(rt: Runtime) -> int:
    found = [p for p in rt.catalog.projects() if p.name == PROJECT]
    if found:
        return found[0].id
    p, _ = rt.catalog.create_project(PROJECT)
    rt.catalog.ensure_td_keys(p.id)
    for name, ptype in (("n", "number"), ("s", "string"), ("l", "list")):
        rt.catalog.add_property(p.id, "user", name, ptype)
    rt.catalog.add_property(p.id, "event", "k", "number")
    return p.id


def build(rt: Runtime, pid: int, doc: dict[str, Any], at: int) -> Record:
    return build_record(
        doc, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits, at,
        lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
    )  # fmt: skip


def send(rt: Runtime) -> None:
    pid = project(rt)
    records = [build(rt, pid, d, 1_700_000_000_000_000 + i) for i, d in enumerate(docs())]
    half = len(records) // 2
    for r in records[:half]:
        rt.ingest.submit_wait(r)
    asyncio.run(rt.ingest.submit_batch(records[half:]))  # one frame
    assert rt.ingest.barrier(timeout=120)


def state(rt: Runtime) -> dict[str, Any]:
    """What the store holds of the people, and whether its marker and the recorded progress
    cover the whole log."""
    pid = project(rt)
    schema = rt.catalog.schema(pid)
    key = schema.identity_keys["#account_id"]
    people: dict[str, Any] = {}
    for person in "ab":
        uid = rt.store.find_user(pid, (key.id, person))
        assert uid is not None
        row = rt.store.profile(pid, uid, list(schema.user.values()))
        assert row is not None
        people[person] = {schema.by_id[k].name: v for k, v in row["values"].items()}
        people[person]["events"] = rt.store.event_count(pid, uid)
    lsn = rt.ingest.flusher.applied_lsn
    people["covered"] = lsn == rt.ingest.log.end_lsn == rt.store.checkpoint(STORE_INGEST_LSN)
    people["counts"] = rt.store.counts(pid)
    return people


def main(data_dir: str, step: str) -> None:
    rt = Runtime.open(settings(Path(data_dir)))
    rt.start(announce=False)
    try:
        if step == "send":
            send(rt)
        elif step == "state":
            print(json.dumps(state(rt)))
    finally:
        rt.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
