"""Assemble the daemon: nodes -> pools -> router -> servicers, then serve until a signal.

Start-up: the listening address is checked and bound before any node starts (a busy port is one
line, not a cluster started for nothing), and the descriptor limit is raised to the hard limit.

Shutdown: the first SIGTERM/SIGINT stops accepting RPCs, lets in-flight ones finish within
shutdown_grace_s, then closes every node (sessions closed, libraries finalized by the workers).
Every step of it is bounded: a step that overruns is logged and the daemon moves on, so a stop
always ends within the grace plus a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hsmlb.api.admin import AdminServicer
from hsmlb.api.filters import Filter, FilterChain
from hsmlb.api.operations import OperationsServicer
from hsmlb.api.reflection import enable_reflection
from hsmlb.api.registration import add_service
from hsmlb.audit.filter import start_audit
from hsmlb.auth.config import TlsConfig
from hsmlb.auth.filter import AuthFilter
from hsmlb.auth.tls import ReloadingServerCredentials
from hsmlb.backends import Backend, create_backend
from hsmlb.clock import Clock, monotonic
from hsmlb.config import Config
from hsmlb.errors import HsmlbError
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.health.checker import HealthChecker
from hsmlb.limits import MAX_MESSAGE_BYTES as MAX_MESSAGE_BYTES  # re-exported: tests size messages by it
from hsmlb.limits import StartupError, announce, attempt_timeout, check_listen, grpc_server_options, raise_fd_limit
from hsmlb.ops import CostClass
from hsmlb.peer_cap import PeerConnectionCap
from hsmlb.pool import NodePool
from hsmlb.pool.overload import InFlightLimit
from hsmlb.router import Balancer, Cluster, KeyAffinity, LeastOutstanding, Member, NodeBreaker, RetryBudget, Router
from hsmlb.router.wiring import attach_routes
from hsmlb.telemetry.service import Telemetry
from hsmlb.v1 import hsmlb_pb2

log = logging.getLogger("hsmlb.server")
_background: set[asyncio.Future[None]] = set()
STOP_STEP_S = 5.0  # each shutdown step after the grace (health checks, node closes) waits at most this
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
    admin_server: grpc.aio.Server | None = None  # the Admin service on its own address (admin_listen)
    admin_port: int = 0

    @property
    def nodes(self) -> list[NodePool]:
        return [m.pool for m in self.router.cluster.members]

    async def stop(self) -> None:
        """Bounded: grace for the RPCs in flight, then each step at most STOP_STEP_S, logged if it overran."""
        grace = self.config.shutdown_grace_s
        await _bounded("health status", self.health.enter_graceful_shutdown(), 1.0)
        servers = (self.server, *([self.admin_server] if self.admin_server is not None else []))
        await _bounded("the gRPC server", asyncio.gather(*(s.stop(grace) for s in servers)), grace + 1.0)
        await _bounded("health checks", self.checker.close(), STOP_STEP_S)
        if self.router.shadow is not None:
            await _bounded("the shadow", self.router.shadow.close(), STOP_STEP_S)
        if self.telemetry is not None:
            await _bounded("telemetry", self.telemetry.stop(), STOP_STEP_S)
        await _close_nodes([n.backend for n in self.nodes])
        if self.filters is not None:  # the audit's last records and stop checkpoint
            await _bounded("filters", asyncio.to_thread(self.filters.close), STOP_STEP_S)
        log.info("stopped")


async def _bounded(what: str, step: Awaitable[object], timeout_s: float) -> None:
    """Await one shutdown step for at most `timeout_s` (asyncio.timeout: no swallowed cancel), then move on."""
    try:
        async with asyncio.timeout(timeout_s):
            await step
    except TimeoutError:
        log.warning("shutdown: %s did not stop within %gs; going on", what, timeout_s)
    except Exception as exc:  # a failed step must not keep the rest from stopping
        log.warning("shutdown: %s failed: %s", what, type(exc).__name__)


async def _close_nodes(backends: list[Backend]) -> None:
    tasks = [asyncio.ensure_future(b.close()) for b in backends]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=STOP_STEP_S)
    for task in pending:
        task.cancel()
    for backend, task in zip(backends, tasks, strict=True):
        if task in pending:
            log.warning("shutdown: node %s did not close within %gs; going on", backend.name, STOP_STEP_S)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("shutdown: node %s failed to close: %s", backend.name, type(task.exception()).__name__)
    if pending:
        await asyncio.wait(pending, timeout=1.0)


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
    max_wait_s = config.limits.max_queue_wait_ms / 1000 or None
    members = [Member(pool=NodePool(b, size=c.pool_size, queue_limit=c.queue_limit, cost_weights=weights,
                                    max_wait_s=max_wait_s, clock=clock, depth=getattr(b, "pipeline_depth", 1),
                                    attempt_timeout=attempt_timeout(config.limits)),
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
    from hsmlb.auth.check import warnings

    for warning in warnings(config):
        log.warning("security: %s", warning)
    filters: list[Filter] = []
    if config.limits.max_connections_per_peer:  # first: the cheapest refusal, before any identity work
        filters.append(PeerConnectionCap(config.limits.max_connections_per_peer, config.limits.idle_timeout_s))
    if config.tls is not None or config.auth.callers or config.auth.deny:
        filters.append(AuthFilter(config.auth))
    if config.audit is not None:
        filters.append(start_audit(config.audit, f"listen {config.listen}, {len(config.nodes)} nodes"))
    if telemetry is not None:
        if filters and telemetry.metrics is not None:
            from hsmlb.auth.metrics import SecurityCollector

            telemetry.metrics.register(SecurityCollector(filters))
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
    """Check and bind the address, then start the nodes, then serve. Raises StartupError (one line)."""
    check_listen(config.listen)
    fd_limit = raise_fd_limit()
    backends = [create_backend(node, fault_injection=config.fault_injection) for node in config.nodes]
    router = build_router(config, backends)
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

    telemetry = Telemetry(config, router)
    filters = FilterChain(build_filters(config, router, telemetry))
    server = grpc.aio.server(options=grpc_server_options(config.limits, fd_limit),
                             maximum_concurrent_rpcs=config.auth.max_concurrent_rpcs or None)
    limit = InFlightLimit(config.limits.max_unary_in_flight) if config.limits.max_unary_in_flight else None
    add_service("Operations", OperationsServicer(router, filters, limit), server)
    admin = AdminServicer(router, fault_injection=config.fault_injection, balancer_name=config.router.balancer,
                          filters=filters)
    admin_server = _admin_server(config, admin, fd_limit) if config.admin_listen is not None else None
    if admin_server is None:
        add_service("Admin", admin, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)  # v1alpha and v1
    port = _bind(server, config.listen, config.tls)  # bound now, before any node starts; served from start()
    admin_port = _bind(admin_server, config.admin_listen.listen, config.admin_listen.tls or config.tls) \
        if admin_server is not None and config.admin_listen is not None else 0
    shadow = router.shadow  # its executor process (regions' shadow calls) starts beside the nodes, not after
    routes = router.routes.routes() if router.routes is not None else []
    shadow_start = asyncio.ensure_future(shadow.start(any(r.shadow_percent or r.noise_percent for r in routes))) \
        if shadow is not None else None
    try:
        await _start_nodes(backends, config.start_timeout_s)
        if shadow_start is not None:
            await shadow_start
    except BaseException:
        if shadow_start is not None:
            shadow_start.cancel()
            with contextlib.suppress(BaseException):
                await shadow_start
        if shadow is not None:
            await shadow.close()
        await _close_nodes(backends)
        raise
    await server.start()
    if admin_server is not None:
        await admin_server.start()
    hc = config.router.health_check
    checker = HealthChecker(hc.interval_s, hc.jitter_s, hc.timeout_s, router.clock)
    for member in router.cluster.members:
        checker.watch(member.health, member.pool.backend.probe, on_change)
    on_change()
    telemetry.url = await telemetry.start()
    up = sum(b.state == "up" for b in backends)
    log.info("serving on port %d with %d/%d nodes up (balancer %s)", port, up, len(backends), config.router.balancer)
    return Daemon(config, server, router, checker, health_servicer, port, filters, telemetry, admin_server, admin_port)


def _admin_server(config: Config, admin: AdminServicer, fd_limit: int) -> grpc.aio.Server:
    """admin_listen: the Admin service alone on a server of its own (its address checked now, bound later)."""
    assert config.admin_listen is not None
    check_listen(config.admin_listen.listen)
    server = grpc.aio.server(options=(*grpc_server_options(config.limits, fd_limit),
                                      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)))
    add_service("Admin", admin, server)
    enable_reflection((SERVICE_NAMES[1],), server)
    return server


def _bind(server: grpc.aio.Server, listen: str, tls: TlsConfig | None) -> int:
    """Bind `listen` (TLS when configured), or StartupError in one line; the port bound."""
    try:
        port = server.add_secure_port(listen, ReloadingServerCredentials(tls).credentials) if tls is not None \
            else server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {listen}")
    return port


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
        announce(f"hsmlb metrics and status page on {daemon.telemetry.url}")
    if config.admin_listen is not None:
        announce(f"hsmlb admin listening on {config.admin_listen.listen.rsplit(':', 1)[0]}:{daemon.admin_port}")
    announce(f"hsmlb listening on {config.listen.rsplit(':', 1)[0]}:{daemon.port}")
    await stop.wait()
    log.info("signal received: draining (grace %.1fs)", config.shutdown_grace_s)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal forces exit
        loop.remove_signal_handler(sig)
    await daemon.stop()
