"""Routing: which nodes may serve an operation (pools and priority routes, eligibility), which one does
(balancer), retries, and the operator's route changes (weights, promotion, the switch)."""

from hsmlb.router.balancer import Balancer, KeyAffinity, LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.retry import RetryBudget
from hsmlb.router.router import Router
from hsmlb.router.routes import Route, RouteError, RouteTable

__all__ = ["Balancer", "Cluster", "KeyAffinity", "LeastOutstanding", "Member", "NodeBreaker", "RetryBudget", "Route",
           "RouteError", "RouteTable", "Router"]
