"""Raw-data exports written on demand, by export jobs: one closed period, or a backfill of
several."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from pydantic.config import JsonDict

from opencdp import params as check
from opencdp.errors import invalid
from opencdp.exports.content import Export
from opencdp.runtime import Runtime
from opencdp.surfaces.admin.common import P

# Formats described in the schema, checked by opencdp.params (whose messages name the form).
DAY: JsonDict = {"pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "description": "YYYY-MM-DD"}
EXPORT_DATE: JsonDict = {
    "pattern": r"^[0-9]{8}([0-9]{2}([0-9]{2})?)?$",
    "description": "yyyyMMdd[HH[mm]]",
}


class BackfillRequest(BaseModel):
    from_: str = Field(alias="from", json_schema_extra=DAY)
    to: str = Field(json_schema_extra=DAY)
    export_type: Literal["hour", "day"] | None = None


class ExportRequest(BaseModel):
    export_type: Literal["hour", "day"]
    export_date: str = Field(json_schema_extra=EXPORT_DATE)
    data_types: list[str] | None = None


def _export(e: Export) -> dict[str, Any]:
    return {
        "id": e.id,
        "export_type": e.export_type,
        "data_type": e.data_type,
        "period_start": e.period_start.isoformat() + "Z",
        "period_end": e.period_end.isoformat() + "Z",
        "state": e.state,
        "error": e.error,
        "rows": e.rows,
        "parts": e.parts or [],
    }


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.post("/projects/{ref}/exports")
    async def run_export(project: P, body: ExportRequest) -> list[dict[str, Any]]:
        """Have the exports of one closed period written now (all data types, or those given)
        by an export job, and answer them once it ended, or as they are after
        ``OPENCDP_EXPORT_RUN_WAIT`` (``running``), with the job's id; an export already
        published is left as it is."""
        check.compact_time(body.export_date, "export_date")
        period = rt.exports.period(project, body.export_type, body.export_date)
        types = body.data_types or list(rt.exports.layout.names)
        for dt in types:
            if dt not in rt.exports.layout:
                raise invalid("data_types", f"unknown data type {dt!r}")
        exports, job = await run_in_threadpool(rt.exports.request, project.id, period, types)
        job_id = None if job is None else job.id
        return [{**_export(e), "job_id": job_id} for e in exports]

    @r.post("/projects/{ref}/exports/backfill")
    async def backfill_exports(project: P, body: BackfillRequest) -> dict[str, Any]:
        """Queue export jobs writing the missing or failed exports of the closed periods from
        ``from`` to ``to`` (project-local dates, ``to`` included); answers how many exports
        are queued."""
        tz = project.tz
        first = datetime.combine(check.day(body.from_, "from"), datetime.min.time())
        last = datetime.combine(check.day(body.to, "to"), datetime.min.time())
        if last < first:
            raise invalid("to", "comes before from")
        start = first.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        end = (last + timedelta(days=1)).replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        queued = await run_in_threadpool(rt.exports.backfill, project, start, end, body.export_type)
        return {"queued": queued}

    return r
