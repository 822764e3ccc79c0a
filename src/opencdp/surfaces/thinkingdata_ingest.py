"""ThinkingData's data receiver, as its server SDKs call it: ``POST /sync_server`` (batches),
``POST /sync_json`` (the older form) and ``POST /data_debug`` (the SDKs' debug mode).

- ``/sync_server``: the body is a JSON array of records, gzip-compressed when the ``compress``
  header says ``gzip`` (``none`` or no header: as is); the ``appid`` header names the
  project; ``TA-Integration-Count``, when given, must be the number of records.
- ``/sync_json``: ``appid`` and ``data`` (a record or an array of them, as JSON text) as form
  fields, or a JSON body ``{"appid", "data"}``.
- ``/data_debug``: the form fields ``appid``, ``data`` (one record), ``dryRun`` (1: check
  only), ``source``, ``deviceId``.

Answers are what the SDKs read: HTTP 200 with ``{"code": 0}`` once every record of the
request is durable (one log frame: all of them, or after a crash none); a refused request is
HTTP 200 with a negative ``code`` (the SDK drops the batch and raises) and ``msg`` naming the
record, the field and the reason; nothing of it is kept. A request the server cannot take now
(storage full or failing) is HTTP 503, an internal error HTTP 500: the SDKs keep such a batch
and send it again. ``/data_debug`` answers ``{"errorLevel": 0}``, or ``2`` with
``errorReasons`` and ``errorProperties``.

Served as a plain ASGI handler, like the Dmartech import: this is an ingest hot path.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any
from urllib.parse import parse_qs

import orjson

from opencdp.catalog.model import Project, Property
from opencdp.catalog.types import PropertyType, loads_exact
from opencdp.errors import CdpError, Code, invalid, unavailable
from opencdp.faults import describe, is_transient
from opencdp.ingest.records import Record
from opencdp.ingest.thinkingdata import RecordError, build_records
from opencdp.runtime import Runtime
from opencdp.surfaces.rawasgi import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
)

SYNC_SERVER, SYNC_JSON, DATA_DEBUG = "/sync_server", "/sync_json", "/data_debug"
PATHS = (SYNC_SERVER, SYNC_JSON, DATA_DEBUG)
SURFACE = "thinkingdata_sdk"
# A decompressed body may be this many times the (compressed) body limit.
INFLATE_FACTOR = 8

# The receiver's codes: core code -> (code, HTTP status). -1: the data is invalid; -2: the
# appid is not known; ours: -5 the server cannot take the data now (the SDKs retry on the
# HTTP status, not on the code).
ERRORS: dict[Code, tuple[int, int]] = {
    Code.AUTH_FAILED: (-2, 200),
    Code.MISSING_CREDENTIAL: (-2, 200),
    Code.INVALID_JSON: (-1, 200),
    Code.INVALID_TYPE: (-1, 200),
    Code.VALIDATION_FAILED: (-1, 200),
    Code.LIMIT_EXCEEDED: (-1, 200),
    Code.MISSING_IDENTITY: (-1, 200),
    Code.EMPTY_IDENTITY: (-1, 200),
    Code.EMPTY_PROPERTIES: (-1, 200),
    Code.MISSING_PARAMETER: (-1, 200),
    Code.CONFLICT: (-1, 200),
    Code.UNAVAILABLE: (-5, 503),
    Code.INTERNAL: (-5, 500),
}
SUCCESS = {"code": 0, "msg": "success"}

log = logging.getLogger(__name__)


class Receiver:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.limits = runtime.settings.limits
        m = runtime.metrics
        self._latency = m.request_seconds.labels(SURFACE)
        codes = {0, *(v[0] for v in ERRORS.values())}
        self._counts = {code: m.requests.labels(SURFACE, str(code)) for code in codes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path = scope["path"]
        debug = path == DATA_DEBUG
        status, payload, code = 200, dict(SUCCESS), 0
        try:
            if scope["method"] != "POST":
                raise CdpError(Code.VALIDATION_FAILED, f"method: {path} takes POST", "method")
            if path == SYNC_SERVER:
                await self._sync_server(scope, receive)
            elif path == SYNC_JSON:
                await self._sync_json(scope, receive)
            else:
                await self._debug(scope, receive)
                payload = {"errorLevel": 0}
        except CdpError as exc:
            code, status = ERRORS.get(exc.code, ERRORS[Code.INTERNAL])
            if scope["method"] != "POST":
                status = 405
            payload = _debug_error(exc) if debug and status == 200 else _error(code, exc.message)
        except ConnectionError:
            return
        except Exception as exc:
            if is_transient(exc):  # e.g. the metadata DB on a full disk: say so
                code, status = ERRORS[Code.UNAVAILABLE]
                payload = _error(code, unavailable(describe(exc)).message)
            else:
                log.exception("ThinkingData receiver request failed")
                code, status = ERRORS[Code.INTERNAL]
                payload = _error(code, "internal error")
        self._counts[code].inc()
        await send_json(send, status, payload)
        self._latency.observe(time.perf_counter() - started)

    # ---- the three paths -----------------------------------------------------------------
    async def _sync_server(self, scope: Scope, receive: Receive) -> None:
        project = self._project(_text(header(scope, b"appid")) or _query(scope, "appid"))
        body = await self._read(scope, receive)
        compress = (_text(header(scope, b"compress")) or "").strip().lower()
        if compress == "gzip" or (not compress and body[:2] == b"\x1f\x8b"):
            body = self._gunzip(body)
        elif compress not in ("", "none"):
            raise invalid("compress", f"must be gzip or none, got {compress!r}")
        docs = _records(_json(body, "body"), "body")
        count = _text(header(scope, b"ta-integration-count"))
        if count is not None and count.strip().isdigit() and int(count) != len(docs):
            raise invalid(
                "TA-Integration-Count", f"says {int(count)} records, the body has {len(docs)}"
            )
        await self._accept(project, docs)

    async def _sync_json(self, scope: Scope, receive: Receive) -> None:
        body = await self._read(scope, receive)
        fields = _form_or_json(body)
        appid = fields.get("appid") or _text(header(scope, b"appid")) or _query(scope, "appid")
        project = self._project(appid if isinstance(appid, str) else None)
        data = fields.get("data")
        if data is None:
            raise CdpError(Code.MISSING_PARAMETER, "data: is required", "data")
        if isinstance(data, str):
            data = _json(data.encode(), "data")
        await self._accept(project, _records(data, "data"))

    async def _debug(self, scope: Scope, receive: Receive) -> None:
        body = await self._read(scope, receive)
        fields = _form_or_json(body)
        appid = fields.get("appid")
        project = self._project(appid if isinstance(appid, str) else None)
        data = fields.get("data")
        if data is None:
            raise CdpError(Code.MISSING_PARAMETER, "data: is required", "data")
        if isinstance(data, str):
            data = _json(data.encode(), "data")
        if not isinstance(data, dict):
            raise invalid("data", "must be one record (a JSON object)")
        dry = str(fields.get("dryRun", "0")).strip()
        if dry not in ("0", "1"):
            raise invalid("dryRun", f"must be 0 or 1, got {dry!r}")
        if dry == "1":  # checked as for real, but nothing is registered or stored
            self._build(project, [data], register=False)
        else:
            await self._accept(project, [data])

    # ---- shared --------------------------------------------------------------------------
    def _project(self, appid: str | None) -> Project:
        if not appid or not appid.strip():
            raise CdpError(Code.MISSING_CREDENTIAL, "appid: is required", "appid")
        project = self.rt.catalog.td_project(appid.strip())
        if project is None:
            raise CdpError(Code.AUTH_FAILED, f"appid: {appid.strip()!r} is not known", "appid")
        return project

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        try:
            return await read_body(scope, receive, self.limits.max_body_bytes)
        except BodyTooLarge:
            raise CdpError(
                Code.LIMIT_EXCEEDED, f"body: larger than {self.limits.max_body_bytes} bytes", "body"
            ) from None

    def _gunzip(self, body: bytes) -> bytes:
        limit = self.limits.max_body_bytes * INFLATE_FACTOR
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise invalid("body", f"not valid gzip data ({exc})") from None
        if len(out) > limit:
            raise CdpError(
                Code.LIMIT_EXCEEDED, f"body: larger than {limit} bytes once decompressed", "body"
            )
        if not inflater.eof:
            raise invalid("body", "the gzip data is cut short")
        return out

    def _build(self, project: Project, docs: list[Any], register: bool = True) -> list[Record]:
        catalog = self.rt.catalog
        catalog.ensure_td_keys(project.id)

        def ensure(table: str, wanted: dict[str, PropertyType]) -> dict[str, Property]:
            if register:
                return catalog.ensure_properties(project.id, table, wanted)
            return {n: Property(0, table, n, ty) for n, ty in wanted.items()}

        return build_records(
            docs,
            project,
            lambda: catalog.schema(project.id),
            self.limits,
            time.time_ns() // 1000,
            ensure,
        )

    async def _accept(self, project: Project, docs: list[Any]) -> None:
        """Every record valid, then all of them durable in one log frame; or none."""
        records = self._build(project, docs)
        if records:
            await self.rt.ingest.submit_batch(records)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _query(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope["query_string"].decode("latin-1")).get(name)
    return values[0] if values else None


def _json(body: bytes, field: str) -> Any:
    try:
        return loads_exact(body)  # (numbers a double cannot hold are refused, never rounded)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise CdpError(Code.INVALID_JSON, f"{field}: not valid JSON ({exc})", field) from None


def _records(doc: Any, field: str) -> list[Any]:
    if isinstance(doc, dict):
        return [doc]
    if not isinstance(doc, list):
        raise CdpError(
            Code.INVALID_JSON, f"{field}: expected a record or an array of records", field
        )
    return doc


def _form_or_json(body: bytes) -> dict[str, Any]:
    """A form body (what the SDKs send), or a JSON object."""
    text = body.lstrip()
    if text[:1] == b"{":
        doc = _json(body, "body")
        if not isinstance(doc, dict):
            raise CdpError(Code.INVALID_JSON, "body: expected a JSON object", "body")
        return doc
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise invalid("body", "not UTF-8") from None
    return {k: v[0] for k, v in form.items()}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "msg": message}


def _debug_error(exc: CdpError) -> dict[str, Any]:
    """The debug endpoint's error: what the SDK prints for its user."""
    reason = exc.reason if isinstance(exc, RecordError) else exc.message
    field = exc.field or ""
    return {
        "errorLevel": 2,
        "errorCount": 1,
        "errorReasons": [reason],
        "errorProperties": [{"propertyName": field, "errorReason": reason}] if field else [],
    }
