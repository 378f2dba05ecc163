"""Eligibility, then choice, then the attempt; a node fault on an idempotent op retries elsewhere."""

from __future__ import annotations

import logging
from typing import Any

from hsmlb.errors import InvalidArgument, KeyNotFound, NodeFault, Unavailable
from hsmlb.ops import OP_TRAITS, KeyInfo, Operation
from hsmlb.pool import NodePool
from hsmlb.router.balancer import LeastOutstanding

log = logging.getLogger("hsmlb.router")


class Router:
    def __init__(self, nodes: list[NodePool], balancer: LeastOutstanding, node_fault_retries: int = 1) -> None:
        self.nodes = nodes
        self.balancer = balancer
        self.node_fault_retries = node_fault_retries
        self._holders: dict[str, list[NodePool]] = {}
        self._any_node: list[NodePool] = []
        self.rebuild()

    def rebuild(self, *_: Any) -> None:
        """Recompute the alias -> up holders table; called when a node's state or inventory changes."""
        holders: dict[str, list[NodePool]] = {}
        for node in self.nodes:
            if node.backend.state != "up":
                continue
            for alias in node.backend.keys:
                holders.setdefault(alias, []).append(node)
        self._holders = holders
        self._any_node = [n for n in self.nodes if n.backend.state == "up"]

    def eligible(self, op: Operation) -> list[NodePool]:
        if op.key_alias is None:
            if not self._any_node:
                raise Unavailable("no node is up")
            return self._any_node
        holders = self._holders.get(op.key_alias)
        if not holders:
            if any(op.key_alias in n.backend.keys for n in self.nodes):
                raise Unavailable(f"every node holding {op.key_alias} is down")
            raise KeyNotFound(f"no node holds a key with alias {op.key_alias}")
        usage = OP_TRAITS[op.kind].usage
        key = holders[0].backend.keys[op.key_alias]
        if usage and usage not in key.usages:
            allowed = ", ".join(sorted(key.usages)) or "none"
            raise InvalidArgument(f"key {op.key_alias} does not allow {op.kind.value} (its usages: {allowed})")
        return holders

    async def execute(self, op: Operation) -> tuple[Any, KeyInfo | None]:
        candidates = self.eligible(op)
        retries = self.node_fault_retries if OP_TRAITS[op.kind].idempotent else 0
        tried: list[NodePool] = []
        while True:
            node = self.balancer.choose(candidates, _outstanding)
            try:
                result = await node.perform(op)
            except NodeFault as fault:
                tried.append(node)
                candidates = [n for n in candidates if n not in tried and n.backend.state == "up"]
                if len(tried) > retries or not candidates:
                    raise
                log.info("retrying %s elsewhere after node fault on %s: %s", op.kind.value, node.name, fault)
                continue
            key = node.backend.keys.get(op.key_alias) if op.key_alias else None
            return result, key


def _outstanding(node: NodePool) -> float:
    return node.outstanding
