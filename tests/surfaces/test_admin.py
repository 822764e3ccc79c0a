"""The native admin API (``/admin/v1``), ``/health`` and ``/metrics`` against a live server."""

from __future__ import annotations

import itertools
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Project
from tests.liveserver import ADMIN_TOKEN, TEST_STORE, LiveServer

_n = itertools.count(1)


def unique(prefix: str = "adm") -> str:
    return f"{prefix}-{next(_n)}-{uuid.uuid4().hex[:6]}"


def ok(resp: Any) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"errcode": 0, "errmsg": "success"}


def errcode(resp: Any) -> int:
    return int(resp.json()["errcode"])


def error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The admin API's error body, checked for its exact shape."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "field"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in resp.text
    return dict(err)


# ---- authentication ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/projects", "/health", "/projects/default", "/projects/default/stats"]
)
def test_no_token_is_401(server: LiveServer, path: str) -> None:
    resp = httpx.get(server.url + "/admin/v1" + path, timeout=30)
    error(resp, 401, "missing_credential")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer wrong", "auth_failed"),
        (f"Bearer {ADMIN_TOKEN}x", "auth_failed"),
        (f"Bearer {ADMIN_TOKEN[:-1]}", "auth_failed"),
        (f"Bearer {ADMIN_TOKEN.upper()}", "auth_failed"),
        (f"Basic {ADMIN_TOKEN}", "missing_credential"),
        (ADMIN_TOKEN, "missing_credential"),
        ("Bearer", "missing_credential"),
    ],
)
def test_wrong_token_is_401(server: LiveServer, header: str, code: str) -> None:
    resp = httpx.get(server.url + "/admin/v1/projects", headers={"Authorization": header})
    err = error(resp, 401, code)
    assert err["message"].startswith("Authorization")
    assert ADMIN_TOKEN not in resp.text


def test_wrong_token_cannot_write(server: LiveServer) -> None:
    name = unique()
    resp = httpx.post(
        server.url + "/admin/v1/projects",
        json={"name": name},
        headers={"Authorization": "Bearer nope"},
    )
    error(resp, 401, "auth_failed")
    names = [p["name"] for p in server.admin("GET", "/projects").json()]
    assert name not in names


def test_bearer_scheme_is_case_insensitive(server: LiveServer) -> None:
    resp = server.admin("GET", "/projects", headers={"Authorization": f"bearer {ADMIN_TOKEN}"})
    assert resp.status_code == 200, resp.text


# ---- health and metrics -----------------------------------------------------------------------
def test_health(server: LiveServer) -> None:
    resp = httpx.get(server.url + "/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    detail = server.admin("GET", "/health").json()
    assert detail["status"] == "ok"
    assert detail["store"] == ("clickhouse" if TEST_STORE == "chdb" else "duckdb")
    assert detail["projects"] >= 1
    assert detail["dead_letters"] == 0
    assert isinstance(detail["ingest_backlog"], int)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_imports(project: Project) -> None:
    def requests_ok(samples: dict[Any, float]) -> float:
        return samples.get(
            ("opencdp_requests_total", (("code", "0"), ("surface", "dmartech"))), 0.0
        )

    before = _samples(httpx.get(project.server.url + "/metrics").text)
    ok(project.user(mobile="m-1"))
    ok(project.event("met-1", mobile="m-1"))
    assert project.send({"type": "user", "properties": {}}).json()["errcode"] == 10004
    assert project.profile(key="mobile", value="m-1").status_code == 200  # flushed by now

    resp = httpx.get(project.server.url + "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert "opencdp_requests_total" in resp.text
    after = _samples(resp.text)
    assert requests_ok(after) - requests_ok(before) >= 2
    key_10004 = ("opencdp_requests_total", (("code", "10004"), ("surface", "dmartech")))
    assert after[key_10004] - before.get(key_10004, 0.0) >= 1
    assert after[("opencdp_flushed_records_total", ())] >= 2
    assert after[("opencdp_request_seconds_count", (("surface", "dmartech"),))] >= 3
    assert ("opencdp_ingest_backlog_records", ()) in after
    # No project names or user data in labels.
    assert project.name not in resp.text
    assert "m-1" not in resp.text


# ---- projects ---------------------------------------------------------------------------------
def test_create_get_and_list_project(server: LiveServer) -> None:
    name = unique()
    resp = server.admin("POST", "/projects", json={"name": name, "timezone": "Europe/Berlin"})
    assert resp.status_code == 201, resp.text
    info = resp.json()
    assert set(info) == {
        "project_id",
        "key",
        "name",
        "timezone",
        "strict_schema",
        "export_format",
        "wechat_envs",
        "login_user_key",
        "created_at",
        "client_id",
        "client_secret",
        "api_token",
    }
    assert info["name"] == name
    assert info["timezone"] == "Europe/Berlin"
    assert info["strict_schema"] is False
    assert info["export_format"] == "csv"
    assert info["api_token"] and info["client_secret"] and info["client_id"]

    public = {k: info[k] for k in ("project_id", "key", "name", "timezone", "strict_schema")}
    for ref in (info["project_id"], info["key"], name):
        got = server.admin("GET", f"/projects/{ref}")
        assert got.status_code == 200, got.text
        body = got.json()
        assert {k: body[k] for k in public} == public
        # Secrets are never shown again.
        assert "api_token" not in body and "client_secret" not in body

    listed = server.admin("GET", "/projects").json()
    mine = [p for p in listed if p["project_id"] == info["project_id"]]
    assert len(mine) == 1 and mine[0]["name"] == name
    assert info["api_token"] not in str(listed)
    ids = [p["project_id"] for p in listed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_new_project_starts_with_default_identity_keys(server: LiveServer) -> None:
    info = server.new_project(unique())
    keys = server.admin("GET", f"/projects/{info['project_id']}/identity-keys").json()
    assert keys == {"keys": ["mobile", "email"]}
    stats = server.admin("GET", f"/projects/{info['project_id']}/stats").json()
    assert (stats["profiles"], stats["events"], stats["identities"]) == (0, 0, 0)


def test_duplicate_project_name_is_a_conflict(server: LiveServer) -> None:
    name = unique()
    server.new_project(name)
    err = error(server.admin("POST", "/projects", json={"name": name}), 409, "conflict")
    assert err["field"] == "name"
    assert name in err["message"]
    # Surrounding blanks do not make a different name.
    error(server.admin("POST", "/projects", json={"name": f" {name} "}), 409, "conflict")
    assert [p["name"] for p in server.admin("GET", "/projects").json()].count(name) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "tz", "timezone": "Mars/Olympus"}, "timezone"),
        ({"name": "s", "strict_schema": "maybe"}, "strict_schema"),
        # A name must work wherever a project is referred to (by id, key or name).
        ({"name": "42"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"name": "."}, "name"),
        ({"name": ".."}, "name"),
    ],
)
def test_invalid_project_is_rejected_naming_the_field(
    server: LiveServer, body: dict[str, Any], field: str
) -> None:
    if "name" in body and body["name"] in ("tz", "s"):
        body = {**body, "name": unique(body["name"])}
    err = error(server.admin("POST", "/projects", json=body), 400, "validation_failed")
    assert err["field"] == field
    assert field in err["message"]


def test_unusual_names_are_reachable_by_name(server: LiveServer) -> None:
    for name in (unique("名前 with spaces?#&%"), unique("x.y"), unique("1e5"), unique("..a")):
        info = server.new_project(name)
        got = server.admin("GET", f"/projects/{quote(name, safe='')}")
        assert got.status_code == 200, (name, got.text)
        assert got.json()["project_id"] == info["project_id"]


def test_unknown_route_and_method_have_the_error_shape(server: LiveServer) -> None:
    error(server.admin("GET", "/no-such-thing"), 404, "not_found")
    resp = server.admin("DELETE", "/projects")
    error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers.get("allow", "")


def test_malformed_admin_body(server: LiveServer) -> None:
    resp = server.admin(
        "POST", "/projects", content=b"{nope", headers={"content-type": "application/json"}
    )
    error(resp, 400, "validation_failed")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("PATCH", ""),
        ("GET", "/stats"),
        ("GET", "/credentials"),
        ("POST", "/credentials/rotate"),
        ("GET", "/properties"),
        ("POST", "/properties"),
        ("GET", "/identity-keys"),
        ("PUT", "/identity-keys"),
        ("GET", "/profiles"),
    ],
)
def test_unknown_project_is_404(server: LiveServer, method: str, path: str) -> None:
    bodies = {
        "PATCH": {"strict_schema": True},
        "POST": {"table": "user", "name": "x", "type": "string"},
        "PUT": {"keys": ["mobile"]},
    }
    kw: dict[str, Any] = {}
    if method in bodies and not path.endswith("rotate"):
        kw["json"] = bodies[method]
    params = {"key": "mobile", "value": "1"} if path == "/profiles" else None
    for ref in ("no-such-project", "99999999"):
        resp = server.admin(method, f"/projects/{ref}{path}", params=params, **kw)
        err = error(resp, 404, "not_found")
        assert ref in err["message"]


# ---- credentials ------------------------------------------------------------------------------
def test_credentials_show_no_secrets(project: Project) -> None:
    resp = project.server.admin("GET", f"/projects/{project.name}/credentials")
    assert resp.status_code == 200
    body = resp.json()
    assert body["client_id"] == project.info["client_id"]
    assert body["project_id"] == project.info["project_id"]
    assert project.secret not in resp.text
    assert project.info["client_secret"] not in resp.text


def test_rotate_revokes_the_old_secret(project: Project) -> None:
    ok(project.user(mobile="r-1", city="before"))
    old_secret, old_client = project.secret, project.info["client_id"]

    resp = project.server.admin("POST", f"/projects/{project.name}/credentials/rotate")
    assert resp.status_code == 200, resp.text
    new = resp.json()
    assert new["project_id"] == project.info["project_id"]
    assert new["api_token"] != old_secret
    assert new["client_id"] != old_client
    assert new["client_secret"] != project.info["client_secret"]

    stale = project.send({"type": "user", "properties": {"mobile": "r-1", "city": "stale"}})
    assert errcode(stale) == 20000
    assert stale.status_code == 401
    ok(project.send({"type": "user", "properties": {"mobile": "r-2"}}, secret=new["api_token"]))

    prof = project.profile(key="mobile", value="r-1").json()
    assert prof["properties"]["city"] == "before"  # the stale write did not land
    assert project.profile(key="mobile", value="r-2").status_code == 200
    creds = project.server.admin("GET", f"/projects/{project.name}/credentials").json()
    assert creds["client_id"] == new["client_id"]

    # Rotating again revokes the second token too.
    again = project.server.admin("POST", f"/projects/{project.name}/credentials/rotate").json()
    assert errcode(project.user(mobile="r-3")) == 20000
    assert (
        errcode(
            project.send({"type": "user", "properties": {"mobile": "r-3"}}, secret=new["api_token"])
        )
        == 20000
    )
    ok(project.send({"type": "user", "properties": {"mobile": "r-3"}}, secret=again["api_token"]))


def test_export_format_patch(project: Project) -> None:
    path = f"/projects/{project.name}"
    resp = project.server.admin("PATCH", path, json={"export_format": "parquet"})
    assert resp.status_code == 200 and resp.json()["export_format"] == "parquet", resp.text
    assert project.server.admin("GET", path).json()["export_format"] == "parquet"
    bad = project.server.admin("PATCH", path, json={"export_format": "xlsx"})
    assert bad.status_code == 400 and "export_format" in bad.text


# ---- schema -----------------------------------------------------------------------------------
def test_strict_schema_patch(project: Project) -> None:
    path = f"/projects/{project.name}"
    ok(project.user(mobile="s-1", known=1))
    resp = project.server.admin("PATCH", path, json={"strict_schema": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["strict_schema"] is True
    assert project.server.admin("GET", path).json()["strict_schema"] is True

    rejected = project.user(mobile="s-1", unknown_prop="x")
    assert errcode(rejected) == 20003
    assert "unknown_prop" in rejected.json()["errmsg"]
    ev = project.event("s-ev", mobile="s-1", ev_prop=1)
    assert errcode(ev) == 20003
    assert "ev_prop" in ev.json()["errmsg"]
    ok(project.user(mobile="s-1", known=2))  # known properties still go in

    # An empty patch changes nothing.
    assert project.server.admin("PATCH", path, json={}).json()["strict_schema"] is True
    assert project.server.admin("PATCH", path, json={"strict_schema": False}).status_code == 200
    ok(project.user(mobile="s-1", unknown_prop="x"))
    props = project.profile(key="mobile", value="s-1").json()["properties"]
    assert props["known"] == 2 and props["unknown_prop"] == "x"


TYPED = [
    # (type, good value sent, value as stored/shown, bad value)
    ("string", 12, "12", {"a": 1}),
    ("number", "42.5", 42.5, "forty"),
    ("bool", "yes", True, "maybe"),
    ("datetime", "2024-1-2 3:4:5", "2024-01-01T19:04:05Z", "yesterday"),
    ("list", ["a", 1, True], ["a", "1", "true"], "a,b"),
]


@pytest.mark.parametrize("table", ["user", "event"])
def test_properties_of_every_type(project: Project, table: str) -> None:
    srv, path = project.server, f"/projects/{project.name}/properties"
    for ptype, *_ in TYPED:
        resp = srv.admin("POST", path, json={"table": table, "name": f"p_{ptype}", "type": ptype})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert (body["name"], body["table"], body["type"]) == (f"p_{ptype}", table, ptype)
        assert body["created"] is True and body["is_identity"] is False
        # Adding it again with the same type is a no-op.
        again = srv.admin("POST", path, json={"table": table, "name": f"p_{ptype}", "type": ptype})
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["column"] == body["column"]

    listed = srv.admin("GET", path, params={"table": table}).json()
    types = {p["name"]: p["type"] for p in listed}
    assert {f"p_{t}": t for t, *_ in TYPED}.items() <= types.items()
    assert all(p["table"] == table for p in listed)
    other = "event" if table == "user" else "user"
    assert not any(
        p["name"].startswith("p_") for p in srv.admin("GET", path, params={"table": other}).json()
    )
    everything = srv.admin("GET", path).json()
    assert {p["name"] for p in listed} <= {p["name"] for p in everything}

    # Good values are coerced to the declared type.
    good = {f"p_{t}": v for t, v, _, _ in TYPED}
    if table == "user":
        ok(project.user(mobile="typed", **good))
    else:
        ok(project.event("typed-1", mobile="typed", **good))
    prof = project.profile(key="mobile", value="typed").json()
    shown = prof["properties"] if table == "user" else prof["latest_events"][0]["properties"]
    for ptype, _, stored, _ in TYPED:
        assert shown[f"p_{ptype}"] == stored, ptype

    # A wrong-typed value afterwards is 20003 naming the property.
    for ptype, _, _, bad in TYPED:
        if table == "user":
            resp = project.user(mobile="typed", **{f"p_{ptype}": bad})
        else:
            resp = project.event("typed-2", mobile="typed", **{f"p_{ptype}": bad})
        assert errcode(resp) == 20003, (ptype, resp.text)
        assert f"p_{ptype}" in resp.json()["errmsg"]
    assert project.profile(key="mobile", value="typed").json()["event_count"] == (
        1 if table == "event" else 0
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"table": "user", "name": "x", "type": "integer"}, "type"),
        ({"table": "user", "name": "x", "type": ""}, "type"),
        ({"table": "user", "name": "x"}, "type"),
        ({"table": "users", "name": "x", "type": "string"}, "table"),
        ({"table": "user", "name": "", "type": "string"}, "name"),
        ({"table": "user", "name": "x\nb", "type": "string"}, "name"),
        ({"table": "event", "name": "x", "type": "string", "is_identity": True}, "is_identity"),
        ({"table": "user", "name": "x", "type": "number", "is_identity": True}, "type"),
    ],
)
def test_bad_property_names_the_field_and_registers_nothing(
    project: Project, body: dict[str, Any], field: str
) -> None:
    path = f"/projects/{project.name}/properties"
    before = project.server.admin("GET", path).json()
    err = error(project.server.admin("POST", path, json=body), 400, "validation_failed")
    assert err["field"] == field
    assert field in err["message"]
    assert project.server.admin("GET", path).json() == before
    keys = project.server.admin("GET", f"/projects/{project.name}/identity-keys").json()
    assert keys == {"keys": ["mobile", "email"]}


def test_property_type_never_changes(project: Project) -> None:
    path = f"/projects/{project.name}/properties"
    ok(project.user(mobile="t-1", age=30))  # inferred number
    resp = project.server.admin(
        "POST", path, json={"table": "user", "name": "age", "type": "string"}
    )
    err = error(resp, 409, "conflict")
    assert err["field"] == "type"
    (age,) = [p for p in project.server.admin("GET", path).json() if p["name"] == "age"]
    assert age["type"] == "number"


def test_identity_key_property(project: Project) -> None:
    srv = project.server
    resp = srv.admin(
        "POST",
        f"/projects/{project.name}/properties",
        json={"table": "user", "name": "member_no", "type": "string", "is_identity": True},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["is_identity"] is True
    keys = srv.admin("GET", f"/projects/{project.name}/identity-keys").json()["keys"]
    assert keys == ["mobile", "email", "member_no"]
    ok(project.user(member_no="M7", city="x"))
    assert project.profile(key="member_no", value="M7").json()["properties"]["city"] == "x"


@pytest.mark.parametrize(
    "body", [{"keys": []}, {"keys": [""]}, {}, {"keys": "mobile"}, {"keys": ["age"]}]
)
def test_bad_identity_keys(project: Project, body: dict[str, Any]) -> None:
    ok(project.user(mobile="k-1", age=3))
    resp = project.server.admin("PUT", f"/projects/{project.name}/identity-keys", json=body)
    err = error(resp, 400, "validation_failed")
    assert err["field"] == "keys"
    keys = project.server.admin("GET", f"/projects/{project.name}/identity-keys").json()
    assert keys == {"keys": ["mobile", "email"]}


# ---- profiles ---------------------------------------------------------------------------------
def test_profile_by_key_and_by_user_id(project: Project) -> None:
    ok(project.user(mobile="p-1", email="P@X.com", city="Suzhou"))
    ok(project.event("pe-1", name="visit", mobile="p-1", create_time="2024-02-03 04:05:06"))
    by_mobile = project.profile(key="mobile", value="p-1").json()
    by_email = project.profile(key="email", value=" p@x.COM ").json()
    by_id = project.profile(user_id=by_mobile["user_id"]).json()
    assert by_mobile == by_email == by_id
    assert set(by_mobile) == {
        "user_id",
        "created_at",
        "updated_at",
        "properties",
        "identities",
        "event_count",
        "latest_events",
    }
    assert by_mobile["properties"] == {"mobile": "p-1", "email": "P@X.com", "city": "Suzhou"}
    assert by_mobile["event_count"] == 1
    assert by_mobile["latest_events"][0]["event_time"] == "2024-02-02T20:05:06Z"
    assert by_mobile["created_at"].endswith("Z") and by_mobile["updated_at"].endswith("Z")


@pytest.mark.parametrize(
    "params",
    [{"key": "mobile", "value": "nobody"}, {"user_id": 987654}],
)
def test_unknown_profile_is_404(project: Project, params: dict[str, Any]) -> None:
    ok(project.user(mobile="somebody"))
    err = error(project.profile(**params), 404, "not_found")
    assert err["field"] in ("value", "user_id")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "key"),
        ({"key": "mobile"}, "key"),
        ({"key": "city", "value": "x"}, "key"),
        ({"key": "mobile", "value": "  "}, "value"),
        ({"user_id": "abc"}, "user_id"),
    ],
)
def test_bad_profile_query(project: Project, params: dict[str, Any], field: str) -> None:
    err = error(project.profile(**params), 400, "validation_failed")
    assert err["field"] == field


def test_latest_events_are_newest_first_and_bounded(project: Project) -> None:
    for i in range(25):
        ok(project.event(f"l-{i:02d}", mobile="l-1", create_time=f"2024-03-{i + 1:02d} 00:00:00"))
    prof = project.profile(key="mobile", value="l-1").json()
    assert prof["event_count"] == 25
    got = [e["event_id"] for e in prof["latest_events"]]
    assert got == [f"l-{i:02d}" for i in range(24, 4, -1)]


# ---- isolation --------------------------------------------------------------------------------
def test_projects_are_isolated(server: LiveServer) -> None:
    a = Project(server, server.new_project(unique("iso-a")))
    b = Project(server, server.new_project(unique("iso-b")))
    try:
        ok(a.user(mobile="shared", email="a@x.com", a_secret_prop="A-data"))
        for i in range(3):
            ok(a.event(f"a-ev-{i}", mobile="shared", a_event_prop=i))
        a_prof = a.profile(key="mobile", value="shared").json()

        # B sees nothing of A: not by key, not by A's user id, not in stats or the schema.
        error(b.profile(key="mobile", value="shared"), 404, "not_found")
        error(b.profile(key="email", value="a@x.com"), 404, "not_found")
        error(b.profile(user_id=a_prof["user_id"]), 404, "not_found")
        stats_b = server.admin("GET", f"/projects/{b.name}/stats").json()
        assert (stats_b["profiles"], stats_b["events"], stats_b["identities"]) == (0, 0, 0)
        b_props = {p["name"] for p in server.admin("GET", f"/projects/{b.name}/properties").json()}
        assert b_props == {"mobile", "email"}

        # B gets a user of its own, with the same mobile and possibly the same user id.
        ok(b.user(mobile="shared", b_prop="B-data"))
        b_prof = b.profile(key="mobile", value="shared").json()
        assert b_prof["properties"] == {"mobile": "shared", "b_prop": "B-data"}
        assert b_prof["event_count"] == 0
        assert "A-data" not in str(b_prof)
        by_id = b.profile(user_id=b_prof["user_id"]).json()
        assert by_id["properties"] == b_prof["properties"]

        # A is unchanged by B's writes.
        a_again = a.profile(key="mobile", value="shared").json()
        assert a_again["properties"] == a_prof["properties"]
        assert "b_prop" not in a_again["properties"]
        assert a_again["event_count"] == 3

        # B's secret writes only into B; rotating A leaves B's secret alone; strict A is not B.
        server.admin("POST", f"/projects/{a.name}/credentials/rotate")
        ok(b.user(mobile="b-only"))
        server.admin("PATCH", f"/projects/{a.name}", json={"strict_schema": True})
        ok(b.user(mobile="b-only", brand_new=1))
        error(a.profile(key="mobile", value="b-only"), 404, "not_found")
        assert server.admin("GET", f"/projects/{b.name}").json()["strict_schema"] is False

        # Identity keys are per project.
        server.admin("PUT", f"/projects/{b.name}/identity-keys", json={"keys": ["uid"]})
        assert server.admin("GET", f"/projects/{a.name}/identity-keys").json() == {
            "keys": ["mobile", "email"]
        }
    finally:
        a.http.close()
        b.http.close()
