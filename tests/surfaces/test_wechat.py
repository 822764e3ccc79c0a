"""The WeChat cloud database import surface (seed 002) over HTTP, and wechatpy's cloud module."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.liveserver import LiveServer

_n = iter(range(1, 10_000))


class Wx:
    def __init__(self, server: LiveServer, info: dict[str, Any]) -> None:
        self.server = server
        self.info = info
        self.env = info["key"]
        self.http = httpx.Client(base_url=server.url, timeout=60)
        r = self.http.get(
            "/cgi-bin/token",
            params={
                "grant_type": "client_credential",
                "appid": info["client_id"],
                "secret": info["client_secret"],
            },
        ).json()
        assert r["expires_in"] > 7000, r
        self.token = str(r["access_token"])

    def post(self, path: str, body: Any, token: str | None = None) -> dict[str, Any]:
        # Real clients send JSON with no Content-Type header.
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = self.http.post(
            path, params={"access_token": self.token if token is None else token}, content=content
        )
        return dict(r.json())

    def upload(self, path: str, data: bytes) -> None:
        link = self.post("/tcb/uploadfile", {"env": self.env, "path": path})
        assert link["errcode"] == 0, link
        r = httpx.post(
            link["url"],
            files={"file": ("f", data, "application/octet-stream")},
            data={
                "key": path,
                "Signature": link["authorization"],
                "x-cos-security-token": link["token"],
                "x-cos-meta-fileid": link["cos_file_id"],
            },
        )
        assert r.status_code == 204, r.text

    def start(
        self, collection: str, path: str, file_type: int = 2, mode: int = 2, **kw: Any
    ) -> Any:
        body = {
            "env": self.env,
            "collection_name": collection,
            "file_path": path,
            "file_type": file_type,
            "stop_on_error": False,
            "conflict_mode": mode,
            **kw,
        }
        return self.post("/tcb/databasemigrateimport", body)

    def wait(self, job_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 300  # a hang guard, not a performance limit
        while time.monotonic() < deadline:
            st = self.post("/tcb/databasemigratequeryinfo", {"env": self.env, "job_id": job_id})
            assert st["errcode"] == 0, st
            if st["status"] in ("success", "fail"):
                return st
            time.sleep(0.05)
        raise AssertionError("job never finished")

    def run(self, collection: str, name: str, data: bytes | str, **kw: Any) -> dict[str, Any]:
        self.upload(name, data.encode() if isinstance(data, str) else data)
        started = self.start(collection, name, **kw)
        assert started["errcode"] == 0, started
        return self.wait(started["job_id"])


@pytest.fixture
def wx(server: LiveServer) -> Wx:
    return Wx(server, server.new_project(f"wx{next(_n)}"))


def test_users_csv_upsert_and_error_file(wx: Wx) -> None:
    st = wx.run("users", "u.csv", "mobile,email,level\n13800000000,a@x.com,1\n,,2\n")
    assert (st["status"], st["record_success"], st["record_fail"]) == ("success", 1, 1)
    errors = httpx.get(st["file_url"]).text
    assert "row 2" in errors and "identity" in errors
    prof = wx.server.profile(wx.info["name"], key="email", value="a@x.com").json()
    assert prof["properties"]["level"] == 1.0
    # The error file link is signed: altering it is refused.
    tampered = st["file_url"].replace("sign=", "sign=0")
    assert httpx.get(tampered).json()["errcode"] == 40001


def test_users_insert_mode_fails_existing(wx: Wx) -> None:
    wx.run("users", "a.csv", "email,city\na@x.com,A\n")
    st = wx.run("users", "b.csv", "email,city\na@x.com,B\nb@x.com,C\n", mode=1)
    assert (st["record_success"], st["record_fail"]) == (1, 1)
    prof = wx.server.profile(wx.info["name"], key="email", value="a@x.com").json()
    assert prof["properties"]["city"] == "A"


def test_events_json_lines(wx: Wx) -> None:
    lines = [
        {"event": "pay", "event_id": "w1", "create_time": "2024-01-01 00:00:00", "mobile": "9"},
        {"event": "pay", "event_id": "w2", "create_time": "2024-01-02 00:00:00", "mobile": "9"},
    ]
    st = wx.run("events", "e.json", "\n".join(json.dumps(x) for x in lines), file_type=1)
    assert (st["status"], st["record_success"]) == ("success", 2)
    prof = wx.server.profile(wx.info["name"], key="mobile", value="9").json()
    assert prof["event_count"] == 2


def test_collection_documents_insert_and_upsert(wx: Wx) -> None:
    docs = [{"_id": "d1", "n": 1, "tags": ["x"]}, {"_id": "d2", "n": 2}, {"n": 3}]
    body = "\n".join(json.dumps(d) for d in docs)
    st = wx.run("orders", "o.json", body, file_type=1, mode=1)
    assert (st["record_success"], st["record_fail"]) == (3, 0)
    st = wx.run("orders", "o2.json", '{"_id": "d1", "n": 10}\n', file_type=1, mode=1)
    assert (st["record_success"], st["record_fail"]) == (0, 1)
    st = wx.run("orders", "o3.json", '{"_id": "d1", "n": 10}\n', file_type=1, mode=2)
    assert st["record_success"] == 1
    # Importing the same file again replaces, never duplicates, even rows without an _id.
    st = wx.run("orders", "o.json", body, file_type=1, mode=2)
    assert st["record_success"] == 3
    base = f"/projects/{wx.info['name']}/collections/orders"
    assert wx.server.admin("GET", base).json()["count"] == 3
    assert wx.server.admin("GET", f"{base}/d1").json() == {"_id": "d1", "n": 1.0, "tags": ["x"]}
    assert wx.server.admin("GET", base).json()["fields"] == {"n": "number", "tags": "list"}
    assert wx.server.admin("GET", f"{base}/nope").status_code == 404
    assert wx.server.admin("GET", f"/projects/{wx.info['name']}/collections/x").status_code == 404


def test_request_errors(wx: Wx, server: LiveServer) -> None:
    assert wx.post("/tcb/databasemigrateimport", b"")["errcode"] == 44002
    assert wx.post("/tcb/databasemigrateimport", b"{nope")["errcode"] == 47001
    assert wx.post("/tcb/databasemigrateimport", {"env": wx.env})["errcode"] == 40101
    assert wx.post("/tcb/databasemigrateimport", {"env": "x"}, token="bad")["errcode"] == 40001
    r = wx.http.post("/tcb/databasemigrateimport", content=b"{}").json()
    assert r["errcode"] == 41001
    assert wx.http.get("/tcb/databasemigrateimport").json()["errcode"] == 43002
    assert wx.start("users", "never-uploaded.csv")["errcode"] == 40097
    assert wx.start("users", "../../etc/passwd")["errcode"] == 40097
    assert wx.start("users", "x", file_type=3)["errcode"] == 40097
    assert wx.start("users", "x", mode=7)["errcode"] == 40097
    assert wx.start("bad name!", "x")["errcode"] == 40097
    assert wx.post("/tcb/uploadfile", {"env": "someone-else", "path": "p"})["errcode"] == 40097
    bad = wx.http.get(
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": wx.info["client_id"], "secret": "x"},
    ).json()
    assert bad["errcode"] == 40013
    # Another project's upload and job are invisible.
    other = Wx(server, server.new_project(f"wx{next(_n)}"))
    other.upload("theirs.csv", b"email\nt@x.com\n")
    assert wx.start("users", "theirs.csv")["errcode"] == 40097
    job = other.start("users", "theirs.csv")["job_id"]
    st = wx.post("/tcb/databasemigratequeryinfo", {"env": wx.env, "job_id": job})
    assert st["errcode"] == 40097


def test_an_upload_token_works_once(wx: Wx) -> None:
    link = wx.post("/tcb/uploadfile", {"env": wx.env, "path": "once.csv"})
    form = {"x-cos-security-token": link["token"], "key": "once.csv"}
    up = {"file": ("f", b"email\na@x.com\n", "text/csv")}
    assert httpx.post(link["url"], data=form, files=up).status_code == 204
    again = httpx.post(link["url"], data=form, files=up)
    assert again.status_code == 403 and again.json()["errcode"] == 40001


def test_wechatpy_cloud_module_works_unchanged(wx: Wx, tmp_path: Path) -> None:
    import requests
    from wechatpy import WeChatClient

    class ToServer(requests.adapters.HTTPAdapter):
        """Sends the vendor's host to this server: what pointing the client at it means."""

        def send(self, request: Any, **kw: Any) -> Any:
            request.url = request.url.replace("https://api.weixin.qq.com", wx.server.url)
            return super().send(request, **kw)

    # The client names the project's real cloud environment id.
    env = f"prod-{wx.info['project_id']}x9"
    r = wx.server.admin("PATCH", f"/projects/{wx.info['name']}", json={"wechat_envs": [env]})
    assert r.status_code == 200 and r.json()["wechat_envs"] == [env], r.text
    client = WeChatClient(wx.info["client_id"], wx.info["client_secret"])
    client._http.mount("https://api.weixin.qq.com", ToServer())
    path = tmp_path / "users.csv"
    path.write_text("email,city\nlib@x.com,Paris\n")
    client.cloud.upload_file(env, str(path))
    job_id = client.cloud.db_import(env, "users", str(path), 2, 2, stop_on_error=False)
    deadline = time.monotonic() + 300
    while (info := client.cloud.db_query_migrate_info(env, job_id))["status"] not in (
        "success",
        "fail",
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert info["status"] == "success" and info["record_success"] == 1
    prof = wx.server.profile(wx.info["name"], key="email", value="lib@x.com").json()
    assert prof["properties"]["city"] == "Paris"


def test_an_env_id_of_another_project_is_refused(wx: Wx, server: LiveServer) -> None:
    other = server.new_project(f"wxenv{next(_n)}")
    env = f"prod-{other['project_id']}z"
    assert (
        server.admin("PATCH", f"/projects/{other['name']}", json={"wechat_envs": [env]}).status_code
        == 200
    )
    # An environment belongs to one project: this token's project cannot name it.
    r = wx.post("/tcb/uploadfile", {"env": env, "path": "p.csv"})
    assert r["errcode"] == 40097 and "env" in r["errmsg"], r
    r = server.admin("PATCH", f"/projects/{wx.info['name']}", json={"wechat_envs": [env]})
    assert r.status_code == 409 and "wechat_envs" in r.text
    r = server.admin("PATCH", f"/projects/{wx.info['name']}", json={"wechat_envs": ["a b"]})
    assert r.status_code == 400 and "wechat_envs" in r.text
    # The project key still works as the env.
    assert wx.post("/tcb/uploadfile", {"env": wx.env, "path": "p.csv"})["errcode"] == 0


def test_declared_collection_fields_are_enforced(wx: Wx) -> None:
    base = f"/projects/{wx.info['name']}/collections/visits"
    r = wx.server.admin("PUT", base, json={"fields": {"at": "datetime", "paid": "bool"}})
    assert r.status_code == 200 and r.json()["fields"] == {"at": "datetime", "paid": "bool"}
    csv = "_id,at,paid,note\nv1,2024-01-02 03:04:05,yes,hi\nv2,someday,no,x\nv3,,maybe,y\n"
    st = wx.run("visits", "v.csv", csv)
    assert (st["record_success"], st["record_fail"]) == (1, 2), st
    errors = httpx.get(st["file_url"]).text
    assert "at: " in errors and "paid: expected a boolean" in errors
    doc = wx.server.admin("GET", f"{base}/v1").json()
    assert doc == {"_id": "v1", "at": "2024-01-01T19:04:05+00:00", "paid": True, "note": "hi"}
    assert wx.server.admin("GET", base).json()["fields"]["note"] == "string"  # inferred
    clash = wx.server.admin("PUT", base, json={"fields": {"paid": "number"}})
    assert clash.status_code == 409


def test_nested_objects_stay_documents(wx: Wx) -> None:
    docs = [
        {"_id": "a1", "address": {"city": "Shenzhen", "geo": [22.5, 114.1]}, "note": "{x}"},
        {"_id": "a2", "address": {"city": "Hangzhou"}, "note": "plain"},
    ]
    st = wx.run("addresses", "a.json", "\n".join(json.dumps(d) for d in docs), file_type=1)
    assert (st["record_success"], st["record_fail"]) == (2, 0), st
    base = f"/projects/{wx.info['name']}/collections/addresses"
    assert wx.server.admin("GET", base).json()["fields"] == {"address": "object", "note": "string"}
    assert wx.server.admin("GET", f"{base}/a1").json()["address"] == {
        "city": "Shenzhen",
        "geo": [22.5, 114.1],
    }
    # JSON documents keep each value's own type, as in the vendor's document database.
    st = wx.run("addresses", "b.json", '{"_id": "a3", "address": "Nanjing"}\n', file_type=1)
    assert (st["record_success"], st["record_fail"]) == (1, 0)
    assert wx.server.admin("GET", f"{base}/a3").json()["address"] == "Nanjing"
    # A CSV file has no types: its values take the field's type, and a row that cannot fails.
    st = wx.run("addresses", "c.csv", "_id,address\na4,Nanjing\n", file_type=2)
    assert (st["record_success"], st["record_fail"]) == (0, 1)
    assert "address: expected an object" in httpx.get(st["file_url"]).text
    # Objects are for collection fields only: a profile property cannot be one.
    r = wx.server.admin(
        "POST", f"/projects/{wx.info['name']}/properties",
        json={"table": "user", "name": "address", "type": "object"},
    )  # fmt: skip
    assert r.status_code == 400 and "type" in r.text
