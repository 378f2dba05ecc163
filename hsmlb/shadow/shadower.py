"""The shadow call: after a primary answered, the same operation goes to a candidate pool node, off the
response path, and the two results are compared (compare.py) and counted (stats.py).

The router calls `after` where it reports a success, so the unary, Stream, StreamBatch and Batch paths
are all shadowed, once each. `after` only remembers the answer (a tuple and a clock read): the decision
(skip or go) is made two loop turns later, for every answer remembered meanwhile, behind the steps of the
writers those answers woke; so no shadow work stands between a caller and its answer. The call then
starts a few per loop turn (STARTS_PER_TURN), or at once when the shadow executor (executor.py) performs
it, in a child process that takes a turn's calls in one frame; either way as a future with a done-
callback: the caller's answer never waits for it, and nothing about it can change that answer. It is
never retried; it has its own deadline; it does not report to the candidate's health or breaker
(observing must not move traffic). Bounded: at most `max_in_flight` shadow calls at once (waiting to
start included), and a candidate with no room, a candidate's quota exhausted or no eligible candidate
node are skipped and counted by reason, never queued. Best-effort: the shadow budget (budget.py) lets
through only the shadow calls the event loop has room for; the rest are skipped as `budget`, so the
report shows real coverage.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from functools import partial
from typing import Any

from hsmlb.clock import Clock
from hsmlb.errors import HsmlbError, Overloaded, Throttled, Unavailable
from hsmlb.ops import Operation
from hsmlb.router.balancer import Balancer
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.routes import Route
from hsmlb.shadow.budget import LoopLagProbe, ShadowBudget
from hsmlb.shadow.compare import DISCREPANCY, KEY_DRIFT, compare
from hsmlb.shadow.executor import ExecutorUnavailable, ShadowExecutor
from hsmlb.shadow.stats import Discrepancy, ShadowStats, wall_time

log = logging.getLogger("hsmlb.shadow")
CANDIDATE, NOISE = "candidate", "noise"
# Shadow calls started per event-loop turn. A primary batch of 16 answers used to start its 16 shadow calls
# at once: their first steps (request, signature, socket write; ~0.25 ms each) then ran back to back in
# one turn, and the primary's next answers and messages waited ~4 ms behind them. Two per turn lets the
# loop poll its sockets between them; a shadow call waiting here already counts as in flight.
STARTS_PER_TURN = 2
# Whether a pool can serve an operation at all, remembered this long: the check runs for every primary
# answer (~1 us as a scan of the pool's members), and what a node can do changes only when it (re)starts.
CAPABLE_TTL_S = 1.0


def _load(member: Member) -> float:
    return member.pool.load


def _name(member: Member) -> str:
    return member.name


class Shadower:
    def __init__(self, cluster: Cluster, balancer: Balancer, clock: Clock, *, max_in_flight: int = 256,
                 timeout_s: float = 2.0, ring_size: int = 100, window_s: float = 600.0,
                 rng: random.Random | None = None, budget: ShadowBudget | None = None,
                 executor: ShadowExecutor | None = None) -> None:
        self.cluster = cluster
        self.balancer = balancer
        self.clock = clock
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.stats = ShadowStats(ring_size, window_s)
        self.in_flight = 0
        self._rng = rng or random.Random()
        self._pools: dict[str, list[Member]] = {}
        self.budget = budget or ShadowBudget(clock)
        self.executor = executor  # performs shadow calls to regions in a child process (executor.py)
        self.probe = LoopLagProbe(self.budget.observe, self._backlog)
        self._targets: set[str] = set()  # pools shadowed to: their queues are the shadow's, not the primary's
        self._waiting: deque[tuple[Any, ...]] = deque()  # decided, not started yet: see STARTS_PER_TURN
        self._capable: dict[tuple[str, str], bool] = {}  # (pool, capability) -> some member has it; CAPABLE_TTL_S
        self._capable_since = 0.0
        self._answered: list[tuple[Any, ...]] = []  # primary answers not decided yet (see `after`)
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def pool(self, name: str) -> list[Member]:
        members = self._pools.get(name)
        if members is None:
            members = self._pools[name] = [m for m in self.cluster.members if m.pool_name == name]
        return members

    def after(self, op: Operation, route: Route, served_by: Member, result: Any, started: float) -> None:
        """The primary answered `op` with `result`: remember it; whether to shadow it is decided after the
        answer has gone (`_decide`), so no shadow work stands between a caller and its answer."""
        answered = self._answered
        answered.append((op, route, served_by, result, self.clock() - started, op.trace))  # trace: before its span ends
        if len(answered) == 1:
            self._loop().call_soon(self._after_writers)

    def _after_writers(self) -> None:
        """One turn on: the turn that queued the answers also woke their writers, whose steps run in
        this turn; the decisions come in the next, behind them."""
        self._loop().call_soon(self._decide)

    def _decide(self) -> None:
        """Maybe shadow each answer remembered since the last time to the candidate and/or the noise baseline."""
        answered, self._answered = self._answered, []
        rng = self._rng.random
        for op, route, served_by, result, primary_s, trace in answered:
            percent = route.shadow_percent
            if percent and route.candidate and (percent >= 100 or rng() * 100 < percent):
                self._shadow(op, CANDIDATE, route.candidate, served_by, result, primary_s, trace)
            if route.noise_percent and rng() * 100 < route.noise_percent:
                self._shadow(op, NOISE, served_by.pool_name, served_by, result, primary_s, trace)

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._event_loop
        if loop is None:
            loop = self._event_loop = asyncio.get_running_loop()
        return loop

    def _backlog(self) -> bool:
        """Half the slots of the pools not shadowed to in use, or more (queued too): the primary runs near its
        capacity (measured: a saturating load keeps about half of the pipelined slots busy, a paced load
        below saturation a quarter at most), so any CPU the shadow takes comes out of its throughput."""
        outstanding = capacity = 0
        for member in self.cluster.members:
            if member.pool_name not in self._targets:
                outstanding += member.pool.outstanding
                capacity += member.pool.capacity
        return 2 * outstanding >= capacity > 0

    async def start(self, shadowing: bool) -> None:
        """`shadowing`: some route shadows now. The executor starts with the daemon then; else on the first
        shadow call to a region, which is skipped (unavailable), as every call is while it starts."""
        if self.executor is not None and shadowing:
            await self.executor.start()

    async def close(self) -> None:
        """The daemon stops: no probe timer left armed; shadow calls not started yet are dropped."""
        self.probe.close()
        self._answered.clear()
        self._waiting.clear()
        if self.executor is not None:
            await self.executor.close()

    def primary_failed(self, op: Operation) -> None:
        self.stats.of(op.kind.value, CANDIDATE).primary_errors += 1

    def _shadow(self, op: Operation, side: str, pool: str, served_by: Member, result: Any, primary_s: float,
                trace: Any) -> None:
        now = self.clock()
        name = op.kind._value_  # Enum.value is a descriptor call; this runs for every primary answer
        if self.in_flight >= self.max_in_flight:  # first: under overload a skip must cost next to nothing
            self.stats.skip(name, side, "shed")
            return
        # Operation.needs without a second enum lookup; structural, not load: counted whatever the budget
        if not self._can_serve(pool, op.capability or name, now):
            self.stats.skip(name, side, "no_capability")
            return
        budget = self.budget
        self.probe.poke()
        if not budget.ready(pool):
            self.stats.skip(name, side, "budget")
            return
        target, reason = self._target(op, self.pool(pool), served_by, now)
        if reason == KEY_DRIFT:
            assert target is not None
            self.stats.outcome(name, side, KEY_DRIFT, now, primary_s, -1.0)
            self._note(op, side, served_by, target, KEY_DRIFT, "key_check_value", 0, 0)
            return
        if target is None:
            self.stats.skip(name, side, reason)
            return
        self.in_flight += 1
        budget.take(pool)
        executor = self._executor_for(target)
        if executor is not None:  # a frame per turn, whatever the count: at once
            self._start(op, side, pool, served_by, target, result, primary_s, trace, executor)
            return
        if not self._waiting:
            self._loop().call_soon(self._start_some)
        self._waiting.append((op, side, pool, served_by, target, result, primary_s, trace))

    def _can_serve(self, pool: str, needs: str, now: float) -> bool:
        if now - self._capable_since > CAPABLE_TTL_S:
            self._capable.clear()
            self._capable_since = now
        capable = self._capable.get((pool, needs))
        if capable is None:
            capable = self._capable[(pool, needs)] = any(needs in m.pool.backend.capabilities for m in self.pool(pool))
            if capable:
                self._targets.add(pool)
        return capable

    def _start_some(self) -> None:
        """Start up to STARTS_PER_TURN waiting shadow calls; come back next turn for the rest."""
        waiting = self._waiting
        for _ in range(min(STARTS_PER_TURN, len(waiting))):
            self._start(*waiting.popleft())
        if waiting:
            self._loop().call_soon(self._start_some)

    def _executor_for(self, target: Member) -> ShadowExecutor | None:
        """The executor when it performs calls to `target` (a region), else None (the target's own pool)."""
        executor = self.executor
        return executor if executor is not None and executor.serves(target.name) else None

    def _start(self, op: Operation, side: str, pool: str, served_by: Member, target: Member, result: Any,
               primary_s: float, trace: Any, executor: ShadowExecutor | None = None) -> None:
        """`trace`: the primary's span hook as it was when it answered (the span's own end clears op.trace)."""
        now = self.clock()
        shadow_op = Operation(op.kind, op.key_alias, op.args, deadline=now + self.timeout_s, cost=op.cost,
                              capability=op.capability, other_keys=op.other_keys, node=target.name, attempts=1)
        try:
            future = executor.perform(target.name, shadow_op) if executor is not None \
                else target.pool.perform(shadow_op)
        except HsmlbError as exc:
            self.in_flight -= 1
            self.budget.release(pool)
            self.stats.skip(op.kind.value, side, "unavailable" if isinstance(exc, Unavailable) else "shed")
            return
        if trace is not None:  # the primary is traced (sampled): the shadow call gets a span of its own
            trace.shadow(side, target, future)
        future.add_done_callback(partial(self._done, op, side, pool, served_by, target, result, primary_s, now,
                                         executor is not None))

    def _target(self, op: Operation, members: list[Member], served_by: Member, now: float) -> tuple[Member | None, str]:
        """The node to shadow to, or None and why not."""
        needs = op.needs
        capable = [m for m in members if m is not served_by and needs in m.pool.backend.capabilities]
        if not capable:
            return None, "no_capability"
        up = [m for m in capable if m.up]
        if not up:
            return None, "unavailable"
        holders = up
        if op.key_alias is not None:
            for alias in (op.key_alias, *op.other_keys):
                agreed = self.cluster.agreed_holders(alias)
                holders = [m for m in holders if m in agreed]
            if not holders:
                drift = [m for m in up if op.key_alias in m.kcv_conflicts
                         or any(a in m.kcv_conflicts for a in op.other_keys)]
                return (drift[0], KEY_DRIFT) if drift else (None, "key_missing")
        ready = [m for m in holders if m.health.routable(now) and m.breaker.would_allow()]
        if not ready:
            return None, "unavailable"
        room = [m for m in ready if not m.pool.saturated]
        if not room:
            return None, "shed"
        target = self.balancer.choose(room, _load, _name, op.key_alias, room[0].pool.cost_weights[op.cost])
        quotas = getattr(target.pool.backend, "quotas", None)  # a region's client-side quota buckets
        if quotas is not None:
            key = self.cluster.key(op.key_alias)
            bucket = quotas.bucket(key.key_type if key else "AES")
            executor = self._executor_for(target)
            if executor is not None:
                if not executor.up:  # before its quota token is taken: a call not made must not spend one
                    executor.start_soon()
                    return None, "unavailable"
                if not bucket.take_now():  # one count of the region's quota, the primary's calls and the executor's
                    return None, "quota"
            elif bucket.available() < 1:
                return None, "quota"  # at once: waiting for a token would hold a shadow slot for nothing
        return target, ""

    def _done(self, op: Operation, side: str, pool: str, served_by: Member, target: Member, primary_result: Any,
              primary_s: float, sent: float, remote: bool, future: asyncio.Future[Any]) -> None:
        """`remote`: performed by the executor, whose answer is (result, the call's own seconds there)."""
        self.in_flight -= 1
        self.budget.release(pool)
        now = self.clock()
        name = op.kind.value
        if future.cancelled():
            self.stats.skip(name, side, "shed")
            return
        exc = future.exception()
        if exc is not None:
            if isinstance(exc, ExecutorUnavailable):  # the executor lost it: nothing learnt of the candidate
                self.stats.skip(name, side, "unavailable")
            elif isinstance(exc, Throttled):
                self.stats.skip(name, side, "quota")
            elif isinstance(exc, Overloaded):
                self.stats.skip(name, side, "shed")
            else:
                status = exc.status.name if isinstance(exc, HsmlbError) else "INTERNAL"
                self.stats.candidate_error(name, side, status, now - sent)
            return
        candidate, candidate_s = future.result() if remote else (future.result(), now - sent)
        try:
            outcome, field, p_len, c_len = compare(op, primary_result, candidate)
        except Exception:  # a comparator bug must never reach the request path; the type only (no data)
            log.exception("shadow comparison of %s failed", name)
            return
        self.stats.outcome(name, side, outcome, now, primary_s, candidate_s)
        if outcome == DISCREPANCY:
            self._note(op, side, served_by, target, outcome, field, p_len, c_len)

    def _note(self, op: Operation, side: str, served_by: Member, target: Member, outcome: str, field: str,
              p_len: int, c_len: int) -> None:
        alias = op.key_alias or ""
        p_key, c_key = served_by.pool.backend.keys.get(alias), target.pool.backend.keys.get(alias)
        record = Discrepancy(wall_time(), op.kind.value, side, alias, served_by.name, target.name,
                             p_key.kcv if p_key else "", c_key.kcv if c_key else "", outcome, field, p_len, c_len)
        self.stats.record(record)
        log.warning("shadow %s: %s on %s (%s vs %s), field %s (%d vs %d bytes)", outcome, record.op, alias,
                    served_by.name, target.name, field, p_len, c_len)
