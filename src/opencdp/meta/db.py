"""Engine creation for the metadata DB."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    with starting(engine):  # (processes starting together migrate one after the other)
        upgrade(engine)
    return engine


_STARTING = (0x4F43_5354, 1)  # the advisory lock of starting processes (PostgreSQL)


@contextmanager
def starting(engine: sa.Engine) -> Iterator[None]:
    """Hold the deployment's start-up lock: what a process does once when it starts over a
    metadata DB other processes share (migrating it, creating its keys and its first
    project) is done by one at a time. PostgreSQL: a session-level advisory lock on a
    connection of its own. SQLite: its own file locks serialize each step, and a deployment
    on SQLite starts one server."""
    if engine.dialect.name != "postgresql":
        yield
        return
    lock = sa.text("SELECT pg_advisory_lock(CAST(:a AS integer), CAST(:b AS integer))")
    unlock = sa.text("SELECT pg_advisory_unlock(CAST(:a AS integer), CAST(:b AS integer))")
    keys = {"a": _STARTING[0], "b": _STARTING[1]}
    with engine.connect() as conn:
        conn.execute(lock, keys)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(unlock, keys)
            conn.commit()
