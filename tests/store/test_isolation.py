"""The store contract, isolation: two projects holding the same user ids, identity values,
event ids, documents, lists and segments never see each other's rows, in any read."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.store.base import Budget, Store, StoreWriter
from opencdp.store.tree import EVENTS, LISTS, USERS
from tests.store.kit import (
    AMOUNT,
    CITY,
    EMAIL,
    EMAIL_KEY,
    EVENT_PROPS,
    SECOND,
    T0,
    USER_PROPS,
    Event,
    P,
    Q,
    event_rows,
    import_rows,
    members,
    profiles,
    write,
)

BUDGET = Budget(seconds=60.0, memory_bytes=1 << 30)
START, END = datetime(2000, 1, 1), datetime(2100, 1, 1)


def fill(project: int, city: str, amount: float, n_events: int) -> Any:
    """The same keys in every project, with the project's own values."""

    def steps(w: StoreWriter) -> None:
        w.upsert_profiles(
            project, profiles([(1, T0, {CITY.id: city, EMAIL: f"{city}@x"})]), USER_PROPS
        )
        w.insert_identities(project, [(EMAIL, "same@x")], [1])
        evs = [
            Event(f"e{i}", 1, city, T0 + i * SECOND, values={AMOUNT.id: amount})
            for i in range(n_events)
        ]
        w.upsert_events(project, event_rows(evs), EVENT_PROPS)
        w.upsert_documents(project, 3, ["d"], [f'{{"_id": "d", "city": "{city}"}}'])
        out = w.import_profiles(project, import_rows([1]), None, [], [], False, True, 5)
        assert not out.failures
        w.write_segment_rows(project, 4, 1, members([1], [city]))

    return steps


def everything(store: Store, project: int, tmp_path: Path) -> dict[str, Any]:
    """What every read of the interface answers for ``project``."""

    def streamed(batches: Any) -> list[dict[str, Any]]:
        return [r for b in batches for r in b.to_pylist()]

    everyone = exp.select(exp.column("user_id"), exp.column(CITY.column).as_("tag_value"))
    on_list = exp.select(exp.column("user_id"), exp.null().as_("tag_value")).from_(LISTS)
    event_users = exp.select(exp.column("user_id"), exp.column("event_name").as_("tag_value"))
    dumped = tmp_path / f"{project}.arrow"
    store.dump_table(project, "users", [(CITY.column, "city")], dumped, BUDGET)
    with pa.ipc.open_file(dumped) as f:
        dump = f.read_all().to_pylist()
    with store.writer() as w:
        written = (
            w.lookup_identities(project, [(EMAIL, "same@x")]),
            w.profile_values(project, [1], USER_PROPS),
            w.existing_event_ids(project, ["e0", "e1", "e2"]),
            w.existing_documents(project, 3, ["d"]),
            w.existing_users(project, [1]),
            w.match_property(project, CITY, ["paris", "rome"]),
        )
    return {
        "find_user": store.find_user(project, (EMAIL, "same@x")),
        "profile": store.profile(project, 1, USER_PROPS),
        "identities": store.identities(project, 1),
        "event_count": store.event_count(project, 1),
        "latest_events": store.latest_events(project, 1, 10, EVENT_PROPS),
        "counts": store.counts(project),
        "list_members": store.list_members(project, 5, 10, 0),
        "document": store.document(project, 3, "d"),
        "document_count": store.document_count(project, 3),
        "export_events": streamed(store.export_events(project, [AMOUNT], START, END, None, None)),
        "export_profiles": streamed(store.export_profiles(project, [CITY], START, END, EMAIL_KEY)),
        "received_counts": store.received_counts(project, START, END),
        "export_members": streamed(store.export_members(project, [(4, 1)], [CITY], EMAIL_KEY)),
        "segment_members": store.segment_members(project, 4, 1, 10, 0),
        "segment_changes": store.segment_changes(project, 4, 1, 10),
        "user_segments": store.user_segments(project, 1),
        "count_query": store.count_query(project, everyone.from_(USERS), BUDGET),
        "segment_rows": store.segment_rows(project, everyone.from_(USERS), BUDGET).to_pylist(),
        "list_rows": store.segment_rows(project, on_list, BUDGET).to_pylist(),
        "event_rows": store.segment_rows(project, event_users.from_(EVENTS), BUDGET).num_rows,
        "dump": dump,
        "written": written,
    }


def test_two_projects_never_see_each_others_rows(store: Store, tmp_path: Path) -> None:
    write(store, fill(P, "paris", 1.0, 2), project=P)
    write(store, fill(Q, "rome", 2.0, 3), project=Q)
    p, q = everything(store, P, tmp_path), everything(store, Q, tmp_path)
    assert p["counts"] == {"profiles": 1, "events": 2, "identities": 1}
    assert q["counts"] == {"profiles": 1, "events": 3, "identities": 1}
    assert p["profile"]["values"] == {CITY.id: "paris", EMAIL: "paris@x"}
    assert q["profile"]["values"] == {CITY.id: "rome", EMAIL: "rome@x"}
    assert (p["event_count"], q["event_count"]) == (2, 3)
    assert {e["event"] for e in p["latest_events"]} == {"paris"}
    assert {e["values"][AMOUNT.id] for e in q["latest_events"]} == {2.0}
    assert "paris" in p["document"] and "rome" in q["document"]
    assert [r["event_name"] for r in p["export_events"]] == ["paris", "paris"]
    assert [r[CITY.column] for r in q["export_profiles"]] == ['"rome"']
    assert p["received_counts"] == ({"paris": 2}, 1) and q["received_counts"] == ({"rome": 3}, 1)
    assert [r["login"] for r in q["export_members"]] == ["rome@x"]
    assert p["segment_members"] == [(1, "paris")] and q["user_segments"] == [(4, 1, "rome")]
    assert p["segment_rows"] == [{"user_id": 1, "tag_value": "paris"}]
    assert (p["event_rows"], q["event_rows"]) == (2, 3)
    assert q["dump"] == [{"city": "rome"}]
    assert p["written"][1] == {1: {CITY.id: "paris", EMAIL: "paris@x"}}
    assert p["written"][2] == {"e0", "e1"} and q["written"][2] == {"e0", "e1", "e2"}
    assert p["written"][5] == {"paris": [1]} and q["written"][5] == {"rome": [1]}
    # every other read answers the same for both: the same keys, nothing of the other's
    same = [
        "find_user",
        "identities",
        "list_members",
        "document_count",
        "segment_changes",
        "count_query",
        "list_rows",
    ]
    assert {k: p[k] for k in same} == {k: q[k] for k in same}
    assert p["find_user"] == 1 and p["list_members"] == [1] and p["count_query"] == 1
    # deleting a user, or a segment, in one project leaves the other's
    with store.writer() as w:
        w.clear_event_properties(P, ["e0", "e2"])
        w.clear_profile_values(P, [(CITY, [1])])
        w.delete_users(P, [1])
        w.delete_segment(P, 4)
    again = everything(store, Q, tmp_path)
    assert again == q
    assert store.counts(P) == {"profiles": 0, "events": 0, "identities": 0}
