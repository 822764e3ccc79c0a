"""The sandbox process that runs one SQL segment query (see :mod:`opencdp.segments.sandbox`).

Started as ``python -I sandbox_child.py <spec.json>`` in a private directory; it imports only
the standard library, DuckDB and pyarrow. Before anything else it caps its own memory
(``RLIMIT_DATA``) and file sizes; then it opens an in-memory DuckDB with file access and
extensions disabled, registers the Arrow files it was given as ``users`` and ``events``,
locks the configuration, runs the query and writes the result as an Arrow file. It answers
one JSON line on stdout: ``{"ok": true, "rows": n}`` or ``{"ok": false, "kind", "message"}``.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any

# What the interpreter, DuckDB and pyarrow need beyond the query's own memory budget.
RUNTIME_BYTES = 384 << 20


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _answer(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    memory = int(spec["memory_bytes"])
    _limit(resource.RLIMIT_DATA, memory + RUNTIME_BYTES)
    _limit(resource.RLIMIT_FSIZE, 2 * memory)  # spill files and the result
    _limit(resource.RLIMIT_CORE, 0)

    import duckdb
    import pyarrow as pa

    try:
        con = duckdb.connect(
            ":memory:",
            config={
                "threads": int(spec["threads"]),
                "memory_limit": f"{memory}B",
                # (DuckDB applies these in order, and takes the spill directory only after
                # file access is switched off.)
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
                "temp_directory": spec["spill"],
                "max_temp_directory_size": f"{memory}B",
            },
        )
        for name, path in spec["tables"].items():
            con.register(name, pa.ipc.open_file(pa.memory_map(path)).read_all())
        con.execute("SET lock_configuration = true")
        if spec["mode"] == "count":
            row = con.execute(f"SELECT count(*) FROM ({spec['query']})").fetchone()
            _answer(ok=True, rows=int(row[0]) if row else 0)
            return 0
        reader = con.sql(spec["query"]).to_arrow_reader(65_536)
        rows = 0
        with pa.ipc.new_file(spec["output"], reader.schema) as out:
            for batch in reader:
                out.write_batch(batch)
                rows += batch.num_rows
        _answer(ok=True, rows=rows)
        return 0
    except (duckdb.OutOfMemoryException, MemoryError) as exc:
        _answer(ok=False, kind="memory", message=str(exc).splitlines()[0][:300])
    except duckdb.Error as exc:
        _answer(ok=False, kind="query", message=str(exc).splitlines()[0][:300])
    return 2


if __name__ == "__main__":
    sys.exit(main())
