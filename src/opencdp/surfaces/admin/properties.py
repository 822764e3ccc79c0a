"""A project's schema: properties, identity keys, and the ThinkingData app ids that name it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from opencdp.catalog.types import PropertyType
from opencdp.runtime import Runtime
from opencdp.surfaces.admin.common import P


class NewProperty(BaseModel):
    table: Literal["user", "event"]
    name: str = Field(min_length=1, max_length=128)
    type: PropertyType
    is_identity: bool = False


class TdApp(BaseModel):
    app_id: str | None = Field(default=None, min_length=1, max_length=64)


class IdentityKeys(BaseModel):
    keys: list[str] = Field(min_length=1)


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.get("/projects/{ref}/properties")
    async def list_properties(
        project: P, table: Literal["user", "event"] | None = None
    ) -> list[dict[str, object]]:
        schema = rt.catalog.schema(project.id)
        props = [*schema.user.values(), *schema.event.values()]
        return [p.public() for p in props if table is None or p.table == table]

    @r.post("/projects/{ref}/properties")
    async def add_property(project: P, body: NewProperty, response: Response) -> dict[str, object]:
        prop, new = rt.catalog.add_property(
            project.id, body.table, body.name, body.type.value, body.is_identity
        )
        response.status_code = 201 if new else 200
        return {**prop.public(), "created": new}

    @r.delete("/projects/{ref}/properties/{table}/{name}", status_code=204)
    async def delete_property(project: P, table: str, name: str) -> Response:
        rt.catalog.delete_property(project.id, table, name)
        return Response(status_code=204)

    @r.get("/projects/{ref}/identity-keys")
    async def get_keys(project: P) -> dict[str, object]:
        return {"keys": list(rt.catalog.schema(project.id).identity_keys)}

    @r.put("/projects/{ref}/identity-keys")
    async def set_keys(project: P, body: IdentityKeys) -> dict[str, object]:
        schema = rt.catalog.set_identity_keys(project.id, body.keys)
        return {"keys": list(schema.identity_keys)}

    @r.get("/projects/{ref}/thinkingdata/app-ids")
    async def td_apps(project: P) -> dict[str, object]:
        return {"app_ids": rt.catalog.td_app_ids(project.id)}

    @r.post("/projects/{ref}/thinkingdata/app-ids", status_code=201)
    async def add_td_app(project: P, body: TdApp) -> dict[str, object]:
        app_id = rt.catalog.add_td_app(project.id, body.app_id)
        return {
            "app_id": app_id,
            "app_ids": rt.catalog.td_app_ids(project.id),
            "identity_keys": list(rt.catalog.schema(project.id).identity_keys),
        }

    @r.delete("/projects/{ref}/thinkingdata/app-ids/{app_id}")
    async def remove_td_app(project: P, app_id: str) -> dict[str, object]:
        rt.catalog.remove_td_app(project.id, app_id)
        return {"app_ids": rt.catalog.td_app_ids(project.id)}

    return r
