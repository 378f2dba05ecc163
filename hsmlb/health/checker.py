"""Active health checks: the base owns the timing; a backend supplies only the probe.

Every `interval_s` (+ jitter) each node gets a harmless canary (PKCS#11: GenerateRandom on a
pooled session) with a timeout; the result feeds the node's NodeHealth. Checks keep running
while a node is ejected or down, which is how it earns readmission.

Stopping does not rely on cancellation alone: on Python 3.11 `asyncio.wait_for` can swallow a
cancel that lands in the same loop turn as the probe's answer, and a loop that only stops by
cancellation then runs for ever (shutdown hung on it). The loops wait on a stop event, probes are
bounded by `asyncio.timeout`, and `close` waits a bounded time before it gives up on a loop.
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
        self._stopping = asyncio.Event()

    def watch(self, health: NodeHealth, probe: Probe, on_change: Callable[[], None]) -> None:
        self._tasks.append(asyncio.create_task(self._loop(health, probe, on_change), name=f"check-{health.name}"))

    async def check_once(self, health: NodeHealth, probe: Probe) -> bool:
        reason = ""
        try:
            async with asyncio.timeout(self.timeout_s):
                await probe()
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
        stopping = self._stopping
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):  # the interval passed; the event: stop now
                async with asyncio.timeout(self.interval_s + self._rng.uniform(0, self.jitter_s)):
                    await stopping.wait()
            if stopping.is_set():
                return
            await self.check_once(health, probe)
            now_state = health.describe(self.clock())
            if now_state.split(" ")[0] != before.split(" ")[0]:
                log.warning("node %s: %s -> %s", health.name, before, now_state)
                on_change()
            before = now_state

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop every loop: set the event, wait at most `timeout_s` (a probe in flight ends by its own
        timeout), then cancel what is left and move on without waiting for it again."""
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)
            log.warning("health checks still running after %gs: %s", timeout_s,
                        ", ".join(sorted(t.get_name() for t in pending)))
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("health check %s failed: %s", task.get_name(), type(task.exception()).__name__)
