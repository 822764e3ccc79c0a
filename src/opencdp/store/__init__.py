"""The analytic store: events, profiles, identities (DuckDB embedded; ClickHouse at scale)."""

from __future__ import annotations

from opencdp.store.base import Store


def open_store(url: str) -> Store:
    """Open the store named by ``url`` (``duckdb:///path/to/file.duckdb``)."""
    scheme, _, rest = url.partition("://")
    if scheme == "duckdb":
        from opencdp.store.duckdb import DuckDBStore

        # As in SQLAlchemy URLs: duckdb:///relative, duckdb:////absolute, duckdb:///:memory:.
        return DuckDBStore(rest[1:] if rest.startswith("/") else rest)
    raise ValueError(f"unsupported store URL scheme {scheme!r} (supported: duckdb)")
