"""Dmartech single record import (seed 000): ``POST /api/v1/api/import?secret=…``.

Served as a plain ASGI handler: this is the hot path, and a framework's routing and validation
cost more than the work itself (design.md, "HTTP").
"""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs

from opencdp.errors import CdpError, Code, unavailable
from opencdp.faults import describe, is_transient
from opencdp.ingest.records import build_record, parse_json
from opencdp.runtime import Runtime
from opencdp.surfaces.rawasgi import BodyTooLarge, Receive, Scope, Send, read_body, send_json

PATHS = ("/api/v1/api/import", "/etl/api/v1/api/import")

# The vendor's return codes: core code -> (errcode, vendor message, HTTP status).
ERRORS: dict[Code, tuple[int, str, int]] = {
    Code.INTERNAL: (10000, "系统错误", 500),
    Code.INVALID_JSON: (10001, "json数据格式化失败", 400),
    Code.INVALID_TYPE: (10002, "type取值不合法", 400),
    Code.MISSING_CREDENTIAL: (10003, "缺少secret参数", 401),
    Code.EMPTY_PROPERTIES: (10004, "属性列表为空", 400),
    Code.AUTH_FAILED: (20000, "身份验证失败", 401),
    Code.MISSING_IDENTITY: (20001, "缺少主键标识的用户属性", 400),
    Code.EMPTY_IDENTITY: (20002, "至少需要一个主键标识的用户属性存在值", 400),
    Code.VALIDATION_FAILED: (20003, "数据校验失败", 400),
    Code.LIMIT_EXCEEDED: (20003, "数据校验失败", 413),
    # Storage full or failing: nothing was stored, the client may retry later.
    Code.UNAVAILABLE: (10000, "系统错误", 503),
}
SUCCESS = {"errcode": 0, "errmsg": "success"}
SURFACE = "dmartech"

log = logging.getLogger(__name__)


class ImportHandler:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.limits = runtime.settings.limits
        m = runtime.metrics
        self._latency = m.request_seconds.labels(SURFACE)
        self._counts = {
            code: m.requests.labels(SURFACE, str(code))
            for code in {0, *(v[0] for v in ERRORS.values())}
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            if scope["method"] != "POST":
                await send_json(send, 405, {"errcode": 10000, "errmsg": "请使用 POST"})
                return
            await self._import(scope, receive)
            status, payload, code = 200, SUCCESS, 0
        except CdpError as exc:
            code, text, status = ERRORS.get(exc.code, ERRORS[Code.INTERNAL])
            payload = {"errcode": code, "errmsg": f"{text}: {exc.message}"}
        except ConnectionError:
            return
        except Exception as exc:
            if is_transient(exc):  # e.g. the metadata DB on a full disk: say so
                code, text, status = ERRORS[Code.UNAVAILABLE]
                payload = {"errcode": code, "errmsg": f"{text}: {unavailable(describe(exc))}"}
            else:
                log.exception("import request failed")
                code, text, status = ERRORS[Code.INTERNAL]
                payload = {"errcode": code, "errmsg": text}
        self._counts[code].inc()
        await send_json(send, status, payload)
        self._latency.observe(time.perf_counter() - started)

    async def _import(self, scope: Scope, receive: Receive) -> None:
        secret = parse_qs(scope["query_string"].decode("latin-1")).get("secret", [""])[0]
        if not secret:
            raise CdpError(Code.MISSING_CREDENTIAL, "secret: missing query parameter", "secret")
        project = self.rt.catalog.authenticate_token(secret)
        if project is None:
            raise CdpError(Code.AUTH_FAILED, "secret: not a valid secret", "secret")
        try:
            body = await read_body(scope, receive, self.limits.max_body_bytes)
        except BodyTooLarge:
            raise CdpError(
                Code.LIMIT_EXCEEDED,
                f"body: larger than {self.limits.max_body_bytes} bytes",
                "body",
            ) from None
        doc = parse_json(body)
        catalog = self.rt.catalog
        record = build_record(
            doc,
            project,
            catalog.schema(project.id),
            self.limits,
            time.time_ns() // 1000,
            lambda table, wanted: catalog.ensure_properties(project.id, table, wanted),
        )
        await self.rt.ingest.submit(record)
