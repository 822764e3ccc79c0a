"""What keeps one import from exhausting the server, over HTTP: files whose shape passes the
limits are refused before any row is read; a project at its property cap refuses a new property
on every path; a long import shares the store's writer with the ingest flusher; an import keeps
the identity keys it was submitted with."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.liveserver import LiveServer
from tests.surfaces.test_marketo import Mkto
from tests.surfaces.test_wechat import Wx

_n = iter(range(1, 10_000))
WIDE = 5001  # columns of the hostile file: 39 KB of CSV


def wide_csv(columns: int = WIDE) -> str:
    header = ",".join(["email"] + [f"c{i}" for i in range(1, columns)])
    return header + "\n" + ",".join(["a@x.com"] + ["1"] * (columns - 1)) + "\n"


def start(server: LiveServer, project: str, content: str, **params: Any) -> httpx.Response:
    return server.admin(
        "POST",
        f"/projects/{project}/imports",
        data={k: str(v) for k, v in params.items()},
        files={"file": ("data", content.encode(), "application/octet-stream")},
    )


def job(server: LiveServer, project: str, job_id: int) -> dict[str, Any]:
    return dict(server.admin("GET", f"/projects/{project}/imports/{job_id}").json())


def wait(server: LiveServer, project: str, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 600  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        state = job(server, project, job_id)
        if state["state"] in ("complete", "failed"):
            return state
        time.sleep(0.05)
    raise AssertionError("import never finished")


def wait_running(server: LiveServer, project: str, job_id: int) -> dict[str, Any]:
    """Wait until the job has committed a batch (it is then mid-file)."""
    deadline = time.monotonic() + 600  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        state = job(server, project, job_id)
        if state["rows_read"] > 0 or state["state"] in ("complete", "failed"):
            return state
        time.sleep(0.01)
    raise AssertionError("import never started")


def names(server: LiveServer, project: str) -> set[str]:
    props = server.admin("GET", f"/projects/{project}/properties").json()
    return {p["name"] for p in props}


def add_property(server: LiveServer, project: str, name: str) -> httpx.Response:
    return server.admin(
        "POST",
        f"/projects/{project}/properties",
        json={"table": "user", "name": name, "type": "string"},
    )


def profiles_csv(rows: int, prefix: str) -> str:
    return "email,mobile,city\n" + "".join(
        f"{prefix}{i}@x.com,{prefix}{i},C{i % 7}\n" for i in range(rows)
    )


# ---- the shape of a file ---------------------------------------------------------------------


def test_a_5001_column_file_is_refused_before_any_row_is_read(server: LiveServer) -> None:
    name = f"wide{next(_n)}"
    mk = Mkto(server, server.new_project(name))
    body = mk.upload(wide_csv())
    assert body["success"] is False, body
    (error,) = body["errors"]
    assert error["code"] == "1003"
    assert "5001 columns, at most 1000 are allowed" in error["message"], error
    # Refused at submission: no job, no property, no profile.
    assert server.admin("GET", f"/projects/{name}/imports").json() == []
    assert names(server, name) == {"mobile", "email"}
    assert server.profile(name, key="email", value="a@x.com").status_code == 404


def test_wide_files_are_refused_by_every_surface(server: LiveServer) -> None:
    name = f"wide{next(_n)}"
    info = server.new_project(name)
    r = start(server, name, wide_csv())
    assert r.status_code == 413, r.text
    assert r.json()["error"]["field"] == "file"
    assert "5001 columns, at most 1000" in r.json()["error"]["message"]
    wx = Wx(server, info)
    wx.upload("wide.csv", wide_csv().encode())
    answer = wx.start("users", "wide.csv")
    assert answer["errcode"] == 40097 and "5001 columns" in answer["errmsg"], answer
    # A column name longer than a property name may be.
    r = start(server, name, f"email,{'n' * 129}\na@x.com,1\n")
    assert r.status_code == 413 and "at most 128 are allowed" in r.json()["error"]["message"]
    # JSON has no header: its keys are counted as they appear, and the job fails once they
    # pass the limit.
    lines = "".join(
        json.dumps({"email": f"j{i}@x.com", **{f"k{i}_{j}": 1 for j in range(300)}}) + "\n"
        for i in range(5)
    )
    r = start(server, name, lines, format="jsonl")
    assert r.status_code == 202, r.text
    done = wait(server, name, r.json()["job_id"])
    assert done["state"] == "failed", done
    assert "more than 1000 distinct keys" in done["message"], done
    assert names(server, name) == {"mobile", "email"}


# ---- the property cap -------------------------------------------------------------------------

CAP = 6


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer(
        tmp_path_factory.mktemp("capped") / "data",
        OPENCDP_MAX_PROJECT_PROPERTIES=str(CAP),
        OPENCDP_IMPORT_BATCH_ROWS="20",
        OPENCDP_IMPORT_CONCURRENCY="1",
    ).start()
    yield srv
    srv.stop()


def test_a_project_at_its_property_cap_refuses_a_new_property_on_every_path(
    capped: LiveServer,
) -> None:
    name = f"cap{next(_n)}"
    info = capped.new_project(name)  # mobile, email
    for prop in ("a", "b"):
        assert add_property(capped, name, prop).status_code == 201
    http = httpx.Client(base_url=capped.url, timeout=30)

    def record(body: dict[str, Any]) -> dict[str, Any]:
        r = http.post("/api/v1/api/import", params={"secret": info["api_token"]}, json=body)
        return dict(r.json())

    def event(event_id: str, **props: Any) -> dict[str, Any]:
        props.update(mobile="1", event_id=event_id, create_time="2024-01-01 00:00:00")
        return record({"type": "event", "event": "e", "properties": props})

    assert record({"type": "user", "properties": {"mobile": "1", "c": "x"}})["errcode"] == 0
    assert event("e1", d=1)["errcode"] == 0
    assert len(names(capped, name)) == CAP
    limit = f"limit of {CAP} properties per project"

    # The single-record API, for users and events.
    answer = record({"type": "user", "properties": {"mobile": "1", "new1": "x"}})
    assert answer["errcode"] == 20003 and limit in answer["errmsg"], answer
    answer = event("e2", new2=1)
    assert answer["errcode"] == 20003 and limit in answer["errmsg"], answer
    # The admin API: a property, and an identity key that is not a property yet.
    r = add_property(capped, name, "new3")
    assert r.status_code == 413 and limit in r.json()["error"]["message"], r.text
    r = capped.admin(
        "PUT", f"/projects/{name}/identity-keys", json={"keys": ["mobile", "email", "new4"]}
    )
    assert r.status_code == 413 and limit in r.json()["error"]["message"], r.text
    # Bulk imports: refused at submission where the header tells (CSV), by the job otherwise
    # (JSON).
    may_take = f"may take only 0 more (at most {CAP} properties per project)"
    body = Mkto(capped, info).upload("email,new5\na@x.com,1\n")
    assert body["success"] is False and body["errors"][0]["code"] == "1003", body
    assert may_take in body["errors"][0]["message"], body
    r = start(capped, name, "email,new6\na@x.com,1\n")
    assert r.status_code == 413 and may_take in r.json()["error"]["message"], r.text
    wx = Wx(capped, info)
    wx.upload("u.csv", b"mobile,new7\n1,1\n")
    answer = wx.start("users", "u.csv")
    assert answer["errcode"] == 40097 and may_take in answer["errmsg"], answer
    r = start(capped, name, '{"email": "a@x.com", "new8": 1}\n', format="jsonl")
    done = wait(capped, name, r.json()["job_id"])
    assert (done["state"], done["imported"]) == ("failed", 0), done
    assert may_take in done["message"], done

    # Known properties still take values, and the catalog never passed the cap.
    assert record({"type": "user", "properties": {"mobile": "1", "a": "y"}})["errcode"] == 0
    assert len(names(capped, name)) == CAP
    assert capped.profile(name, key="mobile", value="1").json()["properties"]["a"] == "y"


def test_a_queued_import_whose_header_no_longer_fits_fails_without_reading_rows(
    capped: LiveServer,
) -> None:
    name = f"cap{next(_n)}"
    capped.new_project(name)  # mobile, email
    ahead = start(capped, name, profiles_csv(2000, "ahead")).json()["job_id"]  # adds city
    assert wait_running(capped, name, ahead)["state"] == "running"
    queued = start(capped, name, "email,x1,x2\nq@x.com,1,2\n")  # runs after `ahead`
    assert queued.status_code == 202, queued.text  # 2 new properties, room for 3
    for prop in ("p1", "p2"):
        assert add_property(capped, name, prop).status_code == 201
    done = wait(capped, name, queued.json()["job_id"])
    assert done["state"] == "failed", done
    assert "2 columns would be new properties, but the project may take only 1" in done["message"]
    assert (done["rows_read"], done["imported"], done["failed"]) == (0, 0, 0)
    assert capped.profile(name, key="email", value="q@x.com").status_code == 404
    assert {"x1", "x2"}.isdisjoint(names(capped, name))
    assert wait(capped, name, ahead)["state"] == "complete"


# ---- a long import and the other writers ------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Imports in batches of 20 rows, one at a time per project: a file of a few thousand
    rows is a long import."""
    srv = LiveServer(
        tmp_path_factory.mktemp("small") / "data",
        OPENCDP_IMPORT_BATCH_ROWS="20",
        OPENCDP_IMPORT_CONCURRENCY="1",
    ).start()
    yield srv
    srv.stop()


def test_a_record_acknowledged_during_a_long_import_is_visible_before_it_ends(
    small: LiveServer,
) -> None:
    name = f"fair{next(_n)}"
    info = small.new_project(name)
    job_id = start(small, name, profiles_csv(2000, "f")).json()["job_id"]
    assert wait_running(small, name, job_id)["state"] == "running"
    r = httpx.post(
        small.url + "/api/v1/api/import",
        params={"secret": info["api_token"]},
        json={"type": "user", "properties": {"mobile": "single", "city": "S"}},
    )
    assert r.json()["errcode"] == 0
    # A lookup waits for the flusher to apply what was acknowledged; the flusher needs the
    # store's writer, which the import takes batch after batch.
    while (found := small.profile(name, key="mobile", value="single")).status_code != 200:
        assert job(small, name, job_id)["state"] == "running", "the import ended first"
    assert found.json()["properties"]["city"] == "S"
    during = job(small, name, job_id)
    assert during["state"] == "running", during  # visible before the import ended
    assert during["rows_read"] < 2000
    assert wait(small, name, job_id)["imported"] == 2000


# ---- identity keys changed under an import ----------------------------------------------------


def test_an_import_keeps_the_identity_keys_it_was_submitted_with(small: LiveServer) -> None:
    name = f"keys{next(_n)}"
    small.new_project(name)  # keys: mobile, email
    running = start(small, name, profiles_csv(1000, "r")).json()["job_id"]  # lookup: email
    queued = start(small, name, profiles_csv(100, "q")).json()["job_id"]
    assert wait_running(small, name, running)["state"] == "running"
    r = small.admin("PUT", f"/projects/{name}/identity-keys", json={"keys": ["mobile"]})
    assert r.status_code == 200, r.text
    for job_id, rows in ((running, 1000), (queued, 100)):
        done = wait(small, name, job_id)
        counts = (done["state"], done["imported"], done["failed"], done["warnings"])
        assert counts == ("complete", rows, 0, 0), done
    # Every row was matched and linked by the keys of its submission: e-mail and mobile.
    small.admin("PUT", f"/projects/{name}/identity-keys", json={"keys": ["mobile", "email"]})
    for prefix, rows in (("r", 1000), ("q", 100)):
        last = rows - 1
        by_mail = small.profile(name, key="email", value=f"{prefix}{last}@x.com").json()
        by_mobile = small.profile(name, key="mobile", value=f"{prefix}{last}").json()
        assert by_mail["user_id"] == by_mobile["user_id"]
        assert by_mail["properties"]["city"] == f"C{last % 7}"
    assert small.admin("GET", f"/projects/{name}/stats").json()["profiles"] == 1100


def test_an_import_whose_identity_key_is_deleted_fails_naming_it(small: LiveServer) -> None:
    name = f"keys{next(_n)}"
    small.new_project(name)
    job_id = start(small, name, profiles_csv(20_000, "d")).json()["job_id"]
    assert wait_running(small, name, job_id)["state"] == "running"
    r = small.admin("PUT", f"/projects/{name}/identity-keys", json={"keys": ["mobile"]})
    assert r.status_code == 200, r.text
    r = small.admin("DELETE", f"/projects/{name}/properties/user/email")
    assert r.status_code == 204, r.text
    done = wait(small, name, job_id)
    assert done["state"] == "failed", done
    assert done["message"].startswith(
        "email: this identity key was deleted after the import was submitted"
    ), done
    # What was committed before is reported, and is there.
    assert 0 < done["imported"] == done["rows_read"] < 20_000, done
    assert small.admin("GET", f"/projects/{name}/stats").json()["profiles"] == done["imported"]


def test_a_job_resumed_after_a_restart_keeps_its_keys(tmp_path: Path) -> None:
    # A short lease: the restarted server takes the killed one's job over once it expires.
    lease = {"OPENCDP_JOB_LEASE_SECONDS": "10", "OPENCDP_JOB_HEARTBEAT_SECONDS": "2"}
    srv = LiveServer(tmp_path / "data", OPENCDP_IMPORT_BATCH_ROWS="20", **lease).start()
    try:
        srv.new_project("k")
        job_id = start(srv, "k", profiles_csv(1000, "s")).json()["job_id"]
        assert wait_running(srv, "k", job_id)["state"] == "running"
        r = srv.admin("PUT", "/projects/k/identity-keys", json={"keys": ["mobile"]})
        assert r.status_code == 200, r.text
        srv.kill()
        srv = LiveServer(tmp_path / "data", port=srv.port, **lease).start()
        done = wait(srv, "k", job_id)
        assert (done["state"], done["imported"], done["failed"]) == ("complete", 1000, 0), done
    finally:
        srv.stop()
