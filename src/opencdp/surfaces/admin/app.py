"""The admin API's application: error handling (one error shape for every failure), the
unauthenticated ``/health`` and ``/metrics``, and the resources under ``/admin/v1/``, each
behind the admin token."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from opencdp import __version__
from opencdp.catalog import secrets
from opencdp.errors import CdpError, Code, unavailable
from opencdp.faults import describe
from opencdp.runtime import Runtime
from opencdp.surfaces.admin import (
    collections,
    exports,
    imports,
    profiles,
    projects,
    properties,
    segments,
)
from opencdp.surfaces.admin.common import error_body
from opencdp.surfaces.rawasgi import Scope
from opencdp.surfaces.uploads import OVERHEAD, Guard

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
HTTP_CODES = {
    404: Code.NOT_FOUND.value,
    405: "method_not_allowed",
    413: Code.LIMIT_EXCEEDED.value,
    415: Code.INVALID_TYPE.value,
}
log = logging.getLogger("opencdp.surfaces.admin")


def build(rt: Runtime) -> FastAPI:
    app = FastAPI(
        title="OpenCDP admin API",
        version=__version__,
        docs_url="/admin/docs",
        openapi_url="/admin/openapi.json",
        redoc_url=None,
        redirect_slashes=False,  # an unknown path is not_found, never a redirect
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
        field = ".".join(n or '""' for n in names)  # (a key may be empty: named as such)
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

    for resource in (projects, properties, profiles, exports, segments, collections, imports):
        r.include_router(resource.router(rt))
    return r
