"""The embedded analytic store on DuckDB.

One connection; the ingest flusher is the only writer (through :meth:`DuckDBStore.writer`), and
each read takes its own cursor. Rows arrive as Arrow batches, never one INSERT per record.

The package follows the store interface's seams: ``sql`` (capabilities and generated
identifiers), ``connection`` (plumbing), ``reads``, ``exports``, ``segments``, ``writer``
(identities, merges, upserts) and ``imports`` (set-based profile imports); ``store`` puts them
together.
"""

from opencdp.store.duckdb.sql import (
    ARROW_TYPES,
    CAPABILITIES,
    collection_table,
    ident,
    json_value,
    table,
    text_value,
)
from opencdp.store.duckdb.store import DuckDBStore, DuckDBWriter

__all__ = [
    "ARROW_TYPES",
    "CAPABILITIES",
    "DuckDBStore",
    "DuckDBWriter",
    "collection_table",
    "ident",
    "json_value",
    "table",
    "text_value",
]
