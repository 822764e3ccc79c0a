"""Segments and tags: definitions in the metadata DB, members in the store, refresh as a job.

A segment is a *cluster* (a set of users) or a *tag* (a value per user). It is defined by
conditions (compiled by :mod:`opencdp.segments.compiler`), by SQL (checked by
:mod:`opencdp.segments.sqlcheck`), or by an uploaded list of IDs. Refreshing one is a job: it
flushes what ingest has acknowledged, compiles the definition against the catalog as it is
now, and writes the members as a new version in one store transaction, keeping the previous
version so that entries and exits can be listed. Dynamic segments are refreshed daily by the
scheduler, at a time of day in the project's timezone.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
import sqlglot.expressions as exp

from opencdp.catalog.model import Schema
from opencdp.catalog.service import Catalog
from opencdp.catalog.types import PropertyType, coerce
from opencdp.config import Limits
from opencdp.errors import CdpError, Code, invalid, not_found
from opencdp.identity import normalize
from opencdp.jobs.service import ACTIVE, Job, Jobs, Outcome, Progress
from opencdp.meta import tables as t
from opencdp.segments.compiler import Compiled, Compiler, Span
from opencdp.segments.model import ClusterDef, TagDef, parse_cluster, parse_tag
from opencdp.segments.sandbox import DIALECT as SANDBOX_DIALECT
from opencdp.segments.sandbox import Mode, Sandbox
from opencdp.segments.sqlcheck import SqlSegment, check_sql
from opencdp.store import tree
from opencdp.store.base import SEGMENT_ROWS, Budget, OverBudget, QueryError, Store, StoreWriter

log = logging.getLogger(__name__)

KIND = "segment_refresh"
CLUSTER, TAG = "catalog_cluster", "catalog_tag"
CONDITION_TYPES = {
    "cluster_by_static_condition",
    "cluster_by_dynamic_condition",
    "tag_by_static_condition",
    "tag_by_dynamic_condition",
}
SQL_TYPES = {
    "cluster_by_dynamic_sql",
    "cluster_by_static_sql",
    "tag_by_dynamic_sql",
    "tag_by_static_sql",
}
IMPORT_TYPES = {"cluster_by_import", "tag_by_import"}
UNSUPPORTED_TYPES = {"cluster_by_result"}
TYPES = CONDITION_TYPES | SQL_TYPES | IMPORT_TYPES | UNSUPPORTED_TYPES
TAG_SUBTYPES = {
    "tag_condition_default": "values",
    "tag_condition_by_firstlast_event": "first_last",
    "tag_condition_by_quotation": "quota",
}
NAME = re.compile(r"[A-Za-z0-9_]{1,24}")
HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
USER_ID_COLUMNS = {"user_id", "#user_id"}
DEFAULT_REFRESH_AT = "01:00"
MAX_UPLOAD_ROWS = 1_000_000
DEFAULT_BUDGET = Budget(seconds=120.0, memory_bytes=1 << 30)


@dataclass(frozen=True)
class Segment:
    id: int
    project_id: int
    name: str
    display_name: str
    catalog: str
    type: str
    sub_type: str
    definition: Any
    main_column: str
    upload_name: str
    remarks: str
    refresh_at: str
    progress: int
    message: str
    users_num: int
    version: int
    spans: Any
    upload_stats: Any
    job_id: int | None
    refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Segment:
        return cls(**{c: getattr(row, c) for c in cls.__dataclass_fields__})

    @property
    def is_tag(self) -> bool:
        return self.catalog == TAG

    @property
    def dynamic(self) -> bool:
        return "_dynamic_" in self.type


@dataclass
class Spec:
    """What a caller gives to create or change a segment (absent fields keep their value on
    an update)."""

    name: str | None = None
    display_name: str | None = None
    catalog: str | None = None
    type: str | None = None
    sub_type: str | None = None
    definition: Any = None
    remarks: str | None = None
    refresh_at: str | None = None
    main_column: str | None = None


@dataclass
class UploadStats:
    upload_num: int = 0
    user_num: int = 0
    unmatched_num: int = 0
    tag_value_null_num: int = 0

    def public(self) -> dict[str, int]:
        return {
            "uploadNum": self.upload_num,
            "userNum": self.user_num,
            "unmatchedNum": self.unmatched_num,
            "tagValueNullNum": self.tag_value_null_num,
        }


class Segments:
    def __init__(
        self,
        engine: sa.Engine,
        catalog: Catalog,
        store: Store,
        jobs: Jobs,
        barrier: Callable[[], bool],
        limits: Limits,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        budget: Budget = DEFAULT_BUDGET,
        sandbox: Sandbox | None = None,
    ) -> None:
        self._engine = engine
        self.catalog = catalog
        self.store = store
        self.jobs = jobs
        self.barrier = barrier
        self.limits = limits
        self.clock = clock
        self.budget = budget
        self.sandbox = sandbox or Sandbox(store, Path(tempfile.gettempdir()) / "opencdp-sandbox")
        self._lock = threading.Lock()
        jobs.register(KIND, self.run_refresh)

    # ---- reading -------------------------------------------------------------------------
    def get(self, project_id: int, ref: int | str) -> Segment:
        """A segment of this project by id or by name (another project's is not found)."""
        c = t.segments.c
        query = sa.select(t.segments).where(c.project_id == project_id)
        query = query.where(c.id == ref) if isinstance(ref, int) else query.where(c.name == ref)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise not_found("cluster", ref)
        return Segment.from_row(row)

    def search(
        self,
        project_id: int,
        catalog: str | None = None,
        name_like: str | None = None,
        types: list[str] | None = None,
        page: int = 1,
        size: int = 10,
    ) -> tuple[list[Segment], int]:
        c = t.segments.c
        cond = [c.project_id == project_id]
        if catalog:
            cond.append(c.catalog == catalog)
        if types:
            cond.append(c.type.in_(types))
        if name_like:  # fuzzy: in the name or the display name, literally
            pattern = "%" + _escape_like(name_like) + "%"
            cond.append(
                sa.or_(c.name.like(pattern, escape="\\"), c.display_name.like(pattern, escape="\\"))
            )
        with self._engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(t.segments).where(*cond)
            ).scalar_one()
            rows = conn.execute(
                sa.select(t.segments)
                .where(*cond)
                .order_by(c.id.desc())
                .limit(size)
                .offset((page - 1) * size)
            ).all()
        return [Segment.from_row(r) for r in rows], int(total)

    # ---- defining ------------------------------------------------------------------------
    def create(self, project_id: int, spec: Spec, surface: str) -> Segment:
        typ = self._type(spec.type, spec.catalog)
        if typ in IMPORT_TYPES:
            raise invalid(
                "clusterType",
                f"{typ} segments are created by uploading IDs (import-id-cluster-add)",
            )
        catalog = _catalog(typ, spec.catalog)
        name = _name(spec.name)
        display = _display(spec.display_name if spec.display_name is not None else name)
        sub_type = self._check(project_id, typ, spec.sub_type, spec.definition)
        refresh_at = _refresh_at(spec.refresh_at)
        now = t.utcnow()
        values = {
            "project_id": project_id,
            "name": name,
            "display_name": display,
            "catalog": catalog,
            "type": typ,
            "sub_type": sub_type,
            "definition": spec.definition,
            "main_column": "",
            "upload_name": "",
            "remarks": _remarks(spec.remarks),
            "refresh_at": refresh_at,
            "progress": 0,
            "message": "",
            "users_num": 0,
            "version": 0,
            "created_at": now,
            "updated_at": now,
        }
        seg_id = self._insert(values)
        try:
            self.refresh(project_id, seg_id, surface)
        except CdpError:  # e.g. the job queue is full: not created, so that a retry can be
            with self._engine.begin() as conn:
                conn.execute(sa.delete(t.segments).where(t.segments.c.id == seg_id))
            raise
        return self.get(project_id, seg_id)

    def update(self, project_id: int, ref: int | str, spec: Spec, surface: str) -> Segment:
        seg = self.get(project_id, ref)
        if seg.type in IMPORT_TYPES:
            raise invalid("clusterType", "an ID-upload segment is changed by uploading IDs")
        typ = self._type(spec.type or seg.type, spec.catalog or seg.catalog)
        if typ in IMPORT_TYPES:
            raise invalid("clusterType", f"cannot turn a segment into {typ}")
        catalog = _catalog(typ, spec.catalog or seg.catalog)
        if catalog != seg.catalog:
            raise invalid("clusterCatalog", "a cluster cannot become a tag, nor a tag a cluster")
        definition = spec.definition if spec.definition is not None else seg.definition
        sub_type = self._check(project_id, typ, spec.sub_type or seg.sub_type, definition)
        values: dict[str, Any] = {
            "type": typ,
            "sub_type": sub_type,
            "definition": definition,
            "updated_at": t.utcnow(),
        }
        if spec.display_name is not None:
            values["display_name"] = _display(spec.display_name)
        if spec.remarks is not None:
            values["remarks"] = _remarks(spec.remarks)
        if spec.refresh_at is not None:
            values["refresh_at"] = _refresh_at(spec.refresh_at)
        self._set(seg.id, **values)
        try:
            self.refresh(project_id, seg.id, surface)
        except CdpError as exc:
            # A refresh already queued reads the new definition when it starts; one running
            # finishes with the old, and the next refresh uses the new.
            if exc.code is not Code.BUSY:
                raise
        return self.get(project_id, seg.id)

    def delete(self, project_id: int, ref: int | str) -> None:
        """Delete the segment and its members. A refresh under way finds it gone and leaves
        nothing behind."""
        seg = self.get(project_id, ref)
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t.segments).where(t.segments.c.id == seg.id))
        with self.store.writer() as w:
            w.delete_segment(project_id, seg.id)

    def _insert(self, values: dict[str, Any]) -> int:
        try:
            with self._engine.begin() as conn:
                key = conn.execute(sa.insert(t.segments).values(**values)).inserted_primary_key
        except sa.exc.IntegrityError:
            raise CdpError(
                Code.CONFLICT, f"clusterName: {values['name']!r} is already used", "clusterName"
            ) from None
        assert key is not None
        return int(key[0])

    def _set(self, segment_id: int, **values: Any) -> int:
        with self._engine.begin() as conn:
            res = conn.execute(
                sa.update(t.segments).where(t.segments.c.id == segment_id).values(**values)
            )
        return int(res.rowcount)

    def _type(self, typ: str | None, catalog: str | None) -> str:
        if not typ:
            typ = "tag_by_static_condition" if catalog == TAG else "cluster_by_static_condition"
        if typ in UNSUPPORTED_TYPES:
            raise CdpError(
                Code.UNSUPPORTED,
                f"clusterType: unsupported cluster type {typ} (it is made from an analysis "
                "report, which this server does not have)",
                "clusterType",
            )
        if typ not in TYPES:
            raise invalid("clusterType", f"unknown cluster type {typ!r}")
        return typ

    def _check(self, project_id: int, typ: str, sub_type: str | None, definition: Any) -> str:
        """Validate a definition now (so that a bad one is refused, not accepted and failed at
        refresh); returns the tag sub-type."""
        if typ in SQL_TYPES:
            self._ensure_columns(project_id)
            self._run_sql(project_id, self._sql(typ, definition), "check")
            return ""
        if typ.startswith("tag_"):
            tag = parse_tag(definition, "tagQp")
            kind = "values" if tag.values else "first_last" if tag.first_last else "quota"
            if sub_type and TAG_SUBTYPES.get(sub_type) is None:
                raise invalid("subConditionTabType", f"unknown tag kind {sub_type!r}")
            if sub_type and TAG_SUBTYPES[sub_type] != kind:
                raise invalid("subConditionTabType", f"{sub_type} does not match the tagQp given")
            self._compile(project_id, tag, self.clock())
            return next(k for k, v in TAG_SUBTYPES.items() if v == kind)
        self._compile(project_id, parse_cluster(definition, "qp"), self.clock())
        return ""

    # ---- compiling and running -----------------------------------------------------------
    def _compile(self, project_id: int, d: ClusterDef | TagDef, now: datetime) -> Compiled:
        """Compile a definition, and refuse what the store cannot run: an operation its
        dialect lacks, a regular expression its engine cannot compile."""
        project = self.catalog.project(project_id)
        compiler = Compiler(self.catalog.schema(project_id), project.tz, now)
        compiled = compiler.tag(d) if isinstance(d, TagDef) else compiler.cluster(d)
        compiled.check(self.store.capabilities.sql, self.store.pattern_error)
        return compiled

    def _sql(self, typ: str, definition: Any) -> SqlSegment:
        columns = 2 if typ.startswith("tag_") else 1
        return check_sql(_sql_text(definition), columns, SANDBOX_DIALECT)

    def _definition(
        self, project_id: int, typ: str, definition: Any, now: datetime
    ) -> tuple[SqlSegment | exp.Select, list[Span | None]]:
        """A definition as it reads against the catalog now: a checked SQL segment (run in
        the sandbox), or a compiled neutral tree (run by the store) with its time windows."""
        if typ in SQL_TYPES:
            return self._sql(typ, definition), []
        d: ClusterDef | TagDef = (
            parse_tag(definition, "tagQp")
            if typ.startswith("tag_")
            else parse_cluster(definition, "qp")
        )
        compiled = self._compile(project_id, d, now)
        return compiled.query, compiled.spans

    def _run_sql(self, project_id: int, seg: SqlSegment, mode: Mode) -> pa.Table | int:
        """Run a user's SQL segment in the sandbox, under the segment budget."""
        schema = self.catalog.schema(project_id)
        with self._budgeted("sql", schema):
            return self.sandbox.run(project_id, schema, seg, mode, self.budget)

    def _members(self, project_id: int, query: SqlSegment | exp.Select) -> pa.Table:
        if isinstance(query, SqlSegment):
            rows = self._run_sql(project_id, query, "members")
            assert isinstance(rows, pa.Table)
            return rows
        with self._budgeted("qp", self.catalog.schema(project_id)):
            return self.store.segment_rows(project_id, query, self.budget)

    @contextmanager
    def _budgeted(self, field: str, schema: Schema) -> Iterator[None]:
        """A segment query's failures in the core's words: the query's own fault names
        ``field`` (and properties by their names, not their store columns); going over the
        budget names the budget and its setting."""
        try:
            yield
        except QueryError as exc:
            raise invalid(field, schema.named(str(exc))) from None
        except OverBudget as exc:
            if exc.resource == "time":
                what = f"time budget of {self.budget.seconds:g} s (OPENCDP_SEGMENT_TIMEOUT)"
            else:
                mb = self.budget.memory_bytes / (1 << 20)
                what = f"memory budget of {mb:g} MiB (OPENCDP_SEGMENT_MEMORY_BYTES)"
            raise CdpError(
                Code.LIMIT_EXCEEDED, f"the segment query went over its {what}", "budget"
            ) from None

    def query(
        self, seg: Segment, now: datetime
    ) -> tuple[SqlSegment | exp.Select, list[Span | None]]:
        """The members query of a segment as its definition reads against the catalog now."""
        return self._definition(seg.project_id, seg.type, seg.definition, now)

    def preview(self, project_id: int, catalog: str, typ: str | None, definition: Any) -> int:
        """How many users a definition would hold now, without saving it."""
        typ = self._type(typ, catalog)
        if typ in IMPORT_TYPES:
            raise invalid("clusterType", "an ID-upload segment has no definition to preview")
        self.barrier()
        query, _ = self._definition(project_id, typ, definition, self.clock())
        self._ensure_columns(project_id)
        if isinstance(query, SqlSegment):
            count = self._run_sql(project_id, query, "count")
            assert isinstance(count, int)
            return count
        with self._budgeted("qp", self.catalog.schema(project_id)):
            return self.store.count_query(project_id, query, self.budget)

    # ---- refreshing ----------------------------------------------------------------------
    def refresh(self, project_id: int, ref: int | str, surface: str) -> Job:
        """Queue a refresh; one already queued or running for the segment is reported."""
        with self._lock:
            seg = self.get(project_id, ref)
            if seg.type in IMPORT_TYPES:
                raise invalid(
                    "clusterType", "an ID-upload segment is refreshed by uploading its IDs again"
                )
            if seg.job_id is not None and seg.progress not in (100, -1):
                # (A job that published its result is done, even if its worker has not yet
                # recorded so.)
                job = self.jobs.get(project_id, seg.job_id)
                if job.state in ACTIVE:
                    raise CdpError(
                        Code.BUSY,
                        f"cluster {seg.name!r} is already being refreshed (progress "
                        f"{seg.progress}); wait for it to finish",
                        "clusterId",
                    )
            job = self.jobs.submit(project_id, KIND, surface, {"segment_id": seg.id})
            self._set(seg.id, job_id=job.id, progress=0, message="")
            return job

    def run_refresh(self, job: Job, progress: Progress) -> Outcome:
        """The refresh job: flush, compile, compute the members (under the segment budget,
        without holding up writers), write them as a new version, publish it."""
        try:
            seg = self.get(job.project_id, int(job.params["segment_id"]))
        except CdpError:
            return Outcome(False, "the cluster was deleted")
        now = self.clock()
        self._set(seg.id, progress=5)
        if not self.barrier():
            return self._failed(seg, "ingested records could not be flushed in time; retry")
        self._set(seg.id, progress=20)
        try:
            query, spans = self.query(seg, now)
            self._ensure_columns(seg.project_id)
            self._set(seg.id, progress=40)
            rows = self._members(seg.project_id, query)
        except CdpError as exc:
            return self._failed(seg, exc.message)
        version = seg.version + 1
        with self.store.writer() as w:
            count = w.write_segment_rows(seg.project_id, seg.id, version, rows)
        published = self._set(
            seg.id,
            version=version,
            users_num=count,
            refreshed_at=now.astimezone(UTC).replace(tzinfo=None),
            spans=[_span_json(s) for s in spans],
            progress=100,
            message="",
        )
        if not published:  # deleted while refreshing: leave nothing behind
            with self.store.writer() as w:
                w.delete_segment(seg.project_id, seg.id)
            return Outcome(False, "the cluster was deleted while refreshing")
        return Outcome(True, f"{count} users", rows_read=count, imported=count)

    def _ensure_columns(self, project_id: int) -> None:
        with self.store.writer() as w:
            self._columns(w, project_id)

    def _columns(self, w: StoreWriter, project_id: int) -> None:
        """Every property of the catalog has its column (one declared but never written to
        has none yet), so that a definition reading it finds it empty, not missing."""
        schema = self.catalog.schema(project_id)
        w.ensure_project(project_id)
        w.ensure_columns(project_id, [*schema.user.values(), *schema.event.values()])

    def _failed(self, seg: Segment, reason: str) -> Outcome:
        self._set(seg.id, progress=-1, message=reason)
        return Outcome(False, reason)

    # ---- the scheduler -------------------------------------------------------------------
    def due(self, now: datetime) -> list[Segment]:
        """Dynamic segments whose daily refresh time (project-local) has passed since their
        last refresh."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.segments).where(
                    t.segments.c.type.in_(sorted(CONDITION_TYPES | SQL_TYPES))
                )
            ).all()
        out = []
        for row in rows:
            seg = Segment.from_row(row)
            if not seg.dynamic:
                continue
            tz = self.catalog.project(seg.project_id).tz
            local = now.astimezone(tz)
            hh, mm = (int(x) for x in (seg.refresh_at or DEFAULT_REFRESH_AT).split(":"))
            slot = datetime.combine(local.date(), time(hh, mm), tzinfo=tz)
            if slot > local:
                slot -= timedelta(days=1)
            last = seg.refreshed_at.replace(tzinfo=UTC) if seg.refreshed_at else None
            if last is None or last < slot:
                out.append(seg)
        return out

    def schedule(self, now: datetime | None = None) -> list[int]:
        """Queue the refreshes that are due; returns the segment ids queued."""
        queued = []
        for seg in self.due(now or self.clock()):
            try:
                self.refresh(seg.project_id, seg.id, "scheduler")
                queued.append(seg.id)
            except CdpError as exc:  # already refreshing, or the queue is full: next round
                log.debug("scheduler: %s: %s", seg.name, exc.message)
        return queued

    # ---- ID uploads ----------------------------------------------------------------------
    def upload(
        self,
        project_id: int,
        ref: int | str | None,
        spec: Spec,
        body: bytes,
        upload_name: str = "",
    ) -> tuple[Segment, UploadStats]:
        """Create (``ref`` None) or replace the members of an ID-upload segment from a CSV
        body: one ID per line, or ``id,tagValue`` for a tag; a header line is allowed."""
        if ref is None:
            catalog = spec.catalog or CLUSTER
            if catalog not in (CLUSTER, TAG):
                raise invalid("clusterCatalog", f"expected {CLUSTER} or {TAG}")
            typ = "tag_by_import" if catalog == TAG else "cluster_by_import"
            if not spec.display_name:
                raise CdpError(Code.VALIDATION_FAILED, "displayName: is required", "displayName")
            name = _name(spec.name) if spec.name else None
            main = spec.main_column
            if not main:
                raise CdpError(
                    Code.VALIDATION_FAILED, "mainColumnName: is required", "mainColumnName"
                )
            seg = None
        else:
            seg = self.get(project_id, ref)
            if seg.type not in IMPORT_TYPES:
                raise invalid("clusterId", f"cluster {seg.name!r} is not an ID-upload cluster")
            catalog, typ, name, main = (
                seg.catalog,
                seg.type,
                seg.name,
                spec.main_column or seg.main_column,
            )
        schema = self.catalog.schema(project_id)
        match = self._matcher(project_id, schema, main)
        self.barrier()  # IDs match every profile acknowledged before the upload
        stats, user_ids, tags = self._read_ids(body, catalog == TAG, main, match)
        now = t.utcnow()
        if seg is None:
            values = {
                "project_id": project_id,
                "name": name or f"id{now:%Y%m%d%H%M%S%f}"[:24],
                "display_name": _display(spec.display_name),
                "catalog": catalog,
                "type": typ,
                "sub_type": "",
                "definition": None,
                "main_column": main,
                "upload_name": upload_name[:256],
                "remarks": _remarks(spec.remarks),
                "refresh_at": "",
                "progress": 0,
                "message": "",
                "users_num": 0,
                "version": 0,
                "created_at": now,
                "updated_at": now,
            }
            seg_id = self._insert(values)
            seg = self.get(project_id, seg_id)
        rows = pa.table(
            {"user_id": pa.array(user_ids, pa.int64()), "tag_value": pa.array(tags, pa.string())},
            schema=SEGMENT_ROWS,
        )
        with self.store.writer() as w:
            count = w.write_segment_rows(project_id, seg.id, seg.version + 1, rows)
        stats.user_num = count
        changes: dict[str, Any] = {
            "version": seg.version + 1,
            "users_num": count,
            "refreshed_at": now,
            "updated_at": now,
            "progress": 100,
            "main_column": main,
            "upload_stats": stats.public(),
        }
        if spec.display_name is not None and ref is not None:
            changes["display_name"] = _display(spec.display_name)
        if spec.remarks is not None and ref is not None:
            changes["remarks"] = _remarks(spec.remarks)
        if upload_name:
            changes["upload_name"] = upload_name[:256]
        self._set(seg.id, **changes)
        return self.get(project_id, seg.id), stats

    def _matcher(
        self, project_id: int, schema: Schema, main: str
    ) -> Callable[[list[str]], dict[str, list[int]]]:
        """How uploaded ID texts find users: by an identity key, our user id, or a user
        property (typed)."""
        if main in schema.identity_keys:
            key = schema.identity_keys[main]

            def by_identity(values: list[str]) -> dict[str, list[int]]:
                tokens = {v: normalize(main, v) for v in values}
                wanted = [(key.id, n) for n in set(tokens.values()) if n is not None]
                with self.store.writer() as w:
                    found = w.lookup_identities(project_id, wanted)
                return {
                    v: [found[(key.id, n)]]
                    for v, n in tokens.items()
                    if n is not None and (key.id, n) in found
                }

            return by_identity
        if main in USER_ID_COLUMNS:

            def by_user_id(values: list[str]) -> dict[str, list[int]]:
                ids = {v: int(v) for v in values if v.strip().isdigit()}
                with self.store.writer() as w:
                    known = w.existing_users(project_id, sorted(set(ids.values())))
                return {v: [i] for v, i in ids.items() if i in known}

            return by_user_id
        prop = schema.user.get(main)
        if prop is None or prop.type is PropertyType.LIST:
            raise invalid(
                "mainColumnName", f"{main!r} is not an identity key, user_id or a user property"
            )

        def by_property(values: list[str]) -> dict[str, list[int]]:
            typed: dict[str, Any] = {}
            for v in values:
                try:
                    typed[v] = coerce(
                        prop.type, v, main, self.limits, self.catalog.project(project_id).tz
                    )
                except CdpError:
                    continue
            if prop.type is PropertyType.DATETIME:
                typed = {
                    k: datetime(1970, 1, 1) + timedelta(microseconds=x) for k, x in typed.items()
                }
            with self.store.writer() as w:
                found = w.match_property(project_id, prop, list(set(typed.values())))
            return {v: found[x] for v, x in typed.items() if x in found}

        return by_property

    def _read_ids(
        self,
        body: bytes,
        is_tag: bool,
        main: str,
        match: Callable[[list[str]], dict[str, list[int]]],
    ) -> tuple[UploadStats, list[int], list[str | None]]:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise invalid("body", "the ID list is not UTF-8 text") from None
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(x.strip() for x in r)]
        if rows and rows[0][0].strip().lower() in {main.lower(), "id"}:
            rows = rows[1:]  # a header line naming the column
        if len(rows) > MAX_UPLOAD_ROWS:
            raise CdpError(
                Code.LIMIT_EXCEEDED, f"body: at most {MAX_UPLOAD_ROWS} IDs per upload", "body"
            )
        stats = UploadStats(upload_num=len(rows))
        ids = [r[0].strip() for r in rows]
        found = match(sorted(set(i for i in ids if i)))
        user_ids: list[int] = []
        tags: list[str | None] = []
        for r, ident in zip(rows, ids, strict=True):
            tag = (r[1].strip() if len(r) > 1 else "") if is_tag else None
            users = found.get(ident)
            if not users:
                stats.unmatched_num += 1
                continue
            if is_tag and not tag:
                stats.tag_value_null_num += 1
                continue
            for u in users:
                user_ids.append(u)
                tags.append(tag)
        return stats, user_ids, tags

    def sync_list(self, project_id: int, list_id: int) -> Segment:
        """A static list (Marketo ``listId``) as an ID cluster named ``list<id>``: its members
        are the list's as they are now."""
        name = f"list{int(list_id)}"
        try:
            seg = self.get(project_id, name)
        except CdpError:
            now = t.utcnow()
            values = {
                "project_id": project_id,
                "name": name,
                "display_name": f"Marketo list {int(list_id)}",
                "catalog": CLUSTER,
                "type": "cluster_by_import",
                "sub_type": "",
                "definition": None,
                "main_column": "listId",
                "upload_name": "",
                "remarks": "",
                "refresh_at": "",
                "progress": 0,
                "message": "",
                "users_num": 0,
                "version": 0,
                "created_at": now,
                "updated_at": now,
            }
            try:
                seg = self.get(project_id, self._insert(values))
            except CdpError:  # created meanwhile by another import of the same list
                seg = self.get(project_id, name)
        query = (
            exp.select(exp.column("user_id"), exp.cast(exp.null(), "VARCHAR").as_("tag_value"))
            .from_(exp.to_table(tree.LISTS))
            .where(exp.column("list_id").eq(exp.Literal.number(int(list_id))))
        )
        with self.store.writer() as w:
            w.ensure_project(project_id)
            count = w.write_segment(project_id, seg.id, seg.version + 1, query)
        now = t.utcnow()
        self._set(
            seg.id,
            version=seg.version + 1,
            users_num=count,
            refreshed_at=now,
            updated_at=now,
            progress=100,
        )
        return self.get(project_id, seg.id)

    # ---- members -------------------------------------------------------------------------
    def members(
        self, project_id: int, ref: int | str, limit: int = 1000, after: int = 0
    ) -> tuple[Segment, list[tuple[int, str | None]]]:
        seg = self.get(project_id, ref)
        return seg, self.store.segment_members(project_id, seg.id, seg.version, limit, after)

    def changes(
        self, project_id: int, ref: int | str, limit: int = 1000
    ) -> tuple[Segment, list[int], list[int]]:
        seg = self.get(project_id, ref)
        if seg.version < 2:
            entered = [
                u for u, _ in self.store.segment_members(project_id, seg.id, seg.version, limit, 0)
            ]
            return seg, entered, []
        entered, left = self.store.segment_changes(project_id, seg.id, seg.version, limit)
        return seg, entered, left

    def of_user(self, project_id: int, user_id: int) -> list[tuple[Segment, str | None]]:
        """The segments (current versions) a user is in, with the tag value."""
        held = self.store.user_segments(project_id, user_id)
        segs, _ = self.search(project_id, size=100_000)
        current = {s.id: s for s in segs}
        return [
            (current[sid], tag)
            for sid, version, tag in held
            if sid in current and current[sid].version == version
        ]


# ---- helpers -----------------------------------------------------------------------------
def _catalog(typ: str, catalog: str | None) -> str:
    expected = TAG if typ.startswith("tag_") else CLUSTER
    if catalog and catalog != expected:
        raise invalid("clusterCatalog", f"{typ} belongs to {expected}, not {catalog!r}")
    return expected


def _name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise invalid("clusterName", "letters, digits and _ only, at most 24 characters")
    return name


def _display(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid("displayName", "is required")
    if len(name) > 50:
        raise invalid("displayName", "at most 50 characters")
    return name


def _remarks(text: object) -> str:
    if text is None:
        return ""
    if not isinstance(text, str) or len(text) > 1000:
        raise invalid("remarks", "text of at most 1000 characters")
    return text


def _refresh_at(value: object) -> str:
    if value is None or value == "":
        return DEFAULT_REFRESH_AT
    if not isinstance(value, str) or not HHMM.fullmatch(value):
        raise invalid("refreshAt", 'a time of day, "HH:MM" in the project\'s timezone')
    return value


def _sql_text(definition: Any) -> str:
    sql = definition.get("sql") if isinstance(definition, dict) else definition
    if not isinstance(sql, str) or not sql.strip():
        raise invalid("sql", "a SELECT returning user ids is required")
    return sql


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _span_json(span: Span | None) -> dict[str, str] | None:
    if span is None:
        return None
    return {
        "startTime": f"{span.start_local:%Y-%m-%d %H:%M:%S}",
        "endTime": f"{span.end_local:%Y-%m-%d %H:%M:%S}",
    }
