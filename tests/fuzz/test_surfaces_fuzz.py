"""Hypothesis fuzzing of each vendor surface's request parsing, over HTTP on a live server.

Query strings, path segments, form fields and JSON bodies of the wrong shapes and types, huge
and negative numbers, odd dates and digits that are not ASCII. Whatever arrives, the answer
is never a 5xx nor the vendor's internal-error code, always has the surface's envelope, and
an error caused by the request names the field at fault. Jobs a fuzzed request started never
fail with an internal error either.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.liveserver import LiveServer

EXAMPLES = 100  # per test; each example is one request

# ---- values of the wrong kind -------------------------------------------------------------

EDGE_INTS = [0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**23, -(10**23), 10**400]
ODD_INTS = st.one_of(st.integers(), st.sampled_from(EDGE_INTS))
# Digits that are not ASCII ('²'.isdigit() is true; int('²') fails), numbers past every range.
ODD_DIGITS = st.sampled_from(
    ["²", "١٢", "１２", "⑧", "1e400", "9" * 30, "-" + "9" * 30, "9" * 5000]
)
ODD_TEXT = st.one_of(
    st.text(max_size=24),
    st.sampled_from(
        [
            "",
            " ",
            "\u0000",
            "a" * 300,
            "0",
            "00",
            "-0",
            "+1",
            "NaN",
            "null",
            "true",
            "[]",
            "{}",
            "0x10",
            "1.5",
        ]
    ),
    ODD_DIGITS,
    ODD_INTS.map(str),
)
# Dates Python cannot move by a day or an offset, dates that do not exist, odd forms.
EDGE_DATES = st.sampled_from(
    [
        "0001-01-01 00:00:00",
        "9999-12-31 23:59:59",
        "0001-01-01",
        "9999-12-31",
        "00010101",
        "99991231",
        "9999123123",
        "0001010100",
    ]
)
ODD_DATES = st.one_of(
    EDGE_DATES,
    st.sampled_from(
        [
            "2024-1-2 3:4:5",
            "",
            "2024-02-30",
            "2024-13-01",
            "1970-01-01T00:00:00Z",
            "2024010125",
            "202401011260",
            "0",
            "-1",
        ]
    ),
    st.from_regex(r"[0-9]{8}([0-9]{2}([0-9]{2})?)?", fullmatch=True),
    st.dates().map(str),
    ODD_DIGITS,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    ODD_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_TEXT,
    ODD_DATES,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{2,12}", fullmatch=True)


DROP = object()  # a mutation that removes the member


@st.composite
def mutated(
    draw: st.DrawFn, base: dict[str, Any], odd: dict[str, st.SearchStrategy[Any]]
) -> dict[str, Any]:
    """``base`` (a valid request) with up to two members made odd, or dropped: each example
    gets past every check but the ones it breaks. ``a.b`` names a member of a member."""
    out = json.loads(json.dumps(base))
    for path in draw(st.lists(st.sampled_from(sorted(odd)), max_size=2, unique=True)):
        value = draw(st.one_of(st.just(DROP), odd[path]))
        *parents, last = path.split(".")
        holder = out
        for name in parents:
            holder = holder.get(name) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        if value is DROP:
            holder.pop(last, None)
        else:
            holder[last] = value
    return out


def mostly(valid: Any, odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` two times in three, else an odd value."""
    return st.sampled_from([True, True, False]).flatmap(lambda ok: st.just(valid) if ok else odd)


def requests_of(
    base: dict[str, Any], odd: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """Mostly valid requests with odd members; now and then any JSON document at all."""
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda near: mutated(base, odd) if near else JSON
    )


def names_a_field(message: str, sent: Any, known: set[str]) -> bool:
    """Whether ``message`` names one of the surface's parameters or a name the request sent."""
    candidates = set(known)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                candidates.update({str(k), str(k)[:40], repr(str(k))})
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(sent)
    return any(c and c in message for c in candidates)


def seg(value: str) -> str:
    """``value`` as one path segment, percent-encoded."""
    return quote(value, safe="") or "x"


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


# ---- the server and its clients -----------------------------------------------------------


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A server of its own, with room for every import job the fuzzer starts.
    server = LiveServer(
        tmp_path_factory.mktemp("fuzz") / "data", OPENCDP_IMPORT_QUEUE="100000"
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def info(srv: LiveServer) -> dict[str, Any]:
    return srv.new_project("fuzzed")


@pytest.fixture(scope="module")
def http(srv: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


def wait_for_jobs(srv: LiveServer, project: str) -> None:
    """Every job of the project finishes, and none with an internal error."""
    deadline = time.monotonic() + 600  # a hang guard, not a performance limit
    while time.monotonic() < deadline:
        jobs = srv.admin("GET", f"/projects/{project}/imports").json()
        if all(j["state"] in ("complete", "failed") for j in jobs):
            bad = [j for j in jobs if "internal error" in j["message"]]
            assert not bad, bad
            return
        time.sleep(0.1)
    raise AssertionError("jobs never finished")


# ---- Dmartech (seed 000) ------------------------------------------------------------------

DMARTECH_FIELDS = {
    "body",
    "type",
    "properties",
    "event",
    "event_id",
    "create_time",
    "secret",
    "mobile",
    "email",
}
DMARTECH_CODES = {10001, 10002, 10003, 10004, 20000, 20001, 20002, 20003}


DMARTECH_EVENT = {
    "type": "event",
    "event": "buy",
    "properties": {
        "mobile": "13800000000",
        "event_id": "e-1",
        "create_time": "2024-05-01 10:00:00",
        "amount": 1,
    },
}
DMARTECH_ODD = {
    "type": st.one_of(st.sampled_from(["event", "user", "user_delete"]), SCALARS),
    "event": st.one_of(ODD_TEXT, SCALARS),
    "event_id": SCALARS,  # at top level
    "create_time": ODD_DATES,
    "properties": JSON,
    "properties.mobile": st.one_of(ODD_TEXT, ODD_INTS, SCALARS),
    "properties.event_id": st.one_of(ODD_TEXT, ODD_INTS, SCALARS),
    "properties.create_time": st.one_of(ODD_DATES, ODD_INTS, SCALARS),
    "properties.amount": JSON,
    "properties.when": st.one_of(ODD_DATES, SCALARS),
    "properties.tags": JSON,
}


def dmartech_bodies() -> st.SearchStrategy[Any]:
    return requests_of(DMARTECH_EVENT, DMARTECH_ODD)


@settings(max_examples=EXAMPLES * 2)
@given(
    body=dmartech_bodies(), path=st.sampled_from(["/api/v1/api/import", "/etl/api/v1/api/import"])
)
def test_dmartech(http: httpx.Client, info: dict[str, Any], body: Any, path: str) -> None:
    r = http.post(path, params={"secret": info["api_token"]}, content=dumps(body))
    assert r.status_code < 500, r.text
    answer = r.json()
    assert set(answer) == {"errcode", "errmsg"}, r.text
    if answer["errcode"] != 0:
        assert answer["errcode"] in DMARTECH_CODES, r.text
        assert names_a_field(answer["errmsg"], body, DMARTECH_FIELDS), r.text


# ---- ThinkingData's SDK receiver (/sync_server) ------------------------------------------

SDK_FIELDS = {
    "body", "data", "appid", "record", "properties", "#type", "#account_id", "#distinct_id",
    "#time", "#event_name", "#uuid", "#event_id", "#first_check_id", "#ip",
}  # fmt: skip
SDK_RECORD = {
    "#type": "track",
    "#account_id": "a1",
    "#distinct_id": "d1",
    "#event_name": "buy",
    "#time": "2024-05-01 10:00:00.000",
    "#uuid": "u-1",
    "properties": {"amount": 1, "#os": "ios", "tags": ["a"]},
}
SDK_ODD = {
    "#type": st.one_of(
        st.sampled_from(["track", "track_update", "track_overwrite", "user_set", "user_setOnce",
                         "user_add", "user_unset", "user_append", "user_uniq_append",
                         "user_del"]),
        SCALARS,
    ),
    "#account_id": st.one_of(ODD_TEXT, ODD_INTS, SCALARS, JSON),
    "#distinct_id": st.one_of(ODD_TEXT, ODD_INTS, SCALARS),
    "#event_name": st.one_of(ODD_TEXT, SCALARS),
    "#time": st.one_of(ODD_DATES, ODD_INTS, SCALARS),
    "#uuid": SCALARS,
    "#event_id": SCALARS,
    "#first_check_id": SCALARS,
    "#ip": SCALARS,
    "properties": JSON,
    "properties.amount": JSON,
    "properties.#os": JSON,
    "properties.tags": JSON,
}  # fmt: skip


@pytest.fixture(scope="module")
def td_appid(srv: LiveServer, info: dict[str, Any]) -> str:
    r = srv.admin("POST", f"/projects/{info['name']}/thinkingdata/app-ids", json={})
    return str(r.json()["app_id"])


@settings(max_examples=EXAMPLES * 2)
@given(
    records=st.lists(requests_of(SDK_RECORD, SDK_ODD), min_size=1, max_size=3),
    gzipped=st.booleans(),
)
def test_thinkingdata_sdk_receiver(
    http: httpx.Client, td_appid: str, records: list[Any], gzipped: bool
) -> None:
    body = dumps(records)
    headers = {"appid": td_appid, "compress": "gzip" if gzipped else "none"}
    r = http.post("/sync_server", content=gzip.compress(body) if gzipped else body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"code", "msg"}, r.text
    if answer["code"] != 0:
        assert answer["code"] == -1, r.text
        # A record at fault is named by its index (the body as a whole: a number JSON cannot
        # hold, such as 10**400, makes it unreadable).
        assert answer["msg"].startswith(("data[", "body: not valid JSON")), r.text
        assert names_a_field(answer["msg"], records, SDK_FIELDS), r.text


# ---- Marketo (seed 001) -------------------------------------------------------------------

MARKETO_FIELDS = {
    "format",
    "lookupField",
    "listId",
    "programId",
    "batchId",
    "file",
    "programMemberStatus",
    "access_token",
    "body",
    "charset",
    "method",
    "name",
    "partitionName",
    "Requested resource not found",
}


@pytest.fixture(scope="module")
def marketo_token(http: httpx.Client, info: dict[str, Any]) -> str:
    r = http.get(
        "/identity/oauth/token",
        params={
            "grant_type": "client_credentials",
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
        },
    )
    return str(r.json()["access_token"])


def marketo_answer(r: httpx.Response, sent: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text  # Marketo answers every API error with HTTP 200
    answer = dict(r.json())
    assert answer["requestId"] and isinstance(answer["success"], bool), r.text
    if not answer["success"]:
        (error,) = answer["errors"]
        codes = {"600", "601", "602", "609", "610", "612", "1003", "1008", "1016"}
        assert error["code"] in codes, r.text
        if error["code"] in ("1003", "609", "1008"):
            assert names_a_field(error["message"], sent, MARKETO_FIELDS), r.text
    return answer


MARKETO_ODD = {
    name: st.one_of(ODD_TEXT, st.sampled_from(["csv", "TSV", "email", "id", "1", "0"]))
    for name in (
        "format",
        "lookupField",
        "listId",
        "partitionName",
        "charset",
        "programMemberStatus",
    )
}


@settings(max_examples=EXAMPLES * 2)
@given(
    query=mutated({"format": "csv", "programMemberStatus": "Member"}, MARKETO_ODD),
    as_form=st.booleans(),
    content=mostly(
        b"email,score\na@example.com,1\n",
        st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
    ),
    kind=st.sampled_from(["leads", "objects", "members"]),
    path_value=mostly("1001", ODD_TEXT),
)
def test_marketo_imports(
    http: httpx.Client,
    marketo_token: str,
    query: dict[str, str],
    as_form: bool,
    content: bytes,
    kind: str,
    path_value: str,
) -> None:
    path = {
        "leads": "/bulk/v1/leads.json",
        "objects": f"/bulk/v1/customobjects/c{seg(path_value)}/import.json",
        "members": f"/bulk/v1/program/{seg(path_value)}/members/import.json",
    }[kind]
    r = http.post(
        path,
        params=None if as_form else query,
        data=query if as_form else None,
        files={"file": ("f.csv", content, "text/csv")},
        headers={"Authorization": f"Bearer {marketo_token}"},
    )
    marketo_answer(r, {**query, path_value: path_value})


@settings(max_examples=EXAMPLES)
@given(
    batch=mostly("1", ODD_TEXT),
    kind=st.sampled_from(
        [
            "leads/batch/{}.json",
            "leads/batch/{}/failures.json",
            "customobjects/car_c/import/{}/status.json",
            "program/members/import/{}/status.json",
        ]
    ),
    method=st.sampled_from(["GET", "GET", "POST", "PUT", "DELETE"]),
)
def test_marketo_batches(
    http: httpx.Client, marketo_token: str, batch: str, kind: str, method: str
) -> None:
    r = http.request(
        method,
        "/bulk/v1/" + kind.format(seg(batch)),
        headers={"Authorization": f"Bearer {marketo_token}"},
    )
    if r.headers["content-type"].startswith("text/csv"):
        return  # a batch's failures file, found
    marketo_answer(r, {"batchId": batch})


def test_marketo_jobs_never_fail_internally(srv: LiveServer, info: dict[str, Any]) -> None:
    """The imports the fuzzed requests started (runs after them)."""
    wait_for_jobs(srv, info["name"])


# ---- WeChat (seed 002) --------------------------------------------------------------------

WECHAT_FIELDS = {
    "env",
    "path",
    "collection_name",
    "file_path",
    "file_type",
    "conflict_mode",
    "stop_on_error",
    "job_id",
    "body",
    "access_token",
    "file_id",
    "method",
    "POST",
    "no such API",
}
WECHAT_CODES = {40097, 40101, 44002, 47001, 41001, 40001, 42001, 43002, -1}


@pytest.fixture(scope="module")
def wechat_token(http: httpx.Client, info: dict[str, Any]) -> str:
    r = http.get(
        "/cgi-bin/token",
        params={
            "grant_type": "client_credential",
            "appid": info["client_id"],
            "secret": info["client_secret"],
        },
    )
    return str(r.json()["access_token"])


def wechat_bodies(env: str) -> st.SearchStrategy[Any]:
    base = {
        "env": env,
        "collection_name": "docs",
        "file_path": "known.csv",
        "file_type": 2,
        "conflict_mode": 2,
        "stop_on_error": False,
        "job_id": 1,
        "path": "up.csv",
    }
    odd = {
        "env": SCALARS,
        "collection_name": st.one_of(st.sampled_from(["users", "events", "a b", "_x"]), SCALARS),
        "file_path": SCALARS,
        "file_type": st.one_of(st.sampled_from([1, 2, 1.0, True, "1", 3]), SCALARS),
        "conflict_mode": st.one_of(st.sampled_from([1, 2, 0, "2", False]), SCALARS),
        "stop_on_error": SCALARS,
        "job_id": st.one_of(ODD_INTS, SCALARS),
        "path": SCALARS,
    }
    return requests_of(base, odd)


@pytest.fixture(scope="module")
def wechat_file(http: httpx.Client, info: dict[str, Any], wechat_token: str) -> str:
    """A file the fuzzed imports may name: ``known.csv``."""
    link = http.post(
        "/tcb/uploadfile",
        params={"access_token": wechat_token},
        content=dumps({"env": info["key"], "path": "known.csv"}),
    ).json()
    r = httpx.post(
        link["url"],
        files={"file": ("f", b"mobile,n\n13800000000,1\n", "text/csv")},
        data={"x-cos-security-token": link["token"]},
    )
    assert r.status_code == 204, r.text
    return "known.csv"


@settings(max_examples=EXAMPLES * 2)
@given(
    data=st.data(),
    path=st.sampled_from(
        ["/tcb/databasemigrateimport", "/tcb/databasemigratequeryinfo", "/tcb/uploadfile"]
    ),
    method=st.sampled_from(["POST", "POST", "POST", "POST", "GET"]),
)
def test_wechat(
    http: httpx.Client,
    info: dict[str, Any],
    wechat_token: str,
    wechat_file: str,
    data: st.DataObject,
    path: str,
    method: str,
) -> None:
    body = data.draw(wechat_bodies(info["key"]))
    r = http.request(method, path, params={"access_token": wechat_token}, content=dumps(body))
    assert r.status_code < 500, r.text
    answer = r.json()
    assert isinstance(answer["errcode"], int) and isinstance(answer["errmsg"], str), r.text
    if answer["errcode"] != 0:
        assert answer["errcode"] in WECHAT_CODES, r.text
        if answer["errcode"] in (40097, 40101, 47001):
            assert names_a_field(answer["errmsg"], body, WECHAT_FIELDS), r.text


@settings(max_examples=EXAMPLES)
@given(file_id=mostly("1", ODD_TEXT), token=ODD_TEXT)
def test_wechat_upload_target(http: httpx.Client, file_id: str, token: str) -> None:
    r = http.post(
        f"/tcb/upload/{seg(file_id)}",
        files={"file": ("f", b"x")},
        data={"x-cos-security-token": token},
    )
    assert r.status_code in (400, 403, 404), r.text  # as object storage answers
    answer = r.json()
    assert answer["errcode"] in (40097, 40001), r.text


def test_wechat_jobs_never_fail_internally(srv: LiveServer, info: dict[str, Any]) -> None:
    wait_for_jobs(srv, info["name"])


# ---- ThinkingData (seed 003) --------------------------------------------------------------

TD_FIELDS = {
    "token",
    "projectId",
    "clusterId",
    "clusterName",
    "displayName",
    "clusterType",
    "clusterCatalog",
    "subConditionTabType",
    "remarks",
    "refreshAt",
    "qp",
    "tagQp",
    "sql",
    "pagerHeader",
    "pagerHeader.pageNum",
    "pagerHeader.pageSize",
    "clusterTypes",
    "mainColumnName",
    "body",
    "method",
    "userTagValueDefs",
}
TD_CODES = {-1008, -1001, -1002, -1003, -1004, -1005, -1006}


def td_answer(r: httpx.Response, sent: Any) -> None:
    assert r.status_code == 200, r.text  # errors are in the envelope, with HTTP 200
    answer = r.json()
    assert isinstance(answer["return_code"], int), r.text
    assert isinstance(answer["return_message"], str), r.text
    if answer["return_code"] != 0:
        assert answer["return_code"] in TD_CODES, r.text
        if answer["return_code"] in (-1003, -1008):
            assert names_a_field(answer["return_message"], sent, TD_FIELDS), r.text


TD_QP = {"filts": [{"columnName": "mobile", "comparator": "notNull", "tableType": "user"}]}


def td_bodies(project_id: int, name: str) -> st.SearchStrategy[Any]:
    base = {
        "projectId": project_id,
        "clusterName": name,
        "displayName": name,
        "clusterType": "cluster_by_static_condition",
        "qp": TD_QP,
        "pagerHeader": {"pageNum": 1, "pageSize": 10},
    }
    odd = {
        "projectId": st.one_of(ODD_INTS, SCALARS),
        "clusterName": st.one_of(NAMES, SCALARS),
        "displayName": st.one_of(NAMES, SCALARS),
        "clusterType": st.one_of(
            st.sampled_from(
                [
                    "cluster_by_dynamic_condition",
                    "cluster_by_static_sql",
                    "tag_by_static_condition",
                    "cluster_by_result",
                    "cluster_by_static_id",
                ]
            ),
            SCALARS,
        ),
        "clusterCatalog": st.one_of(st.sampled_from(["catalog_cluster", "catalog_tag"]), SCALARS),
        "qp": JSON,
        "qp.filts": JSON,
        "tagQp": JSON,
        "sql": st.one_of(st.just("select user_id from users"), SCALARS),
        "refreshAt": st.one_of(st.sampled_from(["01:00", "24:00", "1:5"]), SCALARS),
        "remarks": SCALARS,
        "pagerHeader": JSON,
        "pagerHeader.pageNum": st.one_of(ODD_INTS, SCALARS),
        "pagerHeader.pageSize": st.one_of(ODD_INTS, SCALARS),
        "clusterTypes": JSON,
        "subConditionTabType": SCALARS,
    }
    return requests_of(base, odd)


@settings(max_examples=EXAMPLES * 2)
@given(
    data=st.data(),
    path=st.sampled_from(
        [
            "/open/user-cluster-add",
            "/open/user-cluster-update",
            "/open/user-cluster-update-by-name",
            "/open/user-cluster-list",
        ]
    ),
    query=mutated(
        {"clusterId": "1", "clusterName": "c1"},
        {"clusterId": ODD_TEXT, "clusterName": ODD_TEXT, "projectId": ODD_TEXT},
    ),
    name=NAMES,
)
def test_thinkingdata_bodies(
    http: httpx.Client,
    info: dict[str, Any],
    data: st.DataObject,
    path: str,
    query: Any,
    name: str,
) -> None:
    body = data.draw(td_bodies(info["project_id"], name))
    r = http.post(path, params={"token": info["api_token"], **query}, content=dumps(body))
    td_answer(r, {**query, "body": body} if isinstance(body, dict) else query)


@settings(max_examples=EXAMPLES * 2)
@given(
    path=st.sampled_from(
        [
            "/open/user-cluster-detail",
            "/open/user-cluster-refresh-progress",
            "/open/user-cluster-refresh",
            "/open/user-cluster-delete",
            "/open/delete-user-cluster-by-name",
            "/open/import-id-cluster-add",
            "/open/import-id-cluster-modify",
            "/open/no-such-thing",
        ]
    ),
    query=mutated(
        {"clusterId": "1", "clusterName": "c1", "displayName": "d", "mainColumnName": "mobile"},
        {
            k: ODD_TEXT
            for k in (
                "clusterId",
                "clusterName",
                "projectId",
                "displayName",
                "mainColumnName",
                "clusterCatalog",
            )
        },
    ),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    csv=mostly(b"13800000000\n", st.binary(max_size=64)),
)
def test_thinkingdata_queries(
    http: httpx.Client,
    info: dict[str, Any],
    path: str,
    query: dict[str, str],
    method: str,
    csv: bytes,
) -> None:
    r = http.request(
        method,
        path,
        params={"token": info["api_token"], **query},
        content=csv if method != "GET" else None,
        headers={"Content-Type": "text/csv"},
    )
    td_answer(r, query)


# ---- GrowingIO (seed 004) -----------------------------------------------------------------

GIO_FIELDS = {
    "export_type",
    "data_type",
    "export_date",
    "expire",
    "minutes",
    "minute",
    "ai",
    "project",
    "tm",
    "auth",
    "X-Client-Id",
    "Authorization",
    "body",
    "method",
    "not found",
}


def gio_answer(r: httpx.Response, sent: Any) -> None:
    assert r.status_code < 500, r.text
    answer = r.json()
    if r.status_code != 200:
        assert answer["status"] == "error" and answer["errorMsg"], r.text
        if r.status_code == 400:
            assert names_a_field(answer["errorMsg"], sent, GIO_FIELDS), r.text
    else:
        assert answer["status"] in ("success", "FINISHED", "RUNNING", "NOT_EXISTS", "ERROR")


@pytest.fixture(scope="module")
def gio_code(http: httpx.Client, info: dict[str, Any]) -> str:
    return gio_token(http, info)


def gio_token(http: httpx.Client, info: dict[str, Any]) -> str:
    tm = str(int(time.time() * 1000))
    message = f"POST\n/auth/token\nproject={info['key']}&ai={info['key']}&tm={tm}"
    auth = hmac.new(info["client_secret"].encode(), message.encode(), hashlib.sha256).hexdigest()
    r = http.post(
        "/auth/token",
        headers={"X-Client-Id": info["client_id"]},
        data={"project": info["key"], "ai": info["key"], "tm": tm, "auth": auth},
    )
    return str(r.json()["code"])


@settings(max_examples=EXAMPLES * 2)
@given(
    export_type=mostly("day", ODD_TEXT),
    data_type=mostly(None, st.one_of(st.sampled_from(["custom_event", "visit"]), ODD_TEXT)),
    export_date=mostly("20240501", ODD_DATES),
    expire=mutated({}, {"expire": ODD_TEXT, "minutes": ODD_TEXT, "minute": ODD_TEXT}),
    method=st.sampled_from(["GET", "GET", "GET", "GET", "POST"]),
)
def test_growingio_exports(
    http: httpx.Client,
    info: dict[str, Any],
    gio_code: str,
    export_type: str,
    data_type: str | None,
    export_date: str,
    expire: dict[str, str],
    method: str,
) -> None:
    parts = [export_type, *([data_type] if data_type is not None else []), info["key"]]
    path = "/v2/insights/" + "/".join(seg(p) for p in parts)
    r = http.request(
        method,
        f"{path}/{seg(export_date)}.json",
        params=expire,
        headers={"X-Client-Id": info["client_id"], "Authorization": gio_code},
    )
    gio_answer(r, {**expire, "export_type": 1, "data_type": 1, "export_date": 1})


@settings(max_examples=EXAMPLES)
@given(
    fields=mutated(
        {"project": "P", "ai": "P", "tm": "T"},
        {k: st.one_of(ODD_TEXT, ODD_DATES) for k in ("project", "ai", "tm", "auth")},
    ),
    sign=st.booleans(),
    in_query=st.booleans(),
)
def test_growingio_token(
    http: httpx.Client, info: dict[str, Any], fields: dict[str, str], sign: bool, in_query: bool
) -> None:
    fields = {
        k: info["key"] if v == "P" else str(int(time.time() * 1000)) if v == "T" else v
        for k, v in fields.items()
    }
    if sign:  # signed as the client would, whatever the fields hold
        message = (
            f"POST\n/auth/token\nproject={fields.get('project', '')}"
            f"&ai={fields.get('ai', '')}&tm={fields.get('tm', '')}"
        )
        fields = {
            **fields,
            "auth": hmac.new(
                info["client_secret"].encode(), message.encode(), hashlib.sha256
            ).hexdigest(),
        }
    r = http.post(
        "/auth/token",
        headers={"X-Client-Id": info["client_id"]},
        params=fields if in_query else None,
        data=None if in_query else fields,
    )
    gio_answer(r, fields)
