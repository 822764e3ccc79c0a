"""Values checked at the edge, and every error in the surface's own envelope.

Regression tests, over HTTP on a live server: numbers the engines cannot hold (ids over 64 bits,
zero or negative ids, page numbers SQLite cannot offset), dates Python cannot move to UTC, and
values of the wrong shape are refused where they arrive, with each vendor's parameter code and
a message naming the field, instead of reaching SQLite or DuckDB (an internal error) or a job
(which failed later with "internal error"). Then, per surface, an unknown path, a wrong method
and a malformed body, each answered in the vendor's envelope.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import pytest

from tests.clients import marketo_token, wechat_token
from tests.conftest import Project
from tests.liveserver import ADMIN_TOKEN, LiveServer
from tests.test_cli import failed, run

HUGE = str(10**23)
CSV = {"file": ("leads.csv", b"email\na@example.com\n", "text/csv")}


# ---- clients ------------------------------------------------------------------------------
class Vendors:
    """One project's clients of every surface."""

    def __init__(self, project: Project) -> None:
        self.p = project
        self.info = project.info
        self.http = project.http
        self.server = project.server

    def marketo(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {marketo_token(self.http, self.info)}"}

    def wechat(self) -> str:
        return wechat_token(self.http, self.info)

    def td(self, method: str, path: str, body: Any = None, **query: Any) -> dict[str, Any]:
        if not (isinstance(body, dict) and "projectId" in body):
            query.setdefault("projectId", self.info["project_id"])  # required on every call
        r = self.http.request(
            method, path, params={"token": self.info["api_token"], **query}, json=body
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def gio_fields(self, tm: str) -> dict[str, str]:
        key = self.info["key"]
        message = f"POST\n/auth/token\nproject={key}&ai={key}&tm={tm}"
        auth = hmac.new(
            self.info["client_secret"].encode(), message.encode(), hashlib.sha256
        ).hexdigest()
        return {"project": key, "ai": key, "tm": tm, "auth": auth}

    def gio(self) -> dict[str, str]:
        r = self.http.post(
            "/auth/token",
            data=self.gio_fields(str(int(time.time() * 1000))),
            headers={"X-Client-Id": self.info["client_id"]},
        )
        assert r.status_code == 200, r.text
        return {"X-Client-Id": self.info["client_id"], "Authorization": r.json()["code"]}

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.server.admin(method, f"/projects/{self.p.name}{path}", **kw)


@pytest.fixture
def v(project: Project) -> Vendors:
    return Vendors(project)


def marketo_error(r: httpx.Response) -> dict[str, str]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is False and body["requestId"], body
    return dict(body["errors"][0])


def admin_error(r: httpx.Response, status: int, code: str, field: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert field in error["message"]
    return str(error["message"])


# ---- ids over 64 bits, and ids that are not positive --------------------------------------
def test_thinkingdata_ids_out_of_range(v: Vendors) -> None:
    for cluster_id in (HUGE, "0", "-1", "²"):
        r = v.td("GET", "/open/user-cluster-detail", clusterId=cluster_id)
        assert r["return_code"] == -1003 and "clusterId" in r["return_message"], r
        r = v.td("POST", "/open/user-cluster-refresh", clusterId=cluster_id)
        assert r["return_code"] == -1003 and "clusterId" in r["return_message"], r
    r = v.td("GET", "/open/user-cluster-detail", clusterId="1", projectId=HUGE)
    assert r["return_code"] == -1003 and "projectId" in r["return_message"], r
    r = v.td("POST", "/open/user-cluster-list", {"projectId": [v.info["project_id"]]})
    assert r["return_code"] == -1003 and "projectId" in r["return_message"], r


@pytest.mark.parametrize(
    ("pager", "field"),
    [
        ("1", "pagerHeader"),  # a string where an object belongs
        ([1, 10], "pagerHeader"),
        ({"pageNum": 2**62, "pageSize": 1000}, "pagerHeader.pageNum"),  # offset past 64 bits
        ({"pageNum": 10**23}, "pagerHeader.pageNum"),
        ({"pageNum": 1, "pageSize": 2**63}, "pagerHeader.pageSize"),
        ({"pageNum": True}, "pagerHeader.pageNum"),
    ],
)
def test_thinkingdata_pager_of_the_wrong_shape(v: Vendors, pager: Any, field: str) -> None:
    r = v.td("POST", "/open/user-cluster-list", {"pagerHeader": pager})
    assert r["return_code"] == -1003 and f"{field}:" in r["return_message"], r


def test_thinkingdata_a_good_pager_still_pages(v: Vendors) -> None:
    r = v.td("POST", "/open/user-cluster-list", {"pagerHeader": {"pageNum": "2", "pageSize": 5}})
    assert r["return_code"] == 0, r
    assert r["data"]["pagerResult"] == {"pageNum": 2, "pageSize": 5, "totalNum": 0}


def test_marketo_ids_out_of_range(v: Vendors) -> None:
    auth = v.marketo()
    for batch in (HUGE, "0", "²"):
        for path in (
            f"/bulk/v1/leads/batch/{batch}.json",
            f"/bulk/v1/leads/batch/{batch}/failures.json",
            f"/bulk/v1/customobjects/car_c/import/{batch}/status.json",
            f"/bulk/v1/program/members/import/{batch}/status.json",
        ):
            error = marketo_error(v.http.get(path, headers=auth))
            assert error["code"] == "1003" and "batchId" in error["message"], (path, error)
    for list_id in (HUGE, str(2**64), "0", "-3", "²"):
        r = v.http.post("/bulk/v1/leads.json", params={"listId": list_id}, files=CSV, headers=auth)
        error = marketo_error(r)
        assert error["code"] == "1003" and "listId" in error["message"], error
    for program in (HUGE, "0"):
        r = v.http.post(
            f"/bulk/v1/program/{program}/members/import.json",
            params={"programMemberStatus": "Member"},
            files=CSV,
            headers=auth,
        )
        error = marketo_error(r)
        assert error["code"] == "1003" and "programId" in error["message"], error
    # Nothing was queued: no job can fail later.
    assert v.admin("GET", "/imports").json() == []


def test_wechat_job_ids_out_of_range(v: Vendors) -> None:
    token = v.wechat()
    for job_id in (2**64 - 1, 10**23, 0, -5, "1", True, [1]):
        r = v.http.post(
            "/tcb/databasemigratequeryinfo",
            params={"access_token": token},
            json={"env": v.info["key"], "job_id": job_id},
        ).json()
        if job_id == "1":
            assert r["errcode"] == 40097 and "job_id" in r["errmsg"], r  # an id, not found
            continue
        assert r["errcode"] == 40097 and "job_id: expected an integer" in r["errmsg"], r
    r = v.http.post(
        "/tcb/databasemigrateimport",
        params={"access_token": token},
        json={"env": v.info["key"], "collection_name": "docs", "file_path": "f",
              "file_type": True, "conflict_mode": 2},
    ).json()  # fmt: skip
    assert r["errcode"] == 40097 and "file_type" in r["errmsg"], r  # true is not 1


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (f"/imports/{HUGE}", "job_id"),
        (f"/imports/{HUGE}/failures", "job_id"),
        ("/imports/0", "job_id"),
        (f"/lists/{HUGE}", "list_id"),
        ("/lists/0", "list_id"),
        ("/lists/-1", "list_id"),
        (f"/lists/1?after={HUGE}", "after"),
        ("/lists/1?limit=0", "limit"),
        (f"/users/{HUGE}/segments", "user_id"),
        (f"/profiles?user_id={HUGE}", "user_id"),
        (f"/segments/{HUGE}", "name"),
        (f"/segments/{HUGE}/members", "name"),
    ],
)
def test_admin_ids_out_of_range(v: Vendors, path: str, field: str) -> None:
    admin_error(v.admin("GET", path), 400, "validation_failed", field)


def test_admin_project_id_out_of_range(server: LiveServer) -> None:
    admin_error(server.admin("GET", f"/projects/{HUGE}"), 400, "validation_failed", "ref")
    admin_error(server.admin("GET", f"/projects/{HUGE}/stats"), 400, "validation_failed", "ref")
    assert server.admin("GET", "/projects/999999").status_code == 404  # an id: not found


# ---- dates Python and the engines cannot hold ---------------------------------------------
@pytest.mark.parametrize(
    ("first", "last", "field"),
    [
        ("0001-01-01", "0001-01-02", "from"),
        ("2024-01-01", "9999-12-31", "to"),
        ("9999-12-31", "9999-12-31", "from"),
        ("2024-02-30", "2024-03-01", "from"),
        ("2024-1-1", "2024-01-02", "from"),
    ],
)
def test_admin_backfill_dates_out_of_range(v: Vendors, first: str, last: str, field: str) -> None:
    r = v.admin("POST", "/exports/backfill", json={"from": first, "to": last})
    admin_error(r, 400, "validation_failed", field)


def test_admin_backfill_at_the_bounds_writes_within_retention(v: Vendors) -> None:
    r = v.admin("POST", "/exports/backfill", json={"from": "0001-01-02", "to": "9999-12-30"})
    assert r.status_code == 200 and r.json() == {"queued": 0}, r.text  # a new project


@pytest.mark.parametrize("date", ["00010101", "99991231", "9999123123", "0001010100"])
def test_admin_export_dates_out_of_range(v: Vendors, date: str) -> None:
    for export_type in ("day", "hour"):
        r = v.admin("POST", "/exports", json={"export_type": export_type, "export_date": date})
        admin_error(r, 400, "validation_failed", "export_date")


def test_cli_backfill_dates_out_of_range(server: LiveServer, project: Project) -> None:
    for first, last, field in (
        ("0001-01-01", "2024-01-01", "from"),
        ("2024-01-01", "9999-12-31", "to"),
    ):
        err = failed(
            run(server, "export", "backfill", "--project", project.name,
                "--from", first, "--to", last),
            1, "validation_failed",
        )  # fmt: skip
        assert err["field"] == field and "dates run from 0001-01-02 to 9999-12-30" in err["message"]


@pytest.mark.parametrize("date", ["00010101", "99991231", "9999123123", "0001010100"])
def test_growingio_export_dates_out_of_range(v: Vendors, date: str) -> None:
    headers = v.gio()
    for path in (f"day/{v.info['key']}", f"hour/custom_event/{v.info['key']}"):
        r = v.http.get(f"/v2/insights/{path}/{date}.json", headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["status"] == "error" and "export_date" in r.json()["errorMsg"]


def test_growingio_numbers_that_are_not_numbers(v: Vendors) -> None:
    headers = v.gio()
    for expire in ("²", "9" * 5000, "0", "-5"):
        r = v.http.get(
            f"/v2/insights/day/{v.info['key']}/20240101.json",
            params={"expire": expire},
            headers=headers,
        )
        assert r.status_code == 400 and "expire" in r.json()["errorMsg"], r.text
    for tm in ("²", "9" * 400, "-1"):  # signed as a client would: the signature is good
        r = v.http.post(
            "/auth/token", data=v.gio_fields(tm), headers={"X-Client-Id": v.info["client_id"]}
        )
        assert r.status_code == 400 and "tm" in r.json()["errorMsg"], r.text


# ---- jobs that failed later with "internal error" -----------------------------------------
def test_admin_import_into_a_collection_names_it(v: Vendors) -> None:
    files = {"file": ("docs.csv", b"_id,n\na,1\n", "text/csv")}
    r = v.admin("POST", "/imports", data={"into": "collection"}, files=files)
    admin_error(r, 400, "missing_parameter", "collection")
    r = v.admin("POST", "/imports", data={"into": "collection", "collection": "a b"}, files=files)
    assert r.status_code == 400 and r.json()["error"]["field"] == "collection_name", r.text
    assert v.admin("GET", "/imports").json() == []  # nothing queued that could fail later
    r = v.admin("POST", "/imports", data={"into": "collection", "collection": "docs"}, files=files)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 300  # a hang guard, not a performance limit
    while (job := v.admin("GET", f"/imports/{job_id}").json())["state"] not in (
        "complete",
        "failed",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert (job["state"], job["imported"]) == ("complete", 1), job


def test_admin_and_marketo_charsets_are_names(v: Vendors) -> None:
    files = {"file": ("u.csv", b"email\na@example.com\n", "text/csv")}
    r = v.admin("POST", "/imports", data={"charset": "utf\x00-8"}, files=files)
    admin_error(r, 400, "validation_failed", "charset")
    r = v.http.post(
        "/bulk/v1/leads.json", params={"charset": "utf\x00-8"}, files=CSV, headers=v.marketo()
    )
    error = marketo_error(r)
    assert error["code"] == "1003" and "charset" in error["message"], error


# ---- every error in the surface's envelope ------------------------------------------------
def test_marketo_wrong_method_and_unknown_path(v: Vendors) -> None:
    auth = v.marketo()
    for method, path in (
        ("GET", "/bulk/v1/leads.json"),
        ("DELETE", "/bulk/v1/leads/batch/1.json"),
        ("PUT", "/identity/oauth/token"),
        ("GET", "/bulk/v1/nothing.json"),
        ("GET", "/identity/nothing"),
    ):
        error = marketo_error(v.http.request(method, path, headers=auth))
        assert error["code"] == "610", (method, path, error)
        assert path in error["message"]


def test_marketo_malformed_bodies(v: Vendors) -> None:
    auth = v.marketo()
    r = v.http.post("/bulk/v1/leads.json", content=b"email\n", headers=auth)
    assert marketo_error(r)["code"] == "612"
    bad = {**auth, "Content-Type": "multipart/form-data; boundary=xyz"}
    r = v.http.post("/bulk/v1/leads.json", content=b"--xyz\r\nnonsense", headers=bad)
    error = marketo_error(r)
    assert error["code"] == "1003" and "ends before its closing boundary" in error["message"]
    no_boundary = {**auth, "Content-Type": "multipart/form-data"}
    r = v.http.post("/bulk/v1/leads.json", content=b"--xyz\r\nnonsense", headers=no_boundary)
    error = marketo_error(r)
    assert error["code"] == "1003" and "Content-Type: " in error["message"], error
    assert "boundary" in error["message"], error
    r = v.http.post(
        "/identity/oauth/token",
        content=b"--xyz\r\nnonsense",
        headers={"Content-Type": "multipart/form-data"},
    )
    error = marketo_error(r)  # the token endpoint's form, read with a bound
    assert error["code"] == "1003" and "boundary" in error["message"], error


def test_wechat_envelope(v: Vendors) -> None:
    token = v.wechat()
    r = v.http.get("/tcb/databasemigrateimport", params={"access_token": token})
    assert r.status_code == 405 and r.json()["errcode"] == 43002, r.text
    r = v.http.post("/tcb/nothing", params={"access_token": token})
    assert r.status_code == 404 and r.json()["errcode"] == 40097, r.text
    r = v.http.post(
        "/tcb/databasemigrateimport", params={"access_token": token}, content=b"{not json"
    )
    assert r.json()["errcode"] == 47001 and "body" in r.json()["errmsg"], r.text
    r = v.http.post("/tcb/upload/abc", files={"file": ("f", b"x")})
    assert r.status_code == 400 and r.json()["errcode"] == 40097, r.text
    assert "file_id" in r.json()["errmsg"]


def test_thinkingdata_envelope(v: Vendors) -> None:
    r = v.td("GET", "/open/user-cluster-add")
    assert r["return_code"] == -1002 and "GET" in r["return_message"], r
    r = v.td("GET", "/open/nothing")
    assert r["return_code"] == -1002, r
    r = v.http.post(
        "/open/user-cluster-list", params={"token": v.info["api_token"]}, content=b"[1, 2"
    )
    assert r.status_code == 200 and r.json()["return_code"] == -1003, r.text
    assert "body" in r.json()["return_message"]


def test_growingio_envelope(v: Vendors) -> None:
    headers = v.gio()
    r = v.http.post(f"/v2/insights/day/{v.info['key']}/20240101.json", headers=headers)
    assert r.status_code == 405, r.text
    assert r.json()["status"] == "error" and "POST" in r.json()["errorMsg"]
    r = v.http.get("/v2/nothing", headers=headers)
    assert r.status_code == 404 and r.json()["status"] == "error", r.text
    r = v.http.get("/auth/token")
    assert r.status_code == 405 and r.json()["status"] == "error", r.text


def test_admin_envelope(server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.put(server.url + "/admin/v1/projects", headers=auth)
    admin_error(r, 405, "method_not_allowed", "method")
    r = httpx.post(
        server.url + "/admin/v1/projects",
        content=b"{",
        headers={**auth, "Content-Type": "application/json"},
    )
    admin_error(r, 400, "validation_failed", "body")
    r = httpx.get(server.url + "/admin/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


def test_a_trailing_slash_is_not_found_in_the_vendors_envelope(v: Vendors) -> None:
    """No surface redirects a path it does not serve (Starlette's default for a trailing
    slash): the client gets the vendor's "not found"."""
    token = v.wechat()
    r = v.http.post("/tcb/upload/0%2F", files={"file": ("f", b"x")})
    assert r.status_code == 404 and r.json()["errcode"] == 40097, r.text
    r = v.http.post("/tcb/databasemigrateimport/", params={"access_token": token})
    assert r.status_code == 404 and r.json()["errcode"] == 40097, r.text
    r = v.http.post("/bulk/v1/leads.json/", headers=v.marketo())
    assert r.status_code == 200 and r.headers.get("location") is None, r.text
    assert marketo_error(r)["code"], r.text
    r = v.td("POST", "/open/user-cluster-list/")
    assert r["return_code"] == -1002, r
    r = v.http.get(f"/v2/insights/day/{v.info['key']}/20240101.json/", headers=v.gio())
    assert r.status_code == 404 and r.json()["status"] == "error", r.text
    r = v.http.post("/api/v1/api/import/", content=b"{}")
    assert r.status_code != 307 and r.headers.get("location") is None, r.text
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = v.http.get("/admin/v1/projects/", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
