"""Uploads over HTTP: a multipart file is written once, as it streams in, and kept only when
the request is accepted. A form's fields may come before or after its file; a form refused for
any reason (a bad field after the file, a body cut before its closing boundary, a second file,
an oversized field) leaves no file behind, in the store or in its spool."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.liveserver import ADMIN_TOKEN, LiveServer
from tests.surfaces.test_imports import wait

CSV = b"email,city\n" + b"".join(b"u%d@x.com,C%d\n" % (i, i % 7) for i in range(2000))


def multipart(
    parts: list[tuple[str, bytes, str | None]], boundary: str, close: bool = True
) -> bytes:
    """A multipart body of (name, content, filename) parts, in the order given."""
    out = bytearray()
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += content + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def post(server: LiveServer, project: str, body: bytes, boundary: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/admin/v1/projects/{project}/imports",
        content=body,
        headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        timeout=60,
    )


def blobs(server: LiveServer) -> dict[str, bytes]:
    """Every file of the files store, by path (the spool's too)."""
    root = server.data_dir / "files"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("fields_first", [True, False])
def test_an_upload_is_stored_once_whole_with_its_fields_in_any_order(
    server: LiveServer, fields_first: bool
) -> None:
    project = f"up{uuid.uuid4().hex[:8]}"
    server.new_project(project)
    before = blobs(server)
    boundary = uuid.uuid4().hex
    fields = [("into", b"users", None), ("lookup_field", b"email", None)]
    file = [("file", CSV, "people.csv")]
    body = multipart(fields + file if fields_first else file + fields, boundary)
    resp = post(server, project, body, boundary)
    assert resp.status_code == 202, resp.text
    job = wait(server, project, resp.json()["job_id"])
    assert (job["state"], job["imported"], job["failed"]) == ("complete", 2000, 0), job
    added = {k: v for k, v in blobs(server).items() if k not in before}
    # One blob, the upload as it was sent; nothing left in the spool.
    assert list(added.values()) == [CSV], sorted(added)
    assert not any(k.startswith(".incoming") for k in added)


@pytest.mark.parametrize(
    ("parts", "close", "field", "reason"),
    [
        # a field checked after the whole file has streamed in
        ([("file", CSV, "a.csv"), ("into", b"nowhere", None)], True, "into", "must be one of"),
        # the body ends before its closing boundary: the file may be cut short
        ([("into", b"users", None), ("file", CSV, "a.csv")], False, "body", "closing boundary"),
        # two files where one is taken
        ([("file", CSV, "a.csv"), ("file", CSV, "b.csv")], True, "file", "more than one file"),
        # a text field larger than a field may be
        ([("file", CSV, "a.csv"), ("into", b"u" * (2 << 20), None)], True, "into", "longer"),
        # no file at all
        ([("into", b"users", None)], True, "file", "a file part is required"),
    ],
)
def test_a_refused_upload_leaves_no_file(
    server: LiveServer,
    parts: list[tuple[str, bytes, str | None]],
    close: bool,
    field: str,
    reason: str,
) -> None:
    project = f"up{uuid.uuid4().hex[:8]}"
    server.new_project(project)
    before = blobs(server)
    boundary = uuid.uuid4().hex
    resp = post(server, project, multipart(parts, boundary, close), boundary)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["field"] == field and reason in error["message"], error
    assert blobs(server) == before
    assert server.admin("GET", f"/projects/{project}/imports").json() == []


def test_a_spool_of_an_interrupted_upload_is_cleared_on_start(tmp_path: Path) -> None:
    """A crash mid-upload leaves its spool; the next server started on the data directory
    deletes it."""
    srv = LiveServer(tmp_path / "data").start()
    try:
        srv.new_project("p")
        spool = srv.data_dir / "files" / ".incoming"
        assert spool.is_dir() and not any(spool.iterdir())
    finally:
        srv.stop()
    left = spool / "blob-left-by-a-crash"
    left.write_bytes(b"the first bytes of an upload")
    srv = LiveServer(tmp_path / "data").start()
    try:
        assert not left.exists()
    finally:
        srv.stop()


def test_the_wechat_upload_target_refuses_a_cut_body_and_keeps_its_token(
    server: LiveServer,
) -> None:
    """An upload that ends before its closing boundary is refused (HTTP 400, as object
    storage does) and leaves no file; its one-time token still takes the whole upload."""
    from tests.surfaces.test_wechat import Wx

    wx = Wx(server, server.new_project(f"wx{uuid.uuid4().hex[:8]}"))
    link = wx.post("/tcb/uploadfile", {"env": wx.env, "path": "cut.csv"})
    before = blobs(server)
    boundary = uuid.uuid4().hex
    parts: list[tuple[str, bytes, str | None]] = [
        ("x-cos-security-token", link["token"].encode(), None),
        ("file", CSV, "cut.csv"),
    ]
    cut = httpx.post(
        link["url"],
        content=multipart(parts, boundary, close=False),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert cut.status_code == 400 and "closing boundary" in cut.json()["errmsg"], cut.text
    assert blobs(server) == before
    whole = httpx.post(
        link["url"],
        content=multipart(parts, boundary),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert whole.status_code == 204, whole.text
    assert [v for k, v in blobs(server).items() if k not in before] == [CSV]
