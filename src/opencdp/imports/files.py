"""The files store: uploads and the failures and warnings files of import jobs, as blobs
named by numbers only (``<file id>.dat``, ``job-<job id>-<kind>.csv``, per project).

A client names a file however it likes (a WeChat ``path``, a multipart filename); that name is
a lookup key in the metadata DB and never part of a blob key, so no name can reach outside the
store. An upload is a blob written whole (:meth:`BlobStore.create`): it appears complete or
not at all. An upload is written once: hashed and bounded as it streams in, to a spool of the
blob store (:class:`Incoming`), which is named by its file id when the request's other fields
have been checked (:meth:`Files.store`), or dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from opencdp.blobs.base import BlobStore, BlobWriter
from opencdp.catalog import secrets
from opencdp.errors import CdpError, Code, invalid
from opencdp.meta import tables as t

PENDING, STORED = "pending", "stored"


@dataclass(frozen=True)
class StoredFile:
    id: int
    project_id: int
    name: str
    state: str
    size: int
    sha256: str | None
    key: str  # its blob, in its project


class FileTooLarge(CdpError):
    def __init__(self, limit: int) -> None:
        super().__init__(Code.LIMIT_EXCEEDED, f"file: larger than {limit} bytes", "file")


class Incoming:
    """An upload as it streams in: written to a spool of the blob store, hashed, and refused
    (:class:`FileTooLarge`) past ``limit`` bytes. :meth:`Files.store` keeps it; :meth:`drop`
    (or a request that fails first) leaves nothing."""

    def __init__(self, blobs: BlobStore, limit: int, filename: str | None = None) -> None:
        self.filename = filename
        self.limit = limit
        self.size = 0
        self._digest = hashlib.sha256()
        self._spool: BlobWriter | None = blobs.spool()

    def write(self, chunk: bytes) -> None:
        if self._spool is None:
            raise ValueError("the upload is stored or dropped already")
        self.size += len(chunk)
        if self.size > self.limit:
            raise FileTooLarge(self.limit)
        self._digest.update(chunk)
        self._spool.write(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def keep(self, project_id: int, key: str) -> None:
        if self._spool is None:
            raise ValueError("the upload is stored or dropped already")
        spool, self._spool = self._spool, None
        spool.commit(project_id, key)

    def drop(self) -> None:
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.abort()


class Files:
    def __init__(self, engine: sa.Engine, blobs: BlobStore) -> None:
        self._engine = engine
        self.blobs = blobs

    @staticmethod
    def job_file(job_id: int, kind: str) -> str:
        """The blob key of a job's failures or warnings file (in the job's project)."""
        if kind not in ("failures", "warnings"):
            raise ValueError(kind)
        return f"job-{int(job_id)}-{kind}.csv"

    def read_job_file(self, project_id: int, job_id: int, kind: str) -> bytes:
        """A job's failures or warnings file (empty while it has none)."""
        key = self.job_file(job_id, kind)
        if self.blobs.stat(project_id, key) is None:
            return b""
        return self.blobs.read(project_id, key)

    def local_path(self, stored: StoredFile) -> AbstractContextManager[Path]:
        """The stored file as a local file, for the readers (:meth:`BlobStore.local_path`)."""
        return self.blobs.local_path(stored.project_id, stored.key)

    def _row(self, row: Any) -> StoredFile:
        return StoredFile(
            row.id, row.project_id, row.name, row.state, row.size, row.sha256,
            f"{int(row.id)}.dat",
        )  # fmt: skip

    # ---- creating ------------------------------------------------------------------------
    def reserve(self, project_id: int, name: str) -> tuple[StoredFile, str]:
        """A pending file and the one-time token that authorises its upload."""
        if not name or len(name) > 1024 or "\x00" in name:
            raise invalid("path", "must be 1 to 1024 characters")
        token = secrets.new_token("up")
        with self._engine.begin() as conn:
            file_id = conn.execute(
                sa.insert(t.files).values(
                    project_id=project_id,
                    name=name,
                    state=PENDING,
                    size=0,
                    upload_token_hash=secrets.digest(token),
                    created_at=t.utcnow(),
                )
            ).inserted_primary_key
        assert file_id is not None
        return self.get(project_id, int(file_id[0]), any_state=True), token

    def pending_for_token(self, token: str) -> StoredFile | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.files).where(
                    t.files.c.upload_token_hash == secrets.digest(token),
                    t.files.c.state == PENDING,
                )
            ).first()
        return None if row is None else self._row(row)

    async def write(
        self,
        project_id: int,
        name: str,
        chunks: AsyncIterator[bytes],
        limit: int,
        reserved: StoredFile | None = None,
    ) -> StoredFile:
        """Store an upload streamed in ``chunks`` (at most ``limit`` bytes)."""
        incoming = self.receive(limit, name)
        try:
            async for chunk in chunks:
                incoming.write(chunk)
            return self.store(project_id, incoming, name, reserved)
        finally:
            incoming.drop()

    def receive(self, limit: int, filename: str | None = None) -> Incoming:
        """An upload to stream in (:class:`Incoming`), at most ``limit`` bytes."""
        return Incoming(self.blobs, limit, filename)

    def store(
        self,
        project_id: int,
        incoming: Incoming,
        name: str | None = None,
        reserved: StoredFile | None = None,
    ) -> StoredFile:
        """Keep a received upload as a file of the project, under ``name`` (else its
        filename), or as the ``reserved`` file."""
        if reserved is None:
            reserved, _ = self.reserve(project_id, name or incoming.filename or "upload")
        incoming.keep(reserved.project_id, reserved.key)
        size, digest = incoming.size, incoming.sha256
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(t.files)
                .where(t.files.c.id == reserved.id)
                .values(
                    state=STORED,
                    size=size,
                    sha256=digest,
                    upload_token_hash=None,
                    stored_at=t.utcnow(),
                )
            )
        return self.get(project_id, reserved.id)

    # ---- finding -------------------------------------------------------------------------
    def get(self, project_id: int, file_id: int, any_state: bool = False) -> StoredFile:
        """A file of this project; another project's file is not found."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.files).where(
                    t.files.c.id == file_id, t.files.c.project_id == project_id
                )
            ).first()
        if row is None or (row.state != STORED and not any_state):
            raise CdpError(Code.NOT_FOUND, f"file {file_id} does not exist", "file")
        return self._row(row)

    def find(self, project_id: int, name: str) -> StoredFile:
        """The newest stored file of this project uploaded under ``name``."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.files)
                .where(
                    t.files.c.project_id == project_id,
                    t.files.c.name == name,
                    t.files.c.state == STORED,
                )
                .order_by(t.files.c.id.desc())
                .limit(1)
            ).first()
        if row is None:
            raise CdpError(Code.NOT_FOUND, f"no file was uploaded as {name!r}", "file_path")
        return self._row(row)
