"""Engine creation for the metadata DB."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from opencdp.meta.migrations import upgrade


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets other processes read while the server writes. Metadata changes are rare, so
    # every commit is synced (FULL): a property a record was validated against must survive.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def connect(url: str) -> sa.Engine:
    """Open (and migrate) the metadata DB at ``url``."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    upgrade(engine)
    return engine
