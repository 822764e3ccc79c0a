"""The native admin API under ``/admin/v1/``: projects, credentials, schema, profiles, health."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from pydantic.config import JsonDict
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException

from opencdp import __version__
from opencdp import params as check
from opencdp.catalog import secrets
from opencdp.catalog.model import Project, Property, Schema
from opencdp.catalog.types import PropertyType, public
from opencdp.errors import CdpError, Code, invalid, unavailable
from opencdp.exports.content import Export
from opencdp.faults import describe
from opencdp.identity import normalize
from opencdp.imports.pipeline import submit_import
from opencdp.imports.readers import FORMATS
from opencdp.imports.targets import MODES, TARGETS, check_lookup_field
from opencdp.jobs.service import Job
from opencdp.runtime import Runtime
from opencdp.segments.service import Segment
from opencdp.surfaces.rawasgi import Scope
from opencdp.surfaces.uploads import (
    OVERHEAD,
    Guard,
    file_field,
    param,
    read_form,
    store_upload,
)

STATUS: dict[Code, int] = {
    Code.NOT_FOUND: 404,
    Code.CONFLICT: 409,
    Code.AUTH_FAILED: 401,
    Code.MISSING_CREDENTIAL: 401,
    Code.INTERNAL: 500,
    Code.BUSY: 429,
    Code.LIMIT_EXCEEDED: 413,
    Code.INVALID_TYPE: 415,
    Code.MISSING_PARAMETER: 400,
    Code.UNSUPPORTED: 400,
    Code.UNAVAILABLE: 503,
}
LATEST_EVENTS = 20
log = logging.getLogger(__name__)

# Numbers in paths and query strings, bounded as the engines need them (see opencdp.params).
IdPath = Annotated[int, Path(ge=1, le=check.MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=check.MAX_ID)]
After = Annotated[int, Query(ge=0, le=check.MAX_ID, description="page after this user id")]
Limit = Annotated[int, Query(ge=1, le=check.MAX_INT64, description="at most 100000 a page")]
MAX_PAGE = 100_000


HTTP_CODES = {
    404: Code.NOT_FOUND.value,
    405: "method_not_allowed",
    413: Code.LIMIT_EXCEEDED.value,
    415: Code.INVALID_TYPE.value,
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    timezone: str = "Asia/Shanghai"
    strict_schema: bool = False


class ProjectPatch(BaseModel):
    strict_schema: bool | None = None
    export_format: Literal["csv", "jsonl", "parquet"] | None = None
    # The project's WeChat cloud environment ids (replacing those it had).
    wechat_envs: list[str] | None = Field(default=None, max_length=16)
    # The user property exported as GrowingIO's loginUserId ("" for our user id).
    login_user_key: str | None = Field(default=None, max_length=256)


class NewProperty(BaseModel):
    table: Literal["user", "event"]
    name: str = Field(min_length=1, max_length=128)
    type: PropertyType
    is_identity: bool = False


class Fields(BaseModel):
    fields: dict[str, PropertyType] = Field(default_factory=dict)
    # Marketo custom objects: the fields whose values identify a record (in file order).
    dedupe_fields: list[str] | None = Field(default=None, max_length=3)


class TdApp(BaseModel):
    app_id: str | None = Field(default=None, min_length=1, max_length=64)


class IdentityKeys(BaseModel):
    keys: list[str] = Field(min_length=1)


def project_of(ref: str, request: Request) -> Project:
    """The project named in the path by its id, key or name (a name is never all digits, so
    digits are an id, or the rare key of digits only)."""
    runtime: Runtime = request.app.state.runtime
    if ref.isascii() and ref.isdigit():
        check.ident(ref, "ref")
    return runtime.catalog.resolve(ref)


P = Annotated[Project, Depends(project_of)]


def build(rt: Runtime) -> FastAPI:
    app = FastAPI(
        title="OpenCDP admin API",
        version=__version__,
        docs_url="/admin/docs",
        openapi_url="/admin/openapi.json",
        redoc_url=None,
    )
    limits = rt.settings.limits

    def body_limit(scope: Scope) -> int:
        """Uploads may be as large as an uploaded file; other bodies are JSON documents."""
        if scope["method"] == "POST" and str(scope["path"]).endswith("/imports"):
            return rt.settings.max_upload_bytes + OVERHEAD
        return limits.max_body_bytes

    def too_large(limit: int) -> JSONResponse:
        message = f"body: larger than {limit} bytes"
        return JSONResponse(error_body(Code.LIMIT_EXCEEDED.value, message, "body"), 413)

    def internal() -> JSONResponse:
        return JSONResponse(
            error_body(Code.INTERNAL.value, "internal error; see the server log"), 500
        )

    # Unexpected exceptions are logged and answered here (not by a handler of Exception,
    # which Starlette re-raises after answering, dropping the client's connection).
    app.add_middleware(
        Guard, internal=internal, logger=log, body_limit=body_limit, too_large=too_large
    )

    app.state.runtime = rt

    @app.exception_handler(CdpError)
    async def cdp_error(_: Request, exc: CdpError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code.value, exc.message, exc.field),
            status_code=STATUS.get(exc.code, 400),
        )

    @app.exception_handler(OSError)
    @app.exception_handler(sa.exc.OperationalError)
    async def storage_fault(request: Request, exc: Exception) -> JSONResponse:
        """A full disk or a locked metadata DB: the client is told, and retries later."""
        log.warning("%s: %s", request.url.path, describe(exc))
        err = unavailable(describe(exc))
        return JSONResponse(error_body(err.code.value, err.message, err.field), 503)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # No route, wrong method, body too large: the same error shape as every other one.
        status = exc.status_code
        code = HTTP_CODES.get(status, Code.VALIDATION_FAILED.value if status < 500 else "http")
        message, field = str(exc.detail), None
        if status == 405:
            message, field = f"method: {request.method} is not allowed here", "method"
        elif status in (400, 413, 415, 422):
            field = "body"  # the body could not be read as the operation's document
            message = message if message.startswith("body:") else f"body: {message}"
        return JSONResponse(
            error_body(code, message, field), status_code=status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ("body", "query", "path", "header", "cookie")
        names = [str(x) for x in first["loc"] if x not in where and not isinstance(x, int)]
        if first.get("type") == "json_invalid" or not first["loc"] or not names:
            names = [str(first["loc"][0])] if first["loc"] else ["body"]
        field = ".".join(names)
        return JSONResponse(
            error_body(Code.VALIDATION_FAILED.value, f"{field}: {first['msg']}", field),
            status_code=400,
        )

    @app.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        """For load balancers: 200 while the server keeps its promises, 503 while it cannot
        (the reasons are in /admin/v1/health)."""
        status = rt.health.status
        return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(_router(rt), prefix="/admin/v1")
    return app


def _router(rt: Runtime) -> APIRouter:
    admin_digest = secrets.digest(rt.admin_token)

    async def admin_auth(request: Request) -> None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise CdpError(
                Code.MISSING_CREDENTIAL, "Authorization: expected 'Bearer <admin token>'"
            )
        if not secrets.matches(token.strip(), admin_digest):
            raise CdpError(Code.AUTH_FAILED, "Authorization: not the admin token")

    r = APIRouter(dependencies=[Depends(admin_auth)])

    @r.get("/health")
    async def health() -> dict[str, Any]:
        problems = rt.health.problems()
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "store": rt.store.capabilities.name,
            "projects": len(rt.catalog.projects()),
            "ingest_backlog": rt.ingest.pending,
            "dead_letters": rt.ingest.flusher.failures,
            "flush_stalls": rt.ingest.flusher.stalls,
        }

    @r.get("/projects")
    async def list_projects() -> list[dict[str, object]]:
        return [p.public() for p in rt.catalog.projects()]

    @r.post("/projects", status_code=201)
    async def create_project(body: NewProject) -> dict[str, object]:
        project, creds = rt.catalog.create_project(body.name, body.timezone, body.strict_schema)
        return {**project.public(), **_creds(creds)}

    @r.get("/projects/{ref}")
    async def get_project(project: P) -> dict[str, object]:
        return project.public()

    @r.patch("/projects/{ref}")
    async def patch_project(project: P, body: ProjectPatch) -> dict[str, object]:
        if body.strict_schema is not None:
            project = rt.catalog.set_strict(project.id, body.strict_schema)
        if body.export_format is not None:
            project = rt.catalog.set_export_format(project.id, body.export_format)
        if body.wechat_envs is not None:
            project = rt.catalog.set_wechat_envs(project.id, body.wechat_envs)
        if body.login_user_key is not None:
            project = rt.catalog.set_login_user_key(project.id, body.login_user_key)
        return project.public()

    @r.get("/projects/{ref}/credentials")
    async def credentials(project: P) -> dict[str, object]:
        return {
            "project_id": project.id,
            "key": project.key,
            **rt.catalog.credentials_info(project.id),
        }

    @r.post("/projects/{ref}/credentials/rotate")
    async def rotate(project: P) -> dict[str, object]:
        creds = rt.catalog.rotate_credentials(project.id)
        return {**project.public(), **_creds(creds)}

    @r.get("/projects/{ref}/stats")
    async def stats(project: P) -> dict[str, object]:
        pending = rt.ingest.pending
        counts = await run_in_threadpool(rt.store.counts, project.id)
        return {"project_id": project.id, "name": project.name, **counts, "pending": pending}

    @r.get("/projects/{ref}/properties")
    async def list_properties(
        project: P, table: Literal["user", "event"] | None = None
    ) -> list[dict[str, object]]:
        schema = rt.catalog.schema(project.id)
        props = [*schema.user.values(), *schema.event.values()]
        return [p.public() for p in props if table is None or p.table == table]

    @r.post("/projects/{ref}/properties")
    async def add_property(project: P, body: NewProperty, response: Response) -> dict[str, object]:
        prop, new = rt.catalog.add_property(
            project.id, body.table, body.name, body.type.value, body.is_identity
        )
        response.status_code = 201 if new else 200
        return {**prop.public(), "created": new}

    @r.delete("/projects/{ref}/properties/{table}/{name}", status_code=204)
    async def delete_property(project: P, table: str, name: str) -> Response:
        rt.catalog.delete_property(project.id, table, name)
        return Response(status_code=204)

    @r.get("/projects/{ref}/identity-keys")
    async def get_keys(project: P) -> dict[str, object]:
        return {"keys": list(rt.catalog.schema(project.id).identity_keys)}

    @r.put("/projects/{ref}/identity-keys")
    async def set_keys(project: P, body: IdentityKeys) -> dict[str, object]:
        schema = rt.catalog.set_identity_keys(project.id, body.keys)
        return {"keys": list(schema.identity_keys)}

    @r.get("/projects/{ref}/thinkingdata/app-ids")
    async def td_apps(project: P) -> dict[str, object]:
        return {"app_ids": rt.catalog.td_app_ids(project.id)}

    @r.post("/projects/{ref}/thinkingdata/app-ids", status_code=201)
    async def add_td_app(project: P, body: TdApp) -> dict[str, object]:
        app_id = rt.catalog.add_td_app(project.id, body.app_id)
        return {
            "app_id": app_id,
            "app_ids": rt.catalog.td_app_ids(project.id),
            "identity_keys": list(rt.catalog.schema(project.id).identity_keys),
        }

    @r.delete("/projects/{ref}/thinkingdata/app-ids/{app_id}")
    async def remove_td_app(project: P, app_id: str) -> dict[str, object]:
        rt.catalog.remove_td_app(project.id, app_id)
        return {"app_ids": rt.catalog.td_app_ids(project.id)}

    @r.get("/projects/{ref}/profiles")
    async def profile(
        project: P, key: str | None = None, value: str | None = None, user_id: IdQuery = None
    ) -> dict[str, Any]:
        return await run_in_threadpool(_profile, rt, project, key, value, user_id)

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

    # ---- raw-data exports ------------------------------------------------------------
    @r.post("/projects/{ref}/exports")
    async def run_export(project: P, body: ExportRequest) -> list[dict[str, Any]]:
        """Write the exports of one closed period now (all data types, or those given); an
        export already published is left as it is."""
        check.compact_time(body.export_date, "export_date")
        period = rt.exports.period(project, body.export_type, body.export_date)
        types = body.data_types or list(rt.exports.layout.names)
        for dt in types:
            if dt not in rt.exports.layout:
                raise invalid("data_types", f"unknown data type {dt!r}")
        out = []
        for dt in types:
            export = await run_in_threadpool(rt.exports.run, project.id, period, dt)
            out.append(_export(export))
        return out

    @r.post("/projects/{ref}/exports/backfill")
    async def backfill_exports(project: P, body: BackfillRequest) -> dict[str, Any]:
        """Write the missing or failed exports of the closed periods from ``from`` to ``to``
        (project-local dates, ``to`` included)."""
        tz = project.tz
        first = datetime.combine(check.day(body.from_, "from"), datetime.min.time())
        last = datetime.combine(check.day(body.to, "to"), datetime.min.time())
        if last < first:
            raise invalid("to", "comes before from")
        start = first.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        end = (last + timedelta(days=1)).replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
        written = await run_in_threadpool(
            rt.exports.backfill, project, start, end, body.export_type
        )
        return {"written": written}

    # ---- segments and tags -----------------------------------------------------------
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
        return _job(job)

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
        catalog = "catalog_tag" if body.tagQp is not None else body.clusterCatalog
        definition = body.tagQp if body.tagQp is not None else body.qp
        if body.sql is not None:
            definition = {"sql": body.sql}
        size = await run_in_threadpool(
            rt.segments.preview, project.id, catalog, body.clusterType, definition
        )
        return {"size": size}

    @r.get("/projects/{ref}/users/{user_id}/segments")
    async def user_segments(project: P, user_id: IdPath) -> list[dict[str, Any]]:
        """The segments and tags a user is in now."""
        held = await run_in_threadpool(rt.segments.of_user, project.id, user_id)
        return [
            {"segment": s.name, "id": s.id, "catalog": s.catalog, "tag_value": v} for s, v in held
        ]

    @r.get("/projects/{ref}/collections/{name}")
    async def collection_info(project: P, name: str) -> dict[str, Any]:
        cid = rt.catalog.collection(project.id, name, create=False)
        count = await run_in_threadpool(rt.store.document_count, project.id, cid)
        fields = rt.catalog.collection_fields(cid)
        return {
            "name": name,
            "count": count,
            "fields": {k: v.value for k, v in fields.items()},
            "dedupe_fields": rt.catalog.collection_dedupe(cid),
        }

    @r.put("/projects/{ref}/collections/{name}")
    async def declare_collection(project: P, name: str, body: Fields) -> dict[str, Any]:
        """Declare a collection, the types of its fields, and (Marketo custom objects) the
        fields that identify a record, before importing into it."""
        cid = rt.catalog.collection(project.id, name)
        fields = rt.catalog.ensure_collection_fields(cid, body.fields)
        clash = {k: v.value for k, v in body.fields.items() if fields[k] is not v}
        if clash:
            raise CdpError(
                Code.CONFLICT, f"fields already exist with other types: {sorted(clash)}", "fields"
            )
        if body.dedupe_fields is not None:
            rt.catalog.set_collection_dedupe(cid, body.dedupe_fields)
        return await collection_info(project, name)

    @r.get("/projects/{ref}/collections/{name}/{doc_id}")
    async def document(project: P, name: str, doc_id: str) -> Any:
        cid = rt.catalog.collection(project.id, name, create=False)
        doc = await run_in_threadpool(rt.store.document, project.id, cid, doc_id)
        if doc is None:
            raise CdpError(Code.NOT_FOUND, f"no document with _id {doc_id!r}", "doc_id")
        return orjson.loads(doc)

    @r.post("/projects/{ref}/imports", status_code=202, openapi_extra=IMPORT_FORM)
    async def start_import(project: P, request: Request) -> dict[str, Any]:
        """Queue a bulk import of an uploaded file (multipart ``file``, and the fields)."""
        form = await read_form(request, rt.settings.max_upload_bytes)
        target = str(param(request, form, "into", "users"))
        fmt = str(param(request, form, "format", "csv")).lower()
        mode = str(param(request, form, "mode", "upsert")).lower()
        if target not in TARGETS:
            raise invalid("into", f"must be one of {', '.join(TARGETS)}, got {target!r}")
        if fmt not in FORMATS:
            raise invalid("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if mode not in MODES:
            raise invalid("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        lookup = str(param(request, form, "lookup_field", "email"))
        if target == "users":
            check_lookup_field(rt.catalog.schema(project.id), lookup, mode == "insert")
        collection = None
        if target == "collection":
            collection = check.text(param(request, form, "collection"), "collection", True)
            rt.catalog.collection(project.id, collection)  # checks the name
        stop = check.flag(param(request, form, "stop_on_error"), "stop_on_error")
        charset = check.word(param(request, form, "charset"), "charset")
        stored = await store_upload(
            rt.files, project.id, file_field(form), rt.settings.max_upload_bytes
        )
        params = {
            "target": target,
            "format": fmt,
            "mode": mode,
            "lookup_field": lookup,
            "stop_on_error": stop,
            "charset": charset,
        }
        if collection is not None:
            params["collection"] = collection  # documents keyed by their _id
        job = await run_in_threadpool(
            submit_import, rt.jobs, rt.catalog, rt.settings.limits, rt.files, project.id, "admin",
            params, stored,
        )  # fmt: skip
        return _job(job)

    @r.get("/projects/{ref}/imports")
    async def list_imports(project: P) -> list[dict[str, Any]]:
        return [_job(j) for j in rt.jobs.list(project.id) if j.kind == "import"]

    @r.get("/projects/{ref}/imports/{job_id}")
    async def get_import(project: P, job_id: IdPath) -> dict[str, Any]:
        return _job(rt.jobs.get(project.id, job_id))

    @r.get("/projects/{ref}/imports/{job_id}/{kind}")
    async def import_file(
        project: P, job_id: IdPath, kind: Literal["failures", "warnings"]
    ) -> Response:
        job = rt.jobs.get(project.id, job_id)
        data = rt.files.read_job_file(job.project_id, job.id, kind)
        return Response(data, media_type="text/csv; charset=utf-8")

    return r


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
                        "into": {"type": "string", "enum": list(TARGETS)},
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


def _seg_ref(name: str) -> int | str:
    """A segment by id (digits: a segment name is never all digits) or by name."""
    return check.ident(name, "name") if name.isascii() and name.isdigit() else name


def _segment(seg: Segment) -> dict[str, Any]:
    return {
        "id": seg.id,
        "name": seg.name,
        "display_name": seg.display_name,
        "catalog": seg.catalog,
        "type": seg.type,
        "progress": seg.progress,
        "message": seg.message,
        "users": seg.users_num,
        "version": seg.version,
        "refreshed_at": _iso(seg.refreshed_at) if seg.refreshed_at else None,
        "definition": seg.definition,
    }


class SegmentPreview(BaseModel):
    clusterCatalog: str = "catalog_cluster"  # the vendor's names
    clusterType: str | None = None
    qp: dict[str, Any] | None = None
    tagQp: dict[str, Any] | None = None
    sql: str | None = None


def _job(job: Job) -> dict[str, Any]:
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
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at) if job.started_at else None,
        "finished_at": _iso(job.finished_at) if job.finished_at else None,
    }


def _creds(creds: Any) -> dict[str, str]:
    return {
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "api_token": creds.api_token,
    }


def _profile(
    rt: Runtime, project: Project, key: str | None, value: str | None, user_id: int | None
) -> dict[str, Any]:
    schema = rt.catalog.schema(project.id)
    token: tuple[int, str] | None = None
    if user_id is None:
        if not key or value is None:
            raise invalid("key", "give key and value, or user_id")
        prop = schema.identity_keys.get(key)
        if prop is None:
            raise invalid(
                "key", f"{key!r} is not an identity key ({', '.join(schema.identity_keys)})"
            )
        normalized = normalize(key, value)
        if normalized is None:
            raise invalid("value", "is empty")
        token = (prop.id, normalized)
    # Reads see every record acknowledged before the lookup.
    rt.ingest.barrier()
    if token is not None:
        found = rt.store.find_user(project.id, token)
        if found is None:
            raise CdpError(Code.NOT_FOUND, f"no profile with {key} = {value!r}", "value")
        user_id = found
    assert user_id is not None
    row = rt.store.profile(project.id, user_id, list(schema.user.values()))
    if row is None:
        raise CdpError(Code.NOT_FOUND, f"no profile with user_id {user_id}", "user_id")
    events = rt.store.latest_events(project.id, user_id, LATEST_EVENTS, list(schema.event.values()))
    return {
        "user_id": user_id,
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "properties": _named(schema, row["values"]),
        "identities": [
            {"key": schema.by_id[k].name, "value": v}
            for k, v in rt.store.identities(project.id, user_id)
            if k in schema.by_id
        ],
        "event_count": rt.store.event_count(project.id, user_id),
        "latest_events": [
            {
                "event_id": e["event_id"],
                "event": e["event"],
                "event_time": _iso(e["event_time"]),
                "received_at": _iso(e["received_at"]),
                "properties": _named(schema, e["values"]),
            }
            for e in events
        ],
    }


def _named(schema: Schema, values: dict[int, Any]) -> dict[str, Any]:
    out = {}
    for pid, v in values.items():
        prop: Property | None = schema.by_id.get(pid)
        if prop is not None:
            out[prop.name] = _iso(v) if isinstance(v, datetime) else public(prop.type, v)
    return out


def _iso(value: datetime) -> str:
    return value.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
