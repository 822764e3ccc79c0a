"""The analytic store: events, profiles, identities (DuckDB embedded; PostgreSQL shared by many
processes)."""

from __future__ import annotations

from opencdp.store.base import Store


def open_store(url: str, locks: str | None = None) -> Store:
    """Open the store named by ``url``: ``duckdb:///path/to/file.duckdb``,
    ``postgresql+psycopg://user:password@host:port/database``,
    ``clickhouse://user:password@host:8123/database`` (``clickhouses://`` over TLS) or
    ``chdb:///path`` (ClickHouse's engine in this process).

    ``locks``: for ClickHouse, the PostgreSQL database (the deployment's metadata database)
    whose locks serialise the writes of several processes; without it the store's writers
    are this process's alone."""
    scheme, _, rest = url.partition("://")
    if scheme == "duckdb":
        from opencdp.store.duckdb import DuckDBStore

        # As in SQLAlchemy URLs: duckdb:///relative, duckdb:////absolute, duckdb:///:memory:.
        return DuckDBStore(rest[1:] if rest.startswith("/") else rest)
    if scheme in ("postgresql", "postgresql+psycopg"):
        from opencdp.store.postgres import PostgresStore

        return PostgresStore(f"postgresql+psycopg://{rest}")
    if scheme in ("clickhouse", "clickhouses", "chdb"):
        from opencdp.store.clickhouse import ClickHouseStore

        return ClickHouseStore(url, locks)
    raise ValueError(
        f"unsupported store URL scheme {scheme!r} "
        "(supported: duckdb, postgresql+psycopg, clickhouse, clickhouses, chdb)"
    )
