"""Operator changes to the routes (weights, promotion, the switch), their gates, the automatic weight
drop, and persistence: one place that every change goes through, whoever asks (Admin RPC or the watch).

Gate: raising a route's candidate weight above 0 is refused while the candidate's shadow shows any
discrepancy (or key drift) over the window, or fewer samples than the minimum (with little traffic a
rate says nothing: Argo/Flagger's NaN trap), unless forced with a reason, which is logged with who asked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hsmlb.clock import Clock
from hsmlb.router.autodrop import CandidateWatch
from hsmlb.router.route_state import read_state, write_state
from hsmlb.router.routes import Route, RouteError, RouteTable
from hsmlb.router.routes_config import ANY_OP, OP_NAMES, RouteConfig, ShadowConfig

if TYPE_CHECKING:
    from hsmlb.shadow.stats import ShadowStats

log = logging.getLogger("hsmlb.routes")


class GateRefused(RouteError):
    """A weight the gate refuses (FAILED_PRECONDITION): the message says which condition failed."""


class RouteControl:
    def __init__(self, routes: list[RouteConfig], pools: list[str], config: ShadowConfig, clock: Clock,
                 stats: ShadowStats | None = None) -> None:
        self.config = config
        self.clock = clock
        self.stats = stats
        self.state_file: Path | None = config.state_file
        state = read_state(self.state_file)
        self.table = RouteTable(routes, pools, state)
        if state:
            log.warning("route state from %s: %s", self.state_file, self.table.state())
        self.watch = CandidateWatch(config.auto_drop_error_rate, config.auto_drop_min_requests,
                                    config.auto_drop_window_s, self._auto_drop)

    def _save(self) -> None:
        write_state(self.state_file, self.table.state())

    def _ops_of(self, route_op: str) -> list[str] | None:
        """The ops whose shadow samples count for a route: itself, or (for *) every op without its own."""
        if route_op != ANY_OP:
            return [route_op]
        own = {r.op for r in self.table.routes()}
        return [op for op in OP_NAMES if op not in own]

    def gate(self, route_op: str) -> tuple[int, int]:
        if self.stats is None:
            return 0, 0
        return self.stats.gate(self._ops_of(route_op), self.clock(), self.config.gate_window_s)

    def set_weight(self, op: str, percent: float, who: str, force: bool = False, reason: str = "") -> Route:
        _check_op(op)
        if percent > 0:
            samples, bad = self.gate(op)
            minimum = self.config.gate_min_samples
            problem = (f"{bad} discrepancies in the last {self.config.gate_window_s:g}s" if bad else
                       f"{samples} shadow samples in the last {self.config.gate_window_s:g}s, fewer than "
                       f"{minimum}" if samples < minimum else "")
            if problem and not force:
                raise GateRefused(f"candidate_percent: refused for {op}: {problem}; force it with a reason")
            if problem:
                if not reason.strip():
                    raise RouteError("reason: a forced weight needs a reason")
                log.warning("route %s: gate forced by %s (%s) despite %s", op, who, reason, problem)
        route = self.table.set_weight(op, percent)
        self.watch.reset(route.op)
        self._save()
        log.warning("route %s: candidate %s weight %g%%, requested by %s", op, route.candidate, percent, who)
        return route

    def promote(self, op: str, who: str) -> Route:
        _check_op(op)
        route = self.table.promote(op)
        self._save()
        log.warning("route %s promoted: primary %s, candidate %s, requested by %s", op, route.primary,
                    route.candidate, who)
        return route

    def switch(self, pool: str, who: str) -> None:
        self.table.switch(pool)
        self._save()
        log.warning("routes switched to pool %s, requested by %s", pool, who)

    def rollback(self, who: str) -> str | None:
        undone = self.table.rollback()
        self._save()
        log.warning("route switch %s rolled back, requested by %s", undone or "(none)", who)
        return undone

    def _auto_drop(self, route_op: str, errors: int, total: int) -> bool:
        route = self.table.route(route_op)
        if route is None or not route.candidate_percent:
            return False
        self.table.set_weight(route.op, 0.0)
        self._save()
        log.error("route %s: candidate %s failed %d of %d weighted requests; weight dropped to 0 automatically "
                  "(they were retried on %s)", route_op, route.candidate, errors, total, route.primary)
        return True


def _check_op(op: str) -> None:
    if op != ANY_OP and op not in OP_NAMES:
        raise RouteError(f"op: must be * or one of {', '.join(OP_NAMES)}")
