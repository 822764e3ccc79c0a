"""Whole columns of text from a file, typed by the catalog: the bulk counterpart of ``coerce``.

Numbers, booleans and strings are checked and converted with Arrow compute kernels, a column at
a time; datetimes and lists, whose formats are richer, go value by value through the same
``coerce`` the single-record API uses, so both paths accept exactly the same values.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from opencdp.catalog import types as ct
from opencdp.catalog.types import PropertyType
from opencdp.config import Limits
from opencdp.errors import CdpError

_NUMBER_RE = "^" + ct.NUMBER_TEXT.pattern + "$"
_INFER_NUMBER_RE = "^" + ct.INFER_NUMBER.pattern + "$"
_DATETIME_RE = "^" + ct.INFER_DATETIME.pattern + "$"
ARROW: dict[PropertyType, pa.DataType] = {
    PropertyType.STRING: pa.string(),
    PropertyType.NUMBER: pa.float64(),
    PropertyType.BOOL: pa.bool_(),
    PropertyType.DATETIME: pa.timestamp("us"),
    PropertyType.LIST: pa.list_(pa.string()),
}

Problems = dict[int, str]  # index in the column -> reason


def infer(values: pa.Array) -> PropertyType:
    """The type of a new property from the text values of its column: the first of number,
    boolean, datetime and list that every one of the first values reads as, and all but at
    most 1% of the others (rows that do not then fail, naming the column); else string.

    >>> infer(pa.array(["1", "2.5", None])), infer(pa.array(["yes", "no"]))
    (<PropertyType.NUMBER: 'number'>, <PropertyType.BOOL: 'bool'>)
    """
    present = pc.drop_null(values)
    if len(present) == 0:
        return PropertyType.STRING
    # A type the first values already refute is not checked against the whole column.
    sample = present.slice(0, _SAMPLE)
    for ptype, fits in _CANDIDATES:
        if _all(fits(sample)) and (
            len(sample) == len(present) or _share(fits(present)) >= _INFER_SHARE
        ):
            return ptype
    return PropertyType.STRING


def _all(values: pa.Array) -> bool:
    return bool(pc.all(values).as_py())


def _share(values: pa.Array) -> float:
    return float(pc.sum(values).as_py() or 0) / max(len(values), 1)


def _digits(values: pa.Array) -> pa.Array:
    """How many characters of each value are not '-' or '.' (its digits, for values that
    match INFER_NUMBER)."""
    plain = pc.replace_substring(pc.replace_substring(values, "-", ""), ".", "")
    return pc.utf8_length(plain)


_SAMPLE = 2048
_INFER_SHARE = 0.99
_BOOLS = pa.array(sorted(ct.TRUE_TEXTS | ct.FALSE_TEXTS))
# Each candidate type, and which of a column's values read as it.
_CANDIDATES: list[tuple[PropertyType, Callable[[pa.Array], pa.Array]]] = [
    (
        PropertyType.NUMBER,
        lambda v: pc.and_(
            pc.match_substring_regex(v, _INFER_NUMBER_RE),
            pc.less_equal(_digits(v), ct.INFER_NUMBER_DIGITS),
        ),
    ),
    (PropertyType.BOOL, lambda v: pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(v)), _BOOLS)),
    (PropertyType.DATETIME, lambda v: pc.match_substring_regex(v, _DATETIME_RE)),
    (PropertyType.LIST, lambda v: pc.starts_with(pc.utf8_trim_whitespace(v), "[")),
]


def coerce_column(
    ptype: PropertyType,
    values: pa.Array,
    name: str,
    limits: Limits,
    tz: tzinfo,
    problems: Problems,
    notes: Problems,
) -> pa.Array:
    """``values`` (text) as ``ptype``. A bad value is null in the result and its index is put in
    ``problems`` with the reason; a value accepted with a change goes to ``notes``."""
    if ptype is PropertyType.STRING:
        too_long = pc.greater(pc.binary_length(values), limits.max_string_bytes)
        if pc.any(too_long).as_py():
            cut = []
            for i, v in enumerate(values.to_pylist()):
                if (
                    v is not None
                    and len(v.encode("utf-8", "surrogatepass")) > limits.max_string_bytes
                ):
                    v = v.encode("utf-8", "surrogatepass")[: limits.max_string_bytes].decode(
                        "utf-8", "ignore"
                    )
                    notes.setdefault(i, f"{name}: truncated to {limits.max_string_bytes} bytes")
                cut.append(v)
            return pa.array(cut, pa.string())
        return values
    if ptype is PropertyType.NUMBER:
        ok = pc.match_substring_regex(values, _NUMBER_RE)
        clean = pc.if_else(ok, values, pa.scalar(None, pa.string()))
        try:
            numbers = pc.cast(pc.utf8_trim_whitespace(clean), pa.float64())
        except pa.ArrowInvalid:
            numbers = pa.array([None if v is None else float(v) for v in clean.to_pylist()])
        # Text of 16 characters or more may hold more digits than a double keeps: those values
        # are checked one by one, and refused rather than rounded.
        long = pc.fill_null(pc.greater(pc.utf8_length(clean), 15), False)
        if pc.any(long).as_py():
            numbers = _exact_numbers(clean, numbers, long, name, problems)
        finite = pc.is_finite(numbers)
        _flag(values, pc.and_(ok, pc.fill_null(finite, True)), problems, name, "expected a number")
        return pc.if_else(finite, numbers, pa.scalar(None, pa.float64()))
    if ptype is PropertyType.BOOL:
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(values))
        true = pc.is_in(lowered, pa.array(sorted(ct.TRUE_TEXTS)))
        false = pc.is_in(lowered, pa.array(sorted(ct.FALSE_TEXTS)))
        _flag(values, pc.or_(true, false), problems, name, "expected a boolean")
        return pc.if_else(true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_())))
    if ptype is PropertyType.DATETIME and (plain := _plain_datetimes(values, tz)) is not None:
        # Plain values by Arrow kernels; the others one by one.
        rest = pc.and_(pc.is_valid(values), pc.is_null(plain))
        if not pc.any(rest).as_py():
            return plain.cast(ARROW[ptype])
        out: list[object] = plain.to_pylist()
        for i in pc.indices_nonzero(rest).to_pylist():
            out[i] = _coerce_one(ptype, values[i].as_py(), name, limits, tz, problems, i)
        return pa.array(out, ARROW[ptype])
    out = []
    for i, v in enumerate(values.to_pylist()):
        if v is None:
            out.append(None)
            continue
        if ptype is PropertyType.LIST:
            try:
                parsed = orjson.loads(v)
            except orjson.JSONDecodeError:
                parsed = v  # not a JSON array: coerce says what it expected
            out.append(_coerce_one(ptype, parsed, name, limits, tz, problems, i))
        else:
            out.append(_coerce_one(ptype, v, name, limits, tz, problems, i))
    return pa.array(out, ARROW[ptype])


def _coerce_one(
    ptype: PropertyType,
    v: object,
    name: str,
    limits: Limits,
    tz: tzinfo,
    problems: Problems,
    i: int,
) -> object:
    try:
        return ct.coerce(ptype, v, name, limits, tz)
    except CdpError as exc:
        problems.setdefault(i, exc.message)
        return None


# Local date-times written exactly as 'YYYY-MM-DD HH:MM:SS' (or with a 'T'), each field in its
# range (a day past its month's end aside), from 1970 to 2037, the years whose offsets both
# Python's and Arrow's zone databases list change by change: most of every file.
_PLAIN_DATETIME_RE = (
    r"^(19[7-9]\d|20[0-2]\d|203[0-7])-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"[ T]([01]\d|2[0-3]):[0-5]\d:[0-5]\d$"
)


_REPEAT_SAMPLE = 1 << 16  # the values whose repeats tell whether to read each distinct value once


def _repeats(sample: pa.Array) -> bool:
    """Whether a quarter of the values of ``sample`` repeat earlier ones."""
    return len(sample.dictionary_encode().dictionary) * 4 <= len(sample) * 3


def _plain_datetimes(values: pa.Array, tz: tzinfo) -> pa.Array | None:
    """Microseconds since the epoch of the values written as 'YYYY-MM-DD HH:MM:SS' in ``tz``,
    read with Arrow kernels; null for every other value, and for those that ``coerce`` must
    judge: a day past the end of its month (Arrow would roll it over into the next), a local
    time a change of offset skips (Arrow and Python place it differently), one out of range.
    None when no value is plain, or Arrow does not know ``tz``. An ambiguous local time is the
    earlier instant, as Python's ``fold=0`` makes it."""
    zone_name = getattr(tz, "key", None)
    if zone_name is None:
        return None
    if len(values) >= 2 * _REPEAT_SAMPLE and _repeats(values.slice(0, _REPEAT_SAMPLE)):
        # Times that repeat (to the minute, the day) are each read once.
        encoded = values.dictionary_encode()
        once = _plain_datetimes(encoded.dictionary, tz)
        return None if once is None else once.take(encoded.indices)
    plain = pc.fill_null(pc.match_substring_regex(values, _PLAIN_DATETIME_RE), False)
    if not pc.any(plain).as_py():
        return None
    text = pc.if_else(plain, values, pa.scalar(None, pa.string()))
    if pc.any(pc.match_substring(text, "T")).as_py():
        text = pc.replace_substring(text, "T", " ")
    local = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
    day = pc.cast(pc.utf8_slice_codeunits(text, 8, 10), pa.int64())
    try:
        us = pc.assume_timezone(local, timezone=zone_name, ambiguous="earliest").cast(pa.int64())
        ok = pc.equal(pc.day(local), day)
    except pa.ArrowInvalid:  # a local time the zone skips (those go by coerce), or no such zone
        try:
            early, late = (
                pc.assume_timezone(
                    local, timezone=zone_name, ambiguous="earliest", nonexistent=gap
                ).cast(pa.int64())
                for gap in ("earliest", "latest")
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        us = early
        ok = pc.and_(pc.equal(pc.day(local), day), pc.equal(early, late))
    ok = pc.and_(ok, pc.and_(pc.greater_equal(us, ct.MIN_US), pc.less_equal(us, ct.MAX_US)))
    return pc.if_else(pc.fill_null(ok, False), us, pa.scalar(None, pa.int64()))


def _exact_numbers(
    values: pa.Array, numbers: pa.Array, long: pa.Array, name: str, problems: Problems
) -> pa.Array:
    """``numbers`` with the ``long`` values a double cannot hold exactly made null (and put in
    ``problems``)."""
    out = numbers.to_pylist()
    for i in pc.indices_nonzero(long).to_pylist():
        try:
            ct.exact_number(values[i].as_py(), name)
        except CdpError as exc:
            problems.setdefault(i, exc.message)
            out[i] = None
    return pa.array(out, pa.float64())


def _flag(values: pa.Array, ok: pa.Array, problems: Problems, name: str, what: str) -> None:
    bad = pc.and_(pc.is_valid(values), pc.invert(pc.fill_null(ok, False)))
    if not pc.any(bad).as_py():
        return
    for i in pc.indices_nonzero(bad).to_pylist():
        problems.setdefault(i, f"{name}: {what}, got {values[i].as_py()[:80]!r}")
