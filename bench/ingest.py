"""The single-record import under load, against a bare ASGI baseline (part of ``make bench``).

Both servers run under the same uvicorn settings on loopback, and wrk (the load generator)
drives both with the same script, so the ratio is comparable across runs on a noisy machine.
Then ThinkingData's batch endpoint (``/sync_server``, ``--td-batch`` records a request, as the
SDKs send them) is driven on the same server. Afterwards the OpenCDP server is stopped and
every acknowledged record is counted in the store.

    python -m bench.ingest [--duration 10] [--connections 32] [--rounds 3] [--td-batch 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
ADMIN_TOKEN = "adm_bench_" + "b" * 24
IMPORT_PATH = "/api/v1/api/import"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess on loopback; stops with SIGTERM (OpenCDP then flushes everything)."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"server exited at start:\n{log.read_text()[-2000:]}")
            try:
                httpx.get(self.url + "/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        sys.exit("server did not start within 60 s")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak_rss(self) -> bool:
        """Reset the process's peak RSS (``VmHWM``) to its current RSS, so that the next
        ``peak_rss_mb`` covers what ran since (Linux: ``5`` written to ``clear_refs``). False if
        the kernel refused: the peak then still covers the whole run."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            sys.exit("server did not stop within 120 s")


def wrk(
    url: str, args: argparse.Namespace, prefix: str, duration: float, td: bool = False
) -> dict[str, Any]:
    script, script_args = (
        ("sync_server.lua", [args.appid, prefix, str(args.td_batch)])
        if td
        else ("import.lua", [args.path, prefix])
    )
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{round(duration)}s",
        "--latency",
        "-s",
        str(HERE / script),
        url,
        "--",
        *script_args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    seconds = result["duration_us"] / 1e6
    result["acked_per_s"] = result["acked"] / seconds
    result["requests_per_s"] = result["requests"] / seconds
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--td-batch", type=int, default=20, help="records per /sync_server call")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian package 'wrk'); `make bench` installs it")

    OUT.mkdir(exist_ok=True)
    data_dir = OUT / "ingest-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    common = ["--log-level", "warning"]
    bare_port, cdp_port = free_port(), free_port()
    bare = Server(
        [sys.executable, "-m", "uvicorn", "bench.bare:app", "--port", str(bare_port),
         "--no-access-log", "--loop", "auto", "--http", "auto", *common],
        bare_port, {"PYTHONPATH": str(HERE.parent)}, OUT / "bare.log",
    )  # fmt: skip
    cdp = Server(
        [sys.executable, "-m", "opencdp", "serve", "--data-dir", str(data_dir),
         "--port", str(cdp_port), *common],
        cdp_port, {"OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN}, OUT / "opencdp.log",
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = httpx.post(cdp.url + "/admin/v1/projects", json={"name": "bench"}, headers=auth)
    resp.raise_for_status()
    project = resp.json()
    args.path = f"{IMPORT_PATH}?secret={project['api_token']}"
    resp = httpx.post(
        cdp.url + "/admin/v1/projects/bench/thinkingdata/app-ids", json={}, headers=auth
    )
    resp.raise_for_status()
    args.appid = resp.json()["app_id"]

    rounds: list[dict[str, Any]] = []
    td_rounds: list[dict[str, Any]] = []
    acked_total = 0
    try:
        # Warm both servers up (imports, caches, the catalog learning the properties).
        wrk(bare.url, args, "warm", 2)
        acked_total += wrk(cdp.url, args, "warm", 2)["acked"]
        for n in range(args.rounds):
            base = wrk(bare.url, args, f"base{n}", args.duration)
            run = wrk(cdp.url, args, f"r{n}", args.duration)
            acked_total += run["acked"]
            rounds.append({"baseline": base, "opencdp": run})
            print(
                f"round {n + 1}: opencdp {run['acked_per_s']:,.0f} acked/s "
                f"(p50 {run['p50_us'] / 1000:.1f} ms, p99 {run['p99_us'] / 1000:.1f} ms, "
                f"{run['failed']} failed, {run['socket_errors']} socket errors); "
                f"bare ASGI {base['requests_per_s']:,.0f} req/s; "
                f"ratio {run['acked_per_s'] / base['requests_per_s']:.2f}"
            )
        acked_total += wrk(cdp.url, args, "tdwarm", 2, td=True)["acked"]
        for n in range(args.rounds):
            run = wrk(cdp.url, args, f"td{n}", args.duration, td=True)
            acked_total += run["acked"]
            td_rounds.append(run)
            print(
                f"round {n + 1}: /sync_server {run['acked_per_s']:,.0f} acked records/s in "
                f"{run['requests_per_s']:,.0f} req/s of {args.td_batch} "
                f"(p50 {run['p50_us'] / 1000:.1f} ms, p99 {run['p99_us'] / 1000:.1f} ms, "
                f"{run['failed']} failed, {run['socket_errors']} socket errors)"
            )
        rss = cdp.peak_rss_mb()
    finally:
        bare.stop()
        cdp.stop()

    with duckdb.connect(str(data_dir / "store.duckdb"), read_only=True) as db:
        row = db.execute(
            f"SELECT count(*), count(DISTINCT event_id) FROM p{int(project['project_id'])}_events"
        ).fetchone()
    assert row is not None
    stored, distinct = int(row[0]), int(row[1])
    ok = stored == distinct and stored >= acked_total

    best = max(rounds, key=lambda r: r["opencdp"]["acked_per_s"])
    summary = {
        "command": "make bench",
        "connections": args.connections,
        "wrk_threads": args.threads,
        "duration_s": args.duration,
        "rounds": rounds,
        "median_acked_per_s": statistics.median(r["opencdp"]["acked_per_s"] for r in rounds),
        "median_ratio": statistics.median(
            r["opencdp"]["acked_per_s"] / r["baseline"]["requests_per_s"] for r in rounds
        ),
        "best_p99_ms": best["opencdp"]["p99_us"] / 1000,
        "sync_server": {
            "records_per_request": args.td_batch,
            "rounds": td_rounds,
            "median_acked_records_per_s": statistics.median(r["acked_per_s"] for r in td_rounds),
        },
        "server_peak_rss_mb": rss,
        "acked_total": acked_total,
        "stored_events": stored,
        "every_acked_record_stored": ok,
    }
    (OUT / "ingest.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nsingle-record import, {args.connections} connections, {args.duration:.0f} s x "
        f"{args.rounds}: median {summary['median_acked_per_s']:,.0f} durable records/s, "
        f"median ratio to bare ASGI {summary['median_ratio']:.2f}, "
        f"server peak RSS {rss:.0f} MB"
    )
    print(
        f"ThinkingData /sync_server, {args.td_batch} records a request: median "
        f"{summary['sync_server']['median_acked_records_per_s']:,.0f} durable records/s"
    )
    print(
        f"acknowledged {acked_total:,}, stored {stored:,} (distinct {distinct:,}): "
        f"{'every acknowledged record is stored' if ok else 'RECORDS MISSING'}"
    )
    print(f"details: {OUT / 'ingest.json'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
