"""The daily refresh of dynamic segments, at their time of day in the project's timezone."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

import sqlalchemy as sa

from opencdp.errors import CdpError
from opencdp.meta import tables as t
from opencdp.segments.kinds import DAILY_KINDS
from opencdp.segments.records import (
    DEFAULT_REFRESH_AT,
    Segment,
)
from opencdp.segments.refresh import Refreshes

log = logging.getLogger(__name__)


class Scheduling(Refreshes):
    # ---- the scheduler -------------------------------------------------------------------
    def due(self, now: datetime) -> list[Segment]:
        """Dynamic segments whose daily refresh time (project-local) has passed since their
        last refresh."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.segments).where(
                    t.segments.c.type.in_(sorted(k.value for k in DAILY_KINDS))
                )
            ).all()
        out = []
        for row in rows:
            seg = Segment.from_row(row)
            if not seg.dynamic:
                continue
            tz = self.catalog.project(seg.project_id).tz
            local = now.astimezone(tz)
            hh, mm = (int(x) for x in (seg.refresh_at or DEFAULT_REFRESH_AT).split(":"))
            slot = datetime.combine(local.date(), time(hh, mm), tzinfo=tz)
            if slot > local:
                slot -= timedelta(days=1)
            last = seg.refreshed_at.replace(tzinfo=UTC) if seg.refreshed_at else None
            if last is None or last < slot:
                out.append(seg)
        return out

    def schedule(self, now: datetime | None = None) -> list[int]:
        """Queue the refreshes that are due; returns the segment ids queued."""
        queued = []
        for seg in self.due(now or self.clock()):
            try:
                self.refresh(seg.project_id, seg.id, "scheduler")
                queued.append(seg.id)
            except CdpError as exc:  # already refreshing, or the queue is full: next round
                log.debug("scheduler: %s: %s", seg.name, exc.message)
        return queued
