"""The blob stores the contract suite runs against: one factory per backend, each making an
empty store under a test's temporary directory. A backend joins by adding its factory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opencdp.blobs.base import BlobStore
from opencdp.blobs.local import LocalBlobs
from opencdp.blobs.s3 import S3Blobs, S3Location, client
from tests.engines import new_bucket, s3_endpoint

Factory = Callable[[Path], BlobStore]


def local(tmp: Path) -> BlobStore:
    return LocalBlobs(tmp / "blobs")


def s3(tmp: Path) -> BlobStore:
    """A prefix of a fresh bucket on the tests' moto server."""
    endpoint = s3_endpoint()
    return S3Blobs(client(endpoint), S3Location.parse(f"s3://{new_bucket()}/deploy"), tmp / "s3")


FACTORIES: list[Factory] = [local, s3]


@pytest.fixture(params=FACTORIES, ids=lambda f: f.__name__)
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    factory: Factory = request.param
    return factory(tmp_path)
