"""Request values read at the edge: numbers, ids, dates and shapes, each checked once, here.

Every surface turns what a client sent (query strings, path segments, form fields, JSON
members) into Python values through these helpers, so a value the engines cannot hold — an id
over 64 bits, a page past what SQLite can offset, a date Python cannot move to UTC, a string
where an object belongs — is refused where it arrives, as a :class:`CdpError` naming the field
(``validation_failed``, or ``missing_parameter`` when it is absent), and never reaches SQLite,
DuckDB or a job. Each surface maps those codes to its vendor's.

>>> ident("42", "clusterId")
42
>>> from opencdp.errors import CdpError
>>> try:
...     ident("0", "clusterId")
... except CdpError as exc:
...     print(exc.code.value, exc.message)
validation_failed clusterId: expected an integer from 1 to 9223372036854775807, got '0'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from opencdp.errors import invalid, missing

MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)
MAX_ID = MAX_INT64  # ids are positive and fit a signed 64-bit column (SQLite, DuckDB BIGINT)
MAX_INT32 = 2**31 - 1  # page numbers and sizes: what the vendors' own (Java) servers take
# Dates a request may name: those Python can shift by a day and a time-zone offset either way
# and the engines store; the same bounds as the datetimes of records (catalog.types).
MIN_DATE = date(1, 1, 2)
MAX_DATE = date(9999, 12, 30)

_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: str.isdigit() also takes '²'
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COMPACT = re.compile(r"[0-9]{8}(?:[0-9]{2}(?:[0-9]{2})?)?")
_MAX_DIGITS = 40  # longer text is out of every range; never handed to int()


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:40] + "…"


def integer(
    value: Any,
    field: str,
    minimum: int = MIN_INT64,
    maximum: int = MAX_INT64,
) -> int:
    """An integer from an int, a whole float (JSON ``1.0``) or decimal text, within bounds.

    Booleans are not integers here (``true`` is not ``1``).

    >>> integer("  -7 ", "n"), integer(3.0, "n"), integer("2", "file_type", 1, 2)
    (-7, 3, 2)
    >>> integer(True, "n", 0, 9)
    Traceback (most recent call last):
    ...
    opencdp.errors.CdpError: n: expected an integer from 0 to 9, got True
    """
    if value is None or value == "":
        raise missing(field)
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2.0**64:
            number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) <= _MAX_DIGITS and _INTEGER.fullmatch(text):
            number = int(text)
    if number is None or not minimum <= number <= maximum:
        raise invalid(field, f"expected an integer from {minimum} to {maximum}, got {_show(value)}")
    return number


def ident(value: Any, field: str) -> int:
    """An id: a positive integer that fits a signed 64-bit column."""
    return integer(value, field, 1, MAX_ID)


def optional_int(
    value: Any, field: str, default: int, minimum: int = MIN_INT64, maximum: int = MAX_INT64
) -> int:
    """:func:`integer`, or ``default`` when the value is absent (``None`` or empty text)."""
    if value is None or value == "":
        return default
    return integer(value, field, minimum, maximum)


def check_day(day: date, field: str) -> date:
    """``day``, if it is within :data:`MIN_DATE` .. :data:`MAX_DATE`."""
    if isinstance(day, datetime):
        day = day.date()
    if not MIN_DATE <= day <= MAX_DATE:
        raise invalid(field, f"dates run from {MIN_DATE} to {MAX_DATE}, got {day.isoformat()}")
    return day


def day(value: Any, field: str) -> date:
    """A calendar date written ``YYYY-MM-DD``, within :data:`MIN_DATE` .. :data:`MAX_DATE`.

    >>> day("2024-02-29", "from")
    datetime.date(2024, 2, 29)
    >>> day("2023-02-29", "from")
    Traceback (most recent call last):
    ...
    opencdp.errors.CdpError: from: no such date: '2023-02-29'
    """
    if value is None or value == "":
        raise missing(field)
    if not isinstance(value, str) or not _DAY.fullmatch(value):
        raise invalid(field, f"expected a date YYYY-MM-DD, got {_show(value)}")
    try:
        parsed = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise invalid(field, f"no such date: {_show(value)}") from None
    return check_day(parsed, field)


def compact_time(value: Any, field: str) -> datetime:
    """A local time written ``yyyyMMdd[HH[mm]]`` (an export date), its day within
    :data:`MIN_DATE` .. :data:`MAX_DATE`.

    >>> compact_time("20240301", "export_date"), compact_time("2024030113", "export_date")
    (datetime.datetime(2024, 3, 1, 0, 0), datetime.datetime(2024, 3, 1, 13, 0))
    """
    if value is None or value == "":
        raise missing(field)
    if not isinstance(value, str) or not _COMPACT.fullmatch(value):
        raise invalid(field, f"expected yyyyMMdd, yyyyMMddHH or yyyyMMddHHmm, got {_show(value)}")
    padded = value + "0000"[: 12 - len(value)]
    try:
        parsed = datetime.strptime(padded, "%Y%m%d%H%M")
    except ValueError:
        raise invalid(field, f"no such date or time: {_show(value)}") from None
    check_day(parsed.date(), field)
    return parsed


def mapping(value: Any, field: str, required: bool = False) -> dict[str, Any]:
    """A JSON object; absent (``None``) is an empty one unless ``required``."""
    if value is None:
        if required:
            raise missing(field)
        return {}
    if not isinstance(value, Mapping):
        raise invalid(field, f"expected an object, got {_kind(value)}")
    return dict(value)


def text(value: Any, field: str, required: bool = False, max_length: int | None = None) -> str:
    """A string; absent (``None``) is empty text unless ``required``."""
    if value is None or (required and value == ""):
        if required:
            raise missing(field)
        return ""
    if not isinstance(value, str):
        raise invalid(field, f"expected text, got {_kind(value)}")
    if max_length is not None and len(value) > max_length:
        raise invalid(field, f"longer than {max_length} characters")
    return value


def word(value: Any, field: str, max_length: int = 40) -> str | None:
    """A short name made of ASCII letters, digits and ``._:-`` (a charset, a format), or
    ``None`` when absent.

    >>> word(" gb18030 ", "charset"), word("", "charset")
    ('gb18030', None)
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _WORD.fullmatch(value.strip()):
        raise invalid(field, f"expected a name of letters, digits and ._:-, got {_show(value)}")
    if len(value.strip()) > max_length:
        raise invalid(field, f"longer than {max_length} characters")
    return value.strip()


def flag(value: Any, field: str, default: bool = False) -> bool:
    """A boolean: JSON ``true``/``false``, or the text ``true``/``false``/``1``/``0``.

    >>> flag("TRUE", "stop_on_error"), flag("0", "stop_on_error"), flag(None, "x", True)
    (True, False, True)
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    raise invalid(field, f"expected true or false, got {_show(value)}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "a boolean"}
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
