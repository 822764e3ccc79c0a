"""Applying a batch of validated records to the store, in one transaction.

Within a project, records are applied in log order, set-based: identity resolution for the whole
run of records between two deletions, then one profile upsert and one event upsert.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opencdp.catalog.model import Property, Schema
from opencdp.catalog.service import Catalog
from opencdp.identity import matched_users, resolve
from opencdp.ingest.records import EVENT, USER_DELETE, Record
from opencdp.store.base import EventRows, ProfileRows, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class Applied:
    records: int = 0
    events: int = 0
    profiles: int = 0
    merges: int = 0
    deleted_users: int = 0


def apply_records(w: StoreWriter, catalog: Catalog, records: Sequence[Record]) -> Applied:
    stats = Applied(records=len(records))
    by_project: dict[int, list[Record]] = {}
    for r in records:
        by_project.setdefault(r.project_id, []).append(r)
    for pid, recs in by_project.items():
        schema = catalog.schema(pid)
        w.ensure_project(pid)
        run: list[Record] = []
        for r in recs:
            if r.kind == USER_DELETE:
                _apply_run(w, schema, run, stats)
                run = []
                users = matched_users(w, pid, r.tokens)
                w.delete_users(pid, sorted(users))
                stats.deleted_users += len(users)
            else:
                run.append(r)
        _apply_run(w, schema, run, stats)
    return stats


def _props(schema: Schema, ids: set[int]) -> list[Property]:
    out = []
    for pid in sorted(ids):
        prop = schema.by_id.get(pid)
        if prop is None:  # cannot happen for records validated against this catalog
            log.error("record refers to unknown property id %d; value dropped", pid)
            continue
        out.append(prop)
    return out


def _apply_run(w: StoreWriter, schema: Schema, run: list[Record], stats: Applied) -> None:
    if not run:
        return
    pid = schema.project_id
    user_props = list(schema.user.values())
    # Every record has at least one token (validation requires an identity), and resolution
    # already maps each record to the surviving user of any merge.
    res = resolve(w, pid, [r.tokens for r in run], user_props)
    stats.merges += len(res.merges)

    # Profiles: later values win, column by column.
    profile_at: dict[int, int] = {}
    profile_values: dict[int, dict[int, Any]] = {}
    events: dict[str, int] = {}
    ev = EventRows()
    user_ids: set[int] = set()
    event_ids: set[int] = set()
    for r, uid in zip(run, res.user_ids, strict=True):
        vals = profile_values.setdefault(uid, {})
        vals.update(r.user_values)
        user_ids.update(r.user_values)
        profile_at[uid] = max(profile_at.get(uid, 0), r.received_at)
        if r.kind == EVENT:
            event_ids.update(r.event_values)
            i = events.get(r.event_id)
            if i is None:
                events[r.event_id] = len(ev.event_ids)
                ev.event_ids.append(r.event_id)
                ev.names.append(r.event_name)
                ev.times.append(r.event_time)
                ev.received.append(r.received_at)
                ev.user_ids.append(uid)
                ev.values.append(dict(r.event_values))
            else:  # the same event re-sent within the batch: it updates the first
                ev.names[i], ev.times[i], ev.received[i] = r.event_name, r.event_time, r.received_at
                ev.user_ids[i] = uid
                ev.values[i].update(r.event_values)

    uprops = _props(schema, user_ids)
    eprops = _props(schema, event_ids)
    w.ensure_columns(pid, [*uprops, *eprops])
    rows = ProfileRows(
        user_ids=list(profile_values),
        touched_at=[profile_at[u] for u in profile_values],
        values=list(profile_values.values()),
    )
    w.upsert_profiles(pid, rows, uprops)
    w.upsert_events(pid, ev, eprops)
    stats.profiles += len(rows)
    stats.events += len(ev)
