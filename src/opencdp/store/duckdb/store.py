"""The embedded analytic store on DuckDB, put together from its parts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from opencdp.store.base import StoreWriter
from opencdp.store.duckdb.exports import ExportReads
from opencdp.store.duckdb.imports import ImportWrites
from opencdp.store.duckdb.reads import Reads
from opencdp.store.duckdb.resolve import ResolveWrites
from opencdp.store.duckdb.segments import SegmentReads, SegmentWrites
from opencdp.store.duckdb.writer import Writes


class DuckDBStore(Reads, ExportReads, SegmentReads):
    @contextmanager
    def writer(self) -> Iterator[StoreWriter]:
        with self._write_lock:
            cur = self._cursor()
            w = DuckDBWriter(self, cur)
            self._txn_columns, self._txn_touched, self._txn_cur = {}, set(), cur
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    yield w
                except BaseException:
                    with contextlib.suppress(duckdb.Error):  # (gone with an invalidated db)
                        cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
                for tbl in self._txn_touched:
                    self._columns.pop(tbl, None)
                self._columns.update(self._txn_columns)
            except duckdb.Error as exc:
                self._failed(exc)
                raise
            finally:
                self._txn_columns, self._txn_touched, self._txn_cur = None, set(), None
                with contextlib.suppress(duckdb.Error):
                    cur.close()


class DuckDBWriter(ImportWrites, ResolveWrites, SegmentWrites, Writes):
    """One write transaction of a :class:`DuckDBStore`."""
