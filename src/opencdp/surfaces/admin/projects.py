"""Projects, their credentials and counts."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from opencdp.runtime import Runtime
from opencdp.surfaces.admin.common import P


class NewProject(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    timezone: str = "Asia/Shanghai"
    strict_schema: bool = False


class ProjectPatch(BaseModel):
    strict_schema: bool | None = None
    export_format: Literal["csv", "jsonl", "parquet"] | None = None
    # The project's WeChat cloud environment ids (replacing those it had).
    wechat_envs: list[str] | None = Field(default=None, max_length=16)
    # The user property exported as GrowingIO's loginUserId ("" for our user id).
    login_user_key: str | None = Field(default=None, max_length=256)


def router(rt: Runtime) -> APIRouter:
    r = APIRouter()

    @r.get("/projects")
    async def list_projects() -> list[dict[str, object]]:
        return [p.public() for p in rt.catalog.projects()]

    @r.post("/projects", status_code=201)
    async def create_project(body: NewProject) -> dict[str, object]:
        project, creds = rt.catalog.create_project(body.name, body.timezone, body.strict_schema)
        return {**project.public(), **_creds(creds)}

    @r.get("/projects/{ref}")
    async def get_project(project: P) -> dict[str, object]:
        return project.public()

    @r.patch("/projects/{ref}")
    async def patch_project(project: P, body: ProjectPatch) -> dict[str, object]:
        if body.strict_schema is not None:
            project = rt.catalog.set_strict(project.id, body.strict_schema)
        if body.export_format is not None:
            project = rt.catalog.set_export_format(project.id, body.export_format)
        if body.wechat_envs is not None:
            project = rt.catalog.set_wechat_envs(project.id, body.wechat_envs)
        if body.login_user_key is not None:
            project = rt.catalog.set_login_user_key(project.id, body.login_user_key)
        return project.public()

    @r.get("/projects/{ref}/credentials")
    async def credentials(project: P) -> dict[str, object]:
        return {
            "project_id": project.id,
            "key": project.key,
            **rt.catalog.credentials_info(project.id),
        }

    @r.post("/projects/{ref}/credentials/rotate")
    async def rotate(project: P) -> dict[str, object]:
        creds = rt.catalog.rotate_credentials(project.id)
        return {**project.public(), **_creds(creds)}

    @r.get("/projects/{ref}/stats")
    async def stats(project: P) -> dict[str, object]:
        pending = rt.ingest.pending
        counts = await run_in_threadpool(rt.store.counts, project.id)
        return {"project_id": project.id, "name": project.name, **counts, "pending": pending}

    return r


def _creds(creds: Any) -> dict[str, str]:
    return {
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        "api_token": creds.api_token,
    }
