"""The PostgreSQL analytic store, put together from its parts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opencdp.store.base import StoreWriter
from opencdp.store.postgres.exports import ExportReads
from opencdp.store.postgres.imports import ImportWrites
from opencdp.store.postgres.reads import Reads
from opencdp.store.postgres.resolve import ResolveWrites
from opencdp.store.postgres.segments import SegmentReads, SegmentWrites
from opencdp.store.postgres.writer import Writes


class PostgresStore(Reads, ExportReads, SegmentReads):
    @contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        with self._connection() as conn:
            w = PostgresWriter(self, conn)
            try:
                yield w
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            self.created(w.created)


class PostgresWriter(ImportWrites, ResolveWrites, SegmentWrites, Writes):
    """One write transaction of a :class:`PostgresStore`."""
