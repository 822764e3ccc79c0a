"""Durable jobs in the metadata DB, and the worker threads that run them.

A job is ``queued`` until a worker takes it (``running``), then ``complete`` or ``failed``. Work
is idempotent by construction (each job records its progress in the store in the same
transaction as the rows it writes), so a job that is run again resumes where its last commit
left it.

**Leases.** Several processes may run workers on one metadata DB. A worker takes a job with one
atomic statement (:meth:`Jobs.claim`) that makes it the job's ``owner`` until ``lease_until``;
a heartbeat thread renews the leases of the jobs the process runs. A job whose lease expired
(its process died or hung) is taken over by any worker, which counts a lost lease; a job that
loses its lease ``max_lost`` times fails for good, saying so. Every write a worker makes to a
job it runs (progress, outcome) is *fenced*: it applies only while the worker still owns the
job and its lease has not expired, so a worker that lost a job cannot overwrite the new owner's
state; the runner learns it lost the job (:class:`LeaseLost`, ``Progress.cancelled``) and
stops. Nothing is re-queued at start-up: the leases of a crashed process expire.

**Lanes.** Jobs run in lanes, each with its own worker threads: imports and segment refreshes
in ``main``, under the per-project limits of :class:`JobLimits`; exports in
``export``, so that a project's imports never hold up the exports. Within a lane, the claim
takes the job of the project with the fewest jobs running in that lane first, then the oldest.

**Passing faults.** A job stopped by a passing condition (a full disk, an I/O error, a locked
database) is not failed: it is queued again with its message saying why, and not taken before
``run_after``, a pause that grows up to ``MAX_RETRY_DELAY``; it resumes where its last commit
left it.

**De-duplication.** A job submitted with a ``dedupe`` key is refused while another active job
has that key (a unique index, so whichever process submits it): scheduled work is never queued
twice. The key is cleared once the job is done.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from opencdp.errors import CdpError, Code
from opencdp.faults import describe, is_transient
from opencdp.meta import tables as t

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETE, FAILED = "queued", "running", "complete", "failed"
ACTIVE = (QUEUED, RUNNING)
MAIN, EXPORT = "main", "export"  # lanes
LANES = (MAIN, EXPORT)
MIN_RETRY_DELAY, MAX_RETRY_DELAY = 1.0, 60.0
# PostgreSQL advisory lock scopes (first key): job claims of a lane, submissions of a project.
_CLAIMS, _SUBMITS = 0x4F43_4C41, 0x4F43_5355


def serialize(conn: sa.Connection, scope: int, key: int) -> None:
    """Hold a lock on ``(scope, key)`` until ``conn``'s transaction ends, where the database
    needs one to make a check and the write it allows one step: PostgreSQL (a transaction-level
    advisory lock; under READ COMMITTED two transactions would both pass a count and both
    write). SQLite's single writer lock does it already."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(CAST(:scope AS integer), CAST(:key AS integer))"),
            {"scope": scope, "key": key & 0x7FFF_FFFF},
        )


IDLE_POLL = 1.0  # seconds a worker waits before looking again (jobs of other processes)


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
    lane: str
    owner: str | None
    lease_until: datetime | None
    lost_leases: int
    run_after: datetime | None
    dedupe_key: str | None

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
    concurrent_per_project: int = 2  # main lane: jobs running at once per project
    queued_per_project: int = 10  # main lane, counting the running ones
    workers: int = 2  # main lane's worker threads
    export_workers: int = 2  # export lane's worker threads
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0  # a fraction of the lease: a late beat or two is harmless
    max_lost: int = 3  # leases a job may lose (its worker died) before it fails


Handler = Callable[["Job", "Progress"], Outcome]


class Interrupted(Exception):
    """Raised by a handler between commits when the server is stopping."""


class LeaseLost(Exception):
    """The worker no longer owns the job (its lease expired; another worker may run it)."""


class Progress:
    """Handed to a running job: publishes its counters as it goes (fenced by the lease), and
    tells it when to stop (``cancelled``: the server is stopping, or the lease was lost).

    Made without an ``owner`` (a handler called directly), its writes are not fenced."""

    def __init__(self, jobs: Jobs, job_id: int, owner: str | None = None) -> None:
        self._jobs, self._id, self.owner = jobs, job_id, owner
        self.cancelled = threading.Event()
        self.lost = False

    @property
    def job_id(self) -> int:
        return self._id

    def report(self, rows_read: int, imported: int, failed: int, warnings: int) -> None:
        values = {"rows_read": rows_read, "imported": imported, "failed": failed}
        if not self._jobs.write(self._id, self.owner, warnings=warnings, **values):
            self.lose()
            raise LeaseLost(f"job {self._id}: the lease was lost; another worker may run it")

    def check(self) -> None:
        """Renew the lease now; raise :class:`LeaseLost` when it is no longer ours (a fence
        before a step that another owner must not see done twice)."""
        if self.owner is not None and not self._jobs.renew(self._id, self.owner):
            self.lose()
        if self.lost:
            raise LeaseLost(f"job {self._id}: the lease was lost; another worker may run it")

    def lose(self) -> None:
        self.lost = True
        self.cancelled.set()


class Jobs:
    def __init__(
        self,
        engine: sa.Engine,
        limits: JobLimits | None = None,
        transient: Callable[[BaseException], bool] = is_transient,
        clock: Callable[[], datetime] = t.utcnow,
        returning: bool | None = None,
    ) -> None:
        """``clock``: naive UTC now, for leases and retry times. ``returning``: claim with one
        ``UPDATE … RETURNING`` statement (default: where the database supports it)."""
        self._engine = engine
        self.limits = limits or JobLimits()
        self._transient = transient
        self.clock = clock
        self.returning = engine.dialect.update_returning if returning is None else returning
        self._retry_delay: dict[int, float] = {}  # job id -> last pause (growing)
        self._handlers: dict[str, Handler] = {}
        self._lanes: dict[str, str] = {}  # kind -> lane
        self._cond = threading.Condition()
        self._submit_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._heart: threading.Thread | None = None
        self._halt = threading.Event()  # stops the heartbeat
        self._stopping = False
        self._running: dict[int, Progress] = {}  # the jobs this process runs
        self._running_lock = threading.Lock()
        self._local = threading.local()
        self._node = f"{socket.gethostname()[:60]}/{os.getpid()}"

    # ---- the queue -----------------------------------------------------------------------
    def register(self, kind: str, handler: Handler, lane: str = MAIN) -> None:
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        self._handlers[kind] = handler
        self._lanes[kind] = lane

    def lane(self, kind: str) -> str:
        return self._lanes.get(kind, MAIN)

    def submit(
        self,
        project_id: int,
        kind: str,
        surface: str,
        params: dict[str, Any],
        file_id: int | None = None,
        dedupe: str | None = None,
    ) -> Job:
        """Queue a job, or refuse with ``busy`` when the project's queue (main lane) is full
        or, with ``dedupe``, when an active job already has that key."""
        lane = self.lane(kind)
        values = {
            "project_id": project_id,
            "kind": kind,
            "surface": surface,
            "state": QUEUED,
            "params": params,
            "file_id": file_id,
            "rows_read": 0,
            "imported": 0,
            "failed": 0,
            "warnings": 0,
            "message": "",
            "attempts": 0,
            "created_at": self.clock(),
            "lane": lane,
            "lost_leases": 0,
            "dedupe_key": dedupe,
        }
        limit = self.limits.queued_per_project if lane == MAIN else None
        try:
            job_id = self._insert(values, limit)
        except sa.exc.IntegrityError:
            if dedupe is None or not self._holds(dedupe):
                raise
            raise CdpError(Code.BUSY, "this work is already queued or running") from None
        if job_id is None:
            active = self._active(project_id, lane)
            raise CdpError(
                Code.BUSY,
                f"{active} jobs are queued or running for this project, at most "
                f"{self.limits.queued_per_project} are allowed; retry later",
            )
        with self._cond:
            self._cond.notify_all()
        return self.get(project_id, job_id)

    def _insert(self, values: dict[str, Any], limit: int | None) -> int | None:
        """Insert the job unless its project has ``limit`` active jobs in its lane; its id, or
        None. With RETURNING, one ``INSERT … SELECT … WHERE (count) < limit``, so processes
        submitting at once never pass the limit together; else a count and an insert."""
        c = t.jobs.c
        active = (
            sa.select(sa.func.count())
            .select_from(t.jobs)
            .where(
                c.project_id == values["project_id"],
                c.lane == values["lane"],
                c.state.in_(ACTIVE),
            )
            .scalar_subquery()
        )
        if self.returning and self._engine.dialect.insert_returning:
            source = sa.select(*(sa.literal(v, c[k].type).label(k) for k, v in values.items()))
            if limit is not None:
                source = source.where(active < limit)
            with self._engine.begin() as conn:
                serialize(conn, _SUBMITS, int(values["project_id"]))
                row = conn.execute(
                    sa.insert(t.jobs).from_select(list(values), source).returning(c.id)
                ).first()
            return None if row is None else int(row[0])
        with self._submit_lock, self._engine.begin() as conn:
            serialize(conn, _SUBMITS, int(values["project_id"]))
            if limit is not None and conn.execute(sa.select(active)).scalar_one() >= limit:
                return None
            key = conn.execute(sa.insert(t.jobs).values(**values)).inserted_primary_key
            assert key is not None
            return int(key[0])

    def _holds(self, key: str) -> bool:
        """Whether an active job has the de-duplication key ``key``."""
        with self._engine.connect() as conn:
            found = conn.execute(
                sa.select(t.jobs.c.id).where(t.jobs.c.dedupe_key == key).limit(1)
            ).first()
        return found is not None

    def _active(self, project_id: int, lane: str) -> int:
        c = t.jobs.c
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t.jobs)
                    .where(c.project_id == project_id, c.lane == lane, c.state.in_(ACTIVE))
                ).scalar_one()
            )

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

    def list(self, project_id: int, limit: int = 100, kind: str | None = None) -> list[Job]:
        query = sa.select(t.jobs).where(t.jobs.c.project_id == project_id)
        if kind is not None:
            query = query.where(t.jobs.c.kind == kind)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(t.jobs.c.id.desc()).limit(limit)).all()
        return [Job.from_row(r) for r in rows]

    def active_keys(self, kind: str) -> set[str]:
        """The de-duplication keys of the active jobs of ``kind``."""
        c = t.jobs.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.dedupe_key).where(
                    c.kind == kind, c.state.in_(ACTIVE), c.dedupe_key.is_not(None)
                )
            ).all()
        return {str(r[0]) for r in rows}

    def holder(self, key: str) -> Job | None:
        """The active job with the de-duplication key ``key``, if any (whichever process
        queued it)."""
        c = t.jobs.c
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.jobs).where(c.dedupe_key == key, c.state.in_(ACTIVE)).limit(1)
            ).first()
        return None if row is None else Job.from_row(row)

    def purge(self, kind: str, before: datetime) -> int:
        """Delete the finished jobs of ``kind`` that finished before ``before``."""
        c = t.jobs.c
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.delete(t.jobs).where(
                    c.kind == kind, c.state.in_([COMPLETE, FAILED]), c.finished_at < before
                )
            )
        return int(done.rowcount)

    # ---- leases --------------------------------------------------------------------------
    def claim(self, lane: str, owner: str) -> Job | None:
        """Take one job of ``lane`` for ``owner``, atomically: the oldest job of the project
        with the fewest jobs running in the lane, among the queued ones whose retry time has
        come and the running ones whose lease expired (a takeover: it counts a lost lease),
        in projects under the lane's limit of running jobs. Returns it as claimed, or None.

        With RETURNING (SQLite 3.35+, PostgreSQL) this is one statement::

            UPDATE jobs SET state = 'running', owner = :owner, lease_until = :now + :lease,
                   attempts = attempts + 1, started_at = coalesce(started_at, :now),
                   lost_leases = lost_leases + (CASE WHEN state = 'running' THEN 1 ELSE 0 END),
                   run_after = NULL
            WHERE id = (
                SELECT j.id FROM jobs j
                WHERE j.lane = :lane
                  AND ((j.state = 'queued' AND (j.run_after IS NULL OR j.run_after <= :now))
                       OR (j.state = 'running' AND (j.lease_until IS NULL
                                                    OR j.lease_until <= :now)))
                  AND (SELECT count(*) FROM jobs r WHERE r.project_id = j.project_id
                       AND r.lane = j.lane AND r.state = 'running'
                       AND r.lease_until > :now) < :limit
                ORDER BY (that count), j.id
                LIMIT 1
                FOR UPDATE SKIP LOCKED   -- PostgreSQL: concurrent claims skip a taken row
            )
            RETURNING jobs.*

        SQLite runs the statement under its single writer lock, so two processes never take
        one job (SQLite has no ``FOR UPDATE``: it is left out there). PostgreSQL runs it after
        taking the lane's advisory lock (:func:`serialize`): ``SKIP LOCKED`` alone keeps two
        claims off one row, but under READ COMMITTED both would count the same running jobs
        and pass the project's limit together. Without RETURNING, the
        candidate is taken by an ``UPDATE`` conditional on it still being claimable; a row
        count of 0 means another worker took it first. Either way the candidate query runs
        once as a plain read before: when there is nothing to take (an idle worker's poll),
        no write lock is asked for."""
        now = self.clock()
        c = t.jobs.c
        j, r = t.jobs.alias("j"), t.jobs.alias("r")
        running = (
            sa.select(sa.func.count())
            .select_from(r)
            .where(
                r.c.project_id == j.c.project_id,
                r.c.lane == j.c.lane,
                r.c.state == RUNNING,
                r.c.lease_until > now,
            )
            .scalar_subquery()
        )

        def claimable(x: Any) -> sa.ColumnElement[bool]:
            return sa.or_(
                sa.and_(x.state == QUEUED, sa.or_(x.run_after.is_(None), x.run_after <= now)),
                sa.and_(x.state == RUNNING, sa.or_(x.lease_until.is_(None), x.lease_until <= now)),
            )

        candidate = (
            sa.select(j.c.id)
            .where(j.c.lane == lane, claimable(j.c), running < self._lane_limit(lane))
            .order_by(running, j.c.id)
            .limit(1)
            # PostgreSQL: concurrent claims skip a taken row. SQLite has no FOR UPDATE, and
            # SQLAlchemy leaves it out there: its single writer lock serializes the claims.
            .with_for_update(skip_locked=True, of=j)
        )
        take = sa.update(t.jobs).values(
            state=RUNNING,
            owner=owner,
            lease_until=now + timedelta(seconds=self.limits.lease_seconds),
            attempts=c.attempts + 1,
            started_at=sa.func.coalesce(c.started_at, now),
            lost_leases=c.lost_leases + sa.case((c.state == RUNNING, 1), else_=0),
            run_after=None,
        )
        with self._engine.connect() as conn:
            # A read first: an idle worker looks without taking the database's write lock.
            found = conn.execute(candidate).scalar()
        if found is None:
            return None
        with self._engine.begin() as conn:
            # (the count of running jobs and the claim it allows, one step across processes)
            serialize(conn, _CLAIMS, LANES.index(lane))
            if self.returning:
                row = conn.execute(
                    take.where(c.id == candidate.scalar_subquery()).returning(*t.jobs.c)
                ).first()
                return None if row is None else Job.from_row(row)
            if conn.execute(take.where(c.id == found, claimable(c))).rowcount != 1:
                return None  # another worker took it first
            return Job.from_row(conn.execute(sa.select(t.jobs).where(c.id == found)).one())

    def _lane_limit(self, lane: str) -> int:
        if lane == MAIN:
            return self.limits.concurrent_per_project
        return max(1, self.limits.export_workers)

    def _fence(self, job_id: int, owner: str | None, now: datetime) -> sa.ColumnElement[bool]:
        c = t.jobs.c
        if owner is None:
            return c.id == job_id
        return sa.and_(c.id == job_id, c.owner == owner, c.state == RUNNING, c.lease_until > now)

    def write(self, job_id: int, owner: str | None, /, **values: Any) -> bool:
        """Update a job that ``owner`` runs, only while it still holds the lease (``owner``
        None: unconditionally). False when the write was refused: the job is lost."""
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.update(t.jobs).where(self._fence(job_id, owner, self.clock())).values(**values)
            )
        return bool(done.rowcount == 1)

    def renew(self, job_id: int, owner: str) -> bool:
        """Extend ``owner``'s lease of a job by a full lease; False if it is no longer held."""
        now = self.clock()
        until = now + timedelta(seconds=self.limits.lease_seconds)
        with self._engine.begin() as conn:
            done = conn.execute(
                sa.update(t.jobs).where(self._fence(job_id, owner, now)).values(lease_until=until)
            )
        return bool(done.rowcount == 1)

    def finish(self, job_id: int, owner: str | None, outcome: Outcome) -> bool:
        """Record a job's outcome (fenced); False when the lease was lost meanwhile."""
        self._retry_delay.pop(job_id, None)
        return self.write(
            job_id,
            owner,
            state=COMPLETE if outcome.ok else FAILED,
            message=outcome.message,
            rows_read=outcome.rows_read,
            imported=outcome.imported,
            failed=outcome.failed,
            warnings=outcome.warnings,
            finished_at=self.clock(),
            lease_until=None,
            dedupe_key=None,
        )

    def release(self, job_id: int, owner: str, message: str = "", delay: float = 0.0) -> bool:
        """Give a job back to the queue (fenced), to be taken again after ``delay`` seconds."""
        after = self.clock() + timedelta(seconds=delay) if delay > 0 else None
        values: dict[str, Any] = {"state": QUEUED, "owner": None, "lease_until": None}
        if message:
            values["message"] = message
        return self.write(job_id, owner, run_after=after, **values)

    # ---- the workers ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers of each lane and the heartbeat. Jobs a crashed process left
        running are taken over once their leases expire."""
        self._stopping = False
        self._halt.clear()
        lanes = [(MAIN, self.limits.workers), (EXPORT, self.limits.export_workers)]
        for lane, count in lanes:
            for n in range(count):
                th = threading.Thread(
                    target=self._work, args=(lane,), name=f"jobs-{lane}-{n}", daemon=True
                )
                th.start()
                self._threads.append(th)
        self._heart = threading.Thread(target=self._beat, name="jobs-heartbeat", daemon=True)
        self._heart.start()

    def stop(self) -> None:
        """Stop taking jobs, ask the running ones to stop at their next commit point, and wait
        for them; an interrupted job is queued again for any worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        with self._running_lock:
            for progress in self._running.values():
                progress.cancelled.set()
        for th in self._threads:
            th.join()
        self._threads.clear()
        self._halt.set()
        if self._heart is not None:
            self._heart.join()
            self._heart = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def cancelled(self) -> bool:
        """Whether the job the calling worker thread runs should stop at its next commit
        point: the server is stopping, or the job's lease was lost."""
        progress: Progress | None = getattr(self._local, "progress", None)
        return self._stopping or (progress is not None and progress.cancelled.is_set())

    def _beat(self) -> None:
        """Renew the leases of the jobs this process runs; a refused renewal marks the job
        lost, so that its runner stops."""
        while not self._halt.wait(self.limits.heartbeat_seconds):
            self.beat()

    def beat(self) -> None:
        """One heartbeat: renew every lease this process holds."""
        with self._running_lock:
            held = list(self._running.values())
        for progress in held:
            if progress.owner is None or progress.lost:
                continue
            try:
                if not self.renew(progress.job_id, progress.owner):
                    log.warning("job %d: its lease was lost; stopping it", progress.job_id)
                    progress.lose()
            except Exception:  # the metadata DB failing: the lease may still be renewed later
                log.exception("job %d: the lease could not be renewed", progress.job_id)

    def _work(self, lane: str) -> None:
        owner = f"{self._node}/{threading.current_thread().name}/{uuid.uuid4().hex[:16]}"
        while True:
            with self._cond:
                if self._stopping:
                    return
            try:
                job = self.claim(lane, owner)
                if job is not None:
                    self.run(job, owner)
            except Exception:  # the metadata DB failing (full disk, locked): keep the worker
                log.exception("job worker: the jobs table cannot be read or written; waiting")
                job = None
            if job is None:
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(IDLE_POLL)
                continue
            with self._cond:
                self._cond.notify_all()  # a slot is free: another worker may take a job

    def run(self, job: Job, owner: str | None) -> None:
        """Run a claimed job to its outcome (``owner``: the claim's, fencing every write)."""
        if owner is not None and job.lost_leases >= self.limits.max_lost:
            self.finish(
                job.id,
                owner,
                Outcome(
                    False,
                    f"the job's worker stopped {job.lost_leases} times before it finished (its "
                    "process died or hung); it is not tried again",
                    job.rows_read,
                    job.imported,
                    job.failed,
                    job.warnings,
                ),
            )
            return
        progress = Progress(self, job.id, owner)
        with self._running_lock:
            self._running[job.id] = progress
        if self._stopping:
            progress.cancelled.set()
        self._local.progress = progress
        try:
            self._run(job, progress)
        finally:
            self._local.progress = None
            with self._running_lock:
                self._running.pop(job.id, None)

    def _run(self, job: Job, progress: Progress) -> None:
        owner = progress.owner
        handler = self._handlers.get(job.kind)
        try:
            if handler is None:
                raise RuntimeError(f"no handler for jobs of kind {job.kind!r}")
            outcome = handler(job, progress)
        except LeaseLost:
            log.warning("job %d: lost its lease; left to its new owner", job.id)
            return
        except Interrupted:
            if owner is not None and not progress.lost:
                self.release(job.id, owner)  # any worker takes it again, and it resumes
            return
        except CdpError as exc:
            outcome = Outcome(False, exc.message)
        except Exception as exc:
            if self._transient(exc):
                self._retry_later(job, owner, exc)
                return
            log.exception("job %d failed", job.id)
            outcome = Outcome(False, "internal error")
        if not self.finish(job.id, owner, outcome):
            log.warning("job %d: lost its lease before it finished; its outcome is dropped", job.id)

    def _retry_later(self, job: Job, owner: str | None, exc: BaseException) -> None:
        delay = min(max(self._retry_delay.get(job.id, 0.0) * 2, MIN_RETRY_DELAY), MAX_RETRY_DELAY)
        self._retry_delay[job.id] = delay
        log.warning("job %d waits %.0fs before it is tried again: %s", job.id, delay, exc)
        message = f"waiting to resume: {describe(exc)}; tried again in {delay:.0f} s"
        if owner is None:
            self.write(job.id, None, state=QUEUED, message=message)
        else:
            self.release(job.id, owner, message, delay)
