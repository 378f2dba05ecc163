"""The Admin service: node status for operators (drill controls arrive with the routing work)."""

from __future__ import annotations

from typing import Any

from hsmlb.pool import NodePool
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, nodes: list[NodePool]) -> None:
        self.nodes = nodes

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=[node_status(n) for n in self.nodes])


def node_status(node: NodePool) -> pb.NodeStatus:
    backend = node.backend
    keys = [pb.KeyInfo(alias=k.alias, label=k.label, key_type=k.key_type, key_check_value=k.kcv,
                       usages=sorted(k.usages)) for k in sorted(backend.keys.values(), key=lambda k: k.alias)]
    return pb.NodeStatus(name=node.name, kind=backend.kind, state=backend.state, pool_size=node.size,
                         sessions_in_use=node.in_use, queued=node.queued, ops_ok=node.stats.ops_ok,
                         ops_failed=node.stats.ops_failed, keys=keys, detail=node.stats.last_fault)
