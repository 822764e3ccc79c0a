"""What the admin API's resources share: the error body, the project named in a path, the
bounded numbers of paths and query strings, and how times and jobs are shown."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request

from opencdp import params as check
from opencdp.catalog.model import Project
from opencdp.jobs.service import Job
from opencdp.runtime import Runtime

# Numbers in paths and query strings, bounded as the engines need them (see opencdp.params).
IdPath = Annotated[int, Path(ge=1, le=check.MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=check.MAX_ID)]
After = Annotated[int, Query(ge=0, le=check.MAX_ID, description="page after this user id")]
Limit = Annotated[int, Query(ge=1, le=check.MAX_INT64, description="at most 100000 a page")]
MAX_PAGE = 100_000


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def project_of(ref: str, request: Request) -> Project:
    """The project named in the path by its id, key or name (a name is never all digits, so
    digits are an id, or the rare key of digits only)."""
    if ref.isascii() and ref.isdigit():
        check.ident(ref, "ref")
    return runtime(request).catalog.resolve(ref)


P = Annotated[Project, Depends(project_of)]


def iso(value: datetime) -> str:
    """A naive UTC time as ISO 8601 with ``Z``.

    >>> iso(datetime(2024, 2, 2, 20, 5, 6))
    '2024-02-02T20:05:06Z'
    """
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def job_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "kind": job.kind,
        "surface": job.surface,
        "state": job.state,
        "params": job.params,
        "rows_read": job.rows_read,
        "imported": job.imported,
        "failed": job.failed,
        "warnings": job.warnings,
        "message": job.message,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at) if job.started_at else None,
        "finished_at": iso(job.finished_at) if job.finished_at else None,
    }
