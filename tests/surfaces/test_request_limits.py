"""One test per limit (``Limits`` and ``Settings`` in config.py, and the fixed bounds of the
surfaces), on a live server started with small limits: each is enforced, on every surface that
reads what it bounds, with the vendor's code and a message naming the field."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.clients import marketo_token, wechat_token
from tests.liveserver import LiveServer

BODY = 4096
PROPERTIES = 5
STRING = 64
LIST = 3
NAME = 16
MARKETO_FILE = 2048
UPLOAD = 8192
QUEUE = 2
OVERHEAD = 64 << 10  # multipart headers a file part may come with (surfaces/uploads.py)
_n = itertools.count(1)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path_factory.mktemp("limits") / "data",
        OPENCDP_MAX_BODY_BYTES=str(BODY),
        OPENCDP_MAX_PROPERTIES=str(PROPERTIES),
        OPENCDP_MAX_STRING_BYTES=str(STRING),
        OPENCDP_MAX_LIST_ITEMS=str(LIST),
        OPENCDP_MAX_NAME_LENGTH=str(NAME),
        OPENCDP_MARKETO_MAX_FILE_BYTES=str(MARKETO_FILE),
        OPENCDP_MAX_UPLOAD_BYTES=str(UPLOAD),
        OPENCDP_IMPORT_QUEUE=str(QUEUE),
        OPENCDP_JOB_WORKERS="0",  # jobs stay queued: the queue fills
    ).start()
    yield server
    server.stop()


class Clients:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.info = server.new_project(f"lim{next(_n)}")
        self.http = httpx.Client(base_url=server.url, timeout=60)

    def dmartech(self, body: Any) -> dict[str, Any]:
        r = self.http.post(
            "/api/v1/api/import", params={"secret": self.info["api_token"]}, json=body
        )
        assert r.status_code in (200, 400, 413), r.text
        return dict(r.json())

    def user(self, **props: Any) -> dict[str, Any]:
        return self.dmartech({"type": "user", "properties": {"mobile": "13800000000", **props}})

    def marketo(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {marketo_token(self.http, self.info)}"}

    def wechat(self) -> str:
        return wechat_token(self.http, self.info)

    def wechat_link(self, token: str, path: str) -> dict[str, Any]:
        r = self.http.post(
            "/tcb/uploadfile",
            params={"access_token": token},
            json={"env": self.info["key"], "path": path},
        )
        return dict(r.json())

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.server.admin(method, f"/projects/{self.info['name']}{path}", **kw)


@pytest.fixture
def c(srv: LiveServer) -> Iterator[Clients]:
    clients = Clients(srv)
    yield clients
    clients.http.close()


def dmartech_refused(answer: dict[str, Any], field: str) -> None:
    assert answer["errcode"] == 20003, answer
    assert f"{field}" in answer["errmsg"], answer


def admin_refused(r: httpx.Response, status: int, code: str, field: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert field in error["message"], error


# ---- Limits ---------------------------------------------------------------------------------
def test_body_size(c: Clients) -> None:
    big = {"type": "user", "properties": {"mobile": "13800000000", "pad": "x" * BODY}}
    r = c.http.post("/api/v1/api/import", params={"secret": c.info["api_token"]}, json=big)
    assert r.status_code == 413 and r.json()["errcode"] == 20003, r.text
    assert "body: larger than 4096 bytes" in r.json()["errmsg"]
    # WeChat and ThinkingData JSON bodies
    r = c.http.post(
        "/tcb/databasemigrateimport",
        params={"access_token": c.wechat()},
        json={"env": c.info["key"], "pad": "x" * BODY},
    )
    assert r.json()["errcode"] == 40097 and "body: larger than" in r.json()["errmsg"], r.text
    r = c.http.post(
        "/open/user-cluster-list", params={"token": c.info["api_token"]}, json={"p": "x" * BODY}
    )
    answer = r.json()
    assert answer["return_code"] == -1003 and "body: larger than" in answer["return_message"]
    # The admin API's JSON bodies: by the declared length, unread, or as they stream in.
    r = c.server.admin("POST", "/projects", json={"name": "big", "pad": "x" * BODY})
    admin_refused(r, 413, "limit_exceeded", "body")

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "big", "pad": "'
        for _ in range(BODY // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    r = c.server.admin(
        "POST", "/projects", content=chunks(), headers={"Content-Type": "application/json"}
    )
    admin_refused(r, 413, "limit_exceeded", "body")
    assert c.server.admin("GET", "/projects/big").status_code == 404  # nothing created


def test_string_length(c: Clients) -> None:
    assert c.user(note="x" * STRING)["errcode"] == 0
    dmartech_refused(c.user(note="x" * (STRING + 1)), "note")
    dmartech_refused(c.user(note="é" * (STRING // 2 + 1)), "note")  # bytes, not characters


def test_list_items(c: Clients) -> None:
    assert c.user(tags=["a"] * LIST)["errcode"] == 0
    dmartech_refused(c.user(tags=["a"] * (LIST + 1)), "tags")


def test_properties_per_record(c: Clients) -> None:
    props = {f"p{i}": i for i in range(PROPERTIES - 1)}  # and mobile
    assert c.user(**props)["errcode"] == 0
    dmartech_refused(c.user(**props, one_more=1), "properties")


def test_name_length(c: Clients) -> None:
    assert c.user(**{"n" * NAME: 1})["errcode"] == 0
    dmartech_refused(c.user(**{"n" * (NAME + 1): 1}), "n" * 16)
    event = {
        "type": "event",
        "event": "e" * (NAME + 1),
        "properties": {"mobile": "1", "event_id": "e1", "create_time": "2024-01-01 00:00:00"},
    }
    dmartech_refused(c.dmartech(event), "event")
    r = c.server.admin("POST", "/projects", json={"name": "x" * 129})
    admin_refused(r, 400, "validation_failed", "name")


def test_marketo_file_size(c: Clients) -> None:
    auth = c.marketo()
    ok = b"email\n" + b"a@example.com\n" * ((MARKETO_FILE - 6) // 14)
    assert len(ok) <= MARKETO_FILE
    r = c.http.post("/bulk/v1/leads.json", files={"file": ("l.csv", ok)}, headers=auth)
    assert r.json()["success"], r.text
    for size in (MARKETO_FILE + 1, MARKETO_FILE + OVERHEAD + 1):  # streamed, and refused unread
        big = b"email\n" + b"x" * size
        r = c.http.post("/bulk/v1/leads.json", files={"file": ("l.csv", big)}, headers=auth)
        (error,) = r.json()["errors"]
        assert error["code"] == "1003" and "file: larger than 2048 bytes" in error["message"]


def test_upload_size(c: Clients) -> None:
    token = c.wechat()
    link = c.wechat_link(token, "big.json")
    r = httpx.post(
        link["url"],
        files={"file": ("f", b"x" * (UPLOAD + 1))},
        data={"x-cos-security-token": link["token"]},
    )
    assert r.status_code == 400 and r.json()["errcode"] == 40097, r.text
    assert "file: larger than 8192 bytes" in r.json()["errmsg"]
    r = c.admin("POST", "/imports", files={"file": ("u.csv", b"email\n" + b"x" * UPLOAD)})
    admin_refused(r, 413, "limit_exceeded", "file")
    r = c.admin("POST", "/imports", files={"file": ("u.csv", b"x" * (UPLOAD + OVERHEAD + 1))})
    admin_refused(r, 413, "limit_exceeded", "body")
    assert c.admin("GET", "/imports").json() == []


def test_import_queue(srv: LiveServer) -> None:
    mk = Clients(srv)
    auth = mk.marketo()
    csv = {"file": ("l.csv", b"email\na@example.com\n")}
    for _ in range(QUEUE):
        assert mk.http.post("/bulk/v1/leads.json", files=csv, headers=auth).json()["success"]
    (error,) = mk.http.post("/bulk/v1/leads.json", files=csv, headers=auth).json()["errors"]
    assert error["code"] == "1016", error  # clients back off and retry on 1016

    wx = Clients(srv)
    token = wx.wechat()
    for i in range(QUEUE + 1):
        link = wx.wechat_link(token, f"f{i}.csv")
        r = httpx.post(
            link["url"],
            files={"file": ("f", b"mobile\n13800000000\n")},
            data={"x-cos-security-token": link["token"]},
        )
        assert r.status_code == 204, r.text
        r = wx.http.post(
            "/tcb/databasemigrateimport",
            params={"access_token": token},
            json={"env": wx.info["key"], "collection_name": "users", "file_path": f"f{i}.csv",
                  "file_type": 2, "conflict_mode": 2},
        )  # fmt: skip
        answer = r.json()
        assert answer["errcode"] == (0 if i < QUEUE else -1), answer

    ad = Clients(srv)
    for i in range(QUEUE + 1):
        r = ad.admin("POST", "/imports", files={"file": ("u.csv", b"email\na@example.com\n")})
        if i < QUEUE:
            assert r.status_code == 202, r.text
        else:
            assert r.status_code == 429 and r.json()["error"]["code"] == "busy", r.text


# ---- the surfaces' own bounds ---------------------------------------------------------------
def test_token_request_bodies(c: Clients) -> None:
    pad = "x" * (64 << 10)
    r = c.http.post(
        "/auth/token", content=f"project=a&pad={pad}", headers={"X-Client-Id": c.info["client_id"]}
    )
    assert r.status_code == 400 and "body: larger than" in r.json()["errorMsg"], r.text
    r = c.http.post("/identity/oauth/token", data={"client_id": "a", "pad": pad})
    (error,) = r.json()["errors"]
    assert error["code"] == "1003" and "body: larger than" in error["message"], error


def test_thinkingdata_page_size_is_capped(c: Clients) -> None:
    r = c.http.post(
        "/open/user-cluster-list",
        params={"token": c.info["api_token"], "projectId": c.info["project_id"]},
        json={"pagerHeader": {"pageNum": 1, "pageSize": 5000}},
    )
    assert r.json()["data"]["pagerResult"]["pageSize"] == 1000, r.text
