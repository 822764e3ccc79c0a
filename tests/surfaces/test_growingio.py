"""The GrowingIO raw data export 2.0 API (seed 004) over HTTP.

The server runs in this process (uvicorn on loopback, in a thread) so that the export engine's
clock can be moved past the end of the hour the records were received in: everything else —
the ingest log, SQLite, DuckDB, the files, the HTTP requests — is the real thing.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencdp.segments.service import Spec
from opencdp.surfaces.growingio import DATA_TYPES
from tests.liveserver import ADMIN_TOKEN, InProcessServer
from tests.surfaces import test_fidelity as fidelity
from tests.surfaces.test_marketo import Mkto
from tests.surfaces.test_wechat import Wx

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# How the vendor's format page reads its files: quote '"', escape '\'.
VENDOR_CSV: dict[str, Any] = {"quotechar": '"', "escapechar": "\\"}
_n = itertools.count(1)


class Server(InProcessServer):
    """The exports clock can be moved (``shift``) to close an hour at once."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        super().__init__(data_dir, **settings)
        self.shift = timedelta(0)
        self.runtime.exports.clock = lambda: datetime.now(UTC) + self.shift


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("gio") / "data", export_part_bytes=4_000)
    yield srv
    srv.stop()


class Client:
    def __init__(self, server: Server) -> None:
        self.server = server
        info = httpx.post(
            server.url + "/admin/v1/projects", json={"name": f"gio{next(_n)}"}, headers=AUTH
        ).json()
        self.info = info
        self.ai = info["key"]
        self.client_id, self.secret = info["client_id"], info["client_secret"]
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def sign(self, project: str, ai: str, tm: str) -> str:
        msg = f"POST\n/auth/token\nproject={project}&ai={ai}&tm={tm}"
        return hmac.new(self.secret.encode(), msg.encode(), hashlib.sha256).hexdigest()

    def fields(self, tm: int | None = None) -> dict[str, str]:
        tm_text = str(tm if tm is not None else int(time.time() * 1000))
        project = str(self.info["project_id"])
        return {"project": project, "ai": self.ai, "tm": tm_text,
                "auth": self.sign(project, self.ai, tm_text)}  # fmt: skip

    def token(self) -> str:
        r = self.http.post(
            "/auth/token",
            content="&".join(f"{k}={v}" for k, v in self.fields().items()),
            headers={"X-Client-Id": self.client_id, "Content-Type": "text/plain,text/plain"},
        )
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        return str(r.json()["code"])

    def insights(self, path: str, code: str | None = None, **params: Any) -> httpx.Response:
        headers = {"X-Client-Id": self.client_id, "Authorization": code or self.token()}
        return self.http.get(f"/v2/insights/{path}", params=params, headers=headers)

    def send(self, body: dict[str, Any]) -> None:
        r = self.http.post(
            "/api/v1/api/import", params={"secret": self.info["api_token"]}, json=body
        )
        assert r.json()["errcode"] == 0, r.text


@pytest.fixture
def gio(server: Server) -> Client:
    return Client(server)


def local_hour(dt: datetime) -> str:
    return dt.astimezone(UTC).astimezone(_shanghai()).strftime("%Y%m%d%H")


def _shanghai() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Asia/Shanghai")


def read_parts(links: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for link in links:
        r = httpx.get(link)
        assert r.status_code == 200, r.text
        rows += list(csv.DictReader(io.StringIO(gzip.decompress(r.content).decode()), **VENDOR_CSV))
    return rows


def test_the_token_handshake_in_every_form(gio: Client) -> None:
    f = gio.fields()
    # A form body with the odd Content-Type real scripts send, a normal form, the query string.
    for kw in (
        {"content": "&".join(f"{k}={v}" for k, v in f.items()),
         "headers": {"Content-Type": "text/plain,text/plain"}},
        {"data": f},
        {"params": f},
    ):  # fmt: skip
        headers = {"X-Client-Id": gio.client_id, **kw.pop("headers", {})}
        r = gio.http.post("/auth/token", headers=headers, **kw)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
    # Both the bare code and "Token <code>" are accepted.
    code = gio.token()
    assert gio.insights(f"hour/{gio.ai}/202001010000.json", code=code).status_code == 200
    assert gio.insights(f"hour/{gio.ai}/202001010000.json", code=f"Token {code}").status_code == 200


def test_bad_handshakes_are_refused(gio: Client) -> None:
    def post(fields: dict[str, str], client_id: str | None = None) -> httpx.Response:
        headers = {} if client_id == "" else {"X-Client-Id": client_id or gio.client_id}
        return gio.http.post("/auth/token", data=fields, headers=headers)

    assert post(gio.fields(), client_id="").status_code == 401
    assert post(gio.fields(), client_id="ci_nobody").status_code == 401
    forged = {**gio.fields(), "auth": "0" * 64}
    assert post(forged).status_code == 401
    old = gio.fields(tm=int((time.time() - 3600) * 1000))  # a replayed request
    r = post(old)
    assert r.status_code == 401 and "tm" in r.json()["errorMsg"]
    other = Client(gio.server)
    r = post({**gio.fields(), "ai": other.ai})  # signed for another project's ai
    assert r.status_code == 401
    missing = {k: v for k, v in gio.fields().items() if k != "tm"}
    assert post(missing).status_code == 400


def test_status_and_bad_requests(gio: Client) -> None:
    code = gio.token()
    now = datetime.now(UTC)
    # The current hour is still open: RUNNING; next year: NOT_EXISTS; before the project: too.
    r = gio.insights(f"hour/custom_event/{gio.ai}/{local_hour(now)}00.json", code=code).json()
    assert (r["status"], r["exportVersion"], r["dataType"]) == ("RUNNING", "v2", "custom_event")
    assert r["exportDate"] == local_hour(now)
    future = local_hour(now + timedelta(days=400))
    assert gio.insights(f"hour/{gio.ai}/{future}.json", code=code).json()["status"] == "NOT_EXISTS"
    assert gio.insights(f"day/{gio.ai}/20200101.json", code=code).json()["status"] == "NOT_EXISTS"
    day = gio.insights(f"day/{gio.ai}/{local_hour(now)}30.json", code=code).json()
    assert day["exportDate"] == local_hour(now)[:8]
    for path, params in (
        (f"hour/{gio.ai}/2020130100.json", {}),  # no month 13
        (f"hour/{gio.ai}/20200101.json", {}),  # an hour needs HH
        (f"week/{gio.ai}/2020010100.json", {}),
        (f"hour/nothing/{gio.ai}/2020010100.json", {}),
        (f"hour/{gio.ai}/2020010100.json", {"expire": "0"}),
        (f"hour/{gio.ai}/2020010100.json", {"expire": "-5"}),
        (f"hour/{gio.ai}/2020010100.json", {"expire": "99999999"}),
    ):
        r = gio.insights(path, code=code, **params)
        assert r.status_code == 400 and r.json()["errorMsg"], (path, r.text)
    # A code of one project never reads another's exports; a forged code is refused.
    other = Client(gio.server)
    assert gio.insights(f"hour/{other.ai}/2020010100.json", code=code).status_code == 404
    assert gio.insights(f"hour/{gio.ai}/2020010100.json", code=code + "x").status_code == 401
    r = gio.http.get(f"/v2/insights/hour/{gio.ai}/2020010100.json", headers={"Authorization": code})
    assert r.status_code == 401  # no X-Client-Id
    r = gio.http.get(
        f"/v2/insights/hour/{gio.ai}/2020010100.json",
        headers={"Authorization": code, "X-Client-Id": other.client_id},
    )
    assert r.status_code == 401  # the code of another client
    expired, _ = gio.server.runtime.catalog.issue_access_token(gio.client_id, "growingio", -1)
    r = gio.insights(f"hour/{gio.ai}/2020010100.json", code=expired)
    assert r.status_code == 401 and "expired" in r.json()["errorMsg"]


def test_a_closed_hour_exports_exactly_what_was_received(gio: Client, server: Server) -> None:
    received = datetime.now(UTC)
    for i in range(600):
        gio.send({"type": "event", "event": "pay" if i % 3 else "visit",
                  "properties": {"event_id": f"g{i}", "mobile": f"1{i % 40:010d}",
                                 "amount": i, "note": "x" * (i % 50),
                                 "create_time": "2024-01-02 03:04:05"}})  # fmt: skip
    hour = local_hour(received)
    server.shift = timedelta(hours=2)  # the hour is closed (and past its delay)
    try:
        r = httpx.post(
            f"{server.url}/admin/v1/projects/{gio.info['name']}/exports",
            json={"export_type": "hour", "export_date": hour},
            headers=AUTH,
            timeout=120,
        )
        assert r.status_code == 200, r.text
        by_type = {e["data_type"]: e for e in r.json()}
        assert by_type["custom_event"]["rows"] == 400 and by_type["visit"]["rows"] == 200
        # Written by one export job, the period's.
        assert len({e["job_id"] for e in r.json()}) == 1 and r.json()[0]["job_id"] > 0
        assert by_type["user"]["rows"] == 40
        body = gio.insights(f"hour/custom_event/{gio.ai}/{hour}.json", expire=10).json()
        assert body["status"] == "FINISHED", body
        links = body["downloadLinks"]
        assert len(links) > 1  # split under the small part size of this server
        rows = read_parts(links)
        assert sorted(json.loads(r["eventVariable"])["amount"] for r in rows) == [
            i for i in range(600) if i % 3
        ]
        assert {r["eventName"] for r in rows} == {"pay"}
        assert all(r["time"] == "1704135845000" for r in rows)  # 2024-01-01T19:04:05Z, in ms
        for part, link in zip(by_type["custom_event"]["parts"], links, strict=True):
            data = httpx.get(link).content
            assert len(data) == part["bytes"] <= 4_000
            assert hashlib.sha256(data).hexdigest() == part["sha256"]
        # Range requests resume a download.
        first = httpx.get(links[0]).content
        tail = httpx.get(links[0], headers={"Range": "bytes=100-"})
        assert tail.status_code == 206 and tail.content == first[100:]
        # All types at once: a link list per type.
        every = gio.insights(f"hour/{gio.ai}/{hour}.json").json()
        assert every["status"] == "FINISHED" and len(every["downloadLinks"]["visit"]) >= 1
        assert every["downloadLinks"]["page"] == []
        # A link altered in any part, or expired, serves nothing.
        assert httpx.get(links[0].replace("part0001", "part0002")).status_code == 401
        assert httpx.get(links[0].replace("expires=", "expires=1")).status_code == 401
        export_id = by_type["custom_event"]["id"]
        name = by_type["custom_event"]["parts"][0]["name"]
        expires, sign = server.runtime.catalog.sign_link("export", str(export_id), name, ttl=-1)
        late = f"{server.url}/v2/download/{export_id}/{name}?expires={expires}&sign={sign}"
        r = httpx.get(late)
        assert r.status_code == 401 and "expired" in r.json()["errorMsg"]
        # Exporting again leaves the published export as it was.
        again = httpx.post(
            f"{server.url}/admin/v1/projects/{gio.info['name']}/exports",
            json={"export_type": "hour", "export_date": hour, "data_types": ["custom_event"]},
            headers=AUTH,
        ).json()
        assert again[0]["parts"] == by_type["custom_event"]["parts"]
        assert again[0]["job_id"] is None  # nothing to write
        # Past retention the files are gone: NOT_EXISTS, and the links serve nothing.
        server.shift = timedelta(days=16)
        server.runtime.exports.purge()
        body = gio.insights(f"hour/custom_event/{gio.ai}/{hour}.json").json()
        assert (body["status"], body["downloadLinks"]) == ("NOT_EXISTS", [])
        assert httpx.get(links[1]).status_code == 404
    finally:
        server.shift = timedelta(0)


def test_hours_with_nothing_received_are_published_empty_by_the_scheduler(
    gio: Client, server: Server
) -> None:
    # Every data type of an hour in which nothing was received: FINISHED with no links, the
    # same answer as an hour whose exports the admin API wrote.
    code = gio.token()
    hour = local_hour(datetime.now(UTC))
    server.shift = timedelta(hours=2)
    try:
        while server.runtime.exports.schedule():  # the scheduler's rounds, until caught up
            pass
        every = gio.insights(f"hour/{gio.ai}/{hour}.json", code=code).json()
        assert every["status"] == "FINISHED", every
        assert every["downloadLinks"] == {dt: [] for dt in DATA_TYPES}
        one = gio.insights(f"hour/custom_event/{gio.ai}/{hour}.json", code=code).json()
        assert (one["status"], one["downloadLinks"], one["errorMsg"]) == ("FINISHED", [], "")
        r = httpx.post(
            f"{server.url}/admin/v1/projects/{gio.info['name']}/exports",
            json={"export_type": "hour", "export_date": hour},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        assert {(e["state"], e["rows"], str(e["parts"])) for e in r.json()} == {
            ("finished", 0, "[]")
        }
    finally:
        server.shift = timedelta(0)


# ---- the columns of each data type --------------------------------------------------------
# GrowingIO raw data export 2.0's field reference (names and order), per data type.
PAGE_ATTRIBUTES = [f"customerAttributes{i}" for i in range(2, 11)] + [
    f"pageAttributes{i}" for i in range(1, 11)
]
VENDOR = {
    "visit": ["visitUserId", "sessionId", "accountVersion", "platform", "domain", "page",
              "queryParameters", "referrer", "language", "screenHeight", "screenWidth", "time",
              "sendTime", "ip", "userAgent", "operatingSystem", "operatingSystemVersion",
              "clientVersion", "channel", "deviceBrand", "deviceModel", "deviceType",
              "deviceOrientation", "latitude", "longitude", "vstRequestId", "idfa", "androidId",
              "IMEI"],
    "page": ["visitUserId", "sessionId", "platform", "domain", "page", "queryParameters",
             "referrer", "referrerPage", "title", "time", "sendTime", "deviceOrientation",
             "loginUserId", "pageGroup", "appVariable", *PAGE_ATTRIBUTES, "pageRequestId",
             "vstRequestId"],
    "action": ["visitUserId", "sessionId", "requestType", "domain", "page", "sendTime", "time",
               "href", "requestValue", "index", "info", "pageRequestId", "actionRequestId"],
    "action_tag": ["sendTime", "actionRequestId", "ruleId"],
    "custom_event": ["visitUserId", "sessionId", "time", "sendTime", "pageTime", "domain", "page",
                     "queryParameters", "eventName", "eventNumber", "eventVariable",
                     "loginUserId", "pageRequestId"],
    "ads_track_activation": ["visitUserId", "idfa", "imei", "uuid", "androidId", "ip",
                             "userAgent", "platform", "operatingSystemVersion", "sendTime",
                             "linkId", "campaignId", "channelId", "linkName", "campaignName",
                             "channelName"],
    "ads_track_click": ["idfa", "imei", "uuid", "androidId", "ip", "userAgent", "platform",
                        "operatingSystemVersion", "eventTime", "linkId", "campaignId",
                        "channelId", "linkName", "campaignName", "channelName"],
    "pvar": ["visitUserId", "sessionId", "time", "sendTime", "pageTime", "domain", "page",
             "pageVariable", "pageRequestId"],
    "evar": ["visitUserId", "sessionId", "time", "sendTime", "domain", "conversionVariable"],
}  # fmt: skip
# Ours, after the vendor's: the event id, and what the vendor's type has no column for.
EXTRA = {
    "visit": ["eventId", "eventVariable"],
    "page": ["eventId", "eventVariable"],
    "action": ["eventId", "eventVariable"],
    "action_tag": ["eventId", "loginUserId", "time", "eventVariable"],
    "custom_event": ["eventId"],
    "ads_track_activation": ["eventId", "time", "eventVariable"],
    "ads_track_click": ["eventId", "loginUserId", "sendTime", "eventVariable"],
    "pvar": ["eventId"],
    "evar": ["eventId"],
}
OURS = {
    "user": ["visitUserId", "loginUserId", "createTime", "updateTime", "identities",
             "userVariable"],
    "user_cluster": ["clusterId", "clusterName", "clusterType", "clusterVersion", "refreshTime",
                     "visitUserId", "loginUserId", "tagValue", "identities"],
}  # fmt: skip
# Where our event fields go in each event type.
USER_COLUMNS = ("visitUserId", "loginUserId")
TIME_COLUMNS = ("time", "eventTime")
VARIABLES = {"pvar": "pageVariable", "evar": "conversionVariable"}
# Property names that are also column names, ours or the vendor's.
CLASHING = {"user_id": "u", "event_key": "k", "eventName": "n", "loginUserId": "l",
            "time": "t", "eventVariable": "v", "identities": "i", "userVariable": "w"}  # fmt: skip
EVENT_TIME_MS = 1704135845000  # create_time 2024-01-02 03:04:05, Beijing time


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def exported(gio: Client, server: Server, hours: set[str], data_type: str) -> Iterator[bytes]:
    """The files (decompressed) of a data type's exports of ``hours``, written through the
    admin API and downloaded through the vendor's links."""
    for hour in sorted(hours):
        r = httpx.post(
            f"{server.url}/admin/v1/projects/{gio.info['name']}/exports",
            json={"export_type": "hour", "export_date": hour, "data_types": [data_type]},
            headers=AUTH,
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = gio.insights(f"hour/{data_type}/{gio.ai}/{hour}.json").json()
        assert body["status"] == "FINISHED", body
        for link in body["downloadLinks"]:
            yield gzip.decompress(httpx.get(link).content)


def export_files(
    gio: Client, server: Server, hours: set[str], data_type: str
) -> tuple[list[str], list[dict[str, str]], bytes]:
    """The header, rows and raw text of a data type's CSV exports of ``hours``."""
    header: list[str] = []
    rows: list[dict[str, str]] = []
    text = b""
    for data in exported(gio, server, hours, data_type):
        text += data
        reader = csv.reader(io.StringIO(data.decode()), **VENDOR_CSV)
        header = next(reader)
        rows += [dict(zip(header, row, strict=True)) for row in reader]
    return header, rows, text


def test_each_data_type_has_the_vendors_columns_filled_from_what_was_ingested(
    gio: Client, server: Server
) -> None:
    mobile, email = "13912345678", "Ada@Example.com"
    before = datetime.now(UTC)
    gio.send({"type": "user", "properties": {
        "mobile": mobile, "email": email, "level": 3, "vip": True, **CLASHING}})  # fmt: skip
    note = 'say "hi", ok\\ \n€ 😀'
    custom = {"event_id": "c1", "mobile": mobile, "create_time": "2024-01-02 03:04:05",
              "level": 3, "price": 1.5, "big": 2.0**54, "note": note, "tags": ["a", "b"],
              "at": "2024-03-04 05:06:07", "ok": False, **CLASHING}  # fmt: skip
    gio.send({"type": "event", "event": "buy", "properties": custom})
    for i, name in enumerate(VENDOR):
        if name != "custom_event":
            gio.send({"type": "event", "event": name, "properties": {
                "event_id": f"e{i}", "mobile": mobile, "create_time": "2024-01-02 03:04:05",
                "k": i}})  # fmt: skip
    rt = server.runtime
    project = rt.catalog.project(gio.info["project_id"])
    assert rt.ingest.barrier()
    spec = Spec(
        name="buyers",
        display_name="b",
        definition={"events": [{"eventName": "buy", "comparator": "greaterEqual", "num": "1"}]},
    )
    seg = rt.segments.create(project.id, spec, "test")
    deadline = time.monotonic() + 300  # a hang guard: the job workers run the refresh
    while rt.segments.get(project.id, "buyers").progress != 100:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    after = datetime.now(UTC)
    hours = {local_hour(before), local_hour(after)}
    r = gio.http.get(
        f"/admin/v1/projects/{gio.info['name']}/profiles",
        params={"key": "mobile", "value": mobile},
        headers=AUTH,
    )
    uid = str(r.json()["user_id"])
    server.shift = timedelta(hours=2)
    try:
        for data_type in DATA_TYPES:
            header, rows, text = export_files(gio, server, hours, data_type)
            expected = OURS.get(data_type) or VENDOR[data_type] + EXTRA[data_type]
            assert header == expected, data_type
            assert len(rows) == 1, (data_type, rows)
            row = rows[0]
            if data_type == "user":
                assert row["visitUserId"] == row["loginUserId"] == uid
                assert ms(before) - 1 <= int(row["createTime"]) <= int(row["updateTime"])
                assert int(row["updateTime"]) <= ms(after) + 1
                assert json.loads(row["identities"]) == {"mobile": mobile, "email": email}
                variables = json.loads(row["userVariable"])
                assert variables == {"level": 3, "vip": True, **CLASHING}
                assert b'\\"level\\":3' in text and b"3.0" not in text
                continue
            if data_type == "user_cluster":
                assert json.loads(row.pop("identities")) == {"mobile": mobile, "email": email}
                assert row == {
                    "clusterId": str(seg.id),
                    "clusterName": "buyers",
                    "clusterType": "cluster",
                    "clusterVersion": "1",
                    "refreshTime": row["refreshTime"],
                    "visitUserId": uid,
                    "loginUserId": uid,
                    "tagValue": "",
                }
                assert ms(before) - 1 <= int(row["refreshTime"]) <= ms(after) + 1
                continue
            # An event type: the user id, both times (ms), the event id and the properties.
            filled = {c: row[c] for c in header if row[c] != ""}
            variables = json.loads(filled.pop(VARIABLES.get(data_type, "eventVariable")))
            send = int(filled.pop("sendTime"))
            assert ms(before) - 1 <= send <= ms(after) + 1
            event_time = next(c for c in TIME_COLUMNS if c in filled)
            assert filled.pop(event_time) == str(EVENT_TIME_MS)
            users = {c for c in USER_COLUMNS if c in filled}
            assert users and {filled.pop(c) for c in users} == {uid}
            if data_type == "custom_event":
                assert filled == {"eventId": "c1", "eventName": "buy"}
                assert variables == {
                    "level": 3, "price": 1.5, "big": 2.0**54, "note": note, "tags": ["a", "b"],
                    "at": 1709499967000, "ok": False, **CLASHING}  # fmt: skip
                # Whole numbers as integers, in the text itself.
                assert b'\\"level\\":3,' in text and b"3.0" not in text
                assert type(variables["level"]) is int
                assert type(variables["big"]) is float  # a float sent past 2^53 stays a float
            else:
                # Every other column, the vendor's included, is present and empty.
                assert filled == {"eventId": f"e{list(VENDOR).index(data_type)}"}
                assert variables == {"k": list(VENDOR).index(data_type)}
    finally:
        server.shift = timedelta(0)


def test_json_lines_carry_the_variables_as_objects_with_whole_numbers_as_integers(
    gio: Client, server: Server
) -> None:
    r = httpx.patch(
        f"{server.url}/admin/v1/projects/{gio.info['name']}",
        json={"export_format": "jsonl"},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    before = datetime.now(UTC)
    gio.send({"type": "event", "event": "buy", "properties": {
        "event_id": "j1", "mobile": "13900000000", "create_time": "2024-01-02 03:04:05",
        "level": 3, "ratio": 0.25, "count": -7.0, "eventVariable": "x"}})  # fmt: skip
    assert server.runtime.ingest.barrier()
    hours = {local_hour(before), local_hour(datetime.now(UTC))}
    server.shift = timedelta(hours=2)
    try:
        lines: list[bytes] = []
        for hour in sorted(hours):
            r = httpx.post(
                f"{server.url}/admin/v1/projects/{gio.info['name']}/exports",
                json={"export_type": "hour", "export_date": hour, "data_types": ["custom_event"]},
                headers=AUTH,
            )
            assert r.status_code == 200, r.text
            body = gio.insights(f"hour/custom_event/{gio.ai}/{hour}.json").json()
            for link in body["downloadLinks"]:
                assert ".jsonl.gz" in link
                lines += gzip.decompress(httpx.get(link).content).splitlines()
        (line,) = lines
        row = json.loads(line)
        assert list(row) == VENDOR["custom_event"] + EXTRA["custom_event"]
        assert row["eventVariable"] == {"level": 3, "ratio": 0.25, "count": -7,
                                        "eventVariable": "x"}  # fmt: skip
        assert row["time"] == EVENT_TIME_MS and row["sessionId"] is None
        assert b'"level":3,' in line and b'"count":-7,' in line and b".0" not in line
    finally:
        server.shift = timedelta(0)


# ---- round trips through the export -----------------------------------------------------------
def _export_rows(
    gio: Client, server: Server, hours: set[str], data_type: str, fmt: str
) -> list[Any]:
    """The rows of a data type's exports, read as a consumer reads them: JSON lines, or CSV
    with the vendor's quote and escape characters and its JSON columns decoded."""
    if fmt == "jsonl":
        files = exported(gio, server, hours, data_type)
        return [json.loads(line) for data in files for line in data.splitlines()]
    _, rows, _ = export_files(gio, server, hours, data_type)
    for row in rows:
        for key in ("eventVariable", "userVariable", "identities"):
            if row.get(key):
                row[key] = json.loads(row[key])  # type: ignore[assignment]
    return rows


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batch=st.lists(fidelity.record_values, min_size=1, max_size=6),
    fmt=st.sampled_from(["csv", "jsonl"]),
)
def test_values_come_out_of_the_export_as_they_went_in(
    server: Server, batch: list[dict[str, Any]], fmt: str
) -> None:
    """Record API, Marketo CSV, WeChat JSON and CSV in, GrowingIO export out (events and
    profiles), as CSV or JSON lines: the same values, of the same JSON types, whole numbers as
    integers."""
    gio = Client(server)
    name = gio.info["name"]
    for table in ("user", "event"):
        for prop, ptype in (("n", "number"), ("t", "string"), ("b", "bool"), ("l", "list")):
            r = httpx.post(
                f"{server.url}/admin/v1/projects/{name}/properties",
                json={"table": table, "name": prop, "type": ptype}, headers=AUTH,
            )  # fmt: skip
            assert r.status_code in (200, 201), r.text
    assert (
        httpx.patch(
            f"{server.url}/admin/v1/projects/{name}", json={"export_format": fmt}, headers=AUTH
        ).status_code
        == 200
    )
    before = datetime.now(UTC)
    for i, values in enumerate(batch):
        mobile = f"1380000{i:04d}"
        gio.send({"type": "user", "properties": {"mobile": mobile, **values}})
        gio.send({"type": "event", "event": "fid", "properties": {
            "event_id": f"f{i}", "mobile": mobile, "create_time": "2024-01-02 03:04:05",
            **values}})  # fmt: skip
    # The same values through a Marketo CSV file, into profiles found by e-mail.
    rows = [{"email": f"m{i}@x.com", "n": v.get("n"), "t": v.get("t")} for i, v in enumerate(batch)]
    st_ = Mkto(server, gio.info).run(fidelity.csv_text(["email", "n", "t"], rows))
    assert (st_["status"], st_["numOfRowsFailed"]) == ("Complete", 0), st_
    # And through WeChat: a JSON file (typed values) and a CSV file, into profiles.
    wx = Wx(server, gio.info)
    docs = [{"email": f"wj{i}@x.com", **v} for i, v in enumerate(batch)]
    st_ = wx.run("users", "u.json", "\n".join(json.dumps(d) for d in docs), file_type=1)
    assert (st_["record_success"], st_["record_fail"]) == (len(docs), 0), st_
    wrows = [{**r, "email": f"wc{i}@x.com"} for i, r in enumerate(rows)]
    st_ = wx.run("users", "u.csv", fidelity.csv_text(["email", "n", "t"], wrows), file_type=2)
    assert (st_["record_success"], st_["record_fail"]) == (len(wrows), 0), st_
    assert server.runtime.ingest.barrier()
    hours = {local_hour(before), local_hour(datetime.now(UTC))}
    server.shift = timedelta(hours=2)
    try:
        events = {r["eventId"]: r for r in _export_rows(gio, server, hours, "custom_event", fmt)}
        users = _export_rows(gio, server, hours, "user", fmt)
    finally:
        server.shift = timedelta(0)
    by_mobile = {u["identities"]["mobile"]: u for u in users if "mobile" in u["identities"]}
    by_email = {u["identities"]["email"]: u for u in users if "email" in u["identities"]}
    for row in rows + wrows:
        got = by_email[row["email"]]["userVariable"] or {}
        for key in ("n", "t"):
            if row[key] is not None:
                assert fidelity.same(row[key], got.get(key)), (key, row[key], got)
    for doc in docs:
        got = by_email[doc["email"]]["userVariable"] or {}
        for key, sent in doc.items():
            if key != "email":
                assert fidelity.same(sent, got.get(key)), (key, sent, got)
    for i, values in enumerate(batch):
        got_event = events[f"f{i}"]["eventVariable"] or {}
        got_user = by_mobile[f"1380000{i:04d}"]["userVariable"] or {}
        for key, sent in values.items():
            assert fidelity.same(sent, got_event.get(key)), (key, sent, got_event)
            assert fidelity.same(sent, got_user.get(key)), (key, sent, got_user)


def test_login_user_id_is_the_projects_login_property(gio: Client, server: Server) -> None:
    """A project names the user property its apps log in with: loginUserId carries its value
    (empty for a user who has none), visitUserId our user id, in events and profiles."""
    name = gio.info["name"]
    patch = f"{server.url}/admin/v1/projects/{name}"
    r = httpx.patch(patch, json={"login_user_key": "nope"}, headers=AUTH)
    assert r.status_code == 400 and "login_user_key" in r.text
    r = httpx.post(
        f"{server.url}/admin/v1/projects/{name}/properties",
        json={"table": "user", "name": "account", "type": "string"}, headers=AUTH,
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    r = httpx.patch(patch, json={"login_user_key": "account"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["login_user_key"] == "account", r.text
    before = datetime.now(UTC)
    gio.send({"type": "user", "properties": {"mobile": "13900000101", "account": "A-1"}})
    mobiles = ("13900000101", "13900000102")
    for i, mobile in enumerate(mobiles):
        props = {"event_id": f"lg{i}", "mobile": mobile, "create_time": "2024-01-02 03:04:05"}
        gio.send({"type": "event", "event": "buy", "properties": props})
    assert server.runtime.ingest.barrier()
    pid = gio.info["project_id"]
    key = server.runtime.catalog.schema(pid).user["mobile"].id
    ids = {m: str(server.runtime.store.find_user(pid, (key, m))) for m in mobiles}
    hours = {local_hour(before), local_hour(datetime.now(UTC))}
    server.shift = timedelta(hours=2)
    try:
        _, events, _ = export_files(gio, server, hours, "custom_event")
        _, users, _ = export_files(gio, server, hours, "user")
    finally:
        server.shift = timedelta(0)
    got = {r["eventId"]: (r["visitUserId"], r["loginUserId"]) for r in events}
    assert got == {"lg0": (ids["13900000101"], "A-1"), "lg1": (ids["13900000102"], "")}
    got = {r["visitUserId"]: r["loginUserId"] for r in users}
    assert got == {ids["13900000101"]: "A-1", ids["13900000102"]: ""}
    # Back to our user id.
    r = httpx.patch(patch, json={"login_user_key": ""}, headers=AUTH)
    assert r.status_code == 200 and r.json()["login_user_key"] is None
