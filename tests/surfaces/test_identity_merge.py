"""Identity resolution over a live server: users known by different keys merge into one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Project

KEYS = ["mobile", "email", "wechat_id"]


def ok(resp: Any) -> None:
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"errcode": 0, "errmsg": "success"}


def set_keys(project: Project, keys: list[str]) -> None:
    resp = project.server.admin(
        "PUT", f"/projects/{project.name}/identity-keys", json={"keys": keys}
    )
    assert resp.status_code == 200, resp.text
    assert sorted(resp.json()["keys"]) == sorted(keys)


def profile(project: Project, **params: Any) -> dict[str, Any]:
    resp = project.profile(**params)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def stats(project: Project) -> dict[str, Any]:
    resp = project.server.admin("GET", f"/projects/{project.name}/stats")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def identities(prof: dict[str, Any]) -> dict[str, str]:
    pairs = [(i["key"], i["value"]) for i in prof["identities"]]
    assert len(pairs) == len(dict(pairs)), pairs  # one value per key here
    return dict(pairs)


@pytest.fixture
def three(project: Project) -> dict[str, Any]:
    """Users A (mobile), B (email) and C (wechat_id), each with properties and events, each
    sent in a flush of its own (the profile lookup between them is a barrier)."""
    set_keys(project, KEYS)
    # A
    ok(project.user(mobile="13900000001", city="Shanghai", tier="silver", a_only=1))
    ok(project.event("a-1", name="visit", mobile="13900000001", page="/home"))
    ok(project.event("a-2", name="order", mobile="13900000001", amount=10))
    a = profile(project, key="mobile", value="13900000001")
    # B: newer city, newer tier
    ok(project.user(email="Wang.Wu@Example.com", city="Beijing", tier="gold", b_only=True))
    for i in range(3):
        ok(project.event(f"b-{i}", name="order", email="wang.wu@example.com", amount=20 + i))
    b = profile(project, key="email", value="wang.wu@example.com")
    # C: the newest tier
    ok(project.user(wechat_id="wx_abc", tier="platinum", c_only="yes"))
    ok(project.event("c-1", name="share", wechat_id="wx_abc"))
    c = profile(project, key="wechat_id", value="wx_abc")

    ids = {a["user_id"], b["user_id"], c["user_id"]}
    assert len(ids) == 3, "three different people before the merge"
    assert (a["event_count"], b["event_count"], c["event_count"]) == (2, 3, 1)
    return {"a": a, "b": b, "c": c, "events": 6}


def merge_all(project: Project) -> None:
    ok(project.user(mobile="13900000001", email="WANG.WU@example.com", wechat_id="wx_abc"))


def test_three_way_merge_keeps_every_identity_property_and_event(
    project: Project, three: dict[str, Any]
) -> None:
    merge_all(project)
    by_mobile = profile(project, key="mobile", value="13900000001")
    by_email = profile(project, key="email", value="wang.wu@example.com")
    by_wechat = profile(project, key="wechat_id", value="wx_abc")

    survivor = by_mobile["user_id"]
    assert by_email["user_id"] == survivor
    assert by_wechat["user_id"] == survivor
    # The oldest user survives.
    assert survivor == min(three[k]["user_id"] for k in "abc")

    assert identities(by_mobile) == {
        "mobile": "13900000001",
        "email": "wang.wu@example.com",
        "wechat_id": "wx_abc",
    }
    props = by_mobile["properties"]
    assert props["a_only"] == 1
    assert props["b_only"] is True
    assert props["c_only"] == "yes"
    assert props["city"] == "Beijing"  # B was updated after A
    assert props["tier"] == "platinum"  # C was updated last
    assert props["mobile"] == "13900000001"
    assert props["wechat_id"] == "wx_abc"

    assert by_mobile["event_count"] == three["events"]
    assert {e["event_id"] for e in by_mobile["latest_events"]} == {
        "a-1",
        "a-2",
        "b-0",
        "b-1",
        "b-2",
        "c-1",
    }
    # created_at is the earliest of the three.
    assert by_mobile["created_at"] == min(three[k]["created_at"] for k in "abc")

    s = stats(project)
    assert (s["profiles"], s["identities"], s["events"]) == (1, 3, three["events"])

    # The users merged away are gone.
    for k in "abc":
        uid = three[k]["user_id"]
        resp = project.profile(user_id=uid)
        if uid == survivor:
            assert resp.status_code == 200
        else:
            assert resp.status_code == 404, resp.text


def test_merge_by_event_counts_the_merging_event_too(
    project: Project, three: dict[str, Any]
) -> None:
    ok(
        project.event(
            "m-1",
            name="link",
            mobile="13900000001",
            email="wang.wu@example.com",
            wechat_id="wx_abc",
        )
    )
    prof = profile(project, key="wechat_id", value="wx_abc")
    assert prof["event_count"] == three["events"] + 1
    assert len(prof["identities"]) == 3


def test_chained_merges_across_flushes(project: Project, three: dict[str, Any]) -> None:
    # A + B first, then (A+B) + C: the survivor stays the oldest and nothing is lost.
    ok(project.user(mobile="13900000001", email="wang.wu@example.com"))
    ab = profile(project, key="email", value="wang.wu@example.com")
    assert ab["user_id"] == min(three["a"]["user_id"], three["b"]["user_id"])
    assert ab["event_count"] == 5
    assert profile(project, key="wechat_id", value="wx_abc")["user_id"] != ab["user_id"]

    ok(project.user(email="wang.wu@example.com", wechat_id="wx_abc"))
    abc = profile(project, key="wechat_id", value="wx_abc")
    assert abc["user_id"] == min(three[k]["user_id"] for k in "abc")
    assert abc["event_count"] == 6
    assert len(abc["identities"]) == 3


def test_merge_within_one_batch(project: Project) -> None:
    """The same people sent without barriers between them (likely one flush) end up the same."""
    set_keys(project, KEYS)
    ok(project.user(mobile="m1", x=1))
    ok(project.event("e1", mobile="m1"))
    ok(project.user(email="e@x.com", y=2))
    ok(project.event("e2", email="e@x.com"))
    ok(project.user(wechat_id="w1", z=3))
    ok(project.event("e3", wechat_id="w1"))
    ok(project.user(mobile="m1", email="e@x.com", wechat_id="w1"))
    ok(project.event("e4", wechat_id="w1"))
    prof = profile(project, key="mobile", value="m1")
    assert prof["event_count"] == 4
    assert len(prof["identities"]) == 3
    assert {k: prof["properties"][k] for k in "xyz"} == {"x": 1, "y": 2, "z": 3}
    for key, value in (("email", "e@x.com"), ("wechat_id", "w1")):
        assert profile(project, key=key, value=value)["user_id"] == prof["user_id"]
    s = stats(project)
    assert (s["profiles"], s["identities"], s["events"]) == (1, 3, 4)


def test_resending_an_event_after_a_merge_updates_it(
    project: Project, three: dict[str, Any]
) -> None:
    merge_all(project)
    before = profile(project, key="mobile", value="13900000001")
    assert before["event_count"] == three["events"]

    # b-1 was B's; re-sent under C's key after the merge it is still one event.
    ok(project.event("b-1", name="order", wechat_id="wx_abc", amount=99))
    after = profile(project, key="mobile", value="13900000001")
    assert after["user_id"] == before["user_id"]
    assert after["event_count"] == three["events"]
    (b1,) = [e for e in after["latest_events"] if e["event_id"] == "b-1"]
    assert b1["properties"]["amount"] == 99
    assert stats(project)["events"] == three["events"]


def test_resending_an_event_in_the_merging_flush_updates_it(
    project: Project, three: dict[str, Any]
) -> None:
    # No barrier between the merge and the re-send.
    merge_all(project)
    ok(project.event("a-2", name="order", email="wang.wu@example.com", amount=11))
    prof = profile(project, key="wechat_id", value="wx_abc")
    assert prof["event_count"] == three["events"]
    (a2,) = [e for e in prof["latest_events"] if e["event_id"] == "a-2"]
    assert a2["properties"]["amount"] == 11


def test_user_delete_after_a_merge_removes_everything(
    project: Project, three: dict[str, Any]
) -> None:
    merge_all(project)
    survivor = profile(project, key="email", value="wang.wu@example.com")["user_id"]
    ok(project.send({"type": "user_delete", "properties": {"wechat_id": "wx_abc"}}))
    for key, value in (
        ("mobile", "13900000001"),
        ("email", "wang.wu@example.com"),
        ("wechat_id", "wx_abc"),
    ):
        assert project.profile(key=key, value=value).status_code == 404
    for k in "abc":
        assert project.profile(user_id=three[k]["user_id"]).status_code == 404
    s = stats(project)
    assert (s["profiles"], s["identities"], s["events"]) == (0, 0, 0)
    # Coming back, the person is someone new.
    ok(project.user(email="wang.wu@example.com"))
    again = profile(project, key="email", value="wang.wu@example.com")
    assert again["user_id"] != survivor
    assert again["event_count"] == 0
    assert "city" not in again["properties"]


def test_user_delete_and_merge_in_one_flush(project: Project, three: dict[str, Any]) -> None:
    # merge, delete and a new record for one of the keys, without barriers: log order holds.
    merge_all(project)
    ok(project.send({"type": "user_delete", "properties": {"mobile": "13900000001"}}))
    ok(project.user(wechat_id="wx_abc", fresh=1))
    prof = profile(project, key="wechat_id", value="wx_abc")
    assert prof["event_count"] == 0
    assert identities(prof) == {"wechat_id": "wx_abc"}
    assert prof["properties"] == {"wechat_id": "wx_abc", "fresh": 1}
    assert project.profile(key="mobile", value="13900000001").status_code == 404
    assert stats(project)["profiles"] == 1


def test_identity_keys_can_be_replaced(project: Project) -> None:
    set_keys(project, ["wechat_id"])
    resp = project.user(mobile="1", city="x")  # mobile is no longer an identity key
    assert resp.json()["errcode"] == 20001
    ok(project.user(wechat_id="w", mobile="1"))
    assert profile(project, key="wechat_id", value="w")["properties"]["mobile"] == "1"
    assert project.profile(key="mobile", value="1").status_code == 400
