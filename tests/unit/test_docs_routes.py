"""docs/surfaces.md lists every route the server serves: a route added without its docs fails.

The routes are read from the application itself (every vendor surface, the Dmartech fast path
and the admin API), so the list cannot drift from what is served.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import Route

from opencdp.app import OpenCDP
from opencdp.config import Settings
from opencdp.runtime import Runtime

DOCS = Path(__file__).resolve().parents[2] / "docs" / "surfaces.md"
_PLACEHOLDER = re.compile(r"\{[^}]*\}")


def normalized(path: str) -> str:
    """A path with each ``{placeholder}`` written alike, whatever its name."""
    return _PLACEHOLDER.sub("{}", path)


def served(app: OpenCDP) -> Iterator[tuple[str, str]]:
    for path in app.fast:  # the hot paths (Dmartech, ThinkingData's SDK receiver): POST only
        yield "POST", path
    seen: set[int] = set()
    for _, vendor in app.prefixed:
        if id(vendor) in seen:
            continue
        seen.add(id(vendor))
        for route in vendor.routes:  # type: ignore[attr-defined]
            assert isinstance(route, Route)
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield method, route.path
    # The admin API: every route of its OpenAPI schema.
    schema = app.framework.openapi()  # type: ignore[attr-defined]
    for path, operations in schema["paths"].items():
        for method in operations:
            yield method.upper(), path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenCDP]:
    data = tmp_path_factory.mktemp("routes") / "data"
    runtime = Runtime.open(Settings(data_dir=data, job_workers=0))
    try:
        yield OpenCDP(runtime.settings, runtime)
    finally:
        runtime.stop()


def test_every_served_route_is_documented(app: OpenCDP) -> None:
    text = " ".join(normalized(DOCS.read_text(encoding="utf-8")).split())  # (lines wrap)
    routes = sorted(set(served(app)))
    assert len(routes) > 60, routes  # every surface was found
    missing = [f"{m} {p}" for m, p in routes if f"{m} {normalized(p)}" not in text]
    assert not missing, "served but not in docs/surfaces.md:\n" + "\n".join(missing)
