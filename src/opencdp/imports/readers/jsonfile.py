"""JSON files: JSON lines, and a JSON array of objects.

JSON lines are parsed one by one; a JSON array is split into its elements by a small scanner
(strings skipped whole, brackets counted), and long runs of elements are parsed at once where
that works. Values become text: a string as is, a number or a nested value as its compact JSON
text, ``true`` and ``false``, and ``null`` as null; columns are the keys in first-seen order.
The records themselves travel with the batch, their values keeping their JSON types.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from opencdp.catalog import types as ct
from opencdp.imports.readers.batch import (
    TEXT_MAX,
    WHITESPACE,
    BadRow,
    FileError,
    RowBatch,
    bad_text,
    text_schema,
    too_many_columns,
)
from opencdp.imports.readers.charset import charset_label, utf8_chunks

_STRUCT = re.compile(rb'["\[\]{},]')
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
# A whole object with no nested object or array: most elements of an array, in one match.
_FLAT_OBJECT = re.compile(rb'\{[^"\[\]{}]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"\[\]{}]*)*\}', re.DOTALL)
_OPENERS = {0x5B: 0x5D, 0x7B: 0x7D}  # [ -> ], { -> }
_BULK = 64 << 10  # bytes of a JSON array worth parsing at once
_BULK_MIN = 8 << 10
_TEXT_KINDS = {str, type(None)}
_SCALAR_KINDS = {int, float, bool, type(None)}


def read_json(
    path: Path,
    fmt: str,
    charset: str,
    start: int,
    content: int,
    cap: int,
    batch_rows: int,
    skip_rows: int,
    max_field_bytes: int,
    batch_bytes: int = 0,
    max_columns: int = 0,
    *,
    objects: bool = True,
    block_size: int = 0,
) -> Iterator[RowBatch]:
    """The records of a JSON file (``jsonl`` or ``json``, an array) in batches: from
    ``start`` (after a byte order mark), whose first non-blank byte is at ``content``; a
    record past ``cap`` bytes is reported, not held. Without ``objects``, JSON lines take the
    fast path (:mod:`.jsonfast`, in runs of ``block_size`` bytes)."""
    if fmt == "jsonl" and not objects:
        # (imported here: the fast path builds on this module's records and texts)
        from opencdp.imports.readers.jsonfast import FAST_BLOCK, read_json_lines_fast

        return read_json_lines_fast(
            utf8_chunks(path, start, charset), cap, charset_label(charset), batch_rows,
            skip_rows, max_field_bytes, batch_bytes, max_columns, block_size or FAST_BLOCK,
        )  # fmt: skip
    chunks = _Counted(utf8_chunks(path, start, charset))
    if fmt == "jsonl":
        records = _json_lines(chunks, cap, charset_label(charset))
    else:
        with open(path, "rb") as f:
            f.seek(content)
            if f.read(1) != b"[":
                raise FileError("a JSON array file must start with '['")
        chunks = _Counted(utf8_chunks(path, content + 1, charset))
        records = _array_elements(chunks, cap, charset_label(charset))
    return _json_batches(
        records, batch_rows, skip_rows, max_field_bytes, batch_bytes, chunks, max_columns
    )


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


# A record: an object, and None; or its raw bytes, and why it is bad.
_Element = tuple[Any, str | None]


def long_digits(data: bytes | bytearray) -> bool:
    """Whether ``data`` may hold a number orjson would round (see ``long_numbers``)."""
    return ct.long_numbers(data)


def parse_record(data: bytes | bytearray, label: str, exact: bool = True) -> _Element:
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
    if exact and long_digits(data):
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
                    yield parse_record(line, label)
                lines[0] = b""
            pending, size = [], 0
            exact = long_digits(chunk)
            for line in lines[:-1]:
                if line and not line.isspace():
                    yield parse_record(line, label, exact)
        if not over:
            pending.append(lines[-1])
            size += len(lines[-1])
            if size > cap:
                over = True
                pending = [b"".join(pending)[:TEXT_MAX]]
    last = b"".join(pending)
    if over:
        yield last, f"record larger than {cap} bytes"
    elif last and not last.isspace():
        yield parse_record(last, label)


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
                        (prefix, too_large)
                        if prefix is not None
                        else parse_record(buf[start:i], label)
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
                        yield parse_record(element, label)
                    yield from _after_array(buf[pos:], chunks)
                    return
        keep = start if prefix is None else pos
        if prefix is None and len(buf) - start > cap:
            prefix = bytes(buf[start : start + TEXT_MAX])
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
            yield parse_record(tail, label)  # a complete element: only the closing ']' is missing


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
        if not isinstance(values, list) or long_digits(run):
            break  # (orjson rounds long numbers: such elements are read one by one, exactly)
        return values, cut + 2
    return None, failed


def _after_array(rest: bytearray, chunks: Iterator[bytes]) -> Iterator[_Element]:
    """Anything but whitespace after the closing ']' is reported as one more bad record."""
    found = bytes(rest).lstrip(WHITESPACE)[:TEXT_MAX]
    for chunk in chunks:
        if len(found) >= TEXT_MAX:
            break
        found = (found + chunk if found else chunk.lstrip(WHITESPACE))[:TEXT_MAX]
    if found:
        yield found, "unexpected data after the end of the JSON array"


def json_text(value: Any) -> str | None:
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
            bad.append(BadRow(n, bad_text(value.strip()), problem))
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
    table, row_numbers, bad, objects = json_rows(columns, objects, numbers, bad, max_field_bytes)
    return RowBatch(list(columns), table, row_numbers, bad, objects, json=True)


def json_rows(
    columns: list[str],
    objects: list[dict[str, Any]],
    numbers: list[int],
    bad: list[BadRow],
    max_field_bytes: int,
) -> tuple[pa.Table, pa.Array, list[BadRow], list[dict[str, Any]]]:
    """Records (numbered ``numbers``) as text columns, their row numbers, the bad rows (those
    given, and the records with a field past ``max_field_bytes``) and the good records."""
    arrays = [json_column([o.get(c) for o in objects]) for c in columns]
    too_large: dict[int, str] = {}  # index -> the first column too large
    for name, column in zip(columns, arrays, strict=True):
        lengths = pc.binary_length(column)
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > max_field_bytes:
            over = pc.greater(lengths, max_field_bytes).fill_null(False)
            for i in pc.indices_nonzero(over).to_pylist():
                too_large.setdefault(i, name)
    table = pa.Table.from_arrays(arrays, schema=text_schema(columns))
    row_numbers = pa.array(numbers, pa.int64())
    if too_large:
        for i, name in too_large.items():
            reason = f"field {name!r} is larger than {max_field_bytes} bytes"
            text = bad_text((json_text(objects[i]) or "").encode())
            bad.append(BadRow(numbers[i], text, reason))
        keep = pa.array([i not in too_large for i in range(len(numbers))])
        table, row_numbers = table.filter(keep), row_numbers.filter(keep)
        objects = [o for i, o in enumerate(objects) if i not in too_large]
        bad.sort(key=lambda b: b.row)
    return table, row_numbers, bad, objects


def json_column(values: list[Any]) -> pa.Array:
    """JSON values as text (see :func:`json_text`), a column at a time where possible."""
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
    return pa.array([json_text(v) for v in values], pa.string())
