"""Active health checks: the base owns the timing; a backend supplies only the probe.

Every `interval_s` (+ jitter) each node gets a harmless canary (PKCS#11: GenerateRandom on a
pooled session) with a timeout; the result feeds the node's NodeHealth. Checks keep running
while a node is ejected or down, which is how it earns readmission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from hsmlb.clock import Clock
from hsmlb.errors import HsmlbError
from hsmlb.health.state import NodeHealth

log = logging.getLogger("hsmlb.health")
Probe = Callable[[], Awaitable[object]]


class HealthChecker:
    def __init__(self, interval_s: float, jitter_s: float, timeout_s: float, clock: Clock,
                 rng: random.Random | None = None) -> None:
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._rng = rng or random.Random()
        self._tasks: list[asyncio.Task[None]] = []

    def watch(self, health: NodeHealth, probe: Probe, on_change: Callable[[], None]) -> None:
        self._tasks.append(asyncio.create_task(self._loop(health, probe, on_change), name=f"check-{health.name}"))

    async def check_once(self, health: NodeHealth, probe: Probe) -> bool:
        reason = ""
        try:
            await asyncio.wait_for(probe(), self.timeout_s)
        except TimeoutError:
            reason = f"no answer within {self.timeout_s:g}s"
        except Exception as exc:  # any failure of the canary is a failed check
            reason = exc.message if isinstance(exc, HsmlbError) else type(exc).__name__  # ours are redacted
        if reason:
            log.debug("health check %s failed: %s", health.name, reason)
        health.record_check(not reason, self.clock(), reason)
        return not reason

    async def _loop(self, health: NodeHealth, probe: Probe, on_change: Callable[[], None]) -> None:
        before = health.describe(self.clock())
        while True:
            await asyncio.sleep(self.interval_s + self._rng.uniform(0, self.jitter_s))
            await self.check_once(health, probe)
            now_state = health.describe(self.clock())
            if now_state.split(" ")[0] != before.split(" ")[0]:
                log.warning("node %s: %s -> %s", health.name, before, now_state)
                on_change()
            before = now_state

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
