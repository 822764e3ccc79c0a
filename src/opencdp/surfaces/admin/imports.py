"""Bulk imports: an uploaded file queued as an import job, the jobs, their failures and
warnings. The form's words (``into``, ``mode``, ``lookup_field``, ``collection``) are
translated here into an :class:`~opencdp.imports.spec.ImportSpec`."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from opencdp import params as check
from opencdp.errors import invalid
from opencdp.imports.pipeline import submit_import
from opencdp.imports.readers import FORMATS
from opencdp.imports.spec import ImportSpec, Kind, Mode
from opencdp.imports.targets import check_lookup_field
from opencdp.runtime import Runtime
from opencdp.surfaces.admin.common import IdPath, P, job_view
from opencdp.surfaces.uploads import keep_upload, param, read_upload

INTO = {"users": Kind.PROFILES, "events": Kind.EVENTS, "collection": Kind.DOCUMENTS}
MODES = tuple(m.value for m in Mode)

# The import form, read by the handler itself (a streamed upload), described for the schema.
IMPORT_FORM: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "into": {"type": "string", "enum": list(INTO)},
                        "format": {"type": "string", "enum": list(FORMATS)},
                        "mode": {"type": "string", "enum": list(MODES)},
                        "lookup_field": {"type": "string"},
                        "collection": {"type": "string", "description": "with into=collection"},
                        "stop_on_error": {"type": "boolean"},
                        "charset": {"type": "string"},
                    },
                }
            }
        },
    }
}


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.post("/projects/{ref}/imports", status_code=202, openapi_extra=IMPORT_FORM)
    async def start_import(project: P, request: Request) -> dict[str, Any]:
        """Queue a bulk import of an uploaded file (multipart ``file``, and the fields)."""
        async with read_upload(request, rt.files, rt.settings.max_upload_bytes) as upload:
            form = upload.fields
            into = str(param(request, form, "into", "users"))
            fmt = str(param(request, form, "format", "csv")).lower()
            mode = str(param(request, form, "mode", "upsert")).lower()
            if into not in INTO:
                raise invalid("into", f"must be one of {', '.join(INTO)}, got {into!r}")
            if fmt not in FORMATS:
                raise invalid("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
            if mode not in MODES:
                raise invalid("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
            kind = INTO[into]
            lookup = str(param(request, form, "lookup_field", "email"))
            if kind is Kind.PROFILES:
                check_lookup_field(rt.catalog.schema(project.id), lookup, mode == Mode.INSERT)
            collection = None
            if kind is Kind.DOCUMENTS:  # documents keyed by their _id
                collection = check.text(param(request, form, "collection"), "collection", True)
                rt.catalog.collection(project.id, collection)  # checks the name
            stop = check.flag(param(request, form, "stop_on_error"), "stop_on_error")
            charset = check.word(param(request, form, "charset"), "charset")
            stored = await keep_upload(rt.files, project.id, upload.incoming())
        spec = ImportSpec(
            kind,
            format=fmt,
            charset=charset,
            mode=Mode(mode),
            stop_on_error=stop,
            lookup=lookup,
            collection=collection,
        )
        job = await run_in_threadpool(
            submit_import, rt.jobs, rt.catalog, rt.settings.limits, rt.files, project.id, "admin",
            spec,
            stored,
        )  # fmt: skip
        return job_view(job)

    @r.get("/projects/{ref}/imports")
    async def list_imports(project: P) -> list[dict[str, Any]]:
        return [job_view(j) for j in rt.jobs.list(project.id, kind="import")]

    @r.get("/projects/{ref}/imports/{job_id}")
    async def get_import(project: P, job_id: IdPath) -> dict[str, Any]:
        return job_view(rt.jobs.get(project.id, job_id))

    @r.get("/projects/{ref}/imports/{job_id}/{kind}")
    async def import_file(
        project: P, job_id: IdPath, kind: Literal["failures", "warnings"]
    ) -> Response:
        job = rt.jobs.get(project.id, job_id)
        data = rt.files.read_job_file(job.project_id, job.id, kind)
        return Response(data, media_type="text/csv; charset=utf-8")

    return r
