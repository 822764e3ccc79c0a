"""Acknowledged records survive SIGKILL of the server; a restart replays what was not flushed."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.engines import new_database
from tests.liveserver import LiveServer


def _send_all(
    url: str, secret: str, start: int, count: int, stop: threading.Event | None = None
) -> list[str]:
    acked = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(start, start + count):
            if stop is not None and stop.is_set():
                break
            body = {
                "type": "event",
                "event": "purchase",
                "properties": {
                    "mobile": f"1{i % 97:010d}",
                    "event_id": f"ev-{i}",
                    "create_time": "2024-03-04 05:06:07",
                    "amount": i,
                },
            }
            try:
                r = http.post("/api/v1/api/import", params={"secret": secret}, json=body)
            except httpx.HTTPError:
                break  # the server is gone: this record was never acknowledged
            if r.status_code == 200 and r.json()["errcode"] == 0:
                acked.append(f"ev-{i}")
    return acked


def test_every_acknowledged_record_survives_sigkill(fresh_dir: Path) -> None:
    # A long flush interval keeps most records only in the durable log when the kill comes.
    srv = LiveServer(fresh_dir, OPENCDP_FLUSH_INTERVAL="30").start()
    info = srv.new_project("durable")
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(_send_all, srv.url, info["api_token"], n * 1000, 150) for n in range(8)
        ]
        acked = [eid for f in futures for eid in f.result()]
    assert len(acked) == 8 * 150
    stats = srv.admin("GET", "/projects/durable/stats").json()
    assert stats["pending"] > 0  # the kill really comes before the flush
    srv.kill()

    srv = LiveServer(fresh_dir, port=srv.port, OPENCDP_FLUSH_INTERVAL="30").start()
    stats = srv.admin("GET", "/projects/durable/stats").json()
    assert stats["events"] == len(acked)
    assert stats["pending"] == 0
    prof = srv.profile("durable", key="mobile", value=f"1{5:010d}").json()
    assert prof["event_count"] == len([a for a in acked if int(a[3:]) % 97 == 5])
    srv.stop()
    assert srv.stored_event_ids(info["project_id"]) == set(acked)


def test_kill_during_load_loses_no_acknowledged_record(fresh_dir: Path) -> None:
    srv = LiveServer(fresh_dir, OPENCDP_FLUSH_INTERVAL="0.1").start()
    info, acked = _kill_under_load(srv)
    srv = LiveServer(fresh_dir, port=srv.port).start()
    srv.stop()
    stored = srv.stored_event_ids(info["project_id"])
    assert set(acked) <= stored
    # Replays never duplicate: each event id is stored once (it is the primary key).
    assert len(stored) >= len(acked)


def _kill_under_load(srv: LiveServer) -> tuple[dict[str, Any], list[str]]:
    """Eight clients send to a new project of ``srv``, which is killed while they do: (the
    project, the event ids acknowledged)."""
    info = srv.new_project("midflight")
    stop = threading.Event()
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(_send_all, srv.url, info["api_token"], n * 100_000, 100_000, stop)
            for n in range(8)
        ]
        try:
            _wait_and_kill(srv)
        finally:
            stop.set()
        acked = [eid for f in futures for eid in f.result()]
    assert acked
    return info, acked


def _wait_and_kill(srv: LiveServer) -> None:
    while True:
        stats = srv.admin("GET", "/projects/midflight/stats").json()
        if stats["events"] + stats["pending"] >= 1500:
            break
        time.sleep(0.05)
    srv.kill()


def test_restart_after_clean_shutdown_keeps_everything(fresh_dir: Path) -> None:
    srv = LiveServer(fresh_dir).start()
    info = srv.new_project("clean")
    acked = _send_all(srv.url, info["api_token"], 0, 200)
    srv.stop()
    srv = LiveServer(fresh_dir, port=srv.port).start()
    assert srv.admin("GET", "/projects/clean/stats").json()["events"] == len(acked) == 200
    # The old secret still works after a restart.
    assert _send_all(srv.url, info["api_token"], 200, 1) == ["ev-200"]
    srv.stop()


def test_on_the_shared_queue_a_killed_servers_records_are_applied_by_the_next(
    tmp_path: Path,
) -> None:
    """A deployment on PostgreSQL acknowledges a record once it is in its queue there: a server
    killed with records acknowledged and not yet in the store loses none, and a server on
    another machine (a data directory of its own) applies them, each once."""
    database = new_database()
    shared = {
        "OPENCDP_META_URL": database,
        "OPENCDP_STORE_URL": database,
        "OPENCDP_SECRET_KEY": "cd" * 32,
    }
    srv = LiveServer(tmp_path / "one", OPENCDP_FLUSH_INTERVAL="30", **shared).start()
    info = srv.new_project("shared")
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(_send_all, srv.url, info["api_token"], n * 1000, 100) for n in range(8)
        ]
        acked = [eid for f in futures for eid in f.result()]
    assert len(acked) == 800
    assert srv.admin("GET", "/projects/shared/stats").json()["pending"] > 0
    srv.kill()
    assert not (tmp_path / "one" / "log").exists() or not any((tmp_path / "one" / "log").iterdir())

    other = LiveServer(tmp_path / "two", OPENCDP_FLUSH_INTERVAL="0.05", **shared).start()
    deadline = time.monotonic() + 120  # a hang guard, not a performance limit
    while (stats := other.admin("GET", "/projects/shared/stats").json())["pending"]:
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    assert stats["events"] == len(acked)
    other.stop()
    assert other.stored_event_ids(info["project_id"]) == set(acked)


def test_on_the_shared_queue_a_kill_during_load_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """kill -9 of a server on the shared queue while eight clients send: every record it
    acknowledged is stored, each once, by the server that follows (another data directory)."""
    database = new_database()
    shared = {
        "OPENCDP_META_URL": database,
        "OPENCDP_STORE_URL": database,
        "OPENCDP_SECRET_KEY": "cd" * 32,
        "OPENCDP_FLUSH_INTERVAL": "0.1",
    }
    info, acked = _kill_under_load(LiveServer(tmp_path / "one", **shared).start())
    other = LiveServer(tmp_path / "two", **shared).start()
    deadline = time.monotonic() + 120  # a hang guard, not a performance limit
    while other.admin("GET", "/projects/midflight/stats").json()["pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    other.stop()
    stored = other.stored_event_ids(info["project_id"])
    assert set(acked) <= stored  # none lost
    # Beyond them, at most the eight requests in flight at the kill (committed, not answered).
    assert len(stored) <= len(acked) + 8
