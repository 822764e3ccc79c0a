"""The analytic store: events, profiles, identities (DuckDB embedded; PostgreSQL shared by many
processes)."""

from __future__ import annotations

from opencdp.store.base import Store


def open_store(url: str) -> Store:
    """Open the store named by ``url``: ``duckdb:///path/to/file.duckdb``, or
    ``postgresql+psycopg://user:password@host:port/database``."""
    scheme, _, rest = url.partition("://")
    if scheme == "duckdb":
        from opencdp.store.duckdb import DuckDBStore

        # As in SQLAlchemy URLs: duckdb:///relative, duckdb:////absolute, duckdb:///:memory:.
        return DuckDBStore(rest[1:] if rest.startswith("/") else rest)
    if scheme in ("postgresql", "postgresql+psycopg"):
        from opencdp.store.postgres import PostgresStore

        return PostgresStore(f"postgresql+psycopg://{rest}")
    raise ValueError(
        f"unsupported store URL scheme {scheme!r} (supported: duckdb, postgresql+psycopg)"
    )
