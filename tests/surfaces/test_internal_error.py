"""10000: a record the server cannot keep gets the vendor's code with the reason and no trace, and
nothing is half-done."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from opencdp.app import OpenCDP
from opencdp.config import Settings
from opencdp.runtime import Runtime


def test_a_record_arriving_after_the_log_closed_gets_10000_without_a_trace(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", admin_token="adm_" + "t" * 30)
    runtime = Runtime.open(settings)
    runtime.start(announce=False)
    project, creds = runtime.catalog.create_project("shop")
    app = OpenCDP(settings, runtime)
    body = {
        "type": "event",
        "event": "order",
        "properties": {"mobile": "13800000000", "event_id": "e1", "create_time": "2024-01-02"},
    }

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cdp") as http:
            return await http.post(
                "/api/v1/api/import", params={"secret": creds.api_token}, json=body
            )

    try:
        first = asyncio.run(post())
        assert first.json() == {"errcode": 0, "errmsg": "success"}
        # The server is shutting down: the durable log no longer takes records.
        runtime.ingest.stop()
        body["properties"]["event_id"] = "e2"  # type: ignore[index]
        resp = asyncio.run(post())
    finally:
        runtime.stop()

    # The server cannot keep the record: it says so (503: retry later), with no internals.
    assert resp.status_code == 503
    assert resp.json() == {
        "errcode": 10000,
        "errmsg": "系统错误: storage: the server is stopping; nothing was stored, retry later",
    }
    assert "Traceback" not in resp.text and "Error" not in resp.text

    # The acknowledged record is stored; the refused one is not.
    runtime = Runtime.open(settings)
    runtime.start(announce=False)
    try:
        assert runtime.ingest.barrier()
        assert runtime.store.counts(project.id)["events"] == 1
    finally:
        runtime.stop()
