"""The analytic store on ClickHouse: a server (or a cluster) over HTTP, or ClickHouse's engine
in-process (chdb), through the same client API.

The package follows the store interface's seams as the other stores do: ``sql`` (capabilities,
the dialect, the tables), ``connection`` (clients and plumbing), ``locks`` (write turns),
``reads``, ``exports``, ``segments``, ``writer`` (identities, merges, upserts), ``imports`` and
``resolve`` (set-based imports); ``store`` puts them together.
"""

from opencdp.store.clickhouse.sql import CAPABILITIES
from opencdp.store.clickhouse.store import ClickHouseStore, ClickHouseWriter

__all__ = ["CAPABILITIES", "ClickHouseStore", "ClickHouseWriter"]
