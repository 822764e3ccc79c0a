"""The ClickHouse analytic store, put together from its parts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

from opencdp.store.base import StoreWriter
from opencdp.store.clickhouse.exports import ExportReads
from opencdp.store.clickhouse.imports import ImportWrites
from opencdp.store.clickhouse.reads import Reads
from opencdp.store.clickhouse.resolve import ResolveWrites
from opencdp.store.clickhouse.segments import SegmentReads, SegmentWrites


class ClickHouseStore(Reads, ExportReads, SegmentReads):
    @contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        """A write turn. ClickHouse has no transactions: each statement of the turn takes
        effect as it runs, and nothing is rolled back (``docs/architecture.md``)."""
        with self._client() as c:
            turn = self.locks.turn()
            w = ClickHouseWriter(self, c, turn)
            try:
                yield w
                w.end()
            except BaseException:
                with contextlib.suppress(Exception):
                    w.end()
                raise
            finally:
                turn.end()


class ClickHouseWriter(ImportWrites, ResolveWrites, SegmentWrites):
    """One write turn of a :class:`ClickHouseStore`."""
