"""ThinkingData's server SDK (``ThinkingDataSdk``, unchanged) sending to a live server's
``/sync_server``, ``/sync_json`` and ``/data_debug``; read back through the admin API."""

from __future__ import annotations

import gzip
import itertools
import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from tgasdk.sdk import (
    TDAnalytics,
    TDBatchConsumer,
    TDDebugConsumer,
    TDIllegalDataException,
)

from tests.conftest import Project
from tests.liveserver import LiveServer
from tests.surfaces.test_thinkingdata import TA

SHANGHAI = ZoneInfo("Asia/Shanghai")
_n = itertools.count(1)


class TD:
    """A project with a ThinkingData app id."""

    def __init__(self, project: Project) -> None:
        self.p = project
        r = project.server.admin("POST", f"/projects/{project.name}/thinkingdata/app-ids", json={})
        assert r.status_code == 201, r.text
        self.appid: str = r.json()["app_id"]
        self.url = project.server.url

    def sdk(self, compress: bool = True, batch: int = 200) -> TDAnalytics:
        return TDAnalytics(TDBatchConsumer(self.url, self.appid, batch=batch, compress=compress))

    def post(
        self, records: Any, appid: str | None = None, compress: bool = False, **headers: str
    ) -> dict[str, Any]:
        body = orjson.dumps(records)
        hdrs = {"appid": self.appid if appid is None else appid, **headers}
        if compress:
            body, hdrs["compress"] = gzip.compress(body), "gzip"
        r = self.p.http.post("/sync_server", content=body, headers=hdrs)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def profile(self, account: str) -> dict[str, Any]:
        r = self.p.profile(key="#account_id", value=account)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def props(self, account: str) -> dict[str, Any]:
        return dict(self.profile(account)["properties"])

    def missing(self, account: str) -> bool:
        return self.p.profile(key="#account_id", value=account).status_code == 404

    def events(self, account: str) -> dict[str, dict[str, Any]]:
        return {e["event_id"]: e for e in self.profile(account)["latest_events"]}


@pytest.fixture
def td(project: Project) -> TD:
    return TD(project)


def acct() -> str:
    return f"acct-{next(_n)}-{uuid.uuid4().hex[:6]}"


def user_ops(ta: TDAnalytics, account: str, flush: bool) -> None:
    """Every user operation, in an order where each depends on the one before."""
    steps = [
        lambda: ta.user_set(account_id=account, properties={"level": 1, "name": "ann"}),
        lambda: ta.user_setOnce(account_id=account, properties={"first_seen": "a", "name": "x"}),
        lambda: ta.user_setOnce(account_id=account, properties={"first_seen": "b"}),
        lambda: ta.user_add(account_id=account, properties={"coins": 5, "level": 2}),
        lambda: ta.user_add(account_id=account, properties={"coins": 2.5}),
        lambda: ta.user_append(account_id=account, properties={"tags": ["a", "b"]}),
        lambda: ta.user_append(account_id=account, properties={"tags": ["b"]}),
        lambda: ta.user_uniq_append(account_id=account, properties={"tags": ["a", "c"]}),
        lambda: ta.user_unset(account_id=account, properties=["name"]),
        lambda: ta.user_setOnce(account_id=account, properties={"name": "bea"}),
        lambda: ta.user_unset(account_id=account, properties=["first_seen"]),
        lambda: ta.user_set(account_id=account, properties={"#os": "ios"}),
    ]
    for step in steps:
        step()
        if flush:
            ta.flush()
    ta.flush()


EXPECTED = {"level": 3, "coins": 7.5, "tags": ["a", "b", "b", "c"], "name": "bea", "#os": "ios"}


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "none"])
def test_user_operations_in_one_batch_and_one_at_a_time(td: TD, compress: bool) -> None:
    ta = td.sdk(compress=compress)
    batched, single = acct(), acct()
    user_ops(ta, batched, flush=False)  # one request: every operation in one flush batch
    user_ops(ta, single, flush=True)  # a request per operation
    for account in (batched, single):
        props = td.props(account)
        assert {k: props.get(k) for k in EXPECTED} == EXPECTED, props
        assert "first_seen" not in props
        assert props["#account_id"] == account


def test_operations_on_stored_values_and_mixed_users(td: TD) -> None:
    a, b = acct(), acct()
    ta = td.sdk()
    ta.user_set(account_id=a, properties={"coins": 10, "tags": ["x"], "nick": "n"})
    ta.flush()
    # Several users' operations interleaved in one batch, onto stored values.
    ta.user_add(account_id=a, properties={"coins": -3})
    ta.user_add(account_id=b, properties={"coins": 1})
    ta.user_uniq_append(account_id=a, properties={"tags": ["x", "y"]})
    ta.user_setOnce(account_id=a, properties={"nick": "m"})
    ta.user_unset(account_id=b, properties=["nothing_like_this"])
    ta.user_add(account_id=a, properties={"coins": 1})
    ta.flush()
    assert {k: td.props(a)[k] for k in ("coins", "tags", "nick")} == {
        "coins": 8,
        "tags": ["x", "y"],
        "nick": "n",
    }
    assert td.props(b)["coins"] == 1


def test_distinct_id_and_account_id_are_one_person(td: TD) -> None:
    a, device = acct(), f"dev-{uuid.uuid4().hex}"
    ta = td.sdk()
    ta.user_set(distinct_id=device, properties={"from": "device"})
    ta.track(distinct_id=device, account_id=a, event_name="login")
    ta.flush()
    prof = td.profile(a)
    assert prof["properties"]["from"] == "device"
    assert {i["key"] for i in prof["identities"]} >= {"#account_id", "#distinct_id"}
    r = td.p.profile(key="#distinct_id", value=device)
    assert r.json()["user_id"] == prof["user_id"]


def test_track_events_with_presets(td: TD) -> None:
    a = acct()
    ta = TDAnalytics(TDBatchConsumer(td.url, td.appid), enable_uuid=True)
    ta.set_super_properties({"channel": "web"})
    when = datetime(2024, 5, 6, 7, 8, 9, 123000)
    ta.track(
        account_id=a,
        event_name="pay",
        properties={"amount": 12.5, "#os": "android", "#ip": "192.0.2.1", "#time": when},
    )
    ta.flush()
    (ev,) = td.events(a).values()
    assert ev["event"] == "pay"
    # "#time" is project-local (Asia/Shanghai): 07:08:09.123 there is 23:08:09.123 UTC before.
    assert ev["event_time"] == "2024-05-05T23:08:09.123000Z"
    props = ev["properties"]
    assert props["amount"] == 12.5 and props["#os"] == "android" and props["#ip"] == "192.0.2.1"
    assert props["channel"] == "web" and props["#lib"] == "tga_python_sdk"
    uuid.UUID(ev["event_id"])  # enable_uuid: the SDK's #uuid is the event id


def test_a_batch_sent_again_is_not_counted_twice(td: TD) -> None:
    a = acct()
    with_uuid = {
        "#type": "track", "#account_id": a, "#event_name": "x", "#uuid": str(uuid.uuid4()),
        "#time": "2024-01-02 03:04:05.000", "properties": {"n": 1},
    }  # fmt: skip
    without = {**with_uuid, "#uuid": None, "#event_name": "y"}
    del without["#uuid"]
    assert td.post([with_uuid, without])["code"] == 0
    assert td.post([with_uuid, without], compress=True)["code"] == 0
    assert td.profile(a)["event_count"] == 2
    # Two events that differ in anything are two.
    assert td.post([{**without, "properties": {"n": 2}}])["code"] == 0
    assert td.profile(a)["event_count"] == 3


def test_track_update_overwrite_and_first(td: TD) -> None:
    a = acct()
    ta = td.sdk()
    ta.track_update(account_id=a, event_name="order", event_id="o1", properties={"s": 1, "t": 1})
    ta.flush()
    ta.track_update(account_id=a, event_name="order", event_id="o1", properties={"s": 2})
    ta.flush()
    props = td.events(a)["o1"]["properties"]
    assert (props["s"], props["t"], props["#lib"]) == (2, 1, "tga_python_sdk")
    ta.track_overwrite(account_id=a, event_name="order", event_id="o1", properties={"u": 3})
    ta.flush()
    props = td.events(a)["o1"]["properties"]
    assert props.get("u") == 3 and "s" not in props and "t" not in props
    # In one batch, in order: update, overwrite, update.
    ta.track_update(account_id=a, event_name="order", event_id="o2", properties={"s": 1})
    ta.track_overwrite(account_id=a, event_name="order", event_id="o2", properties={"t": 2})
    ta.track_update(account_id=a, event_name="order", event_id="o2", properties={"u": 3})
    ta.flush()
    props = td.events(a)["o2"]["properties"]
    assert (props.get("s"), props.get("t"), props.get("u")) == (None, 2, 3)
    # A first event: only the first one of that name and id is kept.
    ta.track_first(account_id=a, event_name="reg", first_check_id="d1", properties={"k": 1})
    ta.track_first(account_id=a, event_name="reg", first_check_id="d1", properties={"k": 2})
    ta.flush()
    ta.track_first(account_id=a, event_name="reg", first_check_id="d1", properties={"k": 3})
    ta.flush()
    assert td.events(a)["reg:d1"]["properties"]["k"] == 1
    assert td.profile(a)["event_count"] == 3


def test_user_del(td: TD) -> None:
    a, b = acct(), acct()
    ta = td.sdk()
    ta.user_set(account_id=a, properties={"x": 1})
    ta.track(account_id=a, event_name="e")
    ta.user_set(account_id=b, properties={"x": 1})
    ta.user_del(account_id=a)
    ta.user_set(account_id=b, properties={"x": 2})
    ta.flush()
    assert td.missing(a)
    assert td.props(b)["x"] == 2
    # A user set after the deletion, in the same batch, is a new person.
    ta.user_del(account_id=b)
    ta.user_add(account_id=b, properties={"x": 5})
    ta.flush()
    assert td.props(b)["x"] == 5


# ---- refused requests --------------------------------------------------------------------
def record(account: str, **kw: Any) -> dict[str, Any]:
    return {
        "#type": "user_set", "#account_id": account, "#time": "2024-01-02 03:04:05.000",
        "properties": {"v": 1}, **kw,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ({"#type": "user_sett"}, "#type", "must be one of"),
        ({"#account_id": None}, "#account_id", "at least one"),
        ({"#account_id": ""}, "#account_id", "at least one"),
        ({"#account_id": {"a": 1}}, "#account_id", "string or a number"),
        ({"#time": "yesterday"}, "#time", "expected a datetime"),
        ({"properties": [1]}, "properties", "JSON object"),
        ({"properties": {"o": {"nested": 1}}}, "o", "nested objects"),
        ({"#type": "user_add", "properties": {"n": "3"}}, "n", "needs a number"),
        ({"#type": "user_append", "properties": {"l": "x"}}, "l", "expected a list"),
        ({"#type": "track", "properties": {}}, "#event_name", "required"),
        ({"#type": "track_update", "#event_name": "e"}, "#event_id", "required"),
    ],
)
def test_a_bad_record_refuses_the_whole_batch(
    td: TD, bad: dict[str, Any], field: str, reason: str
) -> None:
    a = acct()
    good = record(a)
    answer = td.post([good, record(a, **{"#type": "user_add", "properties": {"n": 1}}),
                      record(a, **bad)])  # fmt: skip
    assert answer["code"] == -1, answer
    assert answer["msg"].startswith(f"data[2]: {field}: "), answer
    assert reason in answer["msg"], answer
    assert td.missing(a)  # nothing of the batch was kept


def test_type_mismatch_names_the_property(td: TD) -> None:
    a = acct()
    assert td.post([record(a, properties={"level": 3})])["code"] == 0
    answer = td.post([record(a), record(a, **{"#type": "user_add", "properties": {"name": 1}}),
                      record(a, properties={"level": "high"})])  # fmt: skip
    assert answer["code"] == -1
    assert answer["msg"] == "data[2]: level: expected a number, got 'high'", answer
    answer = td.post([record(a, **{"#type": "user_append", "properties": {"level": [1]}})])
    assert answer["msg"] == "data[0]: level: user_append needs a list property, this one is number"


def test_the_sdk_sees_refusals(td: TD) -> None:
    """(``flush()`` drops a refused batch quietly; ``flush_once()`` raises what it got.)"""
    consumer = TDBatchConsumer(td.url, td.appid)
    a = acct()
    TDAnalytics(consumer).user_add(account_id=a, properties={"n": "not a number"})
    with pytest.raises(TDIllegalDataException, match="Unexpected result code: -1"):
        consumer.flush_once()
    assert td.missing(a)
    consumer = TDBatchConsumer(td.url, "no-such-app")
    TDAnalytics(consumer).user_set(account_id=a, properties={"n": 1})
    with pytest.raises(TDIllegalDataException, match="Unexpected result code: -2"):
        consumer.flush_once()


def test_unknown_or_missing_appid(td: TD) -> None:
    answer = td.post([record(acct())], appid="no-such-app")
    assert answer == {"code": -2, "msg": "appid: 'no-such-app' is not known"}
    r = td.p.http.post("/sync_server", content=b"[]")
    assert r.json() == {"code": -2, "msg": "appid: is required"}


@pytest.mark.parametrize(
    ("body", "headers", "msg"),
    [
        (b"[{", {}, "body: not valid JSON"),
        (b"42", {}, "body: expected a record or an array of records"),
        (b"\x1f\x8b not gzip", {"compress": "gzip"}, "body: not valid gzip data"),
        (gzip.compress(b"[]")[:-6], {"compress": "gzip"}, "body: the gzip data is cut short"),
        (b"[]", {"compress": "zstd"}, "compress: must be gzip or none"),
        (b"[]", {"TA-Integration-Count": "2"}, "TA-Integration-Count: says 2 records"),
    ],
)
def test_malformed_bodies(td: TD, body: bytes, headers: dict[str, str], msg: str) -> None:
    r = td.p.http.post("/sync_server", content=body, headers={"appid": td.appid, **headers})
    assert r.status_code == 200, r.text
    assert r.json()["code"] == -1 and r.json()["msg"].startswith(msg), r.json()


def test_limits_and_methods(td: TD) -> None:
    huge = b"[" + b" " * (2 << 20) + b"]"  # over OPENCDP_MAX_BODY_BYTES (1 MiB)
    r = td.p.http.post("/sync_server", content=huge, headers={"appid": td.appid})
    assert r.json()["code"] == -1 and "larger than" in r.json()["msg"]
    bomb = gzip.compress(b"[" + b" " * (16 << 20) + b"]")  # small, but 16 MiB inflated
    r = td.p.http.post(
        "/sync_server", content=bomb, headers={"appid": td.appid, "compress": "gzip"}
    )
    assert r.json()["code"] == -1 and "once decompressed" in r.json()["msg"]
    r = td.p.http.get("/sync_server")
    assert r.status_code == 405 and r.json()["code"] == -1


# ---- the older form and the debug endpoint ----------------------------------------------
def test_sync_json_form_and_json(td: TD) -> None:
    a = acct()
    r = td.p.http.post(
        "/sync_json", data={"appid": td.appid, "data": json.dumps(record(a, properties={"f": 1}))}
    )
    assert r.json() == {"code": 0, "msg": "success"}
    r = td.p.http.post(
        "/sync_json",
        json={"appid": td.appid, "data": [record(a, **{"#type": "user_add",
                                                         "properties": {"f": 2}})]},
    )  # fmt: skip
    assert r.json()["code"] == 0
    assert td.props(a)["f"] == 3
    r = td.p.http.post("/sync_json", data={"appid": td.appid})
    assert r.json() == {"code": -1, "msg": "data: is required"}


def test_debug_consumer(td: TD, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = acct(), acct()
    ta = TDAnalytics(TDDebugConsumer(td.url, td.appid))
    ta.track(account_id=a, event_name="dbg", properties={"dbg_prop": 1})
    assert td.profile(a)["event_count"] == 1
    # Check only: nothing stored, no property registered.
    dry = TDAnalytics(TDDebugConsumer(td.url, td.appid, write_data=False))
    dry.user_set(account_id=b, properties={"dry_only": 1})
    assert td.missing(b)
    names = {
        p["name"] for p in td.p.server.admin("GET", f"/projects/{td.p.name}/properties").json()
    }
    assert "dbg_prop" in names and "dry_only" not in names
    # An error is the debug structure, which the SDK prints.
    dry.user_append(account_id=b, properties={"l": "not a list"})
    assert "expected a list" in capsys.readouterr().out
    r = td.p.http.post(
        "/data_debug",
        data={"appid": td.appid, "data": json.dumps(record(b, **{"#time": "soon"})), "dryRun": 1},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["errorLevel"] == 2 and body["errorProperties"][0]["propertyName"] == "#time"
    r = td.p.http.post("/data_debug", data={"appid": "nope", "data": "{}"})
    assert r.json()["errorLevel"] == 2 and "appid" in r.json()["errorReasons"][0]


# ---- app ids -----------------------------------------------------------------------------
def test_app_ids(td: TD, project: Project) -> None:
    server = project.server
    base = f"/projects/{project.name}/thinkingdata/app-ids"
    keys = server.admin("GET", f"/projects/{project.name}/identity-keys").json()["keys"]
    assert keys == ["mobile", "email", "#account_id", "#distinct_id"]
    mine = f"app_{uuid.uuid4().hex}"
    r = server.admin("POST", base, json={"app_id": mine})
    assert r.status_code == 201 and sorted(r.json()["app_ids"]) == sorted([td.appid, mine])
    other = server.new_project(f"td-other-{uuid.uuid4().hex[:6]}")
    r = server.admin(
        "POST", f"/projects/{other['name']}/thinkingdata/app-ids", json={"app_id": mine}
    )
    assert r.status_code == 409 and r.json()["error"]["field"] == "app_id"
    r = server.admin("POST", base, json={"app_id": "bad id!"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "app_id"
    # The app id names the project; taken away, it is refused.
    a = acct()
    assert td.post([record(a)], appid=mine)["code"] == 0
    assert td.props(a)["v"] == 1
    r = server.admin("DELETE", f"{base}/{mine}")
    assert r.status_code == 200 and r.json()["app_ids"] == [td.appid]
    assert td.post([record(a)], appid=mine)["code"] == -2
    assert server.admin("DELETE", f"{base}/{mine}").status_code == 404


# ---- the seed's own examples with ThinkingData's preset properties -----------------------
def test_seed_examples_with_preset_properties(td: TD, project: Project) -> None:
    """The seed uploads IDs with ``mainColumnName=#account_id`` and filters on ``#os``."""
    ta = td.sdk()
    today = datetime.now(SHANGHAI).replace(microsecond=0, tzinfo=None)
    accounts = ["j77639", "h84497", "g119426", "e154284", "f175355"]
    for i, a in enumerate(accounts):
        ta.user_set(account_id=a, properties={"user_level": 3})
        ta.track(
            account_id=a, event_name="activity_attend",
            properties={"#os": "android" if i % 2 == 0 else "ios", "activity_reward": i,
                        "#time": today - timedelta(minutes=1)},
        )  # fmt: skip
    ta.flush()
    api = TA(project)
    csv = "".join(f"{a}\n" for a in accounts[:4]) + "nobody\n"
    r = api.call(
        "POST", "/open/import-id-cluster-add", csv,
        projectId=api.pid, displayName="xxxx", mainColumnName="#account_id", clusterName="ids",
    )  # fmt: skip
    assert r["return_code"] == 0, r
    assert (r["data"]["uploadNum"], r["data"]["userNum"], r["data"]["unmatchedNum"]) == (5, 4, 1)
    uid = {a: td.profile(a)["user_id"] for a in accounts}
    assert set(api.members("ids")) == {uid[a] for a in accounts[:4]}

    quota = {"userTagConQuotaDef": {"userTagConQuotaEvent": {
        "type": "normal", "quota": "activity_reward", "analysis": "DISTINCT",
        "eventName": "activity_attend", "recentDay": "0-1",
        "filts": [{"columnName": "#os", "comparator": "equal", "ftv": ["android"],
                   "tableType": "event"}],
        "relation": "and",
    }}}  # fmt: skip
    r = api.add(
        "tag_test_20200615_1", clusterCatalog="catalog_tag",
        clusterType="tag_by_static_condition", subConditionTabType="tag_condition_by_quotation",
        tagQp=quota,
    )  # fmt: skip
    assert r["return_code"] == 0, r
    assert api.wait("tag_test_20200615_1")["progress"] == 100
    assert api.members("tag_test_20200615_1") == {uid[a]: "1" for a in accounts[::2]}

    first = {"userTagConFirstLastEventDef": {"userTagConFirstLastEvent": {
        "calcPropVo": {"isCalc": False, "property": {"columnName": "#os", "tableType": "event"}},
        "eventName": "activity_attend", "isFirstEvent": True, "recentDay": "0-1",
        "filts": [{"columnName": "#os", "comparator": "equal", "ftv": ["android"],
                   "tableType": "event"}],
        "relation": "and",
    }}}  # fmt: skip
    r = api.add(
        "first_os", clusterCatalog="catalog_tag", clusterType="tag_by_static_condition",
        subConditionTabType="tag_condition_by_firstlast_event", tagQp=first,
    )  # fmt: skip
    assert r["return_code"] == 0, r
    api.wait("first_os")
    assert api.members("first_os") == {uid[a]: "android" for a in accounts[::2]}

    # A SQL cluster reads the '#' properties by name too.
    r = api.add(
        "sql_os", clusterCatalog="catalog_cluster", clusterType="cluster_by_static_sql",
        sql='SELECT DISTINCT user_id FROM events WHERE "#os" = \'ios\'',
    )  # fmt: skip
    assert r["return_code"] == 0, r
    assert api.wait("sql_os")["progress"] == 100
    assert set(api.members("sql_os")) == {uid[a] for a in accounts[1::2]}


# ---- durability --------------------------------------------------------------------------
def test_batches_survive_a_kill_and_a_torn_batch_keeps_nothing(fresh_dir: Path) -> None:
    """Acknowledged batches are in the log (the flusher never ran: interval 30 s); after
    SIGKILL every one is there, applied once, even though a flush takes fewer records than
    a batch holds. A batch whose frame was cut short by the crash keeps none of its records."""
    srv = LiveServer(fresh_dir, OPENCDP_FLUSH_INTERVAL="30", OPENCDP_FLUSH_MAX_RECORDS="3").start()
    info = srv.new_project("tdkill")
    r = srv.admin("POST", "/projects/tdkill/thinkingdata/app-ids", json={"app_id": "kill-app"})
    assert r.status_code == 201
    ta = TDAnalytics(TDBatchConsumer(srv.url, "kill-app", batch=200))
    for i in range(5):
        for j in range(7):
            ta.user_add(account_id=f"k{j}", properties={"n": 1})
            ta.track(account_id=f"k{j}", event_name="e", properties={"i": i})
        ta.flush()
    assert srv.admin("GET", "/projects/tdkill/stats").json()["pending"] > 0
    srv.kill()
    # What a crash in the middle of writing the next batch leaves: its frame, cut short.
    segment = max((fresh_dir / "log").glob("*.log"))
    frame = _batch_frame(fresh_dir, segment)
    with segment.open("ab") as f:
        f.write(frame[: len(frame) * 2 // 3])

    srv = LiveServer(fresh_dir, port=srv.port, OPENCDP_FLUSH_MAX_RECORDS="3").start()
    try:
        stats = srv.admin("GET", "/projects/tdkill/stats").json()
        assert (stats["events"], stats["pending"]) == (35, 0)
        for j in range(7):
            r = srv.profile("tdkill", key="#account_id", value=f"k{j}")
            assert r.json()["properties"]["n"] == 5, r.text
        assert list((fresh_dir / "quarantine").glob("*.torn"))
    finally:
        srv.stop()
    assert info["project_id"]


def _batch_frame(data_dir: Path, segment: Path) -> bytes:
    """A valid log frame holding a batch of two user_add records of k0 (copied from the
    first frame of the log, whose first record is one)."""
    import struct
    import zlib

    from opencdp.ingest.records import Record

    raw = segment.read_bytes()
    length, _ = struct.unpack_from("<II", raw, 0)
    first = Record.decode_frame(raw[8 : 8 + length])[0]
    payload = Record.encode_batch([first, first])
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_values_keep_their_json_types(td: TD) -> None:
    """The SDK sends typed JSON: text stays text (even "12.5" or "1.2"), whole numbers stay
    integers, and a number a double cannot hold is refused, naming the record and field."""
    account = acct()
    ta = td.sdk(compress=False)
    ta.user_set(
        account_id=account,
        properties={"version": "1.2", "price": "12.5", "level": 3, "ratio": 0.5},
    )
    ta.flush()
    props = td.props(account)
    assert props["version"] == "1.2" and props["price"] == "12.5"
    assert props["level"] == 3 and type(props["level"]) is int and props["ratio"] == 0.5
    body = (
        b'[{"#type": "user_set", "#account_id": "' + account.encode() + b'", "#time": '
        b'"2024-01-02 03:04:05.000", "properties": {"big": 12345678901234567890123456789}}]'
    )
    r = td.p.http.post("/sync_server", content=body, headers={"appid": td.appid})
    answer = r.json()
    assert answer["code"] == -1 and "data[0]" in answer["msg"] and "big" in answer["msg"], answer
    assert "big" not in td.props(account)
