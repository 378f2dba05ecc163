"""`hsmlb shadow status|report` and `hsmlb route list|set|promote|switch|rollback`: the Admin route and
shadow RPCs from the command line. Every change names who asked (user@host) and may give a reason."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from typing import Any


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    from hsmlb.cli import _admin_call  # the CLI's daemon discovery (--config / --address)

    return _admin_call(args, method, request)


def _print_routes(table: Any) -> None:
    if not table.routes:
        print("no routes: every node serves as one pool")
    for r in table.routes:
        failover = ",".join(r.failover) or "-"
        candidate = f"candidate {r.candidate} weight {r.candidate_percent:g}% shadow {r.shadow_percent:g}%" \
            if r.candidate else "no candidate"
        noise = f" noise {r.noise_percent:g}%" if r.noise_percent else ""
        print(f"{r.op:<26} primary {r.primary:<6} failover {failover:<10} {candidate}{noise}"
              f"  (gate: {r.gate_samples} samples, {r.gate_discrepancies} discrepancies)")
    if table.switched_to:
        print(f"! every route switched to pool {table.switched_to} (hsmlb route rollback undoes it)")
    if table.auto_drops:
        print(f"! {table.auto_drops} candidate weights dropped to 0 automatically")
    print(f"pools: {', '.join(table.pools)}; runtime changes persist in {table.state_file or '(nowhere)'}")


def _report_rows(report: Any) -> list[dict[str, Any]]:
    """One plain dict per operation and side, every field present (maps as objects)."""
    rows = []
    for op in report.ops:
        row: dict[str, Any] = {}
        for field in op.DESCRIPTOR.fields:
            value = getattr(op, field.name)
            row[field.name] = dict(value) if field.message_type is not None else value
        rows.append(row)
    return rows


def cmd_shadow(args: argparse.Namespace) -> int:
    from hsmlb.v1 import hsmlb_pb2 as pb

    report = _call(args, "GetShadowReport", pb.GetShadowReportRequest())
    if report is None:
        return 1
    rows = _report_rows(report)
    if args.shadow_command == "report" and args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.shadow_command == "status":
        table = _call(args, "ListRoutes", pb.ListRoutesRequest())
        if table is None:
            return 1
        _print_routes(table)
        print(f"shadow calls in flight: {report.in_flight}/{report.max_in_flight}; budget "
              f"{report.budget_rate_per_s:,.0f}/{report.budget_max_per_s:,.0f} calls/s (cut {report.budget_cuts} "
              f"times for event-loop lag, last lag {report.budget_lag_ms:.1f} ms)")
    header = ("OP", "SIDE", "SAMPLES", "MATCH", "DISCREP", "DRIFT", "CAND ERR", "N/C", "SKIPPED", "P99 PRIM",
              "P99 CAND")
    table_rows = [(r["op"], r["side"], str(r["samples"]), str(r["matches"]), str(r["discrepancies"]),
                   str(r["key_drift"]), str(r["candidate_errors"]), str(r["not_comparable"]),
                   ",".join(f"{k}={v}" for k, v in sorted(r["skipped"].items())) or "-",
                   f"{r['primary_p99_ms']:.2f}ms", f"{r['candidate_p99_ms']:.2f}ms") for r in rows]
    widths = [max(len(row[i]) for row in (header, *table_rows)) for i in range(len(header))]
    for row in (header, *table_rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.shadow_command == "report":
        for d in report.discrepancies:
            print(f"  ! {d.outcome} {d.op} {d.key_alias}: {d.primary_node} vs {d.candidate_node}, field {d.field} "
                  f"({d.primary_length} vs {d.candidate_length} bytes), KCV {d.primary_kcv or '-'} vs "
                  f"{d.candidate_kcv or '-'}")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from hsmlb.v1 import hsmlb_pb2 as pb

    who, reason = _who(), args.reason or ""
    command = args.route_command
    if command == "list":
        reply = _call(args, "ListRoutes", pb.ListRoutesRequest())
    elif command == "set":
        reply = _call(args, "SetRouteWeight", pb.SetRouteWeightRequest(
            op=args.op, candidate_percent=args.candidate_percent, force=args.force, reason=reason, requested_by=who))
    elif command == "promote":
        reply = _call(args, "PromoteRoute", pb.PromoteRouteRequest(op=args.op, requested_by=who, reason=reason))
    elif command == "switch":
        reply = _call(args, "SwitchRoutes", pb.SwitchRoutesRequest(to_pool=args.to, requested_by=who, reason=reason))
    else:
        reply = _call(args, "RollbackRoutes", pb.RollbackRoutesRequest(requested_by=who, reason=reason))
    if reply is None:
        return 1
    _print_routes(reply)
    return 0


def add_parser(sub: Any) -> None:
    from hsmlb.cli import _target

    shadow = sub.add_parser("shadow", help="shadowing to a candidate pool: status and the comparison report")
    shadow_sub = shadow.add_subparsers(dest="shadow_command", required=True)
    status = shadow_sub.add_parser("status", help="routes, shadow calls in flight and outcomes per operation")
    report = shadow_sub.add_parser("report", help="outcomes, latencies and discrepancy records per operation")
    report.add_argument("--json", action="store_true", help="one JSON object per operation")
    for parser in (status, report):
        _target(parser)
        parser.set_defaults(func=cmd_shadow)

    route = sub.add_parser("route", help="routes: candidate weight, promotion, the switch and its rollback")
    route_sub = route.add_subparsers(dest="route_command", required=True)
    parsers = [route_sub.add_parser("list", help="the effective routes")]
    weight = route_sub.add_parser("set", help="the share of OP answered by its candidate pool (gated)")
    weight.add_argument("op", help="an operation (encrypt, translate_pin, ...) or *")
    weight.add_argument("--candidate-percent", type=float, required=True)
    weight.add_argument("--force", action="store_true", help="past the gate (discrepancies, too few samples)")
    promote = route_sub.add_parser("promote", help="the candidate becomes primary, the primary the shadowed candidate")
    promote.add_argument("op")
    switch = route_sub.add_parser("switch", help="every route to one pool at once (the incident move)")
    switch.add_argument("--to", required=True, help="the pool")
    parsers += [weight, promote, switch, route_sub.add_parser("rollback", help="undo the switch")]
    for parser in parsers:
        _target(parser)
        parser.add_argument("--reason", help="why (logged with who asked)")
        parser.set_defaults(func=cmd_route)


def describe_config_routes(config: Any) -> list[str]:
    """For `hsmlb config check`: the file's routes, then the runtime changes in the state file beside it
    (what a restarted daemon will serve)."""
    from hsmlb.router.route_state import read_state
    from hsmlb.router.routes import RouteTable

    pools = [node.pool for node in config.nodes]
    lines = [f"pools: {', '.join(f'{p} ({pools.count(p)} nodes)' for p in dict.fromkeys(pools))}"]
    file_table = RouteTable(list(config.routes), pools)
    for route in file_table.routes():
        lines.append(f"route (file) {_route_line(route.describe())}")
    if not config.routes:
        lines.append("routes (file): none, every node serves as one pool")
    state_file = config.shadow.state_file
    state = read_state(state_file)
    if state:
        table = RouteTable(list(config.routes), pools, state)
        weights = ", ".join(f"{op}={w:g}%" for op, w in table.weights.items()) or "none"
        lines.append(f"runtime changes in {state_file}: weights {weights}; promoted "
                     f"{', '.join(sorted(table.promoted)) or 'none'}; switched to {table.switch_to or 'none'}")
        lines += [f"route (now)  {_route_line(r.describe())}" for r in table.routes()]
    return lines


def _route_line(r: dict[str, Any]) -> str:
    text = f"{r['op']}: primary {r['primary']}, failover {','.join(r['failover']) or '-'}"
    if r["candidate"]:
        text += (f", candidate {r['candidate']} weight {r['candidate_percent']:g}% shadow "
                 f"{r['shadow_percent']:g}%")
    return text
