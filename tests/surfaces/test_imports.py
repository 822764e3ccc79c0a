"""The import core through the admin API: events backfill, modes, stop_on_error, restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.liveserver import LiveServer

_n = iter(range(1, 10_000))


def start(server: LiveServer, project: str, content: bytes | str, **params: Any) -> dict[str, Any]:
    data = content.encode() if isinstance(content, str) else content
    r = server.admin(
        "POST",
        f"/projects/{project}/imports",
        data={k: str(v) for k, v in params.items()},
        files={"file": ("data", data, "application/octet-stream")},
    )
    assert r.status_code == 202, r.text
    return dict(r.json())


def wait(server: LiveServer, project: str, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 300  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        job = server.admin("GET", f"/projects/{project}/imports/{job_id}").json()
        if job["state"] in ("complete", "failed"):
            return dict(job)
        time.sleep(0.05)
    raise AssertionError("import never finished")


def run(server: LiveServer, project: str, content: bytes | str, **params: Any) -> dict[str, Any]:
    return wait(server, project, start(server, project, content, **params)["job_id"])


def failures(server: LiveServer, project: str, job_id: int) -> str:
    return str(server.admin("GET", f"/projects/{project}/imports/{job_id}/failures").text)


@pytest.fixture
def proj(server: LiveServer) -> str:
    name = f"imp{next(_n)}"
    server.new_project(name)
    return name


def stats(server: LiveServer, project: str) -> dict[str, Any]:
    return dict(server.admin("GET", f"/projects/{project}/stats").json())


def test_events_backfill_from_csv_resolves_identities(server: LiveServer, proj: str) -> None:
    csv = (
        "event,event_id,create_time,mobile,email,amount\n"
        "order,e1,2024-01-02 03:04:05,13800000000,,10.5\n"
        "order,e2,2024-01-03 03:04:05,,a@x.com,7\n"
        "order,e3,2024-01-04 03:04:05,13800000000,a@x.com,1\n"
        "order,e4,not a time,13800000000,,1\n"
        "order,,2024-01-04 03:04:05,13800000000,,1\n"
    )
    job = run(server, proj, csv, into="events")
    assert job["state"] == "complete", job
    assert (job["imported"], job["failed"]) == (3, 2)
    text = failures(server, proj, job["job_id"])
    assert "row 4: create_time" in text and "row 5: event_id" in text
    prof = server.profile(proj, key="email", value="a@x.com").json()
    assert prof["event_count"] == 3  # e3 linked the mobile and the e-mail: one person
    assert stats(server, proj)["events"] == 3


def test_events_from_json_lines_and_array(server: LiveServer, proj: str) -> None:
    lines = [
        {"event": "view", "event_id": "j1", "create_time": "2024-05-01 00:00:00",
         "mobile": "1", "tags": ["a", "b"], "vip": True},
        {"event": "view", "event_id": "j2", "create_time": 1714521600, "mobile": "2"},
    ]  # fmt: skip
    body = "\n".join(json.dumps(x) for x in lines) + "\n{broken\n"
    job = run(server, proj, body, into="events", format="jsonl")
    assert (job["imported"], job["failed"]) == (2, 1), job
    job = run(
        server,
        proj,
        json.dumps([{**lines[0], "event_id": "j3"}, {**lines[1], "event_id": "j4"}]),
        into="events",
        format="json",
    )
    assert (job["imported"], job["failed"]) == (2, 0), job
    prof = server.profile(proj, key="mobile", value="1").json()
    assert prof["event_count"] == 2
    latest = {e["event_id"]: e for e in prof["latest_events"]}
    assert latest["j1"]["properties"]["tags"] == ["a", "b"]
    assert latest["j1"]["properties"]["vip"] is True


def test_event_ids_upsert_or_fail_insert_only(server: LiveServer, proj: str) -> None:
    head = "event,event_id,create_time,mobile,amount\n"
    run(server, proj, head + "pay,x1,2024-01-01 00:00:00,1,1\n", into="events")
    job = run(server, proj, head + "pay,x1,2024-01-01 00:00:00,1,2\n", into="events")
    assert job["imported"] == 1
    assert stats(server, proj)["events"] == 1
    job = run(
        server,
        proj,
        head + "pay,x1,2024-01-01 00:00:00,1,3\npay,x2,2024-01-01 00:00:00,1,4\n"
        "pay,x2,2024-01-01 00:00:00,1,5\n",
        into="events",
        mode="insert",
    )
    assert (job["imported"], job["failed"]) == (1, 2)
    text = failures(server, proj, job["job_id"])
    assert "already exists" in text and "repeats an earlier row" in text
    prof = server.profile(proj, key="mobile", value="1").json()
    amounts = {e["event_id"]: e["properties"]["amount"] for e in prof["latest_events"]}
    assert amounts == {"x1": 2.0, "x2": 4.0}


def test_profiles_insert_only(server: LiveServer, proj: str) -> None:
    run(server, proj, "email,city\na@x.com,A\n")
    job = run(server, proj, "email,city\na@x.com,B\nb@x.com,C\nb@x.com,D\n", mode="insert")
    assert (job["imported"], job["failed"]) == (1, 2)
    assert server.profile(proj, key="email", value="a@x.com").json()["properties"]["city"] == "A"
    assert server.profile(proj, key="email", value="b@x.com").json()["properties"]["city"] == "C"


def test_stop_on_error_writes_nothing(server: LiveServer, proj: str) -> None:
    run(server, proj, "email,score\nz@x.com,1\n")
    job = run(server, proj, "email,score\nok@x.com,2\nbad@x.com,oops\n", stop_on_error="true")
    assert job["state"] == "failed"
    assert "row 2" in job["message"] and "score" in job["message"]
    assert server.profile(proj, key="email", value="ok@x.com").status_code == 404
    assert "bad@x.com,oops" in failures(server, proj, job["job_id"])
    job = run(server, proj, "email,score\nok@x.com,2\n", stop_on_error="true")
    assert job["state"] == "complete" and job["imported"] == 1


def test_bad_requests(server: LiveServer, proj: str) -> None:
    def post(**params: str) -> Any:
        return server.admin(
            "POST",
            f"/projects/{proj}/imports",
            data=params,
            files={"file": ("f", b"email\n", "text/csv")},
        )

    assert post(into="nowhere").status_code == 400
    assert post(format="xlsx").json()["error"]["field"] == "format"
    assert post(mode="merge").json()["error"]["field"] == "mode"
    assert post(lookup_field="city").json()["error"]["field"] == "lookup_field"
    assert server.admin("GET", f"/projects/{proj}/imports/999999").status_code == 404


def test_an_import_killed_midway_completes_exactly_once(tmp_path: Path) -> None:
    rows = 60_000
    csv = "event,event_id,create_time,mobile,amount\n" + "".join(
        f"pay,k{i},2024-01-01 00:00:00,{i % 5000},{i}\n" for i in range(rows)
    )
    srv = LiveServer(tmp_path / "data", OPENCDP_IMPORT_BATCH_ROWS="2000").start()
    srv.new_project("crash")
    job_id = start(srv, "crash", csv, into="events", mode="insert")["job_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = srv.admin("GET", f"/projects/crash/imports/{job_id}").json()
        if job["rows_read"] > 0:
            break
        time.sleep(0.01)
    assert job["state"] == "running", job  # the kill comes mid-import
    srv.kill()
    srv = LiveServer(tmp_path / "data", port=srv.port).start()
    try:
        job = wait(srv, "crash", job_id)
        # Insert-only: a row written twice would have failed as "already exists".
        assert (job["state"], job["imported"], job["failed"]) == ("complete", rows, 0), job
        assert stats(srv, "crash")["events"] == rows
    finally:
        srv.stop()
    assert srv.stored_event_ids(2) == {f"k{i}" for i in range(rows)}


@pytest.mark.parametrize(
    ("content", "fmt", "imported", "failed"),
    [
        (b"email,city\na@x.com,A\nb@x.com,B,extra\nc@x.com\nd@x.com,D\n", "csv", 2, 2),
        (b'email,city\na@x.com,A\nb@x.com,"never closed\n', "csv", 1, 1),
        (b"email,city\na@x.com,A\n\xff\xfe\x00garbage\x81,\x9f\nd@x.com,D\n", "csv", 2, 1),
        (b'email\tcity\na@x.com\t"Paris\tFR"\nb@x.com\t"multi\nline"\n', "tsv", 2, 0),
        (b'{"email": "a@x.com"}\n{"email": \n{"email": "c@x.com"}\n', "jsonl", 2, 1),
        (b'[{"email": "a@x.com"}, 7, {"email": "c@x.com"}]', "json", 2, 1),
    ],
)
def test_bad_rows_fail_alone(
    server: LiveServer, proj: str, content: bytes, fmt: str, imported: int, failed: int
) -> None:
    job = run(server, proj, content, format=fmt)
    assert (job["state"], job["imported"], job["failed"]) == ("complete", imported, failed), job
    assert server.profile(proj, key="email", value="a@x.com").status_code == 200


def test_a_5mb_field_is_truncated_with_a_warning(server: LiveServer, proj: str) -> None:
    big = "x" * (5 << 20)
    job = run(server, proj, f"email,bio\nbig@x.com,{big}\nsmall@x.com,short\n")
    assert (job["imported"], job["failed"], job["warnings"]) == (2, 0, 1), job
    warnings = server.admin("GET", f"/projects/{proj}/imports/{job['job_id']}/warnings").text
    assert "bio: truncated to 65536 bytes" in warnings
    prof = server.profile(proj, key="email", value="big@x.com").json()
    assert len(prof["properties"]["bio"]) == 65536


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "file is empty"),
        (b"email,Email\na@x.com,b@x.com\n", "duplicate column"),
        (b"\x00\x01\x02\xff" * 1000, ""),
    ],
)
def test_whole_file_problems(server: LiveServer, proj: str, content: bytes, expect: str) -> None:
    job = run(server, proj, content)
    assert job["imported"] == 0
    if expect:
        assert job["state"] == "failed" and expect in job["message"], job


def test_header_only_and_unknown_charset(server: LiveServer, proj: str) -> None:
    job = run(server, proj, "email,city\n")
    assert (job["state"], job["imported"], job["failed"]) == ("complete", 0, 0)
    job = run(server, proj, "email\na@x.com\n", charset="klingon")
    assert job["state"] == "failed" and "charset" in job["message"]
