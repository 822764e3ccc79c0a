"""Segments and tags: definitions in the metadata DB, members in the store, refresh as a job.

A segment is a *cluster* (a set of users) or a *tag* (a value per user). It is defined by
conditions (compiled by :mod:`opencdp.segments.compiler`), by SQL (checked by
:mod:`opencdp.segments.sqlcheck`), or by an uploaded list of IDs; its
:class:`~opencdp.segments.kinds.SegmentKind` says which, in the core's words (each surface
translates its vendor's). Refreshing one is a job: it
flushes what ingest has acknowledged, compiles the definition against the catalog as it is
now, and writes the members as a new version in one store transaction, keeping the previous
version so that entries and exits can be listed. Dynamic segments are refreshed daily by the
scheduler, at a time of day in the project's timezone.

The parts live in sibling modules along their seams: :mod:`~opencdp.segments.records` (the
rows and what a segment is), :mod:`~opencdp.segments.definitions`,
:mod:`~opencdp.segments.refresh`, :mod:`~opencdp.segments.scheduling`,
:mod:`~opencdp.segments.uploads` and :mod:`~opencdp.segments.members`; :class:`Segments` puts
them together.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from opencdp.catalog.service import Catalog
from opencdp.config import Limits
from opencdp.jobs.service import Jobs
from opencdp.segments.definitions import Definitions
from opencdp.segments.kinds import Holds, SegmentKind, Source, TagValues
from opencdp.segments.members import Members
from opencdp.segments.records import (
    CLUSTER,
    DEFAULT_BUDGET,
    KIND,
    TAG,
    Segment,
    Spec,
    TagValuesMismatch,
    UploadStats,
)
from opencdp.segments.sandbox import Sandbox
from opencdp.segments.scheduling import Scheduling
from opencdp.segments.uploads import Uploads
from opencdp.store.base import Budget, Store

__all__ = [
    "CLUSTER",
    "KIND",
    "TAG",
    "Holds",
    "Segment",
    "SegmentKind",
    "Segments",
    "Source",
    "Spec",
    "TagValues",
    "TagValuesMismatch",
    "UploadStats",
]


class Segments(Definitions, Scheduling, Uploads, Members):
    """Segments and tags: every part, on one object (the callers' one entry point)."""

    def __init__(
        self,
        engine: sa.Engine,
        catalog: Catalog,
        store: Store,
        jobs: Jobs,
        barrier: Callable[[], bool],
        limits: Limits,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        budget: Budget = DEFAULT_BUDGET,
        sandbox: Sandbox | None = None,
    ) -> None:
        self._engine = engine
        self.catalog = catalog
        self.store = store
        self.jobs = jobs
        self.barrier = barrier
        self.limits = limits
        self.clock = clock
        self.budget = budget
        self.sandbox = sandbox or Sandbox(store, Path(tempfile.gettempdir()) / "opencdp-sandbox")
        self._lock = threading.Lock()
        jobs.register(KIND, self.run_refresh)
