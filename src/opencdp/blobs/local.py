"""Blobs as files of a local directory: ``<root>/<project id>/<key>``, the key's segments as
directories. This is the layout the data directory always had (``files/<project>/<id>.dat``,
``exports/<project>/<export>/<part>``), so existing data directories need no migration.

A blob is written to a temporary file in ``<root>/.incoming`` (locked while it is written),
fsynced, renamed into place, and its directory fsynced: a reader sees the old blob or the whole
new one, and a crash leaves at most a temporary file, which the next store opened on the
directory deletes (one whose lock is free: no writer holds it). Keys never start a segment
with ``.``, so ``.incoming`` is no project's. A write on a full disk fails with the
``OSError`` it met (a passing fault, see :mod:`opencdp.faults`) and leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from opencdp.blobs.base import (
    BadRange,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobWriter,
    blob_path_parts,
    check_key,
    check_prefix,
    check_project,
    span,
)
from opencdp.blobs.scratch import ScratchWriter, clean
from opencdp.durable import fsync_dir

INCOMING = ".incoming"


class LocalBlobs(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / INCOMING
        self._incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        clean(self._incoming)

    def _path(self, project: int, key: str) -> Path:
        return self.root.joinpath(*blob_path_parts(project, key))

    def _project_dir(self, project: int) -> Path:
        return self.root / str(check_project(project))

    # ---- writing -------------------------------------------------------------------------
    def create(self, project: int, key: str) -> BlobWriter:
        return _Writer(self, self._path(project, key))

    def spool(self) -> BlobWriter:
        return _Writer(self, None)

    def append(self, project: int, key: str, data: bytes, at: int) -> int:
        if at < 0:
            raise BadRange(f"cannot write at {at}")
        path = self._path(project, key)
        created = _makedirs(path.parent, self.root)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # (a blob shorter than ``at`` is padded with zero bytes)
            os.ftruncate(fd, at)
            view, offset = memoryview(data), at
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # (its folders are durable already)
            fsync_dir(path.parent)
        return at + len(data)

    # ---- reading -------------------------------------------------------------------------
    def open(
        self, project: int, key: str, start: int = 0, end: int | None = None, chunk: int = 1 << 20
    ) -> Iterator[bytes]:
        path = self._path(project, key)
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(f"no blob {key!r}") from None
        try:
            first, last = span(os.fstat(f.fileno()).st_size, start, end)
        except BaseException:
            f.close()
            raise
        return _stream(f, first, last, max(1, chunk))

    def stat(self, project: int, key: str) -> BlobInfo | None:
        try:
            st = self._path(project, key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not _is_file(st.st_mode):
            return None
        return BlobInfo(key, st.st_size)

    def list(self, project: int, prefix: str = "") -> list[BlobInfo]:
        check_prefix(prefix)
        top = self._project_dir(project)
        folder, _, _ = prefix.rpartition("/")
        base = top.joinpath(*folder.split("/")) if folder else top
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(top).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if not key.startswith(prefix) or name.startswith("."):
                    continue
                try:
                    check_key(key)
                    st = os.stat(os.path.join(dirpath, name))
                except (ValueError, FileNotFoundError):
                    continue  # a name that is no key, or deleted meanwhile
                if _is_file(st.st_mode):
                    out.append(BlobInfo(key, st.st_size))
        out.sort(key=lambda b: b.key)
        return out

    # ---- deleting ------------------------------------------------------------------------
    def delete(self, project: int, key: str) -> bool:
        path = self._path(project, key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False
        self._prune(path.parent, self._project_dir(project))
        return True

    def delete_prefix(self, project: int, prefix: str) -> int:
        check_prefix(prefix)
        if prefix.endswith("/"):  # a folder: whatever it holds goes, written or half-written
            top = self._project_dir(project)
            folder = top.joinpath(*prefix.rstrip("/").split("/"))
            count = len(self.list(project, prefix))
            shutil.rmtree(folder, ignore_errors=True)
            self._prune(folder.parent, top)
            return count
        return super().delete_prefix(project, prefix)

    def _prune(self, folder: Path, top: Path) -> None:
        """Remove ``folder`` and its parents up to ``top`` (not included) while empty."""
        while folder != top and top in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or gone)
            folder = folder.parent

    # ---- serving -------------------------------------------------------------------------
    def url(self, project: int, key: str, expires: timedelta) -> str | None:
        check_key(key)
        check_project(project)
        return None  # the server serves local blobs itself, ranges included

    def local_path(self, project: int, key: str) -> AbstractContextManager[Path]:
        return self._local(project, key)

    @contextmanager
    def _local(self, project: int, key: str) -> Iterator[Path]:
        path = self._path(project, key)
        if self.stat(project, key) is None:
            raise BlobNotFound(f"no blob {key!r}")
        yield path


class _Writer(ScratchWriter):
    def __init__(self, store: LocalBlobs, final: Path | None) -> None:
        super().__init__(store._incoming, None if final is None else str(final))
        self._store = store

    def _named(self, project: int, key: str) -> str:
        return str(self._store._path(project, key))

    def _publish(self, name: str) -> BlobInfo:
        final, top = Path(name), self._store.root
        os.fsync(self._scratch.file.fileno())
        for attempt in range(3):  # (a delete may remove an emptied folder meanwhile)
            _makedirs(final.parent, top)
            try:
                os.replace(self._scratch.path, final)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        fsync_dir(final.parent)
        return BlobInfo("/".join(final.relative_to(top).parts[1:]), self.size)


def _stream(f: BinaryIO, first: int, last: int, chunk: int) -> Iterator[bytes]:
    with f:
        f.seek(first)
        left = last - first
        while left > 0:
            data = f.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


def _makedirs(folder: Path, top: Path) -> bool:
    """Create ``folder`` and the missing folders above it (below ``top``), each made durable
    in its parent; whether any was created."""
    missing = []
    current = folder
    while current != top and current != current.parent and not current.is_dir():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fsync_dir(path.parent)
    return bool(missing)


def _is_file(mode: int) -> bool:
    return stat.S_ISREG(mode)
