"""GrowingIO raw data export 2.0 (seed 004): ``POST /auth/token``, ``GET /v2/insights/…``.

The token handshake: ``project``, ``ai``, ``tm`` (ms) and ``auth`` = hex(HMAC-SHA256(client
secret, "POST\\n/auth/token\\nproject=…&ai=…&tm=…")) with the ``X-Client-Id`` header; the
fields come as a form body (whatever its Content-Type says), or in the query string. The code
it returns is then sent as ``Authorization`` (bare, or ``Token <code>``) with ``X-Client-Id``.
``downloadLinks`` are signed links to this server, valid for ``expire`` minutes, that serve
HTTP Range requests. The files hold GrowingIO's columns for each data type
(:mod:`opencdp.exports.columns`).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from opencdp import params as check
from opencdp.catalog import secrets
from opencdp.catalog.model import Project
from opencdp.errors import CdpError, Code, invalid, missing
from opencdp.exports.columns import LAYOUT
from opencdp.exports.content import Export, ExportStatus
from opencdp.runtime import Runtime
from opencdp.surfaces.uploads import read_body, surface_app, vendor_errors, wrong_method

log = logging.getLogger(__name__)
AUDIENCE = "growingio"
PREFIXES = ("/auth/token", "/v2/")
TM_TOLERANCE_S = 300  # a signed token request older (or newer) than this is a replay
MAX_EXPIRE_MIN = 7 * 24 * 60
LINK = "export"
# The vendor's data types are the datasets of its layout (exports.columns), under their names;
# its statuses are the core's.
DATA_TYPES = LAYOUT.names
STATUS = {
    ExportStatus.READY: "FINISHED",
    ExportStatus.PENDING: "RUNNING",
    ExportStatus.FAILED: "ERROR",
    ExportStatus.ABSENT: "NOT_EXISTS",
}

ERRORS: dict[Code, tuple[int, str]] = {
    Code.MISSING_CREDENTIAL: (401, "unauthorized"),
    Code.MISSING_PARAMETER: (400, "bad request"),
    Code.AUTH_FAILED: (401, "unauthorized"),
    Code.TOKEN_EXPIRED: (401, "token expired"),
    Code.NOT_FOUND: (404, "not found"),
    Code.VALIDATION_FAILED: (400, "bad request"),
    Code.INVALID_JSON: (400, "bad request"),
    Code.INVALID_TYPE: (400, "bad request"),
    Code.LIMIT_EXCEEDED: (400, "bad request"),
    Code.UNSUPPORTED: (400, "bad request"),
    Code.BUSY: (503, "busy"),
    Code.INTERNAL: (500, "internal error"),
}


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"status": "error", "errorMsg": message}, status)


envelope = vendor_errors(ERRORS, _error, log)


class GrowingIO:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # ---- the token handshake -------------------------------------------------------------
    async def token(self, request: Request) -> Response:
        client_id = request.headers.get("x-client-id", "").strip()
        if not client_id:
            raise CdpError(
                Code.MISSING_CREDENTIAL, "X-Client-Id: header is required", "X-Client-Id"
            )
        fields = await _fields(request)
        for name in ("project", "ai", "tm", "auth"):
            if not fields.get(name):
                raise missing(name)
        found = self.rt.catalog.client_secret(client_id)
        if found is None:
            raise CdpError(Code.AUTH_FAILED, "X-Client-Id: unknown client", "X-Client-Id")
        project, secret = found
        tm = fields["tm"]
        tm_ms = check.integer(tm, "tm", 0)  # milliseconds since the epoch
        message = f"POST\n/auth/token\nproject={fields['project']}&ai={fields['ai']}&tm={tm}"
        expected = secrets.hmac_hex(secret, message)
        if not secrets.same(fields["auth"].lower(), expected):
            raise CdpError(Code.AUTH_FAILED, "auth: signature does not match", "auth")
        if abs(time.time() * 1000 - tm_ms) > TM_TOLERANCE_S * 1000:
            raise CdpError(
                Code.AUTH_FAILED, f"tm: more than {TM_TOLERANCE_S} s from the server's clock", "tm"
            )
        if fields["ai"] != project.key or fields["project"] not in (
            str(project.id),
            project.key,
            project.name,
        ):
            raise CdpError(Code.AUTH_FAILED, "project, ai: not this client's project", "ai")
        code, _ = self.rt.catalog.issue_access_token(
            client_id, AUDIENCE, self.rt.settings.access_token_ttl
        )
        return _json({"status": "success", "code": code})

    def _project(self, request: Request) -> Project:
        client_id = request.headers.get("x-client-id", "").strip()
        given = request.headers.get("authorization", "").strip()
        if not client_id or not given:
            raise CdpError(
                Code.MISSING_CREDENTIAL,
                "X-Client-Id and Authorization: both headers are required",
                "Authorization",
            )
        scheme, _, rest = given.partition(" ")
        code = rest.strip() if scheme.lower() == "token" and rest else given
        project, _ = self.rt.catalog.check_access_token(code, AUDIENCE, client_id)
        return project

    # ---- exports -------------------------------------------------------------------------
    async def by_type(self, request: Request) -> Response:
        return await self._insights(request, request.path_params["data_type"])

    async def all_types(self, request: Request) -> Response:
        return await self._insights(request, None)

    async def _insights(self, request: Request, data_type: str | None) -> Response:
        project = self._project(request)
        p = request.path_params
        export_type, ai, date = p["export_type"], p["ai"], p["export_date"]
        if ai != project.key:
            raise CdpError(Code.NOT_FOUND, f"ai: project {ai[:40]!r} does not exist", "ai")
        if data_type is not None and data_type not in DATA_TYPES:
            raise invalid("data_type", f"unknown data type {data_type[:40]!r}")
        expire = _expire(request)
        check.compact_time(date, "export_date")
        exports = self.rt.exports
        period = exports.period(project, export_type, date)
        body: dict[str, Any] = {
            "status": "",
            "downloadLinks": [] if data_type else {},
            "exportType": export_type,
            "exportDate": period.label,
            "exportVersion": "v2",
            "requestTime": f"{datetime.now(UTC).astimezone(project.tz):%Y-%m-%d %H:%M}",
            "errorMsg": "",
        }
        if data_type:
            body["dataType"] = data_type
        types = [data_type] if data_type else list(DATA_TYPES)
        statuses: list[str] = []
        for dt in types:
            status, export = await run_in_threadpool(exports.status, project, period, dt)
            statuses.append(STATUS[status])
            ready = status is ExportStatus.READY
            links = self._links(request, export, expire) if ready else []
            if data_type:
                body["downloadLinks"] = links
            else:
                body["downloadLinks"][dt] = links
            if status is ExportStatus.FAILED and export is not None:
                body["errorMsg"] = export.error
        body["status"] = _overall(statuses)
        return _json(body)

    def _links(self, request: Request, export: Export | None, expire: int) -> list[str]:
        if export is None:
            return []
        base = str(request.base_url).rstrip("/")
        links = []
        for part in export.parts or []:
            name = part["name"]
            url = self.rt.exports.file_url(export, name, timedelta(minutes=expire))
            if url is not None:  # a link the blob store signed and serves itself
                links.append(url)
                continue
            expires, sign = self.rt.catalog.sign_link(LINK, str(export.id), name, ttl=expire * 60)
            links.append(
                f"{base}/v2/download/{export.id}/{quote(name)}?expires={expires}&sign={sign}"
            )
        return links

    async def download(self, request: Request) -> Response:
        p = request.path_params
        export_id, name = p["export_id"], p["name"]
        q = request.query_params
        self.rt.catalog.check_link(
            LINK, export_id, name, expires=q.get("expires", ""), signature=q.get("sign", "")
        )
        export = await run_in_threadpool(self.rt.exports.by_id, check.ident(export_id, "export_id"))
        media = (
            "application/json"
            if name.endswith(".json")
            else "application/vnd.apache.parquet"
            if name.endswith(".parquet")
            else "application/gzip"
        )
        # The blob as a file, served with its ranges; a store that spools a copy deletes it
        # once the response is sent.
        local = self.rt.exports.local_file(export, name)
        path = await run_in_threadpool(local.__enter__)
        done = BackgroundTask(local.__exit__, None, None, None)
        return FileResponse(path, media_type=media, filename=name, background=done)


async def _fields(request: Request) -> dict[str, str]:
    """The handshake's fields: a form body under any Content-Type, or the query string."""
    body = await read_body(request, 64 << 10)
    fields: dict[str, str] = {}
    text = body.decode("utf-8", "replace").strip()
    if text:
        for key, values in parse_qs(text, keep_blank_values=True).items():
            fields[key] = values[-1].strip()
    for key, value in request.query_params.items():
        fields.setdefault(key, value.strip())
    return fields


def _expire(request: Request) -> int:
    """The links' lifetime in minutes: ``expire`` (``minutes`` and ``minute`` are read too)."""
    q = request.query_params
    name = next((n for n in ("expire", "minutes", "minute") if q.get(n)), "expire")
    return check.optional_int(q.get(name), name, 5, 1, MAX_EXPIRE_MIN)


def _overall(statuses: list[str]) -> str:
    for s in ("ERROR", "RUNNING"):
        if s in statuses:
            return s
    if all(s == "NOT_EXISTS" for s in statuses):
        return "NOT_EXISTS"
    return "FINISHED"


def build(rt: Runtime) -> Starlette:
    g = GrowingIO(rt)
    routes = [
        Route("/auth/token", envelope(g.token), methods=["POST"]),
        Route(
            "/v2/insights/{export_type}/{data_type}/{ai}/{export_date}.json",
            envelope(g.by_type),
            methods=["GET"],
        ),
        Route(
            "/v2/insights/{export_type}/{ai}/{export_date}.json",
            envelope(g.all_types),
            methods=["GET"],
        ),
        Route("/v2/download/{export_id}/{name}", envelope(g.download), methods=["GET", "HEAD"]),
    ]
    return surface_app(routes, _http_error, lambda: _error(*ERRORS[Code.INTERNAL]), log)


def _http_error(request: Request, status: int, detail: str) -> Response:
    """Errors before a handler: the envelope, with the HTTP status as the API answers it."""
    if status == 404:
        return _error(404, f"not found: {request.url.path}")
    if status == 405:
        return _error(405, f"method not allowed: {wrong_method(request)}")
    if 400 <= status < 500:
        return _error(400, f"bad request: {detail}")
    return _error(*ERRORS[Code.INTERNAL])
