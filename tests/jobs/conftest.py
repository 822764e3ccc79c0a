"""The job queue's implementations, each a ``Backend``: the contract tests run on every one.

A backend is a metadata DB URL for a fresh database (so that other processes can open it too)
and the options of the queue on it: SQLite files, and a database of its own per test on the
tests' PostgreSQL cluster (:mod:`tests.engines`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdp.catalog.service import Catalog
from opencdp.jobs.service import JobLimits, Jobs
from opencdp.meta.db import connect
from tests.engines import new_database


@dataclass(frozen=True)
class Backend:
    name: str
    returning: bool | None  # None: as the database supports

    def url(self, tmp_path: Path) -> str:
        if self.name.startswith("postgresql"):
            return new_database()
        return f"sqlite:///{tmp_path / 'meta.db'}"


BACKENDS = [
    Backend("sqlite", None),  # one UPDATE … RETURNING
    Backend("sqlite-conditional-update", False),  # a read, then an UPDATE checked by rowcount
    Backend("postgresql", None),  # UPDATE … RETURNING over SELECT … FOR UPDATE SKIP LOCKED
]


class Clock:
    """Naive UTC time that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Queue:
    """A backend's database with three projects, and queues on it."""

    def __init__(self, backend: Backend, url: str) -> None:
        self.backend, self.url = backend, url
        self.engine = connect(url)
        self.clock = Clock()
        catalog = Catalog(self.engine, b"k" * 32)
        self.projects = [catalog.create_project(n)[0].id for n in ("a", "b", "c")]
        self._engines = [self.engine]

    def jobs(self, limits: JobLimits | None = None, separate: bool = False) -> Jobs:
        """A queue on the database; ``separate``: over connections of its own, as another
        process has."""
        engine = self.engine
        if separate:
            engine = connect(self.url)
            self._engines.append(engine)
        return Jobs(
            engine,
            limits or JobLimits(workers=0, export_workers=0),
            clock=self.clock,
            returning=self.backend.returning,
        )

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Queue]:
    q = Queue(request.param, request.param.url(tmp_path))
    yield q
    q.close()


def job_rows(engine: sa.Engine) -> list[sa.Row[tuple[object, ...]]]:
    from opencdp.meta import tables as t

    with engine.connect() as conn:
        return list(conn.execute(sa.select(t.jobs).order_by(t.jobs.c.id)).all())
