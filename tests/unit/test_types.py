"""Property types: inference, datetime parsing and coercion (catalog/types.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencdp.catalog.types import (
    PropertyType,
    coerce,
    epoch_to_us,
    infer_type,
    loads_exact,
    parse_datetime,
    public,
    zone,
)
from opencdp.config import Limits
from opencdp.errors import CdpError, Code

SH = zone("Asia/Shanghai")
LIMITS = Limits()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = PropertyType


def us(dt: datetime) -> int:
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def c(ptype: PropertyType, value: Any, limits: Limits = LIMITS) -> Any:
    return coerce(ptype, value, "prop", limits, SH)


def rejected(ptype: PropertyType, value: Any, limits: Limits = LIMITS) -> CdpError:
    with pytest.raises(CdpError) as info:
        c(ptype, value, limits)
    err = info.value
    assert err.code is Code.VALIDATION_FAILED
    assert err.field == "prop"
    assert err.message.startswith("prop: ")
    return err


# ---- zone -------------------------------------------------------------------------------------
def test_zone() -> None:
    assert zone("UTC").utcoffset(datetime(2024, 1, 1)) == timedelta(0)
    assert zone("Asia/Shanghai") is zone("Asia/Shanghai")
    for bad in ("Mars/Olympus", "", "../etc/passwd"):
        with pytest.raises(ValueError, match="unknown timezone"):
            zone(bad)


# ---- infer_type -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, T.BOOL),
        (False, T.BOOL),
        (0, T.NUMBER),
        (-3.5, T.NUMBER),
        (10**30, T.NUMBER),
        ([], T.LIST),
        (["a", 1], T.LIST),
        ("", T.STRING),
        ("abc", T.STRING),
        # Plain decimals in text are numbers (senders such as the Dmartech example send every
        # value as text); codes stay text.
        ("42", T.NUMBER),
        ("12.5", T.NUMBER),
        ("-0.25", T.NUMBER),
        ("9999999999", T.NUMBER),
        ("007", T.STRING),  # leading zeros
        ("13800138000", T.STRING),  # a phone number: more than 10 digits before the point
        ("+86", T.STRING),
        ("1e3", T.STRING),
        (" 12", T.STRING),
        ("1.2345678901234567", T.STRING),  # more digits than a double holds
        ("1,5", T.STRING),
        ("true", T.STRING),
        ("2024-01-02 03:04:05", T.DATETIME),
        ("2024-1-2 3:4:5", T.DATETIME),
        ("2024-01-02T03:04:05", T.DATETIME),
        ("2024-01-02T03:04:05.123456", T.DATETIME),
        ("2024-01-02", T.STRING),  # a date alone is too weak a signal
        ("2024-01-02 03:04", T.STRING),
        ("2024-01-02 03:04:05Z", T.STRING),
        ("x2024-01-02 03:04:05", T.STRING),
        ({"a": 1}, None),
    ],
)
def test_infer_type(value: Any, expected: PropertyType | None) -> None:
    assert infer_type(value) == expected


@given(st.one_of(st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.text())))
def test_inferred_type_accepts_the_value(value: Any) -> None:
    """Whatever is inferred from a value can hold it (finite numbers)."""
    ptype = infer_type(value)
    assert ptype is not None
    if isinstance(value, float) and not math.isfinite(value):
        rejected(ptype, value)
        return
    if isinstance(value, int) and abs(value) > 2**53:
        assert "stored exactly" in rejected(ptype, value).message  # refused, never rounded
        return
    if ptype is T.DATETIME:
        try:
            c(ptype, value)
        except CdpError:  # shape of a datetime, but not a valid one (e.g. month 13)
            return
    elif (
        ptype is T.STRING and len(value.encode("utf-8", "surrogatepass")) > LIMITS.max_string_bytes
    ):
        return
    else:
        c(ptype, value)


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers_are_kept_exactly_or_refused(x: int | float) -> None:
    """A number, as JSON or as text, is stored as exactly that number, or refused."""
    for sent in (x, str(x), repr(x)):
        try:
            got = c(T.NUMBER, sent)
        except CdpError as exc:
            assert "exactly" in exc.message
            assert isinstance(x, int) and abs(x) > 2**53
            continue
        assert got == x
        assert Decimal(repr(got)) == Decimal(str(x))


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_whole_numbers_come_back_as_integers(n: int) -> None:
    stored = float(c(T.NUMBER, n))  # the store keeps a double
    out = public(T.NUMBER, stored)
    assert out == n
    assert type(out) is int


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_exact_json_reading(d: Decimal) -> None:
    """A JSON number is read exactly: into a string property as its own text; into a number
    property as exactly that number, or refused."""
    text = str(d)
    if "E" in text or (text.startswith("-0") and d == 0):
        return  # (JSON spells exponents and zero its own way; covered by the float tests)
    body = ('{"x": ' + text + "}").encode()
    value = loads_exact(body)["x"]
    assert c(T.STRING, value) == text or Decimal(c(T.STRING, value)) == d
    try:
        got = c(T.NUMBER, value)
    except CdpError as exc:
        assert "exactly" in exc.message or "more digits" in exc.message
        return
    assert Decimal(repr(got)) == d


# ---- parse_datetime ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01 08:00:00", datetime(1970, 1, 1, tzinfo=UTC)),
        ("2024-1-2 3:4:5", datetime(2024, 1, 1, 19, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 1, 19, 4, 5, tzinfo=UTC)),
        ("2024-1-2", datetime(2024, 1, 1, 16, tzinfo=UTC)),
        ("2024-01-02 03:04", datetime(2024, 1, 1, 19, 4, tzinfo=UTC)),
        ("  2024-01-02 03:04:05  ", datetime(2024, 1, 1, 19, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05+0800", datetime(2024, 1, 1, 19, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05+08:00", datetime(2024, 1, 1, 19, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05-05:30", datetime(2024, 1, 2, 8, 34, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05 -0100", datetime(2024, 1, 2, 4, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05.5", datetime(2024, 1, 1, 19, 4, 5, 500_000, tzinfo=UTC)),
        ("2024-01-02 03:04:05.123456789Z", datetime(2024, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC)),
        ("2024-02-29 00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
        ("0001-01-01 00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_datetime(text: str, expected: datetime) -> None:
    assert parse_datetime(text, SH) == us(expected)


def test_parse_datetime_uses_the_zone_given() -> None:
    text = "2024-07-01 12:00:00"
    assert parse_datetime(text, UTC) == us(datetime(2024, 7, 1, 12, tzinfo=UTC))
    # New York is on daylight time in July (UTC-4) and standard time in January (UTC-5).
    ny = zone("America/New_York")
    assert parse_datetime(text, ny) == us(datetime(2024, 7, 1, 16, tzinfo=UTC))
    assert parse_datetime("2024-01-01 12:00:00", ny) == us(datetime(2024, 1, 1, 17, tzinfo=UTC))
    # An explicit offset wins over the zone.
    assert parse_datetime(text + "Z", ny) == parse_datetime(text, UTC)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "99999-01-01 00:00:00",
        "24-01-02 03:04:05",
        "2024/01/02 03:04:05",
        "2024-01-02 03:04:05 PM",
        "2024-001-02",
        "2024-01-02 03",
        "2024-01-02 03:04:05+8",
        "2024-01-02 03:04:05 UTC",
        "2024-13-01 00:00:00",
        "2024-02-30 00:00:00",
        "2023-02-29 00:00:00",
        "2024-01-32",
        "2024-01-02 24:00:00",
        "2024-01-02 23:60:00",
        "2024-01-02 23:59:60",
        "0000-01-01 00:00:00",
        "2024-01-02 03:04:05+24:00",
        "2024-01-02 03:04:05+00:60",
        "2024-01-02 03:04:05+01:99",
    ],
)
def test_parse_datetime_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_datetime(text, SH)


datetimes = st.datetimes(
    min_value=datetime(1, 1, 3), max_value=datetime(9999, 12, 29), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timedelta(minutes=m))


@given(datetimes)
def test_parse_of_iso_format_round_trips(dt: datetime) -> None:
    text = dt.strftime("%Y-%m-%d %H:%M:%S.%f").rjust(26, "0") + "Z"
    assert parse_datetime(text, SH) == us(dt)
    assert parse_datetime(text.replace(" ", "T"), SH) == us(dt)


@given(datetimes, offsets)
def test_parse_with_offset_round_trips(dt: datetime, offset: timedelta) -> None:
    local = dt.astimezone(timezone(offset))
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    off = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    text = (
        f"{local.year:04d}-{local.month}-{local.day} {local.hour}:{local.minute}:{local.second}"
        f".{local.microsecond:06d}{off}"
    )
    assert parse_datetime(text, SH) == us(dt)
    assert parse_datetime(text.replace(off, off.replace(":", "")), SH) == us(dt)


@given(datetimes)
def test_unpadded_and_padded_are_the_same(dt: datetime) -> None:
    naive = dt.replace(tzinfo=None, microsecond=0)
    padded = naive.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0")
    unpadded = (
        f"{naive.year:04d}-{naive.month}-{naive.day} {naive.hour}:{naive.minute}:{naive.second}"
    )
    assert (
        parse_datetime(padded, UTC)
        == parse_datetime(unpadded, UTC)
        == us(dt.replace(microsecond=0))
    )


# ---- epoch numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1, 1_000_000),
        (1.5, 1_500_000),
        (1_700_000_000, 1_700_000_000_000_000),  # seconds
        (1_700_000_000_000, 1_700_000_000_000_000),  # milliseconds
        (1_700_000_000_123, 1_700_000_000_123_000),
        (99_999_999_999, 99_999_999_999_000_000),  # the largest count read as seconds
        (100_000_000_000, 100_000_000_000_000),  # the smallest read as milliseconds
        (-86_400, -86_400_000_000),
    ],
)
def test_epoch_to_us(value: float, expected: int) -> None:
    assert epoch_to_us(value) == expected
    assert c(T.DATETIME, value) == expected


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e30, -1e30, 10**20])
def test_epoch_out_of_range(value: float) -> None:
    with pytest.raises(ValueError):
        epoch_to_us(value)
    rejected(T.DATETIME, value)


# ---- coerce -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ptype", "value", "expected"),
    [
        (T.STRING, "abc", "abc"),
        (T.STRING, "", ""),
        (T.STRING, 12, "12"),
        (T.STRING, 12.0, "12"),
        (T.STRING, 12.5, "12.5"),
        (T.STRING, 1e20, "1e+20"),
        (T.STRING, True, "true"),
        (T.STRING, False, "false"),
        (T.NUMBER, 3, 3),  # whole numbers stay ints
        (T.NUMBER, 3.0, 3.0),
        (T.NUMBER, -2.5, -2.5),
        (T.NUMBER, "42", 42),
        (T.NUMBER, "4.0", 4.0),
        (T.NUMBER, "12.50", 12.5),
        (T.NUMBER, " -1.5e3 ", -1500.0),
        (T.NUMBER, ".5", 0.5),
        (T.NUMBER, "+7", 7),
        (T.NUMBER, 2**53, 2**53),
        (T.NUMBER, -(2**53), -(2**53)),
        (T.NUMBER, 1e300, 1e300),  # a float is a double already
        (T.NUMBER, Decimal("0.1"), 0.1),
        (T.STRING, 12345678901234567890123456789, "12345678901234567890123456789"),
        (T.STRING, Decimal("1.2345678901234567890123"), "1.2345678901234567890123"),
        (T.BOOL, True, True),
        (T.BOOL, 0, False),
        (T.BOOL, 1, True),
        (T.BOOL, "TRUE", True),
        (T.BOOL, " yes ", True),
        (T.BOOL, "no", False),
        (T.BOOL, "0", False),
        (T.DATETIME, "1970-1-1 8:0:0", 0),
        (T.DATETIME, "2024-01-02 03:04:05Z", us(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))),
        (T.LIST, [], []),
        (T.LIST, ["a", 1, 2.5, True, None], ["a", "1", "2.5", "true"]),
    ],
)
def test_coerce(ptype: PropertyType, value: Any, expected: Any) -> None:
    got = c(ptype, value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("ptype", "value", "reason"),
    [
        (T.STRING, ["a"], "expected a string"),
        (T.STRING, {"a": 1}, "nested objects"),
        (T.NUMBER, "abc", "expected a number"),
        (T.NUMBER, "", "expected a number"),
        (T.NUMBER, "1,5", "expected a number"),
        (T.NUMBER, "nan", "expected a number"),
        (T.NUMBER, "inf", "expected a number"),
        (T.NUMBER, "1e999", "finite"),
        (T.NUMBER, 2**53 + 1, "at most 9007199254740992"),
        (T.NUMBER, 12345678901234567890123456789, "too large to be stored exactly"),
        (T.NUMBER, "12345678901234567890123456789", "too large to be stored exactly"),
        (T.NUMBER, "1.2345678901234567890123", "more digits than a number property holds"),
        (T.NUMBER, Decimal("1.2345678901234567890123"), "more digits"),
        (T.NUMBER, "9" * 5000, "too large to be stored exactly"),  # (past int's text limit)
        (T.NUMBER, "1e999999999", "finite"),
        (T.NUMBER, Decimal("1e-999999999"), "more digits"),
        (T.NUMBER, math.nan, "finite"),
        (T.NUMBER, True, "boolean"),
        (T.NUMBER, [1], "expected a number"),
        (T.NUMBER, {"a": 1}, "nested objects"),
        (T.BOOL, 2, "expected a boolean"),
        (T.BOOL, "maybe", "expected a boolean"),
        (T.BOOL, 1.5, "expected a boolean"),
        (T.BOOL, [True], "expected a boolean"),
        (T.DATETIME, "yesterday", "expected a datetime"),
        (T.DATETIME, "99999-01-01 00:00:00", "expected a datetime"),
        (T.DATETIME, "9999-12-31 23:59:59", "out of range"),
        (T.DATETIME, "0001-01-01 00:00:00", "out of range"),
        (T.DATETIME, "2024-02-30 00:00:00", "not a valid date"),
        (T.DATETIME, True, "expected a datetime"),
        (T.DATETIME, ["2024-01-01"], "expected a datetime"),
        (T.LIST, "a,b", "expected a list"),
        (T.LIST, 1, "expected a list"),
        (T.LIST, [[1]], "list items"),
        (T.LIST, [{"a": 1}], "list items"),
    ],
)
def test_coerce_rejects_naming_the_property(ptype: PropertyType, value: Any, reason: str) -> None:
    err = rejected(ptype, value)
    assert reason in err.message


def test_coerce_limits() -> None:
    small = Limits(max_string_bytes=8, max_list_items=2)
    assert c(T.STRING, "12345678", small) == "12345678"
    assert "longer than 8 bytes" in rejected(T.STRING, "123456789", small).message
    # Bytes, not characters: three 3-byte characters are 9 bytes.
    assert c(T.STRING, "上海", small) == "上海"
    rejected(T.STRING, "上海市", small)
    assert c(T.LIST, ["a", "b"], small) == ["a", "b"]
    assert "at most 2" in rejected(T.LIST, ["a", "b", "c"], small).message
    rejected(T.LIST, ["123456789"], small)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_number_round_trips_through_text(x: float) -> None:
    assert c(T.NUMBER, x) == x
    assert c(T.NUMBER, repr(x)) == x
    assert c(T.NUMBER, c(T.STRING, x)) == x


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_integers_as_strings_have_no_decimal_point(n: int) -> None:
    assert c(T.STRING, n) == str(n)
    assert c(T.STRING, float(n)) == str(n)


@given(st.lists(st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none())))
def test_list_items_become_strings(items: list[Any]) -> None:
    got = c(T.LIST, items)
    assert all(isinstance(x, str) for x in got)
    assert len(got) == sum(x is not None for x in items)


@pytest.mark.parametrize(
    ("text", "long"),
    [
        (b'{"id": "2018071216423310001", "n": 1.5}', False),  # digits in a string
        (b'{"n": 0.12345678901234567}', True),
        (b'{"n":-12345678901234567890}', True),
        (b'{"l": [1, 2,\n  12345678901234567890]}', True),
        (b'{"l": [12345678901234567890]}', True),
        (b'{"n": 123456789012345}', False),  # 15 digits: a double holds it
        (b'{"n": 1e-400}', True),  # below the smallest double: orjson would read 0.0
        (b'{"n": 1.5e300}', True),
        (b'{"n": 1.5e30}', False),
    ],
)
def test_long_numbers_are_found_where_numbers_can_be(text: bytes, long: bool) -> None:
    from opencdp.catalog.types import long_numbers

    assert long_numbers(text) is long


@given(
    st.recursive(
        st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()),
        lambda inner: st.one_of(st.lists(inner), st.dictionaries(st.text(), inner)),
        max_leaves=10,
    )
)
def test_json_is_read_exactly_wherever_the_number_is(value: Any) -> None:
    """Every integer comes back as exactly that integer, at any depth."""
    import json as stdjson

    got = loads_exact(stdjson.dumps({"v": value}))["v"]
    assert got == value


def test_an_integer_past_pythons_text_limit_is_refused_with_a_message() -> None:
    huge = 10**5000  # (more digits than Python turns into text)
    assert "a number of about 5000 digits" in rejected(T.NUMBER, huge).message
