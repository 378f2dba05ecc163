"""The telemetry listener: `/metrics` (Prometheus text), `/` (the status page), `/status.json`.

aiohttp on the daemon's own event loop: the handlers read router state without locks, as the
Admin service does. The page is one file shipped in the package (no CDN, no external fonts or
scripts: production networks have no internet either).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("hsmlb.telemetry")


def _page() -> bytes:
    return resources.files("hsmlb.telemetry").joinpath("static/status.html").read_bytes()


class TelemetryServer:
    def __init__(self, listen: str, registry: CollectorRegistry, status: Callable[[], dict[str, Any]]) -> None:
        host, port = listen.rsplit(":", 1)
        self.host = host.strip("[]")
        self.port = int(port)
        self.registry = registry
        self.status = status
        self.page = _page()
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the port (the one chosen when the config says 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status.json", self._status)
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only through the server's sockets
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        try:
            doc = self.status()
        except Exception:
            log.exception("status document failed")
            raise web.HTTPInternalServerError(text="status unavailable; see the daemon's log") from None
        return web.Response(body=json.dumps(doc, separators=(",", ":")).encode(), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; img-src 'self' data:"})
