"""Delimited files (CSV, TSV, SSV): the header, and the records in batches.

Arrow's CSV reader is the fast path; it gives no row numbers for problems and stops at the
first one. On any problem it hands over to the slow path (:mod:`.records`, record by record)
from the first record it did not deliver; the slow path reads past the problem and hands back.
"""

from __future__ import annotations

import bisect
import csv
import io
import re
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from opencdp.errors import CdpError, Code
from opencdp.imports.readers.batch import (
    CHUNK,
    BadRow,
    FileError,
    RowBatch,
    bad_text,
    text_schema,
    too_many_columns,
)
from opencdp.imports.readers.charset import charset_label
from opencdp.imports.readers.records import read_records

DELIMITERS = {"csv": ",", "tsv": "\t", "ssv": ";"}
_HEADER_PER_COLUMN = 1 << 10  # with max_columns: header bytes allowed per column (at least 1 MiB)
BLOCK = 2 << 20  # Arrow's block size: a problem costs about a block read slowly
# Delimiters a record may have past the header's columns (quoted ones count too) before it is
# not read but reported: csv holds each field as a string, so a record of millions of fields
# would take gigabytes. A good record past it would need a million delimiters in its quotes.
_EXTRA_DELIMITERS = 1 << 20
_HEADER_DELIMITERS = 256  # per column allowed (quoted names may hold delimiters)
_LINE_END = re.compile(rb"[\r\n]")


@dataclass
class DelimitedSpec:
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


def delimited_spec(
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
) -> DelimitedSpec:
    """Read and check the header (with ``max_columns``: refuse one with more columns, and one
    larger than ``max_columns`` KiB, at least 1 MiB, without reading it whole)."""
    header_cap = cap
    if max_columns:
        header_cap = max(1 << 20, max_columns * _HEADER_PER_COLUMN)
        _check_header_size(path, start, delimiter, header_cap, max_columns)
    most = _HEADER_DELIMITERS * max_columns
    for fields, end, _, problem in read_records(path, start, delimiter, header_cap, most):
        if problem is not None:
            raise FileError(f"the header cannot be read: {problem}")
        if max_columns and len(fields) > max_columns:
            raise too_many_columns(len(fields), max_columns)
        try:
            names = [x.encode("latin-1").decode(charset).strip() for x in fields]
        except UnicodeDecodeError:
            raise FileError(f"the header is not valid {charset_label(charset)}") from None
        seen: set[str] = set()
        for i, name in enumerate(names, 1):
            if not name:
                raise FileError(f"column {i} of the header has no name")
            if name.casefold() in seen:
                raise FileError(f"duplicate column name {name!r}")
            seen.add(name.casefold())
        return DelimitedSpec(
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


def read_delimited(
    path: Path, spec: DelimitedSpec, fast: bool = True, block_size: int = BLOCK
) -> Iterator[RowBatch]:
    """The records after the header, in batches as ``spec`` says (the fast path optional and
    its block size chosen, for tests)."""
    return _batches(_delimited_pieces(path, spec, fast, block_size), spec)


@dataclass
class _Piece:
    """Records ``first..last`` of the file: the good ones in ``table``, the others in ``bad``."""

    table: pa.Table
    numbers: pa.Array
    bad: list[BadRow]
    last: int


def _delimited_pieces(
    path: Path, sp: DelimitedSpec, fast: bool, block_size: int
) -> Iterator[_Piece]:
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
        yield from _slow(path, sp, cur, stop=min(failed_at, cur.offset + block_size + CHUNK))


def _skip_records(path: Path, offset: int, count: int, sp: DelimitedSpec) -> tuple[int, int]:
    """Where the record ``count`` records on from ``offset`` ends, and how many there were.

    Stretches of the file without a quote are counted by lines; the others are split by
    ``csv``, exactly as :func:`_records` does.
    """
    done = 0
    with open(path, "rb") as f:
        while done < count:
            f.seek(offset)
            chunk = f.read(CHUNK)
            if not chunk:
                break
            at_end = len(chunk) < CHUNK
            lines = chunk.split(b"\n")
            if (
                b'"' in chunk
                or chunk.count(b"\r") != chunk.count(b"\r\n")
                or (len(lines) == 1 and not at_end)
            ):
                end = offset + len(chunk)
                for _, record_end, _, _ in read_records(
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
    path: Path, sp: DelimitedSpec, cur: _Cursor, block_size: int
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


def _fast_piece(batch: pa.RecordBatch, sp: DelimitedSpec, cur: _Cursor) -> Iterator[_Piece]:
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


def _slow(path: Path, sp: DelimitedSpec, cur: _Cursor, stop: int | None = None) -> Iterator[_Piece]:
    """Read record by record from ``cur`` up to the first record ending at or past ``stop``."""
    if cur.number < sp.skip_rows:
        cur.offset, skipped = _skip_records(path, cur.offset, sp.skip_rows - cur.number, sp)
        cur.number += skipped
    rows: list[list[str]] = []
    numbers: list[int] = []
    bad: list[BadRow] = []
    n = cur.number
    begin = cur.offset  # where the records held in rows and bad begin
    for fields, end, raw, problem in read_records(
        path, cur.offset, sp.delimiter, sp.cap, sp.max_delimiters
    ):
        n += 1
        values, reason = _checked(fields, sp) if problem is None else (fields, problem)
        if reason is None:
            rows.append(values)
            numbers.append(n)
        else:
            text = bad_text("".join(raw).encode("latin-1"), sp.charset)
            bad.append(BadRow(n, text, reason))
        # A piece is at most a batch of records, and about CHUNK bytes of them: Python holds
        # each field as an object of its own, many times the size of its text.
        if len(rows) + len(bad) >= sp.batch_rows or end - begin >= CHUNK:
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


def _checked(fields: list[str], sp: DelimitedSpec) -> tuple[list[str], str | None]:
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
            return fields, f"not valid {charset_label(sp.charset)}"
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
        table = text_schema(columns).empty_table()
    return _Piece(table, pa.array(numbers, pa.int64()), bad, last)


def _empty_to_null(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _batches(pieces: Iterator[_Piece], sp: DelimitedSpec) -> Iterator[RowBatch]:
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
    empty = text_schema(columns).empty_table()
    table = pa.concat_tables(tables).combine_chunks() if tables else empty
    row_numbers = pa.concat_arrays(numbers) if numbers else pa.array([], pa.int64())
    return RowBatch(list(columns), table, row_numbers, sorted(bad, key=lambda b: b.row))


# ---- JSON ----------------------------------------------------------------------------------
