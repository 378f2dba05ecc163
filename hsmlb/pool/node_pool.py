"""A node's session pool as the router sees it.

The sessions themselves live in the node's backend (logged in, key handles cached); the pool
hands out slot numbers so at most `size` operations are in flight per node, queues up to
`queue_limit` more, and refuses the rest at once (RESOURCE_EXHAUSTED) rather than letting
latency grow without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from hsmlb.backends.base import Backend, NodeStats
from hsmlb.errors import HsmlbError, Overloaded
from hsmlb.ops import Operation


class NodePool:
    def __init__(self, backend: Backend, size: int, queue_limit: int) -> None:
        self.backend = backend
        self.name = backend.name
        self.size = size
        self.queue_limit = queue_limit
        self.stats = NodeStats()
        self._free = list(range(size - 1, -1, -1))
        self._waiters: deque[asyncio.Future[int]] = deque()

    @property
    def in_use(self) -> int:
        return self.size - len(self._free)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def outstanding(self) -> int:
        return self.in_use + len(self._waiters)

    async def perform(self, op: Operation) -> Any:
        slot = self._free.pop() if self._free else await self._wait_for_slot()
        try:
            result = await self.backend.perform(op, slot)
        except HsmlbError as exc:
            if exc.counts_against_node:
                self.stats.ops_failed += 1
                self.stats.last_fault = exc.message
            raise
        finally:
            self._release(slot)
        self.stats.ops_ok += 1
        return result

    async def _wait_for_slot(self) -> int:
        if len(self._waiters) >= self.queue_limit:
            raise Overloaded(f"node {self.name}: all {self.size} sessions busy and {self.queue_limit} queued")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            raise

    def _release(self, slot: int) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)
