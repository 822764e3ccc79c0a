"""Profiles (found by user id or identity, assembled by :mod:`opencdp.profiles`) and the
members of static lists."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from opencdp.profiles import Profile, Profiles
from opencdp.runtime import Runtime
from opencdp.surfaces.admin.common import MAX_PAGE, After, IdPath, IdQuery, Limit, P, iso


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()
    profiles = Profiles(rt.catalog, rt.store, rt.ingest.barrier)

    @r.get("/projects/{ref}/profiles")
    async def profile(
        project: P, key: str | None = None, value: str | None = None, user_id: IdQuery = None
    ) -> dict[str, Any]:
        found = await run_in_threadpool(profiles.find, project.id, key, value, user_id)
        return _view(found)

    @r.get("/projects/{ref}/lists/{list_id}")
    async def list_members(
        project: P, list_id: IdPath, limit: Limit = 1000, after: After = 0
    ) -> dict[str, Any]:
        """Members of a static list (e.g. a Marketo ``listId``), by user id, paged."""
        rt.ingest.barrier()
        limit = min(limit, MAX_PAGE)
        ids = await run_in_threadpool(rt.store.list_members, project.id, list_id, limit, after)
        return {
            "list_id": list_id,
            "user_ids": ids,
            "next_after": ids[-1] if len(ids) == limit else None,
        }

    return r


def _view(p: Profile) -> dict[str, Any]:
    return {
        "user_id": p.user_id,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
        "properties": _values(p.properties),
        "identities": [{"key": k, "value": v} for k, v in p.identities],
        "event_count": p.event_count,
        "latest_events": [
            {
                "event_id": e.event_id,
                "event": e.event,
                "event_time": iso(e.event_time),
                "received_at": iso(e.received_at),
                "properties": _values(e.properties),
            }
            for e in p.latest_events
        ],
    }


def _values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in values.items()}
