"""What makes a file's creation, rename or removal survive a power loss: the directory that
names it is synced too (the file's own ``fsync`` covers only its bytes)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Sync the directory ``path``: its entries (a new, renamed or deleted file) are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
