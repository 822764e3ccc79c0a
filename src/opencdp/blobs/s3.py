"""Blobs in an S3-compatible object store: ``s3://bucket/prefix`` holds ``<prefix>/<project
id>/<key>``, each blob one object.

What S3 gives, and what this store adds to keep the :class:`BlobStore` promises:

- An object becomes visible whole when its ``PutObject`` or ``CompleteMultipartUpload``
  returns, and is durable then. A writer writes to a local scratch file (bounded memory; a
  spool's name is only known when it commits) and uploads it on commit, in parts for a large
  one (boto3's managed transfer). A crash during the upload leaves an unfinished multipart
  upload, invisible and billed until the bucket's lifecycle rule aborts it (see
  docs/scaling.md); the scratch file is deleted by the next store opened on the folder.
- S3 cannot append. :meth:`S3Blobs.append` writes the blob anew from its first ``at`` bytes and
  the new ones: below 5 MiB by reading and putting it, above by a multipart upload whose first
  parts are copied by the object store itself (``UploadPartCopy``), so an append moves only
  its own bytes whatever the blob's size.
- A read names the version it started on (``IfMatch`` on the ETag of the ``HeadObject`` that
  checked the range): a blob replaced meanwhile fails the read instead of mixing two versions.
- :meth:`S3Blobs.url` is a presigned ``GetObject`` URL: the object store serves the blob and
  its ranges itself until the URL expires (unless the deployment's clients cannot reach the
  object store: then None, and the server serves the blob through its own signed links).
- The object store failing (unreachable, throttling, a 5xx, a refused credential) raises
  :class:`ObjectStoreError`, an ``OSError``: to the rest of OpenCDP it is what a failing disk
  is to the local store, a passing condition to wait out (see :mod:`opencdp.faults`), never
  a fault of the data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from opencdp.blobs.base import (
    BadRange,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobWriter,
    blob_path_parts,
    check_key,
    check_prefix,
    span,
)
from opencdp.blobs.scratch import ScratchFile, ScratchWriter, clean

MIN_PART = 5 << 20  # S3's smallest part of a multipart upload (all but the last)
MAX_COPY_PART = 4 << 30  # at most this much of the old blob per copied part (S3 allows 5 GiB)
_MISSING = ("404", "NoSuchKey", "NotFound")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket`` or ``s3://bucket/some/prefix``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not an S3 URL (s3://bucket/prefix): {url!r}")
        prefix = parts.path.strip("/")
        if prefix:
            check_prefix(prefix + "/")
        return cls(parts.netloc, f"{prefix}/" if prefix else "")

    def within(self, area: str) -> S3Location:
        """The location of one area of a deployment's blobs (``files``, ``exports``)."""
        return S3Location(self.bucket, f"{self.prefix}{check_key(area)}/")


def client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client: credentials and region from the usual AWS variables and files,
    ``endpoint_url`` for an S3-compatible service other than AWS (path-style addressing)."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=session.region_name or "us-east-1",
        config=config,
    )


class ObjectStoreError(OSError):
    """The object store did not do what was asked (its error code and words, no request)."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _reported(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """``method`` with the object store's failures raised as :class:`ObjectStoreError`."""

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        store = args[0]
        assert isinstance(store, S3Blobs)
        with _failures(store):
            return method(*args, **kwargs)

    return call


# Errors about one request (a blob replaced meanwhile, a range), not the object store's state.
_ABOUT_THE_REQUEST = ("PreconditionFailed", "InvalidRange", *_MISSING)


@contextmanager
def _failures(store: S3Blobs) -> Iterator[None]:
    """Raise the object store's failures as :class:`ObjectStoreError`, and tell ``store``'s
    reporter whether the object store answers (when that changes)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        # (boto3's managed transfers raise their own error from the client's)
        cause = exc.__context__ if isinstance(exc, Boto3Error) else exc
        code = ""
        if isinstance(cause, ClientError):
            error = (getattr(cause, "response", None) or {}).get("Error", {})
            code = str(error.get("Code", "?"))
            words = f"{code} {str(error.get('Message', ''))[:200]}".rstrip()
        else:
            words = str(exc)[:200]
        problem = f"object store: {words}"
        if code not in _ABOUT_THE_REQUEST:
            store.answered(problem)
        raise ObjectStoreError(problem) from exc
    store.answered(None)


def _missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) in _MISSING


class S3Blobs(BlobStore):
    def __init__(
        self,
        s3: Any,
        where: S3Location,
        scratch: Path,
        part_bytes: int = 64 << 20,
        presigned: bool = True,
        report: Callable[[str | None], None] = lambda problem: None,
    ) -> None:
        self.s3 = s3
        self.report = report  # whether the object store answers: None, or why not
        self._problem: str | None = None
        self.presigned = presigned  # False: no URLs of its own (the server serves its blobs)
        self.part_bytes = max(MIN_PART, part_bytes)  # uploads larger than this go in parts
        self.bucket = where.bucket
        self.prefix = where.prefix
        self._scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        clean(scratch)

    def answered(self, problem: str | None) -> None:
        """Report whether the object store answers, when that changes (health)."""
        if problem != self._problem:
            self._problem = problem
            self.report(problem)

    def _name(self, project: int, key: str) -> str:
        return self.prefix + "/".join(blob_path_parts(project, key))

    def _head(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.s3.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return head

    # ---- writing -------------------------------------------------------------------------
    def create(self, project: int, key: str) -> BlobWriter:
        return _Writer(self, self._name(project, key))

    def spool(self) -> BlobWriter:
        return _Writer(self, None)

    @_reported
    def _upload(self, path: Path, name: str) -> None:
        from boto3.s3.transfer import TransferConfig

        size = self.part_bytes
        config = TransferConfig(multipart_threshold=size, multipart_chunksize=size)
        self.s3.upload_file(str(path), self.bucket, name, Config=config)

    @_reported
    def append(self, project: int, key: str, data: bytes, at: int) -> int:
        if at < 0:
            raise BadRange(f"cannot write at {at}")
        name = self._name(project, key)
        head = self._head(name)
        size = 0 if head is None else int(head["ContentLength"])
        if at < MIN_PART or size < at:
            # Small (or padded with zero bytes, as a local file is): written anew whole.
            kept = self.read(project, key, 0, at) if head is not None and at else b""
            body = kept + bytes(at - len(kept)) + data
            self.s3.put_object(Bucket=self.bucket, Key=name, Body=body)
            return at + len(data)
        self._append_copying(name, str(head["ETag"]) if head else "", at, data)
        return at + len(data)

    @_reported
    def _append_copying(self, name: str, etag: str, at: int, data: bytes) -> None:
        """The object ``name`` anew: its first ``at`` (≥ :data:`MIN_PART`) bytes copied by the
        object store in parts, then ``data`` as the last part."""
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        try:
            count = math.ceil(at / MAX_COPY_PART)
            step = math.ceil(at / count)  # (even parts: each well over MIN_PART)
            parts = []
            for n, first in enumerate(range(0, at, step), 1):
                last = min(at, first + step) - 1
                copied = self.s3.upload_part_copy(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload,
                    PartNumber=n,
                    CopySource={"Bucket": self.bucket, "Key": name},
                    CopySourceRange=f"bytes={first}-{last}",
                    CopySourceIfMatch=etag,
                )
                parts.append({"PartNumber": n, "ETag": copied["CopyPartResult"]["ETag"]})
            if data:
                n = len(parts) + 1
                sent = self.s3.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=n, Body=data
                )
                parts.append({"PartNumber": n, "ETag": sent["ETag"]})
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            raise

    # ---- reading -------------------------------------------------------------------------
    @_reported
    def open(
        self, project: int, key: str, start: int = 0, end: int | None = None, chunk: int = 1 << 20
    ) -> Iterator[bytes]:
        name = self._name(project, key)
        head = self._head(name)
        if head is None:
            raise BlobNotFound(f"no blob {key!r}")
        first, last = span(int(head["ContentLength"]), start, end)
        return self._stream(name, str(head["ETag"]), first, last, max(1, chunk))

    def _stream(self, name: str, etag: str, first: int, last: int, chunk: int) -> Iterator[bytes]:
        if last <= first:
            return
        with _failures(self):
            got = self.s3.get_object(
                Bucket=self.bucket, Key=name, Range=f"bytes={first}-{last - 1}", IfMatch=etag
            )
            body = got["Body"]
            try:
                yield from body.iter_chunks(chunk)
            finally:
                body.close()

    @_reported
    def stat(self, project: int, key: str) -> BlobInfo | None:
        head = self._head(self._name(project, key))
        return None if head is None else BlobInfo(key, int(head["ContentLength"]))

    @_reported
    def list(self, project: int, prefix: str = "") -> list[BlobInfo]:
        check_prefix(prefix)
        top = self._name(project, "x")[:-1]  # "<prefix><project>/"
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=top + prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = str(item["Key"])[len(top) :]
                try:
                    check_key(key)
                except ValueError:
                    continue  # an object this store did not write
                out.append(BlobInfo(key, int(item["Size"])))
        out.sort(key=lambda b: b.key)
        return out

    # ---- deleting ------------------------------------------------------------------------
    @_reported
    def delete(self, project: int, key: str) -> bool:
        name = self._name(project, key)
        if self._head(name) is None:
            return False
        self.s3.delete_object(Bucket=self.bucket, Key=name)
        return True

    @_reported
    def delete_prefix(self, project: int, prefix: str) -> int:
        if not check_prefix(prefix):
            return super().delete_prefix(project, prefix)  # (refuses the empty prefix)
        found = self.list(project, prefix)
        for i in range(0, len(found), 1000):  # (S3 deletes at most 1,000 objects a request)
            batch = [{"Key": self._name(project, b.key)} for b in found[i : i + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(found)

    # ---- serving -------------------------------------------------------------------------
    @_reported
    def url(self, project: int, key: str, expires: timedelta) -> str | None:
        name = self._name(project, key)
        if not self.presigned:
            return None
        seconds = max(1, math.ceil(expires.total_seconds()))
        url: str = self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=seconds
        )
        return url

    def local_path(self, project: int, key: str) -> AbstractContextManager[Path]:
        return self._local(project, key)

    @contextmanager
    def _local(self, project: int, key: str) -> Iterator[Path]:
        chunks = self.open(project, key)  # (refuses a bad key, a missing blob, at once)
        scratch = ScratchFile(self._scratch, "read-")
        try:
            for data in chunks:
                scratch.file.write(data)
            scratch.file.flush()
            yield scratch.path
        finally:
            scratch.drop()


class _Writer(ScratchWriter):
    def __init__(self, store: S3Blobs, name: str | None) -> None:
        super().__init__(store._scratch, name)
        self._store = store

    def _named(self, project: int, key: str) -> str:
        return self._store._name(project, key)

    def _publish(self, name: str) -> BlobInfo:
        self._store._upload(self._scratch.path, name)
        return BlobInfo(name[len(self._store.prefix) :].partition("/")[2], self.size)
