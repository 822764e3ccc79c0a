"""WeChat cloud database import (seed 002): tokens, file upload, import jobs and their status.

Served paths: ``GET /cgi-bin/token``; ``POST /tcb/uploadfile`` and the upload target it points
to (``POST /tcb/upload/{file id}``, the part of cloud storage this API needs);
``POST /tcb/databasemigrateimport``; ``POST /tcb/databasemigratequeryinfo``; and the signed
link to a job's failed records (``GET /tcb/errorfile/{job id}``).

Bodies are JSON whatever the ``Content-Type`` (clients send none). ``env`` is one of the
project's WeChat cloud environment ids (given through the admin API or CLI), or its key.
``collection_name``: ``users`` -> profiles (matched by every identity key), ``events`` ->
events, anything else -> a collection of documents keyed by ``_id``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opencdp import params as check
from opencdp.catalog.model import Project
from opencdp.errors import CdpError, Code, invalid, missing
from opencdp.imports.pipeline import submit_import
from opencdp.imports.spec import IDENTITY, ImportSpec, Kind, Mode
from opencdp.ingest.records import parse_json
from opencdp.jobs.service import COMPLETE, FAILED, QUEUED, Job
from opencdp.runtime import Runtime
from opencdp.surfaces.uploads import (
    keep_upload,
    read_body,
    read_upload,
    surface_app,
    vendor_errors,
    wrong_method,
)

log = logging.getLogger(__name__)
AUDIENCE = "wechat"
TOKEN_TTL = 7200
LINK_TTL = 3600

ERRORS: dict[Code, tuple[int, str]] = {
    Code.MISSING_CREDENTIAL: (41001, "access_token missing"),
    Code.AUTH_FAILED: (40001, "invalid credential"),
    Code.TOKEN_EXPIRED: (42001, "access_token expired"),
    Code.INVALID_JSON: (47001, "data format error"),
    Code.EMPTY_PROPERTIES: (44002, "empty post data"),
    Code.MISSING_PARAMETER: (40101, "missing parameter"),
    Code.MISSING_IDENTITY: (40101, "missing parameter"),
    Code.VALIDATION_FAILED: (40097, "invalid args"),
    Code.NOT_FOUND: (40097, "invalid args"),
    Code.LIMIT_EXCEEDED: (40097, "invalid args"),
    Code.UNSUPPORTED: (40097, "invalid args"),
    Code.INVALID_TYPE: (40097, "invalid args"),
    Code.BUSY: (-1, "system error"),
    Code.INTERNAL: (-1000, "system error"),
}
STATUS = {QUEUED: "waiting", "running": "writing", COMPLETE: "success", FAILED: "fail"}

Handler = Callable[[Request], Awaitable[Response]]


def storage(handler: Handler) -> Handler:
    """Errors of the upload target carry an HTTP error status, as object storage's do:
    clients check the status of this request, not a body."""
    inner = envelope(handler)

    async def wrapped(request: Request) -> Response:
        response = await inner(request)
        if response.status_code == 200:
            body = orjson.loads(bytes(response.body))
            response.status_code = 403 if body.get("errcode") in (40001, 42001) else 400
            response.headers["content-length"] = str(len(response.body))
        return response

    return wrapped


def _reply(**fields: Any) -> JSONResponse:
    return JSONResponse({"errcode": 0, "errmsg": "ok", **fields})


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"errcode": code, "errmsg": message})


envelope = vendor_errors(ERRORS, _error, log)


class WeChat:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def token(self, request: Request) -> Response:
        q = request.query_params
        if q.get("grant_type", "client_credential") != "client_credential":
            raise invalid("grant_type", "must be client_credential")
        appid, secret = q.get("appid", ""), q.get("secret", "")
        if not appid:
            raise missing("appid")
        if not secret:
            raise missing("secret")
        if self.rt.catalog.authenticate_client(appid, secret) is None:
            return JSONResponse({"errcode": 40013, "errmsg": "invalid appid or secret"})
        token, expires = self.rt.catalog.issue_access_token(appid, AUDIENCE, TOKEN_TTL)
        return JSONResponse({"access_token": token, "expires_in": expires - int(time.time())})

    def _project(self, request: Request) -> Project:
        token = request.query_params.get("access_token", "")
        if not token:
            raise CdpError(Code.MISSING_CREDENTIAL, "access_token: missing", "access_token")
        project, _ = self.rt.catalog.check_access_token(token, AUDIENCE)
        return project

    async def _body(self, request: Request, project: Project) -> dict[str, Any]:
        raw = await read_body(request, self.rt.settings.limits.max_body_bytes)
        if not raw.strip():
            raise CdpError(Code.EMPTY_PROPERTIES, "the POST body is empty", "body")
        body = parse_json(raw)
        env = check.text(body.get("env"), "env", required=True)
        if env != project.key and env not in project.wechat_envs:
            raise invalid(
                "env", f"{env[:64]!r} is not a cloud environment of this access token's project"
            )
        return body

    async def upload_link(self, request: Request) -> Response:
        project = self._project(request)
        body = await self._body(request, project)
        path = check.text(body.get("path"), "path", required=True)
        reserved, token = self.rt.files.reserve(project.id, path)
        expires, sign = self.rt.catalog.sign_link(
            "upload", str(project.id), str(reserved.id), ttl=LINK_TTL
        )
        base = str(request.base_url).rstrip("/")
        return _reply(
            url=f"{base}/tcb/upload/{reserved.id}?expires={expires}&sign={sign}",
            token=token,
            authorization=sign,
            file_id=f"cloud://{project.key}/{path}",
            cos_file_id=str(reserved.id),
        )

    async def upload_target(self, request: Request) -> Response:
        file_id = check.ident(request.path_params["file_id"], "file_id")
        async with read_upload(request, self.rt.files, self.rt.settings.max_upload_bytes) as up:
            token = up.fields.get("x-cos-security-token", "")
            reserved = self.rt.files.pending_for_token(token) if token else None
            if reserved is None or reserved.id != file_id:
                # Object storage answers 403 here; clients check the HTTP status of an upload.
                errmsg = "invalid credential: unknown or used upload token"
                return JSONResponse({"errcode": 40001, "errmsg": errmsg}, 403)
            q = request.query_params
            self.rt.catalog.check_link(
                "upload",
                str(reserved.project_id),
                str(reserved.id),
                expires=q.get("expires", ""),
                signature=q.get("sign", ""),
            )
            await keep_upload(
                self.rt.files, reserved.project_id, up.incoming(), reserved.name, reserved
            )
        return Response(status_code=204)

    async def start_import(self, request: Request) -> Response:
        project = self._project(request)
        body = await self._body(request, project)
        for name in ("collection_name", "file_path", "file_type", "conflict_mode"):
            if body.get(name) in (None, ""):
                raise missing(name)
        collection = check.text(body["collection_name"], "collection_name", required=True)
        file_type = check.integer(body["file_type"], "file_type", 1, 2)  # 1 JSON, 2 CSV
        mode = check.integer(body["conflict_mode"], "conflict_mode", 1, 2)  # 1 INSERT, 2 UPSERT
        stop = check.flag(body.get("stop_on_error"), "stop_on_error")
        path = check.text(body["file_path"], "file_path", required=True)
        stored = self.rt.files.find(project.id, path)
        common: dict[str, Any] = {
            "format": "jsonl" if file_type == 1 else "csv",
            "mode": Mode.INSERT if mode == 1 else Mode.UPSERT,
            "stop_on_error": stop,
        }
        if collection == "users":  # profiles, matched by every identity key
            spec = ImportSpec(Kind.PROFILES, lookup=IDENTITY, **common)
        elif collection == "events":
            spec = ImportSpec(Kind.EVENTS, **common)
        else:
            self.rt.catalog.collection(project.id, collection)  # checks the name
            spec = ImportSpec(Kind.DOCUMENTS, collection=collection, **common)
        rt = self.rt
        job = await run_in_threadpool(
            submit_import, rt.jobs, rt.catalog, rt.settings.limits, rt.files, project.id, AUDIENCE,
            spec, stored,
        )  # fmt: skip
        return _reply(job_id=job.id)

    async def query(self, request: Request) -> Response:
        project = self._project(request)
        body = await self._body(request, project)
        job_id = check.ident(body.get("job_id"), "job_id")
        job = self.rt.jobs.get(project.id, job_id, surface=AUDIENCE)
        status = STATUS.get(job.state, job.state)
        if job.state == "running" and job.rows_read == 0:
            status = "reading"
        expires, sign = self.rt.catalog.sign_link(
            "errorfile", str(project.id), str(job.id), ttl=LINK_TTL
        )
        base = str(request.base_url).rstrip("/")
        return _reply(
            status=status,
            record_success=job.imported,
            record_fail=job.failed,
            error_msg=job.message if job.state == FAILED else "",
            file_url=f"{base}/tcb/errorfile/{job.id}?p={project.id}&expires={expires}&sign={sign}",
        )

    async def error_file(self, request: Request) -> Response:
        q = request.query_params
        raw_job, raw_project = str(request.path_params["job_id"]), q.get("p", "")
        self.rt.catalog.check_link(
            "errorfile",
            raw_project,
            raw_job,
            expires=q.get("expires", ""),
            signature=q.get("sign", ""),
        )
        job: Job = self.rt.jobs.get(check.ident(raw_project, "p"), check.ident(raw_job, "job_id"))
        data = self.rt.files.read_job_file(job.project_id, job.id, "failures")
        return Response(data, media_type="text/csv; charset=utf-8")


def _http_error(request: Request, status: int, detail: str) -> Response:
    """Errors before a handler, in WeChat's envelope, with the HTTP status that fits."""
    if status == 404:
        return JSONResponse({"errcode": 40097, "errmsg": "invalid args: no such API"}, 404)
    if status == 405:
        method = "POST" if request.method != "POST" else "GET"
        return JSONResponse(
            {"errcode": 43002, "errmsg": f"require {method} method: {wrong_method(request)}"}, 405
        )
    if 400 <= status < 500:
        return JSONResponse({"errcode": 40097, "errmsg": f"invalid args: {detail}"}, status)
    return _error(*ERRORS[Code.INTERNAL])


def build(rt: Runtime) -> Starlette:
    w = WeChat(rt)
    routes = [
        Route("/cgi-bin/token", envelope(w.token), methods=["GET"]),
        Route("/tcb/uploadfile", envelope(w.upload_link), methods=["POST"]),
        Route("/tcb/upload/{file_id}", storage(w.upload_target), methods=["POST"]),
        Route("/tcb/databasemigrateimport", envelope(w.start_import), methods=["POST"]),
        Route("/tcb/databasemigratequeryinfo", envelope(w.query), methods=["POST"]),
        Route("/tcb/errorfile/{job_id}", envelope(w.error_file), methods=["GET"]),
    ]
    return surface_app(routes, _http_error, lambda: _error(*ERRORS[Code.INTERNAL]), log)


PREFIXES = ("/cgi-bin/", "/tcb/")
