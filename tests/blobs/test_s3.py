"""What the S3 store does beyond the contract suite (which it passes too): appends that copy
their blob's head inside the object store, uploads in parts, reads that never mix two
versions, presigned URLs that serve ranges, the object store's failures as passing
conditions, and scratch files a crash left behind."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from opencdp.blobs.s3 import MIN_PART, ObjectStoreError, S3Blobs, S3Location, client
from opencdp.blobs.scratch import ScratchFile
from opencdp.faults import is_transient
from tests.engines import new_bucket, s3_endpoint

P = 3


@pytest.fixture
def store(tmp_path: Path) -> S3Blobs:
    return S3Blobs(client(s3_endpoint()), S3Location.parse(f"s3://{new_bucket()}/x"), tmp_path)


def test_locations_parse_and_nest() -> None:
    where = S3Location.parse("s3://bucket/some/prefix/")
    assert (where.bucket, where.prefix) == ("bucket", "some/prefix/")
    assert S3Location.parse("s3://bucket").prefix == ""
    assert where.within("files").prefix == "some/prefix/files/"
    for bad in ("bucket/x", "s3:///x", "http://bucket/x", "s3://bucket/../x", "s3://b/x?y=1"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)


def test_an_append_past_five_mib_copies_the_head_in_the_object_store(store: S3Blobs) -> None:
    head = bytes(range(256)) * (MIN_PART // 256 + 1000)  # just over 5 MiB
    assert store.append(P, "f.csv", head, 0) == len(head)
    assert store.append(P, "f.csv", b"row 1\n", len(head)) == len(head) + 6
    store.append(P, "f.csv", b"not recorded\n", len(head) + 6)  # a crash's write
    assert store.append(P, "f.csv", b"row 2\n", len(head) + 6) == len(head) + 12
    assert store.read(P, "f.csv") == head + b"row 1\nrow 2\n"
    # Cutting back across the 5 MiB line, and appending nothing, keep the bytes exact.
    assert store.append(P, "f.csv", b"", MIN_PART + 1) == MIN_PART + 1
    assert store.read(P, "f.csv") == head[: MIN_PART + 1]
    assert store.append(P, "f.csv", b"z", 10) == 11
    assert store.read(P, "f.csv") == head[:10] + b"z"
    # Past the end: zero bytes fill the gap, as in a local file.
    assert store.append(P, "g", b"x", 3) == 4 and store.read(P, "g") == b"\0\0\0x"
    listing = store.s3.list_multipart_uploads(Bucket=store.bucket)
    assert not listing.get("Uploads")  # every multipart upload completed


def test_a_large_blob_is_uploaded_in_parts(tmp_path: Path) -> None:
    store = S3Blobs(
        client(s3_endpoint()),
        S3Location.parse(f"s3://{new_bucket()}"),
        tmp_path,
        part_bytes=MIN_PART,
    )
    data = os.urandom(3 * MIN_PART + 123)
    store.put(P, "big", [data[i : i + 65536] for i in range(0, len(data), 65536)])
    assert store.read(P, "big") == data
    etag = store.s3.head_object(Bucket=store.bucket, Key="3/big")["ETag"]
    assert etag.strip('"').endswith("-4")  # four parts
    assert os.listdir(tmp_path) == []  # the scratch file is gone


def test_a_read_never_mixes_two_versions(store: S3Blobs) -> None:
    store.put(P, "v", [b"a" * 1000])
    chunks = store.open(P, "v", chunk=100)
    store.put(P, "v", [b"b" * 1000])  # replaced after the read checked the range
    with pytest.raises(ObjectStoreError) as caught:
        b"".join(chunks)
    assert "PreconditionFailed" in str(caught.value) and is_transient(caught.value)


def test_a_presigned_url_serves_ranges_for_a_time(store: S3Blobs) -> None:
    store.put(P, "e/part.gz", [b"0123456789"])
    url = store.url(P, "e/part.gz", timedelta(minutes=5))
    assert url is not None and url.startswith(s3_endpoint())
    assert httpx.get(url).content == b"0123456789"
    ranged = httpx.get(url, headers={"Range": "bytes=2-4"})
    assert ranged.status_code == 206 and ranged.content == b"234"
    # (moto checks neither signatures nor expiry: what is signed is read from the URL)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["300"] and query["X-Amz-Signature"][0]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    short = store.url(P, "e/part.gz", timedelta(milliseconds=1))
    assert short is not None and parse_qs(urlsplit(short).query)["X-Amz-Expires"] == ["1"]


def test_the_object_store_failing_is_a_passing_condition(tmp_path: Path) -> None:
    gone = S3Blobs(client(s3_endpoint()), S3Location.parse("s3://no-such-bucket-here"), tmp_path)
    with pytest.raises(ObjectStoreError) as caught:
        gone.put(P, "k", [b"x"])
    assert "NoSuchBucket" in str(caught.value) and is_transient(caught.value)
    with pytest.raises(ObjectStoreError):
        gone.list(P)
    assert os.listdir(tmp_path) == []  # the failed upload left no scratch file
    from tests.liveserver import free_port

    down = S3Blobs(
        client(f"http://127.0.0.1:{free_port()}"), S3Location.parse("s3://bucket"), tmp_path
    )
    down.s3.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(ObjectStoreError) as caught:
        down.stat(P, "k")
    assert is_transient(caught.value)


def test_a_crashed_writers_scratch_file_is_deleted_on_start(tmp_path: Path) -> None:
    bucket = new_bucket()
    live = S3Blobs(client(s3_endpoint()), S3Location.parse(f"s3://{bucket}"), tmp_path)
    writing = live.spool()
    writing.write(b"in flight")
    orphan = tmp_path / "blob-orphan"
    orphan.write_bytes(b"left by a killed process")  # no lock held on it
    S3Blobs(client(s3_endpoint()), S3Location.parse(f"s3://{bucket}"), tmp_path)
    assert not orphan.exists()
    assert writing.commit(P, "kept").size == 9  # the live writer's file was left alone
    assert live.read(P, "kept") == b"in flight"
    held = ScratchFile(tmp_path)
    held.drop()
    assert os.listdir(tmp_path) == []
