"""Operators' views from the command line: `hsmlb status` and the wide node table of `hsmlb nodes --wide`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _skipped(node: Any) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(node.skipped_ops.items())) or "-"


def print_wide(nodes: Sequence[Any]) -> None:
    """Everything ListNodes says that matters to an operator, one line per node."""
    header = ("NODE", "KIND", "STATE", "OUTSTANDING", "IN USE", "OK", "ERRORS", "RETRIES", "THROTTLED", "EJECTIONS",
              "BREAKER", "WEIGHT", "KEYS", "SKIPPED", "CAPABILITIES")
    rows = [(n.name, n.kind, n.state, f"{n.outstanding:g}", f"{n.sessions_in_use}/{n.pool_size}", str(n.ops_ok),
             str(n.ops_failed), str(n.retries_from), str(n.throttled), str(n.ejections), n.breaker, f"{n.weight:.2f}",
             str(len(n.keys)), _skipped(n), ",".join(n.capabilities) or "-") for n in nodes]
    _table(header, rows)


def cmd_status(args: argparse.Namespace) -> int:
    from hsmlb.cli import _admin_call
    from hsmlb.v1 import hsmlb_pb2 as pb

    router = _admin_call(args, "GetRouterStatus", pb.GetRouterStatusRequest())
    listed = _admin_call(args, "ListNodes", pb.ListNodesRequest()) if router is not None else None
    if router is None or listed is None:
        return 1
    nodes = list(listed.nodes)  # type: ignore[attr-defined]
    up = sum(n.backend_state == "up" for n in nodes)
    healthy = sum(n.state.startswith("healthy") for n in nodes)
    drilled = [f"{n.name} ({n.operator})" for n in nodes if n.operator != "active"]
    conflicts = sorted({a for n in nodes for a in n.kcv_conflicts})
    aliases = {k.alias for n in nodes for k in n.keys}
    lines = [
        ("balancer", router.balancer),  # type: ignore[attr-defined]
        ("nodes", f"{len(nodes)} configured, {up} up, {healthy} healthy"),
        ("drills", ", ".join(drilled) or "none"),
        ("operations", f"{sum(n.ops_ok for n in nodes)} ok, {sum(n.ops_failed for n in nodes)} failed by node faults"),
        ("retries", f"{sum(n.retries_from for n in nodes)} total, {router.retries_in_window} in the budget's window, "  # type: ignore[attr-defined]
                    f"{router.retries_refused} refused by the budget"),  # type: ignore[attr-defined]
        ("ejections", str(sum(n.ejections for n in nodes))),
        ("throttled", str(sum(n.throttled for n in nodes))),
        ("panic routes", str(sum(n.panic_routes for n in nodes))),
        ("skipped ops", str(sum(sum(n.skipped_ops.values()) for n in nodes))),
        ("outstanding", f"{sum(n.outstanding for n in nodes):g}"),
        ("keys", f"{len(aliases)} aliases" + (f"; KCV conflicts: {', '.join(conflicts)}" if conflicts else "")),
    ]
    width = max(len(k) for k, _ in lines)
    for key, val in lines:
        print(f"{key:<{width}}  {val}")
    return 0


def add_parser(subparsers: Any) -> None:
    from hsmlb.cli import _target

    status = subparsers.add_parser("status", help="router status and totals from a running daemon")
    _target(status)
    status.set_defaults(func=cmd_status)
