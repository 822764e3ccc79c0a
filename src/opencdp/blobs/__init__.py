"""Blob storage: the files a deployment holds for its users (:mod:`opencdp.blobs.base`)."""

from __future__ import annotations

from pathlib import Path

from opencdp.blobs.base import BlobStore
from opencdp.blobs.local import LocalBlobs


def open_blobs(root: Path) -> BlobStore:
    """The blob store of one area of the data directory (``files``, ``exports``)."""
    return LocalBlobs(root)
