"""The blob stores the contract suite runs against: one factory per backend, each making an
empty store under a test's temporary directory. A backend joins by adding its factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opencdp.blobs.base import BlobStore
from opencdp.blobs.local import LocalBlobs

Factory = Callable[[Path], BlobStore]


def local(tmp: Path) -> BlobStore:
    return LocalBlobs(tmp / "blobs")


FACTORIES: list[Factory] = [local]


@pytest.fixture(params=FACTORIES, ids=lambda f: f.__name__)
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    factory: Factory = request.param
    return factory(tmp_path)
