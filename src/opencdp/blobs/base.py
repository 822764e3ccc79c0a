"""The blob store: the files a deployment holds for its users (uploads, import failure and
warning files, export parts), behind one small interface.

A blob is named by a project id and a key, a relative name of at most eight ``/``-separated
segments, each of letters, digits, ``.``, ``_`` and ``-`` that does not start with ``.``
(:func:`check_key`). Keys are made by the code, never taken from a request: a client's name for
a file is a lookup key in the metadata DB. So no key reaches outside its project's blobs.

- :meth:`BlobStore.create` and :meth:`BlobStore.put` write a blob atomically: a reader sees
  the previous blob or the whole new one, never part of it, and a write that fails or a crash
  leaves nothing visible. A committed blob is durable.
- :meth:`BlobStore.spool` writes a blob whose name is only known once it is written (an
  upload streamed in before the request's other fields are checked): it is named as it
  commits, and a spool never committed leaves nothing.
- :meth:`BlobStore.open` streams a blob or a byte range of it.
- :meth:`BlobStore.append` writes at a given offset, cutting off what followed: for files
  whose committed length is recorded elsewhere (an import's failures file, whose length
  commits with the job's progress), so a write a crash cut short is cut back by the next.
- :meth:`BlobStore.url` is a signed, expiring URL to a blob where the backend serves one
  itself (an object store), else None: the server serves the blob (and its ranges) through
  its own signed links.
- :meth:`BlobStore.local_path` is a real file holding the blob, for a reader library that
  wants one (pyarrow's CSV reader, the delimited-file scanners): a local store hands its own
  file, a remote one would spool a temporary copy and delete it on exit.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType

MAX_KEY = 512
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")
_PREFIX = re.compile(rf"(?:{_SEGMENT}/){{0,8}}[A-Za-z0-9._-]{{0,128}}")
MAX_PROJECT = 2**63 - 1


class BlobError(Exception):
    """A blob operation the caller got wrong (a key, a range)."""


class BadKey(BlobError, ValueError):
    """Not a key: absolute, with ``..``, a NUL, an empty segment or another character."""


class BlobNotFound(BlobError, LookupError):
    """No blob of that project and key."""


class BadRange(BlobError, ValueError):
    """A range that starts past the blob's end."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int


def check_key(key: str) -> str:
    """``key`` when it is a valid key, else :class:`BadKey`."""
    if not isinstance(key, str) or len(key) > MAX_KEY or not _KEY.fullmatch(key):
        raise BadKey(f"not a blob key: {str(key)[:80]!r}")
    return key


def check_prefix(prefix: str) -> str:
    """``prefix`` when keys can start with it ("" lists them all), else :class:`BadKey`."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY or not _PREFIX.fullmatch(prefix):
        raise BadKey(f"not a blob key prefix: {str(prefix)[:80]!r}")
    if any(part.startswith(".") for part in prefix.split("/")):
        raise BadKey(f"not a blob key prefix: {prefix[:80]!r}")
    return prefix


def check_project(project: int) -> int:
    if isinstance(project, bool) or not isinstance(project, int) or not 1 <= project <= MAX_PROJECT:
        raise BadKey(f"not a project id: {project!r}")
    return project


def span(size: int, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """The bytes ``[first, last)`` of a blob of ``size`` bytes that a range takes.

    ``start`` < 0 is a suffix: the last ``-start`` bytes (all of them when the blob is
    shorter). Otherwise the range is ``[start, end)``, ``end`` cut to the blob's size (None:
    to its end); a ``start`` past the end is :class:`BadRange` (``start == size`` is the empty
    range at the end)."""
    if start < 0:
        if end is not None:
            raise BadRange("a suffix range has no end")
        return max(0, size + start), size
    if start > size:
        raise BadRange(f"range starts at {start}, the blob has {size} bytes")
    last = size if end is None else min(end, size)
    if last < start:
        raise BadRange(f"range ends at {end}, before its start {start}")
    return start, last


class BlobWriter(ABC):
    """A blob being written: :meth:`commit` makes it visible whole, :meth:`abort` (or an
    exception in its ``with`` block) drops it. ``size`` is the bytes written so far."""

    size: int

    @abstractmethod
    def write(self, data: bytes) -> int: ...

    @abstractmethod
    def commit(self, project: int | None = None, key: str | None = None) -> BlobInfo:
        """Make the blob visible, whole and durable. A spool (:meth:`BlobStore.spool`) is
        named here, by ``project`` and ``key``; a writer of :meth:`BlobStore.create` is
        named already and takes neither."""

    @abstractmethod
    def abort(self) -> None: ...

    def tell(self) -> int:
        return self.size

    @abstractmethod
    def flush(self) -> None:
        """Hand what was written on (it is made durable at :meth:`commit`)."""

    @property
    def closed(self) -> bool:
        return False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class BlobStore(ABC):
    """Blobs by project and key. Every method validates its project and key first."""

    @abstractmethod
    def create(self, project: int, key: str) -> BlobWriter:
        """A writer of the blob ``key``, replacing it (atomically) on commit."""

    @abstractmethod
    def spool(self) -> BlobWriter:
        """A writer of a blob named when it commits (:meth:`BlobWriter.commit`)."""

    def put(self, project: int, key: str, chunks: Iterable[bytes]) -> BlobInfo:
        """Write the blob from ``chunks`` (atomic: an iterator that fails leaves nothing)."""
        with self.create(project, key) as writer:
            for chunk in chunks:
                writer.write(chunk)
        return BlobInfo(key, writer.size)

    async def put_async(self, project: int, key: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        """:meth:`put` from an asynchronous stream (a request body)."""
        with self.create(project, key) as writer:
            async for chunk in chunks:
                writer.write(chunk)
        return BlobInfo(key, writer.size)

    @abstractmethod
    def open(
        self, project: int, key: str, start: int = 0, end: int | None = None, chunk: int = 1 << 20
    ) -> Iterator[bytes]:
        """The bytes of a range of the blob (see :func:`span`), in chunks of at most
        ``chunk`` bytes; :class:`BlobNotFound` or :class:`BadRange` at once, before the
        first chunk is asked for."""

    def read(self, project: int, key: str, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(self.open(project, key, start, end))

    @abstractmethod
    def stat(self, project: int, key: str) -> BlobInfo | None:
        """The blob's size, or None when there is none."""

    def size(self, project: int, key: str) -> int:
        info = self.stat(project, key)
        if info is None:
            raise BlobNotFound(f"no blob {key!r}")
        return info.size

    @abstractmethod
    def delete(self, project: int, key: str) -> bool:
        """Delete the blob; whether there was one."""

    @abstractmethod
    def list(self, project: int, prefix: str = "") -> list[BlobInfo]:
        """The project's blobs whose keys start with ``prefix``, by key."""

    def delete_prefix(self, project: int, prefix: str) -> int:
        """Delete every blob of the project whose key starts with ``prefix``; how many."""
        if not check_prefix(prefix):
            raise BadKey("deleting every blob of a project takes a prefix")
        return sum(self.delete(project, b.key) for b in self.list(project, prefix))

    @abstractmethod
    def append(self, project: int, key: str, data: bytes, at: int) -> int:
        """Write ``data`` at byte ``at`` of the blob (created empty when missing), cutting off
        whatever followed; durable when it returns. Returns the blob's new length. Not atomic
        for readers: the caller records the committed length."""

    @abstractmethod
    def url(self, project: int, key: str, expires: timedelta) -> str | None:
        """A URL that serves the blob (and ranges of it) for ``expires``, signed by the
        backend; None when the server has to serve it itself."""

    @abstractmethod
    def local_path(self, project: int, key: str) -> AbstractContextManager[Path]:
        """A real file holding the blob for the duration of the ``with`` block, only to be
        read: the blob's own file in a local store, a temporary copy in a remote one."""


def blob_path_parts(project: int, key: str) -> tuple[str, ...]:
    """The path segments of a blob under a store's root: its project, then its key's."""
    return (str(check_project(project)), *check_key(key).split("/"))
