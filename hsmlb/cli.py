"""`hsmlb` command line: serve, config check, nodes, dev up."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from hsmlb.config import ConfigError, load_config

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
    _run(serve(config))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    for node in config.nodes:
        node.read_pin()  # the PIN source must resolve too
    print(f"{args.file}: OK ({len(config.nodes)} nodes)")
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from hsmlb.dev.cluster import default_keys_file, dev_up

    path = dev_up(args.state_dir, args.keys or default_keys_file(), listen=args.listen,
                  fault_injection=args.fault_injection)
    print(path, flush=True)
    if args.serve:
        os.execvp(sys.executable, [sys.executable, "-m", "hsmlb", "serve", "--config", str(path)])
    return 0


def _address(args: argparse.Namespace) -> str:
    if args.address:
        return str(args.address)
    config_path = args.config or (DEFAULT_STATE_DIR / "hsmlb.yaml")
    listen = load_config(config_path).listen
    host, port = listen.rsplit(":", 1)
    return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{port}"


def cmd_nodes(args: argparse.Namespace) -> int:
    import grpc

    from hsmlb.v1 import hsmlb_pb2 as pb
    from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

    with grpc.insecure_channel(_address(args)) as channel:
        try:
            reply = pb_grpc.AdminStub(channel).ListNodes(pb.ListNodesRequest(), timeout=5)
        except grpc.RpcError as exc:
            print(f"hsmlb: daemon at {_address(args)}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    header = ("NODE", "KIND", "STATE", "POOL", "IN USE", "QUEUED", "OK", "FAILED", "KEYS")
    rows = [(n.name, n.kind, n.state, str(n.pool_size), str(n.sessions_in_use), str(n.queued),
             str(n.ops_ok), str(n.ops_failed), str(len(n.keys))) for n in reply.nodes]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if args.keys:
        for node in reply.nodes:
            print(f"\n{node.name}:")
            for key in node.keys:
                print(f"  {key.alias:<24} {key.key_type:<15} kcv={key.key_check_value or '-':<6} "
                      f"{','.join(key.usages)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmlb", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("HSMLB_LOG_LEVEL", "INFO"))
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
    target = nodes.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path)
    target.add_argument("--address")
    nodes.add_argument("--keys", action="store_true", help="also list each node's keys")
    nodes.set_defaults(func=cmd_nodes)

    dev = sub.add_parser("dev", help="embedded dev cluster")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="create SoftHSM2 tokens with the test keys; print the config path")
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    up.add_argument("--keys", type=Path)
    up.add_argument("--listen", default="127.0.0.1:50051")
    up.add_argument("--fault-injection", action="store_true", help="enable test-only fault hooks")
    up.add_argument("--serve", action="store_true", help="then run the daemon on it")
    up.set_defaults(func=cmd_dev_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hsmlb: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
