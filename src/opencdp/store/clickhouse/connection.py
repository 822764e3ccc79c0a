"""The ClickHouse store's plumbing: clients (clickhouse-connect, over HTTP to a server or
in-process through chdb, the same API either way), the store's tables, which property columns
exist, and how ClickHouse's errors read.

A client is a session (its temporary tables are its own): a write turn holds one for the
whole turn; each read takes one from the pool. Every query of a project's rows runs with
``additional_table_filters`` naming that project for every table the store has, so that a
query missing its ``project_id`` condition still reads only the project's rows.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from opencdp.catalog.model import Property
from opencdp.catalog.types import PropertyType
from opencdp.store.base import Store
from opencdp.store.clickhouse.locks import LocalLocks, Locks, PostgresLocks
from opencdp.store.clickhouse.sql import (
    CAPABILITIES,
    FINAL,
    LIST_COMMENT,
    LOCAL,
    PROJECT_TABLES,
    PROP_TABLES,
    TABLES,
)
from opencdp.store.names import ident

log = logging.getLogger(__name__)

# Every session: times in UTC; an outer join's missing side is NULL (as in standard SQL);
# an insert is never dropped as a repeat of an earlier block (a replayed batch that deleted
# its rows writes them again); deletes and mutations are done when their statement returns;
# a name in a condition is the table's column, as in standard SQL, not an expression of the
# select list given that name (a ``* REPLACE`` still is: its conditions name ``t.column``).
SESSION = {
    "prefer_column_name_to_alias": 1,
    "session_timezone": "UTC",
    "join_use_nulls": 1,
    "insert_deduplicate": 0,
    "async_insert": 0,
    "lightweight_deletes_sync": 2,
    "mutations_sync": 2,
    # On a cluster (no effect on one server): a query's IN and JOIN send the (temporary)
    # right side to the shards; an insert into a Distributed table is on the shards when it
    # returns; a read sees every insert a quorum of replicas acknowledged.
    "prefer_global_in_and_join": 1,
    "distributed_foreground_insert": 1,
}
CLUSTER_SESSION = {"insert_quorum": "auto", "select_sequential_consistency": 1}

# Error codes of passing conditions: memory, disk, parts not merged yet, too many queries,
# I/O, network, a replica or Keeper unavailable, a read-only table (Keeper session lost).
_TRANSIENT_CODES = {
    3, 74, 75, 76, 159, 202, 209, 210, 236, 241, 242, 243, 252, 319, 394, 425, 999, 1000,
}  # fmt: skip
_CODE = re.compile(r"Code: (\d+)")


def error_code(exc: BaseException) -> int | None:
    m = _CODE.search(str(exc))
    return int(m.group(1)) if m else None


def transient_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | OSError | MemoryError):
        return True
    if isinstance(exc, ClickHouseError):
        code = error_code(exc)
        return code is None or code in _TRANSIENT_CODES
    return False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    text = re.sub(r"^.*?DB::Exception: ", "", text, flags=re.S)
    return text.splitlines()[0][:300] if text else type(exc).__name__


_SHARED_COLUMNS: dict[str, tuple[dict[str, set[str]], set[str], threading.Lock]] = {}


def _connect(url: str) -> tuple[dict[str, Any], str, str | None]:
    """clickhouse-connect's arguments for a store URL, the store's database, and the cluster
    its tables are spread over (``?cluster=``), if any."""
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    cluster = options.get("cluster")
    if parts.scheme == "chdb":
        dsn = f"chdb://{parts.netloc}{parts.path}"
        return {"dsn": dsn}, options.get("database", "opencdp"), cluster
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or (8443 if parts.scheme == "clickhouses" else 8123),
        "username": unquote(parts.username or "default"),
        "password": unquote(parts.password or ""),
        "secure": parts.scheme == "clickhouses",
    }
    return args, parts.path.strip("/") or "opencdp", cluster


class ClickHouseBase(Store):
    """What every part of the ClickHouse store shares."""

    capabilities = CAPABILITIES

    def __init__(self, url: str, locks_url: str | None = None, pool_size: int = 8) -> None:
        self._args, database, cluster = _connect(url)
        self.db = ident(database)  # (an operator's name, checked as a generated one is)
        self.database = database
        self.cluster = ident(cluster) if cluster else None
        self._session = {**SESSION, **(CLUSTER_SESSION if cluster else {})}
        self._pool: queue.LifoQueue[Client] = queue.LifoQueue()
        self._pool_size = pool_size
        # The property columns of each table, and those that hold lists (JSON text): shared by
        # the store objects of one database in this process (a column one adds, another sees).
        key = f"{sorted(self._args.items())}/{database}"
        self._columns, self.lists, self._lock = _SHARED_COLUMNS.setdefault(
            key, ({}, set(), threading.Lock())
        )
        floor = 0
        with self._client() as c:
            if self.cluster is None:
                c.command(f"CREATE DATABASE IF NOT EXISTS {self.db}")
                for name, (columns, engine) in TABLES.items():
                    c.command(
                        f"CREATE TABLE IF NOT EXISTS {self.t(name)} ({columns}) ENGINE = {engine}"
                    )
            else:  # (the operator creates a cluster's tables: `opencdp clickhouse-ddl`)
                self._check_cluster(c)
            self._load_columns(c)
            if locks_url is None:
                floor = max(
                    int(c.query(f"SELECT max(_version) FROM {self.t(name)}").result_rows[0][0])
                    for name, (columns, _) in TABLES.items()
                    if "_version" in columns
                )
        self.locks: Locks = PostgresLocks(locks_url) if locks_url else LocalLocks.of(key, floor)

    def t(self, name: str) -> str:
        """A table of the store, qualified by its database."""
        return f"{self.db}.{ident(name)}"

    def _check_cluster(self, c: Client) -> None:
        """On a cluster the operator creates the tables (``cluster_ddl``): refuse to start
        without them."""
        rows = c.query(
            "SELECT name FROM system.tables WHERE database = {d:String}",
            parameters={"d": self.database},
        ).result_rows
        missing = sorted({*TABLES} - {r[0] for r in rows})
        if missing:
            raise RuntimeError(
                f"the ClickHouse cluster's database {self.database} lacks the store's tables "
                f"({', '.join(missing)}): create them with `opencdp clickhouse-ddl` first"
            )

    def targets(self, name: str) -> list[str]:
        """Where a change of a table's definition goes: on a cluster, the shards' tables and
        then the Distributed table, each on every node."""
        if self.cluster is None:
            return [self.t(name)]
        on = f"ON CLUSTER {self.cluster}"
        return [f"{self.db}.{ident(name + LOCAL)} {on}", f"{self.t(name)} {on}"]

    def deletes(self, name: str) -> str:
        """Where a DELETE of a table's rows goes (a Distributed table takes none: on a cluster,
        the shards' tables)."""
        return self.targets(name)[0]

    def final(self, name: str, alias: str = "") -> str:
        """A table as its reads see it: its latest versions where it keeps versions."""
        named = f"{self.t(name)} AS {ident(alias)}" if alias else self.t(name)
        return f"{named} FINAL" if name in FINAL else named

    def scoped(self, project_id: int) -> dict[str, Any]:
        """The settings of a query of ``project_id``'s rows: every table of projects shows
        only that project's rows to it (whatever its own conditions say)."""
        pid = int(project_id)
        filters = {f"{self.database}.{name}": f"project_id = {pid}" for name in PROJECT_TABLES}
        return {"additional_table_filters": filters}

    # ---- clients ------------------------------------------------------------------------
    @contextmanager
    def _client(self) -> Iterator[Client]:
        try:
            c = self._pool.get_nowait()
        except queue.Empty:
            c = clickhouse_connect.get_client(**self._args, settings=self._session)
        ok = False
        try:
            yield c
            ok = True
        finally:
            if ok and self._pool.qsize() < self._pool_size:
                self._pool.put(c)
            else:
                with contextlib.suppress(Exception):
                    c.close()

    def transient(self, exc: BaseException) -> bool:
        return transient_error(exc)

    # ---- property columns ---------------------------------------------------------------
    def _load_columns(self, c: Client) -> None:
        rows = c.query(
            "SELECT table, name, comment FROM system.columns WHERE database = {db:String} "
            "AND table IN ('profiles', 'events')",
            parameters={"db": self.database},
        ).result_rows
        found: dict[str, set[str]] = {"profiles": set(), "events": set()}
        lists: set[str] = set()
        for tbl, name, comment in rows:
            found[tbl].add(name)
            if comment == LIST_COMMENT:
                lists.add(name)
        with self._lock:
            self._columns.clear()
            self._columns.update(found)
            self.lists.clear()
            self.lists.update(lists)

    def has_columns(self, c: Client, table: str, names: Iterable[str]) -> set[str]:
        """Those of ``names`` that are columns of ``table`` (a miss is looked up again:
        another process may have added it)."""
        names = set(names)
        if not names <= self._columns.get(table, set()):
            self._load_columns(c)
        return names & self._columns.get(table, set())

    def added(self, table: str, props: Iterable[Property]) -> None:
        with self._lock:
            for p in props:
                self._columns.setdefault(table, set()).add(p.column)
                if p.type is PropertyType.LIST:
                    self.lists.add(p.column)

    def present(self, c: Client, props: Iterable[Property]) -> list[Property]:
        """Those of ``props`` that have a column."""
        props = list(props)
        have: set[str] = set()
        for kind, tbl in PROP_TABLES.items():
            have |= self.has_columns(c, tbl, (p.column for p in props if p.table == kind))
        return [p for p in props if p.column in have]

    # ---- events, as their users are now --------------------------------------------------
    def events_source(self, c: Client, project_id: int, alias: str = "e") -> tuple[str, str]:
        """The project's events (``FROM`` clause, alias ``alias``) and SQL for each event's
        user as it is now: a merged user's events are its survivor's (``overrides``). A
        project that never merged users reads its events as they are."""
        pid, a = int(project_id), ident(alias)
        source = f"{self.t('events')} AS {a}"
        merged = c.query(
            f"SELECT 1 FROM {self.t('overrides')} WHERE project_id = {pid} LIMIT 1",
            settings=self.scoped(pid),
        ).result_rows
        if not merged:
            return source, f"{a}.user_id"
        source += (
            f" LEFT JOIN (SELECT old_user_id, user_id FROM {self.final('overrides')} "
            f"WHERE project_id = {pid}) AS _o ON _o.old_user_id = {a}.user_id"
        )
        return source, f"ifNull(_o.user_id, {a}.user_id)"

    def own_users(self, project_id: int, user_ids: Iterable[int]) -> str:
        """SQL: the user ids written on the events that are now those of ``user_ids``: each
        one's own, unless it was merged into another, and those of the users merged into it."""
        pid, ids = int(project_id), sorted({int(u) for u in user_ids})
        overrides, listed = self.final("overrides"), f"(SELECT arrayJoin({ids}))"
        return (
            f"(SELECT arrayJoin({ids}) AS u WHERE u NOT IN (SELECT old_user_id FROM {overrides} "
            f"WHERE project_id = {pid} AND old_user_id IN {listed}) "
            f"UNION ALL SELECT old_user_id FROM {overrides} WHERE project_id = {pid} "
            f"AND user_id IN {listed})"
        )

    # ---- the store's own rows -----------------------------------------------------------
    def checkpoint(self, name: str) -> int:
        with self._client() as c:
            rows = c.query(
                f"SELECT value FROM {self.final('_opencdp_state')} WHERE name = {{n:String}}",
                parameters={"n": name},
            ).result_rows
        return int(rows[0][0]) if rows else 0

    def batch_outcome(self, key: str) -> bytes | None:
        with self._client() as c:
            rows = c.query(
                f"SELECT hex(outcome) FROM {self.final('_opencdp_batches')} "
                "WHERE key = {k:String}",
                parameters={"k": key},
            ).result_rows
        return bytes.fromhex(rows[0][0]) if rows else None

    def close(self) -> None:
        while True:
            try:
                c = self._pool.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(Exception):
                c.close()
        self.locks.close()


__all__ = ["ClickHouseBase", "DatabaseError", "error_code", "first_line", "transient_error"]
