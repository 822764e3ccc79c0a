"""Data comes out exactly as it went in: every ingest path, read back over the admin API.

Round trips (hypothesis) send generated values through the record API, Marketo CSV, and WeChat
JSON and CSV imports, then read them back: the same value, of the same JSON type. Numbers a
double cannot hold exactly are refused with a message naming the property, never rounded.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Project
from tests.liveserver import LiveServer
from tests.surfaces.test_marketo import Mkto
from tests.surfaces.test_thinkingdata import TA
from tests.surfaces.test_wechat import Wx

_n = itertools.count(1)
LIVE = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SAFE = 2**53
USER = b'{"type": "user", "properties": {"mobile": "13900000001", '

# Text: anything printable (an import file cannot hold NUL), not only blanks.
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and s != ""
)
ints = st.integers(min_value=-SAFE, max_value=SAFE)
floats = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.one_of(ints, floats)


def same(sent: Any, got: Any) -> bool:
    """Equal, and of the same JSON type; a whole float may come back as the integer it equals
    (JSON does not tell 3 from 3.0; whole numbers are returned as integers)."""
    if isinstance(sent, bool) or isinstance(got, bool):
        return type(sent) is type(got) and sent == got
    if isinstance(sent, float):
        return (
            isinstance(got, int | float)
            and got == sent
            and (isinstance(got, float) or sent.is_integer())
        )
    if isinstance(sent, int):
        return type(got) is int and got == sent
    if isinstance(sent, list):
        return isinstance(got, list) and len(sent) == len(got) and all(map(same, sent, got))
    if isinstance(sent, dict):
        return (
            isinstance(got, dict)
            and sent.keys() == got.keys()
            and all(same(sent[k], got[k]) for k in sent)
        )
    return type(sent) is type(got) and sent == got


def declare(server: LiveServer, project: str, table: str, **types: str) -> None:
    for name, ptype in types.items():
        r = server.admin(
            "POST", f"/projects/{project}/properties",
            json={"table": table, "name": name, "type": ptype},
        )  # fmt: skip
        assert r.status_code in (200, 201), r.text


def props_of(server: LiveServer, project: str, **key: str) -> dict[str, Any]:
    r = server.profile(project, **key)
    assert r.status_code == 200, r.text
    return dict(r.json()["properties"])


# ---- the seed's own example -------------------------------------------------------------------
def test_the_seed_example_sends_strings_and_sum_clusters_work(project: Project) -> None:
    """Seed 000 sends every value as text ("amount": "<订单金额>"): amounts are numbers, so a
    SUM(amount) cluster works; identity keys and codes stay text."""
    orders = {  # mobile -> amounts
        "18366668881": ["12.5", "30", "0.75"],  # 43.25
        "18366668882": ["20", "20.5"],  # 40.5
        "18366668883": ["99.99"],  # 99.99
        "18366668884": ["5"],
    }
    n = itertools.count(1)
    for mobile, amounts in orders.items():
        for amount in amounts:
            body = {
                "type": "event",
                "event": "order_detail",
                "properties": {
                    "mobile": mobile,
                    "email": f"{mobile}@sample.com",
                    "event_id": f"20180712164233{next(n):05d}",
                    "create_time": "2018-07-12 16:42:33",
                    "shop_name": "南山店",
                    "amount": amount,
                    "item_num": "2",
                    "shop_code": "0755",
                    "order_no": "2018071216423310001",
                },
            }
            r = project.send(body)
            assert r.json() == {"errcode": 0, "errmsg": "success"}, r.text
    props = {
        p["name"]: p["type"]
        for p in project.server.admin("GET", f"/projects/{project.name}/properties").json()
        if p["table"] == "event"
    }
    assert props["amount"] == "number" and props["item_num"] == "number"
    assert props["shop_code"] == "string"  # a leading zero: a code
    assert props["order_no"] == "string"  # longer than any amount: an ID
    assert props["shop_name"] == "string"

    ta = TA(project)
    qp = {
        "events": [
            {"eventName": "order_detail", "comparator": "greater", "num": "40",
             "taPropQuota": {"analysis": "SUM", "quota": "amount"}}
        ],
        "event_relation": "and",
    }  # fmt: skip
    assert ta.add("big_spenders", qp=qp)["return_code"] == 0
    assert ta.wait("big_spenders")["progress"] == 100
    assert set(ta.members("big_spenders")) == {
        ta.uid(m) for m in ("18366668881", "18366668882", "18366668883")
    }
    event = project.profile(key="mobile", value="18366668881").json()["latest_events"][0]
    assert event["properties"]["item_num"] == 2  # an integer, not 2.0
    assert event["properties"]["shop_code"] == "0755"


def test_integers_stay_integers_and_long_numbers_are_refused(project: Project) -> None:
    r = project.user(mobile="13900000001", level=3, score=2.5, big=SAFE)
    assert r.json()["errcode"] == 0, r.text
    props = props_of(project.server, project.name, key="mobile", value="13900000001")
    assert props["level"] == 3 and type(props["level"]) is int
    assert props["big"] == SAFE and type(props["big"]) is int
    assert props["score"] == 2.5

    # 29 digits: refused with a message naming the property, never rounded to 1e+28.
    body = USER + b'"level": 12345678901234567890123456789}}'
    r = project.send(body, headers={"Content-Type": "application/json"})
    assert r.json()["errcode"] == 20003, r.text
    assert "level" in r.json()["errmsg"] and "exactly" in r.json()["errmsg"]
    body = USER + b'"ratio": 0.12345678901234567890123}}'
    r = project.send(body, headers={"Content-Type": "application/json"})
    assert r.json()["errcode"] == 20003 and "ratio" in r.json()["errmsg"], r.text
    # Into a text property, the same digits are kept exactly.
    declare(project.server, project.name, "user", serial="string")
    body = USER + b'"serial": 12345678901234567890123456789}}'
    assert project.send(body).json()["errcode"] == 0
    props = props_of(project.server, project.name, key="mobile", value="13900000001")
    assert props["serial"] == "12345678901234567890123456789"
    assert props["level"] == 3


# ---- round trips ------------------------------------------------------------------------------
record_values = st.fixed_dictionaries(
    {},
    optional={
        "n": numbers,
        "t": texts,
        "b": st.booleans(),
        "l": st.lists(texts, max_size=5),
    },
)


@LIVE
@given(values=record_values)
def test_record_api_round_trip(rt_project: Project, values: dict[str, Any]) -> None:
    mobile = f"1370{next(_n):07d}"
    r = rt_project.user(mobile=mobile, **values)
    assert r.json()["errcode"] == 0, r.text
    got = props_of(rt_project.server, rt_project.name, key="mobile", value=mobile)
    for name, sent in values.items():
        assert same(sent, got.get(name)), (name, sent, got.get(name))
    ev = f"e{next(_n)}"
    r = rt_project.event(ev, "fidelity", mobile=mobile, **values)
    assert r.json()["errcode"] == 0, r.text
    (event,) = [
        e
        for e in rt_project.profile(key="mobile", value=mobile).json()["latest_events"]
        if e["event_id"] == ev
    ]
    for name, sent in values.items():
        assert same(sent, event["properties"].get(name)), (name, sent, event["properties"])


@pytest.fixture
def rt_project(server: LiveServer) -> Project:
    """A project whose round-trip properties are declared, so that any text stays text."""
    p = Project(server, server.new_project(f"fid{next(_n)}"))
    for table in ("user", "event"):
        declare(server, p.name, table, n="number", t="string", b="bool", l="list")
    return p


csv_rows = st.lists(
    st.fixed_dictionaries({"n": st.one_of(st.none(), numbers), "t": st.one_of(st.none(), texts)}),
    min_size=1,
    max_size=8,
)


def csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(fields)
    for row in rows:
        w.writerow(["" if row.get(f) is None else _text(row[f]) for f in fields])
    return out.getvalue()


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@LIVE
@given(rows=csv_rows)
def test_marketo_csv_round_trip(server: LiveServer, rows: list[dict[str, Any]]) -> None:
    mk = _mkto(server)
    base = next(_n)
    for i, row in enumerate(rows):
        row["email"] = f"r{base}_{i}@x.com"
    st_ = mk.run(csv_text(["email", "n", "t"], rows))
    assert (st_["status"], st_["numOfRowsFailed"]) == ("Complete", 0), st_
    for row in rows:
        got = mk.profile(key="email", value=row["email"])["properties"]
        for name in ("n", "t"):
            if row[name] is not None:
                assert same(row[name], got.get(name)), (name, row[name], got.get(name))


_mk: dict[str, Mkto] = {}


def _mkto(server: LiveServer) -> Mkto:
    """One Marketo client and project for the round-trip examples, its columns declared."""
    if id(server) not in _mk:
        mk = Mkto(server, server.new_project(f"mkfid{next(_n)}"))
        declare(server, mk.info["name"], "user", n="number", t="string")
        _mk[id(server)] = mk
    return _mk[id(server)]


def test_marketo_csv_columns_are_typed_across_the_file(server: LiveServer) -> None:
    mk = Mkto(server, server.new_project(f"mkcol{next(_n)}"))
    lines = ["email,score,code,note"]
    lines += [f"c{i}@x.com,{i}.5,00{i},n{i}" for i in range(3000)]
    lines.append("late@x.com,lots,0099,late")  # the column is a number: this row cannot be
    lines.append("long@x.com,12345678901234567890123456789,0098,long")  # nor this one, exactly
    st_ = mk.run("\n".join(lines) + "\n")
    assert st_["numOfRowsFailed"] + st_["numOfRowsWithWarning"] == 2, st_
    problems = mk.failures(st_["batchId"]) + mk.failures(st_["batchId"], "warnings")
    assert "score" in problems and "late@x.com" in problems
    assert "long@x.com" in problems and "too large to be stored exactly" in problems
    got = mk.profile(key="email", value="c7@x.com")["properties"]
    assert got["score"] == 7.5 and got["code"] == "007" and got["note"] == "n7"
    whole = mk.run("email,visits\nw1@x.com,3\nw2@x.com,4\n")
    assert whole["status"] == "Complete"
    assert mk.profile(key="email", value="w1@x.com")["properties"]["visits"] == 3


json_scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=8,
)
documents = st.lists(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "tags", "geo"]), json_values, min_size=1, max_size=4
    ),
    min_size=1,
    max_size=6,
)


@LIVE
@given(docs=documents)
def test_wechat_json_round_trip(server: LiveServer, docs: list[dict[str, Any]]) -> None:
    """Documents come back as they were sent: [1, 2] is still a list of numbers, and a field
    that mixes numbers and text keeps each value's type."""
    wx = _wx(server)
    name = f"docs{next(_n)}"
    sent = [{"_id": f"d{i}", **d} for i, d in enumerate(docs)]
    st_ = wx.run(name, f"{name}.json", "\n".join(json.dumps(d) for d in sent), file_type=1)
    assert (st_["record_success"], st_["record_fail"]) == (len(sent), 0), st_
    for doc in sent:
        r = server.admin("GET", f"/projects/{wx.info['name']}/collections/{name}/{doc['_id']}")
        assert r.status_code == 200, r.text
        assert same(doc, r.json()), (doc, r.json())


def test_wechat_json_keeps_types_across_batches(server: LiveServer) -> None:
    wx = Wx(server, server.new_project(f"wxmix{next(_n)}"))
    first = [{"_id": "m1", "v": 1, "l": [1, 2]}, {"_id": "m2", "v": "one", "l": ["a", 2.5]}]
    later = [{"_id": "m3", "v": 3, "l": [True, None]}, {"_id": "m4", "v": 4.25}]
    for i, docs in enumerate((first, later)):
        body = "\n".join(json.dumps(d) for d in docs)
        st_ = wx.run("mixed", f"mixed{i}.json", body, file_type=1)
        assert st_["record_success"] == len(docs), st_
    base = f"/projects/{wx.info['name']}/collections/mixed"
    for doc in first + later:
        assert same(doc, server.admin("GET", f"{base}/{doc['_id']}").json())
    # A number a double cannot hold is refused, naming the field.
    body = '{"_id": "m5", "v": 12345678901234567890123456789}\n{"_id": "m6", "v": 6}\n'
    st_ = wx.run("mixed", "long.json", body, file_type=1)
    assert (st_["record_success"], st_["record_fail"]) == (1, 1), st_
    assert "v:" in httpx.get(st_["file_url"]).text


@LIVE
@given(rows=csv_rows)
def test_wechat_csv_round_trip(server: LiveServer, rows: list[dict[str, Any]]) -> None:
    wx = _wx(server)
    name = f"rows{next(_n)}"
    for i, row in enumerate(rows):
        row["_id"] = f"r{i}"
    declared = server.admin(
        "PUT", f"/projects/{wx.info['name']}/collections/{name}",
        json={"fields": {"n": "number", "t": "string"}},
    )  # fmt: skip
    assert declared.status_code == 200, declared.text
    st_ = wx.run(name, f"{name}.csv", csv_text(["_id", "n", "t"], rows), file_type=2)
    assert (st_["record_success"], st_["record_fail"]) == (len(rows), 0), st_
    for row in rows:
        got = server.admin("GET", f"/projects/{wx.info['name']}/collections/{name}/{row['_id']}")
        doc = got.json()
        for field in ("n", "t"):
            if row[field] is not None:
                assert same(row[field], doc.get(field)), (field, row[field], doc)
            else:
                assert field not in doc


_wxs: dict[int, Wx] = {}


def _wx(server: LiveServer) -> Wx:
    if id(server) not in _wxs:
        _wxs[id(server)] = Wx(server, server.new_project(f"wxfid{next(_n)}"))
    return _wxs[id(server)]


def test_wechat_csv_numbers_are_numbers(server: LiveServer) -> None:
    wx = Wx(server, server.new_project(f"wxcsv{next(_n)}"))
    st_ = wx.run("c", "c.csv", "_id,qty,price,zip\nx,3,2.5,0755\ny,4,10,0010\n", file_type=2)
    assert st_["record_success"] == 2, st_
    doc = server.admin("GET", f"/projects/{wx.info['name']}/collections/c/x").json()
    assert doc == {"_id": "x", "qty": 3, "price": 2.5, "zip": "0755"}
    assert type(doc["qty"]) is int
    assert math.isclose(doc["price"], 2.5)


def test_wechat_json_profiles_type_properties_by_their_json_values(server: LiveServer) -> None:
    """Into profiles, a JSON file's numbers make a number property even when text comes first
    in the same batch: later numbers are numbers, and the text that cannot be one fails its
    row, naming the field."""
    wx = Wx(server, server.new_project(f"wxusers{next(_n)}"))
    first = [
        {"email": "j1@x.com", "v": "one", "code": "0755", "n": "12.5"},
        {"email": "j2@x.com", "v": 2, "code": "0010", "n": "3"},
    ]
    st_ = wx.run("users", "u1.json", "\n".join(json.dumps(d) for d in first), file_type=1)
    assert (st_["record_success"], st_["record_fail"]) == (1, 1), st_
    assert "v: expected a number" in httpx.get(st_["file_url"]).text
    st_ = wx.run("users", "u2.json", json.dumps({"email": "j3@x.com", "v": 3, "n": 4}), file_type=1)
    assert st_["record_success"] == 1, st_
    for email, v, n in (("j2@x.com", 2, 3), ("j3@x.com", 3, 4)):
        got = props_of(server, wx.info["name"], key="email", value=email)
        assert same(v, got["v"]) and same(n, got["n"]), got
    assert props_of(server, wx.info["name"], key="email", value="j2@x.com")["code"] == "0010"


@pytest.mark.parametrize(
    "raw",
    [
        b'"' + b"9" * 5000 + b'"',  # text past Python's int-to-text limit, into a number
        b"1e-400",  # below the smallest double
        b"-" + b"9" * 30,
        b'"1e999999999"',
        b"12345678901234567890.5",
        b'"' + b"1" * 400 + b'.5"',
    ],
)
def test_extreme_numbers_are_refused_with_a_message(project: Project, raw: bytes) -> None:
    """Into a number property, refused naming it; into a new property, a JSON number is refused
    too, while text stays the same text (it does not read as a plain number)."""
    declare(project.server, project.name, "user", amount="number")
    for prop in (b"amount", b"fresh_" + str(next(_n)).encode()):
        body = USER + b'"' + prop + b'": ' + raw + b"}}"
        r = project.send(body, headers={"Content-Type": "application/json"})
        if prop != b"amount" and raw.startswith(b'"'):
            assert r.json()["errcode"] == 0, r.text
            got = props_of(project.server, project.name, key="mobile", value="13900000001")
            assert got[prop.decode()] == json.loads(raw)
            continue
        assert r.status_code == 400, r.text
        assert r.json()["errcode"] == 20003 and prop.decode() in r.json()["errmsg"], r.text
