"""The PostgreSQL store's plumbing: a pool of connections (SQLAlchemy's, handing out psycopg 3
connections), the store's own tables, which project tables exist, and the property registry.

Any number of processes open the same store. Writes to one project are serialised across all
of them by a transaction-level advisory lock on the project (:mod:`.writer`); reads take a
connection of their own and see what was committed (MVCC: a reader never waits for a writer).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store.base import Store
from opencdp.store.names import table
from opencdp.store.postgres.sql import CAPABILITIES, SCHEMA_LOCK

log = logging.getLogger(__name__)

# Kinds of property a project registers, and the table each belongs to.
PROP_TABLES = {"user": "profiles", "event": "events"}

_SETUP = (
    "CREATE TABLE IF NOT EXISTS _opencdp_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS _opencdp_user_ids "
    "(project_id BIGINT PRIMARY KEY, next_id BIGINT NOT NULL)",
    # The outcome of each batch the store holds, and the user ids reserved under a batch's
    # key: what a replayed batch finds (committed with the batch's rows).
    "CREATE TABLE IF NOT EXISTS _opencdp_batches (key TEXT PRIMARY KEY, outcome BYTEA)",
    "CREATE TABLE IF NOT EXISTS _opencdp_reserved_ids (key TEXT PRIMARY KEY, "
    "project_id BIGINT NOT NULL, first_id BIGINT NOT NULL, count BIGINT NOT NULL)",
    # The properties each project's rows may hold in ``props``, with their types: what a
    # segment query and an export read as typed columns.
    "CREATE TABLE IF NOT EXISTS _opencdp_columns (project_id BIGINT NOT NULL, "
    "kind TEXT NOT NULL, prop_id BIGINT NOT NULL, type TEXT NOT NULL, "
    "PRIMARY KEY (project_id, kind, prop_id))",
)

# SQLSTATE classes of passing conditions: connection (08), a transaction rolled back by the
# server (40: serialization, deadlock), insufficient resources (53: disk full, memory),
# operator intervention (57: shutdown, cancel), system errors (58: I/O), a lock not available
# or an object in use (55).
_TRANSIENT_CLASSES = ("08", "40", "53", "55", "57", "58")


def transient_error(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        return state[:2] in _TRANSIENT_CLASSES
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.orig is not None and transient_error(exc.orig)
    return isinstance(exc, sa.exc.TimeoutError | sa.exc.OperationalError)


class PostgresBase(Store):
    """What every part of the PostgreSQL store shares."""

    capabilities = CAPABILITIES

    def __init__(self, url: str, pool_size: int = 8) -> None:
        self._engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args={
                "application_name": "opencdp-store",
                # Times are UTC (``timestamp`` columns); JIT compiling costs more than it saves
                # on the short statements of a write turn.
                "options": "-c TimeZone=UTC -c jit=off",
            },
        )
        # Project tables known to exist (committed), and each project's registered properties
        # (committed): both only grow, and are looked up again on a miss (another process).
        self._tables: set[str] = set()
        self._props: dict[tuple[int, str], dict[int, PropertyType]] = {}
        self._lock = threading.Lock()
        with self._connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", SCHEMA_LOCK)
            try:
                for statement in _SETUP:
                    conn.execute(statement)
                conn.commit()
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", SCHEMA_LOCK)
                conn.commit()
            row = conn.execute(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            # Only a superuser may bound a query's temporary files (temp_file_limit).
            self._superuser = bool(row and row[0])

    # ---- connections --------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; whatever it leaves open is rolled back when it goes back."""
        raw = self._engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert isinstance(conn, psycopg.Connection)
            yield conn
        except psycopg.Error as exc:
            if transient_error(exc):  # (a connection that failed is not given out again)
                with contextlib.suppress(Exception):
                    raw.invalidate()
            raise
        finally:
            with contextlib.suppress(Exception):
                raw.close()

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._connection() as conn, conn.cursor() as cur:
            yield cur

    def transient(self, exc: BaseException) -> bool:
        return transient_error(exc)

    # ---- what exists --------------------------------------------------------------------
    def exists(self, cur: psycopg.Cursor[Any], tbl: str) -> bool:
        """Whether the (generated, quoted) table ``tbl`` exists, as ``cur`` sees it."""
        if tbl in self._tables:
            return True
        row = cur.execute("SELECT to_regclass(%s) IS NOT NULL", [tbl]).fetchone()
        return bool(row and row[0])

    def created(self, tables: Iterable[str]) -> None:
        """Tables a write turn created, once it committed."""
        with self._lock:
            self._tables.update(tables)

    def _has_tables(self, cur: psycopg.Cursor[Any], project_id: int) -> bool:
        ok = self.exists(cur, table(project_id, "profiles"))
        if ok:
            self.created([table(project_id, "profiles")])
        return ok

    def registered(
        self, cur: psycopg.Cursor[Any], project_id: int, kind: str, ids: Iterable[int]
    ) -> dict[int, PropertyType]:
        """The registered types of the properties ``ids`` of ``kind`` ("user", "event") that
        the project has (a miss is looked up again: another process may have added it)."""
        wanted = set(ids)
        known = self._props.get((project_id, kind), {})
        if not wanted <= known.keys():
            rows = cur.execute(
                "SELECT prop_id, type FROM _opencdp_columns WHERE project_id = %s AND kind = %s",
                [project_id, kind],
            ).fetchall()
            known = {int(i): PropertyType(t) for i, t in rows}
            with self._lock:
                self._props[(project_id, kind)] = known
        return {i: known[i] for i in wanted if i in known}

    def present(
        self, cur: psycopg.Cursor[Any], project_id: int, props: Iterable[Property]
    ) -> list[Property]:
        """Those of ``props`` the project has registered (a column, as the other stores say)."""
        props = list(props)
        out = []
        for kind in PROP_TABLES:
            mine = [p for p in props if p.table == kind]
            if mine:
                have = self.registered(cur, project_id, kind, (p.id for p in mine))
                out += [p for p in mine if p.id in have]
        order = {id(p): i for i, p in enumerate(props)}
        return sorted(out, key=lambda p: order[id(p)])

    # ---- the store's own rows -----------------------------------------------------------
    def checkpoint(self, name: str) -> int:
        with self._read() as cur:
            row = cur.execute("SELECT value FROM _opencdp_state WHERE name = %s", [name]).fetchone()
        return int(row[0]) if row else 0

    def batch_outcome(self, key: str) -> bytes | None:
        with self._read() as cur:
            row = cur.execute(
                "SELECT outcome FROM _opencdp_batches WHERE key = %s", [key]
            ).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        self._engine.dispose()
