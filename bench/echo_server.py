"""A bare grpc.aio + uvloop server implementing hsmlb.v1.Operations as an echo: the benchmark's baseline.

EncryptData returns plain_text as cipher_text; Stream answers each request with its own payload;
StreamBatch and Batch answer each message with one message holding every item's echo.
Nothing else runs here, so its CPU per op is the floor the gRPC stack alone costs.

    python bench/echo_server.py --listen 127.0.0.1:0    # prints "echo listening on HOST:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

from hsmlb.limits import LimitsConfig, grpc_server_options, raise_fd_limit
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc


class EchoOperations(pb_grpc.OperationsServicer):
    async def EncryptData(self, request: Any, context: Any) -> Any:
        return pb.EncryptDataResponse(key_arn=request.key_identifier, cipher_text=request.plain_text)

    async def Stream(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for request in request_iterator:
            yield _echo(request)


    async def StreamBatch(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for batch in request_iterator:
            yield pb.BatchResponse(items=[_echo(request) for request in batch.items])

    async def Batch(self, request: Any, context: Any) -> Any:
        return pb.BatchResponse(items=[_echo(request) for request in request.items])


def _echo(request: Any) -> Any:
    if request.WhichOneof("operation") == "encrypt_data":
        body = request.encrypt_data
        return pb.StreamResponse(request_id=request.request_id, encrypt_data=pb.EncryptDataResponse(
            key_arn=body.key_identifier, cipher_text=body.plain_text))
    return pb.StreamResponse(request_id=request.request_id, status=pb.Status(
        code=grpc.StatusCode.UNIMPLEMENTED.value[0], message="echo: encrypt_data only"))


async def serve(listen: str, max_concurrent_rpcs: int | None = None) -> None:
    # the daemon's own options at their defaults: only the handlers differ
    server = grpc.aio.server(options=grpc_server_options(LimitsConfig(), raise_fd_limit()),
                             maximum_concurrent_rpcs=max_concurrent_rpcs)
    pb_grpc.add_OperationsServicer_to_server(EchoOperations(), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--max-concurrent-rpcs", type=int, help="grpc.aio's own bound (default: none, as the daemon)")
    args = parser.parse_args()
    uvloop.run(serve(args.listen, args.max_concurrent_rpcs))


if __name__ == "__main__":
    main()
