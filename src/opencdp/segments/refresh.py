"""Computing members: a definition compiled (or checked, for SQL) against the catalog as it
is now, run under the segment budget (in the store, or in the sandbox for SQL), and the
refresh job that writes the members as a new version and publishes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.catalog.model import Schema
from opencdp.errors import CdpError, Code, invalid
from opencdp.jobs.service import ACTIVE, Job, Outcome, Progress
from opencdp.segments.compiler import Compiled, Compiler, Span
from opencdp.segments.kinds import Holds, SegmentKind, Source
from opencdp.segments.model import ClusterDef, TagDef, parse_cluster, parse_tag
from opencdp.segments.records import (
    KIND,
    TAG,
    Segment,
    SegmentRecords,
    segment_kind,
    span_json,
    sql_text,
)
from opencdp.segments.sandbox import DIALECT as SANDBOX_DIALECT
from opencdp.segments.sandbox import Mode
from opencdp.segments.sqlcheck import SqlSegment, check_sql
from opencdp.store.base import OverBudget, QueryError, StoreWriter


class Refreshes(SegmentRecords):
    # ---- compiling and running -----------------------------------------------------------
    def _compile(self, project_id: int, d: ClusterDef | TagDef, now: datetime) -> Compiled:
        """Compile a definition, and refuse what the store cannot run: an operation its
        dialect lacks, a regular expression its engine cannot compile.

        A definition refused by this process's catalog snapshot is judged once more against
        the stored catalog if that moved: a property another process created a moment ago
        (its records, an import on a worker) is not unknown here for the snapshot's delay."""
        try:
            return self._compiled(project_id, d, now)
        except CdpError:
            seen = self.catalog.version
            self.catalog.refresh(now_=True)
            if self.catalog.version == seen:
                raise
            return self._compiled(project_id, d, now)

    def _compiled(self, project_id: int, d: ClusterDef | TagDef, now: datetime) -> Compiled:
        project = self.catalog.project(project_id)
        compiler = Compiler(self.catalog.schema(project_id), project.tz, now)
        compiled = compiler.tag(d) if isinstance(d, TagDef) else compiler.cluster(d)
        compiled.check(self.store.capabilities.sql, self.store.pattern_error)
        return compiled

    def _sql(self, kind: SegmentKind, definition: Any) -> SqlSegment:
        columns = 2 if kind.holds is TAG else 1
        return check_sql(sql_text(definition), columns, SANDBOX_DIALECT)

    def _definition(
        self, project_id: int, kind: SegmentKind, definition: Any, now: datetime
    ) -> tuple[SqlSegment | exp.Select, list[Span | None]]:
        """A definition as it reads against the catalog now: a checked SQL segment (run in
        the sandbox), or a compiled neutral tree (run by the store) with its time windows."""
        if kind.source is Source.SQL:
            return self._sql(kind, definition), []
        d: ClusterDef | TagDef = (
            parse_tag(definition, "tagQp") if kind.holds is TAG else parse_cluster(definition, "qp")
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
        return self._definition(seg.project_id, seg.kind, seg.definition, now)

    def preview(
        self, project_id: int, catalog: Holds | None, kind: SegmentKind | None, definition: Any
    ) -> int:
        """How many users a definition would hold now, without saving it."""
        kind = segment_kind(kind, catalog)
        if kind.source is Source.IDS:
            raise invalid("clusterType", "an ID-upload segment has no definition to preview")
        self.barrier()
        query, _ = self._definition(project_id, kind, definition, self.clock())
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
            if seg.is_ids:
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
            # One refresh follows each refresh (the key names the segment, as created, and
            # the refresh it follows), whichever process queues it.
            key = f"{KIND}:{seg.id}:{seg.created_at:%Y%m%d%H%M%S%f}:{seg.job_id or 0}"
            job = self.jobs.submit(project_id, KIND, surface, {"segment_id": seg.id}, dedupe=key)
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
        progress.check()  # still this worker's job (a worker that lost it writes nothing)
        with self.store.writer() as w:
            count = w.write_segment_rows(seg.project_id, seg.id, version, rows)
        published = self._set(
            seg.id,
            version=version,
            users_num=count,
            refreshed_at=now.astimezone(UTC).replace(tzinfo=None),
            spans=[span_json(s) for s in spans],
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
