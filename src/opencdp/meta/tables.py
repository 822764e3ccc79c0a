"""SQLAlchemy Core tables of the metadata DB (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("strict_schema", sa.Boolean, nullable=False, default=False),
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
