"""Wire routes, the shadow and the automatic weight drop into a router (called by server.build_router)."""

from __future__ import annotations

from hsmlb.config import Config
from hsmlb.router.control import RouteControl
from hsmlb.router.router import Router
from hsmlb.shadow.shadower import Shadower


def attach_routes(router: Router, config: Config) -> RouteControl:
    sc = config.shadow
    pools = [node.pool for node in config.nodes]
    shadower = Shadower(router.cluster, router.balancer, router.clock, max_in_flight=sc.max_in_flight,
                        timeout_s=sc.timeout_s, ring_size=sc.discrepancy_records, window_s=sc.gate_window_s)
    control = RouteControl(list(config.routes), pools, sc, router.clock, shadower.stats)
    router.routes = control.table
    router.shadow = shadower
    router.watch = control.watch
    router.control = control
    return control
