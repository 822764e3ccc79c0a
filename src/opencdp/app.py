"""The ASGI application: hot-path surfaces dispatched by exact path, the rest through FastAPI."""

from __future__ import annotations

import logging
from typing import Any

from opencdp.config import Settings
from opencdp.runtime import Runtime
from opencdp.surfaces import (
    admin,
    dmartech,
    growingio,
    marketo,
    thinkingdata,
    thinkingdata_ingest,
    wechat,
)
from opencdp.surfaces.rawasgi import ASGIApp, Receive, Scope, Send

log = logging.getLogger("opencdp")


class OpenCDP:
    """The server. Owns the runtime's lifetime through the ASGI lifespan protocol."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime.open(settings)
        self.framework: ASGIApp = admin.build(self.runtime)
        handler = dmartech.ImportHandler(self.runtime)
        self.fast: dict[str, ASGIApp] = {path: handler for path in dmartech.PATHS}
        receiver = thinkingdata_ingest.Receiver(self.runtime)
        self.fast.update({path: receiver for path in thinkingdata_ingest.PATHS})
        # Vendor surfaces by path prefix; everything else is the admin app.
        self.prefixed: list[tuple[str, ASGIApp]] = []
        for surface in (marketo, wechat, thinkingdata, growingio):
            vendor = surface.build(self.runtime)
            self.prefixed += [(p, vendor) for p in surface.PREFIXES]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            fast = self.fast.get(scope["path"])
            if fast is not None:
                await fast(scope, receive, send)
                return
            path = scope["path"]
            for prefix, app in self.prefixed:
                if path.startswith(prefix):
                    await app(scope, receive, send)
                    return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.framework(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "lifespan.startup":
                try:
                    self.runtime.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings) -> OpenCDP:
    return OpenCDP(settings)
