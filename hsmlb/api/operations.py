"""The Operations service: one unary RPC per operation, and the bidi Stream for throughput."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from hsmlb.api.codec import CODECS, Decoder, Encoder
from hsmlb.errors import DeadlineExceeded, HsmlbError, InvalidArgument
from hsmlb.router import Router
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

log = logging.getLogger("hsmlb.api")
MAX_STREAM_IN_FLIGHT = 4096  # per stream; beyond this the stream stops reading (back-pressure)


class OperationsServicer(pb_grpc.OperationsServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def _unary(self, field: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        decode, encode = CODECS[field]
        try:
            op = decode(request)
            remaining = context.time_remaining()
            if remaining is not None:
                op.deadline = time.monotonic() + remaining
            result, key = await self.router.execute(op)
            return encode(op, result, key)
        except HsmlbError as exc:
            await context.abort(exc.status, exc.message)

    async def EncryptData(self, request: Any, context: Any) -> Any:
        return await self._unary("encrypt_data", request, context)

    async def DecryptData(self, request: Any, context: Any) -> Any:
        return await self._unary("decrypt_data", request, context)

    async def GenerateMac(self, request: Any, context: Any) -> Any:
        return await self._unary("generate_mac", request, context)

    async def VerifyMac(self, request: Any, context: Any) -> Any:
        return await self._unary("verify_mac", request, context)

    async def Sign(self, request: Any, context: Any) -> Any:
        return await self._unary("sign", request, context)

    async def Verify(self, request: Any, context: Any) -> Any:
        return await self._unary("verify", request, context)

    async def GenerateRandom(self, request: Any, context: Any) -> Any:
        return await self._unary("generate_random", request, context)

    async def Stream(self, request_iterator: AsyncIterator[pb.StreamRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        """Read and dispatch without waiting for results; write each response as its op completes."""
        out: asyncio.Queue[pb.StreamResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        stream_remaining = context.time_remaining()
        stream_deadline = time.monotonic() + stream_remaining if stream_remaining is not None else None

        async def run_one(request_id: int, op: Any, encode: Encoder, field: str) -> None:
            try:
                result, key = await self.router.execute(op)
                response = pb.StreamResponse(request_id=request_id, **{field: encode(op, result, key)})
            except HsmlbError as exc:
                response = _status(request_id, exc)
            except Exception:
                log.exception("stream op %s failed unexpectedly", field)
                response = pb.StreamResponse(request_id=request_id, status=pb.Status(
                    code=grpc.StatusCode.INTERNAL.value[0], message="internal error"))
            finally:
                slots.release()
            out.put_nowait(response)

        async def reader() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    field = request.WhichOneof("operation")
                    if field is None:
                        slots.release()
                        missing = InvalidArgument("operation: one operation is required")
                        out.put_nowait(_status(request.request_id, missing))
                        continue
                    decode: Decoder
                    decode, encode = CODECS[field]
                    try:
                        op = decode(getattr(request, field))
                    except HsmlbError as exc:
                        slots.release()
                        out.put_nowait(_status(request.request_id, exc))
                        continue
                    if request.timeout_ms:
                        op.deadline = time.monotonic() + request.timeout_ms / 1000
                    elif stream_deadline is not None:
                        op.deadline = stream_deadline
                    if op.deadline is not None and op.deadline <= time.monotonic():
                        slots.release()
                        out.put_nowait(_status(request.request_id, DeadlineExceeded("deadline already passed")))
                        continue
                    task = asyncio.ensure_future(run_one(request.request_id, op, encode, field))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                out.put_nowait(None)

        reading = asyncio.ensure_future(reader())
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            reading.cancel()
            for task in list(tasks):
                task.cancel()


def _status(request_id: int, exc: HsmlbError) -> pb.StreamResponse:
    return pb.StreamResponse(request_id=request_id, status=pb.Status(code=exc.status.value[0], message=exc.message))
