"""Marketo bulk import (seed 001): OAuth client-credentials tokens and lead import jobs.

Served paths: ``/identity/oauth/token``; ``POST /bulk/v1/leads.json``;
``GET /bulk/v1/leads/batch/{batchId}.json`` and its ``failures.json`` / ``warnings.json``.
Every JSON answer has Marketo's envelope (``requestId``, ``success``, ``result`` or ``errors``).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets as pysecrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opencdp import params as check
from opencdp.catalog.model import Project
from opencdp.errors import CdpError, Code, invalid
from opencdp.imports.pipeline import submit_import
from opencdp.imports.spec import ImportSpec, Kind, Membership
from opencdp.imports.targets import check_lookup_field
from opencdp.jobs.service import COMPLETE, FAILED, QUEUED, Job
from opencdp.runtime import Runtime
from opencdp.surfaces.uploads import (
    Upload,
    keep_upload,
    param,
    read_body,
    read_upload,
    surface_app,
    vendor_errors,
    wrong_method,
)

log = logging.getLogger(__name__)
AUDIENCE = "marketo"
SCOPE = "opencdp"
MAX_TOKEN_FORM = 64 << 10  # a token request's form: a few short fields
# Program memberships are documents of this collection, ``programId`` naming the program.
PROGRAM_MEMBERS = "program_members"
# A project has one lead partition, the one every Marketo instance has.
DEFAULT_PARTITION = "Default"

# core code -> (Marketo code, message)
ERRORS: dict[Code, tuple[str, str]] = {
    Code.MISSING_CREDENTIAL: ("600", "Access token not specified"),
    Code.AUTH_FAILED: ("601", "Access token invalid"),
    Code.TOKEN_EXPIRED: ("602", "Access token expired"),
    Code.INVALID_JSON: ("609", "Invalid JSON"),
    Code.NOT_FOUND: ("610", "Requested resource not found"),
    Code.INTERNAL: ("611", "System error"),
    Code.INVALID_TYPE: ("612", "Invalid Content Type"),
    Code.VALIDATION_FAILED: ("1003", "Invalid data"),
    Code.MISSING_PARAMETER: ("1003", "Invalid data"),
    Code.LIMIT_EXCEEDED: ("1003", "Invalid data"),
    Code.BUSY: ("1016", "Too many imports"),
    Code.UNSUPPORTED: ("1003", "Invalid data"),
}
STATUS = {QUEUED: "Queued", "running": "Importing", COMPLETE: "Complete", FAILED: "Failed"}

Handler = Callable[[Request], Awaitable[Response]]


def _request_id() -> str:
    return f"{pysecrets.token_hex(2)}#{int(time.time() * 1000):x}"


def _ok(result: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"requestId": _request_id(), "result": result, "success": True})


def _error(code: str, message: str) -> JSONResponse:
    # Marketo answers API errors with HTTP 200 and success: false; clients read `errors`.
    return JSONResponse(
        {
            "requestId": _request_id(),
            "success": False,
            "errors": [{"code": code, "message": message}],
        }
    )


envelope = vendor_errors(ERRORS, _error, log)


class Marketo:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # ---- identity ------------------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        form: Mapping[str, str] | None = None
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and ctype.startswith("multipart/form-data"):
            async with read_upload(request, self.rt.files, MAX_TOKEN_FORM) as upload:
                form = upload.fields
        elif request.method == "POST" and "form" in ctype:
            raw = await read_body(request, MAX_TOKEN_FORM)
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
            form = dict(pairs)  # (a repeated field: its last value)
        client_id = param(request, form, "client_id", "")
        client_secret = param(request, form, "client_secret", "")
        grant = param(request, form, "grant_type", "client_credentials")
        if grant != "client_credentials":
            return JSONResponse(
                {"error": "unsupported_grant_type", "error_description": f"{grant!r}"}, 400
            )
        project = self.rt.catalog.authenticate_client(str(client_id), str(client_secret))
        if project is None:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Bad client credentials"}, 401
            )
        token, expires = self.rt.catalog.issue_access_token(
            str(client_id), AUDIENCE, self.rt.settings.access_token_ttl
        )
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": max(0, expires - int(time.time())),
                "scope": SCOPE,
            }
        )

    def _project(self, request: Request, form: Mapping[str, str] | None = None) -> Project:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            token = param(request, form, "access_token", "")
        if not token:
            raise CdpError(Code.MISSING_CREDENTIAL, "access_token: missing", "access_token")
        project, _ = self.rt.catalog.check_access_token(token.strip(), AUDIENCE)
        return project

    # ---- leads ---------------------------------------------------------------------------
    @asynccontextmanager
    async def _upload(self, request: Request) -> AsyncIterator[tuple[Project, Upload, str]]:
        if request.headers.get("authorization") or request.query_params.get("access_token"):
            self._project(request)  # refuse before reading the upload
        limit = self.rt.settings.marketo_max_file_bytes
        async with read_upload(request, self.rt.files, limit) as upload:
            form = upload.fields
            project = self._project(request, form)
            fmt = str(param(request, form, "format", "csv")).lower()
            if fmt not in ("csv", "tsv", "ssv"):
                raise invalid("format", f"must be CSV, TSV or SSV, got {fmt!r}")
            check.word(param(request, form, "charset"), "charset")
            yield project, upload, fmt

    async def _submit(
        self, request: Request, project: Project, upload: Upload, spec: ImportSpec
    ) -> Job:
        stored = await keep_upload(self.rt.files, project.id, upload.incoming())
        spec = dataclasses.replace(spec, charset=param(request, upload.fields, "charset"))
        rt = self.rt
        return await run_in_threadpool(
            submit_import, rt.jobs, rt.catalog, rt.settings.limits, rt.files, project.id, AUDIENCE,
            spec, stored,
        )  # fmt: skip

    async def import_leads(self, request: Request) -> Response:
        async with self._upload(request) as (project, upload, fmt):
            form = upload.fields
            partition = param(request, form, "partitionName")
            if partition not in (None, "", DEFAULT_PARTITION):
                # Marketo's answer for a partition the caller cannot write to.
                name = str(partition)[:64]
                return _error(
                    "1008",
                    f"Access denied to partition '{name}': partitionName: this instance has one "
                    f"lead partition, {DEFAULT_PARTITION!r}",
                )
            lookup = str(param(request, form, "lookupField", "email"))
            check_lookup_field(self.rt.catalog.schema(project.id), lookup, False, "lookupField")
            list_id = param(request, form, "listId")
            spec = ImportSpec(
                Kind.PROFILES,
                format=fmt,
                lookup=lookup,
                list_id=check.ident(list_id, "listId") if list_id is not None else None,
            )
            job = await self._submit(request, project, upload, spec)
            return _ok([{"batchId": job.id, "importId": str(job.id), "status": STATUS[job.state]}])

    async def import_objects(self, request: Request) -> Response:
        async with self._upload(request) as (project, upload, fmt):
            api_name = request.path_params["api_name"]
            cid = self.rt.catalog.collection(project.id, api_name)  # (checks the name)
            # Records are matched on the object's declared dedupe fields (kept with the job as they
            # are now); an object declared without any is keyed by the file's first column.
            dedupe = self.rt.catalog.collection_dedupe(cid)
            spec = ImportSpec(
                Kind.DOCUMENTS,
                format=fmt,
                collection=api_name,
                key_fields=tuple(dedupe),
                first_column_key=True,
            )
            job = await self._submit(request, project, upload, spec)
            return _ok([{"batchId": job.id, "status": STATUS[job.state]}])

    async def import_members(self, request: Request) -> Response:
        async with self._upload(request) as (project, upload, fmt):
            form = upload.fields
            program_id = check.ident(request.path_params["program_id"], "programId")
            status = param(request, form, "programMemberStatus")
            if not status:
                raise invalid("programMemberStatus", "is required")
            membership = Membership(PROGRAM_MEMBERS, "programId", program_id, str(status))
            spec = ImportSpec(Kind.PROFILES, format=fmt, lookup="email", membership=membership)
            job = await self._submit(request, project, upload, spec)
            return _ok([{"batchId": job.id, "importId": str(job.id), "status": STATUS[job.state]}])

    def _job(self, request: Request, kind: Callable[[ImportSpec], bool]) -> Job:
        """The batch named in the path, if it is one of this kind (else: not found)."""
        project = self._project(request)
        batch_id = check.ident(request.path_params["batch_id"], "batchId")
        job = self.rt.jobs.get(project.id, batch_id, surface=AUDIENCE)
        if job.kind != "import" or not kind(ImportSpec.from_params(job.params)):
            raise CdpError(Code.NOT_FOUND, f"batchId {batch_id} does not exist", "batchId")
        return job

    def _lead(self, request: Request) -> Job:
        return self._job(request, lambda s: s.kind is Kind.PROFILES and s.membership is None)

    def _object(self, request: Request) -> Job:
        name = request.path_params["api_name"]
        return self._job(request, lambda s: s.kind is Kind.DOCUMENTS and s.collection == name)

    def _member(self, request: Request) -> Job:
        return self._job(
            request,
            lambda s: s.membership is not None and s.membership.collection == PROGRAM_MEMBERS,
        )

    async def lead_status(self, request: Request) -> Response:
        return _ok([_status(self._lead(request))])

    async def object_status(self, request: Request) -> Response:
        job = self._object(request)
        base = _status(job)
        return _ok(
            [
                {
                    "batchId": job.id,
                    "operation": "import",
                    "status": base["status"],
                    "objectApiName": ImportSpec.from_params(job.params).collection,
                    "numOfObjectsProcessed": job.imported,
                    "numOfRowsFailed": job.failed,
                    "numOfRowsWithWarning": job.warnings,
                    "message": base["message"],
                }
            ]
        )

    async def member_status(self, request: Request) -> Response:
        job = self._member(request)
        base = _status(job)
        base["numOfRowsProcessed"] = job.imported
        return _ok([base])

    def _file(self, job: Job, kind: str) -> Response:
        data = self.rt.files.read_job_file(job.project_id, job.id, kind)
        return Response(data, media_type="text/csv; charset=utf-8")


def _status(job: Job) -> dict[str, Any]:
    if job.state == FAILED:
        message = job.message
    elif job.state == COMPLETE:
        message = (
            f"Import succeeded, {job.imported} records imported ({job.imported} members)"
            if job.failed == 0
            else f"Import completed with errors, {job.imported} records imported "
            f"({job.imported} members), {job.failed} failed"
        )
    else:
        message = ""
    return {
        "batchId": job.id,
        "importId": str(job.id),
        "status": STATUS.get(job.state, job.state),
        "numOfLeadsProcessed": job.imported,
        "numOfRowsFailed": job.failed,
        "numOfRowsWithWarning": job.warnings,
        "message": message,
    }


def _files(prefix: str, m: Marketo, find: Callable[[Request], Job]) -> list[Route]:
    """``{prefix}/failures.json`` and ``{prefix}/warnings.json`` of one kind of batch."""

    def handler(kind: str) -> Handler:
        async def serve(request: Request) -> Response:
            return m._file(find(request), kind)

        return envelope(serve)

    return [
        Route(f"{prefix}/{kind}.json", handler(kind), methods=["GET"])
        for kind in ("failures", "warnings")
    ]


def _http_error(request: Request, status: int, detail: str) -> Response:
    """Errors before a handler, in Marketo's envelope (HTTP 200, as all its API errors)."""
    if status == 404:
        return _error("610", f"Requested resource not found: {request.url.path}")
    if status == 405:
        return _error("610", f"Requested resource not found: {wrong_method(request)}")
    if status == 413:
        return _error("1003", f"Invalid data: {detail}")
    if 400 <= status < 500:
        return _error("1003", f"Invalid data: body: {detail}")
    return _error(*ERRORS[Code.INTERNAL])


def build(rt: Runtime) -> Starlette:
    m = Marketo(rt)
    routes = [
        Route("/identity/oauth/token", envelope(m.token), methods=["GET", "POST"]),
        Route("/bulk/v1/leads.json", envelope(m.import_leads), methods=["POST"]),
        Route("/bulk/v1/leads/batch/{batch_id}.json", envelope(m.lead_status), methods=["GET"]),
        *_files("/bulk/v1/leads/batch/{batch_id}", m, m._lead),
        Route(
            "/bulk/v1/customobjects/{api_name}/import.json",
            envelope(m.import_objects),
            methods=["POST"],
        ),
        Route(
            "/bulk/v1/customobjects/{api_name}/import/{batch_id}/status.json",
            envelope(m.object_status),
            methods=["GET"],
        ),
        *_files("/bulk/v1/customobjects/{api_name}/import/{batch_id}", m, m._object),
        Route(
            "/bulk/v1/program/{program_id}/members/import.json",
            envelope(m.import_members),
            methods=["POST"],
        ),
        Route(
            "/bulk/v1/program/members/import/{batch_id}/status.json",
            envelope(m.member_status),
            methods=["GET"],
        ),
        *_files("/bulk/v1/program/members/import/{batch_id}", m, m._member),
    ]
    return surface_app(routes, _http_error, lambda: _error(*ERRORS[Code.INTERNAL]), log)


PREFIXES = ("/identity/", "/bulk/")
