"""ThinkingData user clusters and tags (seed 003): ``/open/…``.

``token`` (the project's api token) and ``projectId`` travel in the query string (``projectId``
may also be in the JSON body); bodies are JSON, except the ID uploads, whose body is
``text/csv``. Every answer has the envelope ``{"data", "return_code", "return_message"}``;
errors use negative codes (``-1008`` for a missing parameter) with HTTP 200.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opencdp import params as check
from opencdp.catalog.model import Project
from opencdp.errors import CdpError, Code, invalid, missing
from opencdp.runtime import Runtime
from opencdp.segments.service import (
    Holds,
    Segment,
    SegmentKind,
    Source,
    Spec,
    TagValues,
    TagValuesMismatch,
)
from opencdp.surfaces.uploads import read_body, surface_app, vendor_errors, wrong_method

log = logging.getLogger(__name__)
SURFACE = "thinkingdata"
PREFIXES = ("/open/",)
MAX_CSV = 32 << 20
MAX_PAGE_SIZE = 1000

# The vendor's words for the kinds of segment (``clusterType``), what a segment is
# (``clusterCatalog``) and where a tag's values come from (``subConditionTabType``).
CLUSTER_TYPES: dict[str, SegmentKind] = {
    "cluster_by_static_condition": SegmentKind.CLUSTER_CONDITIONS,
    "cluster_by_dynamic_condition": SegmentKind.CLUSTER_CONDITIONS_DAILY,
    "cluster_by_static_sql": SegmentKind.CLUSTER_SQL,
    "cluster_by_dynamic_sql": SegmentKind.CLUSTER_SQL_DAILY,
    "cluster_by_import": SegmentKind.CLUSTER_IDS,
    "tag_by_static_condition": SegmentKind.TAG_CONDITIONS,
    "tag_by_dynamic_condition": SegmentKind.TAG_CONDITIONS_DAILY,
    "tag_by_static_sql": SegmentKind.TAG_SQL,
    "tag_by_dynamic_sql": SegmentKind.TAG_SQL_DAILY,
    "tag_by_import": SegmentKind.TAG_IDS,
}
TYPE_NAMES = {kind: name for name, kind in CLUSTER_TYPES.items()}
UNSUPPORTED_TYPE = "cluster_by_result"  # made from an analysis report
CATALOGS = {"catalog_cluster": Holds.CLUSTER, "catalog_tag": Holds.TAG}
CATALOG_NAMES = {holds: name for name, holds in CATALOGS.items()}
TAB_TYPES = {
    "tag_condition_default": TagValues.VALUES,
    "tag_condition_by_firstlast_event": TagValues.FIRST_LAST,
    "tag_condition_by_quotation": TagValues.MEASURE,
}
TAB_NAMES = {values: name for name, values in TAB_TYPES.items()}
assert set(TYPE_NAMES) == set(SegmentKind), "a kind of segment has no clusterType"

# core code -> (return_code, return_message)
ERRORS: dict[Code, tuple[int, str]] = {
    Code.MISSING_PARAMETER: (-1008, "参数为空 (missing parameter)"),
    Code.MISSING_CREDENTIAL: (-1008, "参数(token)为空 (missing token)"),
    Code.AUTH_FAILED: (-1001, "token 无效 (invalid token)"),
    Code.TOKEN_EXPIRED: (-1001, "token 无效 (invalid token)"),
    Code.NOT_FOUND: (-1002, "不存在 (not found)"),
    Code.VALIDATION_FAILED: (-1003, "参数错误 (invalid parameter)"),
    Code.INVALID_JSON: (-1003, "参数错误 (invalid parameter)"),
    Code.INVALID_TYPE: (-1003, "参数错误 (invalid parameter)"),
    Code.LIMIT_EXCEEDED: (-1003, "参数错误 (invalid parameter)"),
    Code.CONFLICT: (-1004, "名称已存在 (name already used)"),
    Code.BUSY: (-1005, "正在计算 (busy)"),
    Code.UNSUPPORTED: (-1006, "不支持 (unsupported)"),
    Code.INTERNAL: (-1, "系统错误 (system error)"),
}


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json;charset=utf-8")


def _ok(data: Any = None) -> Response:
    return _json({"data": data, "return_code": 0, "return_message": "success"})


def _error(code: int, message: str) -> Response:
    return _json({"return_code": code, "return_message": message})


envelope = vendor_errors(ERRORS, _error, log)


class ThinkingData:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # ---- request plumbing ----------------------------------------------------------------
    def _project(self, request: Request, body: dict[str, Any] | None = None) -> Project:
        token = request.query_params.get("token")
        if not token:
            raise CdpError(Code.MISSING_CREDENTIAL, "token: is required", "token")
        project = self.rt.catalog.authenticate_token(token)
        if project is None:
            raise CdpError(Code.AUTH_FAILED, "token: not valid", "token")
        given: Any = request.query_params.get("projectId")
        if given is None and body is not None:
            given = body.get("projectId")
        # Required, as the seed says of every endpoint. A token reads its own project only;
        # another project's id is simply not found.
        if given is None or given == "":
            raise missing("projectId")
        if check.ident(given, "projectId") != project.id:
            raise CdpError(
                Code.NOT_FOUND, f"projectId: project {given} does not exist", "projectId"
            )
        return project

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, self.rt.settings.limits.max_body_bytes)
        if not raw.strip():
            return {}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CdpError(Code.INVALID_JSON, "body: not valid JSON", "body") from None
        if not isinstance(body, dict):
            raise CdpError(Code.INVALID_JSON, "body: expected a JSON object", "body")
        return body

    def _ref(self, request: Request, by_name: bool = False) -> int | str:
        if by_name:
            name = request.query_params.get("clusterName", "").strip()
            if not name:
                raise missing("clusterName")
            return name
        raw = request.query_params.get("clusterId")
        if raw is None or raw == "":
            name = request.query_params.get("clusterName", "").strip()
            if name:
                return name
            raise missing("clusterId")
        return check.ident(raw, "clusterId")

    # ---- definitions ---------------------------------------------------------------------
    async def add(self, request: Request) -> Response:
        body = await self._body(request)
        project = self._project(request, body)
        for name in ("clusterName", "displayName"):
            if not body.get(name):
                raise missing(name)
        spec = _spec(body)
        typ = _type_name(spec, body.get("clusterType"), body.get("clusterCatalog"))
        if spec.kind is not None and spec.kind.source is Source.IDS:
            raise invalid(
                "clusterType",
                f"{typ} segments are created by uploading IDs (import-id-cluster-add)",
            )
        _check_catalog(spec, typ, body.get("clusterCatalog"))
        _tab_type(spec, body.get("subConditionTabType"))
        with _tab_words():
            seg = await run_in_threadpool(self.rt.segments.create, project.id, spec, SURFACE)
        return _ok(seg.id)

    async def detail(self, request: Request) -> Response:
        project = self._project(request)
        seg = await run_in_threadpool(self.rt.segments.get, project.id, self._ref(request))
        return _ok(self._detail(seg, project))

    async def update(self, request: Request) -> Response:
        return await self._update(request, by_name=False)

    async def update_by_name(self, request: Request) -> Response:
        return await self._update(request, by_name=True)

    async def _update(self, request: Request, by_name: bool) -> Response:
        body = await self._body(request)
        project = self._project(request, body)
        ref = self._ref(request, by_name)
        spec = _spec(body)
        spec.name = None  # a segment keeps its name
        seg = await run_in_threadpool(self.rt.segments.get, project.id, ref)
        if not seg.is_ids:  # (an ID-upload segment is refused by the core)
            given = body.get("clusterType") or TYPE_NAMES[seg.kind]
            catalog = body.get("clusterCatalog") or CATALOG_NAMES[seg.catalog]
            typ = _type_name(spec, given, catalog)
            if spec.kind is not None and spec.kind.source is Source.IDS:
                raise invalid("clusterType", f"cannot turn a segment into {typ}")
            _check_catalog(spec, typ, catalog)
            _tab_type(spec, body.get("subConditionTabType"))
        with _tab_words():
            await run_in_threadpool(self.rt.segments.update, project.id, seg.id, spec, SURFACE)
        return _ok()

    async def delete(self, request: Request) -> Response:
        project = self._project(request)
        await run_in_threadpool(self.rt.segments.delete, project.id, self._ref(request))
        return _ok()

    async def delete_by_name(self, request: Request) -> Response:
        project = self._project(request)
        ref = self._ref(request, by_name=True)
        await run_in_threadpool(self.rt.segments.delete, project.id, ref)
        return _ok()

    async def list(self, request: Request) -> Response:
        body = await self._body(request)
        project = self._project(request, body)
        pager = check.mapping(body.get("pagerHeader"), "pagerHeader")
        page = check.optional_int(
            pager.get("pageNum"), "pagerHeader.pageNum", 1, 1, check.MAX_INT32
        )
        size = check.optional_int(
            pager.get("pageSize"), "pagerHeader.pageSize", 10, 1, check.MAX_INT32
        )
        size = min(size, MAX_PAGE_SIZE)
        types = body.get("clusterTypes") or None
        if types is not None and (
            not isinstance(types, list) or not all(isinstance(x, str) for x in types)
        ):
            raise invalid("clusterTypes", "expected a list of cluster types")
        catalog = body.get("clusterCatalog") or None
        if catalog not in (None, *CATALOGS):
            raise invalid("clusterCatalog", "expected catalog_cluster or catalog_tag")
        name = body.get("clusterName") or None
        if name is not None and not isinstance(name, str):
            raise invalid("clusterName", "expected text")
        kinds = None if types is None else [CLUSTER_TYPES[x] for x in types if x in CLUSTER_TYPES]
        segs, total = await run_in_threadpool(
            self.rt.segments.search,
            project.id,
            CATALOGS[catalog] if catalog else None,
            name,
            kinds,
            page,
            size,
        )
        return _ok(
            {
                "pagerResult": {"pageNum": page, "pageSize": size, "totalNum": total},
                "userClusters": [self._summary(s, project) for s in segs],
            }
        )

    # ---- refresh -------------------------------------------------------------------------
    async def refresh(self, request: Request) -> Response:
        return await self._refresh(request, by_name=False)

    async def refresh_by_name(self, request: Request) -> Response:
        return await self._refresh(request, by_name=True)

    async def _refresh(self, request: Request, by_name: bool) -> Response:
        project = self._project(request)
        ref = self._ref(request, by_name)
        await run_in_threadpool(self.rt.segments.refresh, project.id, ref, SURFACE)
        return _ok()

    async def progress(self, request: Request) -> Response:
        return await self._progress(request, by_name=False)

    async def progress_by_name(self, request: Request) -> Response:
        return await self._progress(request, by_name=True)

    async def _progress(self, request: Request, by_name: bool) -> Response:
        project = self._project(request)
        seg = await run_in_threadpool(self.rt.segments.get, project.id, self._ref(request, by_name))
        data: dict[str, Any] = {"progress": seg.progress}
        if seg.progress < 0:
            data["errorMsg"] = seg.message
        return _ok(data)

    # ---- ID uploads ----------------------------------------------------------------------
    async def import_add(self, request: Request) -> Response:
        return await self._import(request, None)

    async def import_modify(self, request: Request) -> Response:
        return await self._import(request, "id")

    async def import_modify_by_name(self, request: Request) -> Response:
        return await self._import(request, "name")

    async def _import(self, request: Request, by: str | None) -> Response:
        project = self._project(request)
        q = request.query_params
        ref = None if by is None else self._ref(request, by_name=by == "name")
        if by is None:
            for name in ("displayName", "mainColumnName"):
                if not q.get(name):
                    raise missing(name)
        body = await read_body(request, MAX_CSV)
        if not body.strip():
            raise missing("body")
        catalog = None
        if by is None:
            catalog = CATALOGS.get(q.get("clusterCatalog") or "catalog_cluster")
            if catalog is None:
                raise invalid("clusterCatalog", "expected catalog_cluster or catalog_tag")
        spec = Spec(
            name=q.get("clusterName") if by is None else None,
            display_name=q.get("displayName"),
            catalog=catalog,
            remarks=q.get("remarks"),
            main_column=q.get("mainColumnName"),
        )
        seg, stats = await run_in_threadpool(
            self.rt.segments.upload, project.id, ref, spec, body, q.get("fileName", "")
        )
        return _ok({"clusterId": seg.id, **stats.public()})

    # ---- rendering -----------------------------------------------------------------------
    def _local(self, when: datetime | None, project: Project) -> str:
        if when is None:
            return ""
        return f"{when.replace(tzinfo=UTC).astimezone(project.tz):%Y-%m-%d %H:%M:%S}"

    def _summary(self, seg: Segment, project: Project) -> dict[str, Any]:
        return {
            "clusterCatalog": CATALOG_NAMES[seg.catalog],
            "clusterName": seg.name,
            "clusterType": TYPE_NAMES[seg.kind],
            "displayName": seg.display_name,
            "historyDataStatus": 1 if seg.version >= 2 else 0,
            "id": seg.id,
            "mainColumnName": seg.main_column,
            "progress": seg.progress,
            "projectId": project.id,
            "refreshDelay": 0,
            "refreshTime": self._local(seg.refreshed_at, project),
            "remarks": seg.remarks,
            "selectType": "string",
            "status": 1,
            "uploadFileName": seg.upload_name,
            "userId": 0,
            "userName": "api",
            "usersNum": seg.users_num,
        }

    def _detail(self, seg: Segment, project: Project) -> dict[str, Any]:
        out = self._summary(seg, project)
        if seg.tag_values is not None:
            out["subConditionTabType"] = TAB_NAMES[seg.tag_values]
        if seg.progress < 0:
            out["errorMsg"] = seg.message
        if seg.is_ids:
            out["uploadStats"] = seg.upload_stats
            return out
        definition = seg.definition
        if isinstance(definition, dict) and not seg.is_tag and "events" in definition:
            # The resolved windows of the last refresh, as the vendor reports them.
            definition = dict(definition)
            spans = seg.spans or []
            events = []
            for i, e in enumerate(definition.get("events") or []):
                e = dict(e) if isinstance(e, dict) else e
                if isinstance(e, dict) and i < len(spans) and spans[i]:
                    e.update(spans[i])
                events.append(e)
            definition["events"] = events
        out["userTagDef" if seg.is_tag else "userClusterDef"] = definition
        return out


def _spec(body: dict[str, Any]) -> Spec:
    typ = body.get("clusterType")
    is_sql = isinstance(typ, str) and typ.endswith("_sql")
    definition: Any = (
        body.get("tagQp")
        if body.get("clusterCatalog") == "catalog_tag"
        or (isinstance(typ, str) and typ.startswith("tag_"))
        else body.get("qp")
    )
    if is_sql:
        sql = body.get("sql")
        if sql is None and isinstance(definition, dict):
            sql = definition.get("sql")
        definition = {"sql": sql}
    for name in (
        "clusterName",
        "displayName",
        "clusterCatalog",
        "clusterType",
        "subConditionTabType",
        "remarks",
    ):
        check.text(body.get(name), name)
    return Spec(
        name=body.get("clusterName"),
        display_name=body.get("displayName"),
        definition=definition,
        remarks=body.get("remarks"),
        refresh_at=body.get("refreshAt"),
    )


def _type_name(spec: Spec, typ: str | None, catalog: str | None) -> str:
    """Set the kind of the ``clusterType`` given (by default a static condition one of the
    ``clusterCatalog``), and return its name, or refuse one the core has no kind for."""
    if not typ:
        typ = (
            "tag_by_static_condition" if catalog == "catalog_tag" else "cluster_by_static_condition"
        )
    if typ == UNSUPPORTED_TYPE:
        raise CdpError(
            Code.UNSUPPORTED,
            f"clusterType: unsupported cluster type {typ} (it is made from an analysis "
            "report, which this server does not have)",
            "clusterType",
        )
    spec.kind = CLUSTER_TYPES.get(typ)
    if spec.kind is None:
        raise invalid("clusterType", f"unknown cluster type {typ!r}")
    return typ


def _check_catalog(spec: Spec, typ: str, catalog: str | None) -> None:
    """A ``clusterCatalog`` given must be the one of the ``clusterType``."""
    assert spec.kind is not None
    expected = CATALOG_NAMES[spec.kind.holds]
    if catalog and catalog != expected:
        raise invalid("clusterCatalog", f"{typ} belongs to {expected}, not {catalog!r}")
    spec.catalog = spec.kind.holds


def _tab_type(spec: Spec, given: str | None) -> None:
    """The ``subConditionTabType`` of a condition tag (other kinds ignore it)."""
    assert spec.kind is not None
    if not given or spec.kind.holds is not Holds.TAG or spec.kind.source is not Source.CONDITIONS:
        return
    spec.tag_values = TAB_TYPES.get(given)
    if spec.tag_values is None:
        raise invalid("subConditionTabType", f"unknown tag kind {given!r}")


@contextmanager
def _tab_words() -> Iterator[None]:
    """Tag values that do not match the ``tagQp``, in the vendor's words."""
    try:
        yield
    except TagValuesMismatch as exc:
        raise invalid(
            "subConditionTabType", f"{TAB_NAMES[exc.asked]} does not match the tagQp given"
        ) from None


def _http_error(request: Request, status: int, detail: str) -> Response:
    """Errors before a handler, in the envelope (HTTP 200, as every answer of the API)."""
    if status == 404:
        return _error(-1002, f"不存在 (not found): {request.url.path}")
    if status == 405:
        return _error(-1002, f"不存在 (not found): {wrong_method(request)}")
    if 400 <= status < 500:
        return _error(-1003, f"参数错误 (invalid parameter): {detail}")
    return _error(*ERRORS[Code.INTERNAL])


def build(rt: Runtime) -> Starlette:
    td = ThinkingData(rt)
    routes = [
        ("/open/user-cluster-add", td.add, ["POST"]),
        ("/open/user-cluster-detail", td.detail, ["GET"]),
        ("/open/user-cluster-update", td.update, ["POST"]),
        ("/open/user-cluster-update-by-name", td.update_by_name, ["POST"]),
        ("/open/user-cluster-delete", td.delete, ["POST"]),
        ("/open/delete-user-cluster-by-name", td.delete_by_name, ["POST"]),
        ("/open/user-cluster-list", td.list, ["POST"]),
        ("/open/user-cluster-refresh", td.refresh, ["POST"]),
        ("/open/user-cluster-refresh-by-name", td.refresh_by_name, ["POST"]),
        ("/open/user-cluster-refresh-progress", td.progress, ["GET"]),
        ("/open/user-cluster-refresh-progress-by-name", td.progress_by_name, ["GET"]),
        ("/open/import-id-cluster-add", td.import_add, ["POST"]),
        ("/open/import-id-cluster-modify", td.import_modify, ["POST"]),
        ("/open/import-id-cluster-modify-by-name", td.import_modify_by_name, ["POST"]),
    ]
    return surface_app(
        [Route(path, envelope(h), methods=m) for path, h, m in routes],
        _http_error,
        lambda: _error(*ERRORS[Code.INTERNAL]),
        log,
    )
