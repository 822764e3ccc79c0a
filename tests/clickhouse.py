"""ClickHouse's engine in-process (chdb), for running the SQL rendered for ClickHouse.

chdb holds one data path per process, so the process has one session (in a temporary
directory), pinned to UTC; each test module works in a database of its own. Rows are written
as literals built by sqlglot from values the tests generate.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import sqlglot.expressions as exp
from chdb import session as chdb_session

_SESSION: list[chdb_session.Session] = []
_PATH: list[str] = []


def path() -> str:
    """The process's chdb data path (every test's ClickHouse store is a database there)."""
    if not _PATH:
        _PATH.append(tempfile.mkdtemp(prefix="opencdp-chdb-"))
        atexit.register(shutil.rmtree, _PATH[0], ignore_errors=True)
    return _PATH[0]


def session() -> chdb_session.Session:
    if not _SESSION:
        s = chdb_session.Session(path())
        s.query("SET session_timezone = 'UTC'")
        _SESSION.append(s)
    return _SESSION[0]


def database(name: str) -> None:
    """Create the database ``name`` (a fixed name of the test's) and make it the current one."""
    s = session()
    s.query(f"CREATE DATABASE IF NOT EXISTS {name}")
    s.query(f"USE {name}")


def create(table: str, columns: Sequence[tuple[str, str]]) -> None:
    cols = ", ".join(f"{name} {typ}" for name, typ in columns)
    session().query(f"CREATE OR REPLACE TABLE {table} ({cols}) ENGINE = Memory")


def literal(value: Any) -> str:
    """A Python value as a ClickHouse literal (datetimes: naive UTC, to the microsecond)."""
    if isinstance(value, datetime):
        text = exp.Literal.string(value.strftime("%Y-%m-%d %H:%M:%S.%f")).sql("clickhouse")
        return f"toDateTime64({text}, 6, 'UTC')"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return exp.convert(value).sql("clickhouse")


def fill(table: str, rows: Sequence[Sequence[Any]]) -> None:
    """Replace the rows of ``table``."""
    s = session()
    s.query(f"TRUNCATE TABLE {table}")
    if rows:
        values = ", ".join("(" + ", ".join(literal(v) for v in row) + ")" for row in rows)
        s.query(f"INSERT INTO {table} VALUES {values}")


def query(sql: str) -> list[tuple[Any, ...]]:
    result = session().query(sql, "ArrowTable")
    assert isinstance(result, pa.Table)
    return [tuple(r.values()) for r in result.to_pylist()]
