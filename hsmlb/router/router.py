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

With routes in the config (router/routes.py), the holders are first limited to the route's pools and
ranked by priority; a weighted share puts the candidate pool first. Where the router reports a
success (`succeeded`, the end of `execute`) it hands a primary's answer to the shadow (hsmlb/shadow/),
so every path is shadowed once and none waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from hsmlb.clock import Clock
from hsmlb.errors import HsmlbError, NodeFault, Overloaded, Throttled, Unavailable
from hsmlb.ops import OP_TRAITS, KeyInfo, Operation
from hsmlb.router.balancer import Balancer
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.retry import RetryBudget, backoff_s
from hsmlb.router.routes import Route, RouteTable

if TYPE_CHECKING:
    from hsmlb.router.autodrop import CandidateWatch
    from hsmlb.router.control import RouteControl
    from hsmlb.shadow.shadower import Shadower

log = logging.getLogger("hsmlb.router")


def _name(member: Member) -> str:
    return member.name


class Attempt:
    """An attempt started by Router.start: the node, its future, and what a retry needs."""

    __slots__ = ("future", "holders", "member", "ranks", "route", "started", "tried")

    def __init__(self, member: Member, future: asyncio.Future[Any], holders: list[Member],
                 tried: list[Member], route: Route | None = None, ranks: dict[str, int] | None = None,
                 started: float = 0.0) -> None:
        self.member = member
        self.future = future
        self.holders = holders
        self.tried = tried
        self.route = route
        self.ranks = ranks
        self.started = started


def top_priority(ready: list[Member], ranks: dict[str, int]) -> list[Member]:
    """The ready members of the first priority level that has one with room (Envoy priority levels);
    if every ready member is saturated, the first level's, so the caller sheds with RESOURCE_EXHAUSTED."""
    open_ = [m for m in ready if not m.pool.saturated] or ready
    best = min(ranks[m.pool_name] for m in open_)
    return [m for m in open_ if ranks[m.pool_name] == best]


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
        self.routes: RouteTable | None = None  # set by the server when the config has routes
        self.shadow: Shadower | None = None
        self.watch: CandidateWatch | None = None  # weighted candidates' error rate (automatic weight drop)
        self.control: RouteControl | None = None  # operator changes to the routes (Admin)
        for member in cluster.members:  # per-attempt timeouts (pool/attempt_timeout.py) ask before moving
            member.pool.may_move = self.may_move

    def may_move(self, op: Operation, node: str) -> bool:
        """Whether an attempt of `op` overdue on `node` has somewhere to go: idempotent, another attempt
        allowed, deadline and retry budget left, and another holder routable now with room."""
        if not OP_TRAITS[op.kind].idempotent or op.attempts >= self.max_attempts:
            return False
        now = self.clock()
        if op.deadline is not None and now + self.backoff_max_s >= op.deadline:
            return False
        if not self.budget.would_allow(now):
            return False
        try:
            holders = self.cluster.holders(op)
        except HsmlbError:
            return False
        others, panic = self.candidates([m for m in holders if m.name != node], [], now)
        return not panic and any(not m.pool.saturated for m in others)

    def _load(self, member: Member) -> float:
        return member.pool.load

    def _weight(self, member: Member) -> float:
        health = member.health  # slow start: the balancer scores (load + cost) / weight
        return 1.0 if health.slow_start_at is None else health.weight(self.clock())

    def candidates(self, holders: list[Member], tried: list[Member], now: float,
                   ranks: dict[str, int] | None = None) -> tuple[list[Member], bool]:
        """(routable nodes, panic?) — panic when only ejected/unhealthy holders remain, in any pool."""
        ready = [m for m in holders
                 if (not tried or m not in tried) and m.pool.backend.state == "up" and m.health.routable(now)
                 and m.breaker.would_allow()]
        if ready:
            return (ready if ranks is None else top_priority(ready, ranks)), False
        # last holders: the breaker does not gate
        panic = [m for m in holders if m not in tried and m.up and m.health.operator == "active"]
        if panic and ranks is not None:
            panic = top_priority(panic, ranks)
        return panic, bool(panic)

    def _pick(self, op: Operation, holders: list[Member], tried: list[Member], now: float,
              last_fault: HsmlbError | None, ranks: dict[str, int] | None = None) -> Member:
        """The node for the next attempt (its breaker's half-open probe reserved); raises when none may serve."""
        while True:
            candidates, panic = self.candidates(holders, tried, now, ranks)
            if not candidates:
                if last_fault is not None:
                    raise last_fault
                raise Unavailable(f"no node can serve {op.key_alias or op.kind.value} now")
            open_queue = [m for m in candidates if not m.pool.saturated]
            if not open_queue:
                raise Overloaded("every eligible node is saturated", "all_nodes_saturated")
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

    def _admit(self, op: Operation) -> tuple[list[Member], float, Route | None, dict[str, int] | None]:
        """The op's capable holders in its route's pools (raises for caller errors), counted once for the
        retry budget; the route and its priority ranks (candidate first for the weighted share)."""
        holders = self.cluster.holders(op)
        now = self.clock()
        self.budget.record_request(now)
        routes = self.routes
        if not routes:
            return holders, now, None, None
        route = routes.route(op.kind.value)
        if route is None:
            return holders, now, None, None
        ranks = route.ranks
        if route.candidate_percent and self._rng.random() * 100 < route.candidate_percent:
            ranks = route.weighted_ranks
        return [m for m in holders if m.pool_name in ranks], now, route, ranks

    def start(self, op: Operation) -> Attempt:
        """Route `op` and start its first attempt, without a coroutine; raises what routing refuses.

        Finish it with `succeeded(op, attempt)` if its future succeeds, else with `execute(op, attempt)`."""
        holders, now, route, ranks = self._admit(op)
        tried: list[Member] = []
        member = self._pick(op, holders, tried, now, None, ranks)
        future = member.pool.perform(op)
        if op.trace is not None:  # sampled for tracing: the attempt gets a span
            op.trace.attempt(op, member, future)
        return Attempt(member, future, holders, tried, route, ranks, now)

    def succeeded(self, op: Operation, attempt: Attempt) -> KeyInfo | None:
        """Report the success of an attempt from start(); returns the key for the response."""
        self._report(attempt.member, node_fault=False, now=self.clock())
        if attempt.route is not None:
            self._served(op, attempt.member, attempt.future.result(), attempt.route, attempt.ranks, attempt.started)
        return self.cluster.key(op.key_alias)

    def _served(self, op: Operation, member: Member, result: Any, route: Route, ranks: dict[str, int] | None,
                started: float) -> None:
        """A routed op succeeded: count a weighted candidate's success, or shadow a primary's answer."""
        if ranks is route.weighted_ranks and route.candidate_percent:
            if member.pool_name == route.candidate and self.watch is not None:
                self.watch.record(route.op, ok=True, now=self.clock())
            return
        if (route.shadow_percent or route.noise_percent) and self.shadow is not None \
                and member.pool_name == route.primary:
            self.shadow.after(op, route, member, result, started)

    def _candidate_failed(self, route: Route | None, ranks: dict[str, int] | None, member: Member,
                          holders: list[Member], tried: list[Member]) -> bool:
        """A weighted op failed on the candidate: count it (maybe dropping the weight) and fall back to
        the primary, whatever the attempt count or retry budget: the weight must cost callers nothing."""
        if route is None or ranks is not route.weighted_ranks or member.pool_name != route.candidate:
            return False
        if self.watch is not None:
            self.watch.record(route.op, ok=False, now=self.clock())
        tried.extend(m for m in holders if m.pool_name == route.candidate and m not in tried)
        return True

    async def execute(self, op: Operation, started: Attempt | None = None) -> tuple[Any, KeyInfo | None]:
        """Route, attempt, classify the outcome, retry where allowed. `started`: an attempt from start()."""
        if started is None:
            holders, now, route, ranks = self._admit(op)
            tried: list[Member] = []
            began = now
        else:
            holders, tried, now = started.holders, started.tried, self.clock()
            route, ranks, began = started.route, started.ranks, started.started
        idempotent = OP_TRAITS[op.kind].idempotent
        last_fault: HsmlbError | None = None
        while True:
            if started is None:
                member = self._pick(op, holders, tried, now, last_fault, ranks)
                attempt = member.pool.perform(op)
                if op.trace is not None:
                    op.trace.attempt(op, member, attempt)
            else:
                member, attempt, started = started.member, started.future, None
            try:
                result = await attempt
            except NodeFault as fault:
                now = self.clock()
                self._report(member, node_fault=True, now=now)
                tried.append(member)
                last_fault = fault
                fallback = route is not None and self._candidate_failed(route, ranks, member, holders, tried)
                if not (idempotent and (fallback or (len(tried) < self.max_attempts and self._may_retry(op, now)))):
                    if route is not None and route.shadow_percent and self.shadow is not None:
                        self.shadow.primary_failed(op)  # nothing to compare: counted as its own outcome
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
            except Overloaded as shed:  # its queue was full or too slow: another node with room, else shed
                member.breaker.release_probe()
                tried.append(member)
                last_fault = shed
                continue
            except HsmlbError:
                self._report(member, node_fault=False, now=self.clock())  # the node answered: caller fault
                raise
            except BaseException:
                member.breaker.release_probe()
                raise
            self._report(member, node_fault=False, now=self.clock())
            if route is not None:
                self._served(op, member, result, route, ranks, began)
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
