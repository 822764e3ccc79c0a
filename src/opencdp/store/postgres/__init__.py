"""The analytic store on PostgreSQL: shared by any number of server and worker processes.

The package follows the store interface's seams as the DuckDB store does: ``sql``
(capabilities, the dialect, how a property's value is kept and read), ``connection``
(plumbing), ``reads``, ``exports``, ``segments``, ``writer`` (identities, merges, upserts),
``imports`` and ``resolve`` (set-based imports); ``store`` puts them together.
"""

from opencdp.store.postgres.sql import CAPABILITIES
from opencdp.store.postgres.store import PostgresStore, PostgresWriter

__all__ = ["CAPABILITIES", "PostgresStore", "PostgresWriter"]
