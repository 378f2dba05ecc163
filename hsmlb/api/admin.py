"""The Admin service: node status and failover drills for operators; fault injection for tests."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from hsmlb.api.admin_routes import RouteAdmin
from hsmlb.api.filters import ANONYMOUS, Call, FilterChain
from hsmlb.api.status import abort
from hsmlb.errors import HsmlbError, InvalidArgument, redact
from hsmlb.health.state import OperatorState
from hsmlb.router import Member, Router
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

log = logging.getLogger("hsmlb.admin")
FAULTS = ("close_sessions", "logout", "finalize", "delay", "error_rate", "kill_worker")
ACTIONS: dict[int, OperatorState] = {pb.FAIL: "failed", pb.DRAIN: "draining", pb.RESTORE: "active"}


class AdminServicer(RouteAdmin, pb_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, router: Router, fault_injection: bool = False, balancer_name: str = "",
                 filters: FilterChain | None = None) -> None:
        self.router = router
        self.fault_injection = fault_injection
        self.balancer_name = balancer_name
        self.filters = filters if filters else None

    async def _open(self, context: Any, method: str) -> Call | None:
        """The seam's per-RPC step (authorization of the Admin service lives in a filter's open)."""
        if self.filters is None:
            return None
        call = Call.from_context("/hsmlb.v1.Admin/" + method, context)
        try:
            self.filters.open(call)
        except HsmlbError as exc:
            self.filters.admin(call, "refused", method, exc.status, exc.message)  # denials are audited too
            await context.abort(exc.status, exc.message)
        return call

    def _audit(self, call: Call | None, action: str, target: str, detail: str = "") -> None:
        if self.filters is not None and call is not None:
            self.filters.admin(call, action, target, grpc.StatusCode.OK, detail)

    async def _member(self, name: str, context: Any) -> Member:
        member = self.router.cluster.by_name.get(name)
        if member is None:
            known = ", ".join(self.router.cluster.by_name)
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no node named {name!r} (nodes: {known})")
        assert member is not None
        return member

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        await self._open(context, "ListNodes")
        now = self.router.clock()
        return pb.ListNodesResponse(nodes=[node_status(m, now) for m in self.router.cluster.members])

    async def SetNodeState(self, request: pb.SetNodeStateRequest, context: Any) -> pb.SetNodeStateResponse:
        call = await self._open(context, "SetNodeState")
        member = await self._member(request.node, context)
        if request.action not in ACTIONS:
            await abort(context, InvalidArgument("action: must be FAIL, DRAIN or RESTORE"))
        # printable only: a newline in it could forge a line in the log or the audit trail
        who = redact("".join(c if c.isprintable() else "?" for c in request.requested_by.strip()[:128])) or "unknown"
        if call is not None and call.identity != ANONYMOUS:  # authenticated: the certificate says who, not the client
            who = call.identity
        state = ACTIONS[request.action]
        before = member.health.operator
        member.health.set_operator(state, who, self.router.clock())
        log.warning("drill: node %s %s -> %s, requested by %s (peer %s)", member.name, before, state, who,
                    context.peer())
        self._audit(call, "set_node_state", member.name, f"{before} -> {state}")
        return pb.SetNodeStateResponse(node=node_status(member, self.router.clock()))

    async def GetRouterStatus(self, request: pb.GetRouterStatusRequest, context: Any) -> pb.RouterStatus:
        await self._open(context, "GetRouterStatus")
        budget = self.router.budget
        return pb.RouterStatus(balancer=self.balancer_name, retries_in_window=budget.retries_in_window,
                               retries_refused=budget.refused)

    async def InjectFault(self, request: pb.InjectFaultRequest, context: Any) -> pb.InjectFaultResponse:
        call = await self._open(context, "InjectFault")
        if not self.fault_injection:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "fault injection is disabled in this daemon's config")
        member = await self._member(request.node, context)
        if request.fault not in FAULTS:
            await abort(context, InvalidArgument(f"fault: must be one of {', '.join(FAULTS)}"))
        log.warning("fault injection: %s=%s on node %s (peer %s)", request.fault, request.value, request.node,
                    context.peer())
        try:
            await member.pool.backend.inject_fault(request.fault, request.value)
        except HsmlbError as exc:
            await context.abort(exc.status, exc.message)
        self._audit(call, "inject_fault", member.name, request.fault)
        return pb.InjectFaultResponse()


def node_status(member: Member, now: float) -> pb.NodeStatus:
    node, backend, health = member.pool, member.pool.backend, member.health
    keys = [pb.KeyInfo(alias=k.alias, label=k.label, key_type=k.key_type, key_check_value=k.kcv,
                       usages=sorted(k.usages)) for k in sorted(backend.keys.values(), key=lambda k: k.alias)]
    state = health.describe(now) if backend.state == "up" else backend.state
    if backend.state != "up" and health.operator != "active":
        state = f"{backend.state}, {health.describe(now)}"
    ejected_for = max(0.0, (health.ejected_until or now) - now)
    return pb.NodeStatus(
        name=node.name, kind=backend.kind, state=state, pool_size=node.size, sessions_in_use=node.in_use,
        queued=node.queued, ops_ok=node.stats.ops_ok, ops_failed=node.stats.ops_failed, keys=keys,
        detail=health.last_reason or node.stats.last_fault, backend_state=backend.state, operator=health.operator,
        outstanding=node.load, breaker=member.breaker.state, ejections=health.ejections, ejected_for_s=ejected_for,
        panic_routes=member.panic_routes, retries_from=member.retries_from, kcv_conflicts=member.kcv_conflicts,
        weight=health.weight(now), skipped_ops=member.skipped, capabilities=sorted(backend.capabilities),
        throttled=member.throttled)
