"""The kinds of segment, in the core's words.

A segment *holds* either a set of users (a cluster) or a value per user (a tag). Its members
come from a *source*: conditions (compiled), SQL (checked, then run in the sandbox) or a list
of IDs (uploaded, or a vendor's static list kept as one). A segment defined by conditions or
SQL is refreshed on demand, or every day as well (*daily*). :class:`SegmentKind` names each
combination there is; it is what the metadata DB stores, and each surface translates its
vendor's words to and from it.
"""

from __future__ import annotations

from enum import StrEnum


class Holds(StrEnum):
    """What a segment is."""

    CLUSTER = "cluster"  # a set of users
    TAG = "tag"  # a value per user


class Source(StrEnum):
    """How a segment's members are defined."""

    CONDITIONS = "conditions"
    SQL = "sql"
    IDS = "ids"


class TagValues(StrEnum):
    """Where the values of a tag defined by conditions come from."""

    VALUES = "values"  # named values, each with its own conditions
    FIRST_LAST = "first_last"  # a property of a user's first or last matching event
    MEASURE = "measure"  # a per-user measure of matching events


class SegmentKind(StrEnum):
    """What a segment holds, where its members come from, and whether it is refreshed daily."""

    CLUSTER_CONDITIONS = "cluster_conditions"
    CLUSTER_CONDITIONS_DAILY = "cluster_conditions_daily"
    CLUSTER_SQL = "cluster_sql"
    CLUSTER_SQL_DAILY = "cluster_sql_daily"
    CLUSTER_IDS = "cluster_ids"
    TAG_CONDITIONS = "tag_conditions"
    TAG_CONDITIONS_DAILY = "tag_conditions_daily"
    TAG_SQL = "tag_sql"
    TAG_SQL_DAILY = "tag_sql_daily"
    TAG_IDS = "tag_ids"

    @property
    def holds(self) -> Holds:
        return Holds(self.value.split("_")[0])

    @property
    def source(self) -> Source:
        return Source(self.value.split("_")[1])

    @property
    def daily(self) -> bool:
        return self.value.endswith("_daily")

    @classmethod
    def of(cls, holds: Holds, source: Source, daily: bool = False) -> SegmentKind:
        """The kind of these parts (an ID list is never refreshed daily: ``ValueError``)."""
        return cls(f"{holds.value}_{source.value}" + ("_daily" if daily else ""))


DAILY_KINDS = frozenset(k for k in SegmentKind if k.daily)
