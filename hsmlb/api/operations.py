"""The Operations service: one unary RPC per operation; Stream, StreamBatch and Batch for throughput.

Every path goes through the per-operation seam (api/filters.py) when filters are configured:
open once per RPC, admit once per operation, done once per unary call or response message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hsmlb.api.codecs import CODECS
from hsmlb.api.filters import Call, FilterChain, Item
from hsmlb.api.status import WHOLE_REQUEST, abort, refuse
from hsmlb.api.stream import MAX_RESPONSE_ITEMS, StreamCall
from hsmlb.errors import HsmlbError, InvalidArgument
from hsmlb.pool.overload import InFlightLimit
from hsmlb.router import Router
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

log = logging.getLogger("hsmlb.api")
SERVICE = "/hsmlb.v1.Operations/"
OVERLOADED = "the daemon is overloaded: retry with back-off"
_METHOD = {field: SERVICE + "".join(p.capitalize() for p in field.split("_")) for field in CODECS}


class OperationsServicer(pb_grpc.OperationsServicer):
    def __init__(self, router: Router, filters: FilterChain | None = None,
                 limit: InFlightLimit | None = None) -> None:
        self.router = router
        self.filters = filters if filters else None
        self.limit = limit  # overload: unary calls beyond it are refused at once (pool/overload.py)

    async def _unary(self, field: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        limit = self.limit
        if limit is None:
            return await self._unary_admitted(field, request, context)
        if not limit.enter():
            await refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED)
        try:
            return await self._unary_admitted(field, request, context)
        finally:
            limit.leave()

    async def _unary_admitted(self, field: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        chain = self.filters
        if chain is not None:
            return await self._unary_filtered(chain, field, request, context)
        decode, encode = CODECS[field]
        try:
            op = decode(request)
            remaining = context.time_remaining()
            if remaining is not None:
                op.deadline = time.monotonic() + remaining
            result, key = await self.router.execute(op)
            return encode(op, result, key)
        except HsmlbError as exc:
            await abort(context, exc, field)
        except Exception:  # as the Stream does: gRPC's own reply would carry the exception's text
            log.exception("unary op %s failed unexpectedly", field)
            await refuse(context, grpc.StatusCode.INTERNAL, "internal error")

    async def _unary_filtered(self, chain: FilterChain, field: str, request: Any,
                              context: grpc.aio.ServicerContext) -> Any:
        """The unary path with the seam: open, admit, execute, done (whatever the outcome)."""
        decode, encode = CODECS[field]
        call = Call.from_context(_METHOD[field], context)
        item = Item(field, traceparent=call.traceparent)
        code, message = grpc.StatusCode.OK, ""
        key = None
        failed: HsmlbError | None = None
        try:
            chain.open(call)
            item.op = op = decode(request)
            remaining = context.time_remaining()
            if remaining is not None:
                op.deadline = time.monotonic() + remaining
            chain.admit(call, item)
            result, key = await self.router.execute(op)
            return encode(op, result, key)
        except HsmlbError as exc:
            code, message, failed = exc.status, exc.message, exc
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "the call was cancelled"
            raise
        except Exception:
            log.exception("unary op %s failed unexpectedly", field)
            code, message = grpc.StatusCode.INTERNAL, "internal error"
        finally:
            chain.done(call, (item.end(code, message, key if code == grpc.StatusCode.OK else None,
                                       failed.reason if failed is not None else ""),))
        if failed is not None:
            await abort(context, failed, field)
        await refuse(context, code, message)

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

    async def ReEncryptData(self, request: Any, context: Any) -> Any:
        return await self._unary("re_encrypt_data", request, context)

    async def GenerateCardValidationData(self, request: Any, context: Any) -> Any:
        return await self._unary("generate_card_validation_data", request, context)

    async def VerifyCardValidationData(self, request: Any, context: Any) -> Any:
        return await self._unary("verify_card_validation_data", request, context)

    async def TranslatePinData(self, request: Any, context: Any) -> Any:
        return await self._unary("translate_pin_data", request, context)

    async def VerifyAuthRequestCryptogram(self, request: Any, context: Any) -> Any:
        return await self._unary("verify_auth_request_cryptogram", request, context)

    async def Stream(self, request_iterator: AsyncIterator[pb.StreamRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        """One operation per message; each response written as its op completes."""
        async for response in self._serve_stream(request_iterator, context, batched=False):
            yield response

    async def StreamBatch(self, request_iterator: AsyncIterator[pb.BatchRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BatchResponse]:
        """Many operations per message; the results ready together go back in one message."""
        async for response in self._serve_stream(request_iterator, context, batched=True):
            yield response

    async def Batch(self, request: pb.BatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchResponse:
        """One batch, one answer: exactly one result per item, in completion order."""
        if self.limit is not None and self.limit.in_flight >= self.limit.limit:
            self.limit.shed += 1
            await refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED)
        call = await self._open(context, SERVICE + "Batch")
        remaining = context.time_remaining()
        work = StreamCall(self.router, asyncio.get_running_loop(),
                          time.monotonic() + remaining if remaining is not None else None, self.filters, call)
        work.dispatch_batch(request.items)
        work.reading = False
        finished = False
        try:
            while len(work.out) < work.unanswered:
                await work.wait()
            finished = True
        finally:
            work.close(abandoned=not finished)
        return pb.BatchResponse(items=work.take(len(work.out)))

    async def _open(self, context: grpc.aio.ServicerContext, method: str) -> Call | None:
        """The seam's per-RPC step: identity and policy once for a whole stream or batch."""
        if self.filters is None:
            return None
        call = Call.from_context(method, context)
        try:
            self.filters.open(call)
        except HsmlbError as exc:
            await abort(context, exc)
        return call

    async def _serve_stream(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                            batched: bool) -> AsyncIterator[Any]:
        """Read and dispatch without waiting for results; write what completes as it completes."""
        call = await self._open(context, SERVICE + ("StreamBatch" if batched else "Stream"))
        remaining = context.time_remaining()
        work = StreamCall(self.router, asyncio.get_running_loop(),
                          time.monotonic() + remaining if remaining is not None else None, self.filters, call)
        reading = asyncio.ensure_future(work.read(request_iterator, batched))
        out = work.out
        finished = False
        try:
            while True:
                while out:
                    if batched:
                        yield pb.BatchResponse(items=work.take(MAX_RESPONSE_ITEMS))
                    else:
                        yield out.popleft()
                        work.unanswered -= 1
                        work.tell()
                if not work.reading and work.unanswered <= 0:
                    finished = True
                    break
                await work.wait()
        finally:
            work.close(abandoned=not finished)
            reading.cancel()
        failed = reading.exception() if reading.done() and not reading.cancelled() else None
        if failed is not None:  # what was read is answered; the rest was never read: say so, not OK
            kind = "BatchRequest" if batched else "StreamRequest"
            # a client's garbage is its own fault (INFO, else a hostile client floods the log); anything else is ours
            log.log(logging.INFO if isinstance(failed, DecodeError) else logging.WARNING,
                    "stream request reader failed: %s", type(failed).__name__)
            if isinstance(failed, DecodeError):
                await abort(context, InvalidArgument(f"{WHOLE_REQUEST}: a stream message is not a valid {kind}; "
                                                     "messages after it were not read"))
            await refuse(context, grpc.StatusCode.INTERNAL, "reading the stream failed; later messages were not read")
