"""Routing: which nodes may serve an operation (eligibility), which one does (balancer)."""

from hsmlb.router.balancer import LeastOutstanding
from hsmlb.router.router import Router

__all__ = ["LeastOutstanding", "Router"]
