"""Faults injected as for real: a full disk (a small tmpfs), a damaged ingest log, a store on a
full disk failing mid-commit, missing files of a deployment. Nothing acknowledged is lost,
nothing refused is stored, the client is told, health and metrics say why, and the server
recovers when the fault is gone, without a restart."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.engines import PostgresCluster
from tests.liveserver import TEST_STORE, LiveServer
from tests.surfaces.test_marketo import Mkto

# The store's own file (or folder) in a server's data directory.
STORE = "chdb" if TEST_STORE == "chdb" else "store.duckdb"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs: a disk that fills up for real (mounting needs root, as in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk, leaving about ``leave`` bytes."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                if free <= leave:
                    break
                f.write(b"\0" * min(1 << 20, max(4096, free - leave)))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def send(srv: LiveServer, secret: str, i: int, **extra: Any) -> httpx.Response:
    body = {
        "type": "event",
        "event": "pay",
        "properties": {
            "mobile": f"1{i % 50:010d}",
            "event_id": f"ev-{i}",
            "create_time": "2024-03-04 05:06:07",
            "amount": i,
            **extra,
        },
    }
    return httpx.post(
        srv.url + "/api/v1/api/import", params={"secret": secret}, json=body, timeout=30
    )


def acked(resp: httpx.Response) -> bool:
    return resp.status_code == 200 and resp.json()["errcode"] == 0


def health(srv: LiveServer) -> dict[str, Any]:
    return dict(srv.admin("GET", "/health").json())


def wait_for(check: Any, what: str) -> None:
    """Poll ``check`` until it holds (a hang guard only: the suite never asserts a time)."""
    deadline = time.monotonic() + 120
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def degraded_gauge(srv: LiveServer, component: str) -> float:
    for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'opencdp_degraded{{component="{component}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no opencdp_degraded gauge for {component}")


def stored_events(srv: LiveServer, project: str) -> int:
    return int(srv.admin("GET", f"/projects/{project}/stats").json()["events"])


def test_a_full_disk_refuses_records_and_recovers_without_a_restart(small_disk: Path) -> None:
    srv = LiveServer(small_disk / "data").start()
    try:
        info = srv.new_project("full")
        secret = info["api_token"]
        ok = [i for i in range(20) if acked(send(srv, secret, i))]
        assert len(ok) == 20
        marketo = Mkto(srv, info)
        filler = fill(small_disk)

        # Full: once the log's last page is used up, records are refused, saying why. (A
        # record may still fit in a page the store's failed commits gave back: acknowledged
        # then, and so stored in the end.)
        refused = 0
        for i in range(20, 120):
            resp = send(srv, secret, i)
            if acked(resp):
                ok.append(i)
                continue
            refused += 1
            assert resp.status_code == 503, resp.text
            body = resp.json()
            assert body["errcode"] == 10000
            assert "No space left on device" in body["errmsg"], body
            assert "nothing was stored" in body["errmsg"], body
        # (ClickHouse's failed inserts give back the scratch space they held: records fit
        # more often, and each acknowledged one is stored in the end all the same.)
        assert refused > (50 if TEST_STORE == "duckdb" else 0)
        # A record naming a new property (a metadata DB write) is refused the same way.
        resp = send(srv, secret, 30, brand_new_property="x")
        assert resp.status_code == 503 and "nothing was stored" in resp.json()["errmsg"]

        # Uploads are refused as well, each in its surface's own envelope.
        body = marketo.upload("email,firstName\na@example.com,A\n")
        assert body["success"] is False and body["errors"][0]["code"] == "611", body
        assert "nothing was stored" in body["errors"][0]["message"], body
        resp = srv.admin(
            "POST", "/projects/full/imports", data={"into": "users"},
            files={"file": ("users.csv", b"mobile,city\n1,Paris\n", "text/csv")},
        )  # fmt: skip
        assert resp.status_code == 503, resp.text
        assert "nothing was stored" in resp.json()["error"]["message"]

        assert httpx.get(srv.url + "/health", timeout=10).status_code == 503
        h = health(srv)
        assert h["status"] == "degraded"
        assert "No space left on device" in h["problems"]["ingest_log"]
        assert degraded_gauge(srv, "ingest_log") == 1.0

        # Space returns: records are taken again, without a restart.
        filler.unlink()
        for i in range(140, 150):
            if acked(send(srv, secret, i)):
                ok.append(i)
        assert set(range(140, 150)) <= set(ok)
        wait_for(lambda: health(srv)["status"] == "ok", "health back to ok")
        assert degraded_gauge(srv, "ingest_log") == 0.0
        wait_for(lambda: stored_events(srv, "full") == len(ok), "every acknowledged record")
        assert health(srv)["dead_letters"] == 0
    finally:
        srv.stop()
    stored = srv.stored_event_ids(info["project_id"])
    assert stored == {f"ev-{i}" for i in ok}  # none refused, none lost


def test_a_store_on_a_full_disk_holds_records_back_and_loses_none(
    small_disk: Path, fresh_dir: Path
) -> None:
    """The log has space, the store has none: records are acknowledged (they are durable in the
    log), the store's commits fail, and nothing is dead-lettered or skipped."""
    store = small_disk / "store.duckdb"
    srv = LiveServer(fresh_dir, OPENCDP_STORE_URL=f"duckdb:///{store}").start()
    try:
        info = srv.new_project("held")
        secret = info["api_token"]
        assert all(acked(send(srv, secret, i)) for i in range(10))
        wait_for(lambda: stored_events(srv, "held") == 10, "first records stored")
        filler = fill(small_disk)
        assert all(acked(send(srv, secret, i)) for i in range(10, 400))
        wait_for(lambda: "store" in health(srv)["problems"], "the store reported degraded")
        h = health(srv)
        assert "cannot write to the store" in h["problems"]["store"]
        assert h["dead_letters"] == 0 and h["flush_stalls"] >= 1
        assert degraded_gauge(srv, "store") == 1.0
        assert stored_events(srv, "held") < 400

        filler.unlink()
        wait_for(lambda: stored_events(srv, "held") == 400, "the backlog applied")
        wait_for(lambda: health(srv)["status"] == "ok", "health back to ok")
        assert health(srv)["dead_letters"] == 0
        assert not (fresh_dir / "dead-letter.jsonl").exists()
    finally:
        srv.stop()


def test_a_damaged_log_frame_is_set_aside_and_the_records_after_it_replayed(
    fresh_dir: Path,
) -> None:
    srv = LiveServer(fresh_dir, OPENCDP_FLUSH_INTERVAL="60").start()
    info = srv.new_project("damaged")
    secret = info["api_token"]
    assert all(acked(send(srv, secret, i)) for i in range(50))
    assert srv.admin("GET", "/projects/damaged/stats").json()["pending"] == 50
    srv.kill()  # all 50 are in the log only

    (segment,) = sorted((fresh_dir / "log").glob("*.log"))
    data = bytearray(segment.read_bytes())
    at = data.index(b'"ev-20"')
    data[at + 2] ^= 0x20  # one flipped bit in the middle of the log
    segment.write_bytes(bytes(data))

    srv = LiveServer(fresh_dir, port=srv.port).start()
    try:
        wait_for(lambda: stored_events(srv, "damaged") == 49, "the other 49 replayed")
        h = health(srv)
        assert h["status"] == "degraded"
        assert "set aside" in h["problems"]["ingest_log_damage"]
        assert degraded_gauge(srv, "ingest_log_damage") == 1.0
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 503
        (copy,) = (fresh_dir / "quarantine").glob("*.bad")
        assert b'"eV-20"' in copy.read_bytes()  # the damaged frame, as found
        # New records still go through; once the copy is moved away, health is ok again.
        assert acked(send(srv, secret, 100))
        shutil.move(copy, fresh_dir / "examined.bad")
        assert health(srv)["status"] == "ok"
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("remove", "says"),
    [
        ("meta.db", "meta.db is missing"),
        ("secret.key", "secret.key is missing"),
        (STORE, "holds nothing of this deployment"),
    ],
)
def test_a_deployment_missing_a_file_refuses_to_start_and_changes_nothing(
    fresh_dir: Path, remove: str, says: str
) -> None:
    srv = LiveServer(fresh_dir, OPENCDP_FLUSH_INTERVAL="60").start()
    info = srv.new_project("whole")
    assert all(acked(send(srv, info["api_token"], i)) for i in range(5))
    srv.kill()  # the five are in the log only
    for path in fresh_dir.glob(remove + "*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = _data_files(fresh_dir)
    with pytest.raises(RuntimeError, match="server exited") as err:
        LiveServer(fresh_dir, port=srv.port).start()
    assert says in str(err.value)
    assert _data_files(fresh_dir) == before  # nothing created, nothing dropped


def _data_files(data: Path) -> dict[str, object]:
    """The files that hold data, byte for byte; the metadata DB by what it holds (SQLite
    folds its WAL into the file whenever it is opened)."""
    out: dict[str, object] = {
        str(p.relative_to(data)): p.read_bytes()
        for p in data.rglob("*")
        if p.is_file() and not p.name.startswith("meta.db") and not p.name.endswith(".wal")
    }
    if (data / "meta.db").exists():
        with sqlite3.connect(data / "meta.db") as db:
            out["meta.db"] = [
                db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                for table in ("projects", "credentials", "properties", "deployment")
            ]
    return out


def test_a_metadata_db_outage_refuses_records_and_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    """A deployment on PostgreSQL acknowledges a record once its queue there holds it: while
    PostgreSQL is away, records are refused (and say so), health says why, nothing hangs; once
    it is back, records are taken again and every one acknowledged is stored once. (PostgreSQL
    itself crashes here, so it runs durable: fsync and synchronous commit on.)"""
    cluster = PostgresCluster(durable=True)
    srv = LiveServer(
        tmp_path / "data",
        OPENCDP_META_URL=cluster.new_database(),
        OPENCDP_SECRET_KEY="ef" * 32,
    ).start()
    try:
        info = srv.new_project("outage")
        secret = info["api_token"]
        ok = [i for i in range(10) if acked(send(srv, secret, i))]
        assert len(ok) == 10
        cluster.stop()
        for i in range(10, 20):
            resp = send(srv, secret, i)
            assert resp.status_code == 503, resp.text
            assert resp.json()["errcode"] == 10000
            assert "nothing was stored" in resp.json()["errmsg"], resp.text
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 503
        assert "ingest_log" in health(srv)["problems"]  # (the admin API answers all the same)
        wait_for(lambda: "ingest_queue" in health(srv)["problems"], "the queue reported away")
        assert degraded_gauge(srv, "ingest_queue") == 1.0

        cluster.start()
        wait_for(lambda: acked(send(srv, secret, 20)), "a record taken again")
        ok.append(20)
        ok += [i for i in range(21, 30) if acked(send(srv, secret, i))]
        assert ok == [*range(10), *range(20, 30)]
        wait_for(lambda: health(srv)["status"] == "ok", "health back to ok")
        assert degraded_gauge(srv, "ingest_queue") == 0.0
        wait_for(lambda: stored_events(srv, "outage") == len(ok), "every acknowledged record")
    finally:
        srv.stop()
        cluster.remove()
    assert srv.stored_event_ids(info["project_id"]) == {f"ev-{i}" for i in ok}
