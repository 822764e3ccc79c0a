"""Scratch files of blob writers: a temporary file in a folder of its own, locked while it is
written, so that a crash leaves at most a file nobody holds, which the next store opened on the
folder deletes (:func:`clean`). The local store renames its scratch file into place; the S3
store uploads it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from opencdp.blobs.base import BlobInfo, BlobWriter


def clean(folder: Path) -> None:
    """Delete the scratch files of writes a crash interrupted (no writer holds their lock)."""
    for entry in os.scandir(folder):
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being written, by this or another process
        finally:
            os.close(fd)
        Path(entry.path).unlink(missing_ok=True)


class ScratchFile:
    """A locked temporary file in ``folder``: :attr:`file` to write, :attr:`path` to name it,
    :meth:`drop` to close and delete it (a crash releases the lock and leaves it to
    :func:`clean`)."""

    def __init__(self, folder: Path, prefix: str = "blob-") -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix=prefix)
        self.path = Path(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a crash releases it)
            self.file: BinaryIO = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):  # (a full disk refusing the last buffered bytes)
            self.file.close()

    def drop(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class ScratchWriter(BlobWriter):
    """A blob writer over a scratch file: ``name`` is where the blob goes (None for a spool,
    named as it commits); :meth:`_publish` makes the written file that blob, whole."""

    def __init__(self, folder: Path, name: str | None) -> None:
        self._scratch = ScratchFile(folder)
        self._name = name
        self.size = 0
        self._done = False

    def _named(self, project: int, key: str) -> str:
        """The name of the blob ``key`` of ``project``."""
        raise NotImplementedError

    def _publish(self, name: str) -> BlobInfo:
        """Make the (flushed) scratch file the blob ``name``: the blob's info."""
        raise NotImplementedError

    def write(self, data: bytes) -> int:
        n = self._scratch.file.write(data)
        self.size += len(data)
        return n

    def flush(self) -> None:
        self._scratch.file.flush()

    @property
    def closed(self) -> bool:
        return self._done

    def commit(self, project: int | None = None, key: str | None = None) -> BlobInfo:
        if self._done:
            raise ValueError("the blob is already committed or dropped")
        if (project is None) != (key is None) or (project is None) == (self._name is None):
            raise ValueError("a spool is named as it commits, a created blob is named already")
        if project is not None and key is not None:
            self._name = self._named(project, key)
        assert self._name is not None
        try:
            self._scratch.file.flush()
            info = self._publish(self._name)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._scratch.drop()  # (a no-op for a file renamed into place)
        return info

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._scratch.drop()
