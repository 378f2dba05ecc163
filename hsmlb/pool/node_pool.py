"""A node's session pool as the router sees it.

The sessions themselves live in the node's backend (logged in, key handles cached); the pool
hands out slot numbers so at most `size` x `depth` operations are in flight per node, queues up to
`queue_limit` more, and refuses the rest at once (RESOURCE_EXHAUSTED) rather than letting
latency grow without bound.

Waiting is bounded in time too (`max_wait_s`; slow operations SLOW_WAIT_FACTOR times that, as an
RSA signature costs ~25 symmetric ops): an operation still queued after it is shed with
RESOURCE_EXHAUSTED (the router then tries a node with room), whether a slot frees (checked as it
is taken) or not (one timer per pool sweeps the queue: a node that stops answering frees none).
Overload then costs callers a fast answer, not seconds of queueing behind a backlog.

An idempotent operation's attempt is bounded too (`attempt_timeout`, pool/attempt_timeout.py: a
multiple of this node's recent latency): one timer per pool, armed only while such attempts run, fails
an overdue attempt's future with NodeFault, so the router retries it on another node and counts the
fault against this one; but only where the router says it has somewhere to go (`may_move`: another
attempt allowed, another routable holder, budget and deadline left), else it waits as before. Its slot
stays held until the node answers (its session is busy till then).

Slow operations (RSA) may hold at most size - 1 slots, and waiting fast operations are served
first, so symmetric traffic never queues behind a backlog of signatures.

`perform` is a plain function returning a future, not a coroutine: on the hot path it is a slot
pop, one backend call and one done-callback that gives the slot back, with no task or await of
its own. A slot is held until the backend answers, and a queued operation starts from that callback,
in the same loop turn, so it rides in the same batch to the token worker.

`depth` (the backend's `pipeline_depth`, 1 unless it says otherwise): operations one session may have in
flight at once. A token worker runs its requests one after the other, so several per session cost it
nothing, while a cap of `size` in flight made a batch of 64 operations take 4 worker round trips per
node (each waiting for the last); with depth 8 it is one write per node. Slots are numbered
0..size*depth-1 and handed to the backend as `slot % size` (a session). Slow operations (RSA) still hold
at most size - 1 sessions.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from hsmlb.backends.base import Backend, NodeStats
from hsmlb.clock import Clock
from hsmlb.errors import HsmlbError, NodeFault, Overloaded
from hsmlb.ops import OP_TRAITS, CostClass, Operation
from hsmlb.pool.attempt_timeout import AttemptTimeout

SLOW_WAIT_FACTOR = 25.0  # slow ops (RSA) may wait this many times max_wait_s: the cost weight of RSA


class _Queued:
    """An operation waiting for a slot; `waiter` is the future its caller holds."""

    __slots__ = ("op", "queued_at", "slow", "started", "waiter", "weight")

    def __init__(self, op: Operation, slow: bool, weight: float, waiter: asyncio.Future[Any], queued_at: float) -> None:
        self.op = op
        self.slow = slow
        self.weight = weight
        self.waiter = waiter
        self.queued_at = queued_at
        self.started = False


class NodePool:
    def __init__(self, backend: Backend, size: int, queue_limit: int,
                 cost_weights: dict[CostClass, float] | None = None, max_wait_s: float | None = None,
                 clock: Clock = time.monotonic, depth: int = 1, attempt_timeout: AttemptTimeout | None = None) -> None:
        self.backend = backend
        self.attempt_timeout = attempt_timeout
        self._running: dict[int, tuple[float, bool, asyncio.Future[Any], Operation]] = {}  # timed attempts by slot
        self.may_move: Callable[[Operation, str], bool] | None = None  # the router's: may this attempt move?
        self._overdue: asyncio.TimerHandle | None = None
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.shed = 0  # operations shed for waiting longer than max_wait_s
        self._sweep: asyncio.TimerHandle | None = None
        self.cost_weights = cost_weights or {c: 1.0 for c in CostClass}
        self.load = 0.0  # cost-weighted in-flight + queued work, for the balancer
        self.name = backend.name
        self.size = size
        self.queue_limit = queue_limit
        self.slow_limit = max(1, size - 1)
        self.stats = NodeStats()
        self.capacity = size * max(1, depth)  # operations in flight at once (see the module)
        self._free = list(range(self.capacity - 1, -1, -1))
        self._slow_in_use = 0
        self._fast_waiters: deque[_Queued] = deque()
        self._slow_waiters: deque[_Queued] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # a pool serves one event loop

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    @property
    def queued(self) -> int:
        return len(self._fast_waiters) + len(self._slow_waiters)

    @property
    def outstanding(self) -> int:
        return self.in_use + self.queued

    @property
    def saturated(self) -> bool:
        return not self._free and len(self._fast_waiters) + len(self._slow_waiters) >= self.queue_limit

    def perform(self, op: Operation) -> asyncio.Future[Any]:
        """Run `op` on a free session, or queue it; never raises: failures come out of the future.

        The future resolves after the slot is back, so a caller that sees the result sees the pool
        as it is after the operation."""
        cost = op.cost
        slow = cost is CostClass.RSA
        weight = self.cost_weights[cost]
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        done = loop.create_future()
        if self._free and (not slow or self._slow_in_use < self.slow_limit):
            self._slow_in_use += slow
            self.load += weight
            self._start(op, self._free.pop(), slow, weight, done)
        elif self.queued >= self.queue_limit:
            done.set_exception(Overloaded(
                f"node {self.name}: all {self.size} sessions busy and {self.queue_limit} queued", "node_queue_full"))
        else:
            entry = _Queued(op, slow, weight, done, self.clock())
            (self._slow_waiters if slow else self._fast_waiters).append(entry)
            self.load += weight
            done.add_done_callback(partial(self._leave_queue, entry))
            if self.max_wait_s is not None and self._sweep is None:
                self._sweep = loop.call_later(self.max_wait_s, self._sweep_queue)
        return done

    def _start(self, op: Operation, slot: int, slow: bool, weight: float, done: asyncio.Future[Any]) -> None:
        timeouts = self.attempt_timeout
        if timeouts is not None and OP_TRAITS[op.kind].idempotent:
            self._running[slot] = (self.clock(), slow, done, op)
            if self._overdue is None:
                self._overdue = done.get_loop().call_later(timeouts.limit_s(slow), self._check_overdue)
        try:
            started = self.backend.perform(op, slot % self.size)
            if not isinstance(started, asyncio.Future):  # a coroutine (HTTP backends): its own task,
                started = asyncio.ensure_future(started)  # cancelled with the caller's future
                done.add_done_callback(partial(_cancel_with, started))
        except Exception as exc:  # a backend that fails at once fails through the same path
            started = done.get_loop().create_future()
            started.set_exception(exc)
        started.add_done_callback(partial(self._finished, slot, slow, weight, done))

    def _finished(self, slot: int, slow: bool, weight: float, done: asyncio.Future[Any],
                  started: asyncio.Future[Any]) -> None:
        """The backend answered: slot back (a queued op may start on it), stats, then the caller."""
        self.load -= weight
        if self._running:
            timed = self._running.pop(slot, None)
            if timed is not None and timed[2] is done and not done.done() and not started.cancelled() \
                    and started.exception() is None:  # answered within its limit: the node's normal
                self.attempt_timeout.observe(self.clock() - timed[0], slow)  # type: ignore[union-attr]
        self._release(slot, slow)
        if started.cancelled():
            if not done.done():
                done.cancel()
            return
        exc = started.exception()
        if exc is None:
            self.stats.ops_ok += 1
            if not done.done():
                done.set_result(started.result())
            return
        if isinstance(exc, HsmlbError) and exc.counts_against_node:
            self.stats.ops_failed += 1
            self.stats.last_fault = exc.message
        if not done.done():
            done.set_exception(exc)

    def _release(self, slot: int, slow: bool) -> None:
        self._free.append(slot)
        self._slow_in_use -= slow
        oldest = self.clock() - self.max_wait_s if self.max_wait_s is not None and self.queued else None
        oldest_slow = None if oldest is None else oldest - (SLOW_WAIT_FACTOR - 1) * self.max_wait_s  # type: ignore[operator]
        while self._free:
            if self._fast_waiters:
                entry = self._fast_waiters.popleft()
            elif self._slow_waiters and self._slow_in_use < self.slow_limit:
                entry = self._slow_waiters.popleft()
            else:
                return
            entry.started = True
            if oldest is not None and entry.queued_at < (oldest_slow if entry.slow else oldest):  # type: ignore[operator]
                self._shed(entry)
                continue
            self._slow_in_use += entry.slow
            self._start(entry.op, self._free.pop(), entry.slow, entry.weight, entry.waiter)

    def _shed(self, entry: _Queued) -> None:
        """An op waited past max_wait_s: RESOURCE_EXHAUSTED (the router tries a node with room)."""
        self.load -= entry.weight
        self.shed += 1
        if not entry.waiter.done():
            limit = self.max_wait_s * (SLOW_WAIT_FACTOR if entry.slow else 1)  # type: ignore[operator]
            entry.waiter.set_exception(Overloaded(f"node {self.name}: no session within {limit:g}s", "node_queue_wait"))

    def _sweep_queue(self) -> None:
        """Shed what has waited too long though no slot freed (a node that stopped answering)."""
        self._sweep = None
        limit = self.max_wait_s
        if limit is None:
            return
        now = self.clock()
        next_due = None
        for waiters, wait in ((self._fast_waiters, limit), (self._slow_waiters, limit * SLOW_WAIT_FACTOR)):
            while waiters and waiters[0].queued_at <= now - wait:
                entry = waiters.popleft()
                entry.started = True
                self._shed(entry)
            if waiters:
                due = waiters[0].queued_at + wait
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None and self._loop is not None:
            self._sweep = self._loop.call_later(max(0.001, next_due - now), self._sweep_queue)

    def _check_overdue(self) -> None:
        """Fail the attempts that ran past their limit (NodeFault: the router retries elsewhere)."""
        self._overdue = None
        timeouts = self.attempt_timeout
        if timeouts is None:
            return
        now = self.clock()
        next_due = None
        for slot, timed in list(self._running.items()):
            started_at, slow, done, op = timed
            if done.done():  # the caller gave up (cancelled): nothing to move
                del self._running[slot]
                continue
            limit = timeouts.limit_s(slow)
            if now - started_at >= limit:
                del self._running[slot]
                if self.may_move is not None and not self.may_move(op, self.name):
                    continue  # nowhere else to go: it waits for this node or its deadline, as before
                timeouts.timed_out += 1
                self.stats.ops_failed += 1
                self.stats.last_fault = f"an attempt took over {limit:.3g}s"
                done.set_exception(NodeFault(f"node {self.name}: no answer within {limit:.3g}s"))
            else:
                due = started_at + limit
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None and self._loop is not None:
            self._overdue = self._loop.call_later(max(0.001, next_due - now), self._check_overdue)

    def _leave_queue(self, entry: _Queued, waiter: asyncio.Future[Any]) -> None:
        """The caller gave up while its operation was still queued: take it out, with its load."""
        if waiter.cancelled() and not entry.started:
            entry.started = True
            (self._slow_waiters if entry.slow else self._fast_waiters).remove(entry)
            self.load -= entry.weight


def _cancel_with(started: asyncio.Future[Any], done: asyncio.Future[Any]) -> None:
    if done.cancelled():
        started.cancel()
