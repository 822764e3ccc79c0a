"""A server on the shared engines: its metadata, jobs, progress and analytic store in
PostgreSQL (one database of the tests' cluster) and its files in an S3-compatible object store
(moto's server on loopback). Uploads, failure files and exports go to the bucket, nothing to
the server's disk, and every surface that hands out files still does: Marketo's failure files,
WeChat's upload target and error file, GrowingIO's download links (presigned by the object
store, or served by the server)."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from opencdp.blobs.s3 import client
from tests.conftest import Project
from tests.engines import new_bucket, new_database, s3_endpoint
from tests.surfaces.test_growingio import AUTH, Client, Server, local_hour
from tests.surfaces.test_marketo import Mkto
from tests.surfaces.test_wechat import Wx


def s3_server(data_dir: Path, **settings: Any) -> Server:
    bucket, database = new_bucket(), new_database()
    srv = Server(
        data_dir,
        meta_url=database,
        store_url=database,
        blob_url=f"s3://{bucket}/deploy",
        s3_endpoint_url=s3_endpoint(),
        export_part_bytes=4_000,
        **settings,
    )
    srv.bucket = bucket  # type: ignore[attr-defined]
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = s3_server(tmp_path_factory.mktemp("s3srv") / "data")
    yield srv
    srv.stop()


def objects(server: Server, prefix: str) -> dict[str, int]:
    s3 = client(s3_endpoint())
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=server.bucket,  # type: ignore[attr-defined]
        Prefix=prefix,
    )
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_marketo_files_and_failures_live_in_the_bucket(server: Server) -> None:
    mk = Mkto(server, server.new_project("mk_s3"))  # type: ignore[arg-type]
    mk.run("email,score\nfirst@x.com,1\n")  # score is now a number property
    st = mk.run("email,score\nok1@x.com,2\nbad@x.com,lots\nok2@x.com,4\n")
    assert (st["status"], st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == ("Complete", 2, 1)
    lines = mk.failures(st["batchId"]).splitlines()
    assert lines[0] == "email,score,Import Failure Reason"
    assert lines[1].startswith("bad@x.com,lots,") and "row 2" in lines[1]
    project = mk.info["project_id"]
    held = objects(server, f"deploy/files/{project}/")
    assert len(held) == 3  # the two uploads and the failures file
    data_dir = server.settings.data_dir
    assert not (data_dir / "files").exists() and not (data_dir / "meta.db").exists()
    assert mk.profile(key="email", value="ok2@x.com")["properties"]["score"] == 4.0


def test_wechat_uploads_import_from_the_bucket(server: Server) -> None:
    wx = Wx(server, server.new_project("wx_s3"))  # type: ignore[arg-type]
    st = wx.run("users", "u.csv", "mobile,email,level\n13800000000,a@x.com,1\n,,2\n")
    assert (st["status"], st["record_success"], st["record_fail"]) == ("success", 1, 1)
    assert "row 2" in httpx.get(st["file_url"]).text
    prof = server.profile(wx.info["name"], key="email", value="a@x.com").json()
    assert prof["properties"]["level"] == 1.0


def export_hour(gio: Client, server: Server) -> tuple[str, list[dict[str, Any]]]:
    """Send 300 events now and export their hour: (the hour, the admin API's exports)."""
    received = datetime.now(UTC)
    for i in range(300):
        gio.send({"type": "event", "event": "pay",
                  "properties": {"event_id": f"s{i}", "mobile": f"1{i % 30:010d}",
                                 "amount": i, "create_time": "2024-01-02 03:04:05"}})  # fmt: skip
    hour = local_hour(received)
    server.shift = timedelta(hours=2)
    r = httpx.post(
        f"{server.url}/admin/v1/projects/{gio.info['name']}/exports",
        json={"export_type": "hour", "export_date": hour, "data_types": ["custom_event"]},
        headers=AUTH,
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return hour, r.json()


def check_links(gio: Client, hour: str, exports: list[dict[str, Any]]) -> list[str]:
    """Every link serves its part whole (size and SHA-256 as recorded) and in ranges; the
    parts hold the 300 events."""
    body = gio.insights(f"hour/custom_event/{gio.ai}/{hour}.json", expire=10).json()
    assert body["status"] == "FINISHED", body
    links: list[str] = body["downloadLinks"]
    (export,) = exports
    assert len(links) == len(export["parts"]) > 1
    rows = 0
    for part, link in zip(export["parts"], links, strict=True):
        data = httpx.get(link).content
        assert len(data) == part["bytes"] and hashlib.sha256(data).hexdigest() == part["sha256"]
        tail = httpx.get(link, headers={"Range": "bytes=10-"})
        assert tail.status_code == 206 and tail.content == data[10:]
        rows += len(gzip.decompress(data).decode().splitlines()) - 1  # (a header each)
    assert rows == export["rows"] == 300
    return links


def test_growingio_links_are_presigned_by_the_object_store(server: Server) -> None:
    gio = Client(server)
    try:
        hour, exports = export_hour(gio, server)
        links = check_links(gio, hour, exports)
        assert all(link.startswith(s3_endpoint()) and "X-Amz-Signature=" in link for link in links)
        assert objects(server, f"deploy/exports/{gio.info['project_id']}/")
        assert not (server.settings.data_dir / "exports").exists()
    finally:
        server.shift = timedelta(0)


def test_growingio_links_are_served_by_the_server_when_not_presigned(tmp_path: Path) -> None:
    srv = s3_server(tmp_path / "data", s3_presigned_links=False)
    try:
        gio = Client(srv)
        hour, exports = export_hour(gio, srv)
        links = check_links(gio, hour, exports)
        assert all(link.startswith(f"{srv.url}/v2/download/") for link in links)
        assert httpx.get(links[0].replace("expires=", "expires=1")).status_code == 401
    finally:
        srv.stop()


def test_an_object_store_that_does_not_answer_is_reported_and_recovered_from(
    tmp_path: Path,
) -> None:
    """Files go to a bucket that is not there (as an unreachable or refusing object store
    would): an upload is refused in its surface's envelope, saying why; health names the
    object store; once the bucket exists, uploads go through and health is ok again."""
    bucket = f"later-{tmp_path.name[-20:].lower().replace('_', '-')}"
    srv = Server(
        tmp_path / "data",
        blob_url=f"s3://{bucket}/deploy",
        s3_endpoint_url=s3_endpoint(),
    )
    try:
        mk = Mkto(srv, srv.new_project("mk_away"))  # type: ignore[arg-type]
        body = mk.upload("email,firstName\na@example.com,A\n")
        assert body["success"] is False and body["errors"][0]["code"] == "611", body
        assert "NoSuchBucket" in body["errors"][0]["message"], body
        assert httpx.get(srv.url + "/health").status_code == 503
        problems = srv.admin("GET", "/health").json()["problems"]
        assert "NoSuchBucket" in problems["object_store_files"], problems

        client(s3_endpoint()).create_bucket(Bucket=bucket)
        st = mk.run("email,firstName\na@example.com,A\n")
        assert (st["status"], st["numOfLeadsProcessed"]) == ("Complete", 1), st
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    finally:
        srv.stop()


def test_text_the_store_cannot_keep_is_refused_before_it_is_acknowledged(server: Server) -> None:
    """PostgreSQL's text cannot hold U+0000: a record with it is refused with the vendor's
    validation error (never acknowledged and then dead-lettered); the embedded store keeps it."""
    info = server.new_project("nul")
    p = Project(server, info)  # type: ignore[arg-type]
    r = p.event("n1", os="a\x00b", mobile="13800000000")
    assert (r.status_code, r.json()["errcode"]) == (400, 20003), r.text
    assert "U+0000" in r.json()["errmsg"] and "properties" in r.json()["errmsg"]
    assert p.event("n2", os="ab", mobile="13800000000").json()["errcode"] == 0
    assert server.runtime.ingest.barrier()
    assert server.admin("GET", "/projects/nul/stats").json()["events"] == 1
    assert server.runtime.ingest.flusher.failures == 0  # (nothing dead-lettered)


def test_an_imported_row_the_store_cannot_keep_fails_alone(server: Server) -> None:
    mk = Mkto(server, server.new_project("mk_nul"))  # type: ignore[arg-type]
    st = mk.run("email,city\nok1@x.com,Paris\nbad@x.com,Ro\x00me\nok2@x.com,Oslo\n")
    assert (st["status"], st["numOfLeadsProcessed"], st["numOfRowsFailed"]) == ("Complete", 2, 1)
    lines = mk.failures(st["batchId"]).splitlines()
    assert "bad@x.com,Ro\\u0000me" in lines[1] and "U+0000" in lines[1], lines
    assert mk.profile(key="email", value="ok2@x.com")["properties"]["city"] == "Oslo"
