"""Whole columns are typed exactly as ``coerce`` types each value (imports/columns.py): the
same values, and the same reason for each value refused. Date-times written plainly are read
with Arrow kernels; hypothesis aims at what those could get wrong: dates that do not exist,
local times a daylight-saving change skips or repeats, the ends of the range, other shapes."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from opencdp.catalog import types as ct
from opencdp.catalog.types import PropertyType
from opencdp.config import Limits
from opencdp.errors import CdpError
from opencdp.imports import columns as cols
from opencdp.imports.columns import coerce_column

ZONES = ["UTC", "Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe"]
LIMITS = Limits()

# Plain 'YYYY-MM-DD HH:MM:SS' values around the daylight-saving changes of 2024 and the ends
# of the range, with fields that may be out of range; and a few other shapes.
plain = st.builds(
    lambda y, mo, d, h, mi, s, sep: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}",
    st.sampled_from([2024, 1, 9999, 1970, 1969, 2000, 2037, 2038, 2100]),
    st.sampled_from([1, 2, 3, 4, 10, 11, 12, 13]),
    st.sampled_from([1, 2, 3, 6, 7, 10, 28, 29, 30, 31, 0]),
    st.sampled_from([0, 1, 2, 3, 23, 24]),
    st.sampled_from([0, 15, 30, 45, 59, 60]),
    st.sampled_from([0, 1, 59, 60]),
    st.sampled_from([" ", "T"]),
)
other = st.sampled_from(
    ["2024-3-5 1:2:3", " 2024-03-05 01:02:03", "2024-03-05", "2024-03-05T01:02:03Z",
     "2024-03-05 01:02:03.25", "1700000000", "1700000000123", "soon", "",
     "2024-03-05 01:02:03+08:00"]
)  # fmt: skip


def by_value(values: list[str | None], zone: str) -> tuple[list[Any], dict[int, str]]:
    out: list[Any] = []
    problems: dict[int, str] = {}
    for i, v in enumerate(values):
        try:
            out.append(None if v is None else ct.coerce(PropertyType.DATETIME, v, "t", LIMITS,
                                                        ct.zone(zone)))  # fmt: skip
        except CdpError as exc:
            problems[i] = exc.message
            out.append(None)
    return out, problems


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.none() | plain | other, min_size=1, max_size=40),
    zone=st.sampled_from(ZONES),
)
def test_a_datetime_column_reads_as_its_values_one_by_one(
    values: list[str | None], zone: str
) -> None:
    problems: dict[int, str] = {}
    typed = coerce_column(
        PropertyType.DATETIME, pa.array(values, pa.string()), "t", LIMITS, ct.zone(zone),
        problems, {},
    )  # fmt: skip
    expected, reasons = by_value(values, zone)
    assert typed.cast(pa.int64()).to_pylist() == expected
    assert problems == reasons


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.none() | plain | other, min_size=1, max_size=12),
    zone=st.sampled_from(ZONES),
)
def test_a_long_column_of_repeated_datetimes_reads_as_its_values(
    values: list[str | None], zone: str
) -> None:
    """A column long enough, whose values repeat, is read one distinct value at a time."""
    times = -(-(2 * cols._REPEAT_SAMPLE) // len(values))
    problems: dict[int, str] = {}
    typed = coerce_column(
        PropertyType.DATETIME, pa.array(values * times, pa.string()), "t", LIMITS,
        ct.zone(zone), problems, {},
    )  # fmt: skip
    expected, reasons = by_value(values, zone)
    assert typed.cast(pa.int64()).to_pylist() == expected * times
    n = len(values)
    assert problems == {k * n + i: r for k in range(times) for i, r in reasons.items()}


def test_a_zone_arrow_does_not_know_goes_value_by_value() -> None:
    with open("/usr/share/zoneinfo/Asia/Shanghai", "rb") as f:  # Shanghai, by another name
        zone = ZoneInfo.from_file(f, key="Nowhere/Else")
    values = ["2024-03-05 01:02:03", "2024-03-05 01:02:04"]
    problems: dict[int, str] = {}
    typed = coerce_column(PropertyType.DATETIME, pa.array(values), "t", LIMITS, zone, problems, {})
    assert typed.cast(pa.int64()).to_pylist() == by_value(values, "Asia/Shanghai")[0]
    assert problems == {}


def test_the_daylight_saving_edges() -> None:
    """New York, 2024: 02:30 on 10 March does not exist, 01:30 on 3 November happens twice."""
    values = ["2024-03-10 02:30:00", "2024-11-03 01:30:00", "2024-02-30 00:00:00",
              "2024-03-05 01:02:03"]  # fmt: skip
    problems: dict[int, str] = {}
    typed = coerce_column(
        PropertyType.DATETIME, pa.array(values), "t", LIMITS, ct.zone("America/New_York"),
        problems, {},
    )  # fmt: skip
    expected, reasons = by_value(values, "America/New_York")
    assert typed.cast(pa.int64()).to_pylist() == expected
    assert problems == reasons == {2: problems[2]} and "not a valid date" in problems[2]
