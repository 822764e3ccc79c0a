"""A scaled-out deployment end to end: two ``opencdp serve --no-workers`` processes and two
``opencdp worker`` processes over one PostgreSQL database (metadata, jobs, the ingest queue and
the analytic store) and an S3 bucket (moto's server), all started here on loopback.

Every vendor surface's main flow runs through it; a server killed with ``kill -9`` while eight
clients send loses no acknowledged record and stores none twice; a worker killed in the middle
of an import leaves it to the other, which finishes it exactly once; and the same input gives
the same users, events, segment members and export rows as the embedded default.

Records of the comparison are sent through servers whose clock runs three hours behind
(libfaketime), so that the hour they are received in is over, and exported, while the test
runs.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from opencdp import crashpoints
from tests.conftest import Project
from tests.engines import S3_ENV, new_bucket, new_database, s3_endpoint
from tests.liveserver import ADMIN_TOKEN, LiveServer
from tests.surfaces.test_durability import _kill_under_load
from tests.surfaces.test_growingio import Client, local_hour
from tests.surfaces.test_marketo import Mkto
from tests.surfaces.test_thinkingdata import SEED_QP, TA, people
from tests.surfaces.test_wechat import Wx

FAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), "")
BEHIND = {  # a process whose clock runs three hours behind (its monotonic clock as it is)
    "LD_PRELOAD": FAKETIME,
    "FAKETIME": "-3h",
    "FAKETIME_DONT_FAKE_MONOTONIC": "1",
}


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 300  # a hang guard, not a performance limit
    while not (got := check()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)
    return got


class Worker:
    """An ``opencdp worker`` process."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, **env}
        self.output = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "opencdp", "worker", "--data-dir", str(self.data_dir),
             "--log-level", "warning"],
            stdout=self.output.open("ab"), stderr=subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        wait_for(lambda: self._started(), "the worker started")
        return self

    def _started(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited: {self.output.read_text()[-2000:]}")
        return b"worker (pid" in self.output.read_bytes()

    def exited(self, timeout: float = 300) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)


@dataclass
class Deployment:
    root: Path
    env: dict[str, str]
    servers: list[LiveServer] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    others: list[LiveServer | Worker] = field(default_factory=list)

    def server(self, name: str, **env: str) -> LiveServer:
        srv = LiveServer(self.root / name, **{**self.env, **env}).start()
        self.others.append(srv)
        return srv

    def worker(self, name: str, **env: str) -> Worker:
        w = Worker(self.root / name, {**self.env, **env}).start()
        self.others.append(w)
        return w

    def pending(self, project: str) -> int:
        return int(self.servers[0].admin("GET", f"/projects/{project}/stats").json()["pending"])


def shared_env(database: str, bucket: str) -> dict[str, str]:
    """What every process of the deployment is given."""
    return {
        **S3_ENV,
        "OPENCDP_META_URL": database,
        "OPENCDP_STORE_URL": database,
        "OPENCDP_BLOB_URL": f"s3://{bucket}/deploy",
        "OPENCDP_S3_ENDPOINT_URL": s3_endpoint(),
        "OPENCDP_SECRET_KEY": "5c" * 32,
        "OPENCDP_ADMIN_TOKEN": ADMIN_TOKEN,
        "OPENCDP_SERVE_WORKERS": "0",
        "OPENCDP_FLUSH_INTERVAL": "0.05",
        "OPENCDP_JOB_LEASE_SECONDS": "3",
        "OPENCDP_JOB_HEARTBEAT_SECONDS": "0.5",
        "OPENCDP_IMPORT_BATCH_ROWS": "100",
        "OPENCDP_EXPORT_PART_BYTES": "4000",
        # The scheduler leaves the hours of the servers running behind to the test's own
        # export requests: its catch-up would export such an hour while records for it still
        # arrive (a clock three hours behind is beyond any export delay).
        "OPENCDP_EXPORT_DELAY": str(6 * 3600),
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("scaled")
    d = Deployment(root, shared_env(new_database(), new_bucket()))
    try:
        d.servers = [LiveServer(root / f"server{n}", **d.env).start() for n in (1, 2)]
        d.workers = [Worker(root / f"worker{n}", d.env).start() for n in (1, 2)]
        yield d
    finally:
        for proc in (*d.others, *d.servers, *d.workers):
            if isinstance(proc, LiveServer):
                if proc.proc is not None and proc.proc.poll() is None:
                    proc.stop()
            else:
                proc.stop()


# ---- every surface ---------------------------------------------------------------------------
def test_every_surface_works_through_two_servers_and_two_workers(deployment: Deployment) -> None:
    one, two = deployment.servers
    info = one.new_project("surfaces")
    # Credentials created through one server work on the other within the catalog's refresh.
    on_two = Project(two, info)
    wait_for(lambda: on_two.user(mobile="13900000009").json()["errcode"] == 0, "credentials")

    # Dmartech (and ThinkingData's segments over it): records through both servers, applied
    # by whichever worker leads the queue; the cluster refreshed by a worker's job.
    on_one = Project(one, info)
    people(TA(on_one))
    ta = TA(on_two)
    wait_for(lambda: deployment.pending("surfaces") == 0, "the records applied")
    # (the properties the records created through one server: the other's catalog looks
    # again at once when a definition names one it does not hold yet)
    r = ta.add("seed", clusterCatalog="catalog_cluster",
               clusterType="cluster_by_static_condition", qp=SEED_QP)  # fmt: skip
    assert r["return_code"] == 0, r
    assert ta.wait("seed")["usersNum"] == 1
    assert set(ta.members("seed")) == {ta.uid("1390000000a")}
    assert deployment.pending("surfaces") == 0

    # Marketo: the import job runs on a worker, its files are in the bucket.
    mk = Mkto(one, one.new_project("mk_scaled"))
    mk.run("email,score\nfirst@x.com,1\n")  # score is now a number property
    st = mk.run("email,score\nok1@x.com,2\nbad@x.com,lots\nok2@x.com,4\n")
    assert (st["status"], st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == ("Complete", 2, 1)
    assert mk.failures(st["batchId"]).splitlines()[1].startswith("bad@x.com,lots,")
    assert Mkto(two, mk.info).profile(key="email", value="ok2@x.com")["properties"]["score"] == 4

    # WeChat: uploaded through one server, imported by a worker, its error file served.
    wx = Wx(two, two.new_project("wx_scaled"))
    st = wx.run("users", "u.csv", "mobile,email,level\n13800000000,a@x.com,1\n,,2\n")
    assert (st["status"], st["record_success"], st["record_fail"]) == ("success", 1, 1)
    assert "row 2" in httpx.get(st["file_url"]).text

    # GrowingIO: a closed hour exported by a worker, its parts served by the object store.
    assert FAKETIME, "libfaketime (the faketime package) runs a server with its clock behind"
    behind = deployment.server("gio-sender", **BEHIND)
    gio = Client(behind)
    received = datetime.now(UTC) - timedelta(hours=3)
    for i in range(120):
        gio.send({"type": "event", "event": "pay",
                  "properties": {"event_id": f"g{i}", "mobile": f"1{i % 12:010d}", "amount": i,
                                 "create_time": "2024-01-02 03:04:05"}})  # fmt: skip
    behind.stop()
    gio.server, gio.http = two, httpx.Client(base_url=two.url, timeout=60)  # type: ignore[assignment]
    wait_for(lambda: deployment.pending(gio.info["name"]) == 0, "the events applied")
    rows = export_rows(two, gio, local_hour(received))
    assert sorted(r["eventId"] for r in rows) == sorted(f"g{i}" for i in range(120))


def export_rows(srv: LiveServer, gio: Client, hour: str) -> list[dict[str, Any]]:
    """The custom events of a closed hour, exported (by a worker's job) and read back through
    GrowingIO's download links (gzip CSV, a header each, ``\\`` the escape character)."""
    r = srv.admin(
        "POST",
        f"/projects/{gio.info['name']}/exports",
        json={"export_type": "hour", "export_date": hour, "data_types": ["custom_event"]},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = gio.insights(f"hour/custom_event/{gio.ai}/{hour}.json", expire=10).json()
    assert body["status"] == "FINISHED", body
    out: list[dict[str, Any]] = []
    for link in body["downloadLinks"]:
        text = gzip.decompress(httpx.get(link).content).decode()
        out += list(csv.DictReader(io.StringIO(text), escapechar="\\"))
    return out


# ---- kill -9 ---------------------------------------------------------------------------------
def test_a_server_killed_during_concurrent_imports_loses_and_repeats_nothing(
    deployment: Deployment,
) -> None:
    """kill -9 of one of the servers while eight clients send through it: every record it
    acknowledged is stored once, by the workers; the other server goes on serving."""
    victim = deployment.server("victim")
    info, acked = _kill_under_load(victim)
    wait_for(lambda: deployment.pending("midflight") == 0, "the queue applied")
    stored = victim.stored_event_ids(info["project_id"])
    assert set(acked) <= stored  # none lost
    # Beyond them, at most the eight requests in flight at the kill (committed, not answered).
    assert len(stored) <= len(acked) + 8
    stats = deployment.servers[1].admin("GET", "/projects/midflight/stats").json()
    assert stats["events"] == len(stored)  # each once


def test_a_worker_killed_mid_import_leaves_it_to_another_which_finishes_it_once(
    deployment: Deployment,
) -> None:
    """The only worker dies (as kill -9 would stop it) right after an import batch is in the
    store and before its progress is recorded; once its lease expires another worker takes
    the job over, and the import ends with every row imported once."""
    for w in deployment.workers:
        w.stop()
    crashing = deployment.worker("crashing", OPENCDP_CRASH_AT="import.store_written")
    one = deployment.servers[0]
    mk = Mkto(one, one.new_project("mk_killed"))
    rows = "".join(f"lead{i}@x.com,{i}\n" for i in range(1000))
    body = mk.upload("email,score\n" + rows)
    assert body["success"], body
    code = crashing.exited()
    assert code == crashpoints.EXIT_CODE
    assert mk.status(body["result"][0]["batchId"])["status"] in ("Queued", "Importing")
    deployment.workers = [w.start() for w in deployment.workers]
    st = mk.wait(body["result"][0]["batchId"])
    assert (st["status"], st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == ("Complete", 1000, 0)
    stats = one.admin("GET", "/projects/mk_killed/stats").json()
    assert stats["profiles"] == 1000
    assert mk.profile(key="email", value="lead999@x.com")["properties"]["score"] == 999


# ---- the same as the embedded default ------------------------------------------------------
IDENTITIES = [("mobile", f"1380000000{n}") for n in range(8)] + [
    ("email", f"p{n}@x.com") for n in range(8)
]


def send_scenario(project: Project) -> None:
    """Profiles, a merge of two people by one record, and events of several of them."""
    for n in range(6):
        assert project.user(mobile=f"1380000000{n}", city=f"c{n}", level=n).json()["errcode"] == 0
    for n in range(4):
        assert project.user(email=f"p{n}@x.com", vip=n % 2 == 0).json()["errcode"] == 0
    # mobile 1 and email 1 are one person from now on; email 6 joins mobile 6 (new)
    project.user(mobile="13800000001", email="p1@x.com", city="merged")
    project.user(mobile="13800000006", email="p6@x.com", level=6)
    for n in range(40):
        who = {"mobile": f"1380000000{n % 7}"} if n % 3 else {"email": f"p{n % 4}@x.com"}
        r = project.event(f"ev{n}", "pay" if n % 2 else "view", amount=n, **who,
                          create_time=f"2024-01-02 03:{n:02d}:05")  # fmt: skip
        assert r.json()["errcode"] == 0, r.text


def finish_scenario(srv: LiveServer, info: dict[str, Any]) -> None:
    """A Marketo import (updating stored people and adding new ones) and a cluster."""
    st = Mkto(srv, info).run(
        "email,score\np0@x.com,10\np2@x.com,12\np7@x.com,17\nnew@x.com,1\n", lookupField="email"
    )
    assert st["status"] == "Complete", st
    # (a property the import created on a worker is known to the server within the catalog's
    # refresh delay)
    wait_for(
        lambda: "score" in srv.profile(info["name"], key="email", value="p7@x.com").json()
        ["properties"],
        "the imported property known",
    )  # fmt: skip
    ta = TA(Project(srv, info))
    qp = {"events": [{"eventName": "pay", "comparator": "greater", "num": "2"}],
          "event_relation": "and", "filts": [], "relation": "and",
          "event_user_relation": "and"}  # fmt: skip
    r = ta.add("payers", clusterCatalog="catalog_cluster",
               clusterType="cluster_by_static_condition", qp=qp)  # fmt: skip
    assert r["return_code"] == 0, r
    assert ta.wait("payers")["progress"] == 100


def outcome(srv: LiveServer, info: dict[str, Any], hour: str) -> dict[str, Any]:
    """What a deployment holds after the scenario, with user ids replaced by the identity
    values of their users (ids are the deployment's own)."""
    name = info["name"]
    people: dict[int, Any] = {}

    def person(**params: Any) -> Any:
        r = srv.profile(name, **params)
        if r.status_code == 404:
            return None
        body = r.json()
        uid = int(body["user_id"])
        if uid not in people:
            ids = frozenset(f"{i['key']}:{i['value']}" for i in body["identities"])
            people[uid] = ids
        return body

    users = {}
    for key, value in [*IDENTITIES, ("email", "new@x.com")]:
        body = person(key=key, value=value)
        if body is not None:
            events = (body["event_count"], sorted(e["event_id"] for e in body["latest_events"]))
            users[f"{key}:{value}"] = (people[int(body["user_id"])], body["properties"], events)
    members = srv.admin("GET", f"/projects/{name}/segments/payers/members").json()["members"]
    segment = {people[int(m["user_id"])] for m in members if person(user_id=m["user_id"])}
    gio = Client.__new__(Client)
    gio.server, gio.info, gio.ai = srv, info, info["key"]  # type: ignore[assignment]
    gio.client_id, gio.secret = info["client_id"], info["client_secret"]
    gio.http = httpx.Client(base_url=srv.url, timeout=60)
    rows = []
    for row in export_rows(srv, gio, hour):
        visitor = row.pop("visitUserId") or row.pop("loginUserId", None)
        row.pop("sendTime", None)  # (when it was received: the run's own)
        row.pop("loginUserId", None)
        rows.append({**row, "user": sorted(people.get(int(visitor), ())) if visitor else None})
    return {"users": users, "segment": segment, "export": sorted(rows, key=lambda r: r["eventId"])}


def test_the_same_input_gives_the_same_result_as_the_embedded_default(
    deployment: Deployment, tmp_path: Path
) -> None:
    assert FAKETIME, "libfaketime (the faketime package) runs a server with its clock behind"
    received = datetime.now(UTC) - timedelta(hours=3)
    hour = local_hour(received)
    if local_hour(datetime.now(UTC) - timedelta(hours=3, seconds=-60)) != hour:
        time.sleep(61)  # (the hour about to end: both runs' records in one hour)
        hour = local_hour(datetime.now(UTC) - timedelta(hours=3))

    # The embedded default: one server, its records received three hours ago.
    data = tmp_path / "embedded"
    delay = {"OPENCDP_EXPORT_DELAY": deployment.env["OPENCDP_EXPORT_DELAY"]}
    embedded = LiveServer(data, **BEHIND, **delay).start()
    info = embedded.new_project("same")
    send_scenario(Project(embedded, info))
    embedded.stop()
    embedded = LiveServer(data, **delay).start()
    try:
        finish_scenario(embedded, info)
        want = outcome(embedded, info, hour)
    finally:
        embedded.stop()

    # The scaled-out deployment: records through a server three hours behind, the rest
    # through the others, the work done by the workers.
    behind = deployment.server("same-sender", **BEHIND)
    info = behind.new_project("same")
    send_scenario(Project(behind, info))
    behind.stop()
    one = deployment.servers[0]
    wait_for(lambda: deployment.pending("same") == 0, "the records applied")
    finish_scenario(one, info)
    got = outcome(one, info, hour)

    assert got["users"] == want["users"]
    assert got["segment"] == want["segment"] and want["segment"]
    assert got["export"] == want["export"] and len(want["export"]) == 40


def test_a_worker_refuses_an_embedded_deployment(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opencdp", "worker", "--data-dir", str(tmp_path / "data")],
        capture_output=True, env={**os.environ}, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert b"OPENCDP_STORE_URL" in out.stderr
