"""A real OpenCDP server in a subprocess, talked to over HTTP on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from opencdp.store import open_store

ADMIN_TOKEN = "adm_test_" + "x" * 24
# The analytic store of the live servers the tests start without naming one: "duckdb" (the
# embedded default) or "chdb" (the ClickHouse store on ClickHouse's engine in the server's
# process, a data path per server): ``OPENCDP_TEST_STORE=chdb make test-chdb``.
TEST_STORE = os.environ.get("OPENCDP_TEST_STORE", "duckdb")
if TEST_STORE not in ("duckdb", "chdb"):
    raise RuntimeError(f"OPENCDP_TEST_STORE={TEST_STORE!r}: duckdb or chdb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clients:
    """What a test asks of a server over HTTP, whichever way it runs (``url``)."""

    url: str

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        return httpx.request(
            method, self.url + "/admin/v1" + path, headers=headers, **{"timeout": 30, **kw}
        )

    def new_project(self, name: str, **fields: Any) -> dict[str, Any]:
        resp = self.admin("POST", "/projects", json={"name": name, **fields})
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def profile(self, project: str, **params: Any) -> httpx.Response:
        return self.admin("GET", f"/projects/{project}/profiles", params=params)


class LiveServer(Clients):
    def __init__(self, data_dir: Path, port: int | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN,
            "OPENCDP_FLUSH_INTERVAL": "0.05",
            **env,
        }
        if TEST_STORE == "chdb" and not self.env.get("OPENCDP_STORE_URL"):
            self.env["OPENCDP_STORE_URL"] = f"chdb://{data_dir / 'chdb'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = data_dir.parent / f"server-{self.port}.log"

    def start(self) -> LiveServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = self.output.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "opencdp",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output.read_text()[-2000:]}")
            try:
                # (503 is a server that is up but degraded, e.g. on a full disk.)
                if httpx.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not start within 60 s")

    @property
    def store_url(self) -> str:
        """The URL of the server's analytic store (as the server resolves it)."""
        return self.env.get("OPENCDP_STORE_URL") or f"duckdb:///{self.data_dir / 'store.duckdb'}"

    def stored_event_ids(self, project_id: int) -> set[str]:
        """The ids of the events the store holds for a project, read through the store
        interface (the server must be stopped: an embedded store has one process)."""
        assert self.proc is None or self.proc.poll() is not None, "stop the server first"
        if self.store_url.startswith("chdb:"):  # (chdb opens one data path per process)
            script = (
                "import json, sys; from tests.liveserver import LiveServer; "
                "print(json.dumps(sorted(LiveServer.read_event_ids(sys.argv[1], "
                "int(sys.argv[2])))))"
            )
            out = subprocess.run(
                [sys.executable, "-c", script, self.store_url, str(project_id)],
                check=True,
                capture_output=True,
                env=self.env,
            )
            return set(json.loads(out.stdout))
        return self.read_event_ids(self.store_url, project_id)

    @staticmethod
    def read_event_ids(url: str, project_id: int) -> set[str]:
        store = open_store(url)
        try:
            batches = store.export_events(
                project_id, [], datetime(1, 1, 2), datetime(9999, 12, 30), None, None
            )
            return {e for b in batches for e in b.column("event_id").to_pylist()}
        finally:
            store.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class InProcessServer(Clients):
    """A real OpenCDP server in this process (uvicorn on loopback, in a thread): for tests that
    reach into its runtime while it serves (move its clock, take its storage away)."""

    def __init__(self, data_dir: Path, log_level: str = "warning", **settings: Any) -> None:
        import uvicorn

        from opencdp.app import OpenCDP
        from opencdp.config import Settings
        from opencdp.runtime import Runtime

        self.settings = Settings(
            data_dir=data_dir, admin_token=ADMIN_TOKEN, flush_interval=0.05, **settings
        )
        self.runtime = Runtime.open(self.settings)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            OpenCDP(self.settings, self.runtime), host="127.0.0.1", port=port, log_level=log_level
        )
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30  # a start-up guard, not a performance limit
        while not self.uvicorn.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join()
