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
import os
import socket
import threading
import time
import uuid
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
SURFACE = "admin"  # the surface of the export jobs the admin API and backfill queue
_HOST = socket.gethostname()[:60]


def job_key(project_id: int, period: Period) -> str:
    """The de-duplication key of a period's export job."""
    return f"export:{project_id}:{period.export_type}:{period.start:%Y%m%d%H%M}"


class _Stopped(Exception):
    """The server is stopping: an export being written is left to the next start."""


class _Lost(_Stopped):
    """The writer's claim of the export expired and another writer took the export over."""


def _writer_id() -> str:
    """A new id for one writer's claim of an export (host, process, a random part)."""
    return f"{_HOST}/{os.getpid()}/{uuid.uuid4().hex[:16]}"


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
        jobs: Jobs | None = None,
        run_wait: timedelta = timedelta(seconds=60),
        lease: timedelta = timedelta(seconds=30),
        lease_clock: Callable[[], datetime] = t.utcnow,
    ) -> None:
        """``jobs``: the queue that exports written on demand go through (:meth:`request`,
        :meth:`backfill`); ``run_wait``: how long :meth:`request` waits for its job.
        ``lease``: how long a writer's claim of an export lasts unless renewed (it is renewed
        while the writer writes); ``lease_clock``: naive UTC now, for claims and retry times."""
        self._engine = engine
        self.jobs = jobs
        self.run_wait = run_wait
        self.lease = lease
        self.lease_clock = lease_clock
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

    # ---- on demand -----------------------------------------------------------------------
    def run(
        self, project_id: int, period: Period, data_type: str, wait: timedelta | None = None
    ) -> Export:
        """Have the export of one closed period and data type written (or rewritten, if it
        failed) by an export job; the export as stored once the job ended or ``wait`` passed
        (see :meth:`request`)."""
        exports, _ = self.request(project_id, period, [data_type], wait)
        return exports[0]

    def request(
        self,
        project_id: int,
        period: Period,
        data_types: list[str],
        wait: timedelta | None = None,
    ) -> tuple[list[Export], Job | None]:
        """Have the missing or failed exports of one closed period among ``data_types``
        written by a job of the ``export`` lane, the period's job as the scheduler queues it,
        and wait for it up to ``wait`` (default ``run_wait``). Where the period's job is
        queued or running already (whichever process queued it), that job is waited for, and
        if a requested export is still missing or failed after it, a job is queued again.
        Published exports are left as they are.

        Returns the exports as stored then, in the order asked (one that its job has not
        written yet is ``running``; one that the job left unwritten, ``error`` with the job's
        message), and the job that wrote them or is writing them (None: nothing to write)."""
        for dt in data_types:
            if dt not in self.layout:
                raise invalid("data_type", f"unknown data type {dt!r}")
        if period.end > naive(self.clock()):
            raise invalid("export_date", "the period is not over yet")
        if period.end <= period.start:  # its export would take the next hour's place
            raise invalid("export_date", "no such hour in the project's time zone (DST)")
        jobs = self._queue()
        project = self.catalog.project(project_id)
        deadline = time.monotonic() + (self.run_wait if wait is None else wait).total_seconds()
        key = job_key(project_id, period)
        job: Job | None = None
        mine = False  # whether ``job`` was queued here
        while todo := self._unpublished(project_id, period, data_types):
            if job is not None and job.done:
                if mine:
                    break  # what it left is stored (a failed export says why)
                job = None  # the period's job of another caller ended: queue one for these
            if job is None:
                params = {"export_type": period.export_type, "label": period.label}
                try:
                    job = jobs.submit(
                        project_id, JOB_KIND, SURFACE, {**params, "data_types": todo}, dedupe=key
                    )
                    mine = True
                except CdpError as exc:
                    if exc.code is not Code.BUSY:
                        raise
                    job, mine = jobs.holder(key), False  # the period's job, queued or running
                    if job is None and time.monotonic() < deadline:
                        continue  # it ended meanwhile: look again
                    if job is None:
                        break
            if time.monotonic() >= deadline:
                break
            job = _await(jobs, job, deadline)
        current = self._current(project_id, period, data_types)
        missing = [dt for dt in data_types if dt not in current]
        if missing:
            self._record(project, period, missing, job)
            current = self._current(project_id, period, data_types)
        return [current[dt] for dt in data_types], job

    def _queue(self) -> Jobs:
        if self.jobs is None:
            raise RuntimeError("exports are written on demand by export jobs: no job queue")
        return self.jobs

    def _unpublished(self, project_id: int, period: Period, data_types: list[str]) -> list[str]:
        """Those of ``data_types`` whose export of the period is missing, failed or running,
        each once, in the layout's order."""
        current = self._current(project_id, period, data_types)
        return [
            dt
            for dt in self.layout.names
            if dt in data_types
            and (dt not in current or current[dt].state in (ExportState.ERROR, ExportState.RUNNING))
        ]

    def _record(
        self, project: Project, period: Period, data_types: list[str], job: Job | None
    ) -> None:
        """Store the exports of ``data_types``, which ``job`` has not written (yet): running
        while it is queued or running (taken by any writer, as after a stop), else failed
        with its message."""
        now = t.utcnow()
        if job is not None and job.done:
            state, error = ExportState.ERROR, job.message or "the export job ended without it"
            retry: datetime | None = self.lease_clock() + self.retry_delay
        else:
            state, error, retry = ExportState.RUNNING, "", None
        for dt in data_types:
            with contextlib.suppress(sa.exc.IntegrityError), self._engine.begin() as conn:
                conn.execute(  # (stored meanwhile by its writer: as it is)
                    sa.insert(t.exports).values(
                        project_id=project.id,
                        export_type=period.export_type,
                        data_type=dt,
                        period_start=period.start,
                        period_end=period.end,
                        state=state,
                        error=error[:500],
                        attempts=0,
                        rows=0,
                        parts=None,
                        format=project.export_format,
                        created_at=now,
                        retry_after=retry,
                    )
                )

    # ---- writing -------------------------------------------------------------------------
    @contextmanager
    def _holding(self, keys: list[Key]) -> Iterator[None]:
        """Exclusive use of these exports among the threads of the process (the job workers,
        ``schedule``'s threads): taken all at once, so two holders never wait on each other.
        A thread that waited finds the export published and leaves it; across processes the
        claim in the metadata DB (:meth:`_claim`) keeps writers apart."""
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
                failed = 0
                for dt in todo:
                    owner = _writer_id()
                    export = self._claim(project.id, period, dt, owner)
                    if export is not None:  # (else published, or another writer holds it)
                        self._fail(export, "ingested records could not be flushed in time", owner)
                        failed += 1
                return failed
            try:
                counts = self._counts(project, period, todo)
            except Exception:
                log.exception("counting the rows of %s %s failed", period.export_type, period.label)
                counts = {}  # unknown: every export is written in full
            empty = [dt for dt in todo if counts.get(dt) == 0]
            written = self._publish_empty(project, period, empty, current) if empty else 0
            for dt in todo:
                if dt in empty:
                    continue
                if stop is not None and stop.is_set():
                    break
                written += self._write_one(project.id, period, dt, stop)
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
    ) -> int:
        """Publish exports with no rows and no parts, in one metadata transaction; one stored
        already (failed, or interrupted) is claimed first, and left to another writer that
        holds it. Returns how many were published."""
        now, c = t.utcnow(), t.exports.c
        owner = _writer_id()
        claimed: list[Export] = []
        for dt in data_types:
            if dt in current:
                export = self._claim(project.id, period, dt, owner)
                if export is not None:
                    self._delete_files(export)  # an earlier attempt's files, if any
                    claimed.append(export)
        done = {
            "state": ExportState.FINISHED,
            "error": "",
            "rows": 0,
            "parts": [],
            "finished_at": now,
            "owner": None,
            "lease_until": None,
            "retry_after": None,
        }
        published = 0
        try:
            with self._engine.begin() as conn:
                for export in claimed:
                    published += conn.execute(
                        sa.update(t.exports)
                        .where(c.id == export.id, c.owner == owner)
                        .values(**done)
                    ).rowcount
                for dt in data_types:
                    if dt in current:
                        continue
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
                    published += 1
        except sa.exc.IntegrityError:  # another writer stored one meanwhile: look again
            for export in claimed:
                self._let_go(export.id, owner)
            current = self._current(project.id, period, data_types)
            if all(dt in current for dt in data_types):
                return self._publish_empty(project, period, data_types, current)
            raise
        return published

    def _write_one(
        self, project_id: int, period: Period, data_type: str, stop: threading.Event | None
    ) -> bool:
        """Claim an export and write it; whether it was written (published or failed) here
        (not: published already, or another writer holds it)."""
        owner = _writer_id()
        export = self._claim(project_id, period, data_type, owner)
        if export is None:
            return False
        try:
            parts, rows = self._write(export, stop, owner)
        except _Lost:
            log.warning("export %d: its claim expired and another writer took it", export.id)
            return False
        except _Stopped:
            log.info("export %d interrupted by the stop; written at the next start", export.id)
            self._let_go(export.id, owner)  # left RUNNING and free: any writer takes it again
            return False
        except Exception as exc:
            log.exception("export %d failed", export.id)
            # (the engine's words, with properties named as their users know them)
            self._fail(export, self.catalog.schema(export.project_id).named(describe(exc)), owner)
            return True
        published = self._update(
            export.id,
            owner,
            state=ExportState.FINISHED,
            error="",
            rows=rows,
            parts=[p.public() for p in parts],
            finished_at=t.utcnow(),
            owner=None,
            lease_until=None,
            retry_after=None,
        )
        if not published:
            log.warning("export %d: its claim expired before it was published", export.id)
        return published

    def _fail(self, export: Export, error: str, owner: str | None = None) -> None:
        """Mark an export failed (``owner``: only while that writer holds it); the scheduler
        tries it again after ``retry_delay``, whichever process it runs in."""
        self._update(
            export.id,
            owner,
            state=ExportState.ERROR,
            error=error[:500],
            owner=None,
            lease_until=None,
            retry_after=self.lease_clock() + self.retry_delay,
        )

    def _defer(self, project_id: int, period: Period, data_types: list[str]) -> None:
        """After a fault of the metadata DB or the store: the scheduler leaves the period's
        unpublished exports of ``data_types`` for ``retry_delay`` (if that can be stored)."""
        c = t.exports.c
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(t.exports)
                    .where(
                        c.project_id == project_id,
                        c.export_type == period.export_type,
                        c.period_start == period.start,
                        c.data_type.in_(data_types),
                        c.state.in_([ExportState.ERROR, ExportState.RUNNING]),
                    )
                    .values(retry_after=self.lease_clock() + self.retry_delay)
                )
        except Exception:  # the metadata DB failing still: tried at the next tick
            log.exception("the retry time of exports could not be stored")

    @staticmethod
    def _claimable(now: datetime) -> sa.ColumnElement[bool]:
        """An export a writer may take: failed, or running with no writer holding it (its
        claim expired, or was let go at a stop)."""
        c = t.exports.c
        return sa.or_(
            c.state == ExportState.ERROR,
            sa.and_(
                c.state == ExportState.RUNNING,
                sa.or_(c.lease_until.is_(None), c.lease_until <= now),
            ),
        )

    def _claim(
        self, project_id: int, period: Period, data_type: str, owner: str | None = None
    ) -> Export | None:
        """Take an export for the writer ``owner`` (default: a new id) until ``lease`` from
        now: insert it ``running``, or, in one conditional ``UPDATE``, take it where it is
        failed or running with no writer holding it. The database applies either to one
        writer only (a unique key; a row that no longer matches the condition is not
        updated), so two writers, in any processes, never hold one export. Returns it as
        claimed, or None: published already, or another writer holds it."""
        owner = owner or _writer_id()
        now = self.lease_clock()
        held = {"state": ExportState.RUNNING, "owner": owner, "lease_until": now + self.lease}
        if self.find(project_id, period, data_type) is None:
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.insert(t.exports).values(
                            project_id=project_id,
                            export_type=period.export_type,
                            data_type=data_type,
                            period_start=period.start,
                            period_end=period.end,
                            error="",
                            attempts=1,
                            rows=0,
                            parts=None,
                            format=self.catalog.project(project_id).export_format,
                            created_at=t.utcnow(),
                            **held,
                        )
                    )
                return self.find(project_id, period, data_type)
            except sa.exc.IntegrityError:
                pass  # stored meanwhile by another writer: taken below if it may be
        c = t.exports.c
        with self._engine.begin() as conn:
            taken = conn.execute(
                sa.update(t.exports)
                .where(
                    c.project_id == project_id,
                    c.export_type == period.export_type,
                    c.data_type == data_type,
                    c.period_start == period.start,
                    self._claimable(now),
                )
                .values(attempts=c.attempts + 1, **held)
            ).rowcount
        return self.find(project_id, period, data_type) if taken == 1 else None

    def _renew(self, export_id: int, owner: str) -> bool:
        """Extend ``owner``'s claim of an export by a full ``lease``; False if it is lost."""
        c = t.exports.c
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.update(t.exports)
                .where(c.id == export_id, c.owner == owner, c.state == ExportState.RUNNING)
                .values(lease_until=self.lease_clock() + self.lease)
            )
        return bool(done.rowcount == 1)

    def _let_go(self, export_id: int, owner: str) -> None:
        """Give up ``owner``'s claim of an export, leaving it running: any writer takes it."""
        with contextlib.suppress(Exception):  # (else its claim expires)
            self._update(export_id, owner, owner=None, lease_until=None)

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
        done = self._published(project.id, start)
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

    def _published(self, project_id: int, start: datetime) -> set[tuple[str, str, datetime]]:
        """The published (or purged) exports of a project from about ``start`` on: export
        type, data type and period start of each."""
        c = t.exports.c
        with self._engine.connect() as conn:
            return {
                (r.export_type, r.data_type, r.period_start)
                for r in conn.execute(
                    sa.select(c.export_type, c.data_type, c.period_start).where(
                        c.project_id == project_id,
                        c.state.in_([ExportState.FINISHED, ExportState.PURGED]),
                        c.period_start >= start - timedelta(days=1),
                    )
                )
            }

    def _waiting(self) -> set[Key]:
        """The exports that failed and wait out ``retry_delay`` (in the metadata DB: the
        scheduler of every process leaves them)."""
        c = t.exports.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.project_id, c.export_type, c.data_type, c.period_start).where(
                    c.retry_after > self.lease_clock()
                )
            ).all()
        return {(r.project_id, r.export_type, r.data_type, r.period_start) for r in rows}

    def _due_everywhere(self, now: datetime) -> list[tuple[Project, Period, str]]:
        """The due exports of every project, in the order their periods closed, but for the
        failed ones waiting out ``retry_delay``."""
        waiting = self._waiting()
        due: list[tuple[Project, Period, str]] = []
        for project in self.catalog.projects():
            for period, dt in self.due(project, now):
                if (project.id, period.export_type, dt, period.start) not in waiting:
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
        flushed = self.barrier()  # (if not, the exports fail, and are tried again later)
        # The properties the exports name are the catalog's as stored now, not as this
        # process's snapshot last saw them (another process may have added one a moment ago).
        self.catalog.refresh(now_=True)
        try:
            written = self._export_period(project, period, data_types, flushed, progress.cancelled)
        except Exception as exc:  # the metadata DB or the store failing: retried later
            log.exception("exports of %s %s failed", period.export_type, period.label)
            self._defer(project.id, period, data_types)
            return Outcome(False, describe(exc))
        if progress.cancelled.is_set():
            raise Interrupted  # (what is left is written when the job runs again)
        if not flushed:
            return Outcome(False, "ingested records could not be flushed in time; retried later")
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
                self._defer(project.id, period, dts)
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
        """Queue the missing or failed exports of the closed periods in ``[start, end)``
        (within retention, past the export delay) as export jobs, one per period, the
        period's job as the scheduler queues it, oldest first. Returns how many exports are
        queued: in the jobs queued here, and those of periods whose job was queued or running
        already (an export such a job does not name is queued by the scheduler's next tick
        after it)."""
        jobs = self._queue()
        now = naive(self.clock())
        start = max(start, naive_utc(project.created_at), now - self.retention)
        end = min(end, now - self.delay)
        done = self._published(project.id, start)
        todo = [
            (period, [dt for dt in self.layout.names if (et, dt, period.start) not in done])
            for et in ([export_type] if export_type else list(EXPORT_TYPES))
            for period in self.periods(project, et, start, end)
        ]
        todo.sort(key=lambda item: self._closing_order((project, item[0], self.layout.names[0])))
        queued = 0
        for period, dts in todo:
            if not dts:
                continue
            params = {"export_type": period.export_type, "label": period.label, "data_types": dts}
            try:
                jobs.submit(
                    project.id, JOB_KIND, SURFACE, params, dedupe=job_key(project.id, period)
                )
            except CdpError as exc:
                if exc.code is not Code.BUSY:
                    raise  # (else the period's job is queued or running already)
            queued += len(dts)
        return queued

    def _update(self, export_id: int, holder: str | None, /, **values: Any) -> bool:
        """Update an export (``holder``: only while that writer holds it); whether it was."""
        c = t.exports.c
        where = (
            c.id == export_id if holder is None else sa.and_(c.id == export_id, c.owner == holder)
        )
        with self._engine.begin() as conn:
            return bool(conn.execute(sa.update(t.exports).where(where).values(**values)).rowcount)

    def _write(
        self, export: Export, stop: threading.Event | None = None, owner: str | None = None
    ) -> tuple[list[Part], int]:
        """Write an export's parts and manifest (each a blob, committed whole) in place of any
        an earlier attempt left; it is published by the caller, in the metadata DB. ``owner``:
        the writer's claim, renewed between batches (:class:`_Lost` once another writer has
        taken the export: its files are then the other writer's)."""
        self._delete_files(export)
        project, folder = export.project_id, self._folder(export)
        stem = f"{export.data_type}_{export.export_type}_{export.period_start:%Y%m%d%H}_UTC"
        keep = None if owner is None else _Keeper(self, export.id, owner)
        batches = _until(self._batches(export), stop, keep)
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
        except _Lost:
            raise
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


class _Keeper:
    """Renews a writer's claim of an export as it writes, a third of a lease apart."""

    def __init__(self, exports: Exports, export_id: int, owner: str) -> None:
        self._exports, self._id, self._owner = exports, export_id, owner
        self._every = exports.lease.total_seconds() / 3
        self._next = time.monotonic() + self._every

    def __call__(self) -> None:
        if time.monotonic() < self._next:
            return
        if not self._exports._renew(self._id, self._owner):
            raise _Lost
        self._next = time.monotonic() + self._every


def _until(
    batches: Iterator[pa.RecordBatch],
    stop: threading.Event | None,
    keep: Callable[[], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """``batches``, raising :class:`_Stopped` between two once ``stop`` is set, and renewing
    the writer's claim between two (``keep``)."""
    for batch in batches:
        if stop is not None and stop.is_set():
            raise _Stopped
        if keep is not None:
            keep()
        yield batch


def _await(jobs: Jobs, job: Job, deadline: float) -> Job:
    """``job`` once it is done, or as it is at ``deadline`` (monotonic seconds)."""
    pause = 0.02
    while not job.done and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)
        job = jobs.get(job.project_id, job.id)
    return job


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
