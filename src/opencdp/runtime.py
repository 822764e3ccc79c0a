"""The running server's parts, wired together once: settings, metadata, catalog, store, ingest."""

from __future__ import annotations

import logging
import secrets as pysecrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from opencdp import datadir
from opencdp.blobs import open_blobs
from opencdp.catalog.secrets import read_or_create_private
from opencdp.catalog.service import Catalog
from opencdp.config import Settings
from opencdp.exports import columns
from opencdp.exports.service import JOB_KIND, Exports
from opencdp.faults import is_transient
from opencdp.health import Health
from opencdp.imports.files import Files
from opencdp.imports.pipeline import ImportRunner
from opencdp.ingest.apply import Applied
from opencdp.ingest.service import IngestService
from opencdp.jobs.service import EXPORT, JobLimits, Jobs
from opencdp.meta.db import connect, starting
from opencdp.meta.progress import ProgressLog
from opencdp.metrics import Metrics
from opencdp.segments.sandbox import Sandbox
from opencdp.segments.service import Segments
from opencdp.store import open_store
from opencdp.store.base import Budget, Store

log = logging.getLogger("opencdp")

CATCH_UP_TICK = 1.0  # seconds between scheduler ticks while due exports wait for a job


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    store: Store
    ingest: IngestService
    admin_token: str
    files: Files
    jobs: Jobs
    segments: Segments
    exports: Exports
    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=Health)
    started: bool = False
    _ticker: threading.Event = field(default_factory=threading.Event)
    _scheduler: threading.Thread | None = None
    works: bool = True  # (whether this process applies the queue, runs jobs and the scheduler)

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        datadir.prepare(settings)
        engine = connect(settings.meta_url_resolved)
        with starting(engine):
            server_key = datadir.server_key(settings, engine)
        catalog = Catalog(
            engine,
            server_key,
            settings.limits.max_project_properties,
            refresh_seconds=settings.catalog_refresh_seconds,
        )
        datadir.check_store(settings, engine)
        store = open_store(settings.store_url_resolved, settings.store_locks)
        progress = ProgressLog(engine)
        try:
            with starting(engine):
                datadir.check_deployment(engine, store)
            progress.adopt_store_checkpoints(store)
        except Exception:
            store.close()
            raise
        health = Health()
        metrics = Metrics(health)

        def on_batch(stats: Applied, seconds: float) -> None:
            metrics.flushed_records.inc(stats.records)
            metrics.flush_seconds.observe(seconds)
            metrics.merges.inc(stats.merges)

        ingest = IngestService(settings, catalog, store, progress, on_batch, health)
        metrics.backlog.set_function(lambda: ingest.pending)
        metrics.dead_letters.set_function(lambda: ingest.flusher.failures)
        metrics.flush_stalls.set_function(lambda: ingest.flusher.stalls)
        files = Files(engine, open_blobs(settings, "files", health))
        jobs = Jobs(
            engine,
            JobLimits(
                settings.import_concurrency,
                settings.import_queue,
                settings.job_workers,
                export_workers=settings.export_concurrency,
                lease_seconds=settings.job_lease_seconds,
                heartbeat_seconds=settings.job_heartbeat_seconds,
                max_lost=settings.job_max_lost,
            ),
            transient=lambda exc: is_transient(exc, store),
        )
        sandbox = Sandbox(store, settings.data_dir / "tmp" / "sql")
        sandbox.clean()
        segments = Segments(
            engine,
            catalog,
            store,
            jobs,
            ingest.barrier,
            settings.limits,
            budget=Budget(settings.segment_timeout, settings.segment_memory_bytes),
            sandbox=sandbox,
        )
        jobs.register(
            "import",
            ImportRunner(
                catalog,
                store,
                progress,
                files,
                settings.limits,
                jobs.cancelled,
                settings.import_batch_rows,
                on_list=segments.sync_list,
                batch_bytes=settings.import_batch_bytes,
            ),
        )
        exports = Exports(
            engine,
            catalog,
            store,
            ingest.barrier,
            open_blobs(settings, "exports", health),
            columns.LAYOUT,
            part_bytes=settings.export_part_bytes,
            delay=timedelta(seconds=settings.export_delay),
            retention=timedelta(days=settings.export_retention_days),
            concurrency=settings.export_concurrency,
            round_size=settings.export_round,
            retry_delay=timedelta(seconds=settings.scheduler_interval),
            jobs=jobs,
            run_wait=timedelta(seconds=settings.export_run_wait),
            lease=timedelta(seconds=settings.job_lease_seconds),
        )
        jobs.register(JOB_KIND, exports.run_job, lane=EXPORT)
        metrics.export_backlog.set_function(lambda: exports.backlog)
        return cls(
            settings,
            catalog,
            store,
            ingest,
            _admin_token(settings),
            files,
            jobs,
            segments,
            exports,
            metrics=metrics,
            health=health,
        )

    def start(self, announce: bool = True, work: bool | None = None) -> None:
        """Start serving: with ``work`` (default: the setting ``serve_workers``) also
        apply the ingest queue, run jobs and the scheduler; without it (a server of a
        deployment whose ``opencdp worker`` processes do that) only take records and requests.
        """
        self.works = self.settings.serve_workers if work is None else work
        if not self.works and not self.settings.shared_store:
            raise ValueError(
                "a server without in-process workers needs a store that several processes "
                "share (OPENCDP_STORE_URL=postgresql+psycopg://… or clickhouse://…); the "
                "embedded store is written by its own server only"
            )
        self.ingest.start(lead=self.works)
        if self.works:
            self.jobs.start()
        created = None
        with starting(self.catalog.engine):  # (one default project, whoever starts first)
            self.catalog.reload()
            if not self.catalog.projects():
                created = self.catalog.create_project("default")
        if created is not None:
            project, creds = created
            if announce:
                _say(
                    "Created project 'default' (shown once; rotate with "
                    "`opencdp project rotate --project default`):\n"
                    f"  project_id    {project.id}\n"
                    f"  key           {project.key}\n"
                    f"  api_token     {creds.api_token}   (Dmartech ?secret=, ThinkingData token)\n"
                    f"  client_id     {creds.client_id}\n"
                    f"  client_secret {creds.client_secret}\n"
                    f"Admin token: {self.admin_token}"
                )
        elif announce and not self.settings.admin_token:
            _say(f"Admin token in {self.settings.admin_token_path}")
        self._ticker.clear()
        self.exports.stopping.clear()
        if self.works:
            self._scheduler = threading.Thread(target=self._schedule, name="scheduler", daemon=True)
            self._scheduler.start()
        self.started = True

    def _schedule(self) -> None:
        """The scheduler's ticks: queue the dynamic segment refreshes whose time of day has
        come, purge the exports past retention and queue the exports of closed hours and days
        (catching up on those missed while the server was down) as jobs, which the workers of
        any process run. A tick runs at start, then every ``scheduler_interval``, or every
        ``CATCH_UP_TICK`` while due exports wait for a job. Every process may tick: work that
        is queued or running already is not queued again."""
        ticks: tuple[Callable[[], object], ...] = (
            self.segments.schedule,
            lambda: self.exports.submit_due(self.jobs),
        )
        wait = 0.0
        while not self._ticker.wait(wait):
            for tick in ticks:
                try:
                    tick()
                except Exception:
                    log.exception("scheduler tick failed")
            wait = self.settings.scheduler_interval
            if self.exports.backlog:
                wait = min(wait, CATCH_UP_TICK)

    def stop(self) -> None:
        if self.started:
            self.exports.stopping.set()  # a round in progress ends after its current batch
            self._ticker.set()
            if self._scheduler is not None:
                self._scheduler.join()
            self.jobs.stop()
            self.ingest.stop()
            self.started = False
        self.store.close()


def _admin_token(settings: Settings) -> str:
    if settings.admin_token:
        return settings.admin_token
    if settings.meta_url:
        raise datadir.DataDirError(
            "a deployment on a shared metadata DB (OPENCDP_META_URL) takes its admin token from "
            "OPENCDP_ADMIN_TOKEN, the same for every process: set it"
        )
    token = "adm_" + pysecrets.token_urlsafe(32)
    return read_or_create_private(settings.admin_token_path, token).decode()


def _say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
