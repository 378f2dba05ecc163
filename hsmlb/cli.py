"""`hsmlb` command line: serve, config check, nodes, dev up."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from hsmlb.audit.cli import add_parser as add_audit_parser
from hsmlb.auth.cli import add_parser as add_health_parser
from hsmlb.auth.cli import add_tls_args
from hsmlb.call_cli import add_parser as add_call_parser
from hsmlb.config import ConfigError, check_node_sources, load_config
from hsmlb.dev.procs import die_with_parent
from hsmlb.emulator.cli import add_parser as add_apc_emulator_parser
from hsmlb.limits import StartupError, announce
from hsmlb.router.cli import add_parser as add_route_parser
from hsmlb.router.cli import describe_config_routes
from hsmlb.telemetry.cli import add_parser as add_status_parser
from hsmlb.telemetry.logs import TEXT_FORMAT, share_with_children, use_json_logs

DEFAULT_STATE_DIR = Path(".hsmlb/dev")


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


def cmd_serve(args: argparse.Namespace) -> int:
    from hsmlb.server import serve

    config = load_config(args.config)
    log_format = getattr(args, "log_format", None) or config.logging.format  # the flag wins over the file
    if log_format == "json":
        use_json_logs()
    share_with_children(log_format)
    _run(serve(config))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    for index, node in enumerate(config.nodes):
        problem = check_node_sources(node)
        if problem:
            raise ConfigError(f"nodes.{index}.{problem}")
    from hsmlb.auth.check import check as check_security

    security = check_security(config)  # TLS material, the audit key: loaded here, as at start
    print(f"{args.file}: OK ({len(config.nodes)} nodes)")
    print("\n".join(describe_config_routes(config)))
    print("\n".join(security))
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    """Tokens (and, with --serve, two emulated APC regions), then optionally the daemon on them.

    Regions are processes that must outlive this command's config writing, so they come up only
    with --serve, which stops them again when the daemon exits.
    """
    from hsmlb.dev.cluster import default_keys_file, dev_up, one_line_errors
    from hsmlb.dev.regions import region_node_config, start_dev_regions
    from hsmlb.locate import remember

    keys = args.keys or default_keys_file()
    with one_line_errors(args.state_dir):
        regions = start_dev_regions(keys, args.state_dir.resolve(), args.fault_injection) \
            if args.serve and args.regions else []
    try:
        with one_line_errors(args.state_dir):
            path = dev_up(args.state_dir, keys, listen=args.listen, fault_injection=args.fault_injection,
                          pool_size=args.pool_size,
                          regions=[region_node_config(r, args.state_dir.resolve()) for r in regions],
                          shadow=args.shadow)
        pki = None
        if args.tls:
            from hsmlb.auth.devtls import secure_dev_config

            pki = secure_dev_config(path, args.state_dir)
        if args.serve:  # the dev daemon's metrics and status page (it prints the URL)
            _with_metrics(path, args.metrics_listen)
        announce(str(path))
        if pki is not None:
            announce(f"mTLS: CA {pki['ca']}; clients app ({pki['app_cert']}) and operator ({pki['operator_cert']})")
        if args.serve:
            remember(path, args.listen)  # so `hsmlb nodes` finds it from any directory (hsmlb/locate.py)
        for region in regions:
            announce(f"emulated region {region.name} ({region.region}) at {region.endpoint_url}")
        if args.serve:
            return cmd_serve(argparse.Namespace(config=path))
        return 0
    finally:
        for region in regions:
            region.stop()


def _with_metrics(path: Path, listen: str) -> None:
    import yaml

    data = yaml.safe_load(path.read_text())
    data.setdefault("metrics", {"listen": listen})
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _address(args: argparse.Namespace) -> str:
    from hsmlb.locate import find_address

    return find_address(args.address, args.config)


def _admin_call(args: argparse.Namespace, method: str, request: object) -> object | None:
    import grpc

    from hsmlb.auth.cli import client_channel
    from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

    address = _address(args)
    with client_channel(address, args) as channel:
        try:
            return getattr(pb_grpc.AdminStub(channel), method)(request, timeout=5)
        except grpc.RpcError as exc:
            print(f"hsmlb: daemon at {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return None


def _print_table(nodes: list) -> None:
    header = ("NODE", "STATE", "OUTSTANDING", "IN USE", "OK", "ERRORS", "BREAKER", "KEYS")
    rows = [(n.name, n.state, f"{n.outstanding:g}", f"{n.sessions_in_use}/{n.pool_size}", str(n.ops_ok),
             str(n.ops_failed), n.breaker, str(len(n.keys))) for n in nodes]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_nodes(args: argparse.Namespace) -> int:
    from hsmlb.v1 import hsmlb_pb2 as pb

    reply = _admin_call(args, "ListNodes", pb.ListNodesRequest())
    if reply is None:
        return 1
    if args.wide:
        from hsmlb.telemetry.cli import print_wide

        print_wide(list(reply.nodes))  # type: ignore[attr-defined]
    else:
        _print_table(list(reply.nodes))  # type: ignore[attr-defined]
    for node in reply.nodes:  # type: ignore[attr-defined]
        notes = [f"{node.name}: {node.detail}"] if node.detail else []
        if node.kcv_conflicts:
            notes.append(f"{node.name}: KCV differs, excluded for {', '.join(node.kcv_conflicts)}")
        if node.panic_routes:
            notes.append(f"{node.name}: {node.panic_routes} requests served as last holder while unhealthy")
        for note in notes:
            print(f"  ! {note}")
        if args.keys:
            print(f"\n{node.name}:")
            for key in node.keys:
                print(f"  {key.alias:<24} {key.key_type:<15} kcv={key.key_check_value or '-':<6} "
                      f"{','.join(key.usages)}")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    import getpass
    import socket

    from hsmlb.v1 import hsmlb_pb2 as pb

    action = {"fail": pb.FAIL, "drain": pb.DRAIN, "restore": pb.RESTORE}[args.action]
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    reply = _admin_call(args, "SetNodeState", pb.SetNodeStateRequest(node=args.name, action=action,
                                                                       requested_by=who))
    if reply is None:
        return 1
    _print_table([reply.node])  # type: ignore[attr-defined]
    return 0


def _target(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, help="find the daemon from its config (else $HSMLB_CONFIG)")
    target.add_argument("--address", help="HOST:PORT of the daemon (else $HSMLB_ADDRESS, ./.hsmlb/dev/hsmlb.yaml, "
                        "or where `hsmlb dev up --serve` last served)")
    add_tls_args(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmlb", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("HSMLB_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("HSMLB_LOG_FORMAT"),
                        help="json: one JSON object per line, with the trace id where there is one "
                        "(default: the config's logging.format, else text)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--config", required=True, type=Path)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_config_check)

    nodes = sub.add_parser("nodes", help="node table from a running daemon")
    _target(nodes)
    nodes.add_argument("--keys", action="store_true", help="also list each node's keys")
    nodes.add_argument("--wide", action="store_true", help="also retries, throttling, ejections, weight, "
                       "skipped operations and capabilities")
    nodes.set_defaults(func=cmd_nodes)

    node = sub.add_parser("node", help="failover drills: fail, drain or restore a node")
    node.add_argument("action", choices=("fail", "drain", "restore"))
    node.add_argument("name")
    _target(node)
    node.set_defaults(func=cmd_node)

    dev = sub.add_parser("dev", help="embedded dev cluster")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="create SoftHSM2 tokens with the test keys; print the config path")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument("--keys", type=Path)
    up.add_argument("--listen", default="127.0.0.1:50051")
    up.add_argument("--fault-injection", action="store_true", help="enable test-only fault hooks")
    up.add_argument("--pool-size", type=int, default=4, choices=range(1, 257), metavar="N",
                    help="sessions per token node, which is also how many operations a token worker gets at once "
                    "(default 4; 32 measured ~25%% less daemon CPU per batched op: README, Performance)")
    up.add_argument("--tls", action="store_true", help="a dev CA, server and client certificates (app, operator), "
                    "a config that requires them (mTLS), caller policies and the signed audit log")
    up.add_argument("--serve", action="store_true", help="then run the daemon on it (with emulated regions)")
    up.add_argument("--no-regions", dest="regions", action="store_false",
                    help="with --serve: tokens only, no emulated APC regions")
    up.add_argument("--shadow", action="store_true",
                    help="with --serve: shadow every token answer to the regions and compare (hsmlb shadow report)")
    up.add_argument("--metrics-listen", default="127.0.0.1:0",
                    help="with --serve: the metrics and status page listener (default: any free port, printed)")
    up.set_defaults(func=cmd_dev_up)

    add_apc_emulator_parser(sub)
    add_audit_parser(sub)
    add_health_parser(sub)
    add_status_parser(sub)
    add_route_parser(sub)
    add_call_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # a child of a daemon or a test (an emulated region): go when it goes
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=TEXT_FORMAT)
    if args.log_format == "json":
        use_json_logs()
    for chatty in ("botocore", "boto3", "urllib3"):  # at DEBUG they log whole signed requests: credentials
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hsmlb: config error: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"hsmlb: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
