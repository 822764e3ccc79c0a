"""The baseline: a bare ASGI endpoint that reads the request body and answers a fixed JSON.

It runs under the same uvicorn settings as OpenCDP, so the ratio between the two measures what
OpenCDP's own work (validation, identity checks, durable logging) costs on this machine.
"""

from __future__ import annotations

from typing import Any

_BODY = b'{"errcode":0,"errmsg":"success"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"32")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
