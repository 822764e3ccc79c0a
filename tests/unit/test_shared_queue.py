"""The ingest queue of a deployment on PostgreSQL (opencdp.ingest.shared): LSNs committed in
order by every process, one leader moving the queue into the store and another taking over
when it stops, a barrier that waits for whichever process applies, and records the store
refuses kept in the metadata DB."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from opencdp.config import Settings
from opencdp.ingest.flusher import Flusher
from opencdp.ingest.records import build_record
from opencdp.ingest.shared import SharedLog
from opencdp.meta import tables as t
from opencdp.meta.db import connect
from opencdp.meta.progress import STORE_INGEST_LSN
from opencdp.runtime import Runtime
from tests.engines import new_database, shared_deployment


def append_many(url: str, count: int, start: Any, out: Any) -> None:
    """(Another process) append ``count`` frames from four threads; put the LSNs on ``out``."""
    queue = SharedLog(connect(url))
    queue.start(lambda entries: None)
    lsns: list[int] = []
    lock = threading.Lock()
    start.wait()

    def run(n: int) -> None:
        for i in range(count // 4):
            lsn = queue.append_wait(f"{n}:{i}".encode(), None)
            with lock:
                lsns.append(lsn)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    queue.close()
    out.put(lsns)


def test_frames_are_committed_in_lsn_order_by_every_process() -> None:
    url = new_database()
    reader = SharedLog(connect(url))
    reader.open()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=append_many, args=(url, 1200, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    # A reader following the LSNs while both processes append never sees one before all the
    # ones below it: a frame that commits late would be skipped for good.
    after, seen, deadline = 0, 0, time.monotonic() + 300  # (a hang guard)
    while seen < 2400 and time.monotonic() < deadline:
        frames = reader.read(after, limit=500)
        assert [lsn for lsn, _ in frames] == list(range(after + 1, after + 1 + len(frames)))
        if frames:
            after, seen = frames[-1][0], seen + len(frames)
    given = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    lsns = sorted(lsn for one in given for lsn in one)
    assert lsns == list(range(1, 2401)) and seen == 2400


@pytest.fixture
def shared(tmp_path: Path) -> dict[str, Any]:
    return shared_deployment(tmp_path, secret_key="ab" * 32, flush_interval=0.05)


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    opened: list[Runtime] = []
    yield opened
    for rt in opened:
        if rt.started:
            rt.stop()


def start(tmp_path: Path, name: str, shared: dict[str, Any], opened: list[Runtime]) -> Runtime:
    rt = Runtime.open(Settings(data_dir=tmp_path / name, **shared))
    rt.start(announce=False)
    opened.append(rt)
    return rt


def send(rt: Runtime, pid: int, first: int, count: int, **props: Any) -> None:
    for i in range(first, first + count):
        doc = {"type": "event", "event": "pay",
               "properties": {"event_id": f"e{i}", "mobile": f"1{i % 7:010d}",
                              "create_time": "2024-01-02 03:04:05", **props}}  # fmt: skip
        rt.ingest.submit_wait(build_record(
            doc, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits,
            time.time_ns() // 1000,
            lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
        ))  # fmt: skip


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + 120  # a hang guard, not a performance limit
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def test_one_leader_applies_what_every_process_acknowledges_and_another_takes_over(
    tmp_path: Path, shared: dict[str, Any], runtimes: list[Runtime]
) -> None:
    one = start(tmp_path, "one", shared, runtimes)
    wait_for(lambda: one.ingest.tailer is not None and one.ingest.tailer.leader, "a leader")
    two = start(tmp_path, "two", shared, runtimes)
    pid = one.catalog.create_project("shop")[0].id
    two.catalog.reload()
    send(two, pid, 0, 300)  # acknowledged by the process that does not lead
    assert two.ingest.tailer is not None and not two.ingest.tailer.leader
    assert two.ingest.barrier(timeout=120)  # waits for the leader to apply them
    assert one.store.counts(pid)["events"] == 300
    assert two.ingest.pending == 0
    with one.ingest.progress.engine.connect() as conn:  # applied: gone from the queue
        assert conn.execute(sa.select(sa.func.count()).select_from(t.ingest_queue)).scalar() == 0
    one.stop()  # the leader goes: the other takes over from the recorded progress
    send(two, pid, 300, 200)
    assert two.ingest.barrier(timeout=120)
    assert two.ingest.tailer.leader
    assert two.store.counts(pid)["events"] == 500


def test_records_the_store_refuses_are_kept_in_the_metadata_db(
    tmp_path: Path, shared: dict[str, Any], runtimes: list[Runtime]
) -> None:
    rt = start(tmp_path, "one", shared, runtimes)
    pid = rt.catalog.create_project("shop")[0].id
    refuse = rt.store.writer

    def refusing() -> Any:
        raise ValueError("not for this store")  # (a fault of the data, not a passing one)

    rt.store.writer = refusing  # type: ignore[method-assign]
    try:
        send(rt, pid, 0, 3)
        wait_for(lambda: rt.ingest.flusher.failures >= 3, "three dead letters")
    finally:
        rt.store.writer = refuse  # type: ignore[method-assign]
    with rt.ingest.progress.engine.connect() as conn:
        kept = conn.execute(sa.select(t.ingest_dead_letters)).all()
    assert len(kept) == 3 and all("not for this store" in row.error for row in kept)
    assert {row.record for row in kept} and all('"e' in row.record for row in kept)
    assert rt.ingest.barrier(timeout=120)  # nothing waits: the queue moved past them


def test_a_batch_in_flight_does_not_cut_the_queue_a_resync_replaced(tmp_path: Path) -> None:
    """A process becoming the leader again reads the queue afresh while its flusher may be
    applying an older batch: that batch, once done, must not cut records off the new queue."""
    rt = Runtime.open(Settings(data_dir=tmp_path / "data", job_workers=0, flush_interval=0.01))
    rt.start(announce=False)
    try:
        pid = rt.catalog.create_project("shop")[0].id
        inside, release = threading.Event(), threading.Event()
        writer = rt.store.writer

        def held() -> Any:
            if not release.is_set():
                inside.set()
                release.wait()
            return writer()

        rt.store.writer = held  # type: ignore[method-assign]
        send(rt, pid, 0, 1)  # its batch is taken, then held inside the store
        wait_for(inside.is_set, "a batch in flight")
        rt.ingest.flusher.resync()
        send(rt, pid, 1, 3)  # the queue read afresh
        release.set()
        assert rt.ingest.barrier(timeout=120)
        assert rt.store.counts(pid)["events"] == 4  # none cut off
    finally:
        rt.stop()


def test_a_replaced_leader_still_holding_a_batch_never_writes_it_over_newer_records(
    tmp_path: Path, shared: dict[str, Any], runtimes: list[Runtime]
) -> None:
    """A leader that lost its lock may still be applying a batch when the next leader has
    applied it and more. Whichever writes second reads the store's marker under a lock and
    leaves out what the store holds: the newer value stays."""
    rt = Runtime.open(Settings(data_dir=tmp_path / "one", **shared))
    runtimes.append(rt)
    pid = rt.catalog.create_project("overlap")[0].id

    def user(city: str, at: int) -> Any:
        doc = {"type": "user", "properties": {"mobile": "13800000000", "city": city}}
        return build_record(
            doc, rt.catalog.project(pid), rt.catalog.schema(pid), rt.settings.limits, at,
            lambda table, wanted: rt.catalog.ensure_properties(pid, table, wanted),
        )  # fmt: skip

    entries = [(1, user("A", 1)), (2, user("B", 2)), (3, user("C", 3))]

    def flusher() -> Flusher:
        return Flusher(rt.store, rt.catalog, rt.ingest.progress, 1.0, 100, tmp_path / "dead")

    replaced, leader = flusher(), flusher()  # (both read the store's marker now: 0)
    leader.apply_now(entries)
    replaced.apply_now(entries[:2])  # its batch in flight when it lost the lock
    schema = rt.catalog.schema(pid)
    uid = rt.store.find_user(pid, (schema.identity_keys["mobile"].id, "13800000000"))
    assert uid is not None
    profile = rt.store.profile(pid, uid, [schema.user["city"]])
    assert profile is not None and profile["values"] == {schema.user["city"].id: "C"}
    assert rt.store.checkpoint(STORE_INGEST_LSN) == 3


def test_health_says_so_when_no_process_applies_the_queue(
    tmp_path: Path, shared: dict[str, Any], runtimes: list[Runtime], monkeypatch: Any
) -> None:
    """A server without workers takes records; while no process applies them, its health
    names the queue after a while (all workers down); once a worker runs, it is ok again."""
    from opencdp.ingest import service

    monkeypatch.setattr(service, "QUEUE_STALL_SECONDS", 0.3)
    server = Runtime.open(Settings(data_dir=tmp_path / "server", **shared))
    server.start(announce=False, work=False)
    runtimes.append(server)
    pid = server.catalog.create_project("idle")[0].id
    send(server, pid, 0, 3)
    assert "ingest_applied" not in server.health.problems()  # (not yet: the first look)
    wait_for(lambda: "ingest_applied" in server.health.problems(), "the stall reported")
    assert "opencdp worker" in server.health.problems()["ingest_applied"]
    start(tmp_path, "worker", shared, runtimes)
    wait_for(lambda: server.ingest.pending == 0, "the worker applied the queue")
    assert "ingest_applied" not in server.health.problems()


def test_a_frame_is_dead_lettered_once_whichever_leader_meets_it_again() -> None:
    """A frame set aside is not covered by the recorded progress, so the next leader meets it
    again: its lines are kept once."""
    queue = SharedLog(connect(new_database()))
    frame = [{"lsn": 7, "error": "not a record", "record": "x"},
             {"lsn": 7, "error": "not a record", "record": "y"}]  # fmt: skip
    queue.dead_letter(frame)
    queue.dead_letter(frame)  # (the next leader)
    queue.dead_letter([{"lsn": 8, "error": "refused", "record": "z"}])
    with queue.engine.connect() as conn:
        kept = conn.execute(
            sa.select(t.ingest_dead_letters.c.lsn, t.ingest_dead_letters.c.record)
        ).all()
    assert sorted(kept) == [(7, "x"), (7, "y"), (8, "z")]


def test_the_leader_applies_values_of_properties_its_catalog_has_not_seen_yet(
    tmp_path: Path, shared: dict[str, Any], runtimes: list[Runtime]
) -> None:
    """A server creates a property with the records that carry it; the process applying them
    (its catalog checked every hour here) has not seen the property yet: it looks again
    rather than dropping the values."""
    leader = Runtime.open(
        Settings(data_dir=tmp_path / "leader", **{**shared, "catalog_refresh_seconds": 3600.0})
    )
    runtimes.append(leader)
    server = Runtime.open(Settings(data_dir=tmp_path / "server", **shared))
    runtimes.append(server)
    pid = server.catalog.create_project("late")[0].id
    leader.catalog.project(pid)  # (its snapshot holds the project, not the property to come)
    leader.start(announce=False)
    server.start(announce=False, work=False)
    send(server, pid, 0, 2, coupon="SPRING")  # a new event property, created by the server
    assert server.ingest.barrier(timeout=120)
    schema = server.catalog.schema(pid)
    uid = leader.store.find_user(pid, (schema.identity_keys["mobile"].id, f"1{0:010d}"))
    assert uid is not None
    (event,) = [e for e in leader.store.latest_events(pid, uid, 10, [schema.event["coupon"]])]
    assert event["values"] == {schema.event["coupon"].id: "SPRING"}
