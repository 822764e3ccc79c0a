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
