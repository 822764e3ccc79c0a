"""What every blob store does, whatever its backend: round trips, streaming in bounded memory,
byte ranges, atomic writes, overwrite, delete, listing by prefix, keys that are refused, URLs
and project scoping."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencdp.blobs.base import BadKey, BadRange, BlobNotFound, BlobStore, check_key, span

P = 7  # a project id


def test_a_blob_round_trips(blobs: BlobStore) -> None:
    info = blobs.put(P, "a/b.dat", [b"hello ", b"", b"world"])
    assert info.key == "a/b.dat" and info.size == 11
    assert blobs.read(P, "a/b.dat") == b"hello world"
    assert b"".join(blobs.open(P, "a/b.dat", chunk=3)) == b"hello world"
    assert [len(c) for c in blobs.open(P, "a/b.dat", chunk=4)] == [4, 4, 3]
    stat = blobs.stat(P, "a/b.dat")
    assert stat is not None and stat.size == 11 and blobs.size(P, "a/b.dat") == 11
    with blobs.local_path(P, "a/b.dat") as path:
        assert path.read_bytes() == b"hello world"


def test_an_empty_blob_is_a_blob(blobs: BlobStore) -> None:
    blobs.put(P, "empty", [])
    assert blobs.read(P, "empty") == b"" and blobs.size(P, "empty") == 0
    assert [b.key for b in blobs.list(P)] == ["empty"]


def test_a_blob_written_from_an_async_stream(blobs: BlobStore) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for p in (b"a", b"bc", b"def"):
            yield p

    info = asyncio.run(blobs.put_async(P, "async", chunks()))
    assert info.size == 6 and blobs.read(P, "async") == b"abcdef"


def test_a_large_blob_streams_in_bounded_memory(blobs: BlobStore) -> None:
    chunk, count = 1 << 20, 48  # 48 MiB through a store that may hold 1 MiB at a time
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)

    def produce() -> Iterator[bytes]:
        for i in range(count):
            yield i.to_bytes(4, "big") + block[4:]

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = blobs.put(P, "big/blob.bin", produce())
        digest, size = hashlib.sha256(), 0
        for piece in blobs.open(P, "big/blob.bin", chunk=chunk):
            digest.update(piece)
            size += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    for piece in produce():
        expected.update(piece)
    assert info.size == size == chunk * count
    assert digest.hexdigest() == expected.hexdigest()
    assert peak < 8 * chunk, f"peak {peak} bytes for a {size}-byte blob"


def test_ranges_read_a_part_of_a_blob(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    blobs.put(P, "r", [data])
    assert blobs.read(P, "r", 100) == data[100:]  # from a start
    assert blobs.read(P, "r", 100, 200) == data[100:200]  # start and end (exclusive)
    assert blobs.read(P, "r", 1000, 5000) == data[1000:]  # an end past the blob: cut
    assert blobs.read(P, "r", -10) == data[-10:]  # a suffix
    assert blobs.read(P, "r", -5000) == data  # a suffix longer than the blob: all of it
    assert blobs.read(P, "r", 1024) == b""  # the empty range at the end
    assert b"".join(blobs.open(P, "r", 10, 30, chunk=7)) == data[10:30]
    with pytest.raises(BadRange):
        blobs.open(P, "r", 1025)  # past the end: refused at once
    with pytest.raises(BadRange):
        blobs.open(P, "r", 50, 40)
    with pytest.raises(BlobNotFound):
        blobs.open(P, "missing")


@settings(max_examples=60)
@given(size=st.integers(0, 300), start=st.integers(-400, 400), end=st.none() | st.integers(0, 400))
def test_span_matches_slicing(size: int, start: int, end: int | None) -> None:
    data = bytes(i % 256 for i in range(size))
    if start < 0 and end is not None:
        with pytest.raises(BadRange):
            span(size, start, end)
        return
    if start > size or (start >= 0 and end is not None and end < start):
        with pytest.raises(BadRange):
            span(size, start, end)
        return
    first, last = span(size, start, end)
    assert data[first:last] == (data[start:end] if start >= 0 else data[start:])


def test_a_failing_write_leaves_nothing(blobs: BlobStore) -> None:
    def failing() -> Iterator[bytes]:
        yield b"first half"
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError):
        blobs.put(P, "x/new", failing())
    assert blobs.stat(P, "x/new") is None and blobs.list(P) == []
    # Over an existing blob: the old one stays whole.
    blobs.put(P, "x/old", [b"old content"])
    with pytest.raises(RuntimeError):
        blobs.put(P, "x/old", failing())
    assert blobs.read(P, "x/old") == b"old content"
    assert [b.key for b in blobs.list(P)] == ["x/old"]


def test_a_blob_being_written_is_not_visible_until_committed(blobs: BlobStore) -> None:
    blobs.put(P, "w", [b"v1"])
    writer = blobs.create(P, "w")
    writer.write(b"version two")
    assert writer.size == writer.tell() == 11
    assert blobs.read(P, "w") == b"v1"  # readers see the old blob meanwhile
    assert [b.key for b in blobs.list(P)] == ["w"]
    info = writer.commit()
    assert info.size == 11 and blobs.read(P, "w") == b"version two"
    dropped = blobs.create(P, "never")
    dropped.write(b"x")
    dropped.abort()
    assert blobs.stat(P, "never") is None


def test_overwrite_replaces_the_whole_blob(blobs: BlobStore) -> None:
    blobs.put(P, "o", [b"a long first version"])
    blobs.put(P, "o", [b"short"])
    assert blobs.read(P, "o") == b"short" and blobs.size(P, "o") == 5


def test_delete(blobs: BlobStore) -> None:
    blobs.put(P, "d/1", [b"1"])
    assert blobs.delete(P, "d/1") is True
    assert blobs.delete(P, "d/1") is False
    assert blobs.stat(P, "d/1") is None
    with pytest.raises(BlobNotFound):
        blobs.read(P, "d/1")
    with pytest.raises(BlobNotFound):
        blobs.size(P, "d/1")
    blobs.put(P, "d/1", [b"again"])  # the key can be written again
    assert blobs.read(P, "d/1") == b"again"


def test_list_and_delete_by_prefix(blobs: BlobStore) -> None:
    for key in ("a/1", "a/2", "a/b/3", "ab", "b", "c.csv"):
        blobs.put(P, key, [key.encode()])
    keys = lambda prefix: [b.key for b in blobs.list(P, prefix)]  # noqa: E731
    assert keys("") == ["a/1", "a/2", "a/b/3", "ab", "b", "c.csv"]
    assert keys("a/") == ["a/1", "a/2", "a/b/3"]
    assert keys("a") == ["a/1", "a/2", "a/b/3", "ab"]
    assert keys("a/b") == ["a/b/3"]
    assert keys("c.") == ["c.csv"] and keys("z") == [] and keys("z/") == []
    assert {b.key: b.size for b in blobs.list(P, "a/")} == {"a/1": 3, "a/2": 3, "a/b/3": 5}
    assert blobs.delete_prefix(P, "a/") == 3
    assert keys("") == ["ab", "b", "c.csv"]
    assert blobs.delete_prefix(P, "a") == 1
    assert keys("") == ["b", "c.csv"]
    with pytest.raises(BadKey):
        blobs.delete_prefix(P, "")  # everything takes a prefix


def test_append_writes_at_the_committed_length(blobs: BlobStore) -> None:
    assert blobs.append(P, "log.csv", b"head\n", 0) == 5
    assert blobs.append(P, "log.csv", b"row 1\n", 5) == 11
    # A write no commit recorded (length 11 committed, then 6 more bytes): cut back.
    blobs.append(P, "log.csv", b"lost!\n", 11)
    assert blobs.append(P, "log.csv", b"row 2\n", 11) == 17
    assert blobs.read(P, "log.csv") == b"head\nrow 1\nrow 2\n"
    blobs.append(P, "log.csv", b"", 5)  # cutting alone
    assert blobs.read(P, "log.csv") == b"head\n"


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../x",
    "a/../b",
    "a/./b",
    "..",
    ".hidden",
    "a/.hidden",
    "a//b",
    "a/",
    "a\x00b",
    "a\\b",
    "a b",
    "é",
    "a\nb",
    "x" * 600,
    "/".join("a" * 9),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_keys_that_could_leave_the_store_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(BadKey):
        check_key(key)
    with pytest.raises(BadKey):
        blobs.put(P, key, [b"x"])
    with pytest.raises(BadKey):
        blobs.open(P, key)
    with pytest.raises(BadKey):
        blobs.stat(P, key)
    with pytest.raises(BadKey):
        blobs.delete(P, key)
    with pytest.raises(BadKey):
        blobs.append(P, key, b"x", 0)
    with pytest.raises(BadKey):
        blobs.url(P, key, timedelta(minutes=5))
    with pytest.raises(BadKey):
        blobs.local_path(P, key).__enter__()
    assert blobs.list(P) == []


@pytest.mark.parametrize("prefix", ["../", "/", "a/../", ".x", "a\x00", "a//"])
def test_prefixes_that_could_leave_the_store_are_refused(blobs: BlobStore, prefix: str) -> None:
    with pytest.raises(BadKey):
        blobs.list(P, prefix)
    with pytest.raises(BadKey):
        blobs.delete_prefix(P, prefix)


def test_url_is_signed_by_the_backend_or_none(blobs: BlobStore) -> None:
    blobs.put(P, "u/part.csv.gz", [b"data"])
    url = blobs.url(P, "u/part.csv.gz", timedelta(minutes=5))
    # None: the server serves the blob itself; else a URL the backend signed.
    assert url is None or url.startswith(("https://", "http://"))


def test_blobs_are_scoped_by_project(blobs: BlobStore) -> None:
    blobs.put(1, "same", [b"one"])
    blobs.put(2, "same", [b"two"])
    assert blobs.read(1, "same") == b"one" and blobs.read(2, "same") == b"two"
    assert [b.key for b in blobs.list(1)] == ["same"]
    blobs.delete(1, "same")
    assert blobs.stat(1, "same") is None and blobs.read(2, "same") == b"two"
    assert blobs.list(3) == []
    for project in (0, -1, True, 2**63):
        with pytest.raises(BadKey):
            blobs.put(project, "k", [b"x"])
        with pytest.raises(BadKey):
            blobs.list(project)
