"""The command line's TLS: `--ca/--cert/--key` (or HSMLB_CA, HSMLB_CERT, HSMLB_KEY) for every command that
calls the daemon, and `hsmlb health`, the health check that containers and service managers run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

from hsmlb.auth.tls import channel_credentials

ENV = {"ca": "HSMLB_CA", "cert": "HSMLB_CERT", "key": "HSMLB_KEY"}


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS (when the daemon's config has tls:)")
    group.add_argument("--ca", type=Path, default=os.environ.get(ENV["ca"]) or None,
                       help=f"CA certificate that signed the daemon's certificate (env {ENV['ca']})")
    group.add_argument("--cert", type=Path, default=os.environ.get(ENV["cert"]) or None,
                       help=f"client certificate, for mTLS (env {ENV['cert']})")
    group.add_argument("--key", type=Path, default=os.environ.get(ENV["key"]) or None,
                       help=f"client private key, for mTLS (env {ENV['key']}); a file, never the key itself")


def _config_says_plaintext(args: argparse.Namespace) -> bool:
    """Without --address, the daemon is found from a config: if that config has no tls:, TLS settings
    from the environment (a container's defaults) do not apply to it."""
    if getattr(args, "address", None):
        return False
    from hsmlb.cli import DEFAULT_STATE_DIR
    from hsmlb.config import ConfigError, load_config

    path = getattr(args, "config", None) or DEFAULT_STATE_DIR / "hsmlb.yaml"
    try:
        return load_config(path).tls is None
    except ConfigError:
        return False


def client_channel(address: str, args: argparse.Namespace) -> grpc.Channel:
    """A TLS channel when --ca (or a client certificate) is given, else plaintext."""
    options = [("grpc.enable_http_proxy", 0)]
    ca, cert, key = getattr(args, "ca", None), getattr(args, "cert", None), getattr(args, "key", None)
    if (ca or cert or key) and not _config_says_plaintext(args):
        return grpc.secure_channel(address, channel_credentials(ca, cert, key), options=options)
    return grpc.insecure_channel(address, options=options)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 only when the daemon answers SERVING (grpc.health.v1, service "")."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from hsmlb.cli import _address

    if not args.address and not args.config and os.environ.get("HSMLB_CONFIG"):
        args.config = Path(os.environ["HSMLB_CONFIG"])
    address = _address(args)
    try:
        with client_channel(address, args) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"hsmlb: daemon at {address}: {exc.code().name}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    health = sub.add_parser("health", help="health check: exit 0 when the daemon is SERVING (TLS when configured)")
    target = health.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, help="find the daemon from its config (or env HSMLB_CONFIG)")
    target.add_argument("--address", help="HOST:PORT of the daemon")
    health.add_argument("--timeout", type=float, default=3.0)
    add_tls_args(health)
    health.set_defaults(func=cmd_health)
