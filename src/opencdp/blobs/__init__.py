"""Blob storage: the files a deployment holds for its users (:mod:`opencdp.blobs.base`)."""

from __future__ import annotations

from opencdp.blobs.base import BlobStore
from opencdp.blobs.local import LocalBlobs
from opencdp.config import Settings
from opencdp.health import Health

AREAS = ("files", "exports")


def open_blobs(settings: Settings, area: str, health: Health | None = None) -> BlobStore:
    """The blob store of one area (:data:`AREAS`) of a deployment's files: a folder of the data
    directory, or a prefix of the object store that ``blob_url`` names (S3), whose state
    ``health`` reports as ``object_store_<area>``."""
    if area not in AREAS:
        raise ValueError(f"no blob area {area!r}")
    if not settings.blob_url:
        return LocalBlobs(settings.data_dir / area)
    from opencdp.blobs import s3

    where = s3.S3Location.parse(settings.blob_url).within(area)
    component = f"object_store_{area}"

    def report(problem: str | None) -> None:
        if health is None:
            return
        if problem is None:
            health.ok(component)
        else:
            health.fail(component, f"{problem}; files cannot be stored or read, retry later")

    return s3.S3Blobs(
        s3.client(settings.s3_endpoint_url or None),
        where,
        settings.data_dir / "tmp" / "blobs" / area,
        presigned=settings.s3_presigned_links,
        report=report,
    )
