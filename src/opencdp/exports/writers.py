"""The part writers: Arrow batches in a dataset's columns → parts of at most ``limit`` bytes,
each a blob of its own (gzip CSV with a header row, gzip JSON lines, or zstd Parquet).

A part is written through :meth:`BlobStore.create`, so it appears whole once committed and a
writer that fails leaves the parts it committed before for its caller to delete.
"""

from __future__ import annotations

import gzip
import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencdp.blobs.base import BlobStore, BlobWriter
from opencdp.exports import columns

CHUNK_BYTES = 1 << 20  # CSV text compressed as one gzip member
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Part:
    name: str
    rows: int
    bytes: int
    sha256: str

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


Render = Callable[[pa.RecordBatch], bytes]


class GzipParts:
    """Batches → gzip text parts (CSV with a header row, or JSON lines) of at most ``limit``
    bytes, as the blobs ``<folder><stem>_partNNNN<ext>`` of ``project``.

    Rows are rendered a chunk at a time (about ``CHUNK_BYTES`` of text), and each chunk is
    compressed as a gzip member of its own by a pool of threads (zlib releases the GIL), a few
    chunks ahead of the writer, which appends the members in order. A gzip file may hold
    several members and reads as one stream, so a part's size is known exactly as it is
    written, and a part ends before a member that would take it over the limit (a single row
    larger than the limit makes a part of its own). Parts end on row boundaries."""

    def __init__(
        self,
        blobs: BlobStore,
        project: int,
        folder: str,
        stem: str,
        limit: int,
        workers: int,
        ext: str,
        render: Render,
    ) -> None:
        self.blobs, self.project, self.folder = blobs, project, folder
        self.stem, self.limit, self.workers = stem, limit, workers
        self.ext, self.render = ext, render
        # Chunks small enough for small limits, large enough to compress well.
        self.chunk_bytes = max(256, min(CHUNK_BYTES, limit // 4))
        self.parts: list[Part] = []
        self._file: BlobWriter | None = None
        self._name = ""
        self._digest = hashlib.sha256()
        self._size = self._rows = 0
        self._header = b""

    def write(self, batches: Iterator[pa.RecordBatch]) -> list[Part]:
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="export-gzip") as pool:
                pending: deque[tuple[Future[bytes], pa.RecordBatch]] = deque()
                for rows, text in self._chunks(batches):
                    pending.append((pool.submit(gzip.compress, text, GZIP_LEVEL, mtime=0), rows))
                    while len(pending) > 2 * self.workers:
                        future, done = pending.popleft()
                        self._append(future.result(), done)
                while pending:
                    future, done = pending.popleft()
                    self._append(future.result(), done)
        except BaseException:
            if self._file is not None:
                self._file.abort()
            raise
        self._close()
        return self.parts

    def _chunks(self, batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[pa.RecordBatch, bytes]]:
        per_chunk = 64
        for batch in batches:
            if not self._header and self.render is render_csv:
                self._header = gzip.compress(csv_header(batch.schema), GZIP_LEVEL, mtime=0)
            start = 0
            while start < batch.num_rows:
                rows = batch.slice(start, per_chunk)
                text = self.render(rows)
                yield rows, text
                start += rows.num_rows
                # Aim the next chunk at the chunk size from this chunk's bytes per row.
                per_chunk = max(1, self.chunk_bytes * rows.num_rows // max(1, len(text)))

    def _append(self, member: bytes, rows: pa.RecordBatch) -> None:
        if self._file is not None and self._size + len(member) > self.limit and self._rows:
            self._close()
        if len(self._header) + len(member) > self.limit and rows.num_rows > 1:
            # Too big even for a part of its own: in two halves (rows stay whole).
            half = rows.num_rows // 2
            for piece in (rows.slice(0, half), rows.slice(half)):
                self._append(gzip.compress(self.render(piece), GZIP_LEVEL, mtime=0), piece)
            return
        if self._file is None:
            name = f"{self.stem}_part{len(self.parts) + 1:04d}{self.ext}"
            self._name = name
            self._file = self.blobs.create(self.project, self.folder + name)
            self._digest, self._size, self._rows = hashlib.sha256(), 0, 0
            if self._header:
                self._put(self._header)
        self._put(member)
        self._rows += rows.num_rows

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._digest.update(data)
        self._size += len(data)

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.commit()
        self.parts.append(Part(self._name, self._rows, self._size, self._digest.hexdigest()))
        self._file = None


class _Hashing:
    """A blob writer as the file pyarrow's Parquet writer writes to, hashing what passes."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.digest = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.writer.write(bytes(data))

    def tell(self) -> int:
        return self.writer.size

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.closed = True


class ParquetParts:
    """Batches → zstd Parquet parts, closed before a row group that would (at the size of the
    largest so far, with room for the footer) take a part over ``limit``."""

    ROW_GROUP = 65_536

    def __init__(self, blobs: BlobStore, project: int, folder: str, stem: str, limit: int) -> None:
        self.blobs, self.project, self.folder = blobs, project, folder
        self.stem, self.limit = stem, limit
        self.parts: list[Part] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink: _Hashing | None = None
        self._largest = 0
        self._rows = 0
        self._name = ""

    def write(self, batches: Iterator[pa.RecordBatch]) -> list[Part]:
        try:
            self._write(batches)
        except BaseException:
            if self._sink is not None:
                self._sink.writer.abort()
            raise
        self._close()
        return self.parts

    def _write(self, batches: Iterator[pa.RecordBatch]) -> None:
        for batch in batches:
            for start in range(0, batch.num_rows, self.ROW_GROUP):
                rows = batch.slice(start, self.ROW_GROUP)
                if (
                    self._sink is not None
                    and self._rows
                    and self._sink.tell() + self._largest * 3 // 2 + (64 << 10) > self.limit
                ):
                    self._close()
                if self._sink is None:
                    name = f"{self.stem}_part{len(self.parts) + 1:04d}.parquet"
                    blob = self.blobs.create(self.project, self.folder + name)
                    self._name, self._sink, self._rows = name, _Hashing(blob), 0
                    self._writer = pq.ParquetWriter(self._sink, rows.schema, compression="zstd")
                assert self._writer is not None
                before = self._sink.tell()
                self._writer.write_batch(rows)
                self._largest = max(self._largest, self._sink.tell() - before)
                self._rows += rows.num_rows

    def _close(self) -> None:
        if self._writer is None or self._sink is None:
            return
        self._writer.close()
        info = self._sink.writer.commit()
        self.parts.append(Part(self._name, self._rows, info.size, self._sink.digest.hexdigest()))
        self._writer, self._sink = None, None


def render_jsonl(rows: pa.RecordBatch) -> bytes:
    """JSON lines; a column of JSON text (the variables, identities) as the object itself."""
    names = rows.schema.names
    values: list[list[Any]] = []
    for field, column in zip(rows.schema, rows.columns, strict=True):
        vals = column.to_pylist()
        if columns.is_json(field):
            vals = [None if v is None else orjson.Fragment(v) for v in vals]
        values.append(vals)
    rows_out = (dict(zip(names, r, strict=True)) for r in zip(*values, strict=True))
    return b"".join(orjson.dumps(r) + b"\n" for r in rows_out)


def render_csv(rows: pa.RecordBatch) -> bytes:
    r"""Rows as GrowingIO's CSV: cells separated by ``,``; a cell that holds a delimiter, a
    quote, a backslash or a line break in ``"``, with ``\`` as the escape character (``\"``
    for a quote, ``\\`` for a backslash). That is the vendor's format page, and what its
    readers are set up for (Spark and Hive with escape ``\``, Python's ``csv`` with
    ``escapechar``). Built a column at a time with Arrow kernels."""
    if rows.num_rows == 0:
        return b""
    cells = [_csv_cell(column) for column in rows.columns]
    lines = pc.binary_join_element_wise(*cells, ",")
    if not isinstance(lines, pa.Array):  # (every cell empty: no array came in)
        lines = pa.array([lines.as_py()] * rows.num_rows, pa.string())
    return _concatenated(pc.binary_join_element_wise(lines, _NEWLINE, ""))


def csv_header(schema: pa.Schema) -> bytes:
    return (",".join(schema.names) + "\n").encode()


_NEWLINE = pa.scalar("\n")
_SPECIAL = r'[,"\\\r\n]'


def _csv_cell(column: pa.Array) -> pa.Array | pa.Scalar:
    if column.null_count == len(column):
        return _EMPTY  # (a column we hold no data for: one scalar, not a row of empty strings)
    if not pa.types.is_string(column.type):
        return pc.fill_null(pc.cast(column, pa.string()), "")
    special = pc.match_substring_regex(column, _SPECIAL)
    if not pc.any(special).as_py():
        return pc.fill_null(column, "")
    escaped = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    if pc.all(special).as_py():  # (JSON columns: every value has quotes)
        return pc.fill_null(quoted, "")
    return pc.fill_null(pc.if_else(special, quoted, column), "")


_EMPTY = pa.scalar("")


def _concatenated(text: pa.Array) -> bytes:
    """The values of a string array (no nulls) one after another: its data buffer."""
    offsets = text.buffers()[1]
    first, last = (
        int.from_bytes(offsets[i * 4 : i * 4 + 4], "little", signed=True)
        for i in (text.offset, text.offset + len(text))
    )
    data: bytes = text.buffers()[2][first:last].to_pybytes()
    return data
