"""The store contract, replay: checkpoints and batch markers, and every write replayed with
its key (the same rows, the same batch key) changing nothing, which is what lets the ingest
flusher and the import pipeline replay a batch after a crash between "store written" and
"progress recorded". The other files of this suite cover the rest of the interface by area
(writes, merges, imports, reads, exports, segments, isolation).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from opencdp.store.base import SEGMENT_ROWS, EventRows, Store, StoreWriter
from tests.store.conftest import Opener
from tests.store.kit import (
    AMOUNT,
    CITY,
    EMAIL,
    MOBILE,
    SCORE,
    T0,
    TAGS,
    USER_PROPS,
    P,
    Write,
    profiles,
    values,
    write,
)


def twice(store: Store, *steps: Write) -> tuple[list[Any], list[Any]]:
    """Each step in one turn, then the same steps again: a replay."""
    return write(store, *steps), write(store, *steps)


def events(rows: list[tuple[str, int, float]]) -> EventRows:
    return EventRows(
        [e for e, _, _ in rows],
        ["pay"] * len(rows),
        [T0] * len(rows),
        [T0 + 1] * len(rows),
        [u for _, u, _ in rows],
        [{AMOUNT.id: a} for _, _, a in rows],
    )


# ---- checkpoints and batch markers ------------------------------------------------------------
def test_checkpoints_are_kept_across_opens(store: Store, open_again: Opener) -> None:
    assert store.checkpoint("deployment") == 0
    with store.writer() as w:
        w.set_checkpoint("deployment", 7)
        w.set_checkpoint("ingest_lsn", 100)
    with store.writer() as w:
        w.set_checkpoint("ingest_lsn", 250)
    store.close()
    again = open_again()
    assert (again.checkpoint("deployment"), again.checkpoint("ingest_lsn")) == (7, 250)


def test_a_checkpoint_read_for_update_holds_the_next_turn_until_the_commit(
    store: Store,
) -> None:
    """Two overlapping writers of one stream: the second reads the marker the first
    committed, never the value the first read."""
    with store.writer() as w:
        assert w.checkpoint_for_update("ingest_lsn") == 0
        w.set_checkpoint("ingest_lsn", 5)
    read: list[int] = []
    first_holds, second_started = threading.Event(), threading.Event()

    def second() -> None:
        first_holds.wait()
        second_started.set()
        with store.writer() as w2:
            read.append(w2.checkpoint_for_update("ingest_lsn"))
            w2.set_checkpoint("ingest_lsn", read[-1] + 1)

    thread = threading.Thread(target=second)
    thread.start()
    with store.writer() as w:
        assert w.checkpoint_for_update("ingest_lsn") == 5
        first_holds.set()
        second_started.wait()
        time.sleep(0.2)  # (the second turn is waiting now, or will ask after the commit)
        assert read == []
        w.set_checkpoint("ingest_lsn", 9)
    thread.join()
    assert read == [9] and store.checkpoint("ingest_lsn") == 10


def test_a_batch_outcome_is_read_back_by_its_key_and_forgotten_by_prefix(store: Store) -> None:
    assert store.batch_outcome("import:1:1") is None
    with store.writer() as w:
        for key in ("import:1:1", "import:1:2", "import:12:1"):
            w.record_batch(key, key.encode() + b"\x00\xff")
    with store.writer() as w:
        w.record_batch("import:1:2", b"again")  # recorded again: the last one is kept
    assert store.batch_outcome("import:1:1") == b"import:1:1\x00\xff"
    assert store.batch_outcome("import:1:2") == b"again"
    with store.writer() as w:
        w.forget_batches("import:1:")
    assert store.batch_outcome("import:1:1") is None
    assert store.batch_outcome("import:12:1") == b"import:12:1\x00\xff"  # not a prefix of it


class Refused(Exception):
    pass


def test_a_batch_marker_commits_with_the_rows_of_its_transaction(store: Store) -> None:
    """Where the engine has transactions, the marker and the rows are there together or not
    at all; without, the marker follows the rows and the rows are idempotent (below)."""
    if not store.capabilities.transactions:
        pytest.skip("the engine has no transactions: markers follow their rows")
    with pytest.raises(Refused), store.writer() as w:
        w.ensure_project(P)
        w.upsert_events(P, events([("e1", 1, 1.0)]), [])
        w.record_batch("import:1:1", b"done")
        raise Refused
    assert store.batch_outcome("import:1:1") is None
    assert store.counts(P)["events"] == 0


def test_ids_reserved_under_a_key_are_the_same_when_asked_again(store: Store) -> None:
    first, again, other, plain = write(
        store,
        lambda w: w.allocate_user_ids(P, 5, "import:1:1"),
        lambda w: w.allocate_user_ids(P, 5, "import:1:1"),
        lambda w: w.allocate_user_ids(P, 5, "import:1:2"),
        lambda w: w.allocate_user_ids(P, 3),
    )
    assert first == again
    ranges = [set(range(first, first + 5)), set(range(other, other + 5)), {plain, plain + 2}]
    assert not (ranges[0] & ranges[1]) and not (ranges[2] & (ranges[0] | ranges[1]))
    (replayed,) = write(store, lambda w: w.allocate_user_ids(P, 4, "import:1:1"))
    assert replayed == first  # a smaller count (rows of the batch that matched on replay)
    with store.writer() as w:
        w.forget_batches("import:1:")
    (fresh,) = write(store, lambda w: w.allocate_user_ids(P, 5, "import:1:1"))
    assert fresh > max(other + 4, plain + 2)  # ids are never reused


# ---- writes, replayed ---------------------------------------------------------------------------
def test_profile_upserts_replayed_change_nothing(store: Store) -> None:
    rows = profiles([(1, T0, {CITY.id: "Paris", SCORE.id: 2.5}), (2, T0, {TAGS.id: ["a", "b"]})])
    twice(store, lambda w: w.upsert_profiles(P, rows, USER_PROPS))
    assert values(store, 1) == {CITY.id: "Paris", SCORE.id: 2.5}
    assert values(store, 2) == {TAGS.id: ["a", "b"]}
    later = profiles([(1, T0 + 5, {SCORE.id: 3.0})])  # a null leaves the stored value
    twice(store, lambda w: w.upsert_profiles(P, later, USER_PROPS))
    assert values(store, 1) == {CITY.id: "Paris", SCORE.id: 3.0}
    assert store.counts(P)["profiles"] == 2


def test_event_upserts_replayed_change_nothing(store: Store) -> None:
    rows = events([("e1", 1, 1.0), ("e2", 1, 2.0), ("e3", 2, 3.0)])
    twice(store, lambda w: w.upsert_events(P, rows, [AMOUNT]))
    assert store.counts(P)["events"] == 3
    assert (store.event_count(P, 1), store.event_count(P, 2)) == (2, 1)
    found = write(store, lambda w: w.existing_event_ids(P, ["e1", "e3", "e9"]))[0]
    assert found == {"e1", "e3"}
    latest = store.latest_events(P, 2, 10, [AMOUNT])
    assert [(e["event_id"], e["values"]) for e in latest] == [("e3", {AMOUNT.id: 3.0})]


def test_identities_replayed_and_a_merge_replayed_change_nothing(store: Store) -> None:
    twice(
        store,
        lambda w: w.insert_identities(P, [(EMAIL, "a@x"), (MOBILE, "1")], [1, 2]),
        lambda w: w.upsert_profiles(
            P, profiles([(1, T0, {CITY.id: "A"}), (2, T0 + 9, {CITY.id: "B"})]), USER_PROPS
        ),
        lambda w: w.upsert_events(P, events([("e1", 1, 1.0), ("e2", 2, 2.0)]), [AMOUNT]),
    )
    twice(  # user 2 turns out to be user 1: the merge, replayed
        store,
        lambda w: w.merge_users(P, {2: 1}, USER_PROPS),
        lambda w: w.insert_identities(P, [(MOBILE, "1")], [1]),
    )
    assert store.find_user(P, (MOBILE, "1")) == 1 and store.find_user(P, (EMAIL, "a@x")) == 1
    assert sorted(store.identities(P, 1)) == [(EMAIL, "a@x"), (MOBILE, "1")]
    assert values(store, 2) is None
    assert values(store, 1) == {CITY.id: "B"}  # the most recently updated value wins
    assert store.event_count(P, 1) == 2
    assert store.counts(P) == {"profiles": 1, "events": 2, "identities": 2}


def test_deletes_and_clears_replayed_change_nothing(store: Store) -> None:
    write(
        store,
        lambda w: w.insert_identities(P, [(EMAIL, "a@x"), (EMAIL, "b@x")], [1, 2]),
        lambda w: w.upsert_profiles(
            P, profiles([(1, T0, {CITY.id: "A", SCORE.id: 1.0}), (2, T0, {})]), USER_PROPS
        ),
        lambda w: w.upsert_events(P, events([("e1", 1, 1.0), ("e2", 2, 2.0)]), [AMOUNT]),
    )
    twice(
        store,
        lambda w: w.delete_users(P, [2]),
        lambda w: w.clear_profile_values(P, [(SCORE, [1])]),
        lambda w: w.clear_event_properties(P, ["e1"]),
    )
    assert values(store, 1) == {CITY.id: "A"} and values(store, 2) is None
    assert store.find_user(P, (EMAIL, "b@x")) is None
    assert store.counts(P) == {"profiles": 1, "events": 1, "identities": 1}
    assert store.latest_events(P, 1, 10, [AMOUNT])[0]["values"] == {}


def test_documents_replayed_change_nothing(store: Store) -> None:
    docs = ['{"_id": "a", "n": 1}', '{"_id": "b", "n": [1, 2]}']
    twice(store, lambda w: w.upsert_documents(P, 3, ["a", "b"], docs))
    assert store.document_count(P, 3) == 2
    assert store.document(P, 3, "b") is not None
    write(store, lambda w: w.upsert_documents(P, 3, ["a"], ['{"_id": "a", "n": 2}']))
    assert '"n":2' in (store.document(P, 3, "a") or "").replace(" ", "")
    assert write(store, lambda w: w.existing_documents(P, 3, ["a", "z"]))[0] == {"a"}


def _import_rows(emails: list[str], cities: list[str]) -> pa.Table:
    n = len(emails)
    return pa.table(
        {
            "_row": pa.array(range(1, n + 1), pa.int64()),
            "_lookup": pa.array(emails, pa.string()),
            "_touched": pa.array([T0] * n, pa.timestamp("us")),
            CITY.column: pa.array(cities, pa.string()),
        }
    )


def test_a_profile_import_replayed_with_its_key_changes_nothing(store: Store) -> None:
    rows = _import_rows(["a@x", "b@x", "a@x"], ["A1", "B", "A2"])

    def batch(w: StoreWriter) -> tuple[int, dict[int, str]]:
        out = w.import_profiles(P, rows, EMAIL, [], [CITY], False, True, 5, "import:1:1")
        return out.imported, out.failures

    first, again = twice(store, batch)
    assert first == again == [(3, {})]
    a, b = store.find_user(P, (EMAIL, "a@x")), store.find_user(P, (EMAIL, "b@x"))
    assert a is not None and b is not None
    assert values(store, a) == {CITY.id: "A2"}  # the batch's last row of a lookup value
    assert values(store, b) == {CITY.id: "B"}
    assert store.counts(P)["profiles"] == 2 and store.counts(P)["identities"] == 2
    assert store.list_members(P, 5, 10, 0) == sorted([a, b])  # on the list once


def test_an_insert_only_import_reports_rows_that_exist(store: Store) -> None:
    write(store, lambda w: w.insert_identities(P, [(EMAIL, "a@x")], [1]))
    rows = _import_rows(["a@x", "c@x", "c@x"], ["A", "C", "C2"])
    (out,) = write(store, lambda w: w.import_profiles(P, rows, EMAIL, [], [CITY], True, True))
    assert out.imported == 1 and sorted(out.failures) == [1, 3]
    assert "already belongs to profile 1" in out.failures[1]
    assert "repeats an earlier row" in out.failures[3]


# ---- reads: exports, members, isolation ---------------------------------------------------------
def test_exports_stream_what_was_received_in_a_period(store: Store) -> None:
    write(
        store,
        lambda w: w.upsert_profiles(P, profiles([(1, T0, {CITY.id: "A"})]), USER_PROPS),
        lambda w: w.upsert_events(P, events([("e1", 1, 1.0), ("e2", 1, 2.5)]), [AMOUNT]),
    )
    start = datetime.fromtimestamp(T0 / 1e6 - 60, UTC).replace(tzinfo=None)
    end = datetime.fromtimestamp(T0 / 1e6 + 60, UTC).replace(tzinfo=None)
    by_name, changed = store.received_counts(P, start, end)
    assert by_name == {"pay": 2} and changed == 1
    table = pa.Table.from_batches(list(store.export_events(P, [AMOUNT], start, end, None, None)))
    got = sorted(zip(table["event_id"].to_pylist(), table[AMOUNT.column].to_pylist(), strict=True))
    assert got == [("e1", "1"), ("e2", "2.5")]
    users = pa.Table.from_batches(list(store.export_profiles(P, [CITY], start, end)))
    assert users["user_id"].to_pylist() == [1] and users[CITY.column].to_pylist() == ['"A"']


def test_segment_member_rows_written_again_keep_one_version(store: Store) -> None:
    write(store, lambda w: w.upsert_profiles(P, profiles([(u, T0, {}) for u in (1, 2, 3)]), []))
    v1 = pa.table({"user_id": [1, 2, 2, 9], "tag_value": ["a", "b", "c", "z"]}, SEGMENT_ROWS)
    v2 = pa.table({"user_id": [2, 3], "tag_value": [None, None]}, SEGMENT_ROWS)
    counts = twice(store, lambda w: w.write_segment_rows(P, 4, 1, v1))
    assert counts == ([2], [2])  # user 9 has no profile; user 2 keeps its last row
    twice(store, lambda w: w.write_segment_rows(P, 4, 2, v2))
    assert store.segment_members(P, 4, 1, 10, 0) == [(1, "a"), (2, "c")]
    assert store.segment_members(P, 4, 2, 10, 0) == [(2, None), (3, None)]
    assert store.segment_changes(P, 4, 2, 10) == ([3], [1])


def test_a_project_sees_only_its_own_rows(store: Store) -> None:
    write(store, lambda w: w.upsert_events(P, events([("e1", 1, 1.0)]), [AMOUNT]))
    with store.writer() as w:
        w.ensure_project(2)
        w.insert_identities(2, [(EMAIL, "a@x")], [1])
    assert store.counts(2) == {"profiles": 0, "events": 0, "identities": 1}
    assert store.counts(P)["events"] == 1 and store.find_user(P, (EMAIL, "a@x")) is None
    assert store.capabilities.isolation in ("tables", "column")
