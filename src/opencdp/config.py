"""Settings: defaults, overridden by ``OPENCDP_*`` environment variables, then by CLI flags."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may carry; anything over them is rejected, never truncated."""

    max_body_bytes: int = 1 << 20
    max_properties: int = 1000
    max_string_bytes: int = 64 * 1024
    max_list_items: int = 1000
    max_name_length: int = 128
    # Most properties (user and event together) in one project's catalog; most fields in one
    # collection. Every path that adds properties (records, imports, the admin API) is bound by it.
    max_project_properties: int = 2000


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8600
    meta_url: str = ""  # default: sqlite in the data dir
    store_url: str = ""  # default: duckdb in the data dir
    # Files (uploads, failure files, exports): default the data dir; s3://bucket/prefix for an
    # object store, at ``s3_endpoint_url`` when it is not AWS (credentials: the AWS variables).
    blob_url: str = ""
    s3_endpoint_url: str = ""
    # Export download links: presigned by the object store (True) or served by OpenCDP's own
    # signed links (False: for an object store the clients cannot reach).
    s3_presigned_links: bool = True
    flush_interval: float = 0.2  # seconds between flushes of the ingest log into the store
    flush_max_records: int = 20_000  # a flush starts early once this many records wait
    log_segment_bytes: int = 64 << 20
    admin_token: str | None = field(default=None, repr=False)
    # The key client secrets and signed links derive from (64 hex digits or base64 of 32
    # bytes): what the processes of a scaled-out deployment share. Default: secret.key in the
    # data dir (embedded), or kept in a shared metadata DB.
    secret_key: str = field(default="", repr=False)
    import_concurrency: int = 2  # import jobs running at once per project
    import_queue: int = 10  # import jobs queued or running per project
    job_workers: int = 2  # worker threads for imports and segment refreshes
    # Whether ``opencdp serve`` also does the work (applies the ingest queue, runs jobs and the
    # scheduler). Off only for the servers of a deployment on shared engines whose
    # ``opencdp worker`` processes do it.
    serve_workers: bool = True
    job_lease_seconds: float = 30.0  # a running job's lease; a dead worker's job waits this long
    job_heartbeat_seconds: float = 10.0  # how often a live worker renews its leases
    job_max_lost: int = 3  # a job whose lease expires this many times (its worker died) fails
    catalog_refresh_seconds: float = 1.0  # another process's catalog change is seen within this
    max_upload_bytes: int = 1 << 30  # largest uploaded file (WeChat, CLI, admin API)
    marketo_max_file_bytes: int = 10 << 20  # the Marketo bulk API's documented limit
    access_token_ttl: int = 3600  # seconds an OAuth-style access token is valid
    import_batch_rows: int = 0  # rows per import batch; 0: each target's own default
    import_batch_bytes: int = 0  # input text per import batch; 0: each target's own default
    scheduler_interval: float = 30.0  # seconds between the scheduler's ticks (queueing jobs)
    export_part_bytes: int = 64 << 20  # largest compressed part of a raw-data export
    export_delay: int = 1800  # seconds after a period closes before it is exported
    export_retention_days: int = 15  # exports older than this are purged
    export_concurrency: int = 2  # export jobs running at once (the export lane's threads)
    export_round: int = 200  # due exports queued or running as jobs at once
    export_run_wait: float = 60.0  # seconds the admin API waits for the exports it asked for
    segment_timeout: float = 120.0  # seconds one segment query may run (preview or refresh)
    segment_memory_bytes: int = 1 << 30  # working memory one segment query may take
    limits: Limits = field(default_factory=Limits)

    @property
    def meta_url_resolved(self) -> str:
        return self.meta_url or f"sqlite:///{(self.data_dir / 'meta.db').resolve()}"

    @property
    def store_url_resolved(self) -> str:
        return self.store_url or f"duckdb:///{(self.data_dir / 'store.duckdb').resolve()}"

    @property
    def shared_store(self) -> bool:
        """Whether the analytic store is one that several processes share (PostgreSQL, a
        ClickHouse server; not chdb, ClickHouse's engine inside one process)."""
        return self.store_url_resolved.startswith(
            ("postgresql://", "postgresql+psycopg://", "clickhouse://", "clickhouses://")
        )

    @property
    def store_locks(self) -> str | None:
        """Where a ClickHouse store's writers take their locks: the metadata database when it
        is shared (PostgreSQL), else this process."""
        clickhouse = self.store_url_resolved.startswith(("clickhouse://", "clickhouses://"))
        return self.meta_url_resolved if clickhouse and self.shared_meta else None

    @property
    def shared_meta(self) -> bool:
        return self.meta_url_resolved.startswith(("postgresql://", "postgresql+psycopg://"))

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin_token"

    @property
    def secret_key_path(self) -> Path:
        return self.data_dir / "secret.key"

    def with_overrides(self, **overrides: Any) -> Settings:
        known = {f.name for f in fields(self)} | {f.name for f in fields(Limits)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        limit_names = {f.name for f in fields(Limits)}
        limits = replace(self.limits, **{k: v for k, v in given.items() if k in limit_names})
        top = {k: v for k, v in given.items() if k not in limit_names}
        if "data_dir" in top:
            top["data_dir"] = Path(top["data_dir"])
        return replace(self, limits=limits, **top)


def _flag(raw: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, any case."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes/no value: {raw!r}")


_ENV_TYPES: dict[str, Callable[[str], Any]] = {
    "data_dir": Path,
    "host": str,
    "port": int,
    "meta_url": str,
    "store_url": str,
    "blob_url": str,
    "s3_endpoint_url": str,
    "s3_presigned_links": _flag,
    "serve_workers": _flag,
    "flush_interval": float,
    "flush_max_records": int,
    "log_segment_bytes": int,
    "admin_token": str,
    "secret_key": str,
    "import_concurrency": int,
    "import_queue": int,
    "job_workers": int,
    "job_lease_seconds": float,
    "job_heartbeat_seconds": float,
    "job_max_lost": int,
    "catalog_refresh_seconds": float,
    "max_upload_bytes": int,
    "marketo_max_file_bytes": int,
    "access_token_ttl": int,
    "import_batch_rows": int,
    "import_batch_bytes": int,
    "scheduler_interval": float,
    "export_part_bytes": int,
    "export_delay": int,
    "export_retention_days": int,
    "export_concurrency": int,
    "export_round": int,
    "export_run_wait": float,
    "max_body_bytes": int,
    "max_properties": int,
    "max_string_bytes": int,
    "max_list_items": int,
    "max_name_length": int,
    "max_project_properties": int,
    "segment_timeout": float,
    "segment_memory_bytes": int,
}


def from_env(environ: dict[str, str] | None = None) -> Settings:
    """Settings from ``OPENCDP_<NAME>`` variables, e.g. ``OPENCDP_PORT=9000``.

    >>> from_env({"OPENCDP_PORT": "9000", "OPENCDP_MAX_BODY_BYTES": "10"}).limits.max_body_bytes
    10
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, typ in _ENV_TYPES.items():
        raw = env.get(f"OPENCDP_{name.upper()}")
        if raw is not None and raw != "":
            values[name] = typ(raw)
    return Settings().with_overrides(**values)
