"""Per-node warm resources: session slots and a bounded wait queue."""

from hsmlb.pool.node_pool import NodePool

__all__ = ["NodePool"]
