"""Import files read as batches of text columns: delimited text (CSV, TSV, SSV) and JSON.

Files are streamed, so memory is bounded by the batch size and the largest record, never by
the file: a record past twice ``max_field_bytes`` (at least 1 MiB) is not held but reported,
and a field past ``max_field_bytes`` (in UTF-8) makes its record bad. A batch ends at
``batch_rows`` records, or, with ``batch_bytes``, once it holds that much text (a batch of the
delimited reader ends at the end of the piece that passes it, a piece being at most an Arrow
block or 1 MiB of records read slowly; one of the JSON reader at the end of the 1 MiB chunk
that passes it). With ``max_columns``, a file with more columns is refused: a delimited file
by its header, before any record is read (and a header larger than ``max_columns`` KiB is not
read at all); a JSON file when its records' keys pass that many. Every record is accounted
for: it is either a row of a batch or a :class:`BadRow` of that batch, numbered from 1 (the
header of a delimited file is not counted, nor blank lines), and a batch holds consecutive
records, so a job can resume after the last record of a batch with ``skip_rows``.

Delimited files are read by a fast path, Arrow's CSV reader, which gives no row numbers for
problems and stops at the first one. On any problem it hands over to a slow path (Python's
``csv`` module, record by record) from the first record it did not deliver; the slow path reads
past the problem and hands back. Both paths produce the same rows: the slow path splits records
exactly as Arrow does, and reads the file as Latin-1 text (one character per byte), so it knows
the byte offset of every record; fields are decoded with the file's charset afterwards. The
charsets accepted are ASCII-compatible ones, in which ``"``, delimiters and newlines are never
part of a multibyte character.

JSON lines are parsed one by one; a JSON array is split into its elements by a small scanner
(strings skipped whole, brackets counted), and long runs of elements are parsed at once where
that works. Values become text: a string as is, a number or a nested value as its compact JSON
text, ``true`` and ``false``, and ``null`` as null; columns are the keys in first-seen order.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import csv
import io
import json
import re
import secrets
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from opencdp.catalog import types as ct
from opencdp.errors import CdpError, Code

FORMATS = ("csv", "tsv", "ssv", "jsonl", "json")
DELIMITERS = {"csv": ",", "tsv": "\t", "ssv": ";"}

_SNIFF = 4 << 20  # bytes looked at to guess a charset
_HEADER_PER_COLUMN = 1 << 10  # with max_columns: header bytes allowed per column (at least 1 MiB)
_BLOCK = 2 << 20  # Arrow's block size: a problem costs about a block read slowly
_CHUNK = 1 << 20  # bytes (or characters) read at a time by the slow paths
_TEXT_MAX = 64 << 10  # raw bytes kept as the text of a bad row
# Delimiters a record may have past the header's columns (quoted ones count too) before it is
# not read but reported: csv holds each field as a string, so a record of millions of fields
# would take gigabytes. A good record past it would need a million delimiters in its quotes.
_EXTRA_DELIMITERS = 1 << 20
_HEADER_DELIMITERS = 256  # per column allowed (quoted names may hold delimiters)
_BOMS = {"utf-8": b"\xef\xbb\xbf", "gb18030": b"\x84\x31\x95\x33"}
_WHITESPACE = b" \t\r\n\x0b\x0c"
# Latin-1 text never holds a character above U+00FF: this line marks the end of the file for
# ``csv``, and shows up inside the last field when a quote is left open.
_END = "\uffff"
_PROBE = '\t\n\r "#,;:[]{}\\/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
_STRUCT = re.compile(rb'["\[\]{},]')
_LINE_END = re.compile(rb"[\r\n]")
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
# A whole object with no nested object or array: most elements of an array, in one match.
_FLAT_OBJECT = re.compile(rb'\{[^"\[\]{}]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"\[\]{}]*)*\}', re.DOTALL)
_OPENERS = {0x5B: 0x5D, 0x7B: 0x7D}  # [ -> ], { -> }
_BULK = 64 << 10  # bytes of a JSON array worth parsing at once
_BULK_MIN = 8 << 10
_TEXT_KINDS = {str, type(None)}
_SCALAR_KINDS = {int, float, bool, type(None)}


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


# ---- charsets ------------------------------------------------------------------------------


def detect_charset(path: Path, declared: str | None) -> str:
    """The charset to read ``path`` with: the declared one, else UTF-8 or GB18030 by content.

    GBK and GB2312 are read as GB18030, which contains both. Undecodable files are read as
    UTF-8, so that their bad records are reported one by one.
    """
    if declared is not None and declared.strip():
        return _checked_charset(declared.strip())
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
        final = not f.read(1)
    for name, bom in _BOMS.items():
        if head.startswith(bom):
            return name
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileError("UTF-16 is not supported; save the file as UTF-8", "charset")
    for name in ("utf-8", "gb18030"):
        try:
            codecs.getincrementaldecoder(name)().decode(head, final)
        except UnicodeDecodeError:
            continue
        return name
    return "utf-8"


def _checked_charset(declared: str) -> str:
    try:
        name = codecs.lookup(declared).name
    except LookupError:
        raise FileError(f"unknown charset {declared!r}", "charset") from None
    if name in ("gbk", "gb2312"):
        return "gb18030"
    if name == "utf-8-sig":
        return "utf-8"
    try:
        compatible = _PROBE.encode(name) == _PROBE.encode("ascii")
    except (LookupError, UnicodeError, TypeError, ValueError):
        compatible = False
    if not compatible or name.startswith("iso2022") or name in ("hz", "utf-7"):
        raise FileError(f"charset {declared!r} is not supported", "charset")
    return name


def _label(charset: str) -> str:
    return charset.upper()


def _bom_length(path: Path, charset: str) -> int:
    bom = _BOMS.get(charset)
    if bom is None:
        return 0
    with open(path, "rb") as f:
        return len(bom) if f.read(len(bom)) == bom else 0


def _first_content(path: Path, offset: int) -> int | None:
    """The offset of the first byte from ``offset`` that is not whitespace, if any."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            stripped = chunk.lstrip(_WHITESPACE)
            if stripped:
                return offset + len(chunk) - len(stripped)
            offset += len(chunk)
    return None


def _bad_text(raw: bytes | bytearray, charset: str = "utf-8") -> str:
    return bytes(raw[:_TEXT_MAX]).decode(charset, errors="replace").rstrip("\r\n")


# ---- reading -------------------------------------------------------------------------------


def read_file(
    path: Path,
    fmt: str,
    charset: str | None = None,
    batch_rows: int = 50_000,
    skip_rows: int = 0,
    max_field_bytes: int = 64 << 20,
    batch_bytes: int = 0,
    max_columns: int = 0,
) -> Iterator[RowBatch]:
    """Read ``path`` as ``fmt`` in batches of ``batch_rows`` records (good or bad), each
    ending early once it holds about ``batch_bytes`` of text (0: no such bound).

    Records ``1..skip_rows`` are read but not yielded; numbering is that of a full read. The
    file's own problems (empty, no header, an unusable charset, more than ``max_columns``
    columns in a header) raise :class:`FileError` here; a bad record is reported in its batch
    and reading goes on.
    """
    return _read(
        path, fmt, charset, batch_rows, skip_rows, max_field_bytes, True, _BLOCK,
        batch_bytes, max_columns,
    )  # fmt: skip


def read_header(
    path: Path, fmt: str, charset: str | None = None, max_columns: int = 0
) -> list[str] | None:
    """The column names of a delimited file's header, read and checked as :func:`read_file`
    does (no record is read); None for JSON, whose columns are known only by reading it."""
    if fmt not in DELIMITERS:
        if fmt not in FORMATS:
            raise FileError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return None
    charset = detect_charset(path, charset)
    start = _bom_length(path, charset)
    if _first_content(path, start) is None:
        raise FileError("file is empty")
    cap = 2 << 20
    spec = _delimited_spec(path, DELIMITERS[fmt], charset, start, 1, 0, cap, cap, 0, max_columns)
    return spec.columns


def too_many_columns(count: int, limit: int, more: bool = False, what: str = "columns") -> CdpError:
    """The error of a file with more columns than a record may have properties."""
    found = f"more than {limit}" if more else str(count)
    return CdpError(
        Code.LIMIT_EXCEEDED,
        f"file: {found} {what}, at most {limit} are allowed (the limit on properties per record)",
        "file",
    )


def _read(
    path: Path,
    fmt: str,
    charset: str | None,
    batch_rows: int,
    skip_rows: int,
    max_field_bytes: int,
    fast: bool,
    block_size: int,
    batch_bytes: int = 0,
    max_columns: int = 0,
) -> Iterator[RowBatch]:
    """:func:`read_file`, with the fast path optional and its block size chosen (for tests)."""
    if fmt not in FORMATS:
        raise FileError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", "format")
    if batch_rows < 1 or skip_rows < 0 or max_field_bytes < 1 or batch_bytes < 0:
        raise ValueError("batch_rows and max_field_bytes must be positive, skip_rows >= 0")
    charset = detect_charset(path, charset)
    start = _bom_length(path, charset)
    content = _first_content(path, start)
    if content is None:
        raise FileError("file is empty")
    cap = max(2 * max_field_bytes, 1 << 20)  # the largest record held in memory
    if fmt in DELIMITERS:
        spec = _delimited_spec(
            path, DELIMITERS[fmt], charset, start, batch_rows, skip_rows, max_field_bytes, cap,
            batch_bytes, max_columns,
        )  # fmt: skip
        return _batches(_delimited_pieces(path, spec, fast, block_size), spec)
    chunks = _Counted(_utf8_chunks(path, start, charset))
    if fmt == "jsonl":
        records = _json_lines(chunks, cap, _label(charset))
    else:
        with open(path, "rb") as f:
            f.seek(content)
            if f.read(1) != b"[":
                raise FileError("a JSON array file must start with '['")
        chunks = _Counted(_utf8_chunks(path, content + 1, charset))
        records = _array_elements(chunks, cap, _label(charset))
    return _json_batches(
        records, batch_rows, skip_rows, max_field_bytes, batch_bytes, chunks, max_columns
    )


# ---- delimited: records --------------------------------------------------------------------


@dataclass
class _Delimited:
    columns: list[str]
    delimiter: str
    charset: str
    data_offset: int  # where the first record after the header starts
    batch_rows: int
    skip_rows: int
    max_field_bytes: int
    cap: int
    batch_bytes: int = 0  # a batch ends after the piece that brings it to this much text
    max_delimiters: int = 0  # a record with more is bad (csv would hold each field)


@dataclass
class _Cursor:
    offset: int  # byte offset of the next record
    number: int  # number of the last record read
    eof: bool = False


class _Lines:
    """What the line feeder knows about the record ``csv`` is reading."""

    __slots__ = (
        "delimiters",
        "eof",
        "fed_quoted",
        "over",
        "pos",
        "quotes",
        "raw",
        "raw_len",
        "size",
    )

    def __init__(self, pos: int, quotes: _Quotes) -> None:
        self.pos = pos  # byte offset after the last line fed
        self.raw: list[str] = []  # the record's lines, up to _TEXT_MAX
        self.raw_len = 0
        self.size = 0  # the record's bytes so far
        self.delimiters = 0  # the delimiters in them, quoted ones too
        self.eof = False
        # Why the record is too large, once it is: the rest of it is not fed to csv.
        self.over: str | None = None
        self.fed_quoted = False  # whether csv was inside a quoted field when it stopped
        self.quotes = quotes

    def take(self) -> tuple[list[str], str | None]:
        """The raw lines of the record just read, and why it was too large (if it was); then
        reset for the next."""
        raw, over = self.raw, self.over
        self.raw, self.raw_len, self.size, self.delimiters, self.over = [], 0, 0, 0, None
        return raw, over

    def keep(self, text: str) -> None:
        if self.raw_len < _TEXT_MAX:
            text = text[: _TEXT_MAX - self.raw_len]
            self.raw.append(text)
            self.raw_len += len(text)


# Where a CSV record is, as csv reads it: at the start of a field, inside an unquoted one,
# inside a quoted one, or just after a quote inside a quoted one (closing it, or doubling the
# next).
_START, _FIELD, _QUOTED, _QUOTE = range(4)


class _Quotes:
    """Follows a record's text as ``csv`` reads it (``strict=False``, quotes escaped by
    doubling) to where it ends, without ``csv``, which keeps every field of a record as a
    string. Runs of whole fields are matched by one regular expression, so a line costs a few
    matches, whatever its fields."""

    __slots__ = ("_body", "_field_rest", "_fields", "delimiter", "state")

    def __init__(self, delimiter: str) -> None:
        d = re.escape(delimiter)
        closed = f'"(?:[^"]++|"")*+"(?=[^"])[^{d}\\r\\n]*+'  # a quoted field, and what follows
        field = f'(?:{closed}|[^"{d}\\r\\n][^{d}\\r\\n]*+)?'
        self._fields = re.compile(f"{field}(?:{d}{field})*+")  # from the start of a field
        self._field_rest = re.compile(f"[^{d}\\r\\n]*+(?:{d}{field})*+")  # from inside one
        self._body = re.compile('(?:[^"]++|"")*+')  # the text of a quoted field
        self.delimiter = delimiter
        self.state = _START

    def follow(self, text: str, eol: bool) -> bool:
        """Read ``text``, which ends a line if ``eol``; whether the record ended with it."""
        state, pos, n = self.state, 0, len(text)
        if state < _QUOTED and '"' not in text:  # no quoted field: it ends with the line
            if eol:
                self.state = _START
            elif n:
                self.state = _START if text[-1] == self.delimiter else _FIELD
            return eol  # (a line end is only ever at the end of the text)
        while pos < n:
            if state == _QUOTED:
                pos = self._body.match(text, pos).end()  # type: ignore[union-attr]
                if pos < n:
                    state, pos = _QUOTE, pos + 1  # a quote, not followed by another one
                continue
            if state == _QUOTE:
                if text[pos] == '"':
                    state, pos = _QUOTED, pos + 1  # a doubled quote
                    continue
                state = _FIELD  # the field was closed: anything else goes on unquoted
            pattern = self._fields if state == _START else self._field_rest
            end = pattern.match(text, pos).end()  # type: ignore[union-attr]
            if end == n:
                if end > pos:
                    state = _START if text[-1] == self.delimiter else _FIELD
                break
            if text[end] == '"':  # a quoted field that goes on past this text
                state, pos = _QUOTED, end + 1
                continue
            self.state = _START  # a line end outside quotes
            return True
        if eol and state != _QUOTED:
            self.state = _START
            return True
        self.state = state
        return False


def _lines(text: io.TextIOWrapper, st: _Lines, cap: int, max_delimiters: int) -> Iterator[str]:
    """Feed ``csv`` the lines of ``text``, then the end marker.

    Once a record passes ``cap`` bytes or ``max_delimiters`` delimiters (0: any number), the
    rest of it is not fed to ``csv`` but followed by :class:`_Quotes` to its end, where ``csv``
    is given what ends the record from where it stopped. Memory stays bounded (``csv`` keeps
    each field of a record: a record of millions of delimiters would be millions of strings),
    and the record ends where it would have.
    """
    readline = text.readline
    quotes = st.quotes
    delimiter = quotes.delimiter
    while True:
        piece = readline(_CHUNK)
        if not piece:
            if st.over is not None and not st.fed_quoted:
                yield "x"  # a record csv has not seen any of: so that it is counted
            st.eof = True
            yield _END + "\n"
            return
        # csv asks for a line within a record only when a quoted field goes on past the last.
        before = st.size > 0
        parts: list[str] = []
        ended = False
        while True:  # the pieces of a line longer than a read
            n = len(piece)
            st.pos += n
            st.size += n
            if st.raw_len < _TEXT_MAX:
                st.keep(piece)
            last = n < _CHUNK or piece[-1] in "\r\n"
            if st.over is not None:
                ended = quotes.follow(piece, last)
            else:
                parts.append(piece)
                if max_delimiters:
                    st.delimiters += piece.count(delimiter)
                over = st.size > cap or (max_delimiters and st.delimiters > max_delimiters)
                if over and (before or piece.strip("\r\n")):  # (a blank line is no record)
                    st.over = (
                        f"record larger than {cap} bytes"
                        if st.size > cap
                        else f"record with more than {max_delimiters} delimiters"
                    )
                    st.fed_quoted = before
                    quotes.state = _QUOTED if before else _START
                    for held in parts[:-1]:
                        quotes.follow(held, False)
                    ended = quotes.follow(piece, last)
                    parts = []
            if last:
                break
            piece = readline(_CHUNK)
            if not piece:  # the file ends in this line
                if st.over is not None:
                    ended = quotes.follow("", True)
                break
        if st.over is None:
            yield parts[0] if len(parts) == 1 else "".join(parts)
        elif ended:  # the record ends here: end it for csv too
            yield '"' if st.fed_quoted else "x"


_Record = tuple[list[str], int, list[str], str | None]


def _records(
    path: Path, offset: int, delimiter: str, cap: int, max_delimiters: int = 0
) -> Iterator[_Record]:
    """Each non-blank record from ``offset``: (fields, end offset, raw lines, problem).

    Fields and lines are Latin-1 text, a character per byte. The problem, if any, is why the
    record could not be read (its fields are then meaningless): among them, that it has more
    than ``cap`` bytes or ``max_delimiters`` delimiters (0: any number).
    """
    if csv.field_size_limit() < sys.maxsize >> 1:
        csv.field_size_limit(sys.maxsize >> 1)  # records are bounded by the feeder instead
    with open(path, "rb") as f:
        f.seek(offset)
        text = io.TextIOWrapper(f, encoding="latin-1", newline="")
        st = _Lines(offset, _Quotes(delimiter))
        reader = csv.reader(
            _lines(text, st, cap, max_delimiters), delimiter=delimiter, strict=False
        )
        while True:
            try:
                for fields in reader:
                    raw, over = st.take()
                    if st.eof:
                        if fields != [_END]:
                            yield fields, st.pos, raw, "unclosed quote at end of file"
                        return
                    if over:
                        yield fields, st.pos, raw, over
                    elif fields:
                        yield fields, st.pos, raw, None
                return
            except csv.Error as exc:  # the reader goes on with the next line
                yield [], st.pos, st.take()[0], f"not valid CSV: {exc}"


def _delimited_spec(
    path: Path,
    delimiter: str,
    charset: str,
    start: int,
    batch_rows: int,
    skip_rows: int,
    max_field_bytes: int,
    cap: int,
    batch_bytes: int = 0,
    max_columns: int = 0,
) -> _Delimited:
    """Read and check the header (with ``max_columns``: refuse one with more columns, and one
    larger than ``max_columns`` KiB, at least 1 MiB, without reading it whole)."""
    header_cap = cap
    if max_columns:
        header_cap = max(1 << 20, max_columns * _HEADER_PER_COLUMN)
        _check_header_size(path, start, delimiter, header_cap, max_columns)
    most = _HEADER_DELIMITERS * max_columns
    for fields, end, _, problem in _records(path, start, delimiter, header_cap, most):
        if problem is not None:
            raise FileError(f"the header cannot be read: {problem}")
        if max_columns and len(fields) > max_columns:
            raise too_many_columns(len(fields), max_columns)
        try:
            names = [x.encode("latin-1").decode(charset).strip() for x in fields]
        except UnicodeDecodeError:
            raise FileError(f"the header is not valid {_label(charset)}") from None
        seen: set[str] = set()
        for i, name in enumerate(names, 1):
            if not name:
                raise FileError(f"column {i} of the header has no name")
            if name.casefold() in seen:
                raise FileError(f"duplicate column name {name!r}")
            seen.add(name.casefold())
        return _Delimited(
            names, delimiter, charset, end, batch_rows, skip_rows, max_field_bytes, cap,
            batch_bytes, len(names) + _EXTRA_DELIMITERS,
        )  # fmt: skip
    raise FileError("file is empty")


def _check_header_size(path: Path, start: int, delimiter: str, cap: int, columns: int) -> None:
    """Refuse a header that does not end within ``cap`` bytes, or (when it has no quote, so
    that its delimiters can be counted) has more than ``columns`` columns, reading no more
    than ``cap`` bytes."""
    with open(path, "rb") as f:
        f.seek(start)
        head = f.read(cap + 1)
    end = _LINE_END.search(head)
    line = head if end is None else head[: end.start()]
    if b'"' not in line:
        delimiters = line.count(delimiter.encode())
        if delimiters >= columns:
            more = end is None and len(head) > cap  # the line goes on past what was read
            raise too_many_columns(delimiters + 1, columns, more)
        if len(line) <= cap:
            return
    elif len(head) <= cap:
        return  # the whole file is smaller than the cap
    # Quoted names may hold line ends: does the header record end within the cap?
    lines = io.StringIO(head[:cap].decode("latin-1"), newline="").readlines()
    fed = 0

    def feed() -> Iterator[str]:
        nonlocal fed
        for text in lines:
            fed += 1
            yield text

    try:
        next(csv.reader(feed(), delimiter=delimiter, strict=False), None)
        ended = fed < len(lines) or lines[-1].endswith(("\n", "\r"))
    except csv.Error:
        ended = False
    if not ended:
        raise CdpError(
            Code.LIMIT_EXCEEDED,
            f"file: the header is larger than {cap} bytes (at most {columns} columns are allowed)",
            "file",
        )


# ---- delimited: pieces ---------------------------------------------------------------------


@dataclass
class _Piece:
    """Records ``first..last`` of the file: the good ones in ``table``, the others in ``bad``."""

    table: pa.Table
    numbers: pa.Array
    bad: list[BadRow]
    last: int


def _delimited_pieces(path: Path, sp: _Delimited, fast: bool, block_size: int) -> Iterator[_Piece]:
    cur = _Cursor(sp.data_offset, 0)
    if not fast:
        yield from _slow(path, sp, cur)
        return
    while not cur.eof:
        offset, number = cur.offset, cur.number
        failed_at = yield from _fast(path, sp, cur, block_size)
        if failed_at is None:
            return
        # Find where the first record the fast path did not deliver starts, then read on
        # slowly past the block where it failed: the block began there, or nearly (Arrow
        # carries a record cut by the end of a block over to the next one).
        cur.offset, _ = _skip_records(path, offset, cur.number - number, sp)
        yield from _slow(path, sp, cur, stop=min(failed_at, cur.offset + block_size + _CHUNK))


def _skip_records(path: Path, offset: int, count: int, sp: _Delimited) -> tuple[int, int]:
    """Where the record ``count`` records on from ``offset`` ends, and how many there were.

    Stretches of the file without a quote are counted by lines; the others are split by
    ``csv``, exactly as :func:`_records` does.
    """
    done = 0
    with open(path, "rb") as f:
        while done < count:
            f.seek(offset)
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            at_end = len(chunk) < _CHUNK
            lines = chunk.split(b"\n")
            if (
                b'"' in chunk
                or chunk.count(b"\r") != chunk.count(b"\r\n")
                or (len(lines) == 1 and not at_end)
            ):
                end = offset + len(chunk)
                for _, record_end, _, _ in _records(
                    path, offset, sp.delimiter, sp.cap, sp.max_delimiters
                ):
                    done, offset = done + 1, record_end
                    if done == count or offset >= end:
                        break
                else:
                    break  # the end of the file
                continue
            whole = lines if at_end else lines[:-1]
            found = len(whole) - whole.count(b"") - whole.count(b"\r")
            if done + found < count:
                done += found
                offset += len(chunk) - (0 if at_end else len(lines[-1]))
                if at_end:
                    break
                continue
            for i, line in enumerate(whole):
                offset += len(line) + (i < len(lines) - 1)
                if line and line != b"\r":
                    done += 1
                    if done == count:
                        break
    return offset, done


class _Source:
    """The file from an offset, then ``tail``: what Arrow reads. Counts the bytes read."""

    def __init__(self, f: BinaryIO, tail: bytes) -> None:
        self._f = f
        self._tail = tail
        self.pos = f.tell()
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if not data:
            data, self._tail = self._tail, b""
            return data
        self.pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def _fast(
    path: Path, sp: _Delimited, cur: _Cursor, block_size: int
) -> Generator[_Piece, None, int | None]:
    """Read with Arrow from ``cur``; return None at the end, or where it could read no more.

    A row with a random token ends the input: if it comes back as the last row, the file's
    last record was complete; if not, a quote was left open and swallowed it.
    """
    token = secrets.token_hex(16)
    end_row = f"\n{token}{sp.delimiter * (len(sp.columns) - 1)}\n".encode("ascii")
    types = dict.fromkeys(sp.columns, pa.string())
    with open(path, "rb") as f:
        f.seek(cur.offset)
        source = _Source(f, end_row)
        try:
            reader = pacsv.open_csv(
                pa.PythonFile(source, mode="r"),
                read_options=pacsv.ReadOptions(
                    column_names=sp.columns,
                    block_size=block_size,
                    use_threads=False,
                    encoding="utf8" if sp.charset == "utf-8" else sp.charset,
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=sp.delimiter, newlines_in_values=True, ignore_empty_lines=True
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )
        except Exception:  # any problem at all: the slow path finds and reports it
            return source.pos
        held = None  # the batch read last: the end row must be its last row
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except Exception:
                batch = None
            if held is not None:
                yield from _fast_piece(held, sp, cur)  # not the last: complete
            if batch is None or _too_large(batch, sp.max_field_bytes):
                return source.pos
            held = batch
    if held is None or not _is_end_row(held, token):
        return source.pos
    yield from _fast_piece(held.slice(0, held.num_rows - 1), sp, cur)
    cur.eof = True
    return None


def _too_large(batch: pa.RecordBatch, limit: int) -> bool:
    for column in batch.columns:
        longest = pc.max(pc.binary_length(column)).as_py()
        if longest is not None and longest > limit:
            return True
    return False


def _is_end_row(batch: pa.RecordBatch, token: str) -> bool:
    if batch.num_rows == 0 or batch.column(0)[-1].as_py() != token:
        return False
    return all(not column[-1].is_valid for column in batch.columns[1:])


def _fast_piece(batch: pa.RecordBatch, sp: _Delimited, cur: _Cursor) -> Iterator[_Piece]:
    first = cur.number + 1
    cur.number += batch.num_rows
    if cur.number <= sp.skip_rows or batch.num_rows == 0:
        return
    drop = max(0, sp.skip_rows - first + 1)
    table = pa.Table.from_batches([batch.slice(drop)])
    yield _Piece(table, _numbers(first + drop, table.num_rows), [], cur.number)


def _numbers(first: int, count: int) -> pa.Array:
    ones = pa.repeat(pa.scalar(1, pa.int64()), count)
    return pc.cumulative_sum(ones, start=pa.scalar(first - 1, pa.int64()))


def _slow(path: Path, sp: _Delimited, cur: _Cursor, stop: int | None = None) -> Iterator[_Piece]:
    """Read record by record from ``cur`` up to the first record ending at or past ``stop``."""
    if cur.number < sp.skip_rows:
        cur.offset, skipped = _skip_records(path, cur.offset, sp.skip_rows - cur.number, sp)
        cur.number += skipped
    rows: list[list[str]] = []
    numbers: list[int] = []
    bad: list[BadRow] = []
    n = cur.number
    begin = cur.offset  # where the records held in rows and bad begin
    for fields, end, raw, problem in _records(
        path, cur.offset, sp.delimiter, sp.cap, sp.max_delimiters
    ):
        n += 1
        values, reason = _checked(fields, sp) if problem is None else (fields, problem)
        if reason is None:
            rows.append(values)
            numbers.append(n)
        else:
            text = _bad_text("".join(raw).encode("latin-1"), sp.charset)
            bad.append(BadRow(n, text, reason))
        # A piece is at most a batch of records, and about _CHUNK bytes of them: Python holds
        # each field as an object of its own, many times the size of its text.
        if len(rows) + len(bad) >= sp.batch_rows or end - begin >= _CHUNK:
            yield _slow_piece(sp.columns, rows, numbers, bad, n)
            rows, numbers, bad = [], [], []
            begin = end
        if stop is not None and end >= stop:
            cur.offset, cur.number = end, n
            if rows or bad:
                yield _slow_piece(sp.columns, rows, numbers, bad, n)
            return
    cur.offset, cur.number, cur.eof = -1, n, True
    if rows or bad:
        yield _slow_piece(sp.columns, rows, numbers, bad, n)


def _checked(fields: list[str], sp: _Delimited) -> tuple[list[str], str | None]:
    """A record's fields decoded, or why it is bad.

    A field's size is that of its UTF-8 text, as the fast path measures it; in another charset
    a byte may take up to three.
    """
    if len(fields) != len(sp.columns):
        return fields, f"expected {len(sp.columns)} fields, got {len(fields)}"
    joined = "".join(fields)
    if not joined.isascii():
        try:
            fields = [x.encode("latin-1").decode(sp.charset) for x in fields]
        except UnicodeDecodeError:
            return fields, f"not valid {_label(sp.charset)}"
    limit = sp.max_field_bytes
    if len(joined) * (1 if sp.charset == "utf-8" else 3) > limit:
        for name, value in zip(sp.columns, fields, strict=True):
            if len(value.encode()) > limit:
                return fields, f"field {name!r} is larger than {limit} bytes"
    return fields, None


def _slow_piece(
    columns: list[str], rows: list[list[str]], numbers: list[int], bad: list[BadRow], last: int
) -> _Piece:
    if rows:
        arrays = [
            _empty_to_null(pa.array(values, pa.string())) for values in zip(*rows, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, names=columns)
    else:
        table = _schema(columns).empty_table()
    return _Piece(table, pa.array(numbers, pa.int64()), bad, last)


def _empty_to_null(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _schema(columns: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in columns])


def _batches(pieces: Iterator[_Piece], sp: _Delimited) -> Iterator[RowBatch]:
    """Group pieces into batches of ``batch_rows`` records, split by record number; with
    ``batch_bytes``, a batch also ends after the piece that brings its text to that size."""
    size = sp.batch_rows
    hi = sp.skip_rows + size  # the last record of the current batch
    held = 0  # bytes of text in the current batch
    tables: list[pa.Table] = []
    numbers: list[pa.Array] = []
    bad: list[BadRow] = []
    for piece in pieces:
        while piece.last >= hi:
            k = _count_upto(piece.numbers, hi)
            tables.append(piece.table.slice(0, k))
            numbers.append(piece.numbers.slice(0, k))
            bad.extend(b for b in piece.bad if b.row <= hi)
            yield _row_batch(sp.columns, tables, numbers, bad)
            tables, numbers, bad, held = [], [], [], 0
            rest = [b for b in piece.bad if b.row > hi]
            piece = _Piece(piece.table.slice(k), piece.numbers.slice(k), rest, piece.last)
            hi += size
        if piece.table.num_rows or piece.bad:
            tables.append(piece.table)
            numbers.append(piece.numbers)
            bad.extend(piece.bad)
            if sp.batch_bytes:
                held += piece.table.nbytes + sum(len(b.text) for b in piece.bad)
                if held >= sp.batch_bytes:
                    yield _row_batch(sp.columns, tables, numbers, bad)
                    tables, numbers, bad, held = [], [], [], 0
                    hi = piece.last + size
    if numbers or bad:
        yield _row_batch(sp.columns, tables, numbers, bad)


def _count_upto(numbers: pa.Array, hi: int) -> int:
    """How many of the (sorted) ``numbers`` are at most ``hi``."""
    count = len(numbers)
    if count == 0:
        return 0
    first: int = numbers[0].as_py()
    last: int = numbers[-1].as_py()
    if last - first + 1 == count:  # consecutive
        return max(0, min(count, hi - first + 1))
    return bisect.bisect_right(numbers.to_pylist(), hi)


def _row_batch(
    columns: list[str], tables: list[pa.Table], numbers: list[pa.Array], bad: list[BadRow]
) -> RowBatch:
    empty = _schema(columns).empty_table()
    table = pa.concat_tables(tables).combine_chunks() if tables else empty
    row_numbers = pa.concat_arrays(numbers) if numbers else pa.array([], pa.int64())
    return RowBatch(list(columns), table, row_numbers, sorted(bad, key=lambda b: b.row))


# ---- JSON ----------------------------------------------------------------------------------


class _Counted:
    """An iterator of chunks that counts the bytes it has handed out."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.bytes = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.bytes += len(chunk)
        return chunk


def _utf8_chunks(path: Path, offset: int, charset: str) -> Iterator[bytes]:
    """The file from ``offset`` as UTF-8; bytes invalid in ``charset`` stay invalid UTF-8."""
    with open(path, "rb") as f:
        f.seek(offset)
        if charset == "utf-8":
            while chunk := f.read(_CHUNK):
                yield chunk
            return
        decoder = codecs.getincrementaldecoder(charset)(errors="surrogateescape")
        while True:
            chunk = f.read(_CHUNK)
            text = decoder.decode(chunk, final=not chunk)
            if text:
                yield text.encode("utf-8", errors="surrogatepass")
            if not chunk:
                return


# A record: an object, and None; or its raw bytes, and why it is bad.
_Element = tuple[Any, str | None]


def _long_digits(data: bytes | bytearray) -> bool:
    """Whether ``data`` may hold a number orjson would round (see ``long_numbers``)."""
    return ct.long_numbers(data)


def _record(data: bytes | bytearray, label: str, exact: bool = True) -> _Element:
    """The object in ``data`` (read exactly if it may hold a long integer), or why not."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return data, f"not valid {label}"
        return data, f"not valid JSON: {exc}"
    if type(value) is not dict:
        return data, "not a JSON object"
    if exact and _long_digits(data):
        # (what orjson reads, json reads too; nesting json cannot follow keeps orjson's values)
        with contextlib.suppress(ValueError, RecursionError):
            value = json.loads(data, parse_float=ct.exact_float)
    return value, None


def _json_lines(chunks: Iterator[bytes], cap: int, label: str) -> Iterator[_Element]:
    """Each non-blank line."""
    pending: list[bytes] = []  # the start of a line that continues in the next chunk
    size = 0
    over = False
    for chunk in chunks:
        lines = chunk.split(b"\n")
        if len(lines) > 1:
            if over:
                over, lines[0] = False, b""
                yield b"".join(pending), f"record larger than {cap} bytes"
            elif pending:
                lines[0] = b"".join(pending) + lines[0]
                if (line := lines[0]) and not line.isspace():
                    yield _record(line, label)
                lines[0] = b""
            pending, size = [], 0
            exact = _long_digits(chunk)
            for line in lines[:-1]:
                if line and not line.isspace():
                    yield _record(line, label, exact)
        if not over:
            pending.append(lines[-1])
            size += len(lines[-1])
            if size > cap:
                over = True
                pending = [b"".join(pending)[:_TEXT_MAX]]
    last = b"".join(pending)
    if over:
        yield last, f"record larger than {cap} bytes"
    elif last and not last.isspace():
        yield _record(last, label)


def _array_elements(chunks: Iterator[bytes], cap: int, label: str) -> Iterator[_Element]:
    """Each top-level element of a JSON array, from just after its '['.

    Runs of whole elements are parsed at once where possible (:func:`_bulk`). Otherwise
    strings are skipped whole and brackets counted; a closing bracket that matches no open one
    is left inside its element (which then fails to parse), one that closes an outer bracket
    closes the inner ones too.
    """
    buf = bytearray()
    pos = start = 0  # scan position; start of the current element
    in_string = False
    closers = [0x5D]  # the closing bracket expected at each depth
    prefix: bytes | None = None  # the start of an element past the cap (its bytes are dropped)
    too_large = f"record larger than {cap} bytes"
    scan_to = 0  # no bulk parsing before this offset: it failed there
    for chunk in chunks:
        buf += chunk
        while True:
            if pos == start and prefix is None and start >= scan_to and len(buf) - start > _BULK:
                values, after = _bulk(buf, start)
                if values is None:
                    scan_to = after
                else:
                    pos = start = after
                    for value in values:
                        if type(value) is dict:
                            yield value, None
                        else:
                            yield orjson.dumps(value), "not a JSON object"
                    continue
            if in_string:
                rest = _STRING_REST.match(buf, pos)
                pos = rest.end() if rest else pos
                if pos >= len(buf) or buf[pos] != 0x22:
                    break  # the string, or an escape, goes on in the next chunk
                in_string = False
                pos += 1
                continue
            m = _STRUCT.search(buf, pos)
            if m is None:
                pos = len(buf)
                break
            i = m.start()
            c = buf[i]
            pos = i + 1
            if c == 0x22:
                in_string = True
            elif c == 0x2C:
                if len(closers) == 1:
                    yield (
                        (prefix, too_large) if prefix is not None else _record(buf[start:i], label)
                    )
                    start, prefix = pos, None
            elif c in _OPENERS:
                if c == 0x7B and len(closers) == 1 and (flat := _FLAT_OBJECT.match(buf, i)):
                    pos = flat.end()
                else:
                    closers.append(_OPENERS[c])
            elif c in closers:
                while closers.pop() != c:
                    pass
                if not closers:
                    element = buf[start:i]
                    if prefix is not None:
                        yield prefix, too_large
                    elif element.strip():  # not after a trailing comma, nor in "[]"
                        yield _record(element, label)
                    yield from _after_array(buf[pos:], chunks)
                    return
        keep = start if prefix is None else pos
        if prefix is None and len(buf) - start > cap:
            prefix = bytes(buf[start : start + _TEXT_MAX])
            keep = pos
        del buf[:keep]
        pos -= keep
        start -= keep
        scan_to -= keep
    # The file ended inside the array.
    if prefix is not None:
        yield prefix, too_large
    elif (tail := buf[start:]).strip():
        if in_string or len(closers) > 1:
            yield tail, "the file ends inside this element (the JSON array is not closed)"
        else:
            yield _record(tail, label)  # a complete element: only the closing ']' is missing


def _bulk(buf: bytearray, start: int) -> tuple[list[Any] | None, int]:
    """The whole elements from ``start`` (where one begins) parsed at once, and the offset
    after the comma that follows them; or None, and the end of the stretch to scan instead.

    The run is cut after a '}' followed by ',', and parsed as an array. Starting where an
    element starts, that parses only if the cut is between two elements: inside a string or a
    nested value, the closing ']' added would leave something open. A run that fails (a bad
    element, or a bad cut) is halved, down to a few KiB.
    """
    end = len(buf)
    failed = end
    while (cut := buf.rfind(b"},", start, end)) - start >= _BULK_MIN:
        run = buf[start : cut + 1]
        try:
            values = orjson.loads(b"[" + run + b"]")
        except orjson.JSONDecodeError:
            failed = cut + 1
            end = start + (cut - start) // 2
            continue
        if not isinstance(values, list) or _long_digits(run):
            break  # (orjson rounds long numbers: such elements are read one by one, exactly)
        return values, cut + 2
    return None, failed


def _after_array(rest: bytearray, chunks: Iterator[bytes]) -> Iterator[_Element]:
    """Anything but whitespace after the closing ']' is reported as one more bad record."""
    found = bytes(rest).lstrip(_WHITESPACE)[:_TEXT_MAX]
    for chunk in chunks:
        if len(found) >= _TEXT_MAX:
            break
        found = (found + chunk if found else chunk.lstrip(_WHITESPACE))[:_TEXT_MAX]
    if found:
        yield found, "unexpected data after the end of the JSON array"


def _json_text(value: Any) -> str | None:
    """A JSON value as text: strings as is, anything else as its compact JSON."""
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits or a long decimal, nested
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _json_batches(
    records: Iterator[_Element],
    batch_rows: int,
    skip_rows: int,
    max_field_bytes: int,
    batch_bytes: int = 0,
    source: _Counted | None = None,
    max_columns: int = 0,
) -> Iterator[RowBatch]:
    """Batches of ``batch_rows`` records; with ``batch_bytes``, a batch also ends once that
    many bytes of ``source`` were read since it began."""
    columns: list[str] = []  # every key seen, skipped records' too, so resuming keeps the order
    known: set[str] = set()
    objects: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[BadRow] = []
    hi = skip_rows + batch_rows
    begin = 0  # bytes of the source read when the current batch began
    for n, (value, problem) in enumerate(records, 1):
        if problem is None:
            if not known.issuperset(value):
                columns.extend(k for k in value if k not in known)
                known.update(value)
                if max_columns and len(columns) > max_columns:
                    raise too_many_columns(
                        len(columns), max_columns, True, "distinct keys in its records"
                    )
            if n > skip_rows:
                objects.append(value)
                numbers.append(n)
        elif n > skip_rows:
            bad.append(BadRow(n, _bad_text(value.strip()), problem))
        if n <= skip_rows and source is not None:
            begin = source.bytes
        elif n >= hi or (
            batch_bytes and source is not None and source.bytes - begin >= batch_bytes
        ):
            yield _json_batch(columns, objects, numbers, bad, max_field_bytes)
            objects, numbers, bad = [], [], []
            hi = n + batch_rows
            begin = source.bytes if source is not None else 0
    if objects or bad:
        yield _json_batch(columns, objects, numbers, bad, max_field_bytes)


def _json_batch(
    columns: list[str],
    objects: list[dict[str, Any]],
    numbers: list[int],
    bad: list[BadRow],
    max_field_bytes: int,
) -> RowBatch:
    arrays = [_json_column([o.get(c) for o in objects]) for c in columns]
    too_large: dict[int, str] = {}  # index -> the first column too large
    for name, column in zip(columns, arrays, strict=True):
        lengths = pc.binary_length(column)
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > max_field_bytes:
            over = pc.greater(lengths, max_field_bytes).fill_null(False)
            for i in pc.indices_nonzero(over).to_pylist():
                too_large.setdefault(i, name)
    table = pa.Table.from_arrays(arrays, schema=_schema(columns))
    row_numbers = pa.array(numbers, pa.int64())
    if too_large:
        for i, name in too_large.items():
            reason = f"field {name!r} is larger than {max_field_bytes} bytes"
            text = _bad_text((_json_text(objects[i]) or "").encode())
            bad.append(BadRow(numbers[i], text, reason))
        keep = pa.array([i not in too_large for i in range(len(numbers))])
        table, row_numbers = table.filter(keep), row_numbers.filter(keep)
        objects = [o for i, o in enumerate(objects) if i not in too_large]
        bad.sort(key=lambda b: b.row)
    return RowBatch(list(columns), table, row_numbers, bad, objects)


def _json_column(values: list[Any]) -> pa.Array:
    """JSON values as text (see :func:`_json_text`), a column at a time where possible."""
    kinds = set(map(type, values))
    if kinds <= _TEXT_KINDS:
        return pa.array(values, pa.string())
    if kinds <= _SCALAR_KINDS and values:
        try:
            texts = orjson.dumps(values)[1:-1].split(b",")  # no scalar's text has a comma
        except TypeError:  # an integer past 64 bits
            pass
        else:
            column = pa.array(texts, pa.binary()).cast(pa.string())
            return pc.if_else(pc.equal(column, "null"), pa.scalar(None, pa.string()), column)
    return pa.array([_json_text(v) for v in values], pa.string())
