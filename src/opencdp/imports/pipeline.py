"""Import jobs: read a stored file in batches, validate, write, and account for every row.

Each batch is written in one store transaction that also records the job's progress (rows
consumed, counters, and the lengths of its failures and warnings files). A job interrupted at
any point therefore resumes after its last commit: no row is written twice and none is skipped,
whatever the mode, and the files are cut back to what the commit recorded.

``stop_on_error`` jobs first validate the whole file without writing anything; only a clean
file is written.

Nothing about a file's shape can make a job take the server's memory: a delimited file's
header is checked against the limits before any row is read (and at submission, so that the
surface can refuse it at once), batches are bounded by their text as well as by their rows,
and the store columns of new properties are added a few per transaction before the batch that
needs them (a store transaction adding thousands of columns takes gigabytes).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from opencdp.catalog.model import Property
from opencdp.catalog.service import Catalog
from opencdp.config import Limits
from opencdp.errors import CdpError, Code
from opencdp.imports.files import Files, StoredFile
from opencdp.imports.readers import (
    DELIMITERS,
    FileError,
    RowBatch,
    detect_charset,
    read_file,
    read_header,
)
from opencdp.imports.spec import ImportSpec
from opencdp.imports.targets import Prepared, Target, identity_keys, make_target
from opencdp.jobs.service import Interrupted, Job, Jobs, Outcome, Progress
from opencdp.store.base import Store

FAILURE_COLUMN = "Import Failure Reason"
WARNING_COLUMN = "Import Warning Reason"
_COUNTERS = ("rows", "imported", "failed", "warnings", "failures_bytes", "warnings_bytes")
COLUMNS_PER_TRANSACTION = 64  # store columns added at once for new properties


def submit_import(
    jobs: Jobs,
    catalog: Catalog,
    limits: Limits,
    project_id: int,
    surface: str,
    spec: ImportSpec,
    stored: StoredFile,
) -> Job:
    """Queue the import of a stored file, keeping the project's identity keys as they are now.

    A delimited file whose header passes the limits (see :meth:`Target.check_columns`) is
    refused here, with ``limit_exceeded`` and nothing queued. Other problems of the file
    (empty, an unknown charset) are the job's to report, as when it runs.
    """
    spec = spec.with_identity_keys(identity_keys(catalog, project_id))
    try:
        header = read_header(stored.path, spec.format, spec.charset, limits.max_properties)
    except FileError:
        header = None
    if header is not None:
        target = make_target(catalog, limits, project_id, spec, stored.sha256 or "")
        target.check_columns(header)
    return jobs.submit(project_id, "import", surface, spec.to_params(), stored.id)


class RowFile:
    """A failures or warnings file: the rows in the input's format plus a reason column."""

    def __init__(self, path: Path, delimiter: str, reason_column: str, length: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.delimiter = delimiter
        self.reason_column = reason_column
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._f: BinaryIO = os.fdopen(fd, "r+b")
        self._f.truncate(length)  # drop what the last commit did not record
        self._f.seek(length)
        self.length = length

    def append(self, columns: list[str], rows: list[tuple[list[Any], str]]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.delimiter, lineterminator="\n")
        if self.length == 0:
            w.writerow([*columns, self.reason_column])
        for values, reason in rows:
            w.writerow(["" if v is None else v for v in values] + [reason])
        data = buf.getvalue().encode("utf-8")
        self._f.write(data)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.length += len(data)

    def close(self) -> None:
        self._f.close()


class ImportRunner:
    """The ``import`` job handler."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        files: Files,
        limits: Limits,
        stopping: Callable[[], bool],
        batch_rows: int = 0,
        on_list: Callable[[int, int], object] | None = None,
        batch_bytes: int = 0,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.files = files
        self.limits = limits
        self.stopping = stopping
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self.on_list = on_list  # (project id, list id): a static list changed

    def __call__(self, job: Job, progress: Progress) -> Outcome:
        if job.file_id is None:
            raise CdpError(Code.VALIDATION_FAILED, "the job has no file", "file")
        stored = self.files.get(job.project_id, job.file_id)
        spec = ImportSpec.from_params(job.params)
        fmt = spec.format
        charset = detect_charset(stored.path, spec.charset)
        target = make_target(self.catalog, self.limits, job.project_id, spec, stored.sha256 or "")
        # A header that passes the limits fails the job before any row is read.
        header = read_header(stored.path, fmt, charset, self.limits.max_properties)
        if header is not None:
            target.check_columns(header)
        names = {k: f"job:{job.id}:{k}" for k in _COUNTERS}
        state = {k: self.store.checkpoint(n) for k, n in names.items()}
        delimiter = DELIMITERS.get(fmt, ",")
        failures = RowFile(
            self.files.job_file(job.project_id, job.id, "failures"),
            delimiter,
            FAILURE_COLUMN,
            state["failures_bytes"],
        )
        warnings = RowFile(
            self.files.job_file(job.project_id, job.id, "warnings"),
            delimiter,
            WARNING_COLUMN,
            state["warnings_bytes"],
        )
        try:
            if spec.stop_on_error and state["rows"] == 0:
                stop = self._first_problem(target, stored.path, fmt, charset)
                if stop is not None:
                    columns, values, reason, row = stop
                    failures.append(columns, [(values, reason)])
                    return Outcome(
                        False,
                        f"stopped at row {row}: {reason.partition(': ')[2]}; nothing imported",
                        rows_read=row,
                        failed=1,
                    )
            made: set[int] = set()  # properties whose store columns exist
            try:
                for prepared in self._prepared(target, stored.path, fmt, charset, state["rows"]):
                    if self.stopping():
                        raise Interrupted
                    self._add_columns(job.project_id, prepared.columns, made)
                    batch = prepared.batch
                    with self.store.writer() as w:
                        result = target.apply(w, prepared)
                        failures.append(batch.columns, _rows(batch, result.failures))
                        warnings.append(batch.columns, _rows(batch, result.warnings, False))
                        state["rows"] = _last_row(batch, state["rows"])
                        state["imported"] += result.imported
                        state["failed"] += len(result.failures) + len(batch.bad)
                        state["warnings"] += len(result.warnings)
                        state["failures_bytes"] = failures.length
                        state["warnings_bytes"] = warnings.length
                        for k, n in names.items():
                            w.set_checkpoint(n, state[k])
                    progress.report(
                        state["rows"], state["imported"], state["failed"], state["warnings"]
                    )
            except CdpError as exc:
                if state["rows"] == 0:
                    raise
                # Part of the file is imported: say so, and keep the counters.
                return Outcome(
                    False,
                    f"{exc.message} (stopped after row {state['rows']}: {state['imported']} "
                    f"records imported, {state['failed']} failed)",
                    rows_read=state["rows"],
                    imported=state["imported"],
                    failed=state["failed"],
                    warnings=state["warnings"],
                )
        finally:
            failures.close()
            warnings.close()
        if spec.list_id is not None and self.on_list is not None:
            self.on_list(job.project_id, spec.list_id)
        return Outcome(
            True,
            _summary(state),
            rows_read=state["rows"],
            imported=state["imported"],
            failed=state["failed"],
            warnings=state["warnings"],
        )

    def _add_columns(self, project_id: int, columns: list[Property], made: set[int]) -> None:
        """Add the store columns of a batch's properties that may not exist yet, a few per
        transaction: DuckDB's memory for a transaction that adds columns grows with the square
        of their number (1,000 columns: 350 MB; 5,000: 7 GB)."""
        todo = [p for p in columns if p.id not in made]
        for i in range(0, len(todo), COLUMNS_PER_TRANSACTION):
            with self.store.writer() as w:
                w.ensure_project(project_id)
                w.ensure_columns(project_id, todo[i : i + COLUMNS_PER_TRANSACTION])
        made.update(p.id for p in todo)

    def _prepared(
        self, target: Target, path: Path, fmt: str, charset: str, skip: int
    ) -> Iterator[Prepared]:
        """The file's batches, prepared by ``target``. A target whose preparation is Arrow
        compute (which releases the GIL) prepares one batch ahead of the caller, in a thread of
        its own, so that typing the next batch overlaps with writing this one; at most two
        batches are in memory. Preparation that is Python code would only contend for the GIL
        with the writes, so it runs in line.

        Batches are bounded by rows and by text (``batch_rows``/``batch_bytes``, or the
        target's own). The columns of a JSON file grow as keys appear: each time they do, they
        are checked against the limits as a delimited file's header is."""
        batches = read_file(
            path,
            fmt,
            charset,
            batch_rows=self.batch_rows or target.batch_rows,
            skip_rows=skip,
            batch_bytes=self.batch_bytes or target.batch_bytes,
            max_columns=self.limits.max_properties,
        )
        checked = [0]  # how many columns were checked

        def step() -> Prepared | None:
            batch = next(batches, None)
            if batch is None:
                return None
            if len(batch.columns) != checked[0]:
                target.check_columns(batch.columns)
                checked[0] = len(batch.columns)
            return target.prepare(batch)

        if not target.read_ahead:
            while (prepared := step()) is not None:
                yield prepared
            return

        with ThreadPoolExecutor(1, thread_name_prefix="import-read") as ahead:
            pending = ahead.submit(step)
            while (prepared := pending.result()) is not None:
                pending = ahead.submit(step)
                yield prepared

    def _first_problem(
        self, target: Target, path: Path, fmt: str, charset: str
    ) -> tuple[list[str], list[Any], str, int] | None:
        """The first bad row of the file, validated without writing anything."""
        for prepared in self._prepared(target, path, fmt, charset, 0):
            if self.stopping():
                raise Interrupted
            batch = prepared.batch
            with self.store.writer() as w:  # read-only: check() writes nothing
                result = target.check(w, prepared)
            rows = _numbered(batch, result.failures, True)
            if rows:
                row, values, reason = rows[0]
                return batch.columns, values, reason, row
        return None


def _rows(
    batch: RowBatch, problems: dict[int, str], with_bad: bool = True
) -> list[tuple[list[Any], str]]:
    """The original values and the reason of each row in ``problems`` (and, with ``with_bad``,
    of each row that could not be parsed), in file order."""
    return [(values, reason) for _, values, reason in _numbered(batch, problems, with_bad)]


def _numbered(
    batch: RowBatch, problems: dict[int, str], with_bad: bool
) -> list[tuple[int, list[Any], str]]:
    out: list[tuple[int, list[Any], str]] = []
    if problems:
        idx = sorted(problems)
        numbers = batch.row_numbers.take(pa.array(idx)).to_pylist()
        taken = batch.rows.take(pa.array(idx)).to_pylist()
        for i, n, row in zip(idx, numbers, taken, strict=True):
            out.append((n, [row.get(c) for c in batch.columns], f"row {n}: {problems[i]}"))
    if with_bad:
        out.extend((b.row, [b.text], f"row {b.row}: {b.reason}") for b in batch.bad)
    return sorted(out, key=lambda x: x[0])


def _last_row(batch: RowBatch, before: int) -> int:
    last = before
    if len(batch.row_numbers):
        last = max(last, int(batch.row_numbers[-1].as_py()))
    if batch.bad:
        last = max(last, max(b.row for b in batch.bad))
    return last


def _summary(state: dict[str, int]) -> str:
    return (
        f"Import succeeded, {state['imported']} records imported, {state['failed']} failed, "
        f"{state['warnings']} with warnings"
    )
