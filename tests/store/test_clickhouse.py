"""The ClickHouse store's own mechanisms, on chdb, beyond the contract suite: how its rows are
kept (events written once per id, merges that leave events as they were written), the second
wall between tenants (every query of a project filtered to it by its settings), a turn cut
short and replayed, the locks of several processes in PostgreSQL, and the cluster schema it
ships."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opencdp.store import open_store
from opencdp.store.clickhouse import ClickHouseStore
from opencdp.store.clickhouse.sql import SHARDING, TABLES, cluster_ddl
from tests.clickhouse import path as chdb_path
from tests.store.kit import (
    AMOUNT,
    EMAIL,
    EVENT_PROPS,
    MOBILE,
    OS,
    USER_PROPS,
    Event,
    P,
    Q,
    event_rows,
    profiles,
    write,
)
from tests.store.test_resolve import PROPS, batch

ROOT = Path(__file__).resolve().parents[2]


def _open(name: str, locks: str | None = None) -> ClickHouseStore:
    store = open_store(f"chdb://{chdb_path()}?database={name}", locks)
    assert isinstance(store, ClickHouseStore)
    return store


@pytest.fixture
def store(request: pytest.FixtureRequest) -> Iterator[ClickHouseStore]:
    name = "c_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    s = _open(name)
    with s._client() as c:
        c.command(f"DROP DATABASE IF EXISTS {s.db}")
    s.close()
    s = _open(name)
    yield s
    s.close()


def raw(store: ClickHouseStore, sql: str, project: int | None = None) -> list[tuple[Any, ...]]:
    """Rows of a query of the store's tables as they are (``{db}`` names the database)."""
    settings = store.scoped(project) if project is not None else None
    with store._client() as c:
        return [tuple(r) for r in c.query(sql.format(db=store.db), settings=settings).result_rows]


def test_every_query_of_a_project_reads_only_its_rows_whatever_it_says(
    store: ClickHouseStore,
) -> None:
    """The second wall: a query of a project that forgets its ``project_id`` condition still
    reads that project's rows only, from every table."""
    for project, n in ((P, 2), (Q, 3)):
        evs = [Event(f"e{i}", 1, values={AMOUNT.id: float(project)}) for i in range(n)]
        write(
            store,
            lambda w, evs=evs, project=project: w.upsert_events(
                project, event_rows(evs), EVENT_PROPS
            ),
            lambda w, project=project: w.upsert_profiles(
                project, profiles([(1, 0, {EMAIL: f"{project}@x"})]), USER_PROPS
            ),
            lambda w, project=project: w.insert_identities(project, [(EMAIL, "same")], [1]),
            project=project,
        )
    assert raw(store, "SELECT count() FROM {db}.events") == [(5,)]
    for project, n in ((P, 2), (Q, 3)):
        assert raw(store, "SELECT count() FROM {db}.events", project) == [(n,)]
        assert raw(store, "SELECT DISTINCT p_20 FROM {db}.events", project) == [(float(project),)]
        assert raw(store, "SELECT p_10 FROM {db}.profiles FINAL", project) == [(f"{project}@x",)]
        assert raw(store, "SELECT count() FROM {db}.identities FINAL", project) == [(1,)]
        assert raw(store, "SELECT count() FROM {db}.event_ids FINAL", project) == [(n,)]


def test_an_event_sent_again_unchanged_is_not_written_again(store: ClickHouseStore) -> None:
    ev = Event("e1", 1, values={AMOUNT.id: 1.0, OS.id: "ios"})
    write(store, lambda w: w.upsert_events(P, event_rows([ev]), EVENT_PROPS))
    before = raw(store, "SELECT _version FROM {db}.events")
    write(store, lambda w: w.upsert_events(P, event_rows([ev]), EVENT_PROPS))
    assert raw(store, "SELECT _version FROM {db}.events") == before
    # a changed one is one row, the new one
    changed = Event("e1", 1, values={OS.id: "android"})
    write(store, lambda w: w.upsert_events(P, event_rows([changed]), EVENT_PROPS))
    assert raw(store, "SELECT p_20, p_21 FROM {db}.events") == [(1.0, "android")]


def test_a_turn_cut_short_between_writing_an_event_anew_and_deleting_its_old_row_is_replayed(
    store: ClickHouseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClickHouse has no transactions: a changed event is written anew, then its older row is
    deleted. A failure in between leaves both rows; the replay of the batch leaves one, with
    the batch's values."""
    first = Event("e1", 1, "pay", values={AMOUNT.id: 1.0, OS.id: "ios"})
    write(store, lambda w: w.upsert_events(P, event_rows([first]), EVENT_PROPS))
    moved = Event("e1", 2, "refund", values={OS.id: "android"})  # another sort key
    from opencdp.store.clickhouse.writer import WriterBase

    real = WriterBase._x

    def failing(self: WriterBase, sql: str, params: dict[str, Any] | None = None) -> None:
        if sql.startswith("DELETE"):
            raise OSError("the disk is full")
        real(self, sql, params)

    monkeypatch.setattr(WriterBase, "_x", failing)
    with pytest.raises(OSError):
        write(store, lambda w: w.upsert_events(P, event_rows([moved]), EVENT_PROPS))
    monkeypatch.setattr(WriterBase, "_x", real)
    assert raw(store, "SELECT count() FROM {db}.events") == [(2,)]  # (both, for now)
    write(store, lambda w: w.upsert_events(P, event_rows([moved]), EVENT_PROPS))
    assert raw(store, "SELECT event_name, user_id, p_20, p_21 FROM {db}.events") == [
        ("refund", 2, 1.0, "android")
    ]
    assert store.counts(P)["events"] == 1 and store.event_count(P, 2) == 1


def test_a_merge_maps_the_losers_events_and_leaves_them_as_written(
    store: ClickHouseStore,
) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(1, 0, {}), (2, 1, {}), (3, 2, {})]), []),
        lambda w: w.upsert_events(P, event_rows([Event(f"e{u}", u) for u in (1, 2, 3)]), []),
    )
    write(store, lambda w: w.merge_users(P, {3: 2}, USER_PROPS))
    write(store, lambda w: w.merge_users(P, {2: 1}, USER_PROPS))  # 3's events follow 2's
    assert raw(store, "SELECT event_id, user_id FROM {db}.events ORDER BY event_id") == [
        ("e1", 1), ("e2", 2), ("e3", 3)
    ]  # fmt: skip
    assert raw(
        store, "SELECT old_user_id, user_id FROM {db}.overrides FINAL ORDER BY old_user_id"
    ) == [(2, 1), (3, 1)]
    assert [store.event_count(P, u) for u in (1, 2, 3)] == [3, 0, 0]
    assert {e["event_id"] for e in store.latest_events(P, 1, 10, [])} == {"e1", "e2", "e3"}
    assert store.counts(P) == {"profiles": 1, "events": 3, "identities": 0}


def test_writers_of_several_processes_take_their_turns_from_postgresql(
    store: ClickHouseStore,
) -> None:
    """Two stores on one ClickHouse with their locks in PostgreSQL (as the processes of a
    deployment on a ClickHouse server): four turns resolving the same new values at once
    make one user of each; a marker read for update holds the other process's turn."""
    from tests.engines import new_database

    locks = new_database()
    name = store.database
    a, b = _open(name, locks), _open(name, locks)
    try:
        rows = batch(["a@x", "b@x", None], ["m1", None, "m1"], ["A", "B", "C"])
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def turn(s: ClickHouseStore, n: int) -> None:
            start.wait()
            try:
                write(s, lambda w: w.resolve_profiles(
                    P, rows, [EMAIL, MOBILE], PROPS, USER_PROPS, False, True, f"job-{n}:0"
                ))  # fmt: skip
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=turn, args=((a, b)[n % 2], n)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        found = {a.find_user(P, t) for t in [(EMAIL, "a@x"), (EMAIL, "b@x"), (MOBILE, "m1")]}
        assert len(found) == 2 and None not in found
        assert a.counts(P)["profiles"] == 2
        # a marker read for update by one process holds the other's until its turn ends
        read: list[int] = []
        holds = threading.Event()

        def other() -> None:
            holds.wait()
            with b.writer() as w2:
                read.append(w2.checkpoint_for_update("ingest_lsn"))

        th = threading.Thread(target=other)
        th.start()
        with a.writer() as w:
            w.checkpoint_for_update("ingest_lsn")
            holds.set()
            th.join(0.3)
            assert read == []
            w.set_checkpoint("ingest_lsn", 7)
        th.join()
        assert read == [7]
    finally:
        a.close()
        b.close()


def test_the_shipped_cluster_schema_is_the_stores_tables_spread_by_their_keys(
    store: ClickHouseStore,
) -> None:
    """``deploy/clickhouse/cluster.sql`` is what ``opencdp clickhouse-ddl`` prints; each
    table's sharding key is made of the leading columns of its sort key (every version of a
    row on one shard); and each shard's table, made without replication, has the columns of
    the store's own."""
    shipped = (ROOT / "deploy" / "clickhouse" / "cluster.sql").read_text()
    statements = [
        s.strip()
        for s in re.sub(r"^--.*$", "", shipped, flags=re.M).split(";\n")
        if s.strip().rstrip(";")
    ]
    assert [s.rstrip(";") for s in statements] == cluster_ddl("opencdp", "opencdp")
    for name, (_, engine) in TABLES.items():
        order = re.search(r"ORDER BY \(?([^)]*)\)?$", engine)
        assert order is not None
        keys = [k.strip() for k in order.group(1).split(",")]
        sharded = re.fullmatch(r"cityHash64\(([^)]*)\)", SHARDING[name])
        assert sharded is not None
        cols = [k.strip() for k in sharded.group(1).split(",")]
        assert set(cols) <= set(keys), name
    locals_ = [s for s in statements if '_local" ON CLUSTER' in s and "CREATE TABLE" in s]
    assert len(locals_) == len(TABLES)
    with store._client() as c:
        for s in locals_:
            plain = s.replace(' ON CLUSTER "opencdp"', "").replace('"opencdp".', f"{store.db}.")
            plain = re.sub(
                r"Replicated(\w+)\('[^']*', '\{replica\}'(?:, )?", r"\1(", plain
            ).replace("()", "")
            c.command(plain)
        for name in TABLES:
            got = c.query(f"DESCRIBE TABLE {store.db}.{name}_local").result_rows
            want = c.query(f"DESCRIBE TABLE {store.t(name)}").result_rows
            assert [r[:2] for r in got] == [r[:2] for r in want], name


def test_a_store_on_a_cluster_refuses_to_start_without_the_clusters_tables(
    store: ClickHouseStore,
) -> None:
    """On a cluster the operator creates the tables (they are replicated and distributed):
    the store does not make plain ones in their place."""
    with pytest.raises(RuntimeError, match="opencdp clickhouse-ddl") as err:
        open_store(f"chdb://{chdb_path()}?database=c_no_tables&cluster=main")
    assert "events" in str(err.value)
    with store._client() as c:
        assert not c.query("SELECT 1 FROM system.databases WHERE name = 'c_no_tables'").result_rows


def test_ids_written_into_a_delete_as_literals_keep_every_character(
    store: ClickHouseStore,
) -> None:
    """A changed event's old row is deleted by its id written as a literal (a delete runs on
    the shards): quotes, backslashes and NUL in an id are kept."""
    from opencdp.store.clickhouse.writer import literals

    ids = ["a'b", "c\\d", "e\x00f", "\\'", "x' OR 1=1 --"]
    assert raw(store, f"SELECT arrayJoin([{literals(ids)[1:-1]}])") == [(i,) for i in ids]
    for n in (1.0, 2.0):  # written, then changed: its old row deleted by id
        write(
            store,
            lambda w, n=n: w.upsert_events(
                P, event_rows([Event(i, 1, values={AMOUNT.id: n}) for i in ids]), EVENT_PROPS
            ),
        )
    assert sorted(raw(store, "SELECT event_id, p_20 FROM {db}.events")) == sorted(
        (i, 2.0) for i in ids
    )
