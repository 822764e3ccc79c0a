"""Exactly once, whatever the point of a crash: a process is made to exit (as ``kill -9``
would stop it) between each pair of consecutive steps of a flush and of an import batch
(:mod:`opencdp.crashpoints`), started again on the same data directory, and what the store, the
job and its files hold is checked to be what a run without a crash gives: every record and row
once, ``user_add`` sums and appended lists included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opencdp import crashpoints
from tests import crashdriver
from tests.liveserver import LiveServer

ROOT = Path(__file__).resolve().parents[2]


# The flush tests run on both kinds of store: DuckDB commits a flush's rows with its marker;
# ClickHouse (chdb) writes the rows first and the marker after them.
STORES = ["duckdb", "chdb"]


def drive(
    data: Path, step: str, point: str | None, store: str = "duckdb"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != crashpoints.ENV}
    env["OPENCDP_TEST_STORE"] = store
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p
    )
    if point is not None:
        env[crashpoints.ENV] = point
    return subprocess.run(
        [sys.executable, "-m", "tests.crashdriver", str(data), step],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def flushed_state(data: Path, store: str) -> dict[str, Any]:
    """What the store holds after a restart (read in a process of its own, as chdb opens one
    data path per process)."""
    done = drive(data, "state", None, store)
    assert done.returncode == 0, done.stderr
    people = json.loads(done.stdout.strip().splitlines()[-1])
    assert people.pop("covered")  # progress and the store's marker cover the whole log
    return dict(people)


EXPECTED = {
    "a": {
        "#account_id": "a",
        "n": crashdriver.ADDS,
        "l": [f"x{i}" for i in range(crashdriver.ADDS)],
        "events": crashdriver.ADDS // 2,
    },
    "b": {"#account_id": "b", "s": "b", "events": crashdriver.ADDS // 2},
}


@pytest.mark.parametrize("store", STORES)
def test_the_driver_without_a_crash(tmp_path: Path, store: str) -> None:
    done = drive(tmp_path / "data", "send", None, store)
    assert done.returncode == 0, done.stderr
    state = flushed_state(tmp_path / "data", store)
    assert {k: state[k] for k in "ab"} == EXPECTED
    assert state["counts"]["events"] == crashdriver.ADDS


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("point", crashpoints.FLUSH)
def test_a_flush_crashed_at_any_point_applies_every_record_once(
    tmp_path: Path, point: str, store: str
) -> None:
    data = tmp_path / "data"
    crashed = drive(data, "send", point, store)
    assert crashed.returncode == crashpoints.EXIT_CODE, crashed.stderr
    assert f"crash point {point}" in crashed.stderr
    # The start after it replays the log, and may crash at the same point again.
    again = drive(data, "recover", point, store)
    assert again.returncode in (0, crashpoints.EXIT_CODE), again.stderr
    state = flushed_state(data, store)
    assert {k: state[k] for k in "ab"} == EXPECTED
    assert state["counts"]["events"] == crashdriver.ADDS
    assert not (data / "dead-letter.jsonl").exists()


# ---- import batches ---------------------------------------------------------------------------
BIG = "x" * 70_000  # over the 64 KiB a string keeps: a warning
USERS = (
    "email,city,bio\n"
    + "".join(f"u{i}@x.com,c{i},{BIG if i in (2, 9) else 'b'}\n" for i in range(14))
    + "u3@x.com,again,b\n"  # repeats an earlier row: fails (insert-only)
    + "u20@x.com,c20,b,extra\n"  # a row that does not parse: fails
    + "u21@x.com,c21,b\n"
)
EVENTS = (
    "event,event_id,create_time,email,amount\n"
    + "".join(f"pay,ev{i},2024-01-01 00:00:00,u{i % 3}@x.com,{i}\n" for i in range(14))
    + "pay,ev4,2024-01-01 00:00:00,u0@x.com,99\n"  # repeats an event id: fails
    + "pay,ev30,not a time,u0@x.com,1\n"  # fails
    + "pay,ev31,2024-01-01 00:00:00,u1@x.com,31\n"
)
CASES = {"users": USERS, "events": EVENTS}


def _start_import(srv: LiveServer, project: str, into: str) -> int:
    r = srv.admin(
        "POST",
        f"/projects/{project}/imports",
        data={"into": into, "mode": "insert"},
        files={"file": ("data", CASES[into].encode(), "application/octet-stream")},
    )
    assert r.status_code == 202, r.text
    return int(r.json()["job_id"])


def _finished(srv: LiveServer, project: str, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 300  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        job = srv.admin("GET", f"/projects/{project}/imports/{job_id}").json()
        if job["state"] in ("complete", "failed"):
            return dict(job)
        time.sleep(0.05)
    raise AssertionError("the import never finished")


def _result(srv: LiveServer, project: str, job_id: int) -> dict[str, Any]:
    job = _finished(srv, project, job_id)
    base = f"/projects/{project}/imports/{job_id}"
    return {
        "job": {k: job[k] for k in ("state", "rows_read", "imported", "failed", "warnings")},
        "failures": srv.admin("GET", base + "/failures").text,
        "warnings": srv.admin("GET", base + "/warnings").text,
        "stats": {
            k: v
            for k, v in srv.admin("GET", f"/projects/{project}/stats").json().items()
            if k in ("events", "profiles")
        },
    }


@pytest.mark.parametrize("into", sorted(CASES))
@pytest.mark.parametrize("point", crashpoints.IMPORT_BATCH)
def test_an_import_batch_crashed_at_any_point_writes_every_row_once(
    tmp_path: Path, point: str, into: str
) -> None:
    data = tmp_path / "data"
    # A short job lease: the restarted server takes the crashed one's job over once it expires.
    small = {
        "OPENCDP_IMPORT_BATCH_ROWS": "4",
        "OPENCDP_JOB_LEASE_SECONDS": "5",
        "OPENCDP_JOB_HEARTBEAT_SECONDS": "1",
    }
    srv = LiveServer(data, **small, **{crashpoints.ENV: point}).start()
    srv.new_project("crash")
    job_id = _start_import(srv, "crash", into)
    assert srv.proc is not None
    assert srv.proc.wait(timeout=300) == crashpoints.EXIT_CODE  # the first batch got there
    srv = LiveServer(data, port=srv.port, **small).start()
    try:
        after = _result(srv, "crash", job_id)
        srv.new_project("calm")  # the same import, without a crash
        calm = _result(srv, "calm", _start_import(srv, "calm", into))
    finally:
        srv.stop()
    assert after == calm
    assert after["job"]["state"] == "complete" and after["job"]["failed"] == 2
    assert after["job"]["warnings"] == (2 if into == "users" else 0)
    assert after["failures"].count("\n") == 3  # the header and each failed row, once
