from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.liveserver import LiveServer

_names = itertools.count(1)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server for the surface tests; each test works in a project of its own."""
    srv = LiveServer(tmp_path_factory.mktemp("server") / "data").start()
    yield srv
    srv.stop()


class Project:
    """A fresh project on the live server, with a client for the Dmartech import API."""

    def __init__(self, server: LiveServer, info: dict[str, Any]) -> None:
        self.server = server
        self.info = info
        self.name: str = info["name"]
        self.secret: str = info["api_token"]
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def send(
        self, body: Any, path: str = "/api/v1/api/import", secret: str | None = None, **kw: Any
    ) -> httpx.Response:
        params = {"secret": self.secret if secret is None else secret}
        if isinstance(body, bytes | str):
            return self.http.post(path, params=params, content=body, **kw)
        return self.http.post(path, params=params, json=body, **kw)

    def event(self, event_id: str, name: str = "order", **props: Any) -> httpx.Response:
        props.setdefault("create_time", "2024-01-02 03:04:05")
        return self.send(
            {"type": "event", "event": name, "properties": {"event_id": event_id, **props}}
        )

    def user(self, **props: Any) -> httpx.Response:
        return self.send({"type": "user", "properties": props})

    def profile(self, **params: Any) -> httpx.Response:
        return self.server.profile(self.name, **params)


@pytest.fixture
def project(server: LiveServer) -> Iterator[Project]:
    p = Project(server, server.new_project(f"t{next(_names)}"))
    yield p
    p.http.close()


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(params=["sqlite", "postgresql"])
def meta_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh metadata DB on each engine it runs on: a SQLite file, or a database of its own on
    the tests' PostgreSQL cluster (:mod:`tests.engines`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.db'}"
    from tests.engines import new_database

    return new_database()
