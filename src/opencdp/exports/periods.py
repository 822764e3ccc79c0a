"""The periods an export covers: a project-local hour or day, as UTC bounds.

``export_date`` (``yyyyMMdd[HH[mm]]``) is read in the project's time zone and cut to the hour
or the day. A local hour that a daylight-saving change skips has no period (its bounds are
empty: it would start where the next hour does); one that the change repeats is one period of
two hours.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from opencdp.catalog.model import Project
from opencdp.errors import invalid

EXPORT_TYPES = ("hour", "day")
_DATE = re.compile(r"\d{8}(\d{2}(\d{2})?)?")


@dataclass(frozen=True)
class Period:
    export_type: str
    start: datetime  # UTC, naive
    end: datetime  # UTC, naive, exclusive
    label: str  # the export_date as the vendor echoes it, cut to the hour or day (local)


def parse(project: Project, export_type: str, export_date: str) -> Period:
    """The UTC bounds of ``export_date`` (``yyyyMMddHH[mm]``, project-local), cut to the
    hour or the day."""
    if export_type not in EXPORT_TYPES:
        raise invalid("export_type", f"expected hour or day, got {export_type[:20]!r}")
    if not _DATE.fullmatch(export_date):
        raise invalid("export_date", f"expected yyyyMMddHHmm, got {export_date[:20]!r}")
    try:
        day = datetime.strptime(export_date[:8], "%Y%m%d")
    except ValueError:
        raise invalid("export_date", f"no such date: {export_date[:8]!r}") from None
    if export_type == "hour":
        if len(export_date) < 10:
            raise invalid("export_date", "an hourly export needs yyyyMMddHH")
        hour = int(export_date[8:10])
        if hour > 23 or (len(export_date) == 12 and int(export_date[10:12]) > 59):
            raise invalid("export_date", f"no such time: {export_date!r}")
        local = day.replace(hour=hour)
        label, length = local.strftime("%Y%m%d%H"), timedelta(hours=1)
    else:
        local, label, length = day, day.strftime("%Y%m%d"), timedelta(days=1)
    start = local.replace(tzinfo=project.tz).astimezone(UTC)
    end = (local + length).replace(tzinfo=project.tz).astimezone(UTC)
    return Period(export_type, naive(start), naive(end), label)


def periods(project: Project, export_type: str, start: datetime, end: datetime) -> Iterator[Period]:
    """The periods of ``export_type`` (project-local hours or days) from the one holding
    ``start`` to the last that ends by ``end`` (UTC, naive), without the hours a DST change
    skips."""
    tz = project.tz
    local = start.replace(tzinfo=UTC).astimezone(tz)
    if export_type == "hour":
        first = local.replace(minute=0, second=0, microsecond=0)
        step = timedelta(hours=1)
    else:
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(days=1)
    current = first.replace(tzinfo=None)  # the period holding ``start`` is included
    while True:
        label = current.strftime("%Y%m%d%H" if export_type == "hour" else "%Y%m%d")
        period = parse(project, export_type, label)
        if period.end > end:
            return
        if period.end > period.start:  # not a local hour that a DST change skips
            yield period
        current += step


def naive(dt: datetime) -> datetime:
    """``dt`` in UTC without its time zone (how the metadata DB keeps times)."""
    return dt.astimezone(UTC).replace(tzinfo=None)


def naive_utc(dt: datetime) -> datetime:
    """``dt`` as naive UTC; a naive ``dt`` is UTC already."""
    return dt if dt.tzinfo is None else naive(dt)
