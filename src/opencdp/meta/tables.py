"""SQLAlchemy Core tables of the metadata DB (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()


def utcnow() -> datetime:
    """Timestamps in the metadata DB: naive UTC (SQLite keeps no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

# The deployment's id: also kept in the analytic store, so that a store and a metadata DB that
# do not belong together are refused at start (see opencdp.datadir). One row.
deployment = sa.Table(
    "deployment",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

# The deployment's keys by name: ``key_check``, a fingerprint of the server key (every process
# must derive client secrets and sign links with the same key: one given another is refused),
# and ``server_key`` itself where no process has it otherwise (a shared metadata DB and no
# OPENCDP_SECRET_KEY; see opencdp.datadir).
deployment_keys = sa.Table(
    "deployment_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("strict_schema", sa.Boolean, nullable=False, default=False),
    # Added by migration 8: the user property whose value is an event's or a user's
    # ``loginUserId`` in raw-data exports (null: our user id).
    sa.Column("login_user_key", sa.String(256), nullable=True),
    # Added by migration 6: the format of the project's raw-data exports.
    sa.Column("export_format", sa.String(16), nullable=False, server_default="csv"),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

credentials = sa.Table(
    "credentials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False, index=True),
    sa.Column("client_id", sa.String(64), nullable=False, unique=True),
    # SHA-256 of the api token; the token itself is shown once and never stored.
    sa.Column("api_token_hash", sa.String(64), nullable=False, unique=True),
    # The client secret is derived from the server key and this generation (see catalog.secrets);
    # its hash is kept for constant-time comparison.
    sa.Column("secret_generation", sa.Integer, nullable=False),
    sa.Column("client_secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("revoked_at", sa.DateTime, nullable=True),
)

properties = sa.Table(
    "properties",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("table_name", sa.String(16), nullable=False),  # user | event
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("is_identity", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("project_id", "table_name", "name", name="uq_property_name"),
)

# Uploaded files. ``name`` is the client's name for the file (a WeChat ``path``, a multipart
# filename) and is only ever a lookup key; the bytes live at ``files/<project id>/<id>`` in the
# data dir, a path built from numbers alone.
files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(1024), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | stored
    sa.Column("size", sa.BigInteger, nullable=False, default=0),
    sa.Column("sha256", sa.String(64), nullable=True),
    sa.Column("upload_token_hash", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("stored_at", sa.DateTime, nullable=True),
    sa.Index("ix_files_project_name", "project_id", "name"),
)

# Durable jobs: queued -> running -> complete | failed. Counters are copied here as the job
# goes; the batches recorded in import_batches are the authoritative progress.
# A running job is leased: ``owner`` (one worker thread of one process) holds it until
# ``lease_until`` and renews that while alive; an expired lease is taken over by any worker.
# ``dedupe_key`` names the work of an active job (a segment's next refresh, an export period),
# so the same work is never queued twice, whichever process submits it; it is cleared once the
# job is done (NULLs never collide in a unique index).
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),  # import
    sa.Column("surface", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id"), nullable=True),
    sa.Column("rows_read", sa.BigInteger, nullable=False, default=0),
    sa.Column("imported", sa.BigInteger, nullable=False, default=0),
    sa.Column("failed", sa.BigInteger, nullable=False, default=0),
    sa.Column("warnings", sa.BigInteger, nullable=False, default=0),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=True),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    # Added by migration 9: leases, lanes, retries and de-duplication.
    sa.Column("lane", sa.String(16), nullable=False, server_default="main"),
    sa.Column("owner", sa.String(160), nullable=True),
    sa.Column("lease_until", sa.DateTime, nullable=True),
    sa.Column("lost_leases", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_after", sa.DateTime, nullable=True),
    sa.Column("dedupe_key", sa.String(200), nullable=True),
    sa.Index("ix_jobs_project_state", "project_id", "state"),
    sa.Index("ix_jobs_lane_state", "lane", "state"),
    sa.Index("uq_jobs_dedupe_key", "dedupe_key", unique=True),
)

# One row: a number bumped in the transaction of every change to the catalog (projects,
# credentials, properties, aliases, collections), so that every process holding a snapshot of
# the catalog can tell that its snapshot is stale with one read.
catalog_version = sa.Table(
    "catalog_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

# Custom collections (WeChat collections, Marketo custom objects): documents keyed by their own
# ``_id``, stored in the analytic store in a table named from this id.
collections = sa.Table(
    "collections",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    # Added by migration 8: the fields whose values identify a document (Marketo custom
    # objects' dedupe fields), a JSON list; null for a collection keyed by ``_id``.
    sa.Column("dedupe_fields", sa.Text, nullable=True),
    sa.UniqueConstraint("project_id", "name", name="uq_collection_name"),
)

# Other names a vendor's clients use for a project: WeChat cloud environment ids (kind
# ``wechat_env``) and ThinkingData app ids (kind ``thinkingdata_app``, the SDKs' only
# credential). An alias of a kind belongs to one project.
project_aliases = sa.Table(
    "project_aliases",
    metadata,
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(128), nullable=False),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("kind", "alias", name="pk_project_alias"),
)

# The fields of a collection: declared through the admin API, or inferred from the first values
# an import sees. Values that do not fit a field's type are refused, as for properties.
collection_fields = sa.Table(
    "collection_fields",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collection_id", sa.Integer, sa.ForeignKey("collections.id"), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("collection_id", "name", name="uq_collection_field"),
)

# Segments and tags: the kind (opencdp.segments.kinds, the core's words), the definition, and
# the state of the last refresh. Members live in the analytic store, per version; the previous
# version is kept.
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("display_name", sa.String(128), nullable=False),
    sa.Column("catalog", sa.String(16), nullable=False),  # cluster | tag
    sa.Column("type", sa.String(48), nullable=False),  # SegmentKind
    sa.Column("sub_type", sa.String(48), nullable=False, default=""),  # TagValues, or ""
    sa.Column("definition", sa.JSON, nullable=True),  # qp / tagQp as given, or {"sql": …}
    sa.Column("main_column", sa.String(256), nullable=False, default=""),  # ID uploads
    sa.Column("upload_name", sa.String(256), nullable=False, default=""),
    sa.Column("remarks", sa.Text, nullable=False, default=""),
    sa.Column("refresh_at", sa.String(8), nullable=False, default=""),  # HH:MM, dynamic ones
    sa.Column("progress", sa.Integer, nullable=False, default=0),  # 0-99, 100 done, -1 failed
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("users_num", sa.BigInteger, nullable=False, default=0),
    sa.Column("version", sa.Integer, nullable=False, default=0),  # of the current members
    sa.Column("spans", sa.JSON, nullable=True),  # resolved windows of the last refresh
    sa.Column("upload_stats", sa.JSON, nullable=True),
    sa.Column("job_id", sa.Integer, nullable=True),  # the refresh under way or last run
    sa.Column("refreshed_at", sa.DateTime, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_segment_name"),
)

# Raw-data exports (GrowingIO): one row per (project, period, data type). A published export
# never changes: its parts and manifest are listed here with their sizes and digests.
exports = sa.Table(
    "exports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("export_type", sa.String(8), nullable=False),  # hour | day
    sa.Column("data_type", sa.String(32), nullable=False),
    sa.Column("period_start", sa.DateTime, nullable=False),  # UTC
    sa.Column("period_end", sa.DateTime, nullable=False),  # UTC, exclusive
    sa.Column("state", sa.String(16), nullable=False),  # running | finished | error | purged
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("rows", sa.BigInteger, nullable=False, default=0),
    sa.Column("parts", sa.JSON, nullable=True),  # [{name, rows, bytes, sha256}]
    sa.Column("format", sa.String(16), nullable=False, default="csv"),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=True),
    # The writer holding a ``running`` export (added by migration 12): its id and the end of its
    # claim, renewed as it writes; a claim that expired (its writer died) may be taken over.
    sa.Column("owner", sa.String(160), nullable=True),
    sa.Column("lease_until", sa.DateTime, nullable=True),
    sa.Column("retry_after", sa.DateTime, nullable=True),  # a failed export waits until then
    sa.UniqueConstraint(
        "project_id", "export_type", "data_type", "period_start", name="uq_export_period"
    ),
    sa.Index("ix_exports_retry_after", "retry_after"),
)

# Progress of the ingest flusher (added by migration 10): the highest log LSN whose records the
# analytic store holds, per log (``stream``). Recorded after the store is written; a record at
# or below it is never applied again.
ingest_progress = sa.Table(
    "ingest_progress",
    metadata,
    sa.Column("stream", sa.String(64), primary_key=True),
    sa.Column("lsn", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# The ingest queue of a deployment on PostgreSQL (see opencdp.ingest.shared): the frames
# acknowledged and not yet applied, under LSNs handed out by the head row; and the records the
# store refused, kept where every process sees them.
ingest_head = sa.Table(
    "ingest_head",
    metadata,
    sa.Column("stream", sa.String(64), primary_key=True),
    sa.Column("lsn", sa.BigInteger, nullable=False),
)

ingest_queue = sa.Table(
    "ingest_queue",
    metadata,
    sa.Column("lsn", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

ingest_dead_letters = sa.Table(
    "ingest_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("lsn", sa.BigInteger, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

# The batches of an import job (added by migration 10), recorded after the store holds each
# one: the last row of the file it covers, the job's counters after it, and the lengths of the
# failures and warnings files then (what a resumed job cuts them back to). The job resumes
# after its highest batch.
import_batches = sa.Table(
    "import_batches",
    metadata,
    sa.Column("job_id", sa.Integer, nullable=False),
    sa.Column("batch_no", sa.Integer, nullable=False),
    sa.Column("last_row", sa.BigInteger, nullable=False),
    sa.Column("imported", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("warnings", sa.BigInteger, nullable=False),
    sa.Column("failures_bytes", sa.BigInteger, nullable=False),
    sa.Column("warnings_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.PrimaryKeyConstraint("job_id", "batch_no", name="pk_import_batch"),
)
