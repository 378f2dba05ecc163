"""The Operations service: one unary RPC per operation, and the bidi Stream for throughput."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hsmlb.api.codecs import CODECS, Decoder, Encoder
from hsmlb.errors import DeadlineExceeded, HsmlbError, InvalidArgument, Unavailable
from hsmlb.ops import KeyInfo, Operation
from hsmlb.router import Router
from hsmlb.router.router import Attempt
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

log = logging.getLogger("hsmlb.api")
MAX_STREAM_IN_FLIGHT = 4096  # per stream; beyond this the stream stops reading (back-pressure)
EXPIRY_TICK_S = 0.002  # timeout_ms is enforced to this precision, with one timer per stream


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
        except Exception:  # as the Stream does: gRPC's own reply would carry the exception's text
            log.exception("unary op %s failed unexpectedly", field)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

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
        """Read and dispatch without waiting for results; write each response as its op completes."""
        remaining = context.time_remaining()
        call = _StreamCall(self.router, asyncio.get_running_loop(),
                           time.monotonic() + remaining if remaining is not None else None)
        reading = asyncio.ensure_future(call.read(request_iterator))
        out = call.out
        finished = False
        try:
            while True:
                while out:
                    yield out.popleft()
                    call.unanswered -= 1
                if not call.reading and call.unanswered <= 0:
                    finished = True
                    break
                await call.wait()
        finally:
            call.close(abandoned=not finished)
            reading.cancel()
        failed = reading.exception() if reading.done() and not reading.cancelled() else None
        if failed is not None:  # what was read is answered; the rest was never read: say so, not OK
            log.warning("stream request reader failed: %s", type(failed).__name__)
            if isinstance(failed, DecodeError):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "a stream message is not a valid StreamRequest; messages after it were not read")
            await context.abort(grpc.StatusCode.INTERNAL, "reading the stream failed; later messages were not read")


class _StreamCall:
    """One Stream RPC: each message is started by Router.start and answered from its done-callback.

    No task per message: the hot path is decode, start, one callback that encodes and queues the
    response, and the handler's generator writing what is queued. An op that fails goes through
    Router.execute (classification, retry) in a task: the rare path. `unanswered` counts messages
    read and not yet written back; at MAX_STREAM_IN_FLIGHT the stream stops reading.
    A message's timeout_ms holds until its answer: if the op outlives it, the message is answered
    DEADLINE_EXCEEDED at once and the late result is dropped (the node's health still hears of it).
    """

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop, stream_deadline: float | None) -> None:
        self.router = router
        self.loop = loop
        self.stream_deadline = stream_deadline
        self.out: deque[pb.StreamResponse] = deque()
        self.unanswered = 0
        self.reading = True
        self.closed = False
        self._wake: asyncio.Future[None] | None = None  # the writer waits on it for responses
        self._room: asyncio.Future[None] | None = None  # the reader waits on it at the in-flight cap
        self._timed: dict[int, int] = {}  # seq -> request_id of messages with a timeout_ms, unanswered
        self._expiry: list[tuple[float, int]] = []  # heap of (deadline, seq)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._seq = 0
        self._retries: set[asyncio.Task[Any]] = set()
        self._pending: set[asyncio.Future[Any]] = set()  # first attempts not yet settled

    async def read(self, requests: AsyncIterator[pb.StreamRequest]) -> None:
        try:
            async for request in requests:
                self.unanswered += 1
                self._dispatch(request)
                if self.unanswered >= MAX_STREAM_IN_FLIGHT:
                    self._room = self.loop.create_future()
                    await self._room
        finally:
            self.reading = False
            self._wakeup()

    async def wait(self) -> None:
        """The writer's wait for responses; first lets the reader go on if it waits for room."""
        room = self._room
        if room is not None and self.unanswered < MAX_STREAM_IN_FLIGHT:
            self._room = None
            if not room.done():
                room.set_result(None)
        self._wake = self.loop.create_future()
        await self._wake

    def close(self, abandoned: bool) -> None:
        """The RPC is over: stop the timer and the retries, once each has classified its first outcome.

        abandoned (the client cancelled, or the RPC failed): its queued operations leave the node queues
        too, as a cancelled unary call's do; their breaker probes are released through Router.execute.

        A retry task cancelled before its first step would never run Router.execute's except clauses,
        so a failed breaker probe would stay reserved and the node's fault unrecorded; cancelling on the
        next loop turn lets that first step (which awaits an already-settled future) run to its first real wait.
        """
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._retries:
            self.loop.call_soon(task.cancel)
        if abandoned:
            for future in self._pending:
                future.cancel()

    def _dispatch(self, request: pb.StreamRequest) -> None:
        request_id = request.request_id
        field = request.WhichOneof("operation")
        if field is None:
            self._answer(_status(request_id, InvalidArgument("operation: one operation is required")))
            return
        decode: Decoder
        decode, encode = CODECS[field]
        timeout_ms = request.timeout_ms
        try:
            op = decode(getattr(request, field))
            if timeout_ms:
                op.deadline = time.monotonic() + timeout_ms / 1000
            elif self.stream_deadline is not None:
                op.deadline = self.stream_deadline
            if op.deadline is not None and op.deadline <= time.monotonic():
                raise DeadlineExceeded("deadline already passed")
            attempt = self.router.start(op)
        except HsmlbError as exc:
            self._answer(_status(request_id, exc))
            return
        except Exception:
            log.exception("stream op %s failed unexpectedly", field)
            self._answer(_internal(request_id))
            return
        seq = self._track(request_id, op.deadline) if timeout_ms else 0
        self._pending.add(attempt.future)
        attempt.future.add_done_callback(partial(self._settled, request_id, op, field, encode, attempt, seq))

    def _settled(self, request_id: int, op: Operation, field: str, encode: Encoder, attempt: Attempt, seq: int,
                 future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if future.cancelled() or future.exception() is not None:  # classified (maybe retried) by execute
            retry = self.loop.create_task(self.router.execute(op, attempt))
            self._retries.add(retry)
            retry.add_done_callback(partial(self._executed, request_id, op, field, encode, seq))
            if self.closed:  # classify only (breaker probe, health): nobody waits for a retry
                self.loop.call_soon(retry.cancel)
            return
        key = self.router.succeeded(op, attempt)
        if self._claim(seq):
            try:
                self._answer(pb.StreamResponse(request_id=request_id, **{field: encode(op, future.result(), key)}))
            except Exception:
                log.exception("stream op %s failed unexpectedly", field)
                self._answer(_internal(request_id))

    def _executed(self, request_id: int, op: Operation, field: str, encode: Encoder, seq: int,
                  retry: asyncio.Task[tuple[Any, KeyInfo | None]]) -> None:
        self._retries.discard(retry)
        if not self._claim(seq):
            return
        if retry.cancelled():  # by close() (nobody to answer), or a backend that gave up: never unanswered
            if not self.closed:
                self._answer(_status(request_id, Unavailable(f"{field} was cancelled before it completed")))
            return
        exc = retry.exception()
        if isinstance(exc, HsmlbError):
            self._answer(_status(request_id, exc))
            return
        if exc is None:
            try:
                self._answer(pb.StreamResponse(request_id=request_id, **{field: encode(op, *retry.result())}))
                return
            except Exception as failed:
                exc = failed
        log.error("stream op %s failed unexpectedly", field, exc_info=exc)
        self._answer(_internal(request_id))

    def _answer(self, response: pb.StreamResponse) -> None:
        if self.closed:
            return
        self.out.append(response)
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    # -- timeout_ms -----------------------------------------------------------------------------
    def _track(self, request_id: int, deadline: float) -> int:
        """Remember a message with a timeout_ms until its answer; one timer per stream, not per message."""
        self._seq += 1
        self._timed[self._seq] = request_id
        heapq.heappush(self._expiry, (deadline, self._seq))
        if self._timer is None or deadline < self._timer_at - EXPIRY_TICK_S:
            self._arm(deadline, 0.0)
        return self._seq

    def _arm(self, at: float, at_least: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_later(max(at_least, at - time.monotonic()), self._expire)

    def _claim(self, seq: int) -> bool:
        """May this message be answered now? False once its timeout_ms has answered it."""
        return not seq or self._timed.pop(seq, None) is not None

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            request_id = self._timed.pop(heapq.heappop(expiry)[1], None)
            if request_id is not None:
                self._answer(_status(request_id, DeadlineExceeded("timeout_ms passed before the operation completed")))
        if not self._timed:
            expiry.clear()  # what is left was answered in time
        elif expiry and not self.closed:  # at most one wake-up per EXPIRY_TICK_S, however many messages
            self._arm(expiry[0][0], EXPIRY_TICK_S)


def _status(request_id: int, exc: HsmlbError) -> pb.StreamResponse:
    return pb.StreamResponse(request_id=request_id, status=pb.Status(code=exc.status.value[0], message=exc.message))


def _internal(request_id: int) -> pb.StreamResponse:
    return pb.StreamResponse(request_id=request_id, status=pb.Status(code=grpc.StatusCode.INTERNAL.value[0],
                                                                     message="internal error"))
