"""The store contract suite: every test runs against every store URL in :data:`STORES`.

The tests reach a store through ``opencdp.store.base`` only (no engine's client, no SQL text,
no physical table name), with the catalog's ``Property`` objects of ``kit.py``, so that a new
engine passing them behaves as the DuckDB store does, method by method.

An engine that cannot do something a test asks says so with ``@notimpl(engine, raises=Exc)``:
the test is then a strict ``xfail`` on that engine that must raise exactly ``Exc`` (so it
starts failing, and the mark has to go, once the engine can).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opencdp.store import open_store
from opencdp.store.base import Store
from tests.clickhouse import path as chdb_path

# engine -> store URL template ({dir}: the test's directory; {database}: a database of its own
# on the tests' PostgreSQL cluster, :mod:`tests.engines`). A ClickHouse (chdb) entry joins this
# list.
STORES: dict[str, str] = {
    "duckdb": "duckdb:///{dir}/store.duckdb",
    "postgresql": "{database}",
    "clickhouse": "chdb://{chdb}?database={name}",
}

Opener = Callable[[], Store]


def _name(path: Path) -> str:
    """A database of the test's own (chdb holds one data path per process: every test's
    ClickHouse store is a database there)."""
    return "t" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


def notimpl(engine: str, raises: type[BaseException]) -> pytest.MarkDecorator:
    """Mark a test as not implemented on ``engine``: a strict xfail raising ``raises``."""
    return pytest.mark.notimpl(engine, raises=raises)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "notimpl(engine, raises): the engine cannot do this (strict xfail)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        engine = callspec.params.get("engine") if callspec is not None else None
        for mark in item.iter_markers("notimpl"):
            if engine is not None and mark.args[0] == engine:
                item.add_marker(
                    pytest.mark.xfail(
                        strict=True, raises=mark.kwargs["raises"], reason=f"not on {engine}"
                    )
                )


@pytest.fixture(params=sorted(STORES))
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_again(engine: str, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's store (again: the same data), closing every store it opened."""
    opened: list[Store] = []
    template = STORES[engine]
    database = ""
    if "{database}" in template:
        from tests.engines import new_database

        database = new_database()

    def opener() -> Store:
        store = open_store(
            template.format(dir=tmp_path, database=database, name=_name(tmp_path), chdb=chdb_path())
        )
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_again: Opener) -> Store:
    return open_again()
