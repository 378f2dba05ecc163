"""Routing: which nodes may serve an operation (eligibility), which one does (balancer), and retries."""

from hsmlb.router.balancer import Balancer, KeyAffinity, LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.retry import RetryBudget
from hsmlb.router.router import Router

__all__ = ["Balancer", "Cluster", "KeyAffinity", "LeastOutstanding", "Member", "NodeBreaker", "RetryBudget", "Router"]
