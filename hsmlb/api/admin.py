"""The Admin service: node status for operators (drill controls arrive with the routing work)."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from hsmlb.errors import HsmlbError
from hsmlb.pool import NodePool
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

log = logging.getLogger("hsmlb.admin")


FAULTS = ("close_sessions", "logout", "finalize", "delay", "kill_worker")


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, nodes: list[NodePool], fault_injection: bool = False) -> None:
        self.nodes = nodes
        self.fault_injection = fault_injection

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[node_status(n) for n in self.nodes])

    async def InjectFault(self, request: pb.InjectFaultRequest, context: Any) -> pb.InjectFaultResponse:
        if not self.fault_injection:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "fault injection is disabled in this daemon's config")
        node = next((n for n in self.nodes if n.name == request.node), None)
        if node is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node named {request.node!r}")
        if request.fault not in FAULTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"fault: must be one of {', '.join(FAULTS)}")
        log.warning("fault injection: %s on node %s (peer %s)", request.fault, request.node, context.peer())
        try:
            await node.backend.inject_fault(request.fault, request.value)
        except HsmlbError as exc:
            await context.abort(exc.status, exc.message)
        return pb.InjectFaultResponse()


def node_status(node: NodePool) -> pb.NodeStatus:
    backend = node.backend
    keys = [pb.KeyInfo(alias=k.alias, label=k.label, key_type=k.key_type, key_check_value=k.kcv,
                       usages=sorted(k.usages)) for k in sorted(backend.keys.values(), key=lambda k: k.alias)]
    return pb.NodeStatus(name=node.name, kind=backend.kind, state=backend.state, pool_size=node.size,
                         sessions_in_use=node.in_use, queued=node.queued, ops_ok=node.stats.ops_ok,
                         ops_failed=node.stats.ops_failed, keys=keys, detail=node.stats.last_fault)
