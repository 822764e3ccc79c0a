"""Raw-data exports: every record the server received in a closed hour or day, as files.

An export covers the records *received* in its period (``received_at``, UTC), so once the
period is closed and flushed its content can no longer change: a published export never
changes. Each export is written as gzip CSV parts of at most ``part_bytes`` compressed bytes
each, with a header row (or gzip JSON lines, or Parquet, per project), plus a
``manifest.json`` listing every part's row count, size and SHA-256, into a temporary directory
that is renamed into place; only then is it published in the metadata DB. Periods are read in
the project's timezone (``export_date`` is local time); file names and every time inside the
files are UTC.

Data types: each event goes to the data type named like its event when that is one of the
vendor's categories (``visit``, ``page``, ``action``, …) and to ``custom_event`` otherwise;
``user`` holds the profiles changed in the period, ``user_cluster`` the members of the segments
refreshed in it. Each data type is written in GrowingIO's columns for it
(:mod:`opencdp.exports.columns`), whatever the format.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa

from opencdp.catalog.model import Project, Property
from opencdp.catalog.service import Catalog
from opencdp.errors import CdpError, Code, invalid
from opencdp.exports import columns
from opencdp.faults import describe
from opencdp.jobs.service import Interrupted, Job, Jobs, Outcome, Progress
from opencdp.meta import tables as t
from opencdp.store.base import Store

log = logging.getLogger(__name__)

EXPORT_TYPES = ("hour", "day")
EVENT_TYPES = (
    "visit",
    "page",
    "action",
    "action_tag",
    "custom_event",
    "ads_track_activation",
    "ads_track_click",
    "pvar",
    "evar",
)
DATA_TYPES = (*EVENT_TYPES, "user", "user_cluster")
RUNNING, FINISHED, ERROR, PURGED = "running", "finished", "error", "purged"
CHUNK_BYTES = 1 << 20  # CSV text compressed as one gzip member
GZIP_LEVEL = 6
_DATE = re.compile(r"\d{8}(\d{2}(\d{2})?)?")


@dataclass(frozen=True)
class Part:
    name: str
    rows: int
    bytes: int
    sha256: str

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Export:
    id: int
    project_id: int
    export_type: str
    data_type: str
    period_start: datetime
    period_end: datetime
    state: str
    error: str
    attempts: int
    rows: int
    parts: list[dict[str, Any]] | None
    format: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Export:
        return cls(**{c: getattr(row, c) for c in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Period:
    export_type: str
    start: datetime  # UTC, naive
    end: datetime  # UTC, naive, exclusive
    label: str  # the export_date as the vendor echoes it, cut to the hour or day (local)


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
        root: Path,
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
        self.root = root
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
        """The UTC bounds of ``export_date`` (``yyyyMMdd[HH[mm]]``, project-local), cut to the
        hour or the day."""
        if export_type not in EXPORT_TYPES:
            raise invalid("export_type", f"expected hour or day, got {export_type[:20]!r}")
        if not _DATE.fullmatch(export_date):
            raise invalid("export_date", f"expected yyyyMMddHHmm, got {export_date[:20]!r}")
        try:
            day = datetime.strptime(export_date[:8], "%Y%m%d")
        except ValueError:
            raise invalid("export_date", f"no such date: {export_date[:8]!r}") from None
        if export_type == "hour":
            if len(export_date) < 10:
                raise invalid("export_date", "an hourly export needs yyyyMMddHH")
            hour = int(export_date[8:10])
            if hour > 23 or (len(export_date) == 12 and int(export_date[10:12]) > 59):
                raise invalid("export_date", f"no such time: {export_date!r}")
            local = day.replace(hour=hour)
            label, length = local.strftime("%Y%m%d%H"), timedelta(hours=1)
        else:
            local, label, length = day, day.strftime("%Y%m%d"), timedelta(days=1)
        start = local.replace(tzinfo=project.tz).astimezone(UTC)
        end = (local + length).replace(tzinfo=project.tz).astimezone(UTC)
        return Period(export_type, _naive(start), _naive(end), label)

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

    def status(self, project: Project, period: Period, data_type: str) -> tuple[str, Export | None]:
        """FINISHED, RUNNING, NOT_EXISTS or ERROR, with the export when there is one."""
        now = _naive(self.clock())
        if period.end <= _naive_utc(project.created_at) or period.start > now:
            return "NOT_EXISTS", None  # before the project existed, or in the future
        if period.end <= period.start:
            return "NOT_EXISTS", None  # a local hour skipped by a DST change: none such
        if period.end <= now - self.retention:
            return "NOT_EXISTS", None  # purged (or about to be)
        export = self.find(project.id, period, data_type)
        if export is None or export.state == RUNNING:
            return "RUNNING", export  # still open, waiting for its delay, or being written
        if export.state == FINISHED:
            return "FINISHED", export
        if export.state == ERROR:
            return "ERROR", export
        return "NOT_EXISTS", None

    def path(self, export: Export, name: str) -> Path:
        """A published part or manifest of an export (names are ours, checked). An export
        with no rows has no files."""
        names = {p["name"] for p in export.parts or []}
        if names:
            names.add("manifest.json")
        if name not in names or export.state != FINISHED:
            raise CdpError(Code.NOT_FOUND, f"file {name!r} is not part of this export", "name")
        return self._dir(export) / name

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

    def _dir(self, export: Export) -> Path:
        return self.root / str(int(export.project_id)) / str(int(export.id))

    # ---- running -------------------------------------------------------------------------
    def run(self, project_id: int, period: Period, data_type: str) -> Export:
        """Write (or rewrite, if it failed) the export of one closed period and data type."""
        if data_type not in DATA_TYPES:
            raise invalid("data_type", f"unknown data type {data_type!r}")
        if period.end > _naive(self.clock()):
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
                if dt not in current or current[dt].state in (ERROR, RUNNING)
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
        counts = dict.fromkeys(DATA_TYPES, 0)
        if any(dt in EVENT_TYPES or dt == "user" for dt in data_types):
            names, profiles = self.store.received_counts(project.id, period.start, period.end)
            for name, n in names.items():
                counts[name if name in EVENT_TYPES else "custom_event"] += n
            counts["user"] = profiles
        if "user_cluster" in data_types:
            counts["user_cluster"] = len(
                _segments_refreshed(self._engine, project.id, period.start, period.end)
            )
        return counts

    def _publish_empty(
        self, project: Project, period: Period, data_types: list[str], current: dict[str, Export]
    ) -> None:
        """Publish exports with no rows and no parts, in one metadata transaction."""
        now = t.utcnow()
        c = t.exports.c
        for dt in data_types:
            if dt in current:  # an earlier attempt's files, if any
                final = self._dir(current[dt])
                shutil.rmtree(final.with_name(final.name + ".tmp"), ignore_errors=True)
                shutil.rmtree(final, ignore_errors=True)
        done = {"state": FINISHED, "error": "", "rows": 0, "parts": [], "finished_at": now}
        with self._engine.begin() as conn:
            for dt in data_types:
                if dt in current:
                    conn.execute(
                        sa.update(t.exports)
                        .where(c.id == current[dt].id, c.state.in_([ERROR, RUNNING]))
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
        if export.state == FINISHED:
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
            state=FINISHED,
            error="",
            rows=rows,
            parts=[p.public() for p in parts],
            finished_at=t.utcnow(),
        )
        self._failed.pop((project_id, period.export_type, data_type, period.start), None)

    def _fail(self, export: Export, error: str) -> None:
        self._update(export.id, state=ERROR, error=error[:500])
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
                            state=RUNNING,
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
        if existing.state in (ERROR, RUNNING):
            self._update(existing.id, state=RUNNING, attempts=existing.attempts + 1)
            return self.get(project_id, existing.id)
        return existing

    # ---- scheduling ----------------------------------------------------------------------
    def periods(
        self, project: Project, export_type: str, start: datetime, end: datetime
    ) -> Iterator[Period]:
        """The periods of ``export_type`` (project-local hours or days) from the one holding
        ``start`` to the last that ends by ``end`` (UTC, naive).

        A local hour that a daylight-saving change skips has no period (it would be empty,
        and start where the next hour does); one that the change repeats is one period of
        two hours."""
        tz = project.tz
        local = start.replace(tzinfo=UTC).astimezone(tz)
        if export_type == "hour":
            first = local.replace(minute=0, second=0, microsecond=0)
            step = timedelta(hours=1)
        else:
            first = local.replace(hour=0, minute=0, second=0, microsecond=0)
            step = timedelta(days=1)
        current = first.replace(tzinfo=None)  # the period holding ``start`` is included
        while True:
            label = current.strftime("%Y%m%d%H" if export_type == "hour" else "%Y%m%d")
            period = self.period(project, export_type, label)
            if period.end > end:
                return
            if period.end > period.start:  # not a local hour that a DST change skips
                yield period
            current += step

    def due(self, project: Project, now: datetime) -> list[tuple[Period, str]]:
        """Every closed period within retention (past the export delay) and data type whose
        export is missing or failed: after downtime, all the missed ones."""
        now = _naive(now)
        start = max(_naive_utc(project.created_at), now - self.retention)
        c = t.exports.c
        with self._engine.connect() as conn:
            done = {
                (r.export_type, r.data_type, r.period_start)
                for r in conn.execute(
                    sa.select(c.export_type, c.data_type, c.period_start).where(
                        c.project_id == project.id,
                        c.state.in_([FINISHED, PURGED]),
                        c.period_start >= start - timedelta(days=1),
                    )
                )
            }
        out = []
        for export_type in EXPORT_TYPES:
            for period in self.periods(project, export_type, start, now - self.delay):
                for dt in DATA_TYPES:
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
        due.sort(key=_closing_order)
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
        data_types = [dt for dt in DATA_TYPES if dt in job.params.get("data_types", DATA_TYPES)]
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
        """Delete the files of exports older than the retention; they answer NOT_EXISTS."""
        cutoff = _naive(now or self.clock()) - self.retention
        c = t.exports.c
        with self._engine.connect() as conn:
            old = [
                Export.from_row(r)
                for r in conn.execute(
                    sa.select(t.exports).where(c.period_end <= cutoff, c.state != PURGED)
                )
            ]
        for export in old:
            shutil.rmtree(self._dir(export), ignore_errors=True)
            self._update(export.id, state=PURGED, parts=None)
        return len(old)

    def backfill(
        self, project: Project, start: datetime, end: datetime, export_type: str | None = None
    ) -> int:
        """Write the missing or failed exports of the closed periods in ``[start, end)``."""
        now = _naive(self.clock())
        start = max(start, _naive_utc(project.created_at), now - self.retention)
        end = min(end, now - self.delay)
        todo = [
            (project, period, dt)
            for et in ([export_type] if export_type else list(EXPORT_TYPES))
            for period in self.periods(project, et, start, end)
            for dt in DATA_TYPES
        ]
        todo.sort(key=_closing_order)
        if not todo:
            return 0
        return self._execute(todo, None, self.barrier())

    def _update(self, export_id: int, **values: Any) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.update(t.exports).where(t.exports.c.id == export_id).values(**values))

    def _write(self, export: Export, stop: threading.Event | None = None) -> tuple[list[Part], int]:
        final = self._dir(export)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        stem = f"{export.data_type}_{export.export_type}_{export.period_start:%Y%m%d%H}_UTC"
        batches = _until(self._batches(export), stop)
        try:
            if export.format == "parquet":
                parts = _ParquetParts(tmp, stem, self.part_bytes).write(batches)
            else:
                render = _jsonl if export.format == "jsonl" else _csv
                ext = ".jsonl.gz" if export.format == "jsonl" else ".csv.gz"
                gz = _GzipParts(tmp, stem, self.part_bytes, self.workers, ext, render)
                parts = gz.write(batches)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        total = sum(p.rows for p in parts)
        manifest = {
            "exportType": export.export_type,
            "dataType": export.data_type,
            "periodStart": f"{export.period_start:%Y-%m-%dT%H:%M:%SZ}",
            "periodEnd": f"{export.period_end:%Y-%m-%dT%H:%M:%SZ}",
            "rows": total,
            "parts": [p.public() for p in parts],
        }
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
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
            yield columns.members(batch, segs, keys)

    def _login(self, project_id: int) -> Property | None:
        """The user property the project exports as ``loginUserId`` (None: our user id)."""
        key = self.catalog.project(project_id).login_user_key
        return None if key is None else self.catalog.schema(project_id).user.get(key)

    def _batches(self, export: Export) -> Iterator[pa.RecordBatch]:
        """The export's rows in its data type's columns (:mod:`opencdp.exports.columns`)."""
        schema = self.catalog.schema(export.project_id)
        if export.data_type == "user_cluster":
            yield from self._memberships(export)
            return
        if export.data_type == "user":
            props = list(schema.user.values())
            for batch in self.store.export_profiles(
                export.project_id,
                props,
                export.period_start,
                export.period_end,
                self._login(export.project_id),
            ):
                yield columns.profiles(batch, props)
            return
        names = None if export.data_type == "custom_event" else [export.data_type]
        exclude = [d for d in EVENT_TYPES if d != "custom_event"] if names is None else None
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
            yield columns.events(export.data_type, batch, props)


def _closing_order(item: tuple[Project, Period, str]) -> tuple[datetime, datetime, int, int, int]:
    """Oldest first: by the end of the period, then project, export type and data type."""
    project, period, dt = item
    return (
        period.end,
        period.start,
        project.id,
        EXPORT_TYPES.index(period.export_type),
        DATA_TYPES.index(dt),
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


class _GzipParts:
    """Batches → gzip text parts (CSV with a header row, or JSON lines) of at most ``limit``
    bytes.

    Rows are rendered to CSV by pyarrow a chunk at a time (about ``CHUNK_BYTES`` of text), and
    each chunk is compressed as a gzip member of its own by a pool of threads (zlib releases
    the GIL), a few chunks ahead of the writer, which appends the members in order. A gzip
    file may hold several members and reads as one stream, so a part's size is known exactly
    as it is written, and a part ends before a member that would take it over the limit (a
    single row larger than the limit makes a part of its own). Parts end on row boundaries."""

    def __init__(
        self,
        folder: Path,
        stem: str,
        limit: int,
        workers: int,
        ext: str,
        render: Callable[[pa.RecordBatch], bytes],
    ) -> None:
        self.folder, self.stem, self.limit, self.workers = folder, stem, limit, workers
        self.ext, self.render = ext, render
        # Chunks small enough for small limits, large enough to compress well.
        self.chunk_bytes = max(256, min(CHUNK_BYTES, limit // 4))
        self.parts: list[Part] = []
        self._file: BinaryIO | None = None
        self._digest = hashlib.sha256()
        self._size = self._rows = 0
        self._header = b""

    def write(self, batches: Iterator[pa.RecordBatch]) -> list[Part]:
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="export-gzip") as pool:
                pending: deque[tuple[Future[bytes], pa.RecordBatch]] = deque()
                for rows, text in self._chunks(batches):
                    pending.append((pool.submit(gzip.compress, text, GZIP_LEVEL, mtime=0), rows))
                    while len(pending) > 2 * self.workers:
                        future, done = pending.popleft()
                        self._append(future.result(), done)
                while pending:
                    future, done = pending.popleft()
                    self._append(future.result(), done)
        except BaseException:
            if self._file is not None:
                self._file.close()
            raise
        self._close()
        return self.parts

    def _chunks(self, batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, bytes]]:
        per_chunk = 64
        for batch in batches:
            if not self._header and self.render is _csv:
                self._header = gzip.compress(_csv_header(batch.schema), GZIP_LEVEL, mtime=0)
            start = 0
            while start < batch.num_rows:
                rows = batch.slice(start, per_chunk)
                text = self.render(rows)
                yield rows, text
                start += rows.num_rows
                # Aim the next chunk at the chunk size from this chunk's bytes per row.
                per_chunk = max(1, self.chunk_bytes * rows.num_rows // max(1, len(text)))

    def _append(self, member: bytes, rows: pa.RecordBatch) -> None:
        if self._file is not None and self._size + len(member) > self.limit and self._rows:
            self._close()
        if len(self._header) + len(member) > self.limit and rows.num_rows > 1:
            # Too big even for a part of its own: in two halves (rows stay whole).
            half = rows.num_rows // 2
            for piece in (rows.slice(0, half), rows.slice(half)):
                self._append(gzip.compress(self.render(piece), GZIP_LEVEL, mtime=0), piece)
            return
        if self._file is None:
            name = f"{self.stem}_part{len(self.parts) + 1:04d}{self.ext}"
            self._name, self._file = name, (self.folder / name).open("wb")
            self._digest, self._size, self._rows = hashlib.sha256(), 0, 0
            if self._header:
                self._put(self._header)
        self._put(member)
        self._rows += rows.num_rows

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._digest.update(data)
        self._size += len(data)

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.parts.append(Part(self._name, self._rows, self._size, self._digest.hexdigest()))
        self._file = None


class _ParquetParts:
    """Batches → zstd Parquet parts, closed before a row group that would (at the size of the
    largest so far, with room for the footer) take a part over ``limit``."""

    ROW_GROUP = 65_536

    def __init__(self, folder: Path, stem: str, limit: int) -> None:
        self.folder, self.stem, self.limit = folder, stem, limit
        self.parts: list[Part] = []
        self._writer: pq.ParquetWriter | None = None
        self._largest = 0
        self._rows = 0
        self._name = ""
        self._path = folder

    def write(self, batches: Iterator[pa.RecordBatch]) -> list[Part]:
        try:
            self._write(batches)
        except BaseException:
            if self._writer is not None:
                self._writer.close()
            raise
        self._close()
        return self.parts

    def _write(self, batches: Iterator[pa.RecordBatch]) -> None:
        for batch in batches:
            for start in range(0, batch.num_rows, self.ROW_GROUP):
                rows = batch.slice(start, self.ROW_GROUP)
                if (
                    self._writer is not None
                    and self._rows
                    and (
                        self._path.stat().st_size + self._largest * 3 // 2 + (64 << 10) > self.limit
                    )
                ):
                    self._close()
                if self._writer is None:
                    name = f"{self.stem}_part{len(self.parts) + 1:04d}.parquet"
                    self._name, self._path, self._rows = name, self.folder / name, 0
                    self._writer = pq.ParquetWriter(self._path, rows.schema, compression="zstd")
                before = self._path.stat().st_size
                self._writer.write_batch(rows)
                self._largest = max(self._largest, self._path.stat().st_size - before)
                self._rows += rows.num_rows

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        digest = hashlib.sha256()
        with self._path.open("r+b") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
            os.fsync(f.fileno())
        size = self._path.stat().st_size
        self.parts.append(Part(self._name, self._rows, size, digest.hexdigest()))


def _jsonl(rows: pa.RecordBatch) -> bytes:
    """JSON lines; a column of JSON text (the variables, identities) as the object itself."""
    names = rows.schema.names
    values: list[list[Any]] = []
    for field, column in zip(rows.schema, rows.columns, strict=True):
        vals = column.to_pylist()
        if columns.is_json(field):
            vals = [None if v is None else orjson.Fragment(v) for v in vals]
        values.append(vals)
    rows_out = (dict(zip(names, r, strict=True)) for r in zip(*values, strict=True))
    return b"".join(orjson.dumps(r) + b"\n" for r in rows_out)


def _csv(rows: pa.RecordBatch) -> bytes:
    r"""Rows as GrowingIO's CSV: cells separated by ``,``; a cell that holds a delimiter, a
    quote, a backslash or a line break in ``"``, with ``\`` as the escape character (``\"``
    for a quote, ``\\`` for a backslash). That is the vendor's format page, and what its
    readers are set up for (Spark and Hive with escape ``\``, Python's ``csv`` with
    ``escapechar``). Built a column at a time with Arrow kernels."""
    if rows.num_rows == 0:
        return b""
    cells = [_csv_cell(column) for column in rows.columns]
    lines = pc.binary_join_element_wise(*cells, ",")
    if not isinstance(lines, pa.Array):  # (every cell empty: no array came in)
        lines = pa.array([lines.as_py()] * rows.num_rows, pa.string())
    return _concatenated(pc.binary_join_element_wise(lines, _NEWLINE, ""))


def _csv_header(schema: pa.Schema) -> bytes:
    return (",".join(schema.names) + "\n").encode()


_NEWLINE = pa.scalar("\n")
_SPECIAL = r'[,"\\\r\n]'


def _csv_cell(column: pa.Array) -> pa.Array | pa.Scalar:
    if column.null_count == len(column):
        return _EMPTY  # (a column we hold no data for: one scalar, not a row of empty strings)
    if not pa.types.is_string(column.type):
        return pc.fill_null(pc.cast(column, pa.string()), "")
    special = pc.match_substring_regex(column, _SPECIAL)
    if not pc.any(special).as_py():
        return pc.fill_null(column, "")
    escaped = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    if pc.all(special).as_py():  # (JSON columns: every value has quotes)
        return pc.fill_null(quoted, "")
    return pc.fill_null(pc.if_else(special, quoted, column), "")


_EMPTY = pa.scalar("")


def _concatenated(text: pa.Array) -> bytes:
    """The values of a string array (no nulls) one after another: its data buffer."""
    offsets = text.buffers()[1]
    first, last = (
        int.from_bytes(offsets[i * 4 : i * 4 + 4], "little", signed=True)
        for i in (text.offset, text.offset + len(text))
    )
    data: bytes = text.buffers()[2][first:last].to_pybytes()
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def _naive_utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is None else _naive(dt)
