"""The Dmartech single-record import API (seed 000) against a live server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Project


def ok(resp: Any) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"errcode": 0, "errmsg": "success"}


def errcode(resp: Any) -> int:
    return int(resp.json()["errcode"])


# ---- success ---------------------------------------------------------------------------------
def test_seed_example_event_is_stored_with_its_profile(project: Project) -> None:
    ok(
        project.send(
            {
                "type": "event",
                "event": "order_detail",
                "properties": {
                    "mobile": "18366668888",
                    "email": "zhangsan@sample.com",
                    "event_id": "2018071216423310001",
                    "create_time": "2018-07-12 16:42:33",
                    "shop_name": "静安店",
                    "amount": 88.5,
                    "item_num": 3,
                },
            }
        )
    )
    prof = project.profile(key="mobile", value="18366668888").json()
    assert prof["event_count"] == 1
    assert {i["key"]: i["value"] for i in prof["identities"]} == {
        "mobile": "18366668888",
        "email": "zhangsan@sample.com",
    }
    ev = prof["latest_events"][0]
    assert ev["event"] == "order_detail"
    assert ev["event_id"] == "2018071216423310001"
    # create_time is local time of the project (Asia/Shanghai, UTC+8); stored in UTC.
    assert ev["event_time"] == "2018-07-12T08:42:33Z"
    assert ev["properties"] == {"shop_name": "静安店", "amount": 88.5, "item_num": 3}


@pytest.mark.parametrize("path", ["/api/v1/api/import", "/etl/api/v1/api/import"])
@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json;charset=UTF-8", "text/plain", None]
)
def test_both_paths_and_any_content_type(
    project: Project, path: str, content_type: str | None
) -> None:
    body = b'{"type":"user","properties":{"mobile":"13800000001","city":"Hangzhou"}}'
    headers = {"content-type": content_type} if content_type else {}
    ok(project.send(body, path=path, headers=headers))


def test_unpadded_create_time_and_top_level_event_id(project: Project) -> None:
    ok(
        project.send(
            {
                "type": "event",
                "event": "visit",
                "event_id": "top-1",
                "create_time": "2024-1-2 3:4:5",
                "properties": {"mobile": "139"},
            }
        )
    )
    ev = project.profile(key="mobile", value="139").json()["latest_events"][0]
    assert ev["event_id"] == "top-1"
    assert ev["event_time"] == "2024-01-01T19:04:05Z"


def test_create_time_with_offset_is_not_shifted_again(project: Project) -> None:
    ok(project.event("off-1", mobile="1", create_time="2024-01-02 03:04:05+00:00"))
    ev = project.profile(key="mobile", value="1").json()["latest_events"][0]
    assert ev["event_time"] == "2024-01-02T03:04:05Z"


def test_resending_an_event_id_updates_instead_of_adding(project: Project) -> None:
    ok(project.event("dup-1", mobile="100", amount=1, note="first"))
    assert project.profile(key="mobile", value="100").json()["event_count"] == 1
    ok(project.event("dup-1", mobile="100", amount=2))
    ok(project.event("dup-1", mobile="100", amount=3))
    prof = project.profile(key="mobile", value="100").json()
    assert prof["event_count"] == 1
    # Re-sent properties replace; properties not re-sent stay.
    assert prof["latest_events"][0]["properties"] == {"amount": 3, "note": "first"}


def test_user_update_merges_properties_and_normalizes_email(project: Project) -> None:
    ok(project.user(email=" Li.Si@Example.com ", city="Beijing", level=2))
    ok(project.user(email="li.si@example.com", level=3, vip=True))
    prof = project.profile(key="email", value="LI.SI@EXAMPLE.COM").json()
    assert prof["properties"]["city"] == "Beijing"
    assert prof["properties"]["level"] == 3
    assert prof["properties"]["vip"] is True
    assert prof["event_count"] == 0


def test_user_delete_removes_profile_identities_and_events(project: Project) -> None:
    ok(project.user(mobile="200", email="del@x.com", city="Xi'an"))
    ok(project.event("del-1", mobile="200"))
    user_id = project.profile(key="mobile", value="200").json()["user_id"]
    ok(project.send({"type": "user_delete", "properties": {"email": "del@x.com"}}))
    assert project.profile(key="mobile", value="200").status_code == 404
    assert project.profile(user_id=user_id).status_code == 404
    stats = project.server.admin("GET", f"/projects/{project.name}/stats").json()
    assert (stats["profiles"], stats["events"], stats["identities"]) == (0, 0, 0)
    # The same person coming back is a new user.
    ok(project.user(mobile="200"))
    assert project.profile(key="mobile", value="200").json()["user_id"] != user_id


def test_unknown_properties_join_the_catalog_with_an_inferred_type(project: Project) -> None:
    ok(
        project.event(
            "inf-1",
            mobile="300",
            price=9.9,
            paid=True,
            tags=["a", "b"],
            paid_at="2024-05-06 07:08:09",
            channel="app",
        )
    )
    props = project.server.admin(
        "GET", f"/projects/{project.name}/properties", params={"table": "event"}
    ).json()
    types = {p["name"]: p["type"] for p in props}
    assert types == {
        "price": "number",
        "paid": "bool",
        "tags": "list",
        "paid_at": "datetime",
        "channel": "string",
    }
    assert all(p["column"].startswith("p_") for p in props)
    ev = project.profile(key="mobile", value="300").json()["latest_events"][0]
    assert ev["properties"]["paid_at"] == "2024-05-05T23:08:09Z"
    assert ev["properties"]["tags"] == ["a", "b"]


def test_property_names_any_vendor_allows(project: Project) -> None:
    names = {"#os": "ios", "#vp@test_num": 5, "城市": "上海", 'a"; DROP TABLE x; --': "y"}
    ok(project.user(mobile="301", **names))
    prof = project.profile(key="mobile", value="301").json()
    for name, value in names.items():
        assert prof["properties"][name] == value


# ---- return codes: one test per code ----------------------------------------------------------
def test_10001_malformed_json(project: Project) -> None:
    resp = project.send(b'{"type": "event", ')
    assert errcode(resp) == 10001
    assert "json" in resp.json()["errmsg"].lower()


def test_10001_malformed_utf8(project: Project) -> None:
    assert errcode(project.send(b'{"type":"user","properties":{"mobile":"\xff\xfe"}}')) == 10001


def test_10001_body_not_an_object(project: Project) -> None:
    assert errcode(project.send(b"[1, 2, 3]")) == 10001


@pytest.mark.parametrize("kind", ["events", "", None, 3, "USER"])
def test_10002_bad_type(project: Project, kind: Any) -> None:
    resp = project.send({"type": kind, "properties": {"mobile": "1"}})
    assert errcode(resp) == 10002
    assert "type" in resp.json()["errmsg"]


def test_10003_no_secret(project: Project) -> None:
    resp = project.http.post("/api/v1/api/import", json={"type": "user"})
    assert errcode(resp) == 10003
    assert errcode(project.send({"type": "user"}, secret="")) == 10003


@pytest.mark.parametrize("props", [None, {}, "", []])
def test_10004_empty_properties(project: Project, props: Any) -> None:
    body: dict[str, Any] = {"type": "user"}
    if props is not None:
        body["properties"] = props
    assert errcode(project.send(body)) == 10004


def test_20000_wrong_secret(project: Project) -> None:
    resp = project.send({"type": "user", "properties": {"mobile": "1"}}, secret="nope")
    assert errcode(resp) == 20000
    assert resp.status_code == 401


def test_20000_secret_of_another_project_cannot_write_here(project: Project, server: Any) -> None:
    other = server.new_project(f"{project.name}-other")
    ok(
        project.send(
            {"type": "user", "properties": {"mobile": "iso-1", "city": "A"}},
            secret=other["api_token"],
        )
    )
    assert project.profile(key="mobile", value="iso-1").status_code == 404
    assert server.profile(other["name"], key="mobile", value="iso-1").status_code == 200


def test_20001_no_identity_key(project: Project) -> None:
    resp = project.event("n-1", city="Shanghai")
    assert errcode(resp) == 20001
    assert "mobile" in resp.json()["errmsg"]


@pytest.mark.parametrize("values", [{"mobile": ""}, {"mobile": "  ", "email": None}])
def test_20002_identity_keys_all_empty(project: Project, values: dict[str, Any]) -> None:
    assert errcode(project.user(**values, city="x")) == 20002


@pytest.mark.parametrize(
    ("props", "field"),
    [
        ({"create_time": "2024-01-02 03:04:05"}, "event_id"),
        ({"event_id": "e", "create_time": None}, "create_time"),
        ({"event_id": "e", "create_time": "yesterday"}, "create_time"),
        ({"event_id": "e", "create_time": "99999-01-01 00:00:00"}, "create_time"),
        ({"event_id": "e", "create_time": "2024-02-30 00:00:00"}, "create_time"),
        ({"event_id": {"a": 1}, "create_time": "2024-01-02 03:04:05"}, "event_id"),
        ({"event_id": "e", "create_time": "2024-01-02 03:04:05", "nested": {"a": 1}}, "nested"),
    ],
)
def test_20003_invalid_event_fields(project: Project, props: dict[str, Any], field: str) -> None:
    resp = project.send({"type": "event", "event": "x", "properties": {"mobile": "1", **props}})
    assert errcode(resp) == 20003
    assert field in resp.json()["errmsg"]


def test_20003_value_of_the_wrong_type_names_the_property(project: Project) -> None:
    ok(project.user(mobile="400", age=30))
    resp = project.user(mobile="400", age="thirty")
    assert errcode(resp) == 20003
    assert "age" in resp.json()["errmsg"]


def test_20003_strict_schema_rejects_unknown_properties(server: Any) -> None:
    info = server.new_project("strict-one", strict_schema=True)
    p = Project(server, info)
    resp = p.user(mobile="1", surprise=1)
    assert errcode(resp) == 20003
    assert "surprise" in resp.json()["errmsg"]
    assert (
        server.admin(
            "POST",
            "/projects/strict-one/properties",
            json={"table": "user", "name": "surprise", "type": "number"},
        ).status_code
        == 201
    )
    ok(p.user(mobile="1", surprise=1))


def test_20003_oversized_body(project: Project) -> None:
    big = b'{"type":"user","properties":{"mobile":"1","x":"' + b"a" * (10 << 20) + b'"}}'
    resp = project.send(big)
    assert errcode(resp) == 20003
    assert "body" in resp.json()["errmsg"]


def test_20003_too_many_properties(project: Project) -> None:
    props = {f"p{i}": i for i in range(10_000)}
    resp = project.user(mobile="1", **props)
    assert errcode(resp) == 20003
    assert "properties" in resp.json()["errmsg"]


def test_bad_input_never_loses_other_records(project: Project) -> None:
    bad: list[bytes | dict[str, Any]] = [
        b"\xff\xfe\xfd",
        b'{"type":"event","properties":{"mobile":"1","event_id":"x","create_time":"99999-1-1"}}',
        {"type": "user", "properties": {"mobile": {"deep": {"er": [1, 2, {"x": 1}]}}}},
        {"type": "user", "properties": {"mobile": "1", "l": [[1, 2], [3]]}},
    ]
    for i in range(20):
        ok(project.event(f"keep-{i}", mobile="500"))
        assert errcode(project.send(bad[i % len(bad)])) != 0
    prof = project.profile(key="mobile", value="500").json()
    assert prof["event_count"] == 20


def test_no_stack_trace_in_any_error(project: Project) -> None:
    for body in (b"\x00\x01", b'{"type":"event","properties":{"mobile":"1"}}', b"{}" * 1000):
        text = project.send(body).text
        assert "Traceback" not in text and 'File "' not in text


def test_get_is_not_an_import(project: Project) -> None:
    resp = project.http.get("/api/v1/api/import", params={"secret": project.secret})
    assert resp.status_code == 405
    assert errcode(resp) != 0


def test_the_embedded_store_keeps_text_with_u0000(project: Project) -> None:
    """(A PostgreSQL store cannot: tests/surfaces/test_shared_engines.py.)"""
    r = project.event("n1", os="a\x00b", mobile="13800000001")
    assert r.json()["errcode"] == 0, r.text
    prof = project.profile(key="mobile", value="13800000001").json()
    assert prof["latest_events"][0]["properties"]["os"] == "a\x00b"
