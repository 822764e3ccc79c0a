"""Bulk imports (part of ``make bench``).

1. A profiles CSV (fixed seed; e-mail and mobile as identity keys and three more properties)
   imported through the Marketo surface, from the upload to ``Complete``; in the same run the
   same file loaded by DuckDB's ``read_csv`` into a persistent table, as the baseline.
2. The same file imported into the WeChat cloud database's ``users`` collection (upsert, matched
   by every identity key) through the unmodified wechatpy client, from the upload to
   ``success``, against the same baseline; then once more into the same project, where every
   row matches a stored person.
3. A JSON-lines events file imported through the admin API into each Marketo round's project
   (its people known by mobile), against DuckDB's ``read_json`` of the same file into a
   persistent table, measured right before and right after each import.

Each case reports the server's peak RSS while it ran (``VmHWM``, reset before the case).

    python -m bench.imports [--rows 1000000] [--events-mb 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.ingest import ADMIN_TOKEN, OUT, Server, free_port

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CITIES = [f"City{i}" for i in range(400)]
PROFILE_KEYS = ("email", "mobile")  # the profiles file's identity columns
WECHAT_HOST = "https://api.weixin.qq.com"


def profiles_csv(path: Path, rows: int) -> None:
    rnd = random.Random(42)
    with path.open("w") as f:
        f.write("email,mobile,firstName,city,score\n")
        for i in range(rows):
            f.write(
                f"user{i}@example.com,1{i:010d},Name{rnd.randrange(100_000)},"
                f"{rnd.choice(CITIES)},{rnd.randrange(1000)}\n"
            )


def events_jsonl(path: Path, megabytes: int) -> int:
    rnd = random.Random(7)
    names = [f"event_{i}" for i in range(20)]
    limit, n = megabytes << 20, 0
    with path.open("w") as f:
        while f.tell() < limit:
            for _ in range(10_000):
                doc = {
                    "event": rnd.choice(names),
                    "event_id": f"ev{n}",
                    "create_time": f"2024-03-{rnd.randint(1, 28):02d} "
                    f"{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:00",
                    "mobile": f"1{rnd.randrange(200_000):010d}",
                    "amount": round(rnd.random() * 500, 2),
                    "channel": f"c{rnd.randrange(20)}",
                    "note": "x" * rnd.randrange(40),
                }
                f.write(json.dumps(doc) + "\n")
                n += 1
    return n


def duckdb_baseline(reader: str, work: Path) -> float:
    """Seconds DuckDB takes to load a file (``reader``, a table function call) into a
    persistent table of a fresh database file."""
    db = work / "baseline.duckdb"
    db.unlink(missing_ok=True)
    with duckdb.connect(str(db)) as con:
        started = time.perf_counter()
        con.execute(f"CREATE TABLE t AS SELECT * FROM {reader}")
        seconds = time.perf_counter() - started
    db.unlink(missing_ok=True)
    return seconds


def read_csv_baseline(path: Path, work: Path) -> float:
    return duckdb_baseline(f"read_csv('{path}')", work)


def read_json_baseline(path: Path, work: Path) -> float:
    return duckdb_baseline(f"read_json('{path}', format='newline_delimited')", work)


def wait(poll: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    deadline = time.monotonic() + 3 * 3600  # a hang guard, not a performance limit
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = poll()
        if st.get("status") in ("Complete", "Failed", "success", "fail") or st.get("state") in (
            "complete",
            "failed",
        ):
            return st
        time.sleep(0.05)
    sys.exit(f"an import job did not finish within 3 hours: {st}")


def new_project(url: str, name: str) -> dict[str, Any]:
    resp = httpx.post(url + "/admin/v1/projects", json={"name": name}, headers=AUTH)
    resp.raise_for_status()
    info: dict[str, Any] = resp.json()
    return info


def ensure_identity_keys(url: str, project: str, keys: tuple[str, ...]) -> list[str]:
    """Make ``keys`` identity keys of the project (besides any others it has) and return them
    all, checked: what an import matches by depends on them."""
    path = f"{url}/admin/v1/projects/{project}/identity-keys"
    have: list[str] = httpx.get(path, headers=AUTH).json()["keys"]
    missing = [k for k in keys if k not in have]
    if missing:
        httpx.put(path, json={"keys": [*have, *missing]}, headers=AUTH).raise_for_status()
        have = httpx.get(path, headers=AUTH).json()["keys"]
    assert set(keys) <= set(have), (project, have)
    return have


class Peaks:
    """The server's peak RSS case by case: ``VmHWM`` reset at the start of each case. Where the
    kernel refuses the reset, each figure is the peak of the run so far, and says so."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.run_peak = 0.0
        self.per_case = True
        self.cases: list[str] = []

    def start(self, case: str) -> None:
        self.run_peak = max(self.run_peak, self.srv.peak_rss_mb())
        self.per_case = self.srv.reset_peak_rss() and self.per_case
        self.cases.append(case)

    def end(self) -> tuple[float, str]:
        """(peak in MB, the words that say what it covers)."""
        peak = self.srv.peak_rss_mb()
        self.run_peak = max(self.run_peak, peak)
        if self.per_case:
            return peak, (
                f"server peak RSS during this case {peak:.0f} MB "
                f"(whole run so far {self.run_peak:.0f} MB)"
            )
        return peak, f"server peak RSS so far {peak:.0f} MB (cases: {', '.join(self.cases)})"


def marketo_import(url: str, name: str, csv_path: Path, rows: int) -> tuple[float, float]:
    """Import the file into a new project through the Marketo surface: (seconds from the start
    of the upload to ``Complete``, seconds of the upload)."""
    project = new_project(url, name)
    ensure_identity_keys(url, name, PROFILE_KEYS)
    http = httpx.Client(base_url=url, timeout=600)
    token = http.get(
        "/identity/oauth/token",
        params={
            "grant_type": "client_credentials",
            "client_id": project["client_id"],
            "client_secret": project["client_secret"],
        },
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    with csv_path.open("rb") as f:
        body = http.post(
            "/bulk/v1/leads.json",
            params={"format": "csv"},
            files={"file": ("profiles.csv", f, "text/csv")},
            headers=auth,
        ).json()
    uploaded = time.perf_counter() - started
    assert body.get("success"), body
    batch = body["result"][0]["batchId"]
    st = wait(
        lambda: http.get(f"/bulk/v1/leads/batch/{batch}.json", headers=auth).json()["result"][0]
    )
    seconds = time.perf_counter() - started
    assert st["status"] == "Complete" and st["numOfLeadsProcessed"] == rows, st
    return seconds, uploaded


class WeChat:
    """A project's WeChat cloud environment, driven through wechatpy as it is published: only
    its HTTP session is pointed at the local server, as a deployment would (the file upload goes
    to the URL the server hands out)."""

    def __init__(self, url: str, name: str) -> None:
        import requests
        from wechatpy import WeChatClient

        class ToServer(requests.adapters.HTTPAdapter):
            def send(self, request: Any, **kw: Any) -> Any:
                request.url = request.url.replace(WECHAT_HOST, url)
                return super().send(request, **kw)

        info = new_project(url, name)
        ensure_identity_keys(url, name, PROFILE_KEYS)
        self.stats = f"{url}/admin/v1/projects/{name}/stats"
        self.env = f"bench-{info['project_id']}"
        resp = httpx.patch(
            f"{url}/admin/v1/projects/{name}", json={"wechat_envs": [self.env]}, headers=AUTH
        )
        resp.raise_for_status()
        self.client = WeChatClient(info["client_id"], info["client_secret"], timeout=3600)
        self.client._http.mount(WECHAT_HOST, ToServer())

    def import_users(self, csv_path: Path, rows: int) -> tuple[float, float]:
        """Upload the file and import it into ``users`` (CSV, upsert): (seconds from the start
        of the upload to ``success``, seconds of the upload)."""
        cloud = self.client.cloud
        started = time.perf_counter()
        cloud.upload_file(self.env, str(csv_path))
        uploaded = time.perf_counter() - started
        job_id = cloud.db_import(self.env, "users", str(csv_path), 2, 2, stop_on_error=False)
        st = wait(lambda: dict(cloud.db_query_migrate_info(self.env, job_id)))
        seconds = time.perf_counter() - started
        assert (st["status"], st["record_success"], st["record_fail"]) == ("success", rows, 0), st
        # Each row is one person (its e-mail and mobile are unique in the file), once.
        profiles = httpx.get(self.stats, headers=AUTH).json()["profiles"]
        assert profiles == rows, (profiles, rows)
        return seconds, uploaded


def show_round(r: int, seconds: float, uploaded: float, baseline: float, name: str) -> None:
    print(
        f"  round {r + 1}: import {seconds:.2f} s (upload {uploaded:.2f} s), "
        f"{name} {baseline:.2f} s, ratio {baseline / seconds:.3f}",
        flush=True,
    )


def medians(rounds: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The medians of the rounds' (import, upload, baseline) seconds."""
    return (
        statistics.median(s for s, _, _ in rounds),
        statistics.median(u for _, u, _ in rounds),
        statistics.median(b for _, _, b in rounds),
    )


def run_marketo(
    srv: Server, peaks: Peaks, csv_path: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    peaks.start("Marketo")
    # Rounds alternate the import (into a fresh project each time) with the baseline, so that
    # both see the same machine; the medians are compared.
    rounds = [
        (marketo_import(srv.url, f"bench{r}", csv_path, args.rows), read_csv_baseline(
            csv_path, work))
        for r in range(args.rounds)
    ]  # fmt: skip
    for r, ((seconds, uploaded), baseline) in enumerate(rounds, 1):
        print(
            f"  round {r}: import {seconds:.2f} s (upload {uploaded:.2f} s), "
            f"read_csv {baseline:.2f} s, ratio {baseline / seconds:.2f}",
            flush=True,
        )
    seconds = statistics.median(s for (s, _), _ in rounds)
    uploaded = statistics.median(u for (_, u), _ in rounds)
    baseline = statistics.median(b for _, b in rounds)
    rss, rss_words = peaks.end()
    print(
        f"profiles CSV, {args.rows:,} rows ({args.csv_mb:.0f} MB) via Marketo, median of "
        f"{args.rounds}: {seconds:.2f} s (upload {uploaded:.2f} s), "
        f"{args.rows / seconds:,.0f} rows/s; DuckDB read_csv {baseline:.2f} s; "
        f"ratio {baseline / seconds:.2f}; {rss_words}",
        flush=True,
    )
    return {
        "rounds": args.rounds,
        "import_seconds": round(seconds, 2),
        "upload_seconds": round(uploaded, 2),
        "rows_per_s": round(args.rows / seconds),
        "read_csv_seconds": round(baseline, 2),
        "read_csv_rows_per_s": round(args.rows / baseline),
        "ratio": round(baseline / seconds, 3),
        "round_ratios": [round(b / s, 3) for (s, _), b in rounds],
        "rss_after_profiles_mb": round(rss),
    }


def run_wechat(
    srv: Server, peaks: Peaks, csv_path: Path, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    peaks.start("WeChat")
    rounds: list[tuple[float, float, float]] = []
    wx: WeChat | None = None
    for r in range(args.rounds):
        wx = WeChat(srv.url, f"wx{r}")
        seconds, uploaded = wx.import_users(csv_path, args.rows)
        baseline = read_csv_baseline(csv_path, work)
        rounds.append((seconds, uploaded, baseline))
        show_round(r, seconds, uploaded, baseline, "read_csv")
    assert wx is not None
    # The same file again into the last round's project: every row matches a stored person.
    re_seconds, re_uploaded = wx.import_users(csv_path, args.rows)
    re_baseline = read_csv_baseline(csv_path, work)
    print(
        f"  re-import into the same project: {re_seconds:.2f} s (upload {re_uploaded:.2f} s), "
        f"read_csv {re_baseline:.2f} s, ratio {re_baseline / re_seconds:.2f}",
        flush=True,
    )
    seconds, uploaded, baseline = medians(rounds)
    # The re-import is compared with the median of every baseline of this case.
    all_baselines = statistics.median([*(b for _, _, b in rounds), re_baseline])
    rss, rss_words = peaks.end()
    print(
        f"profiles CSV, {args.rows:,} rows ({args.csv_mb:.0f} MB) via WeChat db_import "
        f"(wechatpy, upsert), median of {args.rounds}: {seconds:.2f} s (upload {uploaded:.2f} s), "
        f"{args.rows / seconds:,.0f} rows/s; DuckDB read_csv {baseline:.2f} s; "
        f"ratio {baseline / seconds:.2f}; re-import (every row matching) {re_seconds:.2f} s, "
        f"{args.rows / re_seconds:,.0f} rows/s, ratio {all_baselines / re_seconds:.2f}; "
        f"{rss_words}",
        flush=True,
    )
    return {
        "wechat_import_seconds": round(seconds, 2),
        "wechat_upload_seconds": round(uploaded, 2),
        "wechat_rows_per_s": round(args.rows / seconds),
        "wechat_read_csv_seconds": round(baseline, 2),
        "wechat_ratio": round(baseline / seconds, 3),
        "wechat_round_ratios": [round(b / s, 3) for s, _, b in rounds],
        "wechat_reimport_seconds": round(re_seconds, 2),
        "wechat_reimport_upload_seconds": round(re_uploaded, 2),
        "wechat_reimport_rows_per_s": round(args.rows / re_seconds),
        "wechat_reimport_read_csv_seconds": round(all_baselines, 2),
        "wechat_reimport_ratio": round(all_baselines / re_seconds, 3),
        "wechat_peak_rss_mb": round(rss),
    }


def events_import(url: str, project: str, ev_path: Path, count: int) -> tuple[float, float]:
    """Upload the events file and import it (admin API): (seconds from the start of the
    upload to the end of the job, seconds of the upload)."""
    ensure_identity_keys(url, project, ("mobile",))
    started = time.perf_counter()
    with ev_path.open("rb") as f:
        job = httpx.post(
            f"{url}/admin/v1/projects/{project}/imports",
            data={"into": "events", "format": "jsonl"},
            files={"file": ("events.jsonl", f, "application/octet-stream")},
            headers=AUTH,
            timeout=3600,
        ).json()
    uploaded = time.perf_counter() - started
    job_url = f"{url}/admin/v1/projects/{project}/imports/{job['job_id']}"
    final = wait(lambda: dict(httpx.get(job_url, headers=AUTH).json()))
    seconds = time.perf_counter() - started
    assert final["state"] == "complete" and final["imported"] == count, final
    return seconds, uploaded


def run_events(srv: Server, peaks: Peaks, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    ev_path = work / "events.jsonl"
    count = events_jsonl(ev_path, args.events_mb)
    size_mb = ev_path.stat().st_size / 1e6
    peaks.start("events")
    # Each round imports the file into a project of the Marketo case (its people, known by
    # mobile), between two runs of the baseline.
    rounds: list[tuple[float, float, float]] = []
    for r in range(args.rounds):
        before = read_json_baseline(ev_path, work)
        seconds, uploaded = events_import(srv.url, f"bench{r}", ev_path, count)
        after = read_json_baseline(ev_path, work)
        baseline = statistics.median([before, after])
        rounds.append((seconds, uploaded, baseline))
        show_round(r, seconds, uploaded, baseline, "read_json")
    seconds, uploaded, baseline = medians(rounds)
    rss, rss_words = peaks.end()
    print(
        f"events JSON lines, {count:,} events ({size_mb:.0f} MB), median of {args.rounds}: "
        f"{seconds:.1f} s (upload {uploaded:.1f} s), {count / seconds:,.0f} events/s; "
        f"DuckDB read_json {baseline:.2f} s; ratio {baseline / seconds:.3f}; {rss_words}",
        flush=True,
    )
    return {
        "events": count,
        "events_mb": round(size_mb),
        "events_rounds": args.rounds,
        "events_seconds": round(seconds, 1),
        "events_upload_seconds": round(uploaded, 1),
        "events_per_s": round(count / seconds),
        "events_read_json_seconds": round(baseline, 2),
        "events_read_json_per_s": round(count / baseline),
        "events_ratio": round(baseline / seconds, 4),
        "events_round_ratios": [round(b / s, 3) for s, _, b in rounds],
        "events_peak_rss_mb": round(rss),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--events-mb", type=int, default=500, help="0: no events case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-wechat", action="store_true", help="no WeChat case")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    OUT.mkdir(exist_ok=True)
    work = OUT / "imports"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    csv_path = work / "profiles.csv"
    profiles_csv(csv_path, args.rows)
    args.csv_mb = csv_path.stat().st_size / 1e6

    port = free_port()
    srv = Server(
        [sys.executable, "-m", "opencdp", "serve", "--data-dir", str(work / "data"),
         "--port", str(port), "--log-level", "warning"],
        port,
        {"OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN,
         # The seed's 10 MB limit is a setting; the benchmark file is larger.
         "OPENCDP_MARKETO_MAX_FILE_BYTES": str(1 << 30)},
        OUT / "imports-server.log",
    )  # fmt: skip
    peaks = Peaks(srv)
    results: dict[str, Any] = {"rows": args.rows, "csv_mb": round(args.csv_mb, 1)}
    try:
        results.update(run_marketo(srv, peaks, csv_path, work, args))
        if not args.skip_wechat:
            results.update(run_wechat(srv, peaks, csv_path, work, args))
        if args.events_mb > 0:
            results.update(run_events(srv, peaks, work, args))
        results["server_peak_rss_mb"] = round(max(peaks.run_peak, srv.peak_rss_mb()))
        results["peak_rss_per_case"] = peaks.per_case
    finally:
        srv.stop()
    (OUT / "imports.json").write_text(json.dumps(results, indent=2))
    if os.environ.get("OPENCDP_BENCH_KEEP") != "1":
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
