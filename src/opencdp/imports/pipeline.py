"""Import jobs: read a stored file in batches, validate, write, and account for every row.

Each batch goes through the steps of :data:`crashpoints.IMPORT_BATCH`: read, prepare, write to
the store together with the batch's outcome under its key (job, batch number): the rows that
failed or got a warning, as the lines of the job's files, and its counts; append those lines
to the files; record the batch in the metadata DB (its last row, the job's counters, the files'
lengths); report. A job interrupted at any point resumes after its last recorded batch, its
files cut back to the lengths recorded with it. A batch the store holds but progress does not
cover (a crash between the two) is finished from its recorded outcome, not written again: an
insert-only batch would see its own rows as already there. So no row is written or counted
twice and none is skipped, whatever the mode.

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
import dataclasses
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from opencdp import crashpoints
from opencdp.blobs.base import BlobStore
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
from opencdp.imports.readers.batch import without_text
from opencdp.imports.spec import ImportSpec
from opencdp.imports.targets import BatchResult, Prepared, Target, identity_keys, make_target
from opencdp.jobs.service import Interrupted, Job, Jobs, Outcome, Progress
from opencdp.meta.progress import BatchRecord, ProgressLog
from opencdp.store.base import Store

FAILURE_COLUMN = "Import Failure Reason"
WARNING_COLUMN = "Import Warning Reason"
_COUNTERS = ("imported", "failed", "warnings", "failures_bytes", "warnings_bytes")
# Why a record fails where the store's text cannot hold U+0000 (PostgreSQL).
NUL_REASON = "a value holds the character U+0000, which this deployment's store ({}) cannot keep"


def submit_import(
    jobs: Jobs,
    catalog: Catalog,
    limits: Limits,
    files: Files,
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
        with files.local_path(stored) as path:
            header = read_header(path, spec.format, spec.charset, limits.max_properties)
    except FileError:
        header = None
    if header is not None:
        target = make_target(catalog, limits, project_id, spec, stored.sha256 or "")
        target.check_columns(header)
    return jobs.submit(project_id, "import", surface, spec.to_params(), stored.id)


class RowFile:
    """A failures or warnings file: the rows in the input's format plus a reason column.

    It grows by :meth:`BlobStore.append` at the length the job's last recorded batch left it
    at, so whatever a crash wrote after that is cut off."""

    def __init__(
        self,
        blobs: BlobStore,
        project_id: int,
        key: str,
        delimiter: str,
        reason_column: str,
        length: int,
    ) -> None:
        self.blobs, self.project_id, self.key = blobs, project_id, key
        self.delimiter = delimiter
        self.reason_column = reason_column
        found = blobs.stat(project_id, key)
        if found is not None and found.size != length:
            blobs.append(project_id, key, b"", length)  # drop what the last commit did not record
        self.length = length

    def render(self, rows: list[tuple[list[Any], str]]) -> str:
        """The lines of ``rows`` (values and a reason each), without the header."""
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=self.delimiter, lineterminator="\n")
        for values, reason in rows:
            w.writerow(["" if v is None else v for v in values] + [reason])
        return buf.getvalue()

    def append(self, columns: list[str], rows: list[tuple[list[Any], str]]) -> None:
        self.append_text(columns, self.render(rows))

    def append_text(self, columns: list[str], lines: str) -> None:
        """Append lines :meth:`render` made (after the header, when the file is empty)."""
        if not lines:
            return
        head = ""
        if self.length == 0:
            buf = io.StringIO()
            csv.writer(buf, delimiter=self.delimiter, lineterminator="\n").writerow(
                [*columns, self.reason_column]
            )
            head = buf.getvalue()
        data = (head + lines).encode("utf-8")
        self.length = self.blobs.append(self.project_id, self.key, data, self.length)

    def close(self) -> None:
        """(Every append is durable when it returns: nothing is left to close.)"""


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch did, kept by the store under the batch's key (its marker): the file's
    last row it covers, its counts, and the lines it adds to the failures and warnings
    files."""

    last_row: int
    imported: int
    failed: int
    warnings: int
    columns: list[str]
    failure_lines: str
    warning_lines: str

    def encode(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> BatchOutcome:
        return cls(**orjson.loads(data))


def batch_key(job_id: int, batch_no: int) -> str:
    """The key of an import batch in the store (its marker, its user id reservations)."""
    return f"import:{int(job_id)}:{int(batch_no)}"


def _job_prefix(job_id: int) -> str:
    return f"import:{int(job_id)}:"


class ImportRunner:
    """The ``import`` job handler."""

    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        recorded: ProgressLog,
        files: Files,
        limits: Limits,
        stopping: Callable[[], bool],
        batch_rows: int = 0,
        on_list: Callable[[int, int], object] | None = None,
        batch_bytes: int = 0,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.recorded = recorded
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
        # The readers read a local file: the blob's own, or a copy for a remote store.
        with self.files.local_path(stored) as path:
            return self._run(job, progress, stored, path)

    def _run(self, job: Job, progress: Progress, stored: StoredFile, path: Path) -> Outcome:
        spec = ImportSpec.from_params(job.params)
        fmt = spec.format
        charset = detect_charset(path, spec.charset)
        target = make_target(self.catalog, self.limits, job.project_id, spec, stored.sha256 or "")
        # A header that passes the limits fails the job before any row is read.
        header = read_header(path, fmt, charset, self.limits.max_properties)
        if header is not None:
            target.check_columns(header)
        last = self.recorded.last_batch(job.id)
        state = {"rows": last.last_row, **{k: getattr(last, k) for k in _COUNTERS}}
        delimiter = DELIMITERS.get(fmt, ",")
        blobs = self.files.blobs
        failures = RowFile(
            blobs,
            job.project_id,
            self.files.job_file(job.id, "failures"),
            delimiter,
            FAILURE_COLUMN,
            last.failures_bytes,
        )
        warnings = RowFile(
            blobs,
            job.project_id,
            self.files.job_file(job.id, "warnings"),
            delimiter,
            WARNING_COLUMN,
            last.warnings_bytes,
        )
        files = (failures, warnings)
        batch_no = last.batch_no
        try:
            # The batch after the last recorded one may be in the store already (a crash came
            # between the two): it is finished from the outcome the store kept.
            kept = self.store.batch_outcome(batch_key(job.id, batch_no + 1))
            if kept is not None:
                batch_no += 1
                self._finish(job, batch_no, BatchOutcome.decode(kept), state, files, progress)
            if spec.stop_on_error and state["rows"] == 0:
                stop = self._first_problem(target, path, fmt, charset)
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
                for prepared in self._prepared(target, path, fmt, charset, state["rows"]):
                    crashpoints.reached("import.prepared")
                    if self.stopping():
                        raise Interrupted
                    self._add_columns(job.project_id, prepared.columns, made)
                    batch_no += 1
                    prepared.key = batch_key(job.id, batch_no)
                    outcome = self._write(target, prepared, state["rows"], files)
                    self._finish(job, batch_no, outcome, state, files, progress)
            except CdpError as exc:
                if state["rows"] == 0:
                    raise
                # Part of the file is imported: say so, and keep the counters.
                self._forget(job.id)
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
        self._forget(job.id)
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

    def _write(
        self, target: Target, prepared: Prepared, before: int, files: tuple[RowFile, RowFile]
    ) -> BatchOutcome:
        """Write the batch and its outcome under its key: in one transaction where the store
        has them, else the outcome after the rows (whose writes are idempotent by key)."""
        batch = prepared.batch
        assert prepared.key is not None

        def outcome(result: BatchResult) -> BatchOutcome:
            return BatchOutcome(
                last_row=_last_row(batch, before),
                imported=result.imported,
                failed=len(result.failures) + len(batch.bad),
                warnings=len(result.warnings),
                columns=list(batch.columns),
                failure_lines=files[0].render(_rows(batch, result.failures)),
                warning_lines=files[1].render(_rows(batch, result.warnings, False)),
            )

        if self.store.capabilities.transactions:
            with self.store.writer() as w:
                done = outcome(target.apply(w, prepared))
                w.record_batch(prepared.key, done.encode())
        else:
            with self.store.writer() as w:
                done = outcome(target.apply(w, prepared))
            with self.store.writer() as w:
                w.record_batch(prepared.key, done.encode())
        crashpoints.reached("import.store_written")
        return done

    def _finish(
        self,
        job: Job,
        batch_no: int,
        done: BatchOutcome,
        state: dict[str, int],
        files: tuple[RowFile, RowFile],
        progress: Progress,
    ) -> None:
        """After the store holds a batch: its lines into the files, its progress into the
        metadata DB, its counts onto the job."""
        failures, warnings = files
        failures.append_text(done.columns, done.failure_lines)
        warnings.append_text(done.columns, done.warning_lines)
        crashpoints.reached("import.rows_appended")
        state["rows"] = max(state["rows"], done.last_row)
        state["imported"] += done.imported
        state["failed"] += done.failed
        state["warnings"] += done.warnings
        state["failures_bytes"] = failures.length
        state["warnings_bytes"] = warnings.length
        self.recorded.record_batch(
            job.id,
            BatchRecord(
                batch_no=batch_no, last_row=state["rows"], **{k: state[k] for k in _COUNTERS}
            ),
        )
        crashpoints.reached("import.progress_recorded")
        progress.report(state["rows"], state["imported"], state["failed"], state["warnings"])
        crashpoints.reached("import.reported")

    def _forget(self, job_id: int) -> None:
        """Every batch of the job is recorded: the store's markers are no longer needed."""
        with self.store.writer() as w:
            w.forget_batches(_job_prefix(job_id))

    def _add_columns(self, project_id: int, columns: list[Property], made: set[int]) -> None:
        """Add the store columns of a batch's properties that may not exist yet, a few per
        turn (:attr:`Capabilities.columns_per_transaction`: DuckDB's memory for a transaction
        that adds columns grows with the square of their number)."""
        todo = [p for p in columns if p.id not in made]
        step = self.store.capabilities.columns_per_transaction
        for i in range(0, len(todo), step):
            with self.store.writer() as w:
                w.ensure_project(project_id)
                w.ensure_columns(project_id, todo[i : i + step])
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
            objects=target.needs_objects,
        )
        checked = [0]  # how many columns were checked

        def step() -> Prepared | None:
            batch = next(batches, None)
            if batch is None:
                return None
            crashpoints.reached("import.read")
            if len(batch.columns) != checked[0]:
                target.check_columns(batch.columns)
                checked[0] = len(batch.columns)
            if not self.store.capabilities.text_nul:
                reason = NUL_REASON.format(self.store.capabilities.name)
                batch = without_text(batch, "\x00", reason)
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
