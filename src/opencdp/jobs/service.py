"""Durable jobs in the metadata DB, and the worker threads that run them.

A job is ``queued`` until a worker takes it (``running``), then ``complete`` or ``failed``. Work
is idempotent by construction (each job records its progress in the store in the same
transaction as the rows it writes), so a job found ``running`` at start-up, interrupted by a
crash or a restart, is simply queued again and resumes where its last commit left it.

A job stopped by a passing condition (a full disk, an I/O error, a locked database) is not
failed: it is queued again with its message saying why, and tried again after a pause that
grows up to ``MAX_RETRY_DELAY``; it resumes where its last commit left it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from opencdp.errors import CdpError, Code
from opencdp.faults import describe, is_transient
from opencdp.meta import tables as t

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETE, FAILED = "queued", "running", "complete", "failed"
ACTIVE = (QUEUED, RUNNING)
MIN_RETRY_DELAY, MAX_RETRY_DELAY = 1.0, 60.0


@dataclass(frozen=True)
class Job:
    id: int
    project_id: int
    kind: str
    surface: str
    state: str
    params: dict[str, Any]
    file_id: int | None
    rows_read: int
    imported: int
    failed: int
    warnings: int
    message: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(**{c: getattr(row, c) for c in cls.__dataclass_fields__})

    @property
    def done(self) -> bool:
        return self.state in (COMPLETE, FAILED)


@dataclass
class Outcome:
    """What a job handler reports: the final counters and a message."""

    ok: bool
    message: str
    rows_read: int = 0
    imported: int = 0
    failed: int = 0
    warnings: int = 0


@dataclass(frozen=True)
class JobLimits:
    concurrent_per_project: int = 2
    queued_per_project: int = 10  # counting the running ones
    workers: int = 2


Handler = Callable[["Job", "Progress"], Outcome]


class Progress:
    """Handed to a running job so that it can publish its counters as it goes."""

    def __init__(self, jobs: Jobs, job_id: int) -> None:
        self._jobs, self._id = jobs, job_id

    def report(self, rows_read: int, imported: int, failed: int, warnings: int) -> None:
        self._jobs._update(
            self._id, rows_read=rows_read, imported=imported, failed=failed, warnings=warnings
        )


class Jobs:
    def __init__(
        self,
        engine: sa.Engine,
        limits: JobLimits | None = None,
        transient: Callable[[BaseException], bool] = is_transient,
    ) -> None:
        self._engine = engine
        self.limits = limits or JobLimits()
        self._transient = transient
        self._retry_at: dict[int, tuple[float, float]] = {}  # job id -> (monotonic, delay)
        self._handlers: dict[str, Handler] = {}
        self._cond = threading.Condition()
        self._claim_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # ---- the queue -----------------------------------------------------------------------
    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def submit(
        self,
        project_id: int,
        kind: str,
        surface: str,
        params: dict[str, Any],
        file_id: int | None = None,
    ) -> Job:
        """Queue a job, or refuse with ``busy`` when the project's queue is full."""
        with self._claim_lock, self._engine.begin() as conn:
            active = conn.execute(
                sa.select(sa.func.count())
                .select_from(t.jobs)
                .where(t.jobs.c.project_id == project_id, t.jobs.c.state.in_(ACTIVE))
            ).scalar_one()
            if active >= self.limits.queued_per_project:
                raise CdpError(
                    Code.BUSY,
                    f"{active} jobs are queued or running for this project, at most "
                    f"{self.limits.queued_per_project} are allowed; retry later",
                )
            job_id = conn.execute(
                sa.insert(t.jobs).values(
                    project_id=project_id,
                    kind=kind,
                    surface=surface,
                    state=QUEUED,
                    params=params,
                    file_id=file_id,
                    rows_read=0,
                    imported=0,
                    failed=0,
                    warnings=0,
                    message="",
                    attempts=0,
                    created_at=t.utcnow(),
                )
            ).inserted_primary_key
            assert job_id is not None
        with self._cond:
            self._cond.notify_all()
        return self.get(project_id, int(job_id[0]))

    def get(self, project_id: int, job_id: int, surface: str | None = None) -> Job:
        """A job of this project (another project's job is not found, not revealed)."""
        query = sa.select(t.jobs).where(t.jobs.c.id == job_id, t.jobs.c.project_id == project_id)
        if surface is not None:
            query = query.where(t.jobs.c.surface == surface)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise CdpError(Code.NOT_FOUND, f"job {job_id} does not exist", "job_id")
        return Job.from_row(row)

    def list(self, project_id: int, limit: int = 100) -> list[Job]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.jobs)
                .where(t.jobs.c.project_id == project_id)
                .order_by(t.jobs.c.id.desc())
                .limit(limit)
            ).all()
        return [Job.from_row(r) for r in rows]

    def _update(self, job_id: int, **values: Any) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.update(t.jobs).where(t.jobs.c.id == job_id).values(**values))

    # ---- the workers ---------------------------------------------------------------------
    def start(self) -> None:
        """Queue again what a previous run left running, then start the workers."""
        with self._engine.begin() as conn:
            conn.execute(sa.update(t.jobs).where(t.jobs.c.state == RUNNING).values(state=QUEUED))
        self._stopping = False
        for n in range(self.limits.workers):
            th = threading.Thread(target=self._work, name=f"jobs-{n}", daemon=True)
            th.start()
            self._threads.append(th)

    def stop(self) -> None:
        """Stop taking jobs and wait for the running ones to reach a commit point."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for th in self._threads:
            th.join()
        self._threads.clear()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _claim(self) -> Job | None:
        with self._claim_lock, self._engine.begin() as conn:
            running: dict[int, int] = dict(
                conn.execute(
                    sa.select(t.jobs.c.project_id, sa.func.count())
                    .where(t.jobs.c.state == RUNNING)
                    .group_by(t.jobs.c.project_id)
                ).all()
            )
            queued = conn.execute(
                sa.select(t.jobs).where(t.jobs.c.state == QUEUED).order_by(t.jobs.c.id)
            ).all()
            now = time.monotonic()
            for row in queued:
                if running.get(row.project_id, 0) >= self.limits.concurrent_per_project:
                    continue
                if self._retry_at.get(row.id, (0.0, 0.0))[0] > now:
                    continue  # waiting out a passing condition
                conn.execute(
                    sa.update(t.jobs)
                    .where(t.jobs.c.id == row.id)
                    .values(
                        state=RUNNING,
                        attempts=row.attempts + 1,
                        started_at=row.started_at or t.utcnow(),
                    )
                )
                return Job.from_row(row)
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
            try:
                job = self._claim()
                if job is not None:
                    self._run(job)
            except Exception:  # the metadata DB failing (full disk, locked): keep the worker
                log.exception("job worker: the jobs table cannot be read or written; waiting")
                job = None
            if job is None:
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(1.0)
                continue
            with self._cond:
                self._cond.notify_all()  # a slot is free: another worker may take a job

    def _run(self, job: Job) -> None:
        handler = self._handlers.get(job.kind)
        try:
            if handler is None:
                raise RuntimeError(f"no handler for jobs of kind {job.kind!r}")
            outcome = handler(job, Progress(self, job.id))
        except Interrupted:
            # Stopping: leave it running; the next start queues it again and it resumes.
            return
        except CdpError as exc:
            outcome = Outcome(False, exc.message)
        except Exception as exc:
            if self._transient(exc):
                self._retry_later(job, exc)
                return
            log.exception("job %d failed", job.id)
            outcome = Outcome(False, "internal error")
        self._retry_at.pop(job.id, None)
        self._update(
            job.id,
            state=COMPLETE if outcome.ok else FAILED,
            message=outcome.message,
            rows_read=outcome.rows_read,
            imported=outcome.imported,
            failed=outcome.failed,
            warnings=outcome.warnings,
            finished_at=t.utcnow(),
        )

    def _retry_later(self, job: Job, exc: BaseException) -> None:
        delay = min(
            max(self._retry_at.get(job.id, (0.0, 0.0))[1] * 2, MIN_RETRY_DELAY), MAX_RETRY_DELAY
        )
        self._retry_at[job.id] = (time.monotonic() + delay, delay)
        log.warning("job %d waits %.0fs before it is tried again: %s", job.id, delay, exc)
        self._update(
            job.id,
            state=QUEUED,
            message=f"waiting to resume: {describe(exc)}; tried again in {delay:.0f} s",
        )


class Interrupted(Exception):
    """Raised by a handler between commits when the server is stopping."""
