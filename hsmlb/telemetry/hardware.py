"""The hardware-health row: what each PKCS#11 token says of itself (C_GetTokenInfo), cached.

Asked of each token worker (the only process that may call its library) on the health checks'
cadence, at least MIN_REFRESH_S apart, never per operation; the page reads the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from hsmlb.errors import HsmlbError
from hsmlb.router import Router

log = logging.getLogger("hsmlb.telemetry")
MIN_REFRESH_S = 2.0


class HardwareInfo:
    def __init__(self, router: Router, interval_s: float) -> None:
        self.router = router
        self.interval_s = max(interval_s, MIN_REFRESH_S)
        self.cache: dict[str, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-hardware")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: self.cache[name] for name in sorted(self.cache)}

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self.refresh(m.pool.backend) for m in self.router.cluster.members))
            await asyncio.sleep(self.interval_s)

    async def refresh(self, backend: Any) -> None:
        entry: dict[str, Any] = {"kind": backend.kind, "state": backend.state}
        control = getattr(backend, "control", None)
        if backend.kind == "pkcs11" and control is not None and backend.state == "up":
            try:
                entry.update(await control("_token_info", timeout=2.0))
                entry["t"] = round(time.time(), 1)
            except HsmlbError as exc:
                entry["error"] = exc.message
            except Exception as exc:  # an older worker without the request, a library without the call
                entry["error"] = type(exc).__name__
        elif backend.kind == "pkcs11":
            previous = self.cache.get(backend.name, {})
            entry.update({k: v for k, v in previous.items() if k not in entry})  # last known, marked stale
            entry["stale"] = bool(previous)
        else:
            entry["region"] = getattr(getattr(backend, "config", None), "region", "")
        self.cache[backend.name] = entry
