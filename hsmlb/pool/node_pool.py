"""A node's session pool as the router sees it.

The sessions themselves live in the node's backend (logged in, key handles cached); the pool
hands out slot numbers so at most `size` operations are in flight per node, queues up to
`queue_limit` more, and refuses the rest at once (RESOURCE_EXHAUSTED) rather than letting
latency grow without bound.

Slow operations (RSA) may hold at most size - 1 slots, and waiting fast operations are served
first, so symmetric traffic never queues behind a backlog of signatures.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from hsmlb.backends.base import Backend, NodeStats
from hsmlb.errors import HsmlbError, Overloaded
from hsmlb.ops import CostClass, Operation


class NodePool:
    def __init__(self, backend: Backend, size: int, queue_limit: int,
                 cost_weights: dict[CostClass, float] | None = None) -> None:
        self.backend = backend
        self.cost_weights = cost_weights or {c: 1.0 for c in CostClass}
        self.load = 0.0  # cost-weighted in-flight + queued work, for the balancer
        self.name = backend.name
        self.size = size
        self.queue_limit = queue_limit
        self.slow_limit = max(1, size - 1)
        self.stats = NodeStats()
        self._free = list(range(size - 1, -1, -1))
        self._slow_in_use = 0
        self._fast_waiters: deque[asyncio.Future[int]] = deque()
        self._slow_waiters: deque[asyncio.Future[int]] = deque()

    @property
    def in_use(self) -> int:
        return self.size - len(self._free)

    @property
    def queued(self) -> int:
        return len(self._fast_waiters) + len(self._slow_waiters)

    @property
    def outstanding(self) -> int:
        return self.in_use + self.queued

    @property
    def saturated(self) -> bool:
        return not self._free and self.queued >= self.queue_limit

    async def perform(self, op: Operation) -> Any:
        slow = op.cost is CostClass.RSA
        weight = self.cost_weights[op.cost]
        self.load += weight
        try:
            if self._free and (not slow or self._slow_in_use < self.slow_limit):
                slot = self._free.pop()
                self._slow_in_use += slow
            else:
                slot = await self._wait_for_slot(slow)  # granted with _slow_in_use already counted
        except BaseException:
            self.load -= weight
            raise
        try:
            result = await self.backend.perform(op, slot)
        except HsmlbError as exc:
            if exc.counts_against_node:
                self.stats.ops_failed += 1
                self.stats.last_fault = exc.message
            raise
        finally:
            self.load -= weight
            self._release(slot, slow)
        self.stats.ops_ok += 1
        return result

    async def _wait_for_slot(self, slow: bool) -> int:
        if self.queued >= self.queue_limit:
            raise Overloaded(f"node {self.name}: all {self.size} sessions busy and {self.queue_limit} queued")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        (self._slow_waiters if slow else self._fast_waiters).append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result(), slow)
            raise

    def _release(self, slot: int, slow: bool) -> None:
        self._free.append(slot)
        self._slow_in_use -= slow
        while self._free:
            if self._fast_waiters:
                waiter, grant_slow = self._fast_waiters.popleft(), False
            elif self._slow_waiters and self._slow_in_use < self.slow_limit:
                waiter, grant_slow = self._slow_waiters.popleft(), True
            else:
                return
            if not waiter.done():
                self._slow_in_use += grant_slow
                waiter.set_result(self._free.pop())
