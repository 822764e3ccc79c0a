"""The ThinkingData user-cluster and tag API (seed 003) over HTTP, against a live server."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.conftest import Project

SHANGHAI = ZoneInfo("Asia/Shanghai")
_n = itertools.count(1)

SEED_QP = {
    "events": [
        {
            "comparator": "greater",
            "eventName": "consume_item",
            "num": "4",
            "recentDay": "1-7",
            "taPropQuota": {"analysis": "TIMES"},
        }
    ],
    "event_relation": "and",
    "filts": [
        {"columnName": "user_level", "comparator": "equal", "ftv": ["3"], "tableType": "user"}
    ],
    "relation": "and",
    "event_user_relation": "and",
}


def days_ago(n: int, hour: int = 12) -> str:
    day = datetime.now(SHANGHAI).date() - timedelta(days=n)
    return f"{day} {hour:02d}:00:00"


class TA:
    def __init__(self, project: Project) -> None:
        self.p = project
        self.pid = project.info["project_id"]
        self.http = project.http

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None, **query: Any
    ) -> dict[str, Any]:
        params = {"token": self.p.secret if token is None else token, **query}
        if isinstance(body, str | bytes):
            r = self.http.request(
                method, path, params=params, content=body, headers={"Content-Type": "text/csv"}
            )
        else:
            r = self.http.request(method, path, params=params, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def add(self, name: str, **body: Any) -> dict[str, Any]:
        payload = {"projectId": self.pid, "clusterName": name, "displayName": name, **body}
        return self.call("POST", "/open/user-cluster-add", payload)

    def wait(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 300  # a hang guard, not a performance limit
        while time.monotonic() < deadline:
            r = self.call(
                "GET", "/open/user-cluster-refresh-progress-by-name",
                projectId=self.pid, clusterName=name,
            )  # fmt: skip
            assert r["return_code"] == 0, r
            if r["data"]["progress"] in (100, -1):
                return self.detail(name)
            time.sleep(0.05)
        raise AssertionError("refresh never finished")

    def detail(self, name: str) -> dict[str, Any]:
        r = self.call("GET", "/open/user-cluster-detail", projectId=self.pid, clusterName=name)
        assert r["return_code"] == 0, r
        return dict(r["data"])

    def members(self, name: str) -> dict[int, str | None]:
        r = self.p.server.admin("GET", f"/projects/{self.p.name}/segments/{name}/members")
        assert r.status_code == 200, r.text
        return {m["user_id"]: m.get("tag_value") for m in r.json()["members"]}

    def uid(self, mobile: str) -> int:
        return int(self.p.profile(key="mobile", value=mobile).json()["user_id"])


@pytest.fixture
def ta(project: Project) -> TA:
    return TA(project)


def people(ta: TA) -> None:
    """a: level 3, 5 purchases; b: level 3, 2 purchases; c: level 2, 6 purchases; d: level 3,
    none; e: level 3, 5 purchases but 10 days ago."""
    p = ta.p
    for mobile, level in (("a", 3), ("b", 3), ("c", 2), ("d", 3), ("e", 3)):
        assert (
            p.user(mobile=f"1390000000{mobile}", user_level=level, city="x").json()["errcode"] == 0
        )
    n = itertools.count()
    for mobile, count, ago in (("a", 5, 2), ("b", 2, 2), ("c", 6, 3), ("e", 5, 10)):
        for i in range(count):
            r = p.event(
                f"ev{mobile}{next(n)}", "consume_item", mobile=f"1390000000{mobile}",
                amount=10 * (i + 1), create_time=days_ago(ago, 8 + i),
            )  # fmt: skip
            assert r.json()["errcode"] == 0, r.text
    p.event("pay1", "pay", mobile="1390000000a", amount=7, os="android", create_time=days_ago(1))
    p.event("pay2", "pay", mobile="1390000000a", amount=9, os="ios", create_time=days_ago(0, 0))
    p.event("pay3", "pay", mobile="1390000000b", amount=4, os="android", create_time=days_ago(1))


def test_the_seed_example_cluster(ta: TA) -> None:
    people(ta)
    r = ta.add(
        "recent_7_days_consume", clusterCatalog="catalog_cluster",
        clusterType="cluster_by_static_condition", qp=SEED_QP,
    )  # fmt: skip
    assert r["return_code"] == 0 and isinstance(r["data"], int), r
    d = ta.wait("recent_7_days_consume")
    assert (d["progress"], d["usersNum"], d["id"]) == (100, 1, r["data"])
    assert set(ta.members("recent_7_days_consume")) == {ta.uid("1390000000a")}
    ev = d["userClusterDef"]["events"][0]
    today = datetime.now(SHANGHAI).date()
    assert ev["startTime"] == f"{today - timedelta(days=7)} 00:00:00"
    assert ev["endTime"] == f"{today - timedelta(days=1)} 23:59:59"
    assert d["refreshTime"][:10] == str(today)
    listed = ta.call(
        "POST", "/open/user-cluster-list",
        {"projectId": ta.pid, "clusterCatalog": "catalog_cluster",
         "clusterTypes": ["cluster_by_static_condition"], "clusterName": "7_days",
         "pagerHeader": {"pageNum": 1, "pageSize": 10}},
    )  # fmt: skip
    assert listed["data"]["pagerResult"]["totalNum"] == 1
    assert listed["data"]["userClusters"][0]["usersNum"] == 1


def test_or_definitions_and_users_without_events(ta: TA) -> None:
    people(ta)
    qp = {
        "events": [
            {"eventName": "consume_item", "comparator": "less", "num": "3",
             "taPropQuota": {"analysis": "TIMES"}, "recentDay": "0-7"},
            {"eventName": "pay", "comparator": "greaterEqual", "num": "16",
             "taPropQuota": {"analysis": "SUM", "quota": "amount"}, "recentDay": "0-1"},
        ],
        "event_relation": "or",
        "filts": [{"columnName": "user_level", "comparator": "equal", "ftv": ["3"]}],
        "event_user_relation": "and",
    }  # fmt: skip
    assert ta.add("orclust", qp=qp)["return_code"] == 0
    assert ta.wait("orclust")["progress"] == 100
    # b: 2 purchases; d and e: none in the window (fewer than 3 includes none); a: pays 16.
    expected = {ta.uid(f"1390000000{m}") for m in "abde"}
    assert set(ta.members("orclust")) == expected


def test_condition_tags(ta: TA) -> None:
    people(ta)
    tag_qp = {
        "userTagValueDefs": [
            {"tagValue": "heavy", "userClusterDef": {"events": [
                {"eventName": "consume_item", "comparator": "greater", "num": "4",
                 "taPropQuota": {"analysis": "TIMES"}}]}},
            {"tagValue": "some", "userClusterDef": {"events": [
                {"eventName": "consume_item", "comparator": "greater", "num": "0",
                 "uceCalcuSymbol": "greater", "taPropQuota": {"analysis": "TIMES"}}]}},
        ]
    }  # fmt: skip
    r = ta.add(
        "usage", clusterCatalog="catalog_tag", clusterType="tag_by_static_condition",
        subConditionTabType="tag_condition_default", tagQp=tag_qp,
    )  # fmt: skip
    assert r["return_code"] == 0, r
    d = ta.wait("usage")
    assert d["progress"] == 100 and d["clusterCatalog"] == "catalog_tag"
    m = {k: v for k, v in ta.members("usage").items()}
    u = {x: ta.uid(f"1390000000{x}") for x in "abce"}
    assert m == {u["a"]: "heavy", u["b"]: "some", u["c"]: "heavy", u["e"]: "heavy"}

    first = {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
        "calcPropVo": {"isCalc": False, "property": {"columnName": "os", "tableType": "event"}},
        "eventName": "pay", "isFirstEvent": False, "recentDay": "0-1", "filts": [],
    }}}  # fmt: skip
    assert ta.add("lastos", clusterCatalog="catalog_tag", tagQp=first)["return_code"] == 0
    assert ta.wait("lastos")["subConditionTabType"] == "tag_condition_by_firstlast_event"
    assert ta.members("lastos") == {u["a"]: "ios", u["b"]: "android"}

    quota = {"userTagConQuotaDef": {"userTagConQuotaEvent": {
        "type": "normal", "quota": "amount", "analysis": "SUM", "eventName": "pay",
        "recentDay": "0-1",
    }}}  # fmt: skip
    assert ta.add("paid", clusterCatalog="catalog_tag", tagQp=quota)["return_code"] == 0
    ta.wait("paid")
    assert ta.members("paid") == {u["a"]: "16", u["b"]: "4"}


def test_id_upload_clusters_and_tags(ta: TA) -> None:
    people(ta)
    r = ta.call(
        "POST", "/open/import-id-cluster-add", "mobile\n1390000000a\n1390000000b\nnobody\n",
        projectId=ta.pid, displayName="uploaded", mainColumnName="mobile", clusterName="upl",
    )  # fmt: skip
    assert r["return_code"] == 0, r
    assert r["data"] == {
        "clusterId": r["data"]["clusterId"], "uploadNum": 3, "userNum": 2,
        "unmatchedNum": 1, "tagValueNullNum": 0,
    }  # fmt: skip
    assert set(ta.members("upl")) == {ta.uid("1390000000a"), ta.uid("1390000000b")}
    # Modify replaces the members; the previous version is kept (historyDataStatus).
    r = ta.call(
        "POST", "/open/import-id-cluster-modify-by-name", "1390000000c\n",
        projectId=ta.pid, clusterName="upl",
    )  # fmt: skip
    assert r["data"]["userNum"] == 1
    assert set(ta.members("upl")) == {ta.uid("1390000000c")}
    assert ta.detail("upl")["historyDataStatus"] == 1
    changes = ta.p.server.admin("GET", f"/projects/{ta.p.name}/segments/upl/changes").json()
    assert changes["entered"] == [ta.uid("1390000000c")]
    assert sorted(changes["left"]) == sorted([ta.uid("1390000000a"), ta.uid("1390000000b")])
    # Tags take id,tagValue rows.
    r = ta.call(
        "POST", "/open/import-id-cluster-add", "id,tagValue\n1390000000a,gold\n1390000000b,\n",
        projectId=ta.pid, displayName="tier", mainColumnName="mobile",
        clusterCatalog="catalog_tag", clusterName="tier",
    )  # fmt: skip
    assert (r["data"]["userNum"], r["data"]["tagValueNullNum"]) == (1, 1), r
    assert ta.members("tier") == {ta.uid("1390000000a"): "gold"}
    # A user property works as the main column too; an unknown one is refused.
    r = ta.call(
        "POST", "/open/import-id-cluster-add", "3\n",
        projectId=ta.pid, displayName="lvl", mainColumnName="user_level",
    )  # fmt: skip
    assert r["data"]["userNum"] == 4
    r = ta.call(
        "POST", "/open/import-id-cluster-add", "x\n",
        projectId=ta.pid, displayName="bad", mainColumnName="nope",
    )  # fmt: skip
    assert r["return_code"] == -1003 and "mainColumnName" in r["return_message"]


def test_sql_clusters(ta: TA) -> None:
    people(ta)
    sql = "SELECT user_id FROM events WHERE event_name = 'pay' GROUP BY 1 HAVING sum(amount) > 5"
    r = ta.add("bysql", clusterType="cluster_by_static_sql", qp={"sql": sql})
    assert r["return_code"] == 0, r
    assert ta.wait("bysql")["progress"] == 100
    assert set(ta.members("bysql")) == {ta.uid("1390000000a")}
    for bad, why in (
        ("DELETE FROM users", "only a SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "function or a file"),
        ("SELECT user_id FROM p1_profiles", "reads only users, events"),
        ("SELECT user_id FROM users; DROP TABLE users", "exactly one"),
    ):
        r = ta.add(f"bad{next(_n)}", clusterType="cluster_by_static_sql", qp={"sql": bad})
        assert r["return_code"] == -1003 and why in r["return_message"], (bad, r)


def test_refresh_sees_what_was_acknowledged_and_keeps_history(ta: TA) -> None:
    people(ta)
    qp = {"filts": [{"columnName": "city", "comparator": "equal", "ftv": ["Paris"]}]}
    ta.add("paris", qp=qp, clusterType="cluster_by_dynamic_condition")
    assert ta.wait("paris")["usersNum"] == 0
    ta.p.user(mobile="1390000000a", city="Paris")
    r = ta.call(
        "POST", "/open/user-cluster-refresh", projectId=ta.pid, clusterId=ta.detail("paris")["id"]
    )
    assert r["return_code"] == 0, r
    d = ta.wait("paris")
    assert (d["usersNum"], d["historyDataStatus"]) == (1, 1)
    # Updating the definition refreshes it.
    qp["filts"][0]["ftv"] = ["x"]
    r = ta.call(
        "POST", "/open/user-cluster-update-by-name",
        {"projectId": ta.pid, "clusterType": "cluster_by_dynamic_condition", "qp": qp},
        projectId=ta.pid, clusterName="paris",
    )  # fmt: skip
    assert r["return_code"] == 0, r
    assert ta.wait("paris")["usersNum"] == 4


def test_errors(ta: TA, server: Any) -> None:
    r = ta.call("GET", "/open/user-cluster-detail", token="", projectId=ta.pid, clusterId=1)
    assert r["return_code"] == -1008
    r = ta.call("GET", "/open/user-cluster-detail", token="nope", projectId=ta.pid, clusterId=1)
    assert r["return_code"] == -1001
    r = ta.call("GET", "/open/user-cluster-detail", projectId=ta.pid, clusterId=999999)
    assert r["return_code"] == -1002
    r = ta.call("GET", "/open/user-cluster-detail", projectId=ta.pid)
    assert r["return_code"] == -1008 and "clusterId" in r["return_message"]
    assert ta.add("bad name!", qp=SEED_QP)["return_code"] == -1003
    assert ta.add("x" * 25, qp=SEED_QP)["return_code"] == -1003
    r = ta.add("okname", qp=SEED_QP, displayName="d" * 51)
    assert r["return_code"] == -1003 and "displayName" in r["return_message"]
    r = ta.add("unknownprop", qp=SEED_QP)  # no user_level property in this project
    assert r["return_code"] == -1003 and "user_level" in r["return_message"], r
    ta.p.user(mobile="1", user_level=1)
    assert ta.add("dup", qp=SEED_QP)["return_code"] == 0
    assert ta.add("dup", qp=SEED_QP)["return_code"] == -1004
    r = ta.add("result", clusterType="cluster_by_result", qp={})
    assert r["return_code"] == -1006 and "unsupported cluster type" in r["return_message"]
    bad = {**SEED_QP, "events": [{**SEED_QP["events"][0], "recentDay": "7-1"}]}
    r = ta.add("badday", qp=bad)
    assert r["return_code"] == -1003 and "recentDay" in r["return_message"]
    bad = {**SEED_QP, "events": [{**SEED_QP["events"][0], "num": "four"}]}
    r = ta.add("badnum", qp=bad)
    assert r["return_code"] == -1003 and "num" in r["return_message"]
    r = ta.add("empty", qp={"events": [], "filts": []})
    assert r["return_code"] == -1003
    # Another project's cluster is not found, by id or by name.
    other = TA(Project(server, server.new_project(f"ta_other{next(_n)}")))
    cid = ta.detail("dup")["id"]
    r = other.call("GET", "/open/user-cluster-detail", projectId=other.pid, clusterId=cid)
    assert r["return_code"] == -1002
    r = other.call("POST", "/open/user-cluster-delete", projectId=other.pid, clusterId=cid)
    assert r["return_code"] == -1002
    r = other.call("GET", "/open/user-cluster-detail", projectId=ta.pid, clusterId=cid)
    assert r["return_code"] == -1002  # a token never reads another project
    # Deleting by name; then it is gone.
    r = ta.call("POST", "/open/delete-user-cluster-by-name", projectId=ta.pid, clusterName="dup")
    assert r["return_code"] == 0
    assert (
        ta.call("GET", "/open/user-cluster-detail", projectId=ta.pid, clusterId=cid)["return_code"]
        == -1002
    )
    r = httpx.get(ta.p.server.url + "/open/nothing-here", params={"token": ta.p.secret})
    assert r.json()["return_code"] == -1002
    huge = '{"clusterName": "big", "pad": "' + "x" * (2 << 20) + '"}'
    r = ta.http.post("/open/user-cluster-add", params={"token": ta.p.secret}, content=huge)
    assert r.json()["return_code"] == -1003 and "larger than" in r.json()["return_message"]


def test_injection_attempts_are_refused_or_plain_values(ta: TA) -> None:
    evil = "x'; DROP TABLE p1_profiles; --"
    ta.p.user(mobile="1390000000q", nick=evil)
    ta.p.event("inj1", evil, mobile="1390000000q", note=evil)
    # As values they match literally, and nothing else happens.
    qp = {
        "filts": [{"columnName": "nick", "comparator": "equal", "ftv": [evil]}],
        "events": [
            {"eventName": evil, "comparator": "greaterEqual", "num": "1",
             "filts": [{"columnName": "note", "comparator": "include", "ftv": ["'; DROP"],
                        "tableType": "event"}]}
        ],
    }  # fmt: skip
    assert ta.add("inj", qp=qp)["return_code"] == 0
    assert ta.wait("inj")["usersNum"] == 1
    assert set(ta.members("inj")) == {ta.uid("1390000000q")}
    # As names they are unknown properties, or invalid names.
    for column in (evil, "p_1", "user_id", 'nick" OR 1=1 --'):
        bad = {"filts": [{"columnName": column, "comparator": "isNull"}]}
        r = ta.add(f"inj{next(_n)}", qp=bad)
        assert r["return_code"] == -1003 and "unknown user property" in r["return_message"], r
    assert ta.add(evil, qp=qp)["return_code"] == -1003  # clusterName
    r = ta.call("GET", "/open/user-cluster-detail", projectId=ta.pid, clusterName=evil)
    assert r["return_code"] == -1002
    r = ta.call(
        "GET", "/open/user-cluster-detail", projectId=f"{ta.pid} OR 1=1", clusterName="inj"
    )  # fmt: skip
    assert r["return_code"] == -1003 and "projectId" in r["return_message"]  # not an id
    # Everything is still there.
    assert ta.p.profile(key="mobile", value="1390000000q").json()["properties"]["nick"] == evil


def test_project_id_is_required_and_must_be_the_tokens(ta: TA) -> None:
    """The seed marks projectId required on every endpoint: without it -1008 names it; another
    project's id is refused."""
    r = ta.call("GET", "/open/user-cluster-detail", clusterName="x")
    assert r["return_code"] == -1008 and "projectId" in r["return_message"], r
    r = ta.call("POST", "/open/user-cluster-list", {"pagerHeader": {"pageNum": 1, "pageSize": 5}})
    assert r["return_code"] == -1008 and "projectId" in r["return_message"], r
    other = ta.p.server.new_project(f"tdother{next(_n)}")["project_id"]
    r = ta.call("GET", "/open/user-cluster-detail", clusterName="x", projectId=other)
    assert r["return_code"] == -1002 and "projectId" in r["return_message"], r
    # In the body, as the seed's add/update examples send it, it counts too.
    r = ta.call("POST", "/open/user-cluster-list", {"projectId": ta.pid})
    assert r["return_code"] == 0, r
