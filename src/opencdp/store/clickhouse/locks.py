"""Write turns of the ClickHouse store: who may write a project, and the versions rows get.

ClickHouse has neither transactions nor locks. A write turn therefore takes its project's lock
from elsewhere, and numbers the row versions it writes from a clock that only moves forward:

* :class:`LocalLocks`: the process's own locks and clock, for a store only one process writes
  (chdb, which one process opens; or one server process in front of a ClickHouse server).
  The clock starts above every version the store holds.
* :class:`PostgresLocks`: PostgreSQL advisory locks, and a clock row, in the deployment's
  metadata database, for any number of processes writing one ClickHouse: a turn's project
  lock is held by the turn's own connection until the turn ends, and each turn reserves a
  range of versions above every range reserved before it, whatever the processes' clocks say.
"""

from __future__ import annotations

import threading
import time
import zlib
from abc import ABC, abstractmethod
from typing import Any

# Versions a turn may use: a turn writes far fewer statements than this.
RANGE = 1 << 20
# Advisory lock scopes (first key): a project's writes, a named marker.
PROJECT = 0x4F43_4857
MARKER = 0x4F43_484D


def marker_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFF_FFFF


class Turn(ABC):
    """One write turn's locks and versions."""

    shared = False  # whether other processes write the store too

    def __init__(self) -> None:
        self._base = 0
        self._n = 0

    def version(self) -> int:
        """A version above every version written before this turn, and above the previous
        one of this turn."""
        if not self._base:
            self._base = self._reserve()
        self._n += 1
        if self._n >= RANGE:
            self._base, self._n = self._reserve(), 1
        return self._base + self._n

    @abstractmethod
    def _reserve(self) -> int: ...

    @abstractmethod
    def lock(self, scope: int, key: int) -> None:
        """Hold the lock ``(scope, key)`` until the turn ends (once)."""

    @abstractmethod
    def end(self) -> None: ...


class Locks(ABC):
    @abstractmethod
    def turn(self) -> Turn: ...

    def close(self) -> None:
        return None


class _Clock:
    def __init__(self, floor: int) -> None:
        self._last = floor
        self._lock = threading.Lock()

    def raise_to(self, floor: int) -> None:
        with self._lock:
            self._last = max(self._last, floor)

    def reserve(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + RANGE)
            return self._last


_SHARED: dict[str, LocalLocks] = {}
_SHARED_GUARD = threading.Lock()


class LocalLocks(Locks):
    @classmethod
    def of(cls, name: str, floor: int) -> LocalLocks:
        """The process's locks of the store ``name`` (every store object opened on the same
        data shares them)."""
        with _SHARED_GUARD:
            locks = _SHARED.get(name)
            if locks is None:
                locks = _SHARED[name] = cls(floor)
            locks._clock.raise_to(floor)
            return locks

    def __init__(self, floor: int) -> None:
        self._clock = _Clock(floor)
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._guard = threading.Lock()

    def turn(self) -> Turn:
        return _LocalTurn(self)

    def _get(self, scope: int, key: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((scope, key), threading.Lock())


class _LocalTurn(Turn):
    def __init__(self, locks: LocalLocks) -> None:
        super().__init__()
        self._locks = locks
        self._held: dict[tuple[int, int], threading.Lock] = {}

    def _reserve(self) -> int:
        return self._locks._clock.reserve()

    def lock(self, scope: int, key: int) -> None:
        if (scope, key) not in self._held:
            lock = self._locks._get(scope, key)
            lock.acquire()
            self._held[(scope, key)] = lock

    def end(self) -> None:
        for lock in reversed(list(self._held.values())):
            lock.release()
        self._held.clear()


_CLOCK_TABLE = (
    "CREATE TABLE IF NOT EXISTS _opencdp_store_clock (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"
)


class PostgresLocks(Locks):
    """Locks and the version clock in PostgreSQL (the metadata database)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._engine = sa.create_engine(
            url,
            pool_size=8,
            max_overflow=8,
            pool_pre_ping=True,
            connect_args={"application_name": "opencdp-store-locks"},
        )
        with self._engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(1330859853, 1)")
            conn.exec_driver_sql(_CLOCK_TABLE)

    def turn(self) -> Turn:
        return _PostgresTurn(self._engine)

    def close(self) -> None:
        self._engine.dispose()


class _PostgresTurn(Turn):
    shared = True

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self._engine = engine
        self._raw: Any = None
        self._held: set[tuple[int, int]] = set()

    def _conn(self) -> Any:
        if self._raw is None:
            self._raw = self._engine.raw_connection()
            self._raw.driver_connection.autocommit = True
        return self._raw.driver_connection

    def _reserve(self) -> int:
        row = (
            self._conn()
            .execute(
                "INSERT INTO _opencdp_store_clock AS t VALUES ('versions', "
                "(extract(epoch FROM clock_timestamp()) * 1e9)::bigint) ON CONFLICT (name) "
                "DO UPDATE SET value = greatest(EXCLUDED.value, t.value + %s) RETURNING value",
                [RANGE],
            )
            .fetchone()
        )
        return int(row[0])

    def lock(self, scope: int, key: int) -> None:
        if (scope, key) not in self._held:
            self._conn().execute("SELECT pg_advisory_lock(%s, %s)", [scope, key])
            self._held.add((scope, key))

    def end(self) -> None:
        if self._raw is None:
            return
        try:
            if self._held:
                self._raw.driver_connection.execute("SELECT pg_advisory_unlock_all()")
        except Exception:
            self._raw.invalidate()  # (closing the session releases its locks)
        finally:
            self._held.clear()
            self._raw.close()
            self._raw = None
