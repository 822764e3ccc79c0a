"""Prometheus metrics (served at ``/metrics``). Labels never carry project names or user data."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from opencdp.health import Health

# The components whose state ``opencdp_degraded`` always reports (0 or 1).
COMPONENTS = (
    "ingest_log", "ingest_log_damage", "ingest_queue", "ingest_applied", "flusher", "store",
)  # fmt: skip


class Metrics:
    def __init__(self, health: Health | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.health = health or Health()
        r.register(self.health.collector(COMPONENTS))
        self.requests = Counter(
            "opencdp_requests_total",
            "Requests answered, by surface and vendor return code",
            ["surface", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "opencdp_request_seconds",
            "Time to answer a record import request (includes the durable log write)",
            ["surface"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.flushed_records = Counter(
            "opencdp_flushed_records_total", "Records applied to the store", registry=r
        )
        self.flush_seconds = Histogram(
            "opencdp_flush_seconds",
            "Time to apply one batch to the store",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.merges = Counter("opencdp_user_merges_total", "Users merged into another", registry=r)
        self.backlog = Gauge(
            "opencdp_ingest_backlog_records",
            "Records acknowledged and durable but not yet in the store",
            registry=r,
        )
        self.export_backlog = Gauge(
            "opencdp_export_backlog",
            "Raw-data exports due (closed periods not yet published) after the last round",
            registry=r,
        )
        self.dead_letters = Gauge(
            "opencdp_dead_letter_records",
            "Records the store refused (see dead-letter.jsonl)",
            registry=r,
        )
        self.flush_stalls = Gauge(
            "opencdp_flush_stalls",
            "Flushes held back by a passing store fault (full disk, I/O error) since start",
            registry=r,
        )
