"""The DuckDB store's plumbing: one connection, a cursor per read, one writer at a time, and the
columns of each table as committed (what readers see) and as the open write transaction sees
them."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from opencdp.store.base import Store
from opencdp.store.duckdb.sql import CAPABILITIES, ident, table
from opencdp.store.fairlock import FairLock

log = logging.getLogger(__name__)


class DuckDBBase(Store):
    """What every part of the DuckDB store shares (the reads, the exports, the segments)."""

    capabilities = CAPABILITIES

    def __init__(self, path: str) -> None:
        # Every read that needs an order says ORDER BY; without the insertion-order guarantee
        # bulk INSERT … SELECT writes row groups in parallel.
        # Nothing this store runs reads or writes files other than its own database, so file
        # access and extension loading are off for every query that ever runs here.
        self._path = path
        self._conn = self._connect()
        # Why the connection cannot be used, after an error DuckDB calls fatal (e.g. a
        # checkpoint that found the disk full invalidates the database): the next use opens
        # it again, which replays its WAL, so a store survives a full disk without a restart.
        self._broken: str | None = None
        # One writer at a time, served in arrival order: a long import's batches take turns
        # with the ingest flusher and segment refreshes instead of starving them.
        self._write_lock = FairLock()
        self._cursor_lock = threading.Lock()
        # Columns of each table as committed (what readers see), and, while a write
        # transaction is open, as that transaction sees them: a table or column it adds must
        # not reach readers before the commit does.
        self._columns: dict[str, set[str]] = {}
        self._txn_columns: dict[str, set[str]] | None = None
        self._txn_touched: set[str] = set()
        self._txn_cur: duckdb.DuckDBPyConnection | None = None

    def _connect(self) -> duckdb.DuckDBPyConnection:
        conn = duckdb.connect(
            self._path,
            config={
                "preserve_insertion_order": False,
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
            },
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _opencdp_state (name VARCHAR PRIMARY KEY, value BIGINT)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _opencdp_user_ids "
            "(project_id BIGINT PRIMARY KEY, next_id BIGINT NOT NULL)"
        )
        # The outcome of each batch the store holds, and the user ids reserved under a
        # batch's key: what a replayed batch finds (committed with the batch's rows).
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _opencdp_batches (key VARCHAR PRIMARY KEY, outcome BLOB)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _opencdp_reserved_ids (key VARCHAR PRIMARY KEY, "
            "project_id BIGINT NOT NULL, first_id BIGINT NOT NULL, count BIGINT NOT NULL)"
        )
        _unkey_events(conn)
        return conn

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._cursor_lock:
            if self._broken is not None:
                log.warning("store: opening the database again after: %s", self._broken)
                with contextlib.suppress(duckdb.Error):
                    self._conn.close()
                self._conn = self._connect()  # raises while the fault lasts; tried again later
                self._columns.clear()
                self._broken = None
            return self._conn.cursor()

    def _failed(self, exc: BaseException) -> None:
        """Note an error that left the database unusable, so that the next use reopens it."""
        if isinstance(exc, duckdb.FatalException | duckdb.ConnectionException):
            self._broken = str(exc).splitlines()[0][:300]

    def transient(self, exc: BaseException) -> bool:
        return isinstance(
            exc,
            duckdb.IOException
            | duckdb.FatalException
            | duckdb.TransactionException
            | duckdb.ConnectionException
            | duckdb.OutOfMemoryException
            | duckdb.InterruptException,
        )

    @contextmanager
    def _read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self._cursor()
        try:
            yield cur
        except duckdb.Error as exc:
            self._failed(exc)
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()

    def _cache(self, cur: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
        if self._txn_columns is not None and cur is self._txn_cur:
            return self._txn_columns
        return self._columns

    def known_columns(self, cur: duckdb.DuckDBPyConnection, tbl: str) -> set[str]:
        cache = self._cache(cur)
        cols = cache.get(tbl)
        if cols is None:
            rows = cur.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ?",
                [tbl.strip('"')],
            ).fetchall()
            cols = {r[0] for r in rows}
            cache[tbl] = cols
        return cols

    def changed(self, cur: duckdb.DuckDBPyConnection, tbl: str) -> None:
        """The writer changed ``tbl``'s columns: look them up again (after the commit, for
        readers)."""
        self._cache(cur).pop(tbl, None)
        self._txn_touched.add(tbl)

    def checkpoint(self, name: str) -> int:
        with self._read() as cur:
            row = cur.execute("SELECT value FROM _opencdp_state WHERE name = ?", [name]).fetchone()
        return int(row[0]) if row else 0

    def batch_outcome(self, key: str) -> bytes | None:
        with self._read() as cur:
            row = cur.execute(
                "SELECT outcome FROM _opencdp_batches WHERE key = ?", [key]
            ).fetchone()
        return bytes(row[0]) if row else None

    def _has_tables(self, cur: duckdb.DuckDBPyConnection, project_id: int) -> bool:
        return bool(self.known_columns(cur, table(project_id, "profiles")))

    def _has_members(self, cur: duckdb.DuckDBPyConnection, project_id: int) -> bool:
        return bool(self.known_columns(cur, table(project_id, "segment_members")))

    def close(self) -> None:
        with self._write_lock:
            self._conn.close()


_UNKEYED = "events_unkeyed"


def _unkey_events(conn: duckdb.DuckDBPyConnection) -> None:
    """Events tables of older data directories lose their primary key, once: events are
    upserted with a MERGE, as profiles are, which is several times faster on a table without
    an index to maintain; ids stay unique because every write goes through the single writer
    with sources of unique ids. Each table is copied into one without the key, with its
    columns' types and NOT NULLs, in one transaction."""
    if conn.execute("SELECT 1 FROM _opencdp_state WHERE name = ?", [_UNKEYED]).fetchall():
        return
    keyed = [
        name
        for (name,) in conn.execute(
            "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' "
            "AND regexp_full_match(table_name, 'p[0-9]+_events')"
        ).fetchall()
    ]
    conn.execute("BEGIN")
    try:
        for name in keyed:
            columns = conn.execute(
                "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
                "WHERE table_name = ? ORDER BY column_index",
                [name],
            ).fetchall()
            defs = ", ".join(
                f"{ident(c)} {t}{'' if nullable else ' NOT NULL'}" for c, t, nullable in columns
            )
            old, new = ident(name), ident(f"{name}_unkeyed")
            conn.execute(f"CREATE TABLE {new} ({defs})")
            conn.execute(f"INSERT INTO {new} SELECT * FROM {old}")
            conn.execute(f"DROP TABLE {old}")
            conn.execute(f"ALTER TABLE {new} RENAME TO {old}")
        conn.execute("INSERT INTO _opencdp_state VALUES (?, 1)", [_UNKEYED])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if keyed:
        log.info("store: %d events tables now without a primary key", len(keyed))
