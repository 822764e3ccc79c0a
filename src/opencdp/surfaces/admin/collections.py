"""Collections of documents: their fields and keys, and a document by its id."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from opencdp.catalog.types import PropertyType
from opencdp.errors import CdpError, Code
from opencdp.runtime import Runtime
from opencdp.surfaces.admin.common import P


class Fields(BaseModel):
    fields: dict[str, PropertyType] = Field(default_factory=dict)
    # Marketo custom objects: the fields whose values identify a record (in file order).
    dedupe_fields: list[str] | None = Field(default=None, max_length=3)


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.get("/projects/{ref}/collections/{name}")
    async def collection_info(project: P, name: str) -> dict[str, Any]:
        cid = rt.catalog.collection(project.id, name, create=False)
        count = await run_in_threadpool(rt.store.document_count, project.id, cid)
        fields = rt.catalog.collection_fields(cid)
        return {
            "name": name,
            "count": count,
            "fields": {k: v.value for k, v in fields.items()},
            "dedupe_fields": rt.catalog.collection_dedupe(cid),
        }

    @r.put("/projects/{ref}/collections/{name}")
    async def declare_collection(project: P, name: str, body: Fields) -> dict[str, Any]:
        """Declare a collection, the types of its fields, and (Marketo custom objects) the
        fields that identify a record, before importing into it."""
        cid = rt.catalog.collection(project.id, name)
        fields = rt.catalog.ensure_collection_fields(cid, body.fields)
        clash = {k: v.value for k, v in body.fields.items() if fields[k] is not v}
        if clash:
            raise CdpError(
                Code.CONFLICT, f"fields already exist with other types: {sorted(clash)}", "fields"
            )
        if body.dedupe_fields is not None:
            rt.catalog.set_collection_dedupe(cid, body.dedupe_fields)
        return await collection_info(project, name)

    @r.get("/projects/{ref}/collections/{name}/{doc_id}")
    async def document(project: P, name: str, doc_id: str) -> Any:
        cid = rt.catalog.collection(project.id, name, create=False)
        doc = await run_in_threadpool(rt.store.document, project.id, cid, doc_id)
        if doc is None:
            raise CdpError(Code.NOT_FOUND, f"no document with _id {doc_id!r}", "doc_id")
        return orjson.loads(doc)

    return r
