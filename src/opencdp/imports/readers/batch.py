"""What every reader yields: batches of text columns, the records it could not read, and the
errors of a whole file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from opencdp.catalog.types import PropertyType, infer_type
from opencdp.errors import CdpError, Code

CHUNK = 1 << 20  # bytes (or characters) read at a time by the slow paths
TEXT_MAX = 64 << 10  # raw bytes kept as the text of a bad row
WHITESPACE = b" \t\r\n\x0b\x0c"


class FileError(CdpError):
    """A problem with the whole file (or its charset or format): nothing can be read."""

    def __init__(self, reason: str, field: str = "file") -> None:
        super().__init__(Code.VALIDATION_FAILED, f"{field}: {reason}", field)


@dataclass
class BadRow:
    """A record that could not be read: its number, its raw text (at most 64 KiB), and why."""

    row: int
    text: str
    reason: str


@dataclass
class RowBatch:
    """Consecutive records of a file: the good ones as text columns, and the bad ones.

    ``rows`` has one ``pa.string()`` column per name in ``columns`` (null for an empty or
    missing value); ``row_numbers`` holds the record number of each of its rows.
    """

    columns: list[str]
    rows: pa.Table
    row_numbers: pa.Array
    bad: list[BadRow]
    # JSON files: the records themselves (those of ``rows``), whose values keep their JSON types
    objects: list[dict[str, Any]] | None = None
    # Whether the records are JSON (their values have JSON types: see first_type)
    json: bool = False
    # JSON records read without ``objects``: each column's first_type, worked out by the reader
    first_types: dict[str, PropertyType] | None = None
    # How many of ``rows`` the fast path of JSON lines (Arrow's JSON reader) read
    fast_rows: int = 0

    def first_type(self, name: str) -> PropertyType:
        """The type of a new property of these JSON records (see :func:`first_type`)."""
        if self.objects is not None:
            return first_type([o.get(name) for o in self.objects])
        if self.first_types is None:
            raise ValueError("the batch's records are not JSON")
        return self.first_types.get(name, PropertyType.STRING)


def numbers(first: int, count: int) -> pa.Array:
    """``count`` consecutive int64 numbers from ``first``, made by Arrow (an array built from
    a Python range of a million takes a quarter of a second); none if ``count`` < 1."""
    if count < 1:
        return pa.array([], pa.int64())
    ones = pa.nulls(count, pa.int64()).fill_null(1)
    return pc.add(pc.cumulative_sum(ones), first - 1)


def first_type(values: list[Any]) -> PropertyType:
    """The type of a new property of JSON records: the JSON type of its first number, boolean
    or list, which says more than text does (a batch that mixes numbers and text makes a number
    property, so later numbers are never stored as text); else what its first text infers, as
    in the single-record API."""
    for v in values:
        if v is not None and not isinstance(v, str | dict):
            inferred = infer_type(v)
            if inferred is not None:
                return inferred
    for v in values:
        if isinstance(v, str):
            return infer_type(v) or PropertyType.STRING
    return PropertyType.STRING


def too_many_columns(count: int, limit: int, more: bool = False, what: str = "columns") -> CdpError:
    """The error of a file with more columns than a record may have properties."""
    found = f"more than {limit}" if more else str(count)
    return CdpError(
        Code.LIMIT_EXCEEDED,
        f"file: {found} {what}, at most {limit} are allowed (the limit on properties per record)",
        "file",
    )


def bad_text(raw: bytes | bytearray, charset: str = "utf-8") -> str:
    """The text of a bad record as reported: at most ``TEXT_MAX`` bytes, decoded leniently."""
    return bytes(raw[:TEXT_MAX]).decode(charset, errors="replace").rstrip("\r\n")


def text_schema(columns: list[str]) -> pa.Schema:
    """A batch's schema: one string column per name."""
    return pa.schema([(c, pa.string()) for c in columns])


def without_text(batch: RowBatch, char: str, reason: str) -> RowBatch:
    """The batch without its records that hold ``char`` in any value: those become bad rows
    with ``reason``, their values joined by commas with the character written as ``\\uXXXX``
    (a store whose text cannot hold the character fails them rather than the whole batch)."""
    if batch.rows.num_rows == 0:
        return batch
    held = None
    for column in batch.rows.columns:
        has = pc.fill_null(pc.match_substring(column, char), False)
        held = has if held is None else pc.or_(held, has)
    if held is None or not pc.any(held).as_py():
        return batch
    keep = pc.invert(held)
    bad = list(batch.bad)
    numbers = batch.row_numbers.to_pylist()
    for i in pc.indices_nonzero(held).to_pylist():
        values = [v or "" for v in batch.rows.slice(i, 1).to_pylist()[0].values()]
        shown = ",".join(values).replace(char, f"\\u{ord(char):04x}")  # (visible)
        bad.append(BadRow(numbers[i], shown[:65536], reason))
    bad.sort(key=lambda b: b.row)
    objects = batch.objects
    if objects is not None:
        objects = [o for o, k in zip(objects, keep.to_pylist(), strict=True) if k]
    return RowBatch(
        batch.columns,
        batch.rows.filter(keep),
        batch.row_numbers.filter(keep),
        bad,
        objects=objects,
        json=batch.json,
        first_types=batch.first_types,
        fast_rows=batch.fast_rows,
    )
