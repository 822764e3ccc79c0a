"""What every reader yields: batches of text columns, the records it could not read, and the
errors of a whole file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

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
