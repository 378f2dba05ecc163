"""Assemble the daemon: nodes -> pools -> router -> servicers, then serve until a signal.

Shutdown: the first SIGTERM/SIGINT stops accepting RPCs, lets in-flight ones finish within
shutdown_grace_s, then closes every node (sessions closed, libraries finalized by the workers).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hsmlb.api.admin import AdminServicer
from hsmlb.api.operations import OperationsServicer
from hsmlb.backends.pkcs11 import Pkcs11Backend
from hsmlb.config import Config
from hsmlb.pool import NodePool
from hsmlb.router import LeastOutstanding, Router
from hsmlb.v1 import hsmlb_pb2, hsmlb_pb2_grpc

log = logging.getLogger("hsmlb.server")
_background: set[asyncio.Future[None]] = set()
SERVICE_NAMES = (
    hsmlb_pb2.DESCRIPTOR.services_by_name["Operations"].full_name,
    hsmlb_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


@dataclass
class Daemon:
    config: Config
    server: grpc.aio.Server
    nodes: list[NodePool]
    router: Router
    health: health.aio.HealthServicer
    port: int

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.shutdown_grace_s)
        await asyncio.gather(*(n.backend.close() for n in self.nodes), return_exceptions=True)
        log.info("stopped")


async def start_daemon(config: Config) -> Daemon:
    backends = [Pkcs11Backend(node, fault_injection=config.fault_injection) for node in config.nodes]
    nodes = [NodePool(b, size=c.pool_size, queue_limit=c.queue_limit) for b, c in zip(backends, config.nodes,
                                                                                        strict=True)]
    results = await asyncio.wait_for(asyncio.gather(*(b.start() for b in backends), return_exceptions=True),
                                     config.start_timeout_s)
    for backend, result in zip(backends, results, strict=True):
        if isinstance(result, BaseException):
            log.error("node %s did not start: %s", backend.name, getattr(result, "message", repr(result)))
    router = Router(nodes, LeastOutstanding(), node_fault_retries=config.router.node_fault_retries)
    health_servicer = health.aio.HealthServicer()

    def on_change(_: object) -> None:
        router.rebuild()
        status = health_pb2.HealthCheckResponse.SERVING if any(b.state == "up" for b in backends) \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            _background.add(task := asyncio.ensure_future(health_servicer.set(name, status)))
            task.add_done_callback(_background.discard)

    for backend in backends:
        backend.on_change.append(on_change)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 1024)])
    hsmlb_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(router), server)
    hsmlb_pb2_grpc.add_AdminServicer_to_server(AdminServicer(nodes, fault_injection=config.fault_injection), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}")
    await server.start()
    on_change(None)
    up = sum(b.state == "up" for b in backends)
    log.info("serving on port %d with %d/%d nodes up", port, up, len(backends))
    return Daemon(config, server, nodes, router, health_servicer, port)


async def serve(config: Config) -> None:
    daemon = await start_daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"hsmlb listening on {config.listen.rsplit(':', 1)[0]}:{daemon.port}", flush=True)
    await stop.wait()
    log.info("signal received: draining (grace %.1fs)", config.shutdown_grace_s)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal forces exit
        loop.remove_signal_handler(sig)
    await daemon.stop()
