"""A storage failure on every surface: the vendor's internal-error code in its envelope, the
storage reason and no internals, and the connection stays usable.

The server runs in this process (uvicorn on loopback, in a thread) so that its metadata
database can be taken away while it runs: its connections are closed and a directory stands
where the database file was, so every query of it fails, as a lost disk would make it fail.
Everything else is the real thing, over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import h11
import httpx
import pytest

from tests.clients import marketo_token, wechat_token
from tests.liveserver import ADMIN_TOKEN, InProcessServer


class Server(InProcessServer):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, log_level="critical")

    def lose_metadata_db(self) -> None:
        meta = self.settings.data_dir / "meta.db"
        self.runtime.jobs._engine.dispose()  # the one engine every service shares
        for suffix in ("", "-wal", "-shm"):
            Path(f"{meta}{suffix}").unlink(missing_ok=True)
        meta.mkdir()


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    srv = Server(tmp_path_factory.mktemp("internal") / "data")
    info = httpx.post(
        srv.url + "/admin/v1/projects",
        json={"name": "shop"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json()
    tokens = tokens_of(srv, info)
    httpx.post(
        srv.url + "/admin/v1/projects/shop/thinkingdata/app-ids",
        json={"app_id": "shop-app"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ).raise_for_status()
    srv.lose_metadata_db()
    yield srv, {**info, **tokens}
    srv.stop()


def tokens_of(srv: Server, info: dict[str, Any]) -> dict[str, str]:
    """The surfaces' access tokens, fetched while the server is whole (they are signed, so
    checking them needs no database)."""
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        return _tokens(http, info)


def _tokens(http: httpx.Client, info: dict[str, Any]) -> dict[str, str]:
    mkto, wx = marketo_token(http, info), wechat_token(http, info)
    tm = str(int(time.time() * 1000))
    message = f"POST\n/auth/token\nproject={info['key']}&ai={info['key']}&tm={tm}"
    auth = hmac.new(info["client_secret"].encode(), message.encode(), hashlib.sha256).hexdigest()
    gio = http.post(
        "/auth/token",
        data={"project": info["key"], "ai": info["key"], "tm": tm, "auth": auth},
        headers={"X-Client-Id": info["client_id"]},
    ).json()["code"]
    return {"marketo": mkto, "wechat": wx, "growingio": gio}


def calls(info: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """One request per surface that needs the metadata DB."""
    today = f"{datetime.now(ZoneInfo('Asia/Shanghai')):%Y%m%d}"  # the project's day: looked up
    return [
        ("dmartech", "POST /api/v1/api/import",
         {"params": {"secret": info["api_token"]},
          "json": {"type": "user", "properties": {"mobile": "1", "new_property": 1}}}),
        ("marketo", "GET /bulk/v1/leads/batch/1.json",
         {"headers": {"Authorization": f"Bearer {info['marketo']}"}}),
        ("wechat", "POST /tcb/databasemigratequeryinfo",
         {"params": {"access_token": info["wechat"]}, "json": {"env": info["key"], "job_id": 1}}),
        ("thinkingdata", "GET /open/user-cluster-detail",
         {"params": {"token": info["api_token"], "clusterId": "1",
                     "projectId": info["project_id"]}}),
        ("growingio", f"GET /v2/insights/day/{info['key']}/{today}.json",
         {"headers": {"X-Client-Id": info["client_id"], "Authorization": info["growingio"]}}),
        ("thinkingdata_sdk", "POST /sync_server",
         {"headers": {"appid": "shop-app", "compress": "none"},
          "json": [{"#type": "user_set", "#account_id": "a", "properties": {"new_one": 1}}]}),
        ("admin", "GET /admin/v1/projects/shop/imports/1",
         {"headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"}}),
    ]  # fmt: skip


# Per surface: the HTTP statuses, the member holding the code, the code, and the member
# holding the message. A lost metadata DB is a fault of storage: every surface answers its
# internal code (the admin API: 503 unavailable) with the storage reason and "retry later".
INTERNAL: dict[str, tuple[set[int], Any, Any, Any]] = {
    "dmartech": ({503}, lambda b: b["errcode"], 10000, lambda b: b["errmsg"]),
    "marketo": ({200}, lambda b: b["errors"][0]["code"], "611",
                lambda b: b["errors"][0]["message"]),
    "wechat": ({200}, lambda b: b["errcode"], -1000, lambda b: b["errmsg"]),
    "thinkingdata": ({200}, lambda b: b["return_code"], -1, lambda b: b["return_message"]),
    "growingio": ({500}, lambda b: b["status"], "error", lambda b: b["errorMsg"]),
    # (HTTP 503: the SDKs keep the batch and send it again.)
    "thinkingdata_sdk": ({503}, lambda b: b["code"], -5, lambda b: b["msg"]),
    "admin": ({503}, lambda b: b["error"]["code"], "unavailable",
              lambda b: b["error"]["message"]),
}  # fmt: skip


def pipelined(url: str, method: str, path: str, kw: dict[str, Any], times: int) -> list[Any]:
    """Send ``times`` copies of one request on one connection before reading (HTTP/1.1
    pipelining), and parse the answers with h11: a server that closes the connection after an
    error answers fewer than were sent."""
    request = httpx.Request(method, url + path, **kw)
    parts = {
        "method": method,
        "target": request.url.raw_path,
        "headers": list(request.headers.raw),
    }
    body = request.read()

    def send(conn: h11.Connection) -> bytes:
        out = conn.send(h11.Request(**parts)) or b""
        out += (conn.send(h11.Data(data=body)) or b"") if body else b""
        return out + (conn.send(h11.EndOfMessage()) or b"")

    wire = b"".join(send(h11.Connection(h11.CLIENT)) for _ in range(times))
    reader = h11.Connection(h11.CLIENT)
    send(reader)
    answers: list[Any] = []
    status, data = 0, b""
    with socket.create_connection((request.url.host, request.url.port), timeout=30) as sock:
        sock.sendall(wire)
        while len(answers) < times:
            try:
                event = reader.next_event()
            except h11.RemoteProtocolError:
                break  # closed in the middle of an answer
            if event is h11.NEED_DATA:
                reader.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, data = event.status_code, b""
            elif isinstance(event, h11.Data):
                data += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                answers.append((status, json.loads(data)))
                if reader.their_state is not h11.DONE or reader.our_state is not h11.DONE:
                    break  # the server said it closes
                reader.start_next_cycle()
                send(reader)
            else:  # ConnectionClosed
                break
    return answers


@pytest.mark.parametrize("surface", list(INTERNAL))
def test_internal_error_in_the_envelope(
    broken: tuple[Server, dict[str, Any]], surface: str
) -> None:
    srv, info = broken
    (method_path, kw) = next((m, k) for s, m, k in calls(info) if s == surface)
    method, path = method_path.split(" ", 1)
    statuses, code_of, code, message_of = INTERNAL[surface]
    answers = pipelined(srv.url, method, path, kw, times=3)
    assert len(answers) == 3, answers  # the connection was not dropped after an error
    for status, body in answers:
        assert status in statuses and code_of(body) == code, (status, body)
        message = message_of(body)
        assert "storage: unable to open database file" in message, body
        assert "retry later" in message, body
        assert "Traceback" not in json.dumps(body) and "SELECT" not in json.dumps(body)


def test_a_file_missing_under_a_download_link(tmp_path: Path) -> None:
    """An exception after the handler returned (the file of a published export is gone when
    its response is sent) is answered in the envelope too, not in plain text."""
    srv = Server(tmp_path / "data")
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        info = httpx.post(srv.url + "/admin/v1/projects", json={"name": "dl"}, headers=admin)
        info = info.json()
        r = httpx.post(
            srv.url + "/api/v1/api/import",
            params={"secret": info["api_token"]},
            json={"type": "event", "event": "buy", "properties": {
                "mobile": "1", "event_id": "e1", "create_time": "2024-01-01 00:00:00"}},
        )  # fmt: skip
        assert r.json()["errcode"] == 0, r.text
        now = datetime.now(UTC)
        srv.runtime.exports.clock = lambda: now + timedelta(hours=2)  # the hour is closed
        hour = f"{now.astimezone(ZoneInfo('Asia/Shanghai')):%Y%m%d%H}"
        r = httpx.post(
            srv.url + "/admin/v1/projects/dl/exports",
            json={"export_type": "hour", "export_date": hour, "data_types": ["custom_event"]},
            headers=admin,
            timeout=60,
        )
        assert r.status_code == 200 and r.json()[0]["state"] == "finished", r.text
        export = r.json()[0]
        codes = tokens_of(srv, info)
        r = httpx.get(
            f"{srv.url}/v2/insights/hour/custom_event/{info['key']}/{hour}.json",
            headers={"X-Client-Id": info["client_id"], "Authorization": codes["growingio"]},
        )
        (link,) = r.json()["downloadLinks"]
        for part in (srv.settings.data_dir / "exports").rglob(export["parts"][0]["name"]):
            part.unlink()
        r = httpx.get(link)
        assert r.status_code == 500, r.text
        assert r.json() == {"status": "error", "errorMsg": "internal error"}
    finally:
        srv.stop()
