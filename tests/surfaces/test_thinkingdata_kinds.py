"""ThinkingData's words for kinds of segment, translated at the surface: every answer names
them as the vendor does (and the refusals read as they always have), while the admin API
shows the core's words."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Project
from tests.surfaces.test_thinkingdata import SEED_QP, TA, people

LEVEL3 = {"filts": [{"columnName": "user_level", "comparator": "equal", "ftv": ["3"]}]}
FIRST_LAST = {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
    "calcPropVo": {"isCalc": False, "property": {"columnName": "os", "tableType": "event"}},
    "eventName": "pay", "isFirstEvent": False, "recentDay": "0-1", "filts": [],
}}}  # fmt: skip


@pytest.fixture
def ta(project: Project) -> TA:
    t = TA(project)
    people(t)
    return t


def refused(r: dict[str, Any], code: int, message: str) -> None:
    assert r["return_code"] == code, r
    assert r["return_message"].endswith(message), r


def admin(ta: TA, name: str) -> dict[str, Any]:
    r = ta.p.server.admin("GET", f"/projects/{ta.p.name}/segments/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_kinds_are_named_as_the_vendor_names_them(ta: TA) -> None:
    r = ta.add("daily", clusterType="cluster_by_dynamic_condition", qp=LEVEL3)
    assert r["return_code"] == 0, r
    assert ta.add("lastos", clusterCatalog="catalog_tag", tagQp=FIRST_LAST)["return_code"] == 0
    sql = "SELECT user_id, 'x' FROM users"
    r = ta.add("sqltag", clusterType="tag_by_dynamic_sql", tagQp={"sql": sql})
    assert r["return_code"] == 0, r
    r = ta.call(
        "POST", "/open/import-id-cluster-add", "1390000000a\n",
        projectId=ta.pid, displayName="ids", mainColumnName="mobile", clusterName="ids",
    )  # fmt: skip
    assert r["return_code"] == 0, r
    words = {
        "daily": ("catalog_cluster", "cluster_by_dynamic_condition", None),
        "lastos": ("catalog_tag", "tag_by_static_condition", "tag_condition_by_firstlast_event"),
        "sqltag": ("catalog_tag", "tag_by_dynamic_sql", None),
        "ids": ("catalog_cluster", "cluster_by_import", None),
    }
    for name, expected in words.items():
        d = ta.wait(name) if name != "ids" else ta.detail(name)
        assert (d["clusterCatalog"], d["clusterType"], d.get("subConditionTabType")) == expected
    # The admin API, in the core's words.
    core = {
        "daily": ("cluster", "cluster_conditions_daily"),
        "lastos": ("tag", "tag_conditions"),
        "sqltag": ("tag", "tag_sql_daily"),
        "ids": ("cluster", "cluster_ids"),
    }
    assert {n: (admin(ta, n)["catalog"], admin(ta, n)["kind"]) for n in core} == core
    # Listing filters by the vendor's types (one the server does not know matches nothing).
    for types, names in (
        (["cluster_by_dynamic_condition", "cluster_by_import"], ["ids", "daily"]),
        (["tag_by_static_condition"], ["lastos"]),
        (["cluster_by_result", "whatever"], []),
        ([], ["ids", "sqltag", "lastos", "daily"]),
    ):
        body = {"projectId": ta.pid, "clusterTypes": types}
        r = ta.call("POST", "/open/user-cluster-list", body)
        assert [c["clusterName"] for c in r["data"]["userClusters"]] == names, types
    body = {"projectId": ta.pid, "clusterCatalog": "catalog_tag"}
    r = ta.call("POST", "/open/user-cluster-list", body)
    assert [c["clusterName"] for c in r["data"]["userClusters"]] == ["sqltag", "lastos"]


def test_refusals_name_the_vendor_words(ta: TA) -> None:
    refused(
        ta.add("imp", clusterType="cluster_by_import", qp=SEED_QP), -1003,
        "clusterType: cluster_by_import segments are created by uploading IDs "
        "(import-id-cluster-add)",
    )  # fmt: skip
    refused(ta.add("u", clusterType="nope", qp=SEED_QP), -1003, "unknown cluster type 'nope'")
    refused(
        ta.add("m", clusterCatalog="catalog_tag", clusterType="cluster_by_static_condition"),
        -1003, "clusterCatalog: cluster_by_static_condition belongs to catalog_cluster, "
        "not 'catalog_tag'",
    )  # fmt: skip
    refused(
        ta.add("k", clusterCatalog="catalog_tag", tagQp=FIRST_LAST, subConditionTabType="zzz"),
        -1003, "subConditionTabType: unknown tag kind 'zzz'",
    )  # fmt: skip
    refused(
        ta.add(
            "k", clusterCatalog="catalog_tag", tagQp=FIRST_LAST,
            subConditionTabType="tag_condition_by_quotation",
        ),
        -1003, "subConditionTabType: tag_condition_by_quotation does not match the tagQp given",
    )  # fmt: skip
    r = ta.call(
        "POST", "/open/import-id-cluster-add", "1390000000a\n", projectId=ta.pid,
        displayName="ids", mainColumnName="mobile", clusterCatalog="catalog_x",
    )  # fmt: skip
    refused(r, -1003, "clusterCatalog: expected catalog_cluster or catalog_tag")
    # Changing a segment: into an ID upload, or into a tag, is refused in the same words.
    assert ta.add("c", qp=LEVEL3)["return_code"] == 0
    ta.wait("c")

    def update(**body: Any) -> dict[str, Any]:
        payload = {"projectId": ta.pid, **body}
        return ta.call("POST", "/open/user-cluster-update-by-name", payload, clusterName="c")

    refused(
        update(clusterType="cluster_by_import"), -1003,
        "clusterType: cannot turn a segment into cluster_by_import",
    )  # fmt: skip
    refused(
        update(clusterType="tag_by_static_condition", tagQp=FIRST_LAST), -1003,
        "clusterCatalog: tag_by_static_condition belongs to catalog_tag, not 'catalog_cluster'",
    )  # fmt: skip
    refused(
        update(clusterCatalog="catalog_tag", clusterType="tag_by_static_condition"), -1003,
        "clusterCatalog: a cluster cannot become a tag, nor a tag a cluster",
    )  # fmt: skip
    assert update(clusterType="cluster_by_dynamic_condition", qp=LEVEL3)["return_code"] == 0
    assert ta.detail("c")["clusterType"] == "cluster_by_dynamic_condition"
    assert admin(ta, "c")["kind"] == "cluster_conditions_daily"


def test_the_admin_preview_refuses_the_vendors_fields(ta: TA) -> None:
    """A preview sent in the vendor's words is refused naming the field, not previewed as the
    default kind."""
    path = f"/projects/{ta.p.name}/segments/preview"
    r = ta.p.server.admin("POST", path, json={"clusterType": "cluster_by_sql", "sql": "x"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "clusterType", r.text
    ok = ta.p.server.admin("POST", path, json={"kind": "cluster_conditions", "qp": LEVEL3})
    assert ok.status_code == 200, ok.text
