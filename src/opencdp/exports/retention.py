"""Retention: exports whose period ended more than the retention ago lose their files and are
marked ``purged`` (they then answer as absent). The row stays, so the scheduler never writes a
purged period again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa

from opencdp.exports.content import Export, ExportState
from opencdp.meta import tables as t


def purge(engine: sa.Engine, cutoff: datetime, delete_files: Callable[[Export], object]) -> int:
    """Purge the exports whose period ended by ``cutoff`` (UTC, naive); how many."""
    c = t.exports.c
    with engine.connect() as conn:
        old = [
            Export.from_row(r)
            for r in conn.execute(
                sa.select(t.exports).where(c.period_end <= cutoff, c.state != ExportState.PURGED)
            )
        ]
    for export in old:
        delete_files(export)
        with engine.begin() as conn:
            conn.execute(
                sa.update(t.exports)
                .where(c.id == export.id)
                .values(state=ExportState.PURGED, parts=None)
            )
    return len(old)
