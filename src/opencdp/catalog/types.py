"""Property types: inference from JSON values and coercion of incoming values (pure functions).

Values are coerced to the form the log and the store keep: strings, numbers (ints and floats),
bools, lists of strings, and datetimes as integer microseconds since the epoch (UTC).

Numbers are IEEE doubles in the store. Every number we accept is one a double holds exactly:
whole numbers up to 2**53, and decimals whose digits survive the round trip. Anything else is
refused with a message instead of being rounded, and whole numbers come back out as integers
(:func:`public`).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from opencdp.config import Limits
from opencdp.errors import CdpError, invalid


class PropertyType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    DATETIME = "datetime"
    LIST = "list"
    OBJECT = "object"  # a nested document: collection fields only


# Property types of profiles and events (stored as columns); collections also take objects.
COLUMN_TYPES = tuple(t for t in PropertyType if t is not PropertyType.OBJECT)

TABLES = ("user", "event")

# YYYY-M-D[ H:M[:S[.ffffff]]][Z|±HH[:]MM]; browser code sends fields unpadded.
_DATETIME = re.compile(
    r"\s*(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,9}))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*"
)
# Strings of this exact shape are inferred as datetimes for properties seen for the first time.
INFER_DATETIME = re.compile(r"\d{4}-\d{1,2}-\d{1,2}[ T]\d{1,2}:\d{1,2}:\d{1,2}(\.\d{1,9})?")
# Text a number property takes (surrounding spaces, a sign, an exponent).
NUMBER_TEXT = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
# Text read as a number when a property is first seen: a plain decimal with no leading zeros,
# at most 10 digits before the point and 15 in all. Codes stay text: leading zeros, a plus
# sign, phone numbers and longer IDs, exponents, spaces.
INFER_NUMBER = re.compile(r"-?(0|[1-9]\d{0,9})(\.\d+)?")
INFER_NUMBER_DIGITS = 15
# Whole numbers a double holds exactly (as JavaScript's Number.MAX_SAFE_INTEGER + 1).
MAX_EXACT_INT = 2**53
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Text a boolean property takes, in any case.
TRUE_TEXTS = frozenset({"true", "1", "yes"})
FALSE_TEXTS = frozenset({"false", "0", "no"})


@lru_cache(maxsize=256)
def zone(name: str) -> tzinfo:
    """The tzinfo of an IANA zone name; raises ValueError for an unknown one.

    >>> zone("Asia/Shanghai").utcoffset(None) is None
    True
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


def infer_type(value: Any, numeric_text: bool = True) -> PropertyType | None:
    """The type of a property first seen with ``value``; None when the value says nothing.
    Plain decimals in text are numbers unless ``numeric_text`` is false (senders whose values
    carry their JSON types, such as ThinkingData's SDKs).

    >>> infer_type(3), infer_type("2024-1-2 03:04:05"), infer_type("abc"), infer_type(None)
    (<PropertyType.NUMBER: 'number'>, <PropertyType.DATETIME: 'datetime'>, \
<PropertyType.STRING: 'string'>, None)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return PropertyType.BOOL
    if isinstance(value, int | float):
        return PropertyType.NUMBER
    if isinstance(value, list):
        return PropertyType.LIST
    if isinstance(value, Decimal):
        return PropertyType.NUMBER  # a JSON number with more digits than a double: refused
    if isinstance(value, str):
        if INFER_DATETIME.fullmatch(value):
            return PropertyType.DATETIME
        if numeric_text and is_numeric_text(value):
            return PropertyType.NUMBER
        return PropertyType.STRING
    return None  # objects: coerce() rejects them with a message naming the property


def is_numeric_text(text: str) -> bool:
    """Whether a new property first seen with ``text`` is a number (see INFER_NUMBER).

    >>> [is_numeric_text(t) for t in ("12.5", "-3", "007", "13800138000", "+1", "1e3")]
    [True, True, False, False, False, False]
    """
    return (
        INFER_NUMBER.fullmatch(text) is not None
        and sum(c.isdigit() for c in text) <= INFER_NUMBER_DIGITS
    )


def exact_number(value: int | float | Decimal | str, name: str) -> int | float:
    """``value`` as the int or float the store keeps exactly, or a validation error.

    >>> exact_number("12.50", "x"), exact_number(3, "x"), exact_number("4", "x")
    (12.5, 3, 4)
    """
    if isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(name, "expected a finite number")
        return value
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INT:
            raise _too_large(name, _int_text(value))
        return value
    text = str(value).strip()
    try:
        exact = Decimal(text)
    except InvalidOperation:
        raise invalid(name, f"expected a number, got {_show(value)}") from None
    if not exact.is_finite():
        raise invalid(name, "expected a finite number")
    if "e" not in text.lower() and "." not in text:  # a whole number, written out
        # (more than 16 digits is past 2**53: refused before the text becomes an int)
        if exact.adjusted() >= 16 or abs(int(exact)) > MAX_EXACT_INT:
            raise _too_large(name, text)
        return int(exact)
    number = float(exact)
    if not math.isfinite(number):
        raise invalid(name, "expected a finite number")
    if Decimal(repr(number)) != exact:
        raise invalid(
            name,
            f"{_show_number(text)} has more digits than a number property holds exactly "
            "(about 15 significant digits); send it as text to a string property",
        )
    return number


def _too_large(name: str, text: str) -> CdpError:
    return invalid(
        name,
        f"{_show_number(text)} is too large to be stored exactly: whole numbers may be at most "
        f"{MAX_EXACT_INT} in magnitude; send it as text to a string property",
    )


def _int_text(value: int) -> str:
    """An integer's digits, or its size when it has more than Python turns into text."""
    if value.bit_length() > 10_000:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    return str(value)


def public(ptype: PropertyType, value: Any) -> Any:
    """A stored value as clients see it: whole numbers as integers (``3``, not ``3.0``).

    >>> public(PropertyType.NUMBER, 3.0), public(PropertyType.NUMBER, 2.5)
    (3, 2.5)
    """
    if ptype is PropertyType.NUMBER and isinstance(value, float):
        return public_number(value)
    return value


def public_number(value: float) -> int | float:
    """A stored number as clients see it: whole numbers a double holds exactly as integers.

    >>> public_number(12.0), public_number(0.1), public_number(1e300) == 1e300
    (12, 0.1, True)
    """
    if value.is_integer() and abs(value) <= MAX_EXACT_INT:
        return int(value)
    return value


# A JSON number with 16 or more digits and points, or an exponent of three digits: only such a
# number can be one that orjson rounds (a double does not hold it). A number follows ':', '['
# or ',' (and maybe blanks); a long run of digits in a string (an order id) matches only after
# one of those, and then costs an exact parse, nothing more.
_LONG_NUMBER = re.compile(rb"[:\[,][ \t\r\n]*-?[0-9](?:[0-9.]{15}|[0-9.]*[eE][+-]?[0-9]{3})")


def long_numbers(raw: bytes | bytearray) -> bool:
    """Whether a JSON text may hold a number that orjson would round (a cheap, byte-level
    test).

    >>> long_numbers(b'{"id": "2018071216423310001", "n": 1.5}')
    False
    >>> long_numbers(b'{"n": 0.12345678901234567}')
    True
    """
    return _LONG_NUMBER.search(raw) is not None


def loads_exact(data: bytes | bytearray | str) -> Any:
    """``orjson.loads(data)``, except that numbers a double cannot hold exactly are read as they
    are written: integers as ints, decimals as :class:`~decimal.Decimal`. The coercions then
    store them as text or refuse them, never round them."""
    value = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if not long_numbers(raw):
        return value
    try:
        return json.loads(raw, parse_float=exact_float)
    except RecursionError:  # deeper than json's recursion allows: nesting is refused later
        return value


def exact_float(text: str) -> float | Decimal:
    """A JSON decimal as a float when the float holds it exactly, else as a Decimal.

    >>> exact_float("12.5"), exact_float("0.12345678901234567")
    (12.5, Decimal('0.12345678901234567'))
    """
    number = float(text)
    if math.isfinite(number) and Decimal(repr(number)) == Decimal(text):
        return number
    return Decimal(text)


def _show_number(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def parse_datetime(text: str, tz: tzinfo) -> int:
    """Microseconds since the epoch (UTC) of ``text``, read in ``tz`` unless it carries an offset.

    >>> parse_datetime("1970-1-1 8:0:0", zone("Asia/Shanghai"))
    0
    >>> parse_datetime("1970-01-01T00:00:01.5Z", zone("Asia/Shanghai"))
    1500000
    """
    m = _DATETIME.fullmatch(text)
    if not m:
        raise ValueError("expected a datetime like 'YYYY-MM-DD HH:MM:SS'")
    y, mo, d, h, mi, s, frac, off = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    zone_info: tzinfo = tz
    if off:
        if off == "Z":
            zone_info = UTC
        else:
            sign = -1 if off[0] == "-" else 1
            digits = off[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 23 or minutes > 59:
                raise ValueError(f"not a valid UTC offset {off!r}")
            zone_info = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        dt = datetime(
            int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro, zone_info
        )
        delta = dt - _EPOCH
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid date or time ({exc})") from None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


MIN_US = parse_datetime("0001-01-02 00:00:00Z", UTC)  # the datetimes a property takes
MAX_US = parse_datetime("9999-12-30 00:00:00Z", UTC)


def epoch_to_us(value: float) -> int:
    """Epoch seconds, or milliseconds when the number is too large to be seconds.

    >>> epoch_to_us(1_700_000_000), epoch_to_us(1_700_000_000_123)
    (1700000000000000, 1700000000123000)
    """
    us = value * 1_000 if abs(value) >= 100_000_000_000 else value * 1_000_000
    if not math.isfinite(us) or not MIN_US <= us <= MAX_US:
        raise ValueError("timestamp out of range")
    return int(us)


def coerce(ptype: PropertyType, value: Any, name: str, limits: Limits, tz: tzinfo) -> Any:
    """``value`` in the stored form of ``ptype``, or a validation error naming the property.

    >>> from opencdp.config import Limits
    >>> coerce(PropertyType.NUMBER, " 12.50 ", "amount", Limits(), UTC)
    12.5
    >>> coerce(PropertyType.BOOL, "Yes", "vip", Limits(), UTC)
    True
    >>> coerce(PropertyType.STRING, 3.0, "code", Limits(), UTC)
    '3'
    >>> coerce(PropertyType.NUMBER, "lots", "amount", Limits(), UTC)
    Traceback (most recent call last):
    ...
    opencdp.errors.CdpError: amount: expected a number, got 'lots'
    """
    if ptype is PropertyType.OBJECT:
        if isinstance(value, str):
            value = _json_object(value)
        if not isinstance(value, dict):
            raise invalid(name, f"expected an object, got {_show(value)}")
        if len(orjson.dumps(value)) > limits.max_string_bytes:
            raise invalid(name, f"object larger than {limits.max_string_bytes} bytes")
        return value
    if isinstance(value, dict):
        raise invalid(name, "nested objects are not supported; expected a " + ptype.value)
    if ptype is PropertyType.STRING:
        if isinstance(value, str):
            return check_string(value, name, limits)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return _number_text(value)
        if isinstance(value, Decimal):
            return str(value)
        raise invalid(name, "expected a string, got a list")
    if ptype is PropertyType.NUMBER:
        if isinstance(value, bool):
            raise invalid(name, "expected a number, got a boolean")
        if isinstance(value, int | float | Decimal) or (
            isinstance(value, str) and NUMBER_TEXT.fullmatch(value)
        ):
            return exact_number(value, name)
        raise invalid(name, f"expected a number, got {_show(value)}")
    if ptype is PropertyType.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            low = value.strip().lower()
            if low in TRUE_TEXTS:
                return True
            if low in FALSE_TEXTS:
                return False
        raise invalid(name, f"expected a boolean, got {_show(value)}")
    if ptype is PropertyType.DATETIME:
        try:
            if (
                isinstance(value, str)
                and value.strip().isdigit()
                and len(value.strip()) in (10, 13)
            ):
                return epoch_to_us(int(value))  # epoch seconds or milliseconds, as text
            if isinstance(value, str):
                us = parse_datetime(value, tz)
                if not MIN_US <= us <= MAX_US:
                    raise ValueError("datetime out of range")
                return us
            if isinstance(value, int | float) and not isinstance(value, bool):
                return epoch_to_us(value)
        except ValueError as exc:
            raise invalid(name, f"{exc}, got {_show(value)}") from None
        raise invalid(name, f"expected a datetime, got {_show(value)}")
    # LIST
    if not isinstance(value, list):
        raise invalid(name, f"expected a list, got {_show(value)}")
    if len(value) > limits.max_list_items:
        raise invalid(name, f"a list holds at most {limits.max_list_items} items")
    items = []
    for item in value:
        if isinstance(item, dict | list):
            raise invalid(name, "list items must be strings, numbers or booleans")
        if item is None:
            continue
        items.append(coerce(PropertyType.STRING, item, name, limits, tz))
    return items


def _json_object(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def check_string(value: str, name: str, limits: Limits) -> str:
    # len() counts characters; a UTF-8 character is at most 4 bytes, so encode only when needed.
    if len(value) * 4 > limits.max_string_bytes and (
        len(value.encode("utf-8", "surrogatepass")) > limits.max_string_bytes
    ):
        raise invalid(name, f"string longer than {limits.max_string_bytes} bytes")
    return value


def _number_text(value: float) -> str:
    return str(public_number(value)) if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
