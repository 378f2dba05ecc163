"""A region front door for the sensitive-data audit: a reverse proxy on 127.0.0.1, on a thread of its
own, that passes the control plane through and answers data-plane requests with errors echoing them."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import ClientSession, web
from yarl import URL


def _echo(mode: str, body: bytes) -> web.Response:
    """An error answer built from the request: the whole body as the message, its values as paths and codes."""
    text = body.decode(errors="replace")
    try:
        values = [v for v in json.loads(body).values() if isinstance(v, str) and not v.startswith("arn:")]
    except (ValueError, AttributeError):
        values = []
    value = max(values, key=len, default=text)[:200]
    json_type = {"Content-Type": "application/json"}
    answers: dict[str, tuple[int, dict[str, str], dict[str, Any]]] = {
        "validation": (400, {"x-amzn-ErrorType": "ValidationException"},
                       {"message": text, "fieldList": [{"path": v, "message": v} for v in values]}),
        "denied": (403, {"x-amzn-ErrorType": "AccessDeniedException"}, {"Message": text}),
        "not_found": (404, {"x-amzn-ErrorType": "ResourceNotFoundException"}, {"message": text}),
        "conflict": (409, {"x-amzn-ErrorType": "ConflictException"}, {"message": text}),
        "server_error": (500, {}, {"__type": "InternalServerException", "message": text}),
        "type_header": (500, {"x-amzn-ErrorType": value}, {"message": text}),
        "type_body": (503, {}, {"__type": f"com.amazonaws#{value}", "message": text}),
        "teapot": (418, {}, {"code": value, "message": text}),
        "verification": (400, {"x-amzn-ErrorType": "VerificationFailedException"},
                         {"Reason": value, "message": text}),
    }
    status, headers, payload = answers[mode]
    return web.Response(status=status, body=json.dumps(payload).encode(), headers={**json_type, **headers})


ECHO_MODES = ("validation", "denied", "not_found", "conflict", "verification", "server_error", "type_header",
              "type_body", "teapot")


class EchoProxy:
    """A reverse proxy on 127.0.0.1, on a thread of its own, in front of an emulated region."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.url = ""
        self.hits: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        async with ClientSession(auto_decompress=False) as client:
            self._client = client
            self._ready.set()
            await self._stop.wait()
        await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        data_plane = "X-Amz-Target" not in request.headers
        if data_plane and self.mode != "pass":
            self.hits[self.mode] = self.hits.get(self.mode, 0) + 1
            return _echo(self.mode, body)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "connection", "content-length", "transfer-encoding")}
        headers["Host"] = request.headers["Host"]  # signed: the emulator must see what the node signed
        async with self._client.request(request.method, URL(self.upstream + request.raw_path, encoded=True),
                                        data=body, headers=headers, skip_auto_headers=("Accept-Encoding",)) as answer:
            raw = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "x-amzn-errortype")}
            return web.Response(status=answer.status, body=raw, headers=out)
