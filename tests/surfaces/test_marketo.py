"""The Marketo bulk import surface (seed 001) over HTTP, with the common Python client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.liveserver import LiveServer


class Mkto:
    """A minimal Marketo client: token, upload, poll."""

    def __init__(self, server: LiveServer, info: dict[str, Any]) -> None:
        self.server = server
        self.info = info
        self.http = httpx.Client(base_url=server.url, timeout=60)
        self.token = self.get_token()

    def get_token(self) -> str:
        r = self.http.get(
            "/identity/oauth/token",
            params={
                "grant_type": "client_credentials",
                "client_id": self.info["client_id"],
                "client_secret": self.info["client_secret"],
            },
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def upload(self, content: bytes | str, name: str = "leads.csv", **params: Any) -> Any:
        data = content.encode() if isinstance(content, str) else content
        return self.http.post(
            "/bulk/v1/leads.json",
            params=params,
            files={"file": (name, data, "text/csv")},
            headers=self.auth(),
        ).json()

    def status(self, batch_id: int) -> dict[str, Any]:
        body = self.http.get(f"/bulk/v1/leads/batch/{batch_id}.json", headers=self.auth()).json()
        assert body["success"], body
        return dict(body["result"][0])

    def wait(self, batch_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 300  # a hang guard, not a performance limit
        while time.monotonic() < deadline:
            st = self.status(batch_id)
            if st["status"] in ("Complete", "Failed"):
                return st
            time.sleep(0.05)
        raise AssertionError(f"batch {batch_id} never finished")

    def run(self, content: bytes | str, **params: Any) -> dict[str, Any]:
        body = self.upload(content, **params)
        assert body["success"], body
        return self.wait(body["result"][0]["batchId"])

    def failures(self, batch_id: int, kind: str = "failures") -> str:
        r = self.http.get(f"/bulk/v1/leads/batch/{batch_id}/{kind}.json", headers=self.auth())
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        return r.text

    def profile(self, **params: Any) -> dict[str, Any]:
        r = self.server.profile(self.info["name"], **params)
        assert r.status_code == 200, r.text
        return dict(r.json())


_n = iter(range(1, 10_000))


@pytest.fixture
def mk(server: LiveServer) -> Mkto:
    return Mkto(server, server.new_project(f"mk{next(_n)}"))


def test_the_seed_example_imports_three_leads(mk: Mkto) -> None:
    csv = (
        "firstName,lastName,email\n"
        "Able,Baker,ablebaker@marketo.com\n"
        "Charlie,Dog,charliedog@marketo.com\n"
        "Easy,Fox,easyfox@marketo.com\n"
    )
    body = mk.upload(csv, format="csv")
    assert body["success"] is True and body["requestId"]
    (res,) = body["result"]
    assert res["status"] == "Queued" and res["importId"] == str(res["batchId"])
    st = mk.wait(res["batchId"])
    assert st["status"] == "Complete"
    assert (st["numOfLeadsProcessed"], st["numOfRowsFailed"], st["numOfRowsWithWarning"]) == (
        3,
        0,
        0,
    )
    assert st["message"] == "Import succeeded, 3 records imported (3 members)"
    prof = mk.profile(key="email", value="CharlieDog@marketo.com")
    assert prof["properties"]["firstName"] == "Charlie"
    assert prof["properties"]["lastName"] == "Dog"


@pytest.mark.parametrize(("fmt", "sep"), [("tsv", "\t"), ("ssv", ";"), ("CSV", ",")])
def test_formats(mk: Mkto, fmt: str, sep: str) -> None:
    rows = [["email", "city", "score"], ["a@x.com", "Paris, FR", "3"], ["b@x.com", "Oslo", "4.5"]]
    text = "\n".join(sep.join(f'"{v}"' if sep in v else v for v in r) for r in rows) + "\n"
    st = mk.run(text, format=fmt)
    assert st["numOfLeadsProcessed"] == 2, st
    assert mk.profile(key="email", value="a@x.com")["properties"]["city"] == "Paris, FR"
    assert mk.profile(key="email", value="b@x.com")["properties"]["score"] == 4.5


def test_format_as_a_form_field_and_token_as_query(mk: Mkto) -> None:
    r = mk.http.post(
        "/bulk/v1/leads.json",
        data={"format": "tsv", "access_token": mk.token},
        files={"file": ("l.tsv", b"email\tcity\nq@x.com\tRome\n", "text/plain")},
    ).json()
    assert r["success"], r
    assert mk.wait(r["result"][0]["batchId"])["numOfLeadsProcessed"] == 1
    assert mk.profile(key="email", value="q@x.com")["properties"]["city"] == "Rome"


def test_gbk_file_and_bom(mk: Mkto) -> None:
    st = mk.run("email,city\nz@x.com,北京\n".encode("gbk"))
    assert st["numOfLeadsProcessed"] == 1
    assert mk.profile(key="email", value="z@x.com")["properties"]["city"] == "北京"
    st = mk.run("\ufeffemail,city\ny@x.com,上海\n".encode())
    assert mk.profile(key="email", value="y@x.com")["properties"]["city"] == "上海"


def test_failed_rows_are_reported_and_good_rows_kept(mk: Mkto) -> None:
    mk.run("email,score\nfirst@x.com,1\n")  # score is now a number property
    st = mk.run("email,score\nok1@x.com,2\nbad@x.com,lots\n,3\nok2@x.com,4\n")
    assert (st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == (2, 2)
    assert "failed" in st["message"]
    lines = mk.failures(st["batchId"]).splitlines()
    assert lines[0] == "email,score,Import Failure Reason"
    assert lines[1].startswith("bad@x.com,lots,") and "row 2" in lines[1] and "score" in lines[1]
    assert lines[2].startswith(",3,") and "row 3" in lines[2] and "email" in lines[2]
    assert mk.profile(key="email", value="ok2@x.com")["properties"]["score"] == 4.0
    assert mk.server.profile(mk.info["name"], key="email", value="bad@x.com").status_code == 404


def test_a_row_with_the_wrong_number_of_fields_fails_alone(mk: Mkto) -> None:
    st = mk.run("email,city\na1@x.com,A\na2@x.com,B,extra\na3@x.com\na4@x.com,D\n")
    assert (st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == (2, 2)
    text = mk.failures(st["batchId"])
    assert "row 2" in text and "row 3" in text
    assert mk.profile(key="email", value="a4@x.com")["properties"]["city"] == "D"


def test_later_row_wins_and_null_keeps_stored_values(mk: Mkto) -> None:
    mk.run("email,city,level\nw@x.com,Lyon,1\n")
    st = mk.run("email,city,level\nw@x.com,Nice,\nW@X.com,Nantes,\n")
    assert st["numOfRowsFailed"] == 0
    prof = mk.profile(key="email", value="w@x.com")
    assert prof["properties"]["city"] == "Nantes"
    assert prof["properties"]["level"] == 1.0  # an empty field leaves the stored value
    assert mk.server.admin("GET", f"/projects/{mk.info['name']}/stats").json()["profiles"] == 1


def test_lookup_by_mobile_and_by_id(mk: Mkto) -> None:
    mk.run("mobile,email,name\n13800000001,m@x.com,Ann\n", lookupField="mobile")
    prof = mk.profile(key="mobile", value="13800000001")
    assert {i["key"] for i in prof["identities"]} == {"mobile", "email"}
    uid = prof["user_id"]
    st = mk.run(f"id,name\n{uid},Anna\n999999,Nobody\n", lookupField="id")
    assert (st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == (1, 1)
    assert mk.profile(user_id=uid)["properties"]["name"] == "Anna"
    assert "no profile with user id 999999" in mk.failures(st["batchId"])


def test_an_identity_held_by_another_profile_is_a_warning(mk: Mkto) -> None:
    mk.run("email,mobile\none@x.com,13900000000\n")
    st = mk.run("email,mobile,city\ntwo@x.com,13900000000,Rome\n")
    assert (st["numOfLeadsProcessed"], st["numOfRowsWithWarning"]) == (1, 1)
    assert "belongs to another profile" in mk.failures(st["batchId"], "warnings")
    assert mk.profile(key="mobile", value="13900000000")["properties"]["email"] == "one@x.com"


def test_an_identity_on_rows_of_two_profiles_goes_with_the_last(mk: Mkto) -> None:
    mk.run("email,mobile\nheld@x.com,13700000009\n")
    st = mk.run(
        "email,mobile\n"
        "a@x.com,13700000001\n"  # row 1: the mobile is given to b@ on row 2
        "b@x.com,13700000001\n"
        "c@x.com,13700000002\n"
        "c@x.com,13700000002\n"  # the same profile twice: no conflict
        "d@x.com,13700000009\n"  # row 5: held by held@ already
    )
    assert (st["numOfLeadsProcessed"], st["numOfRowsWithWarning"]) == (5, 2)
    warnings = mk.failures(st["batchId"], "warnings").splitlines()
    assert [w.split(",")[0] for w in warnings[1:]] == ["a@x.com", "d@x.com"]
    assert "row 1: '13700000001' belongs to another profile" in warnings[1]
    assert mk.profile(key="mobile", value="13700000001")["properties"]["email"] == "b@x.com"
    assert mk.profile(key="mobile", value="13700000002")["properties"]["email"] == "c@x.com"
    assert mk.profile(key="mobile", value="13700000009")["properties"]["email"] == "held@x.com"


def test_strict_schema_ignores_unknown_columns_with_a_warning(mk: Mkto) -> None:
    mk.server.admin("PATCH", f"/projects/{mk.info['name']}", json={"strict_schema": True})
    st = mk.run("email,newcol\ns@x.com,v\n")
    assert (st["numOfLeadsProcessed"], st["numOfRowsWithWarning"]) == (1, 1)
    warnings = mk.failures(st["batchId"], "warnings").splitlines()
    assert warnings[0] == "email,newcol,Import Warning Reason"
    assert "newcol: unknown column ignored" in warnings[1]


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "file is empty"),
        (b"email,email\na@x.com,b@x.com\n", "duplicate column"),
        (b"name,city\nx,y\n", "lookup field 'email' is not a column"),
    ],
)
def test_whole_file_problems_fail_the_job(mk: Mkto, content: bytes, expect: str) -> None:
    st = mk.run(content)
    assert st["status"] == "Failed"
    assert expect in st["message"]


def test_header_only_completes_with_nothing(mk: Mkto) -> None:
    st = mk.run("email,city\n")
    assert st["status"] == "Complete" and st["numOfLeadsProcessed"] == 0


def errors_of(body: dict[str, Any]) -> str:
    assert body["success"] is False
    return str(body["errors"][0]["code"])


def test_request_errors(mk: Mkto, server: LiveServer) -> None:
    up = {"file": ("l.csv", b"email\na@x.com\n", "text/csv")}
    assert errors_of(mk.http.post("/bulk/v1/leads.json", files=up).json()) == "600"
    bad = {"Authorization": "Bearer nope"}
    assert errors_of(mk.http.post("/bulk/v1/leads.json", files=up, headers=bad).json()) == "601"
    forged = mk.token[:-4] + ("0000" if not mk.token.endswith("0000") else "1111")
    hdr = {"Authorization": f"Bearer {forged}"}
    assert errors_of(mk.http.post("/bulk/v1/leads.json", files=up, headers=hdr).json()) == "601"
    body = mk.http.post("/bulk/v1/leads.json", content=b"email\n", headers=mk.auth()).json()
    assert errors_of(body) == "612"
    body = mk.http.post(
        "/bulk/v1/leads.json", files={"other": ("o", b"x", "text/plain")}, headers=mk.auth()
    ).json()
    assert errors_of(body) == "1003" and "file" in body["errors"][0]["message"]
    body = mk.upload("email\na@x.com\n", format="xml")
    assert errors_of(body) == "1003" and "format" in body["errors"][0]["message"]
    body = mk.upload("email\na@x.com\n", lookupField="city")
    assert errors_of(body) == "1003" and "lookupField" in body["errors"][0]["message"]
    body = mk.upload("email\na@x.com\n", listId="abc")
    assert errors_of(body) == "1003" and "listId" in body["errors"][0]["message"]
    assert errors_of(mk.http.get("/bulk/v1/leads/batch/999999.json", headers=mk.auth()).json()) == (
        "610"
    )
    r = mk.http.get(
        "/identity/oauth/token",
        params={"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"},
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    # Another project's batch is not found, not revealed.
    other = Mkto(server, server.new_project(f"mk{next(_n)}"))
    batch = other.upload("email\no@x.com\n")["result"][0]["batchId"]
    body = mk.http.get(f"/bulk/v1/leads/batch/{batch}.json", headers=mk.auth()).json()
    assert errors_of(body) == "610"
    body = mk.http.get(f"/bulk/v1/leads/batch/{batch}/failures.json", headers=mk.auth()).json()
    assert errors_of(body) == "610"


def test_limits(tmp_path: Path) -> None:
    srv = LiveServer(
        tmp_path / "data",
        OPENCDP_MARKETO_MAX_FILE_BYTES="200",
        OPENCDP_JOB_WORKERS="0",  # nothing runs: jobs stay queued
        OPENCDP_IMPORT_QUEUE="2",
    ).start()
    try:
        mk = Mkto(srv, srv.new_project("limits"))
        big = "email\n" + "".join(f"u{i}@example.com\n" for i in range(50))
        assert errors_of(mk.upload(big)) == "1003"
        assert mk.upload("email\na@x.com\n")["success"]
        assert mk.upload("email\nb@x.com\n")["success"]
        body = mk.upload("email\nc@x.com\n")
        assert errors_of(body) == "1016"  # clients back off and retry on 1016
    finally:
        srv.stop()


def test_an_expired_token_is_602(tmp_path: Path) -> None:
    # The only timing here is waiting past the expiry: a slower machine only makes it surer.
    srv = LiveServer(tmp_path / "data", OPENCDP_ACCESS_TOKEN_TTL="1").start()
    try:
        mk = Mkto(srv, srv.new_project("expiry"))
        time.sleep(1.5)
        assert errors_of(mk.upload("email\nd@x.com\n")) == "602"
    finally:
        srv.stop()


def test_rotating_credentials_retires_tokens(mk: Mkto) -> None:
    assert mk.upload("email\nr@x.com\n")["success"]
    mk.server.admin("POST", f"/projects/{mk.info['name']}/credentials/rotate")
    assert errors_of(mk.upload("email\nr@x.com\n")) == "601"


def test_marketorestpython_works_unchanged(mk: Mkto, tmp_path: Path) -> None:
    from marketorestpython.client import MarketoClient

    client = MarketoClient("ignored", mk.info["client_id"], mk.info["client_secret"])
    client.host = mk.server.url  # point it at this server
    path = tmp_path / "leads.csv"
    path.write_text("email,firstName\nlib1@x.com,Lib\nlib2@x.com,Ray\n,NoEmail\n")
    (res,) = client.execute(method="import_lead", file=str(path), format="csv", lookupField="email")
    batch = res["batchId"]
    deadline = time.monotonic() + 300
    while (st := client.execute(method="get_import_lead_status", id=batch)[0])["status"] not in (
        "Complete",
        "Failed",
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st["status"] == "Complete"
    assert mk.profile(key="email", value="lib2@x.com")["properties"]["firstName"] == "Ray"
    failures = client.execute(method="get_import_failure_file", id=batch)
    assert "Import Failure Reason" in str(failures)


def test_list_id_puts_imported_leads_on_a_static_list(mk: Mkto) -> None:
    st = mk.run("email\nl1@x.com\nl2@x.com\n,\n", listId="7")
    assert (st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == (2, 1)
    mk.run("email\nl2@x.com\nl3@x.com\n", listId="7")  # l2 again: still once
    members = mk.server.admin("GET", f"/projects/{mk.info['name']}/lists/7").json()["user_ids"]
    expected = sorted(mk.profile(key="email", value=f"l{i}@x.com")["user_id"] for i in (1, 2, 3))
    assert members == expected
    other = mk.server.admin("GET", f"/projects/{mk.info['name']}/lists/8").json()
    assert other["user_ids"] == []
    # The list is an ID cluster of the segments API too.
    seg = mk.server.admin("GET", f"/projects/{mk.info['name']}/segments/list7").json()
    assert (seg["kind"], seg["users"], seg["version"]) == ("cluster_ids", 3, 2)
    page = mk.server.admin("GET", f"/projects/{mk.info['name']}/segments/list7/members").json()
    assert [m["user_id"] for m in page["members"]] == expected


def test_a_merge_keeps_list_membership_once(mk: Mkto) -> None:
    mk.run("email,mobile\nma@x.com,13500000001\nmb@x.com,\n", listId="5")
    a = mk.profile(key="email", value="ma@x.com")["user_id"]
    b = mk.profile(key="email", value="mb@x.com")["user_id"]
    r = mk.http.post(
        "/api/v1/api/import",
        params={"secret": mk.info["api_token"]},
        json={"type": "user", "properties": {"email": "mb@x.com", "mobile": "13500000001"}},
    )
    assert r.json()["errcode"] == 0
    assert mk.profile(key="email", value="mb@x.com")["user_id"] == min(a, b)
    members = mk.server.admin("GET", f"/projects/{mk.info['name']}/lists/5").json()["user_ids"]
    assert members == [min(a, b)]


def _poll(mk: Mkto, path: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = mk.http.get(path, headers=mk.auth()).json()
        assert body["success"], body
        if body["result"][0]["status"] in ("Complete", "Failed"):
            return dict(body["result"][0])
        time.sleep(0.05)
    raise AssertionError("never finished")


def test_custom_objects(mk: Mkto) -> None:
    up = {"file": ("cars.csv", b"vin,model,year\nV1,Golf,2019\nV2,Polo,2020\n,Up,2021\n")}
    body = mk.http.post(
        "/bulk/v1/customobjects/car_c/import.json", files=up, headers=mk.auth()
    ).json()
    assert body["success"], body
    batch = body["result"][0]["batchId"]
    st = _poll(mk, f"/bulk/v1/customobjects/car_c/import/{batch}/status.json")
    assert st["objectApiName"] == "car_c" and st["operation"] == "import"
    assert (st["numOfObjectsProcessed"], st["numOfRowsFailed"]) == (2, 1)
    text = mk.http.get(
        f"/bulk/v1/customobjects/car_c/import/{batch}/failures.json", headers=mk.auth()
    ).text
    assert "vin: the key field is empty" in text
    # Re-importing a key updates the object; another object's path does not know the batch.
    up = {"file": ("cars.csv", b"vin,model,year\nV1,Golf GTI,2019\n")}
    batch2 = mk.http.post(
        "/bulk/v1/customobjects/car_c/import.json", files=up, headers=mk.auth()
    ).json()["result"][0]["batchId"]
    assert (
        _poll(mk, f"/bulk/v1/customobjects/car_c/import/{batch2}/status.json")[
            "numOfObjectsProcessed"
        ]
        == 1
    )
    body = mk.http.get(
        f"/bulk/v1/customobjects/boat_c/import/{batch2}/status.json", headers=mk.auth()
    ).json()
    assert errors_of(body) == "610"
    body = mk.http.get(f"/bulk/v1/leads/batch/{batch2}.json", headers=mk.auth()).json()
    assert errors_of(body) == "610"


def test_custom_objects_match_on_their_declared_dedupe_fields(mk: Mkto) -> None:
    """An object declared with dedupe fields is matched on them, wherever they are in the file,
    not on its first column."""
    name = mk.info["name"]
    r = mk.server.admin(
        "PUT", f"/projects/{name}/collections/car_c",
        json={"fields": {"year": "number"}, "dedupe_fields": ["vin"]},
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["dedupe_fields"] == ["vin"], r.text

    def run(content: bytes, obj: str = "car_c") -> tuple[dict[str, Any], str]:
        body = mk.http.post(
            f"/bulk/v1/customobjects/{obj}/import.json",
            files={"file": ("o.csv", content)},
            headers=mk.auth(),
        ).json()
        assert body["success"], body
        batch = body["result"][0]["batchId"]
        st = _poll(mk, f"/bulk/v1/customobjects/{obj}/import/{batch}/status.json")
        failed = mk.http.get(
            f"/bulk/v1/customobjects/{obj}/import/{batch}/failures.json", headers=mk.auth()
        ).text
        return st, failed

    st, failed = run(b"owner,vin,year\na@x.com,V1,2019\nb@x.com,V1,2020\nc@x.com,,2021\n")
    assert (st["numOfObjectsProcessed"], st["numOfRowsFailed"]) == (2, 1), st
    assert "vin: a dedupe field of this object is empty" in failed
    doc = mk.server.admin("GET", f"/projects/{name}/collections/car_c/V1").json()
    assert doc == {"_id": "V1", "owner": "b@x.com", "vin": "V1", "year": 2020}  # the later row
    info = mk.server.admin("GET", f"/projects/{name}/collections/car_c").json()
    assert info["count"] == 1
    # A file without a dedupe field's column is refused at once, naming the field.
    body = mk.http.post(
        "/bulk/v1/customobjects/car_c/import.json",
        files={"file": ("o.csv", b"owner,year\na@x.com,2019\n")},
        headers=mk.auth(),
    ).json()
    assert errors_of(body) == "1003" and "vin" in body["errors"][0]["message"], body

    # Several dedupe fields: a record is the combination of their values.
    r = mk.server.admin(
        "PUT", f"/projects/{name}/collections/visit_c", json={"dedupe_fields": ["email", "day"]}
    )
    assert r.status_code == 200, r.text
    st, _ = run(b"note,email,day\nx,a@x.com,mon\ny,a@x.com,tue\nz,a@x.com,mon\n", "visit_c")
    assert st["numOfRowsFailed"] == 0, st
    info = mk.server.admin("GET", f"/projects/{name}/collections/visit_c").json()
    assert info["count"] == 2 and info["dedupe_fields"] == ["email", "day"]


def test_program_members(mk: Mkto) -> None:
    up = {"file": ("m.csv", b"email,firstName\npm1@x.com,Ann\npm2@x.com,Bo\n,Nobody\n")}
    body = mk.http.post(
        "/bulk/v1/program/1044/members/import.json",
        params={"programMemberStatus": "Registered"},
        files=up,
        headers=mk.auth(),
    ).json()
    assert body["success"], body
    batch = body["result"][0]["batchId"]
    st = _poll(mk, f"/bulk/v1/program/members/import/{batch}/status.json")
    assert (st["numOfRowsProcessed"], st["numOfRowsFailed"]) == (2, 1)
    assert mk.profile(key="email", value="pm2@x.com")["properties"]["firstName"] == "Bo"
    failures = mk.http.get(
        f"/bulk/v1/program/members/import/{batch}/failures.json", headers=mk.auth()
    ).text
    assert "row 3" in failures
    doc = mk.server.admin(
        "GET", f"/projects/{mk.info['name']}/collections/program_members/1044:pm1@x.com"
    ).json()
    assert doc == {
        "_id": "1044:pm1@x.com",
        "programId": 1044,
        "email": "pm1@x.com",
        "status": "Registered",
    }
    body = mk.http.post(
        "/bulk/v1/program/1044/members/import.json", files=up, headers=mk.auth()
    ).json()
    assert errors_of(body) == "1003" and "programMemberStatus" in body["errors"][0]["message"]


def test_the_default_lead_partition_is_accepted_and_another_refused(mk: Mkto) -> None:
    st = mk.run("email,city\npart1@x.com,Rome\n", partitionName="Default")
    assert st["numOfLeadsProcessed"] == 1
    before = mk.server.admin("GET", f"/projects/{mk.info['name']}/imports").json()
    body = mk.upload("email\npart2@x.com\n", partitionName="Europe")
    assert errors_of(body) == "1008"
    message = body["errors"][0]["message"]
    assert message.startswith("Access denied to partition 'Europe'") and "partitionName" in message
    # Nothing was queued, nor imported.
    assert mk.server.admin("GET", f"/projects/{mk.info['name']}/imports").json() == before
    assert mk.server.profile(mk.info["name"], key="email", value="part2@x.com").status_code == 404
