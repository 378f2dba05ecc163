"""The route table: which pools serve an operation now, in which priority, and how much goes to a candidate.

Policy only (no I/O): the config's routes plus the runtime changes an operator made (a candidate
weight, a promotion, a switch), which route_state.py persists. The router asks `route(kind)` once
per operation; without routes in the config it gets None and every node is one pool, as before.

Priority is Envoy's: a failover pool is used only when no routable holder is left in the pools before
it. A weighted share of requests puts the candidate pool first; its primary stays next, so a request
the candidate fails is retried on the primary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hsmlb.router.routes_config import ANY_OP, RouteConfig


@dataclass(frozen=True, slots=True)
class Route:
    """An operation's effective route now. `ranks`: pool -> priority level (0 first)."""

    op: str
    primary: str
    failover: tuple[str, ...] = ()
    candidate: str | None = None
    candidate_percent: float = 0.0
    shadow_percent: float = 0.0
    noise_percent: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict, compare=False)
    weighted_ranks: dict[str, int] = field(default_factory=dict, compare=False)

    @classmethod
    def make(cls, op: str, primary: str, failover: tuple[str, ...] | list[str] = (), candidate: str | None = None,
             candidate_percent: float = 0.0, shadow_percent: float = 0.0, noise_percent: float = 0.0) -> Route:
        order = [primary, *[p for p in failover if p != primary]]
        weighted = [candidate, *[p for p in order if p != candidate]] if candidate else order
        return cls(op, primary, tuple(order[1:]), candidate, candidate_percent if candidate else 0.0,
                   shadow_percent if candidate else 0.0, noise_percent,
                   {p: i for i, p in enumerate(order)}, {p: i for i, p in enumerate(weighted)})  # type: ignore[misc]

    @classmethod
    def from_config(cls, rc: RouteConfig) -> Route:
        return cls.make(rc.op, rc.primary, rc.failover, rc.candidate, rc.candidate_percent, rc.shadow_percent,
                        rc.noise_percent)

    def with_weight(self, percent: float) -> Route:
        return Route.make(self.op, self.primary, self.failover, self.candidate, percent, self.shadow_percent,
                          self.noise_percent)

    def promoted(self) -> Route:
        """The candidate becomes primary; the old primary becomes the candidate (shadowed the other way)
        and the first failover pool. The weight starts again from 0."""
        if not self.candidate:
            return self
        old, new = self.primary, self.candidate
        failover = [old if p == new else p for p in self.failover]
        if old not in failover:
            failover.insert(0, old)
        return Route.make(self.op, new, failover, old, 0.0, self.shadow_percent, self.noise_percent)

    def switched(self, pool: str, pools: list[str]) -> Route:
        """Everything to `pool`; the other pools in their order after it; the old primary shadowed."""
        if pool == self.primary:
            return self
        order = [self.primary, *self.failover, *([self.candidate] if self.candidate else []), *pools]
        failover = list(dict.fromkeys(p for p in order if p != pool))
        candidate = self.primary if self.shadow_percent else None
        return Route.make(self.op, pool, failover, candidate, 0.0, self.shadow_percent, self.noise_percent)

    def describe(self) -> dict[str, Any]:
        return {"op": self.op, "primary": self.primary, "failover": list(self.failover),
                "candidate": self.candidate or "", "candidate_percent": self.candidate_percent,
                "shadow_percent": self.shadow_percent, "noise_percent": self.noise_percent}


class RouteError(ValueError):
    """An operator's route change that cannot apply (unknown op or pool, no candidate)."""


class RouteTable:
    """Config routes + runtime overrides -> the effective route of every operation."""

    def __init__(self, configs: list[RouteConfig], pools: list[str], state: dict[str, Any] | None = None) -> None:
        self.base = {rc.op: Route.from_config(rc) for rc in configs}
        self.pools = list(dict.fromkeys(pools))
        self.weights: dict[str, float] = {}  # op -> candidate_percent set at runtime
        self.promoted: dict[str, bool] = {}  # op -> roles swapped (an odd number of promotions)
        self.switch_to: str | None = None
        self._effective: dict[str, Route] = {}
        if state:
            self.load_state(state)
        self.rebuild()

    def __bool__(self) -> bool:
        return bool(self._effective)

    def route(self, op: str) -> Route | None:
        effective = self._effective
        return effective.get(op) or effective.get(ANY_OP)

    def routes(self) -> list[Route]:
        return [self._effective[k] for k in sorted(self._effective, key=lambda k: (k != ANY_OP, k))]

    def rebuild(self) -> None:
        effective: dict[str, Route] = {}
        base = dict(self.base)
        for op in {*self.weights, *self.promoted}:
            if op not in base:
                parent = base.get(ANY_OP)
                if parent is not None:
                    base[op] = replace(parent, op=op)
        for op, route in base.items():
            if self.promoted.get(op):
                route = route.promoted()
            if op in self.weights:
                route = route.with_weight(self.weights[op])
            effective[op] = route
        if self.switch_to is not None:
            if not effective:
                effective[ANY_OP] = Route.make(ANY_OP, self.switch_to, [p for p in self.pools if p != self.switch_to])
            else:
                effective = {op: r.switched(self.switch_to, self.pools) for op, r in effective.items()}
        self._effective = effective

    # -- operator changes (validated here, persisted by the caller) ------------------------------
    def _known(self, op: str) -> Route:
        route = self.route(op)
        if route is None:
            raise RouteError(f"op: no route serves {op} (the config has no routes)")
        return route

    def set_weight(self, op: str, percent: float) -> Route:
        if not 0 <= percent <= 100:
            raise RouteError("candidate_percent: must be between 0 and 100")
        if not self._known(op).candidate:
            raise RouteError(f"op: the route of {op} has no candidate pool")
        self.weights[op] = percent
        self.rebuild()
        return self._known(op)

    def promote(self, op: str) -> Route:
        if self.switch_to is not None:
            raise RouteError("op: routes are switched; roll the switch back before promoting")
        if not self._known(op).candidate:
            raise RouteError(f"op: the route of {op} has no candidate pool to promote")
        self.promoted[op] = not self.promoted.get(op, False)
        self.weights.pop(op, None)
        self.rebuild()
        return self._known(op)

    def switch(self, pool: str) -> None:
        if pool not in self.pools:
            raise RouteError(f"to_pool: no pool named {pool} (pools: {', '.join(self.pools)})")
        self.switch_to = pool
        self.rebuild()

    def rollback(self) -> str | None:
        """Undo the switch; returns the pool it had moved to (None: nothing to undo)."""
        undone, self.switch_to = self.switch_to, None
        self.rebuild()
        return undone

    # -- persistence (the file itself: route_state.py) ------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"version": 1, "weights": dict(self.weights),
                "promoted": sorted(op for op, on in self.promoted.items() if on), "switch_to": self.switch_to}

    def load_state(self, state: dict[str, Any]) -> None:
        weights = state.get("weights") or {}
        self.weights = {str(op): min(100.0, max(0.0, float(w))) for op, w in weights.items()}
        self.promoted = {str(op): True for op in state.get("promoted") or ()}
        switch_to = state.get("switch_to")
        self.switch_to = switch_to if switch_to in self.pools else None
