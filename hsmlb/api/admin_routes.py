"""The Admin service's route and shadow RPCs: list routes, weight a candidate (gated), promote, switch,
roll back, and the shadow report. A mixin of AdminServicer, so every action goes through its seam
(`_open` once per RPC, `_audit` per action) like the drills do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from hsmlb.api.filters import ANONYMOUS, Call
from hsmlb.errors import redact
from hsmlb.router import Router
from hsmlb.router.control import GateRefused, RouteControl
from hsmlb.router.routes import RouteError
from hsmlb.v1 import hsmlb_pb2 as pb


def _printable(text: str, limit: int = 200) -> str:
    """One line, printable, redacted: a newline could forge a log or audit line; a PAN must not pass."""
    return redact("".join(c if c.isprintable() else "?" for c in text.strip()[:limit]))


class RouteAdmin:
    router: Router

    if TYPE_CHECKING:  # AdminServicer's seam
        async def _open(self, context: Any, method: str) -> Call | None: ...
        def _audit(self, call: Call | None, action: str, target: str, detail: str = "") -> None: ...

    def _who(self, call: Call | None, requested_by: str) -> str:
        """The authenticated identity where there is one, else what the request says (and the caller knows)."""
        if call is not None and call.identity != ANONYMOUS:
            return call.identity
        return _printable(requested_by, 128) or "unknown"

    async def _control(self, context: Any) -> RouteControl:
        control = self.router.control
        if control is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this daemon has no route control")
        assert control is not None
        return control

    def _table(self, control: RouteControl) -> pb.RouteTableStatus:
        routes = []
        for route in control.table.routes():
            samples, bad = control.gate(route.op)
            routes.append(pb.RouteStatus(**route.describe(), gate_samples=samples, gate_discrepancies=bad))
        return pb.RouteTableStatus(routes=routes, switched_to=control.table.switch_to or "",
                                   pools=control.table.pools, state_file=str(control.state_file or ""),
                                   auto_drops=control.watch.drops)

    async def _change(self, context: Any, call: Call | None, action: str, target: str, detail: str,
                      change: Any) -> pb.RouteTableStatus:
        control = await self._control(context)
        try:
            change(control)
        except GateRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except RouteError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._audit(call, action, target, detail)
        return self._table(control)

    async def ListRoutes(self, request: pb.ListRoutesRequest, context: Any) -> pb.RouteTableStatus:
        await self._open(context, "ListRoutes")
        return self._table(await self._control(context))

    async def SetRouteWeight(self, request: pb.SetRouteWeightRequest, context: Any) -> pb.RouteTableStatus:
        call = await self._open(context, "SetRouteWeight")
        who, reason = self._who(call, request.requested_by), _printable(request.reason)
        detail = f"candidate_percent={request.candidate_percent:g}" + (f" forced: {reason}" if request.force else "")
        return await self._change(context, call, "set_route_weight", request.op, detail,
                                  lambda c: c.set_weight(request.op, request.candidate_percent, who,
                                                         request.force, reason))

    async def PromoteRoute(self, request: pb.PromoteRouteRequest, context: Any) -> pb.RouteTableStatus:
        call = await self._open(context, "PromoteRoute")
        who = self._who(call, request.requested_by)
        return await self._change(context, call, "promote_route", request.op, _printable(request.reason),
                                  lambda c: c.promote(request.op, who))

    async def SwitchRoutes(self, request: pb.SwitchRoutesRequest, context: Any) -> pb.RouteTableStatus:
        call = await self._open(context, "SwitchRoutes")
        who = self._who(call, request.requested_by)
        return await self._change(context, call, "switch_routes", request.to_pool, _printable(request.reason),
                                  lambda c: c.switch(request.to_pool, who))

    async def RollbackRoutes(self, request: pb.RollbackRoutesRequest, context: Any) -> pb.RouteTableStatus:
        call = await self._open(context, "RollbackRoutes")
        who = self._who(call, request.requested_by)
        return await self._change(context, call, "rollback_routes", "*", _printable(request.reason),
                                  lambda c: c.rollback(who))

    async def GetShadowReport(self, request: pb.GetShadowReportRequest, context: Any) -> pb.ShadowReport:
        await self._open(context, "GetShadowReport")
        shadow = self.router.shadow
        if shadow is None:
            return pb.ShadowReport()
        records = [pb.DiscrepancyRecord(at_unix_s=d.at, op=d.op, side=d.side, key_alias=d.key_alias,
                                        primary_node=d.primary_node, candidate_node=d.candidate_node,
                                        primary_kcv=d.primary_kcv, candidate_kcv=d.candidate_kcv, outcome=d.outcome,
                                        field=d.field, primary_length=d.primary_length,
                                        candidate_length=d.candidate_length)
                   for d in shadow.stats.discrepancy_records()]
        return pb.ShadowReport(ops=[pb.ShadowOpReport(**r) for r in shadow.stats.report()], discrepancies=records,
                               in_flight=shadow.in_flight, max_in_flight=shadow.max_in_flight,
                               **_budget(shadow.budget.stats()))


def _budget(stats: dict[str, float]) -> dict[str, float]:
    return {"budget_rate_per_s": stats["rate_per_s"], "budget_max_per_s": stats["max_per_s"],
            "budget_cuts": int(stats["cuts"]), "budget_lag_ms": stats["lag_ms"]}
