"""Raw-data exports: every record the server received in a closed hour or day, as files.

An export covers the records *received* in its period (``received_at``, UTC), so once the
period is closed and flushed its content can no longer change: a published export never
changes. Each export is written as parts of at most ``part_bytes`` bytes each (gzip CSV with a
header row, gzip JSON lines, or Parquet, per project; :mod:`opencdp.exports.writers`), plus a
``manifest.json`` listing every part's row count, size and SHA-256, as blobs under
``<export id>/`` of its project; only then is it published in the metadata DB. Periods are
read in the project's timezone (:mod:`opencdp.exports.periods`); file names and every time
inside the files are UTC.

What a period's exports are is the layout's (:class:`opencdp.exports.content.Layout`): its
datasets, each the events of some names (or of every other name), the profiles changed in the
period, or the members of the segments refreshed in it, and their columns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import sqlalchemy as sa

from opencdp.blobs.base import BlobStore
from opencdp.catalog.model import Project, Property
from opencdp.catalog.service import Catalog
from opencdp.errors import CdpError, Code, invalid
from opencdp.exports import periods, retention
from opencdp.exports.content import Export, ExportState, ExportStatus, Layout, Source
from opencdp.exports.periods import EXPORT_TYPES, Period, naive, naive_utc
from opencdp.exports.writers import GzipParts, ParquetParts, Part, render_csv, render_jsonl
from opencdp.faults import describe
from opencdp.jobs.service import Interrupted, Job, Jobs, Outcome, Progress
from opencdp.meta import tables as t
from opencdp.store.base import Store

log = logging.getLogger(__name__)


JOB_KIND = "export"


def job_key(project_id: int, period: Period) -> str:
    """The de-duplication key of a period's export job."""
    return f"export:{project_id}:{period.export_type}:{period.start:%Y%m%d%H%M}"


class _Stopped(Exception):
    """The server is stopping: an export being written is left to the next start."""


Key = tuple[int, str, str, datetime]  # project id, export type, data type, period start


class Exports:
    def __init__(
        self,
        engine: sa.Engine,
        catalog: Catalog,
        store: Store,
        barrier: Callable[[], bool],
        blobs: BlobStore,
        layout: Layout,
        part_bytes: int = 64 << 20,
        delay: timedelta = timedelta(minutes=30),
        retention: timedelta = timedelta(days=15),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        workers: int = 2,
        concurrency: int = 2,
        round_size: int = 200,
        retry_delay: timedelta = timedelta(seconds=30),
    ) -> None:
        self._engine = engine
        self.workers = workers  # threads compressing parts
        self.concurrency = max(1, concurrency)  # exports the scheduler writes at once
        self.round_size = max(1, round_size)  # due exports taken per scheduler round
        self.retry_delay = retry_delay  # before the scheduler retries a failed export
        self.catalog = catalog
        self.store = store
        self.barrier = barrier
        self.blobs = blobs  # the parts and manifests, under ``<export id>/``
        self.layout = layout
        self.part_bytes = part_bytes
        self.delay = delay
        self.retention = retention
        self.clock = clock
        self.backlog = 0  # due exports left for the next round after the last one
        self.stopping = threading.Event()  # set while the server stops: rounds end early
        self._busy: set[Key] = set()  # exports being written in this process
        self._busy_cond = threading.Condition()
        self._failed: dict[Key, float] = {}  # failed exports: when to retry (monotonic)
        self._next_job_purge = 0.0  # (monotonic)

    # ---- periods -------------------------------------------------------------------------
    def period(self, project: Project, export_type: str, export_date: str) -> Period:
        """The period of ``export_date`` (see :func:`opencdp.exports.periods.parse`)."""
        return periods.parse(project, export_type, export_date)

    # ---- status --------------------------------------------------------------------------
    def find(self, project_id: int, period: Period, data_type: str) -> Export | None:
        c = t.exports.c
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.exports).where(
                    c.project_id == project_id,
                    c.export_type == period.export_type,
                    c.data_type == data_type,
                    c.period_start == period.start,
                )
            ).first()
        return None if row is None else Export.from_row(row)

    def status(
        self, project: Project, period: Period, data_type: str
    ) -> tuple[ExportStatus, Export | None]:
        """Whether the export is ready, pending, failed or absent, with the export when there
        is one."""
        now = naive(self.clock())
        if period.end <= naive_utc(project.created_at) or period.start > now:
            return ExportStatus.ABSENT, None  # before the project existed, or in the future
        if period.end <= period.start:
            return ExportStatus.ABSENT, None  # a local hour skipped by a DST change: none such
        if period.end <= now - self.retention:
            return ExportStatus.ABSENT, None  # purged (or about to be)
        export = self.find(project.id, period, data_type)
        if export is None or export.state == ExportState.RUNNING:
            return ExportStatus.PENDING, export  # open, waiting for its delay, or being written
        if export.state == ExportState.FINISHED:
            return ExportStatus.READY, export
        if export.state == ExportState.ERROR:
            return ExportStatus.FAILED, export
        return ExportStatus.ABSENT, None

    # ---- files ---------------------------------------------------------------------------
    def _file(self, export: Export, name: str) -> str:
        """The blob key of a published part or manifest of an export (names are ours,
        checked). An export with no rows has no files."""
        names = {p["name"] for p in export.parts or []}
        if names:
            names.add("manifest.json")
        if name not in names or export.state != ExportState.FINISHED:
            raise CdpError(Code.NOT_FOUND, f"file {name!r} is not part of this export", "name")
        return self._folder(export) + name

    def open(
        self, export: Export, name: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The bytes of a published file of an export (or of a range of them)."""
        return self.blobs.open(export.project_id, self._file(export, name), start, end)

    def local_file(self, export: Export, name: str) -> AbstractContextManager[Path]:
        """A published file of an export as a local file, to be served with its ranges (see
        :meth:`BlobStore.local_path`). A published file that is missing is a fault of the
        storage (:class:`BlobNotFound`), not a wrong name."""
        return self.blobs.local_path(export.project_id, self._file(export, name))

    def file_url(self, export: Export, name: str, expires: timedelta) -> str | None:
        """A URL the blob store signed for a published file, or None: the server serves it."""
        return self.blobs.url(export.project_id, self._file(export, name), expires)

    def by_id(self, export_id: int) -> Export:
        """An export by id alone: for a signed download link, which names it."""
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(t.exports).where(t.exports.c.id == export_id)).first()
        if row is None:
            raise CdpError(Code.NOT_FOUND, f"export {export_id} does not exist", "export")
        return Export.from_row(row)

    def get(self, project_id: int, export_id: int) -> Export:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.exports).where(
                    t.exports.c.id == export_id, t.exports.c.project_id == project_id
                )
            ).first()
        if row is None:
            raise CdpError(Code.NOT_FOUND, f"export {export_id} does not exist", "export")
        return Export.from_row(row)

    @staticmethod
    def _folder(export: Export) -> str:
        """The blob key prefix of an export's files (within its project)."""
        return f"{int(export.id)}/"

    def _delete_files(self, export: Export) -> None:
        """Delete an export's files, and what an interrupted attempt may have left (earlier
        versions wrote into ``<export id>.tmp/`` first)."""
        self.blobs.delete_prefix(export.project_id, f"{int(export.id)}.tmp/")
        self.blobs.delete_prefix(export.project_id, self._folder(export))

    # ---- running -------------------------------------------------------------------------
    def run(self, project_id: int, period: Period, data_type: str) -> Export:
        """Write (or rewrite, if it failed) the export of one closed period and data type."""
        if data_type not in self.layout:
            raise invalid("data_type", f"unknown data type {data_type!r}")
        if period.end > naive(self.clock()):
            raise invalid("export_date", "the period is not over yet")
        if period.end <= period.start:  # its export would take the next hour's place
            raise invalid("export_date", "no such hour in the project's time zone (DST)")
        project = self.catalog.project(project_id)
        self._export_period(project, period, [data_type], self.barrier(), stop=None)
        export = self.find(project_id, period, data_type)
        assert export is not None
        return export

    @contextmanager
    def _holding(self, keys: list[Key]) -> Iterator[None]:
        """Exclusive use of these exports within the process (the scheduler's threads, the
        admin API, backfill): taken all at once, so two holders never wait on each other."""
        with self._busy_cond:
            while any(k in self._busy for k in keys):
                self._busy_cond.wait()
            self._busy.update(keys)
        try:
            yield
        finally:
            with self._busy_cond:
                self._busy.difference_update(keys)
                self._busy_cond.notify_all()

    def _export_period(
        self,
        project: Project,
        period: Period,
        data_types: list[str],
        flushed: bool,
        stop: threading.Event | None,
    ) -> int:
        """Write the missing or failed exports of one period among ``data_types``; returns how
        many were written (published or failed).

        One count over the period's ``received_at`` range tells which data types have no
        rows: those are published at once, together, as exports with no parts (what the part
        writer makes of no rows, without running it); the others are written one by one."""
        keys = [(project.id, period.export_type, dt, period.start) for dt in data_types]
        with self._holding(keys):
            current = self._current(project.id, period, data_types)
            todo = [
                dt
                for dt in data_types
                if dt not in current
                or current[dt].state in (ExportState.ERROR, ExportState.RUNNING)
            ]
            if not todo:
                return 0
            if not flushed:
                for dt in todo:
                    export = self._claim(project.id, period, dt)
                    self._fail(export, "ingested records could not be flushed in time")
                return len(todo)
            try:
                counts = self._counts(project, period, todo)
            except Exception:
                log.exception("counting the rows of %s %s failed", period.export_type, period.label)
                counts = {}  # unknown: every export is written in full
            empty = [dt for dt in todo if counts.get(dt) == 0]
            if empty:
                self._publish_empty(project, period, empty, current)
            written = len(empty)
            for dt in todo:
                if dt in empty:
                    continue
                if stop is not None and stop.is_set():
                    break
                self._write_one(project.id, period, dt, stop)
                written += 1
            return written

    def _current(self, project_id: int, period: Period, data_types: list[str]) -> dict[str, Export]:
        c = t.exports.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.exports).where(
                    c.project_id == project_id,
                    c.export_type == period.export_type,
                    c.period_start == period.start,
                    c.data_type.in_(data_types),
                )
            ).all()
        return {r.data_type: Export.from_row(r) for r in rows}

    def _counts(self, project: Project, period: Period, data_types: list[str]) -> dict[str, int]:
        """How many rows each data type's export of the period would hold (a positive count
        may be an over-estimate: it only means the export is written in full)."""
        layout = self.layout
        counts = dict.fromkeys(layout.names, 0)
        sources = {layout.dataset(dt).source for dt in data_types}
        if sources & {Source.EVENTS, Source.PROFILES}:
            names, profiles = self.store.received_counts(project.id, period.start, period.end)
            for name, n in names.items():
                target = layout.of_event(name)
                if target is not None:
                    counts[target] += n
            for d in layout.datasets:
                if d.source is Source.PROFILES:
                    counts[d.name] = profiles
        if Source.MEMBERSHIPS in sources:
            refreshed = len(_segments_refreshed(self._engine, project.id, period.start, period.end))
            for d in layout.datasets:
                if d.source is Source.MEMBERSHIPS:
                    counts[d.name] = refreshed
        return counts

    def _publish_empty(
        self, project: Project, period: Period, data_types: list[str], current: dict[str, Export]
    ) -> None:
        """Publish exports with no rows and no parts, in one metadata transaction."""
        now = t.utcnow()
        c = t.exports.c
        for dt in data_types:
            if dt in current:  # an earlier attempt's files, if any
                self._delete_files(current[dt])
        done = {
            "state": ExportState.FINISHED,
            "error": "",
            "rows": 0,
            "parts": [],
            "finished_at": now,
        }
        with self._engine.begin() as conn:
            for dt in data_types:
                if dt in current:
                    conn.execute(
                        sa.update(t.exports)
                        .where(
                            c.id == current[dt].id,
                            c.state.in_([ExportState.ERROR, ExportState.RUNNING]),
                        )
                        .values(attempts=current[dt].attempts + 1, **done)
                    )
                else:
                    conn.execute(
                        sa.insert(t.exports).values(
                            project_id=project.id,
                            export_type=period.export_type,
                            data_type=dt,
                            period_start=period.start,
                            period_end=period.end,
                            attempts=1,
                            format=project.export_format,
                            created_at=now,
                            **done,
                        )
                    )
        for dt in data_types:
            self._failed.pop((project.id, period.export_type, dt, period.start), None)

    def _write_one(
        self, project_id: int, period: Period, data_type: str, stop: threading.Event | None
    ) -> None:
        export = self._claim(project_id, period, data_type)
        if export.state == ExportState.FINISHED:
            return
        try:
            parts, rows = self._write(export, stop)
        except _Stopped:
            log.info("export %d interrupted by the stop; written at the next start", export.id)
            return  # left RUNNING, as after a crash: the next round writes it again
        except Exception as exc:
            log.exception("export %d failed", export.id)
            # (the engine's words, with properties named as their users know them)
            self._fail(export, self.catalog.schema(export.project_id).named(describe(exc)))
            return
        self._update(
            export.id,
            state=ExportState.FINISHED,
            error="",
            rows=rows,
            parts=[p.public() for p in parts],
            finished_at=t.utcnow(),
        )
        self._failed.pop((project_id, period.export_type, data_type, period.start), None)

    def _fail(self, export: Export, error: str) -> None:
        self._update(export.id, state=ExportState.ERROR, error=error[:500])
        key = (export.project_id, export.export_type, export.data_type, export.period_start)
        self._failed[key] = time.monotonic() + self.retry_delay.total_seconds()

    def _claim(self, project_id: int, period: Period, data_type: str) -> Export:
        now = t.utcnow()
        existing = self.find(project_id, period, data_type)
        if existing is None:
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.insert(t.exports).values(
                            project_id=project_id,
                            export_type=period.export_type,
                            data_type=data_type,
                            period_start=period.start,
                            period_end=period.end,
                            state=ExportState.RUNNING,
                            error="",
                            attempts=1,
                            rows=0,
                            parts=None,
                            format=self.catalog.project(project_id).export_format,
                            created_at=now,
                        )
                    )
            except sa.exc.IntegrityError:
                pass  # another worker claimed it first
            found = self.find(project_id, period, data_type)
            assert found is not None
            return found
        if existing.state in (ExportState.ERROR, ExportState.RUNNING):
            self._update(existing.id, state=ExportState.RUNNING, attempts=existing.attempts + 1)
            return self.get(project_id, existing.id)
        return existing

    # ---- scheduling ----------------------------------------------------------------------
    def periods(
        self, project: Project, export_type: str, start: datetime, end: datetime
    ) -> Iterator[Period]:
        """The periods of ``export_type`` from the one holding ``start`` to the last that ends
        by ``end`` (see :func:`opencdp.exports.periods.periods`)."""
        return periods.periods(project, export_type, start, end)

    def due(self, project: Project, now: datetime) -> list[tuple[Period, str]]:
        """Every closed period within retention (past the export delay) and data type whose
        export is missing or failed: after downtime, all the missed ones."""
        now = naive(now)
        start = max(naive_utc(project.created_at), now - self.retention)
        c = t.exports.c
        with self._engine.connect() as conn:
            done = {
                (r.export_type, r.data_type, r.period_start)
                for r in conn.execute(
                    sa.select(c.export_type, c.data_type, c.period_start).where(
                        c.project_id == project.id,
                        c.state.in_([ExportState.FINISHED, ExportState.PURGED]),
                        c.period_start >= start - timedelta(days=1),
                    )
                )
            }
        out = []
        for export_type in EXPORT_TYPES:
            for period in self.periods(project, export_type, start, now - self.delay):
                for dt in self.layout.names:
                    if (export_type, dt, period.start) not in done:
                        out.append((period, dt))
        return out

    def schedule(self, now: datetime | None = None, limit: int | None = None) -> int:
        """One round of the scheduler: purge what is past retention, then write the
        ``limit`` (default ``round_size``) oldest due exports of all projects together, in the
        order their periods closed, so that no project waits behind another's backlog.
        Returns how many were written; ``backlog`` is then how many remain due.

        An export that failed waits ``retry_delay`` before the scheduler tries it again."""
        now = now or self.clock()
        self.purge(now)
        limit = self.round_size if limit is None else max(1, limit)
        due = self._due_everywhere(now)
        self.backlog = max(0, len(due) - limit)
        if not due:
            return 0
        if len(due) > limit:
            log.info("exports: %d due, writing the oldest %d", len(due), limit)
        if not self.barrier():
            log.warning("exports: ingested records could not be flushed; next round")
            self.backlog = 0
            return 0
        return self._execute(due[:limit], self.stopping, True)

    def _due_everywhere(self, now: datetime) -> list[tuple[Project, Period, str]]:
        """The due exports of every project, in the order their periods closed, but for the
        failed ones waiting out ``retry_delay``."""
        clock = time.monotonic()
        self._failed = {k: v for k, v in self._failed.items() if v > clock}
        due: list[tuple[Project, Period, str]] = []
        for project in self.catalog.projects():
            for period, dt in self.due(project, now):
                if (project.id, period.export_type, dt, period.start) not in self._failed:
                    due.append((project, period, dt))
        due.sort(key=self._closing_order)
        return due

    # ---- as jobs -------------------------------------------------------------------------
    def submit_due(self, jobs: Jobs, now: datetime | None = None) -> int:
        """The scheduler's tick: purge what is past retention, then queue the due exports of
        all projects as jobs of the ``export`` lane, one per project and period, in the order
        their periods closed, until ``round_size`` due exports are queued or running. A period
        already queued or running is not queued again (its job's ``dedupe`` key, whichever
        process queued it). Returns how many jobs were queued; ``backlog`` is then how many due
        exports wait for a job."""
        now = now or self.clock()
        self.purge(now)
        if time.monotonic() >= self._next_job_purge:  # finished export jobs, kept a day
            jobs.purge(JOB_KIND, jobs.clock() - timedelta(days=1))
            self._next_job_purge = time.monotonic() + 3600
        periods: dict[str, tuple[Project, Period, list[str]]] = {}  # in closing order
        for project, period, dt in self._due_everywhere(now):
            key = job_key(project.id, period)
            periods.setdefault(key, (project, period, []))[2].append(dt)
        active = jobs.active_keys(JOB_KIND)
        room = self.round_size - sum(len(periods[k][2]) for k in active if k in periods)
        queued = waiting = 0
        for key, (project, period, dts) in periods.items():
            if key in active:
                continue
            if room <= 0:
                waiting += len(dts)
                continue
            params = {"export_type": period.export_type, "label": period.label, "data_types": dts}
            try:
                jobs.submit(project.id, JOB_KIND, "scheduler", params, dedupe=key)
            except CdpError:  # queued meanwhile by another process
                continue
            queued += 1
            room -= len(dts)
        self.backlog = waiting
        return queued

    def run_job(self, job: Job, progress: Progress) -> Outcome:
        """The ``export`` job: write the missing or failed exports of one period among the
        data types it names (those published meanwhile are skipped)."""
        project = self.catalog.project(job.project_id)
        period = self.period(project, str(job.params["export_type"]), str(job.params["label"]))
        named = job.params.get("data_types", self.layout.names)
        data_types = [dt for dt in self.layout.names if dt in named]
        if not self.barrier():
            return Outcome(False, "ingested records could not be flushed in time; retried later")
        try:
            written = self._export_period(project, period, data_types, True, progress.cancelled)
        except Exception as exc:  # the metadata DB or the store failing: retried later
            log.exception("exports of %s %s failed", period.export_type, period.label)
            retry = time.monotonic() + self.retry_delay.total_seconds()
            for dt in data_types:
                self._failed[(project.id, period.export_type, dt, period.start)] = retry
            return Outcome(False, describe(exc))
        if progress.cancelled.is_set():
            raise Interrupted  # (what is left is written when the job runs again)
        return Outcome(True, f"{written} exports written", rows_read=written)

    def _execute(
        self,
        exports: Iterable[tuple[Project, Period, str]],
        stop: threading.Event | None,
        flushed: bool,
    ) -> int:
        """Write these exports, one task per period in the order given, ``concurrency``
        tasks at a time (``flushed``: the ingest barrier passed). Returns how many were
        written."""
        periods: dict[tuple[int, str, datetime], tuple[Project, Period, list[str]]] = {}
        for project, period, dt in exports:
            key = (project.id, period.export_type, period.start)
            periods.setdefault(key, (project, period, []))[2].append(dt)

        def task(project: Project, period: Period, dts: list[str]) -> int:
            if stop is not None and stop.is_set():
                return 0
            try:
                return self._export_period(project, period, dts, flushed, stop)
            except Exception:  # the metadata DB or the store failing: retried later
                log.exception("exports of %s %s failed", period.export_type, period.label)
                retry = time.monotonic() + self.retry_delay.total_seconds()
                for dt in dts:
                    self._failed[(project.id, period.export_type, dt, period.start)] = retry
                return 0

        if self.concurrency == 1 or len(periods) == 1:
            return sum(task(*args) for args in periods.values())
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="export") as pool:
            futures = [pool.submit(task, *args) for args in periods.values()]
            return sum(f.result() for f in futures)

    def purge(self, now: datetime | None = None) -> int:
        """Delete the files of exports older than the retention; they answer as absent."""
        cutoff = naive(now or self.clock()) - self.retention
        return retention.purge(self._engine, cutoff, self._delete_files)

    def backfill(
        self, project: Project, start: datetime, end: datetime, export_type: str | None = None
    ) -> int:
        """Write the missing or failed exports of the closed periods in ``[start, end)``."""
        now = naive(self.clock())
        start = max(start, naive_utc(project.created_at), now - self.retention)
        end = min(end, now - self.delay)
        todo = [
            (project, period, dt)
            for et in ([export_type] if export_type else list(EXPORT_TYPES))
            for period in self.periods(project, et, start, end)
            for dt in self.layout.names
        ]
        todo.sort(key=self._closing_order)
        if not todo:
            return 0
        return self._execute(todo, None, self.barrier())

    def _update(self, export_id: int, **values: Any) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.update(t.exports).where(t.exports.c.id == export_id).values(**values))

    def _write(self, export: Export, stop: threading.Event | None = None) -> tuple[list[Part], int]:
        """Write an export's parts and manifest (each a blob, committed whole) in place of any
        an earlier attempt left; it is published by the caller, in the metadata DB."""
        self._delete_files(export)
        project, folder = export.project_id, self._folder(export)
        stem = f"{export.data_type}_{export.export_type}_{export.period_start:%Y%m%d%H}_UTC"
        batches = _until(self._batches(export), stop)
        try:
            if export.format == "parquet":
                parts = ParquetParts(self.blobs, project, folder, stem, self.part_bytes).write(
                    batches
                )
            else:
                jsonl = export.format == "jsonl"
                gz = GzipParts(
                    self.blobs,
                    project,
                    folder,
                    stem,
                    self.part_bytes,
                    self.workers,
                    ".jsonl.gz" if jsonl else ".csv.gz",
                    render_jsonl if jsonl else render_csv,
                )
                parts = gz.write(batches)
            total = sum(p.rows for p in parts)
            manifest = {
                "exportType": export.export_type,
                "dataType": export.data_type,
                "periodStart": f"{export.period_start:%Y-%m-%dT%H:%M:%SZ}",
                "periodEnd": f"{export.period_end:%Y-%m-%dT%H:%M:%SZ}",
                "rows": total,
                "parts": [p.public() for p in parts],
            }
            text = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
            self.blobs.put(project, folder + "manifest.json", [text])
        except BaseException:
            with contextlib.suppress(Exception):
                self._delete_files(export)
            raise
        return parts, total

    def _memberships(self, export: Export) -> Iterator[pa.RecordBatch]:
        """The members of every segment and tag refreshed in the period (the version that
        refresh wrote), with the segment's name and kind and the member's identity keys."""
        segs = _segments_refreshed(
            self._engine, export.project_id, export.period_start, export.period_end
        )
        versions = [(sid, int(r.version)) for sid, r in segs.items()]
        schema = self.catalog.schema(export.project_id)
        keys = list(schema.identity_keys.values())
        login = self._login(export.project_id)
        for batch in self.store.export_members(export.project_id, versions, keys, login):
            yield self.layout.render_members(export.data_type, batch, segs, keys)

    def _login(self, project_id: int) -> Property | None:
        """The user property the project exports as ``loginUserId`` (None: our user id)."""
        key = self.catalog.project(project_id).login_user_key
        return None if key is None else self.catalog.schema(project_id).user.get(key)

    def _batches(self, export: Export) -> Iterator[pa.RecordBatch]:
        """The export's rows in its dataset's columns (the layout's)."""
        schema = self.catalog.schema(export.project_id)
        dataset = self.layout.dataset(export.data_type)
        if dataset.source is Source.MEMBERSHIPS:
            yield from self._memberships(export)
            return
        if dataset.source is Source.PROFILES:
            props = list(schema.user.values())
            for batch in self.store.export_profiles(
                export.project_id,
                props,
                export.period_start,
                export.period_end,
                self._login(export.project_id),
            ):
                yield self.layout.render_profiles(dataset.name, batch, props)
            return
        names = None if dataset.events is None else list(dataset.events)
        exclude = self.layout.named_events() if names is None else None
        props = list(schema.event.values())
        for batch in self.store.export_events(
            export.project_id,
            props,
            export.period_start,
            export.period_end,
            names,
            exclude,
            self._login(export.project_id),
        ):
            yield self.layout.render_events(dataset.name, batch, props)

    def _closing_order(
        self, item: tuple[Project, Period, str]
    ) -> tuple[datetime, datetime, int, int, int]:
        """Oldest first: by the end of the period, then project, export type and dataset."""
        project, period, dt = item
        return (
            period.end,
            period.start,
            project.id,
            EXPORT_TYPES.index(period.export_type),
            self.layout.index(dt),
        )


def _until(
    batches: Iterator[pa.RecordBatch], stop: threading.Event | None
) -> Iterator[pa.RecordBatch]:
    """``batches``, raising :class:`_Stopped` between two once ``stop`` is set."""
    for batch in batches:
        if stop is not None and stop.is_set():
            raise _Stopped
        yield batch


def _segments_refreshed(
    engine: sa.Engine, project_id: int, start: datetime, end: datetime
) -> dict[int, Any]:
    c = t.segments.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.id, c.name, c.catalog, c.version, c.refreshed_at).where(
                c.project_id == project_id, c.refreshed_at >= start, c.refreshed_at < end
            )
        ).all()
    return {int(r.id): r for r in rows}
