"""Wire routes, the shadow and the automatic weight drop into a router (called by server.build_router)."""

from __future__ import annotations

from hsmlb.clock import Clock
from hsmlb.config import ApcRegionConfig, Config
from hsmlb.router.control import RouteControl
from hsmlb.router.router import Router
from hsmlb.shadow.budget import ShadowBudget
from hsmlb.shadow.executor import ShadowExecutor
from hsmlb.shadow.shadower import Shadower


def attach_routes(router: Router, config: Config) -> RouteControl:
    sc = config.shadow
    pools = [node.pool for node in config.nodes]
    budget = ShadowBudget(router.clock, max_per_s=sc.budget_max_per_s, min_per_s=sc.budget_min_per_s,
                          in_flight_per_candidate=sc.budget_in_flight_per_candidate, adaptive=sc.budget_adaptive,
                          lag_high_s=sc.budget_lag_ms / 1000)
    shadower = Shadower(router.cluster, router.balancer, router.clock, max_in_flight=sc.max_in_flight,
                        timeout_s=sc.timeout_s, ring_size=sc.discrepancy_records, window_s=sc.gate_window_s,
                        budget=budget, executor=_executor(config, router.clock))
    control = RouteControl(list(config.routes), pools, sc, router.clock, shadower.stats)
    router.routes = control.table
    router.shadow = shadower
    router.watch = control.watch
    router.control = control
    return control


def _executor(config: Config, clock: Clock) -> ShadowExecutor | None:
    regions = [node for node in config.nodes if isinstance(node, ApcRegionConfig)]
    sc = config.shadow
    return ShadowExecutor(regions, sc.executor_nice, sc.executor_cpus, clock) if sc.executor and regions else None
