"""`hsmlb call METHOD JSON`: one RPC from the command line, request and answer in proto JSON.

Why: a newcomer's first call should need nothing beyond this package (grpcurl is not in Debian).
The request is parsed with google.protobuf.json_format against the method's own request type,
so field names are the proto's (`key_identifier`, `plain_text`...). `hsmlb call` alone lists the methods.
Stream and StreamBatch take a JSON list of requests and print one JSON answer per line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hsmlb.auth.cli import add_tls_args
from hsmlb.config import ConfigError

SERVICES = ("Operations", "Admin")


def add_parser(subparsers: Any) -> None:
    call = subparsers.add_parser("call", help="call one RPC with a JSON request (no argument: list the methods)")
    call.add_argument("method", nargs="?", help="EncryptData, Admin/ListNodes or hsmlb.v1.Operations/EncryptData")
    call.add_argument("request", nargs="?", default="{}", help="the request in proto JSON ('-': read stdin)")
    target = call.add_mutually_exclusive_group()
    target.add_argument("--config", type=Path, help="find the daemon from its config (else $HSMLB_CONFIG)")
    target.add_argument("--address", help="HOST:PORT of the daemon (else $HSMLB_ADDRESS, then as `hsmlb nodes`)")
    call.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    add_tls_args(call)
    call.set_defaults(func=cmd_call)


def _methods() -> dict[str, Any]:
    from hsmlb.v1 import hsmlb_pb2 as pb

    found: dict[str, Any] = {}
    for service_name in SERVICES:
        service = pb.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            for name in (method.name, f"{service_name}/{method.name}", f"{service.full_name}/{method.name}"):
                found.setdefault(name, method)
    return found


def _list() -> int:
    seen = []
    for method in _methods().values():
        if method not in seen:
            seen.append(method)
            shape = "stream" if method.client_streaming else "unary"
            name = f"{method.containing_service.name}/{method.name}"
            print(f"{name:<40} {shape:<6} {method.input_type.full_name}")
    return 0


class BadRequest(Exception):
    """The JSON given is not the method's request."""


def _parse(method: Any, text: str) -> list[Any]:
    from google.protobuf import json_format

    from hsmlb.v1 import hsmlb_pb2 as pb

    request_type = getattr(pb, method.input_type.name)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the request is not JSON: {exc}") from None
    items = data if method.client_streaming and isinstance(data, list) else [data]
    try:
        return [json_format.ParseDict(item, request_type()) for item in items]
    except json_format.ParseError as exc:
        raise BadRequest(f"the request is not a valid {method.input_type.full_name}: {exc}") from None


def _print(message: Any) -> None:
    from google.protobuf import json_format
    from google.rpc import error_details_pb2  # noqa: F401  (registers BadRequest for a Status's details)

    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None))


def _report(address: str, exc: Any) -> int:
    from hsmlb.api.status import DETAILS_KEY, violations_of

    print(f"hsmlb: daemon at {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY:
            for field, rule in violations_of(value):
                print(f"  field {field}: {rule}", file=sys.stderr)
    return 1


def cmd_call(args: argparse.Namespace) -> int:
    import grpc

    from hsmlb.auth.cli import client_channel
    from hsmlb.locate import find_address
    from hsmlb.v1 import hsmlb_pb2 as pb

    if not args.method:
        return _list()
    method = _methods().get(args.method.lstrip("/"))
    if method is None:
        raise ConfigError(f"no method {args.method}; `hsmlb call` lists them")
    try:
        requests = _parse(method, sys.stdin.read() if args.request == "-" else args.request)
    except BadRequest as exc:
        print(f"hsmlb: {exc}", file=sys.stderr)
        return 2
    response_type = getattr(pb, method.output_type.name)
    path = f"/{method.containing_service.full_name}/{method.name}"
    address = find_address(args.address, args.config)
    with client_channel(address, args) as channel:
        try:
            if method.client_streaming:
                call = channel.stream_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                             response_deserializer=response_type.FromString)
                for answer in call(iter(requests), timeout=args.timeout):
                    _print(answer)
            else:
                call = channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response_type.FromString)
                _print(call(requests[0], timeout=args.timeout))
        except grpc.RpcError as exc:
            return _report(address, exc)
    return 0
