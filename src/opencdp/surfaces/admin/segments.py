"""Segments and tags: definitions, refreshes, members and their changes, previews, and the
segments a user is in."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import iterate_in_threadpool

from opencdp import params as check
from opencdp.runtime import Runtime
from opencdp.segments.service import TAG, Segment, SegmentKind
from opencdp.surfaces.admin.common import MAX_PAGE, After, IdPath, Limit, P, iso, job_view


class SegmentPreview(BaseModel):
    """A definition to preview: conditions (``qp`` for a cluster, ``tagQp`` for a tag) or
    ``sql``, of a kind (by default one of conditions, or of SQL when ``sql`` is given). Other
    fields are refused, not ignored: a vendor's ``clusterType`` sent here would otherwise
    preview something else than the caller meant."""

    model_config = ConfigDict(extra="forbid")

    kind: SegmentKind | None = None
    qp: dict[str, Any] | None = None
    tagQp: dict[str, Any] | None = None
    sql: str | None = None


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.get("/projects/{ref}/segments")
    async def list_segments(project: P) -> list[dict[str, Any]]:
        segs, _ = await run_in_threadpool(
            rt.segments.search, project.id, None, None, None, 1, 10_000
        )
        return [_segment(s) for s in segs]

    @r.get("/projects/{ref}/segments/{name}")
    async def get_segment(project: P, name: str) -> dict[str, Any]:
        return _segment(await run_in_threadpool(rt.segments.get, project.id, _seg_ref(name)))

    @r.post("/projects/{ref}/segments/{name}/refresh", status_code=202)
    async def refresh_segment(project: P, name: str) -> dict[str, Any]:
        job = await run_in_threadpool(rt.segments.refresh, project.id, _seg_ref(name), "admin")
        return job_view(job)

    @r.get("/projects/{ref}/segments/{name}/members")
    async def segment_members(
        project: P, name: str, limit: Limit = 1000, after: After = 0
    ) -> dict[str, Any]:
        """The members of the current version (with their tag value), by user id, paged."""
        limit = min(limit, MAX_PAGE)
        seg, rows = await run_in_threadpool(
            rt.segments.members, project.id, _seg_ref(name), limit, after
        )
        return {
            "segment": seg.name,
            "version": seg.version,
            "members": [
                {"user_id": u} if not seg.is_tag else {"user_id": u, "tag_value": v}
                for u, v in rows
            ],
            "next_after": rows[-1][0] if len(rows) == limit else None,
        }

    @r.get("/projects/{ref}/segments/{name}/members.csv")
    async def segment_csv(project: P, name: str) -> StreamingResponse:
        """Every member of the current version as CSV (user_id[,tag_value]), streamed."""
        seg = await run_in_threadpool(rt.segments.get, project.id, _seg_ref(name))

        def rows() -> Iterator[bytes]:
            yield b"user_id,tag_value\n" if seg.is_tag else b"user_id\n"
            after = 0
            while True:
                page = rt.store.segment_members(project.id, seg.id, seg.version, 10_000, after)
                if not page:
                    return
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                for u, v in page:
                    w.writerow([u, v] if seg.is_tag else [u])
                yield buf.getvalue().encode()
                after = page[-1][0]

        return StreamingResponse(
            iterate_in_threadpool(rows()),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="segment-{seg.id}.csv"'},
        )

    @r.get("/projects/{ref}/segments/{name}/changes")
    async def segment_changes(project: P, name: str, limit: Limit = 1000) -> dict[str, Any]:
        """Who entered and who left at the last refresh."""
        seg, entered, left = await run_in_threadpool(
            rt.segments.changes, project.id, _seg_ref(name), min(limit, MAX_PAGE)
        )
        return {"segment": seg.name, "version": seg.version, "entered": entered, "left": left}

    @r.post("/projects/{ref}/segments/preview")
    async def preview_segment(project: P, body: SegmentPreview) -> dict[str, Any]:
        """How many users a definition holds now, without saving it."""
        catalog = TAG if body.tagQp is not None else None
        definition = body.tagQp if body.tagQp is not None else body.qp
        kind = body.kind
        if body.sql is not None:
            definition = {"sql": body.sql}
            kind = kind or SegmentKind.CLUSTER_SQL
        size = await run_in_threadpool(rt.segments.preview, project.id, catalog, kind, definition)
        return {"size": size}

    @r.get("/projects/{ref}/users/{user_id}/segments")
    async def user_segments(project: P, user_id: IdPath) -> list[dict[str, Any]]:
        """The segments and tags a user is in now."""
        held = await run_in_threadpool(rt.segments.of_user, project.id, user_id)
        return [
            {"segment": s.name, "id": s.id, "catalog": s.catalog, "tag_value": v} for s, v in held
        ]

    return r


def _seg_ref(name: str) -> int | str:
    """A segment by id (digits: a segment name is never all digits) or by name."""
    return check.ident(name, "name") if name.isascii() and name.isdigit() else name


def _segment(seg: Segment) -> dict[str, Any]:
    return {
        "id": seg.id,
        "name": seg.name,
        "display_name": seg.display_name,
        "catalog": seg.catalog.value,
        "kind": seg.kind.value,
        "progress": seg.progress,
        "message": seg.message,
        "users": seg.users_num,
        "version": seg.version,
        "refreshed_at": iso(seg.refreshed_at) if seg.refreshed_at else None,
        "definition": seg.definition,
    }
