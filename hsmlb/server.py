"""Assemble the daemon: nodes -> pools -> router -> servicers, then serve until a signal.

Shutdown: the first SIGTERM/SIGINT stops accepting RPCs, lets in-flight ones finish within
shutdown_grace_s, then closes every node (sessions closed, libraries finalized by the workers).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hsmlb.api.admin import AdminServicer
from hsmlb.api.filters import Filter, FilterChain
from hsmlb.api.operations import OperationsServicer
from hsmlb.api.registration import add_service
from hsmlb.audit.filter import start_audit
from hsmlb.auth.filter import AuthFilter
from hsmlb.auth.tls import ReloadingServerCredentials
from hsmlb.backends import Backend, create_backend
from hsmlb.clock import Clock, monotonic
from hsmlb.config import Config
from hsmlb.errors import HsmlbError
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.health.checker import HealthChecker
from hsmlb.ops import CostClass
from hsmlb.pool import NodePool
from hsmlb.router import Balancer, Cluster, KeyAffinity, LeastOutstanding, Member, NodeBreaker, RetryBudget, Router
from hsmlb.router.wiring import attach_routes
from hsmlb.telemetry.service import Telemetry
from hsmlb.v1 import hsmlb_pb2

log = logging.getLogger("hsmlb.server")
_background: set[asyncio.Future[None]] = set()
# The gRPC server's options; bench/echo_server.py runs its baseline with the same ones.
# so_reuseport 0: a second daemon on the same port fails to bind instead of silently sharing it
# (several daemons behind one port measured no better on 2 vCPUs). Tried on the echo baseline,
# no measurable change: grpc.http2.bdp_probe 0, grpc.optimization_target "throughput".
# max_receive_message_length: a BatchRequest of MAX_BATCH_ITEMS items at the largest data size
# (8192 hex digits each) is ~9 MB; a bigger message is refused whole by gRPC (RESOURCE_EXHAUSTED).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
GRPC_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.max_concurrent_streams", 1024),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
SERVICE_NAMES = (
    hsmlb_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
    hsmlb_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


@dataclass
class Daemon:
    config: Config
    server: grpc.aio.Server
    router: Router
    checker: HealthChecker
    health: health.aio.HealthServicer
    port: int
    filters: FilterChain | None = None
    telemetry: Telemetry | None = None

    @property
    def nodes(self) -> list[NodePool]:
        return [m.pool for m in self.router.cluster.members]

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.shutdown_grace_s)
        await self.checker.close()
        if self.telemetry is not None:
            await self.telemetry.stop()
        await asyncio.gather(*(n.backend.close() for n in self.nodes), return_exceptions=True)
        if self.filters is not None:
            await asyncio.to_thread(self.filters.close)  # the audit's last records and stop checkpoint
        log.info("stopped")


def build_router(config: Config, backends: list[Backend], clock: Clock = monotonic) -> Router:
    """Pools, health, breakers and the balancer for each node, as the config says."""
    rc = config.router
    weights = {CostClass.SYMMETRIC: rc.cost_weights.symmetric, CostClass.ECDSA: rc.cost_weights.ecdsa,
               CostClass.RSA: rc.cost_weights.rsa}
    o, hc = rc.outlier, rc.health_check
    policy = HealthPolicy(unhealthy_threshold=hc.unhealthy_threshold, healthy_threshold=hc.healthy_threshold,
                          consecutive_faults=o.consecutive_node_faults, failure_rate=o.failure_rate,
                          failure_rate_min_requests=o.failure_rate_min_requests, window_s=o.window_s,
                          base_ejection_s=o.base_ejection_s, max_ejection_s=o.max_ejection_s,
                          slow_start_s=o.slow_start_s, observe_only=o.observe_only)
    members = [Member(pool=NodePool(b, size=c.pool_size, queue_limit=c.queue_limit, cost_weights=weights),
                      health=NodeHealth(b.name, policy, clock()),
                      breaker=NodeBreaker(b.name, clock, rc.breaker.fail_max, rc.breaker.reset_timeout_s),
                      pool_name=c.pool)
               for b, c in zip(backends, config.nodes, strict=True)]
    balancer: Balancer = KeyAffinity(rc.hash_balance_factor) if rc.balancer == "key_affinity" else LeastOutstanding()
    budget = RetryBudget(rc.retry.budget_ratio, rc.retry.min_retries_per_s, rc.retry.window_s)
    router = Router(Cluster(members), balancer, clock, max_attempts=rc.retry.max_attempts, budget=budget,
                    max_ejected_nodes=o.max_ejected_nodes, backoff_base_s=rc.retry.backoff_base_ms / 1000,
                    backoff_max_s=rc.retry.backoff_max_ms / 1000)
    attach_routes(router, config)
    return router


def build_filters(config: Config, router: Router, telemetry: Telemetry | None = None) -> list[Filter]:
    """The per-operation seam's filters, in their stated order (see api/filters.py):
    authentication and authorization, then rate limits, then audit, then telemetry.
    admit() runs in this order and done() in reverse. Empty: the servicers skip the seam."""
    filters: list[Filter] = []
    if config.tls is not None or config.auth.callers or config.auth.deny:
        filters.append(AuthFilter(config.auth))
    if config.audit is not None:
        filters.append(start_audit(config.audit, f"listen {config.listen}, {len(config.nodes)} nodes"))
    if telemetry is not None:
        filters.extend(telemetry.filters)
    return filters


async def _start_nodes(backends: list[Backend], timeout_s: float) -> None:
    """Start every node, waiting at most `timeout_s`; the daemon then serves from those that are up.

    A node slower than that (a region that never answers, a token that hangs at open) has its start
    cancelled; it counts as down, and its own supervisor keeps trying to bring it up."""
    tasks = [asyncio.ensure_future(b.start()) for b in backends]
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)  # each start cleans up after itself when cancelled
    for backend, task in zip(backends, tasks, strict=True):
        if task in pending or task.cancelled():
            log.error("node %s did not start within %gs; serving without it for now", backend.name, timeout_s)
        elif (exc := task.exception()) is not None:
            log.error("node %s did not start: %s", backend.name,
                      exc.message if isinstance(exc, HsmlbError) else type(exc).__name__)


async def start_daemon(config: Config) -> Daemon:
    backends = [create_backend(node, fault_injection=config.fault_injection) for node in config.nodes]
    router = build_router(config, backends)
    await _start_nodes(backends, config.start_timeout_s)
    health_servicer = health.aio.HealthServicer()

    def on_change(_: object = None) -> None:
        router.cluster.rebuild()
        status = health_pb2.HealthCheckResponse.SERVING if any(b.state == "up" for b in backends) \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            _background.add(task := asyncio.ensure_future(health_servicer.set(name, status)))
            task.add_done_callback(_background.discard)

    for backend in backends:
        backend.on_change.append(on_change)
    hc = config.router.health_check
    checker = HealthChecker(hc.interval_s, hc.jitter_s, hc.timeout_s, router.clock)
    for member in router.cluster.members:
        checker.watch(member.health, member.pool.backend.probe, on_change)

    telemetry = Telemetry(config, router)
    filters = FilterChain(build_filters(config, router, telemetry))
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS,
                             maximum_concurrent_rpcs=config.auth.max_concurrent_rpcs or None)
    add_service("Operations", OperationsServicer(router, filters), server)
    add_service("Admin", AdminServicer(router, fault_injection=config.fault_injection,
                                       balancer_name=config.router.balancer, filters=filters), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_secure_port(config.listen, ReloadingServerCredentials(config.tls).credentials) \
        if config.tls is not None else server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    on_change()
    telemetry.url = await telemetry.start()
    up = sum(b.state == "up" for b in backends)
    log.info("serving on port %d with %d/%d nodes up (balancer %s)", port, up, len(backends), config.router.balancer)
    return Daemon(config, server, router, checker, health_servicer, port, filters, telemetry)


def tune_gc() -> None:
    """Once started: move everything loaded so far (protos, botocore models, config) out of the
    collector's sight and collect the young generation less often. Every operation allocates a few
    short-lived objects (futures, callbacks, messages) that are still alive when a collection runs:
    at the default threshold (700) the collector took ~10% of the event loop under load."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


GC_THRESHOLD = 20_000  # young-generation allocations between collections (default 700)


async def serve(config: Config) -> None:
    daemon = await start_daemon(config)
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if daemon.telemetry is not None and daemon.telemetry.url:
        print(f"hsmlb metrics and status page on {daemon.telemetry.url}", flush=True)
    print(f"hsmlb listening on {config.listen.rsplit(':', 1)[0]}:{daemon.port}", flush=True)
    await stop.wait()
    log.info("signal received: draining (grace %.1fs)", config.shutdown_grace_s)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal forces exit
        loop.remove_signal_handler(sig)
    await daemon.stop()
