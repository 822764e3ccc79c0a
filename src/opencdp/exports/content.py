"""What an export is, in the core's own words: its states, the status a reader is told, and
the datasets of a layout (what each one holds, and how its rows become columns).

A vendor's export API names its data types and statuses in its own words; the surface that
serves it maps those onto these. The dataset names of the layout in use are the keys the
metadata DB, the file names and the manifests carry, so a layout's names never change once
exports are written with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import Any

import pyarrow as pa

from opencdp.catalog.model import Property


class ExportState(StrEnum):
    """An export's row in the metadata DB (the values are what the DB holds)."""

    RUNNING = "running"  # claimed, being written (or interrupted: written again later)
    FINISHED = "finished"  # published: its parts never change
    ERROR = "error"  # failed, with its message; tried again later
    PURGED = "purged"  # past retention: its files are deleted


class ExportStatus(Enum):
    """What a reader is told about the export of a period and dataset."""

    READY = "ready"  # published: its parts can be downloaded
    PENDING = "pending"  # the period is still open, waiting for its delay, or being written
    FAILED = "failed"  # the last attempt failed (the export says why)
    ABSENT = "absent"  # none: before the project, in the future, skipped (DST), or purged


class Source(StrEnum):
    """Where a dataset's rows come from, for a period of ``received_at``."""

    EVENTS = "events"  # the events received in the period
    PROFILES = "profiles"  # the profiles changed in the period
    MEMBERSHIPS = "memberships"  # the members of the segments refreshed in the period


@dataclass(frozen=True)
class Dataset:
    """One kind of export of a period. ``events`` (for :attr:`Source.EVENTS`) names the
    events it takes; ``None`` takes every event that no other dataset of the layout names."""

    name: str
    source: Source
    events: tuple[str, ...] | None = None


EventsRender = Callable[[str, pa.RecordBatch, Sequence[Property]], pa.RecordBatch]
MembersRender = Callable[
    [str, pa.RecordBatch, Mapping[int, Any], Sequence[Property]], pa.RecordBatch
]


class Layout:
    """The datasets exported for every period, in order, and the columns of each.

    ``events`` and ``profiles`` turn a batch of the store's export queries into a dataset's
    columns (dataset name, batch, the properties); ``members`` does so for memberships, with
    each refreshed segment's row from the metadata DB and the identity keys."""

    def __init__(
        self,
        datasets: Sequence[Dataset],
        events: EventsRender,
        profiles: EventsRender,
        members: MembersRender,
    ) -> None:
        self.datasets = tuple(datasets)
        self.names = tuple(d.name for d in self.datasets)
        if len(set(self.names)) != len(self.names):
            raise ValueError("a layout names a dataset twice")
        catch_all = [d for d in self.datasets if d.source is Source.EVENTS and d.events is None]
        if len(catch_all) > 1:
            raise ValueError("a layout has one dataset at most for the events no other names")
        self._by_name = {d.name: d for d in self.datasets}
        self._event_to: dict[str, str] = {}
        for d in self.datasets:
            for event in d.events or ():
                if self._event_to.setdefault(event, d.name) != d.name:
                    raise ValueError(f"event {event!r} is in two datasets")
        self._rest = catch_all[0].name if catch_all else None
        self.render_events, self.render_profiles, self.render_members = events, profiles, members

    def dataset(self, name: str) -> Dataset:
        """The dataset named ``name`` (``KeyError`` for another name)."""
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def index(self, name: str) -> int:
        return self.names.index(name)

    def of_event(self, event_name: str | None) -> str | None:
        """The dataset an event of this name goes to (None: none of them)."""
        if event_name is None:
            return self._rest
        return self._event_to.get(event_name, self._rest)

    def named_events(self) -> list[str]:
        """Every event name some dataset takes by name (what the catch-all leaves out)."""
        return list(self._event_to)


@dataclass(frozen=True)
class Export:
    """An export's row in the metadata DB: one project, period and dataset (``data_type``)."""

    id: int
    project_id: int
    export_type: str
    data_type: str
    period_start: datetime
    period_end: datetime
    state: ExportState
    error: str
    attempts: int
    rows: int
    parts: list[dict[str, Any]] | None
    format: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Export:
        values = {c: getattr(row, c) for c in cls.__dataclass_fields__}
        return cls(**{**values, "state": ExportState(values["state"])})
