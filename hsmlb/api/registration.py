"""Registering the gRPC services so that bytes which are not the request message get INVALID_ARGUMENT.

grpc's generated registration decodes with `FromString`: a unary request that does not parse then
fails inside grpc as UNKNOWN, with the exception's text. Here it reaches a guard as `Undecodable`,
which answers INVALID_ARGUMENT naming the message type. (A Stream message that does not parse fails
grpc's deserializer inside the request reader; OperationsServicer.Stream then ends the RPC with
INVALID_ARGUMENT.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hsmlb.api.status import WHOLE_REQUEST, abort, drop_if_late
from hsmlb.errors import InvalidArgument
from hsmlb.v1 import hsmlb_pb2 as pb

log = logging.getLogger("hsmlb.api")


class Undecodable:
    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def add_service(service_name: str, servicer: Any, server: grpc.aio.Server) -> None:
    """Register `servicer` for hsmlb.v1.<service_name>, its unary methods behind the decode guard."""
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request, response = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, request_deserializer=request.FromString, response_serializer=response.SerializeToString)
        elif not method.client_streaming and not method.server_streaming:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guarded(behaviour), request_deserializer=_decoder(request),
                response_serializer=response.SerializeToString)
        else:
            raise ValueError(f"{service.full_name}/{method.name}: one-sided streaming is not supported here")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _decoder(message: Any) -> Callable[[bytes], Any]:
    name = message.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError:
            return Undecodable(name)

    return decode


def _guarded(behaviour: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            log.debug("refused a request that is not a valid %s", request.type_name)  # the type, never the bytes
            await abort(context, InvalidArgument(f"{WHOLE_REQUEST}: the request is not a valid {request.type_name}"))
        result = await behaviour(request, context)
        drop_if_late(context)  # a late answer races core's deadline cancel (status.drop_if_late)
        return result

    return handle
