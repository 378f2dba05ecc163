"""The request path's decision point: eligibility, then choice, then the attempt, then maybe a retry.

Per request: the holders of the key that can do the op -> those routable now (up, healthy, not
ejected, not drained/failed by an operator, breaker closed or offering its probe) -> a balancer
choice -> the attempt. The outcome is reported to the node's health and breaker. A node fault on
an idempotent op is retried on a different node, within the deadline and the retry budget.
If every holder of a key is ejected or unhealthy, the router keeps serving from them (panic)
and counts it, rather than fail a key that only they hold.

Two entries, one path: `execute` is the coroutine (unary RPCs); `start` makes the first attempt
without one and returns its future (the Stream, which must not pay a task per message). A
successful start is finished with `succeeded`; any other outcome goes to `execute(op, attempt)`,
so the outcome of `pool.perform` is classified in one place: the except clauses of `execute`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from hsmlb.clock import Clock
from hsmlb.errors import HsmlbError, NodeFault, Overloaded, Throttled, Unavailable
from hsmlb.ops import OP_TRAITS, KeyInfo, Operation
from hsmlb.router.balancer import Balancer
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.retry import RetryBudget, backoff_s

log = logging.getLogger("hsmlb.router")


def _name(member: Member) -> str:
    return member.name


class Attempt:
    """An attempt started by Router.start: the node, its future, and what a retry needs."""

    __slots__ = ("future", "holders", "member", "tried")

    def __init__(self, member: Member, future: asyncio.Future[Any], holders: list[Member],
                 tried: list[Member]) -> None:
        self.member = member
        self.future = future
        self.holders = holders
        self.tried = tried


class Router:
    def __init__(self, cluster: Cluster, balancer: Balancer, clock: Clock = time.monotonic, *,
                 max_attempts: int = 2, budget: RetryBudget | None = None, max_ejected_nodes: int = 1,
                 backoff_base_s: float = 0.001, backoff_max_s: float = 0.02,
                 rng: random.Random | None = None) -> None:
        self.cluster = cluster
        self.balancer = balancer
        self.clock = clock
        self.max_attempts = max_attempts
        self.budget = budget or RetryBudget()
        self.max_ejected_nodes = max_ejected_nodes
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()

    def _load(self, member: Member) -> float:
        return member.pool.load

    def _weight(self, member: Member) -> float:
        health = member.health  # slow start: the balancer scores (load + cost) / weight
        return 1.0 if health.slow_start_at is None else health.weight(self.clock())

    def candidates(self, holders: list[Member], tried: list[Member], now: float) -> tuple[list[Member], bool]:
        """(routable nodes, panic?) — panic when only ejected/unhealthy holders remain."""
        ready = [m for m in holders
                 if (not tried or m not in tried) and m.pool.backend.state == "up" and m.health.routable(now)
                 and m.breaker.would_allow()]
        if ready:
            return ready, False
        # last holders: the breaker does not gate
        panic = [m for m in holders if m not in tried and m.up and m.health.operator == "active"]
        return panic, bool(panic)

    def _pick(self, op: Operation, holders: list[Member], tried: list[Member], now: float,
              last_fault: HsmlbError | None) -> Member:
        """The node for the next attempt (its breaker's half-open probe reserved); raises when none may serve."""
        while True:
            candidates, panic = self.candidates(holders, tried, now)
            if not candidates:
                if last_fault is not None:
                    raise last_fault
                raise Unavailable(f"no node can serve {op.key_alias or op.kind.value} now")
            open_queue = [m for m in candidates if not m.pool.saturated]
            if not open_queue:
                raise Overloaded("every eligible node is saturated")
            member = self.balancer.choose(open_queue, self._load, _name, op.key_alias,
                                          open_queue[0].pool.cost_weights[op.cost], weight=self._weight)
            if not panic and not member.breaker.allows():
                tried.append(member)  # lost the half-open probe to another request
                continue
            if panic:
                member.panic_routes += 1
                if member.panic_routes == 1 or member.panic_routes % 1000 == 0:
                    log.warning("panic routing: %s is served by %s although it is %s", op.key_alias, member.name,
                                member.health.describe(now))
            op.node = member.name
            op.attempts += 1
            return member

    def _admit(self, op: Operation) -> tuple[list[Member], float]:
        """The op's capable holders (raises for caller errors), counted once for the retry budget."""
        holders = self.cluster.holders(op)
        now = self.clock()
        self.budget.record_request(now)
        return holders, now

    def start(self, op: Operation) -> Attempt:
        """Route `op` and start its first attempt, without a coroutine; raises what routing refuses.

        Finish it with `succeeded(op, attempt)` if its future succeeds, else with `execute(op, attempt)`."""
        holders, now = self._admit(op)
        tried: list[Member] = []
        member = self._pick(op, holders, tried, now, None)
        return Attempt(member, member.pool.perform(op), holders, tried)

    def succeeded(self, op: Operation, attempt: Attempt) -> KeyInfo | None:
        """Report the success of an attempt from start(); returns the key for the response."""
        self._report(attempt.member, node_fault=False, now=self.clock())
        return self.cluster.key(op.key_alias)

    async def execute(self, op: Operation, started: Attempt | None = None) -> tuple[Any, KeyInfo | None]:
        """Route, attempt, classify the outcome, retry where allowed. `started`: an attempt from start()."""
        if started is None:
            holders, now = self._admit(op)
            tried: list[Member] = []
        else:
            holders, tried, now = started.holders, started.tried, self.clock()
        idempotent = OP_TRAITS[op.kind].idempotent
        last_fault: HsmlbError | None = None
        while True:
            if started is None:
                member = self._pick(op, holders, tried, now, last_fault)
                attempt = member.pool.perform(op)
            else:
                member, attempt, started = started.member, started.future, None
            try:
                result = await attempt
            except NodeFault as fault:
                now = self.clock()
                self._report(member, node_fault=True, now=now)
                tried.append(member)
                last_fault = fault
                if not (idempotent and len(tried) < self.max_attempts and self._may_retry(op, now)):
                    raise
                member.retries_from += 1
                await asyncio.sleep(backoff_s(len(tried), self.backoff_base_s, self.backoff_max_s, self._rng))
                now = self.clock()
                continue
            except Throttled as throttled:  # back-pressure, not a fault: try another node, never eject
                member.breaker.release_probe()
                member.throttled += 1
                tried.append(member)
                last_fault = throttled
                continue
            except Overloaded:
                member.breaker.release_probe()
                raise
            except HsmlbError:
                self._report(member, node_fault=False, now=self.clock())  # the node answered: caller fault
                raise
            except BaseException:
                member.breaker.release_probe()
                raise
            self._report(member, node_fault=False, now=self.clock())
            return result, self.cluster.key(op.key_alias)

    def _may_retry(self, op: Operation, now: float) -> bool:
        if op.deadline is not None and now + self.backoff_max_s >= op.deadline:
            return False
        return self.budget.try_withdraw(now)

    def _report(self, member: Member, node_fault: bool, now: float) -> None:
        member.breaker.record(node_fault)
        if not node_fault:  # the common case: no ejection to decide, so no count of ejected nodes
            member.health.record_result(False, now)
            return
        may_eject = self.cluster.ejected_count(now) < self.max_ejected_nodes
        if member.health.record_result(node_fault, now, may_eject=may_eject):
            log.warning("node %s ejected until +%.1fs: %s", member.name,
                        (member.health.ejected_until or now) - now, member.health.last_reason)
