"""Running a user's SQL segment where nothing but that project's data is visible.

The query (already checked by :mod:`opencdp.segments.sqlcheck`) runs in a process of its own
(:mod:`opencdp.segments.sandbox_child`), started for this one query in a private directory:

- it sees two tables, ``users`` and ``events``, holding only this project's rows and only
  the columns the query names, written there by the store as Arrow files (the store's
  database, the metadata DB and every other project stay out of its reach);
- its DuckDB has file access and extensions disabled and its configuration locked;
- its memory is capped by the operating system (``RLIMIT_DATA``) and by DuckDB's own limit,
  and it is killed when its time budget runs out.

Property names are the column names there (Arrow field names, never SQL text written by us).
A property whose name differs only in case from a built-in column or an older property is
left out: DuckDB would not tell them apart.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa

from opencdp.catalog.model import Property, Schema
from opencdp.segments import sandbox_child
from opencdp.segments.sqlcheck import EVENT_COLUMNS, USER_COLUMNS, SqlSegment
from opencdp.store.base import SEGMENT_ROWS, Budget, OverBudget, QueryError, Store

log = logging.getLogger(__name__)

Mode = Literal["check", "count", "members"]
# The engine a SQL segment runs on, whatever store holds the data (the store hands it Arrow).
DIALECT = "duckdb"
BUILTINS = {"users": USER_COLUMNS, "events": EVENT_COLUMNS}
TABLE_OF = {"users": "user", "events": "event"}


class Sandbox:
    def __init__(self, store: Store, folder: Path, threads: int = 2) -> None:
        self.store = store
        self.folder = folder
        self.threads = threads

    def clean(self) -> None:
        """Remove what runs cut short by a crash left behind."""
        if self.folder.is_dir():
            for leftover in self.folder.glob("q-*"):
                shutil.rmtree(leftover, ignore_errors=True)

    def run(
        self, project_id: int, schema: Schema, seg: SqlSegment, mode: Mode, budget: Budget
    ) -> pa.Table | int:
        """``members``: the rows (:data:`SEGMENT_ROWS`); ``count``: how many; ``check``: run
        against empty tables, so that a query that does not bind is refused at once.

        Raises :class:`QueryError` (the query's own fault) or :class:`OverBudget`."""
        deadline = time.monotonic() + budget.seconds
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = self.folder / f"q-{secrets.token_hex(8)}"
        work.mkdir(mode=0o700)
        try:
            tables = {}
            for logical in sorted({"users", *seg.reads}):
                path = work / f"{logical}.arrow"
                left = Budget(max(deadline - time.monotonic(), 0.0), budget.memory_bytes)
                self.store.dump_table(
                    project_id,
                    logical,
                    _columns(schema, logical, seg.names),
                    path,
                    left,
                    empty=mode == "check",
                )
                tables[logical] = str(path)
            (work / "spill").mkdir(mode=0o700)
            spec = {
                "query": _wrap(seg),
                "mode": "members" if mode == "members" else "count",
                "tables": tables,
                "output": str(work / "result.arrow"),
                "spill": str(work / "spill"),
                "memory_bytes": budget.memory_bytes,
                "threads": self.threads,
            }
            (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
            rows = self._child(work, deadline)
            if mode != "members":
                return rows
            with pa.OSFile(spec["output"], "rb") as f:
                return pa.ipc.open_file(f).read_all().cast(SEGMENT_ROWS)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _child(self, work: Path, deadline: float) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-I", sandbox_child.__file__, str(work / "spec.json")],
            cwd=work,
            env={"PATH": os.defpath, "HOME": str(work), "LANG": "C.UTF-8"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a kill reaches all of it
        )
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise OverBudget("time") from None
        answer = _answer(out)
        if answer is None:
            # No answer: killed by the kernel or crashed, which is what running out of the
            # memory it was allowed looks like from outside.
            log.warning(
                "segment sandbox ended with status %s: %s",
                proc.returncode,
                err.decode("utf-8", "replace")[-500:],
            )
            raise OverBudget("memory")
        if not answer.get("ok"):
            if answer.get("kind") == "memory":
                raise OverBudget("memory")
            raise QueryError(str(answer.get("message", "the query failed")))
        return int(str(answer["rows"]))


def _answer(out: bytes) -> dict[str, object] | None:
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return None


def _wrap(seg: SqlSegment) -> str:
    """The user's query as the first column(s) of one row per member: ids cast to BIGINT,
    only users that exist, one tag value per user (the least, when the query gives several)."""
    cols = "c0, c1" if seg.columns == 2 else "c0"
    tag = "CAST(q.c1 AS VARCHAR)" if seg.columns == 2 else "CAST(NULL AS VARCHAR)"
    return (
        "SELECT m.user_id, min(m.tag_value) AS tag_value FROM ("
        f"SELECT TRY_CAST(q.c0 AS BIGINT) AS user_id, {tag} AS tag_value "
        f"FROM ({seg.sql}) AS q({cols})) AS m "
        "WHERE m.user_id IN (SELECT user_id FROM users) GROUP BY m.user_id"
    )


def _columns(schema: Schema, logical: str, names: frozenset[str] | None) -> list[tuple[str, str]]:
    """``(stored column, name in the sandbox)`` of what the query may read from ``logical``:
    the built-in columns and properties it names (all, for a star); always ``user_id``."""
    builtins = BUILTINS[logical]
    taken = set(builtins)
    out = [(c, c) for c in builtins if names is None or c in names or c == "user_id"]
    props: list[Property] = sorted(schema.table(TABLE_OF[logical]).values(), key=lambda p: p.id)
    for prop in props:
        key = prop.name.lower()
        if key in taken:
            continue
        taken.add(key)
        if names is None or key in names:
            out.append((prop.column, prop.name))
    return out
