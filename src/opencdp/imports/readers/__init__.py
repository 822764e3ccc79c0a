"""Import files read as batches of text columns: delimited text (CSV, TSV, SSV) and JSON.

Files are streamed, so memory is bounded by the batch size and the largest record, never by
the file: a record past twice ``max_field_bytes`` (at least 1 MiB) is not held but reported,
and a field past ``max_field_bytes`` (in UTF-8) makes its record bad. A batch ends at
``batch_rows`` records, or, with ``batch_bytes``, once it holds that much text (a batch of the
delimited reader ends at the end of the piece that passes it, a piece being at most an Arrow
block or 1 MiB of records read slowly; one of the JSON reader at the end of the 1 MiB chunk,
or on the fast path the 4 MiB run of lines, that passes it). With ``max_columns``, a file with
more columns is refused: a delimited file by its header, before any record is read (and a
header larger than ``max_columns`` KiB is not read at all); a JSON file when its records' keys
pass that many. Every record is accounted
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

JSON lines are parsed one by one with orjson, and a JSON array is split into its elements by a
small scanner (strings skipped whole, brackets counted), long runs of elements parsed at once
where that works. Values become text: a string as is, a number or a nested value as its compact
JSON text, ``true`` and ``false``, and ``null`` as null; columns are the keys in first-seen
order. A JSON batch is ``json``: :meth:`RowBatch.first_type` gives its columns' types by their
JSON values, and it carries the records themselves (``objects``) unless the caller asks not to.
Then JSON lines take a fast path, Arrow's JSON reader, on runs of whole lines (4 MiB, two at a
time in threads), giving exactly what the slow path gives: a run Arrow might read otherwise
(a bad line, a key whose type changes, numbers a double may round, NaN, escaped surrogates...)
is read by the slow path, and numbers Arrow turned into integral doubles, and nested values,
are read again from their lines (:mod:`.jsonfast`).

The package's modules follow these seams: :mod:`.batch` (what every reader yields),
:mod:`.charset`, :mod:`.delimited` (the header, and the fast and slow paths), :mod:`.records`
(records split as ``csv`` splits them, in bounded memory), :mod:`.jsonfile` and :mod:`.jsonfast`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from opencdp.imports.readers.batch import BadRow, FileError, RowBatch, too_many_columns
from opencdp.imports.readers.charset import bom_length, detect_charset, first_content
from opencdp.imports.readers.delimited import BLOCK, DELIMITERS, delimited_spec, read_delimited
from opencdp.imports.readers.jsonfile import read_json

FORMATS = ("csv", "tsv", "ssv", "jsonl", "json")

__all__ = [
    "DELIMITERS",
    "FORMATS",
    "BadRow",
    "FileError",
    "RowBatch",
    "detect_charset",
    "read_file",
    "read_header",
    "too_many_columns",
]


def read_file(
    path: Path,
    fmt: str,
    charset: str | None = None,
    batch_rows: int = 50_000,
    skip_rows: int = 0,
    max_field_bytes: int = 64 << 20,
    batch_bytes: int = 0,
    max_columns: int = 0,
    *,
    fast: bool = True,
    block_size: int = 0,
    objects: bool = True,
) -> Iterator[RowBatch]:
    """Read ``path`` as ``fmt`` in batches of ``batch_rows`` records (good or bad), each
    ending early once it holds about ``batch_bytes`` of text (0: no such bound).

    Records ``1..skip_rows`` are read but not yielded; numbering is that of a full read. The
    file's own problems (empty, no header, an unusable charset, more than ``max_columns``
    columns in a header) raise :class:`FileError` here; a bad record is reported in its batch
    and reading goes on. A JSON batch carries its records as ``objects`` unless ``objects`` is
    false, which lets JSON lines take the fast path. ``fast`` and ``block_size`` choose the
    paths (the slow path alone, or smaller Arrow blocks or runs of JSON lines: for tests).
    """
    if fmt not in FORMATS:
        raise FileError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}", "format")
    if batch_rows < 1 or skip_rows < 0 or max_field_bytes < 1 or batch_bytes < 0:
        raise ValueError("batch_rows and max_field_bytes must be positive, skip_rows >= 0")
    charset = detect_charset(path, charset)
    start = bom_length(path, charset)
    content = first_content(path, start)
    if content is None:
        raise FileError("file is empty")
    cap = max(2 * max_field_bytes, 1 << 20)  # the largest record held in memory
    if fmt in DELIMITERS:
        spec = delimited_spec(
            path, DELIMITERS[fmt], charset, start, batch_rows, skip_rows, max_field_bytes, cap,
            batch_bytes, max_columns,
        )  # fmt: skip
        return read_delimited(path, spec, fast, block_size or BLOCK)
    return read_json(
        path, fmt, charset, start, content, cap, batch_rows, skip_rows, max_field_bytes,
        batch_bytes, max_columns, objects=objects or not fast, block_size=block_size,
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
    start = bom_length(path, charset)
    if first_content(path, start) is None:
        raise FileError("file is empty")
    cap = 2 << 20
    spec = delimited_spec(path, DELIMITERS[fmt], charset, start, 1, 0, cap, cap, 0, max_columns)
    return spec.columns
