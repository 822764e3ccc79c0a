"""JSON lines read by Arrow's JSON reader, for callers that need text columns, not the records.

The file is read in runs of whole lines (about ``block_size`` bytes), each scanned in a thread
(Arrow's read and one pass of RE2 over its bytes, both without the GIL), two runs ahead. Arrow's
read of a run is used when it is exactly what the slow path (:func:`~.jsonfile.parse_record`,
line by line) gives: every line not blank is one object, starting with ``{`` and ending with
``}``, so that no value spans lines and a line with two values shows as a row too many; no
number orjson may round (what ``long_numbers`` finds), no ``NaN`` or ``Infinity`` (which Arrow
takes), no escaped surrogate, no lone carriage return, valid UTF-8. Arrow itself refuses
duplicate keys and a key whose JSON type changes. Values become text as the slow path makes
them: a number Arrow holds as an integral double (an integer in a column with decimals, or
``1.0``), and a nested value, is read again from its line with orjson. Anything else sends the
run to the slow path: a bad line, a type change, a field past the limit, keys past
``max_columns``.

Columns grow as keys appear, in first-seen order: Arrow lists a run's keys in that order. Strings
Arrow would read as timestamps are read as strings (by an explicit schema, which also refuses a
number where a string was). A batch carries its columns' ``first_type``, from the kind of their
values: that of the Arrow column (one per column in a run), or, from the slow path, each
value's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from opencdp.catalog.types import PropertyType, infer_type
from opencdp.imports.readers.batch import (
    TEXT_MAX,
    BadRow,
    RowBatch,
    bad_text,
    numbers,
    too_many_columns,
)
from opencdp.imports.readers.jsonfile import (
    json_rows,
    json_text,
    long_digits,
    parse_record,
)

FAST_BLOCK = 4 << 20  # bytes of whole lines Arrow reads at once
# Doubles below this magnitude the record path writes with an exponent, Arrow without.
_PLAIN_MIN = 1e-4
_AHEAD = 2  # runs scanned at once, in threads, ahead of the one whose rows are being made
_DEPTH = 512  # nesting past this is read by the slow path (orjson refuses past 1024)
# What Arrow may read otherwise than the slow path (RE2 patterns): a number orjson may round
# (as ``long_numbers`` finds them), NaN and Infinity (Arrow takes them), an escaped surrogate, a
# carriage return that ends no line.
_ODD = (
    r"[:\[,][ \t\r\n]*-?[0-9](?:[0-9.]{15}|[0-9.]*[eE][+-]?[0-9]{3})"
    r"|NaN|Inf|\\u[dD][89a-fA-F]|\r[^\n]"
)
# Lines that are not each an object: a line that does not start with "{" or end with "}" (the
# run's first and last are looked at apart: anchors would slow RE2 down).
_UNSHAPED = r"\n[^{]|[^}\r]\n|[^}]\r\n"
_ODD_OR_UNSHAPED = f"{_ODD}|{_UNSHAPED}"
# The kind of a value, for first_type: nothing to say (null, missing, an object), the JSON
# types first_type takes first, and a string.
_NONE, _NUMBER, _BOOL, _LIST, _TEXT = range(5)
_TYPED = {_NUMBER: PropertyType.NUMBER, _BOOL: PropertyType.BOOL, _LIST: PropertyType.LIST}
_Kinds: TypeAlias = int | pa.Array  # one kind for every value of a column, or one per row
_Text: TypeAlias = tuple[pa.Array, int, int]  # a column's text, kind, longest value in bytes


@dataclass
class _TooLarge:
    """A line past the cap: its first bytes."""

    prefix: bytes


@dataclass
class _Piece:
    """Consecutive records: the good ones as text columns (some of the columns known), the bad
    ones, and the kind of each column's values."""

    table: pa.Table
    numbers: pa.Array
    bad: list[BadRow]
    kinds: dict[str, _Kinds]
    fast: bool = False


@dataclass
class _State:
    label: str
    cap: int
    skip_rows: int
    max_field_bytes: int
    max_columns: int
    columns: list[str] = field(default_factory=list)  # every key seen, in first-seen order
    known: set[str] = field(default_factory=set)
    strings: set[str] = field(default_factory=set)  # columns Arrow reads as strings
    number: int = 0  # records read

    def string_columns(self) -> list[str]:
        return [c for c in self.columns if c in self.strings]


@dataclass
class _Scan:
    """A run as the thread found it: Arrow's table and the run's keys in first-seen order (None
    if Arrow cannot read it, or the bytes show it may not read it exactly), and how many lines
    it has if each is an object (None if some are not, or are blank: see _record_lines)."""

    read: tuple[pa.Table, list[str]] | None
    lines: int | None
    # Each column of ``read`` as text, with its kind and its longest value in bytes (made in
    # the thread too); None where a column cannot be made exactly.
    texts: list[_Text] | None = None

    def sliceable(self, st: _State) -> bool:
        """Whether its parts are read as the run (they are if no key is new: keys are columns
        from the record where they appear, null or not, which Arrow does not tell)."""
        read, lines = self.read, self.lines
        if read is None or lines is None or read[0].num_rows != lines:
            return False  # (a line with two objects, say)
        return st.known.issuperset(read[1])

    def split(self, k: int) -> tuple[_Scan, _Scan]:
        assert self.read is not None and self.lines is not None
        table, order = self.read
        head: list[_Text] | None = None
        tail: list[_Text] | None = None
        if self.texts is not None:
            head = [(t.slice(0, k), kind, longest) for t, kind, longest in self.texts]
            tail = [(t.slice(k), kind, longest) for t, kind, longest in self.texts]
        return (
            _Scan((table.slice(0, k), order), k, head),
            _Scan((table.slice(k), order), self.lines - k, tail),
        )


def read_json_lines_fast(
    chunks: Iterator[bytes],
    cap: int,
    label: str,
    batch_rows: int,
    skip_rows: int,
    max_field_bytes: int,
    batch_bytes: int = 0,
    max_columns: int = 0,
    block_size: int = FAST_BLOCK,
) -> Iterator[RowBatch]:
    """The records of JSON lines (``chunks``, UTF-8) in batches as :func:`read_json` gives them,
    without the records themselves. A batch ends at ``batch_rows`` records or after the run
    that brings the lines it read to ``batch_bytes``. Each run is scanned (Arrow and the byte
    checks, which release the GIL) in a thread, a few runs ahead."""
    st = _State(label, cap, skip_rows, max_field_bytes, max_columns)
    pieces: list[_Piece] = []
    held = 0
    hi = skip_rows + batch_rows
    with ThreadPoolExecutor(_AHEAD, thread_name_prefix="json-lines") as pool:
        for run, ahead in _ahead(_runs(chunks, cap, block_size), pool, st):
            scan = ahead.result() if ahead is not None else None
            while run:
                if isinstance(run, _TooLarge):
                    st.number += 1
                    piece = _bad_piece(st, run.prefix, f"record larger than {cap} bytes")
                    size = len(run.prefix)
                    run = b""
                else:
                    room = hi - st.number
                    if scan is not None and scan.lines is not None and scan.lines <= room:
                        head, run = run, b""
                    else:
                        head, run = _cut(run, room)
                    if not run:
                        head_scan = scan or _scan(head, st.string_columns())
                        scan = None
                    elif scan is not None and scan.sliceable(st):
                        head_scan, scan = scan.split(room)  # (each line a record)
                    else:
                        head_scan, scan = _scan(head, st.string_columns()), None
                    size = len(head)
                    piece = _fast_piece(head, head_scan, st) or _slow_piece(head, st)
                if st.number <= skip_rows:
                    continue
                if len(piece.numbers) or piece.bad:
                    pieces.append(piece)
                held += size
                if st.number >= hi or (batch_bytes and held >= batch_bytes):
                    if pieces:
                        yield _row_batch(st.columns, pieces)
                    pieces, held = [], 0
                    hi = st.number + batch_rows
    if pieces:
        yield _row_batch(st.columns, pieces)


def _ahead(
    runs: Iterator[bytes | _TooLarge], pool: ThreadPoolExecutor, st: _State
) -> Iterator[tuple[bytes | _TooLarge, Future[_Scan] | None]]:
    """Each run, with its scan started ``_AHEAD`` runs before it is handed out."""
    held: deque[tuple[bytes | _TooLarge, Future[_Scan] | None]] = deque()
    for run in runs:
        ahead = pool.submit(_scan, run, st.string_columns()) if isinstance(run, bytes) else None
        held.append((run, ahead))
        if len(held) > _AHEAD:
            yield held.popleft()
    yield from held


def _runs(chunks: Iterator[bytes], cap: int, size: int) -> Iterator[bytes | _TooLarge]:
    """Runs of whole lines of about ``size`` bytes (the last line may have no newline), and
    lines past ``cap`` bytes, which are not held."""
    pending: list[bytes] = []  # the start of a line that continues in the next chunk
    held = 0
    over = False
    run: list[bytes] = []
    run_size = 0
    for chunk in chunks:
        end = chunk.rfind(b"\n")
        if end >= 0:
            if over:
                if run:
                    yield from _split(b"".join(run), size)
                    run, run_size = [], 0
                yield _TooLarge(b"".join(pending))
                body = chunk[chunk.index(b"\n") + 1 : end + 1]
            else:
                pending.append(chunk[: end + 1])
                body = b"".join(pending)
            if body:
                run.append(body)
                run_size += len(body)
            pending, held, over = [], 0, False
            if run_size >= size:
                yield from _split(b"".join(run), size)
                run, run_size = [], 0
            chunk = chunk[end + 1 :]
        if not over:
            pending.append(chunk)
            held += len(chunk)
            if held > cap:
                over = True
                pending = [b"".join(pending)[:TEXT_MAX]]
    if run:
        yield from _split(b"".join(run), size)
    if over:
        yield _TooLarge(b"".join(pending))
    elif pending:
        yield b"".join(pending)


def _split(lines: bytes, size: int) -> Iterator[bytes]:
    """Whole ``lines`` in runs of at least ``size`` bytes (but the last) cut after a newline."""
    pos = 0
    while len(lines) - pos > size:
        end = lines.find(b"\n", pos + size - 1)
        if end < 0 or end + 1 >= len(lines):
            break
        yield lines[pos : end + 1]
        pos = end + 1
    yield lines[pos:] if pos else lines


def _cut(run: bytes, room: int) -> tuple[bytes, bytes]:
    """``run`` cut after its ``room``-th record (a line that is not blank), and the rest."""
    if run.count(b"\n") + 1 <= room:
        return run, b""
    seen = pos = 0
    for line in run.split(b"\n"):
        pos += len(line) + 1
        if line and not line.isspace():
            seen += 1
            if seen == room:
                break
    return run[:pos], run[pos:]


def _bad_piece(st: _State, raw: bytes, reason: str) -> _Piece:
    bad = [BadRow(st.number, bad_text(raw.strip()), reason)] if st.number > st.skip_rows else []
    return _Piece(pa.table({}), pa.array([], pa.int64()), bad, {})


# ---- the slow path -------------------------------------------------------------------------


def _slow_piece(run: bytes, st: _State) -> _Piece:
    """The records of ``run`` parsed line by line."""
    st.strings.clear()  # Arrow reads the next run with the types it finds
    exact = long_digits(run)
    objects: list[dict[str, Any]] = []
    numbers: list[int] = []
    bad: list[BadRow] = []
    for line in run.split(b"\n"):
        if not line or line.isspace():
            continue
        st.number += 1
        value, problem = parse_record(line, st.label, exact)
        if problem is None:
            if not st.known.issuperset(value):
                st.columns.extend(k for k in value if k not in st.known)
                st.known.update(value)
                if st.max_columns and len(st.columns) > st.max_columns:
                    raise too_many_columns(
                        len(st.columns), st.max_columns, True, "distinct keys in its records"
                    )
            if st.number > st.skip_rows:
                objects.append(value)
                numbers.append(st.number)
        elif st.number > st.skip_rows:
            bad.append(BadRow(st.number, bad_text(value.strip()), problem))
    table, row_numbers, bad, objects = json_rows(
        st.columns, objects, numbers, bad, st.max_field_bytes
    )
    kinds: dict[str, _Kinds] = {
        c: pa.array([_kind(o.get(c)) for o in objects], pa.int8()) for c in st.columns
    }
    return _Piece(table, row_numbers, bad, kinds)


def _kind(value: Any) -> int:
    if value is None or isinstance(value, dict):
        return _NONE
    if isinstance(value, str):
        return _TEXT
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, list):
        return _LIST
    return _NUMBER  # int, float or Decimal


# ---- the fast path -------------------------------------------------------------------------


def _fast_piece(run: bytes, scan: _Scan, st: _State) -> _Piece | None:
    """The records of ``run`` read by Arrow, or None where it might not read them exactly."""
    if scan.read is None or scan.texts is None:
        return None
    table, order = scan.read
    # (a table without columns keeps its row count when sliced: the scan's lines count)
    count = scan.lines if scan.lines is not None else table.num_rows
    new = [c for c in order if c not in st.known]
    if st.max_columns and len(st.columns) + len(new) > st.max_columns:
        return None  # the slow path finds the record that passes the limit
    if any(longest > st.max_field_bytes for _, _, longest in scan.texts):
        return None
    first = st.number + 1
    drop = max(0, st.skip_rows - first + 1)
    arrays = [text.slice(drop) for text, _, _ in scan.texts]
    kinds: dict[str, _Kinds] = {
        name: kind for name, (_, kind, _) in zip(table.column_names, scan.texts, strict=True)
    }
    st.number += count
    st.columns.extend(new)
    st.known.update(new)
    for name, kind in kinds.items():
        if kind == _TEXT:
            st.strings.add(name)
        elif kind != _NONE:
            st.strings.discard(name)
    names = table.column_names
    rows = pa.Table.from_arrays(arrays, names=names) if names else pa.table({})
    return _Piece(rows, numbers(first + drop, count - drop), [], kinds, True)


def _column_texts(
    run: bytes, read: tuple[pa.Table, list[str]] | None, lines: int | None
) -> list[_Text] | None:
    """Each column of ``read`` as text (see :class:`_Texts`), if every one can be made and
    each record of ``run`` is a row."""
    if read is None:
        return None
    rows = range(lines) if lines is not None else _record_lines(run)
    table = read[0]
    if rows is None or table.num_rows != len(rows):
        return None
    texts = _Texts(run, rows)
    out: list[_Text] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:  # (Arrow may build a nested column it cannot concatenate: [[null]])
            text, kind = texts.column(name, column.combine_chunks())
        except pa.ArrowException:
            return None
        if text is None:
            return None
        longest = pc.max(pc.binary_length(text)).as_py() if len(text) else None
        out.append((text, kind, longest or 0))
    return out


def _scan(run: bytes, strings: list[str]) -> _Scan:
    """Check ``run``'s bytes and read it with Arrow (``strings`` as strings)."""
    data = pa.Array.from_buffers(
        pa.binary(), 1, [None, pa.array([0, len(run)], pa.int32()).buffers()[1], pa.py_buffer(run)]
    )
    if run.endswith(b"\r"):
        return _Scan(None, None)
    shaped = run.startswith(b"{") and run.endswith((b"}", b"\n"))
    if pc.match_substring_regex(data, _ODD_OR_UNSHAPED)[0].as_py():  # (one pass, mostly)
        if pc.match_substring_regex(data, _ODD)[0].as_py():
            return _Scan(None, None)
        shaped = False
    if not run.isascii():
        try:
            data.cast(pa.string())  # (checks UTF-8)
        except pa.ArrowException:
            return _Scan(None, None)
    lines = run.count(b"\n") + (not run.endswith(b"\n")) if shaped else None
    read = _arrow_table(run, strings)
    return _Scan(read, lines, _column_texts(run, read, lines))


def _record_lines(run: bytes) -> list[int] | None:
    """The index of each record's line in ``run``; None unless each line is blank or starts
    with ``{`` and ends with ``}`` (JSON whitespace aside)."""
    found: list[int] = []
    for i, line in enumerate(run.split(b"\n")):
        if not line or line.isspace():
            continue
        body = line.strip(b" \t\r")
        if body[:1] != b"{" or body[-1:] != b"}":
            return None
        found.append(i)
    return found


def _plain(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_null(t)
        or pa.types.is_boolean(t)
        or pa.types.is_int64(t)
        or pa.types.is_float64(t)
        or pa.types.is_string(t)
        or pa.types.is_list(t)
        or pa.types.is_struct(t)
    )


def _depth(t: pa.DataType) -> int:
    depth = 0
    while t.num_fields:
        depth += 1
        t = max((t.field(i).type for i in range(t.num_fields)), key=_depth)
    return depth


def _arrow_table(run: bytes, strings: list[str]) -> tuple[pa.Table, list[str]] | None:
    """``run`` read by Arrow, ``strings`` (and any column it would read as timestamps) as
    strings, and its keys in first-seen order; None if Arrow cannot read it."""
    order: list[str] | None = None
    for _ in range(2):
        schema = pa.schema([(c, pa.string()) for c in strings]) if strings else None
        try:
            table = pajson.read_json(
                pa.BufferReader(run),
                read_options=pajson.ReadOptions(use_threads=False, block_size=len(run) + 1),
                parse_options=pajson.ParseOptions(explicit_schema=schema),
            )
        except Exception:  # any problem at all: the slow path finds and reports it
            return None
        if any(_depth(f.type) > _DEPTH for f in table.schema):
            return None  # orjson refuses deep nesting
        if order is None:  # (the schema's columns come first, the others as they appear)
            order = table.column_names
        others = [f.name for f in table.schema if not _plain(f.type)]
        if not others:
            return table, order
        strings = strings + others
    return None


class _Texts:
    """A run's Arrow columns as text: the values Arrow may write otherwise than the record
    path are read again from their lines (``lines``: the line of each record)."""

    def __init__(self, run: bytes, lines: Sequence[int]) -> None:
        self._run = run
        self._lines = lines
        self._split: list[bytes] | None = None
        self._records: dict[int, dict[str, Any]] = {}

    def _record(self, row: int) -> dict[str, Any] | None:
        """Record ``row`` read again from its line by orjson."""
        record = self._records.get(row)
        if record is None:
            if self._split is None:
                self._split = self._run.split(b"\n")
            try:
                value = orjson.loads(self._split[self._lines[row]])
            except orjson.JSONDecodeError:
                return None
            if type(value) is not dict:
                return None
            record = self._records[row] = value
        return record

    def column(self, name: str, column: pa.Array) -> tuple[pa.Array | None, int]:
        """The text of ``column`` (None if it cannot be made exactly), and its kind."""
        t = column.type
        if len(column) == 0:
            return pa.array([], pa.string()), _NONE
        if pa.types.is_string(t):
            return column, _TEXT
        if pa.types.is_null(t):
            return pa.nulls(len(column), pa.string()), _NONE
        if pa.types.is_boolean(t) or pa.types.is_int64(t):
            kind = _BOOL if pa.types.is_boolean(t) else _NUMBER
            return column.cast(pa.string()), kind
        if pa.types.is_float64(t):
            # Arrow writes a double as the shortest text that reads back to it, as the record
            # path does, but for integral values (``12`` was written ``12`` or ``12.0``: read
            # again from the line; every double from 2**53 up is one) and where either writes
            # an exponent.
            text = column.cast(pa.string())
            odd = pc.or_(
                pc.or_(pc.equal(column, pc.floor(column)), pc.match_substring(text, "e")),
                pc.less(pc.abs(column), _PLAIN_MIN),
            ).fill_null(False)
            return self._again(name, text, odd), _NUMBER
        # lists and objects: read again whole
        column.validate(full=True)
        nested = pa.nulls(len(column), pa.string())
        kind = _LIST if pa.types.is_list(t) else _NONE
        return self._again(name, nested, pc.is_valid(column)), kind

    def _again(self, name: str, text: pa.Array, rows: pa.Array) -> pa.Array | None:
        """``text`` with the values of the ``rows`` (a mask) read again from their lines."""
        found = pc.indices_nonzero(rows).to_pylist()
        if not found:
            return text
        texts: list[str | None] = []
        for row in found:
            record = self._record(row)
            if record is None or name not in record:
                return None
            texts.append(json_text(record[name]))
        return pc.replace_with_mask(text, rows, pa.array(texts, pa.string()))


# ---- batches -------------------------------------------------------------------------------


def _row_batch(columns: list[str], pieces: list[_Piece]) -> RowBatch:
    """The pieces as one batch with every column known (null where a piece has none)."""
    tables = []
    for p in pieces:
        have = set(p.table.column_names)
        n = len(p.numbers)
        arrays = [p.table.column(c) if c in have else pa.nulls(n, pa.string()) for c in columns]
        tables.append(pa.Table.from_arrays(arrays, names=columns))
    if tables:
        table = pa.concat_tables(tables).combine_chunks()
    else:
        table = pa.schema([(c, pa.string()) for c in columns]).empty_table()
    numbers = pa.concat_arrays([p.numbers for p in pieces])
    bad = sorted((b for p in pieces for b in p.bad), key=lambda b: b.row)
    types = {c: _first_type(c, pieces) for c in columns}
    fast = sum(len(p.numbers) for p in pieces if p.fast)
    return RowBatch(list(columns), table, numbers, bad, None, True, types, fast)


def _first_type(name: str, pieces: list[_Piece]) -> PropertyType:
    """:func:`~.batch.first_type` of a column, from the kinds of its values."""
    text: str | None = None
    for p in pieces:
        kind = p.kinds.get(name, _NONE)
        if isinstance(kind, int):
            if kind == _NONE or (kind == _TEXT and text is not None):
                continue
            column = p.table.column(name)
            valid = pc.indices_nonzero(pc.is_valid(column))
            if len(valid) == 0:
                continue
            if kind != _TEXT:
                return _TYPED[kind]
            text = column[valid[0].as_py()].as_py()
            continue
        typed = pc.indices_nonzero(pc.is_in(kind, pa.array(list(_TYPED), pa.int8())))
        if len(typed):
            return _TYPED[kind[typed[0].as_py()].as_py()]
        if text is None:
            texts = pc.indices_nonzero(pc.equal(kind, _TEXT))
            if len(texts):
                text = p.table.column(name)[texts[0].as_py()].as_py()
    if text is not None:
        return infer_type(text) or PropertyType.STRING
    return PropertyType.STRING
