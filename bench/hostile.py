"""Hostile imports: the server's peak RSS on files shaped to take memory (not part of
``make bench``; see BENCHMARKS.md, "Hostile imports").

Each case runs on a server of its own (fresh data dir), through the admin API unless said:

- ``long``: 10,000 rows of 64 KiB values (655 MB), into profiles;
- ``long-events``: the same as events;
- ``long-bad`` / ``long-events-bad``: the same with every row failing (nothing is stored, so
  the figure is the import's own memory, not the store's);
- ``one-record``: one 300 MB record of delimiters, then a good one;
- ``wide``: the 5,001-column, 39 KB CSV through the Marketo API, with the column and property
  limits raised so that it is imported (as submitted, it is refused at the upload).

    python -m bench.hostile [--cases long,long-bad,...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.ingest import ADMIN_TOKEN, OUT, Server, free_port

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CASES = ("long", "long-events", "long-bad", "long-events-bad", "one-record", "wide")
VALUE = "y" * (64 << 10)


def write(case: str, path: Path) -> str:
    """Write the case's file; return what it is imported into."""
    with path.open("w") as f:
        if case in ("long", "long-bad"):
            f.write("email,bio\n")
            for i in range(10_000):
                f.write(f"{'' if case == 'long-bad' else f'u{i}@x.com'},{VALUE}\n")
            return "users"
        if case in ("long-events", "long-events-bad"):
            f.write("event,event_id,create_time,mobile,note\n")
            when = "never" if case == "long-events-bad" else "2024-01-01 00:00:00"
            for i in range(10_000):
                f.write(f"e,id{i},{when},{i},{VALUE}\n")
            return "events"
        if case == "one-record":
            f.write("email,bio\n")
            for _ in range(300):
                f.write("," * (1 << 20))
            f.write("\nb@x.com,c\n")
            return "users"
        f.write(",".join(["email"] + [f"c{i}" for i in range(1, 5001)]) + "\n")
        f.write(",".join(["a@x.com"] + ["1"] * 5000) + "\n")
        return "marketo"


def wait(url: str, headers: dict[str, str], done: Any) -> dict[str, Any]:
    while True:
        state: dict[str, Any] = httpx.get(url, headers=headers, timeout=60).json()
        if done(state):
            return state
        time.sleep(0.2)


def run(case: str, work: Path) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "file.csv"
    into = write(case, path)
    env = {"OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN}
    if case == "wide":
        env.update(OPENCDP_MAX_PROPERTIES="6000", OPENCDP_MAX_PROJECT_PROPERTIES="10000")
    port = free_port()
    srv = Server(
        [sys.executable, "-m", "opencdp", "serve", "--data-dir", str(work / "data"),
         "--port", str(port), "--log-level", "warning"],
        port, env, OUT / f"hostile-{case}.log",
    )  # fmt: skip
    try:
        info = httpx.post(
            srv.url + "/admin/v1/projects", json={"name": "h"}, headers=AUTH, timeout=60
        ).json()
        started = time.perf_counter()
        if into == "marketo":
            token = httpx.get(
                srv.url + "/identity/oauth/token",
                params={"grant_type": "client_credentials", "client_id": info["client_id"],
                        "client_secret": info["client_secret"]},
            ).json()["access_token"]  # fmt: skip
            bearer = {"Authorization": f"Bearer {token}"}
            with path.open("rb") as f:
                body = httpx.post(
                    srv.url + "/bulk/v1/leads.json",
                    files={"file": ("f.csv", f, "text/csv")},
                    headers=bearer,
                    timeout=600,
                ).json()
            batch = body["result"][0]["batchId"]
            final = wait(
                f"{srv.url}/bulk/v1/leads/batch/{batch}.json",
                bearer,
                lambda s: s["result"][0]["status"] in ("Complete", "Failed"),
            )["result"][0]
            outcome = f"{final['status']}, {final['numOfLeadsProcessed']} imported"
        else:
            with path.open("rb") as f:
                job = httpx.post(
                    srv.url + "/admin/v1/projects/h/imports",
                    data={"into": into},
                    files={"file": ("f.csv", f, "text/csv")},
                    headers=AUTH,
                    timeout=600,
                ).json()
            final = wait(
                f"{srv.url}/admin/v1/projects/h/imports/{job['job_id']}",
                AUTH,
                lambda s: s["state"] in ("complete", "failed"),
            )
            outcome = f"{final['state']}, {final['imported']} imported, {final['failed']} failed"
        seconds = time.perf_counter() - started
        return {
            "case": case,
            "file_mb": round(path.stat().st_size / 1e6),
            "outcome": outcome,
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(srv.peak_rss_mb()),
        }
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    for case in args.cases.split(","):
        if case not in CASES:
            sys.exit(f"unknown case {case!r}; one of {', '.join(CASES)}")
        r = run(case, OUT / "hostile")
        print(
            f"{r['case']}: {r['file_mb']} MB, {r['outcome']}, {r['seconds']} s, "
            f"server peak RSS {r['peak_rss_mb']} MB",
            flush=True,
        )
    shutil.rmtree(OUT / "hostile", ignore_errors=True)


if __name__ == "__main__":
    main()
