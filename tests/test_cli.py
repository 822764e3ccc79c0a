"""The installed ``opencdp`` command, run as a subprocess against the live server."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.liveserver import ADMIN_TOKEN, LiveServer, free_port

_n = itertools.count(1)


def _exe() -> str:
    beside = Path(sys.executable).parent / "opencdp"
    if beside.exists():
        return str(beside)
    found = shutil.which("opencdp")
    assert found, "the opencdp command is not installed"
    return found


OPENCDP = _exe()


def unique(prefix: str = "cli") -> str:
    return f"{prefix}-{next(_n)}-{uuid.uuid4().hex[:6]}"


def run(
    server: LiveServer, *args: str, token: str | None = ADMIN_TOKEN, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDP_")}
    full_env["OPENCDP_URL"] = server.url
    if token is not None:
        full_env["OPENCDP_ADMIN_TOKEN"] = token
    full_env.update(env)
    return subprocess.run(
        [OPENCDP, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def ok_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def failed(proc: subprocess.CompletedProcess[str], exit_code: int, code: str) -> dict[str, Any]:
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    body = json.loads(proc.stderr)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code, body
    assert "Traceback" not in proc.stderr
    return dict(body["error"])


@pytest.fixture
def created(server: LiveServer) -> dict[str, Any]:
    """A project made with ``opencdp project create``."""
    return dict(ok_json(run(server, "project", "create", unique(), "--json")))


def send(server: LiveServer, secret: str, body: dict[str, Any]) -> None:
    resp = httpx.post(
        server.url + "/api/v1/api/import", params={"secret": secret}, json=body, timeout=30
    )
    assert resp.json() == {"errcode": 0, "errmsg": "success"}, resp.text


def test_version(server: LiveServer) -> None:
    proc = run(server, "--version")
    assert proc.returncode == 0
    assert "opencdp" in proc.stdout


def test_project_create_prints_exactly_the_credentials(
    server: LiveServer, created: dict[str, Any]
) -> None:
    assert set(created) == {
        "project_id",
        "key",
        "name",
        "timezone",
        "client_id",
        "client_secret",
        "api_token",
    }
    assert created["timezone"] == "Asia/Shanghai"
    assert isinstance(created["project_id"], int)
    # The printed token is live.
    send(server, created["api_token"], {"type": "user", "properties": {"mobile": "1"}})


def test_project_create_with_timezone(server: LiveServer) -> None:
    name = unique()
    data = ok_json(
        run(server, "project", "create", name, "--timezone", "America/New_York", "--json")
    )
    assert data["name"] == name
    assert data["timezone"] == "America/New_York"
    # Local times of the project are read in its timezone.
    send(
        server,
        data["api_token"],
        {
            "type": "event",
            "event": "e",
            "properties": {"mobile": "tz", "event_id": "1", "create_time": "2024-07-01 12:00:00"},
        },
    )
    prof = ok_json(
        run(
            server,
            "profile",
            "show",
            "--project",
            name,
            "--key",
            "mobile",
            "--value",
            "tz",
            "--json",
        )
    )
    assert prof["latest_events"][0]["event_time"] == "2024-07-01T16:00:00Z"


def test_project_create_strict(server: LiveServer) -> None:
    name = unique()
    data = ok_json(run(server, "project", "create", name, "--strict", "--json"))
    listed = ok_json(run(server, "project", "list", "--json"))
    (mine,) = [p for p in listed if p["project_id"] == data["project_id"]]
    assert mine["strict_schema"] is True
    resp = httpx.post(
        server.url + "/api/v1/api/import",
        params={"secret": data["api_token"]},
        json={"type": "user", "properties": {"mobile": "1", "unknown": 1}},
    )
    assert resp.json()["errcode"] == 20003


def test_project_create_errors(server: LiveServer, created: dict[str, Any]) -> None:
    err = failed(run(server, "project", "create", created["name"], "--json"), 1, "conflict")
    assert created["name"] in err["message"]
    err = failed(
        run(server, "project", "create", unique(), "--timezone", "Nowhere/City"),
        1,
        "validation_failed",
    )
    assert err["field"] == "timezone"
    err = failed(run(server, "project", "create", "123"), 1, "validation_failed")
    assert err["field"] == "name"


def test_project_list(server: LiveServer, created: dict[str, Any]) -> None:
    listed = ok_json(run(server, "project", "list", "--json"))
    assert isinstance(listed, list)
    (mine,) = [p for p in listed if p["project_id"] == created["project_id"]]
    assert mine["name"] == created["name"]
    assert mine["key"] == created["key"]
    assert created["api_token"] not in json.dumps(listed)
    # Without --json: readable text naming the project.
    text = run(server, "project", "list")
    assert text.returncode == 0
    assert f"name: {created['name']}" in text.stdout


def test_project_stats_by_name_key_and_id(server: LiveServer, created: dict[str, Any]) -> None:
    send(server, created["api_token"], {"type": "user", "properties": {"mobile": "s1", "a": 1}})
    send(
        server,
        created["api_token"],
        {
            "type": "event",
            "event": "x",
            "properties": {"mobile": "s1", "event_id": "e1", "create_time": "2024-01-01 00:00:00"},
        },
    )
    # A profile read is a barrier: everything acknowledged is in the store afterwards.
    ok_json(
        run(
            server,
            "profile",
            "show",
            "--project",
            created["name"],
            "--key",
            "mobile",
            "--value",
            "s1",
            "--json",
        )
    )
    results = [
        ok_json(run(server, "project", "stats", "--project", str(ref), "--json"))
        for ref in (created["name"], created["key"], created["project_id"])
    ]
    assert results[0] == results[1] == results[2]
    stats = results[0]
    assert stats["project_id"] == created["project_id"]
    assert stats["name"] == created["name"]
    assert (stats["profiles"], stats["events"], stats["identities"]) == (1, 1, 1)


def test_project_rotate(server: LiveServer, created: dict[str, Any]) -> None:
    new = ok_json(run(server, "project", "rotate", "--project", created["name"], "--json"))
    assert new["api_token"] != created["api_token"]
    resp = httpx.post(
        server.url + "/api/v1/api/import",
        params={"secret": created["api_token"]},
        json={"type": "user", "properties": {"mobile": "1"}},
    )
    assert resp.json()["errcode"] == 20000
    send(server, new["api_token"], {"type": "user", "properties": {"mobile": "1"}})


def test_property_add_and_list(server: LiveServer, created: dict[str, Any]) -> None:
    p = created["name"]
    for table, name, ptype in (
        ("user", "level", "number"),
        ("user", "vip", "bool"),
        ("event", "paid_at", "datetime"),
        ("event", "tags", "list"),
        ("event", "shop", "string"),
    ):
        data = ok_json(
            run(server, "property", "add", "--project", p, "--table", table, name, ptype, "--json")
        )
        assert (data["name"], data["table"], data["type"], data["created"]) == (
            name,
            table,
            ptype,
            True,
        )
    again = ok_json(
        run(
            server,
            "property",
            "add",
            "--project",
            p,
            "--table",
            "user",
            "level",
            "number",
            "--json",
        )
    )
    assert again["created"] is False
    failed(
        run(server, "property", "add", "--project", p, "--table", "user", "level", "string"),
        1,
        "conflict",
    )
    # A type the CLI does not know is refused before the server is asked.
    bad = run(server, "property", "add", "--project", p, "--table", "user", "x", "integer")
    assert bad.returncode != 0
    assert "integer" in bad.stderr

    users = ok_json(run(server, "property", "list", "--project", p, "--table", "user", "--json"))
    assert {u["name"]: u["type"] for u in users} == {
        "mobile": "string",
        "email": "string",
        "level": "number",
        "vip": "bool",
    }
    events = ok_json(run(server, "property", "list", "--project", p, "--table", "event", "--json"))
    assert {e["name"] for e in events} == {"paid_at", "tags", "shop"}


def test_identity_keys_set_and_profile_show(server: LiveServer, created: dict[str, Any]) -> None:
    p = created["name"]
    keys = ok_json(
        run(server, "identity-keys", "set", "--project", p, "member_no", "email", "--json")
    )
    assert sorted(keys["keys"]) == ["email", "member_no"]  # order carries no meaning
    ok_json(
        run(
            server,
            "property",
            "add",
            "--project",
            p,
            "--table",
            "user",
            "level",
            "number",
            "--json",
        )
    )
    send(
        server,
        created["api_token"],
        {
            "type": "event",
            "event": "purchase",
            "properties": {
                "member_no": "M-42",
                "email": "Zhao@Example.com",
                "event_id": "cli-1",
                "create_time": "2024-05-06 07:08:09",
                "amount": 12.5,
            },
        },
    )
    send(
        server,
        created["api_token"],
        {"type": "user", "properties": {"member_no": "M-42", "level": "3", "city": "Wuhan"}},
    )

    prof = ok_json(
        run(
            server,
            "profile",
            "show",
            "--project",
            p,
            "--key",
            "member_no",
            "--value",
            "M-42",
            "--json",
        )
    )
    assert prof["properties"] == {
        "member_no": "M-42",
        "email": "Zhao@Example.com",
        "level": 3,
        "city": "Wuhan",
    }
    assert {i["key"]: i["value"] for i in prof["identities"]} == {
        "member_no": "M-42",
        "email": "zhao@example.com",
    }
    assert prof["event_count"] == 1
    (ev,) = prof["latest_events"]
    assert ev["event_id"] == "cli-1"
    assert ev["event"] == "purchase"
    assert ev["properties"] == {"amount": 12.5}

    by_email = ok_json(
        run(
            server,
            "profile",
            "show",
            "--project",
            p,
            "--key",
            "email",
            "--value",
            "ZHAO@example.com",
            "--json",
        )
    )
    by_id = ok_json(
        run(
            server,
            "profile",
            "show",
            "--project",
            created["key"],
            "--user-id",
            str(prof["user_id"]),
            "--json",
        )
    )
    assert by_email == by_id == prof

    text = run(server, "profile", "show", "--project", p, "--key", "member_no", "--value", "M-42")
    assert text.returncode == 0
    assert "event_count: 1" in text.stdout
    assert "city: Wuhan" in text.stdout


def test_profile_show_missing_profile(server: LiveServer, created: dict[str, Any]) -> None:
    err = failed(
        run(
            server,
            "profile",
            "show",
            "--project",
            created["name"],
            "--key",
            "mobile",
            "--value",
            "nobody",
            "--json",
        ),
        2,
        "not_found",
    )
    assert "nobody" in err["message"]
    failed(
        run(server, "profile", "show", "--project", created["name"], "--user-id", "424242"),
        2,
        "not_found",
    )


def test_missing_project(server: LiveServer) -> None:
    ghost = unique("ghost")
    err = failed(
        run(
            server,
            "profile",
            "show",
            "--project",
            ghost,
            "--key",
            "mobile",
            "--value",
            "1",
            "--json",
        ),
        2,
        "not_found",
    )
    assert ghost in err["message"]
    failed(run(server, "project", "stats", "--project", ghost, "--json"), 2, "not_found")
    failed(run(server, "identity-keys", "set", "--project", ghost, "k"), 2, "not_found")


def test_profile_show_needs_key_and_value_or_user_id(
    server: LiveServer, created: dict[str, Any]
) -> None:
    err = failed(
        run(server, "profile", "show", "--project", created["name"], "--key", "mobile"),
        1,
        "validation_failed",
    )
    assert err["field"] == "key"
    err = failed(
        run(
            server, "profile", "show", "--project", created["name"], "--key", "city", "--value", "x"
        ),
        1,
        "validation_failed",
    )
    assert "city" in err["message"]


def test_wrong_admin_token(server: LiveServer) -> None:
    name = unique()
    err = failed(
        run(server, "project", "create", name, "--json", token="adm_wrong"), 1, "auth_failed"
    )
    assert "adm_wrong" not in err["message"]
    failed(run(server, "project", "list", "--json", token="adm_wrong"), 1, "auth_failed")
    names = [p["name"] for p in ok_json(run(server, "project", "list", "--json"))]
    assert name not in names


def test_admin_token_from_the_data_dir(server: LiveServer, tmp_path: Path) -> None:
    # Without OPENCDP_ADMIN_TOKEN the token is read from <data dir>/admin_token.
    missing = run(server, "project", "list", "--data-dir", str(tmp_path), token=None)
    err = failed(missing, 1, "missing_credential")
    assert "admin_token" in err["message"]
    (tmp_path / "admin_token").write_text(ADMIN_TOKEN + "\n")
    listed = ok_json(
        run(server, "project", "list", "--data-dir", str(tmp_path), "--json", token=None)
    )
    assert isinstance(listed, list) and listed


def test_server_unreachable(server: LiveServer) -> None:
    proc = run(server, "project", "list", "--url", f"http://127.0.0.1:{free_port()}", "--json")
    err = failed(proc, 1, "unavailable")
    assert "cannot reach" in err["message"]


def test_import_waits_and_reports_failures(
    server: LiveServer, created: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_text("email,city\nc1@x.com,Oslo\n,Nowhere\nc2@x.com,Bergen\n")
    job = ok_json(
        run(server, "import", str(path), "--project", created["name"], "--wait", "--json")
    )
    assert (job["state"], job["imported"], job["failed"]) == ("complete", 2, 1)
    assert job["failures_file"].endswith(f"/imports/{job['job_id']}/failures")
    failures = httpx.get(job["failures_file"], headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert "row 2" in failures.text
    prof = server.profile(created["name"], key="email", value="c2@x.com").json()
    assert prof["properties"]["city"] == "Bergen"


def test_import_events_json_lines_insert_only(
    server: LiveServer, created: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(
        '{"event": "buy", "event_id": "c1", "create_time": "2024-01-01 00:00:00", "mobile": "5"}\n'
    )
    args = ("import", str(path), "--project", created["name"], "--into", "events")
    job = ok_json(run(server, *args, "--mode", "insert", "--wait", "--json"))
    assert (job["imported"], job["failed"]) == (1, 0)
    job = ok_json(run(server, *args, "--mode", "insert", "--wait", "--json"))
    assert (job["imported"], job["failed"]) == (0, 1)


def test_import_bad_option_is_a_json_error(
    server: LiveServer, created: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "x.csv"
    path.write_text("email\na@x.com\n")
    err = failed(
        run(server, "import", str(path), "--project", created["name"], "--lookup-field", "city"),
        1,
        "validation_failed",
    )
    assert err["field"] == "lookup_field"
    failed(run(server, "import", str(path), "--project", "no-such-project"), 2, "not_found")


def test_segment_commands(server: LiveServer, created: dict[str, Any], tmp_path: Path) -> None:
    name = created["name"]
    for i, level in enumerate((1, 3, 5)):
        send(
            server, created["api_token"],
            {"type": "user", "properties": {"mobile": f"1370000000{i}", "level": level}},
        )  # fmt: skip
    qp = {"filts": [{"columnName": "level", "comparator": "greaterEqual", "ftv": ["3"]}]}
    defn = tmp_path / "def.json"
    defn.write_text(json.dumps({"qp": qp}))
    assert ok_json(run(server, "segment", "preview", "--project", name, str(defn), "--json")) == {
        "size": 2
    }
    # The admin API speaks the core's kinds: SQL, and a tag of SQL (two columns).
    sql = "SELECT user_id, CAST(level AS VARCHAR) FROM users WHERE level >= 3"
    for body in ({"sql": sql.replace(", CAST(level AS VARCHAR)", "")},
                 {"kind": "tag_sql", "sql": sql}):  # fmt: skip
        defn.write_text(json.dumps(body))
        out = run(server, "segment", "preview", "--project", name, str(defn), "--json")
        assert ok_json(out) == {"size": 2}
    defn.write_text(json.dumps({"kind": "cluster_by_static_sql", "sql": sql}))
    failed(run(server, "segment", "preview", "--project", name, str(defn)), 1, "validation_failed")
    r = httpx.post(
        server.url + "/open/user-cluster-add",
        params={"token": created["api_token"]},
        json={
            "projectId": created["project_id"],
            "clusterName": "lvl3",
            "displayName": "level 3+",
            "qp": qp,
        },
    )
    assert r.json()["return_code"] == 0, r.text
    for _ in range(600):  # a hang guard, not a performance limit
        seg = ok_json(run(server, "segment", "show", "--project", name, "lvl3", "--json"))
        if seg["progress"] == 100:
            break
        time.sleep(0.05)
    assert seg["users"] == 2
    assert (seg["catalog"], seg["kind"]) == ("cluster", "cluster_conditions")
    listed = ok_json(run(server, "segment", "list", "--project", name, "--json"))
    assert [s["name"] for s in listed] == ["lvl3"]
    page = ok_json(run(server, "segment", "members", "--project", name, "lvl3", "--json"))
    ids = [m["user_id"] for m in page["members"]]
    assert len(ids) == 2
    csv_out = run(server, "segment", "members", "--project", name, "lvl3", "--csv")
    assert csv_out.returncode == 0 and csv_out.stdout.split() == ["user_id", *map(str, ids)]
    mine = ok_json(run(server, "segment", "of-user", "--project", name, str(ids[0]), "--json"))
    assert [s["segment"] for s in mine] == ["lvl3"]
    job = ok_json(run(server, "segment", "refresh", "--project", name, "lvl3", "--json"))
    assert job["job_id"] > 0
    failed(run(server, "segment", "show", "--project", name, "nope"), 2, "not_found")


def test_export_backfill(server: LiveServer, created: dict[str, Any]) -> None:
    name = created["name"]
    # A new project has no closed period yet: nothing to queue, and saying so is a success.
    out = ok_json(
        run(server, "export", "backfill", "--project", name, "--from", "2024-01-01",
            "--to", "2024-01-02", "--json")
    )  # fmt: skip
    assert out == {"queued": 0}
    err = failed(
        run(server, "export", "backfill", "--project", name, "--from", "01/02/2024", "--to", "x"),
        1, "validation_failed",
    )  # fmt: skip
    assert "YYYY-MM-DD" in err["message"]


def test_project_settings_and_collection_declarations(
    server: LiveServer, created: dict[str, Any]
) -> None:
    name = created["name"]
    data = ok_json(
        run(server, "project", "set", "--project", name, "--wechat-env", "prod-7g2x9",
            "--wechat-env", "test-1a2b", "--export-format", "jsonl", "--json")
    )  # fmt: skip
    assert data["wechat_envs"] == ["prod-7g2x9", "test-1a2b"]
    assert data["export_format"] == "jsonl"
    other = ok_json(run(server, "project", "create", unique(), "--json"))
    failed(
        run(server, "project", "set", "--project", other["name"], "--wechat-env", "prod-7g2x9",
            "--json"),
        1, "conflict",
    )  # fmt: skip
    data = ok_json(run(server, "project", "set", "--project", name, "--no-wechat-envs", "--json"))
    assert data["wechat_envs"] == []
    data = ok_json(
        run(server, "collection", "declare", "--project", name, "car_c", "--field", "year:number",
            "--dedupe", "vin", "--json")
    )  # fmt: skip
    assert data["fields"] == {"year": "number"} and data["dedupe_fields"] == ["vin"]
    data = ok_json(
        run(server, "project", "set", "--project", name, "--login-user-key", "email", "--json")
    )
    assert data["login_user_key"] == "email"


def test_td_app_add_list_remove(server: LiveServer, created: dict[str, Any]) -> None:
    p = created["name"]
    mine = unique("app").replace("-", "_")
    added = ok_json(run(server, "td-app", "add", "--project", p, mine, "--json"))
    assert added["app_id"] == mine and added["app_ids"] == [mine]
    assert added["identity_keys"][-2:] == ["#account_id", "#distinct_id"]
    generated = ok_json(run(server, "td-app", "add", "--project", p, "--json"))["app_id"]
    assert len(generated) == 32
    listed = ok_json(run(server, "td-app", "list", "--project", p, "--json"))
    assert sorted(listed["app_ids"]) == sorted([mine, generated])
    left = ok_json(run(server, "td-app", "remove", "--project", p, mine, "--json"))
    assert left["app_ids"] == [generated]
    failed(run(server, "td-app", "remove", "--project", p, mine, "--json"), 2, "not_found")
    err = failed(
        run(server, "td-app", "add", "--project", p, "bad id", "--json"), 1, "validation_failed"
    )
    assert err["field"] == "app_id"
