"""Applying a batch of validated records to the store, in one transaction.

Within a project, records are applied in log order, set-based: identity resolution for the whole
run of records between two deletions, then one profile upsert and one event upsert.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opencdp import crashpoints
from opencdp.catalog.model import Property, Schema
from opencdp.catalog.service import Catalog
from opencdp.identity import matched_users, resolve
from opencdp.ingest.records import (
    ADD,
    APPEND,
    EVENT,
    FIRST,
    OVERWRITE,
    SET_ONCE,
    UNIQ_APPEND,
    UNSET,
    USER_DELETE,
    Record,
)
from opencdp.store.base import EventRows, ProfileRows, StoreWriter

log = logging.getLogger(__name__)


@dataclass
class Applied:
    records: int = 0
    events: int = 0
    profiles: int = 0
    merges: int = 0
    deleted_users: int = 0


def apply_records(
    w: StoreWriter,
    catalog: Catalog,
    records: Sequence[Record],
    positions: Sequence[int] | None = None,
) -> Applied:
    """Apply ``records`` (at the log ``positions``, when they come from the ingest log: a
    replay then leaves out the folds a profile holds already, see
    :meth:`StoreWriter.profile_stamps` and :attr:`ProfileRows.positions`)."""
    stats = Applied(records=len(records))
    by_project: dict[int, list[tuple[Record, int]]] = {}
    for i, r in enumerate(records):
        by_project.setdefault(r.project_id, []).append((r, positions[i] if positions else 0))
    for pid, recs in by_project.items():
        schema = catalog.schema(pid)
        named = {k for r, _ in recs for k in (*r.user_values, *r.event_values)}
        if not named <= schema.by_id.keys():
            # Records another process validated, against properties it created a moment ago:
            # this process's snapshot is looked at again rather than their values dropped.
            catalog.refresh(now_=True)
            schema = catalog.schema(pid)
        w.ensure_project(pid)
        run: list[tuple[Record, int]] = []
        for r, at in recs:
            if r.kind == USER_DELETE:
                _apply_run(w, schema, run, stats)
                run = []
                users = matched_users(w, pid, r.tokens)
                w.delete_users(pid, sorted(users))
                stats.deleted_users += len(users)
            else:
                run.append((r, at))
        _apply_run(w, schema, run, stats)
    return stats


def _props(schema: Schema, ids: set[int]) -> list[Property]:
    out = []
    for pid in sorted(ids):
        prop = schema.by_id.get(pid)
        if prop is None:  # (a property removed from the catalog since the record came)
            log.error("record refers to unknown property id %d; value dropped", pid)
            continue
        out.append(prop)
    return out


def _apply_run(
    w: StoreWriter, schema: Schema, run_at: list[tuple[Record, int]], stats: Applied
) -> None:
    if not run_at:
        return
    pid = schema.project_id
    run = [r for r, _ in run_at]
    user_props = list(schema.user.values())
    # Every record has at least one token (validation requires an identity), and resolution
    # already maps each record to the surviving user of any merge.
    res = resolve(w, pid, [r.tokens for r in run], user_props)
    crashpoints.reached("flush.resolved")
    stats.merges += len(res.merges)
    # A record a profile holds already (a replay, on a store without transactions) changes
    # nothing of the profile again; its event is written again by its id, which is harmless.
    stamps = w.profile_stamps(pid, sorted(set(res.user_ids))) if any(at for _, at in run_at) else {}
    folded = [
        at == 0 or at > stamps.get(uid, 0)
        for (_, at), uid in zip(run_at, res.user_ids, strict=True)
    ]
    stored = _stored_values(
        w, schema, [r for r, f in zip(run, folded, strict=True) if f],
        [u for u, f in zip(res.user_ids, folded, strict=True) if f],
    )  # fmt: skip
    profile_position: dict[int, int] = {}

    # Profiles: later values win, column by column; operations other than a plain set fold
    # onto the value before them (earlier in the run, else stored), in log order.
    profile_at: dict[int, int] = {}
    profile_values: dict[int, dict[int, Any]] = {}
    events: dict[str, int] = {}
    ev = EventRows()
    user_ids: set[int] = set()
    event_ids: set[int] = set()
    overwritten: set[str] = set()
    # A first event whose id is stored already is dropped; so is one whose id came earlier.
    firsts = sorted({r.event_id for r in run if r.kind == EVENT and r.event_mode == FIRST})
    stored_events = w.existing_event_ids(pid, firsts) if firsts else set()
    for (r, at), uid, fold in zip(run_at, res.user_ids, folded, strict=True):
        if fold:
            vals = profile_values.setdefault(uid, {})
            if r.ops:
                _fold(vals, r, stored.get(uid, {}))
            else:
                vals.update(r.user_values)
            user_ids.update(r.user_values)
            profile_at[uid] = max(profile_at.get(uid, 0), r.received_at)
            profile_position[uid] = max(profile_position.get(uid, 0), at)
        if r.kind == EVENT:
            i = events.get(r.event_id)
            if r.event_mode == FIRST and (i is not None or r.event_id in stored_events):
                continue
            event_ids.update(r.event_values)
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
                if r.event_mode == OVERWRITE:
                    ev.values[i] = dict(r.event_values)
                else:
                    ev.values[i].update(r.event_values)
            if r.event_mode == OVERWRITE:
                overwritten.add(r.event_id)

    clears: dict[int, list[int]] = {}
    for uid, vals in profile_values.items():
        for prop_id in [k for k, v in vals.items() if v is CLEARED]:
            del vals[prop_id]
            clears.setdefault(prop_id, []).append(uid)

    uprops = _props(schema, user_ids)
    eprops = _props(schema, event_ids)
    w.ensure_columns(pid, [*uprops, *eprops])
    rows = ProfileRows(
        user_ids=list(profile_values),
        touched_at=[profile_at[u] for u in profile_values],
        values=list(profile_values.values()),
        positions=[profile_position[u] for u in profile_values],
    )
    w.upsert_profiles(pid, rows, uprops)
    if clears:
        w.clear_profile_values(pid, [(schema.by_id[k], us) for k, us in sorted(clears.items())])
    if overwritten:
        w.clear_event_properties(pid, sorted(overwritten))
    w.upsert_events(pid, ev, eprops)
    stats.profiles += len(rows)
    stats.events += len(ev)


class _Cleared:
    """A property an operation emptied (null is otherwise "leave the stored value")."""

    def __repr__(self) -> str:
        return "CLEARED"


CLEARED: Any = _Cleared()


def _stored_values(
    w: StoreWriter, schema: Schema, run: list[Record], uids: list[int]
) -> dict[int, dict[int, Any]]:
    """The stored values that the run's operations fold onto: read once, for the users and
    properties they touch (a clear needs none)."""
    wanted: dict[int, set[int]] = {}
    for r, uid in zip(run, uids, strict=True):
        for prop_id, op in r.ops.items():
            if op != UNSET:
                wanted.setdefault(uid, set()).add(prop_id)
    if not wanted:
        return {}
    props = _props(schema, set().union(*wanted.values()))
    return w.profile_values(schema.project_id, sorted(wanted), props)


def _fold(vals: dict[int, Any], r: Record, stored: dict[int, Any]) -> None:
    """Apply ``r``'s user values onto ``vals`` (the run's values so far for its user)."""
    for prop_id, value in r.user_values.items():
        op = r.ops.get(prop_id)
        if op is None:
            vals[prop_id] = value
            continue
        current = vals[prop_id] if prop_id in vals else stored.get(prop_id)
        if current is CLEARED:
            current = None
        if op == UNSET:
            vals[prop_id] = CLEARED
        elif op == SET_ONCE:
            if current is None:
                vals[prop_id] = value
        elif op == ADD:
            vals[prop_id] = (current if isinstance(current, int | float) else 0) + value
        elif op == APPEND:
            vals[prop_id] = [*(current or []), *value]
        elif op == UNIQ_APPEND:
            items = list(current or [])
            for item in value:
                if item not in items:
                    items.append(item)
            vals[prop_id] = items
