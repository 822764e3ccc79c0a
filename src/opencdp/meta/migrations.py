"""Forward-only schema migrations of the metadata DB.

The DB records the version it is at; :func:`upgrade` applies every later step in order, each in
its own transaction. A step is never edited once released: a change is a new step.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from opencdp.meta import tables

Step = Callable[[sa.Connection], None]


def _v1_initial(conn: sa.Connection) -> None:
    for table in (tables.projects, tables.credentials, tables.properties):
        table.create(conn)


def _v2_files_and_jobs(conn: sa.Connection) -> None:
    for table in (tables.files, tables.jobs, tables.collections):
        table.create(conn)


def _v3_collection_fields(conn: sa.Connection) -> None:
    tables.collection_fields.create(conn)


def _v4_segments(conn: sa.Connection) -> None:
    tables.segments.create(conn)


def _v5_exports(conn: sa.Connection) -> None:
    tables.exports.create(conn)


def _v6_export_format(conn: sa.Connection) -> None:
    # (A database created since has it from the table definition already.)
    if "export_format" not in {c["name"] for c in sa.inspect(conn).get_columns("projects")}:
        conn.execute(
            sa.text(
                "ALTER TABLE projects ADD COLUMN export_format VARCHAR(16) NOT NULL DEFAULT 'csv'"
            )
        )


def _v7_deployment(conn: sa.Connection) -> None:
    tables.deployment.create(conn)


def _v8_aliases_and_dedupe_fields(conn: sa.Connection) -> None:
    tables.project_aliases.create(conn)
    if "dedupe_fields" not in {c["name"] for c in sa.inspect(conn).get_columns("collections")}:
        conn.execute(sa.text("ALTER TABLE collections ADD COLUMN dedupe_fields TEXT"))
    if "login_user_key" not in {c["name"] for c in sa.inspect(conn).get_columns("projects")}:
        conn.execute(sa.text("ALTER TABLE projects ADD COLUMN login_user_key VARCHAR(256)"))


def _v9_job_leases(conn: sa.Connection) -> None:
    """Jobs get a lease (owner, lease_until), a lane, a retry time, a count of lost leases and
    a de-duplication key; the catalog gets its version number."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
    timestamp = sa.DateTime().compile(dialect=conn.dialect)  # the database's own spelling
    added = {
        "lane": "VARCHAR(16) NOT NULL DEFAULT 'main'",
        "owner": "VARCHAR(160)",
        "lease_until": timestamp,
        "lost_leases": "INTEGER NOT NULL DEFAULT 0",
        "run_after": timestamp,
        "dedupe_key": "VARCHAR(200)",
    }
    for name, ddl in added.items():
        if name not in have:  # (a database created since has them from the table definition)
            conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {name} {ddl}"))
    for index in tables.jobs.indexes:
        index.create(conn, checkfirst=True)
    tables.catalog_version.create(conn, checkfirst=True)
    if conn.execute(sa.select(tables.catalog_version.c.id)).first() is None:
        conn.execute(sa.insert(tables.catalog_version).values(id=1, version=0))


def _v10_progress(conn: sa.Connection) -> None:
    # Filled from the analytic store's checkpoints at the first start after this step
    # (opencdp.progress.adopt_store_checkpoints).
    tables.ingest_progress.create(conn)
    tables.import_batches.create(conn)


# What the segments' kind columns held before they held the core's words (fixed here: a step
# never changes, whatever the surfaces call the kinds later).
_V11_WORDS: dict[str, dict[str, str]] = {
    "type": {
        "cluster_by_static_condition": "cluster_conditions",
        "cluster_by_dynamic_condition": "cluster_conditions_daily",
        "cluster_by_static_sql": "cluster_sql",
        "cluster_by_dynamic_sql": "cluster_sql_daily",
        "cluster_by_import": "cluster_ids",
        "tag_by_static_condition": "tag_conditions",
        "tag_by_dynamic_condition": "tag_conditions_daily",
        "tag_by_static_sql": "tag_sql",
        "tag_by_dynamic_sql": "tag_sql_daily",
        "tag_by_import": "tag_ids",
    },
    "catalog": {"catalog_cluster": "cluster", "catalog_tag": "tag"},
    "sub_type": {
        "tag_condition_default": "values",
        "tag_condition_by_firstlast_event": "first_last",
        "tag_condition_by_quotation": "measure",
    },
}


def _v11_segment_kinds(conn: sa.Connection) -> None:
    """Segments store their kind in the core's words (they held ThinkingData's)."""
    segments = tables.segments
    for column, words in _V11_WORDS.items():
        col = segments.c[column]
        conn.execute(
            sa.update(segments)
            .where(col.in_(list(words)))
            .values({column: sa.case(words, value=col)})
        )


def _v12_export_claims(conn: sa.Connection) -> None:
    """Exports get the claim of their writer (owner, lease_until) and a retry time, so that
    every process sees who writes an export and when a failed one is tried again."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("exports")}
    timestamp = sa.DateTime().compile(dialect=conn.dialect)  # the database's own spelling
    added = {"owner": "VARCHAR(160)", "lease_until": timestamp, "retry_after": timestamp}
    for name, ddl in added.items():
        if name not in have:  # (a database created since has them from the table definition)
            conn.execute(sa.text(f"ALTER TABLE exports ADD COLUMN {name} {ddl}"))
    for index in tables.exports.indexes:
        index.create(conn, checkfirst=True)


def _v13_deployment_keys(conn: sa.Connection) -> None:
    tables.deployment_keys.create(conn, checkfirst=True)


def _v14_ingest_queue(conn: sa.Connection) -> None:
    for table in (tables.ingest_head, tables.ingest_queue, tables.ingest_dead_letters):
        table.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Step]] = [
    (1, _v1_initial),
    (2, _v2_files_and_jobs),
    (3, _v3_collection_fields),
    (4, _v4_segments),
    (5, _v5_exports),
    (6, _v6_export_format),
    (7, _v7_deployment),
    (8, _v8_aliases_and_dedupe_fields),
    (9, _v9_job_leases),
    (10, _v10_progress),
    (11, _v11_segment_kinds),
    (12, _v12_export_claims),
    (13, _v13_deployment_keys),
    (14, _v14_ingest_queue),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(sa.select(sa.func.max(tables.schema_version.c.version))).scalar()
    return int(value or 0)


def upgrade(engine: sa.Engine) -> int:
    """Bring the DB to the latest version; returns the version it is at afterwards."""
    with engine.begin() as conn:
        tables.schema_version.create(conn, checkfirst=True)
    version = 0
    for target, step in MIGRATIONS:
        with engine.begin() as conn:
            version = current_version(conn)
            if version >= target:
                continue
            step(conn)
            conn.execute(sa.delete(tables.schema_version))
            conn.execute(sa.insert(tables.schema_version).values(version=target))
            version = target
    if version > LATEST:
        raise RuntimeError(
            f"metadata DB is at schema version {version}, newer than this OpenCDP ({LATEST})"
        )
    return version
