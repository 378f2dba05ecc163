"""The streaming paths: Stream (one operation per message), StreamBatch and Batch (many per message).

One `StreamCall` serves all three. Each operation is started by Router.start and answered from its
done-callback: no task per operation. The hot path per operation is decode, (filters,) start, one
callback that encodes and queues the response, and the handler writing what is queued: one
message per response on Stream, one message with every queued response on StreamBatch (results
that complete in the same event-loop turn travel together). An op that fails goes through
Router.execute (classification, retry) in a task: the rare path. `unanswered` counts operations
read and not yet written back; at MAX_STREAM_IN_FLIGHT the stream stops reading (back-pressure).

A message's timeout_ms holds until its answer: if the op outlives it, it is answered
DEADLINE_EXCEEDED at once and the late result is dropped (the node's health still hears of it).
A request_id already in flight on the same call is refused for that item (INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from functools import partial
from typing import Any

import grpc

from hsmlb.api.codecs import CODECS, Decoder, Encoder
from hsmlb.api.filters import Call, FilterChain, Item
from hsmlb.api.status import caller_error, item_status
from hsmlb.errors import DeadlineExceeded, HsmlbError, InvalidArgument, Overloaded, Unavailable
from hsmlb.ops import KeyInfo, Operation
from hsmlb.router import Router
from hsmlb.router.router import Attempt
from hsmlb.v1 import hsmlb_pb2 as pb

log = logging.getLogger("hsmlb.api")
MAX_STREAM_IN_FLIGHT = 4096  # operations per call; beyond this the stream stops reading (back-pressure)
MAX_BATCH_ITEMS = 1024  # per BatchRequest; items beyond it are answered RESOURCE_EXHAUSTED, one by one
MAX_RESPONSE_ITEMS = 1024  # per BatchResponse; more ready results go in further messages
EXPIRY_TICK_S = 0.002  # timeout_ms is enforced to this precision, with one timer per call
OK = grpc.StatusCode.OK
_new = object.__new__  # an Item without the call to Item.__init__ (see dispatch)
_OVER_ITEMS = f"items: a batch carries at most {MAX_BATCH_ITEMS} operations; this one was not run"


class StreamCall:
    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop, stream_deadline: float | None,
                 chain: FilterChain | None = None, call: Call | None = None) -> None:
        self.router = router
        self.loop = loop
        self.stream_deadline = stream_deadline
        self.chain = chain if chain else None
        self.call = call
        self.out: deque[pb.StreamResponse] = deque()
        self.unanswered = 0
        self.reading = True
        self.closed = False
        self.in_flight: dict[int, Item | None] = {}  # request_id -> its filter item, until answered
        self._ended: list[Item] = []  # answered, not yet told to the filters (once per response message)
        self._wake: asyncio.Future[None] | None = None  # the writer waits on it for responses
        self._room: asyncio.Future[None] | None = None  # the reader waits on it at the in-flight cap
        self._timed: dict[int, int] = {}  # seq -> request_id of operations with a timeout_ms, unanswered
        self._expiry: list[tuple[float, int]] = []  # heap of (deadline, seq)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._seq = 0
        self._retries: set[asyncio.Task[Any]] = set()
        self._pending: set[asyncio.Future[Any]] = set()  # first attempts not yet settled

    # -- reading --------------------------------------------------------------------------------
    async def read(self, requests: AsyncIterator[Any], batched: bool) -> None:
        try:
            async for message in requests:
                if batched:
                    self.dispatch_batch(message.items)
                else:
                    self.unanswered += 1
                    self.dispatch(message)
                if self.unanswered >= MAX_STREAM_IN_FLIGHT:
                    self._room = self.loop.create_future()
                    await self._room
        finally:
            self.reading = False
            self._wakeup()

    def dispatch_batch(self, items: Iterable[pb.StreamRequest]) -> None:
        arrived = time.monotonic()
        for index, request in enumerate(items):
            self.unanswered += 1
            if index < MAX_BATCH_ITEMS:
                self.dispatch(request, arrived)
            else:
                self._refuse(request, Overloaded(_OVER_ITEMS, "batch_items"))

    def dispatch(self, request: pb.StreamRequest, arrived: float = 0.0) -> None:
        request_id = request.request_id
        if request_id in self.in_flight:
            self._refuse(request, InvalidArgument("request_id: already in flight on this stream"))
            return
        field = request.WhichOneof("operation")
        chain = self.chain
        if chain is not None and self.call is not None:  # Item.__init__'s stores, inlined: ~0.16 us less per op
            item = _new(Item)
            item.field = field or ""
            item.request_id = request_id
            item.op = None
            item.traceparent = request.traceparent or self.call.traceparent
            item.started = arrived or time.monotonic()
        else:
            item = None
        self.in_flight[request_id] = item
        if field is None:
            self._fail(request_id, InvalidArgument("operation: one operation is required"))
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
            if item is not None:
                item.op = op
                if chain.admits:  # type: ignore[union-attr]
                    chain.admit(self.call, item)  # type: ignore[union-attr,arg-type]
            attempt = self.router.start(op)
        except HsmlbError as exc:
            self._fail(request_id, exc, field)
            return
        except Exception:
            log.exception("stream op %s failed unexpectedly", field)
            self._fail(request_id, None)
            return
        seq = self._track(request_id, op.deadline) if timeout_ms else 0  # type: ignore[arg-type]
        self._pending.add(attempt.future)
        attempt.future.add_done_callback(partial(self._settled, request_id, op, field, encode, attempt, seq))

    # -- answering ------------------------------------------------------------------------------
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
            self._succeed(request_id, op, field, encode, future.result(), key)

    def _executed(self, request_id: int, op: Operation, field: str, encode: Encoder, seq: int,
                  retry: asyncio.Task[tuple[Any, KeyInfo | None]]) -> None:
        self._retries.discard(retry)
        exc = None if retry.cancelled() else retry.exception()  # read first: an unread one is logged at ERROR
        if not self._claim(seq):
            return
        if retry.cancelled():  # by close() (nobody to answer), or a backend that gave up: never unanswered
            if not self.closed:
                self._fail(request_id, Unavailable(f"{field} was cancelled before it completed"))
            return
        if isinstance(exc, HsmlbError):
            self._fail(request_id, exc, field)
        elif exc is None:
            self._succeed(request_id, op, field, encode, *retry.result())
        else:
            log.error("stream op %s failed unexpectedly", field, exc_info=exc)
            self._fail(request_id, None)

    def _succeed(self, request_id: int, op: Operation, field: str, encode: Encoder, result: Any,
                 key: KeyInfo | None) -> None:
        try:
            response = pb.StreamResponse(request_id=request_id, **{field: encode(op, result, key)})
        except Exception:
            log.exception("stream op %s failed unexpectedly", field)
            self._fail(request_id, None)
            return
        item = self.in_flight.pop(request_id, None)
        if item is not None:  # Item.end's success case, inlined
            item.ended = time.monotonic()
            item.code = OK
            item.message = item.reason = ""
            item.key = key
            self._ended.append(item)
        self._answer(response)

    def _fail(self, request_id: int, exc: HsmlbError | None, field: str = "") -> None:
        """Answer an operation in flight with a status; None: an internal error (already logged)."""
        code, message = (exc.status, exc.message) if exc is not None else (grpc.StatusCode.INTERNAL, "internal error")
        item = self.in_flight.pop(request_id, None)
        if item is not None:
            self._ended.append(item.end(code, message, reason=exc.reason if exc is not None else ""))
        self._answer(_status(request_id, code, message) if exc is None
                     else item_status(request_id, code, *caller_error(exc, field)))

    def _refuse(self, request: pb.StreamRequest, exc: HsmlbError) -> None:
        """Answer an operation that never got in flight (a duplicate id, over the batch limit)."""
        if self.chain is not None and self.call is not None:
            self._ended.append(Item(request.WhichOneof("operation") or "", request.request_id)
                               .end(exc.status, exc.message, reason=exc.reason))
        self._answer(item_status(request.request_id, exc.status, *caller_error(exc)))

    def tell(self) -> None:
        """The filters hear of the operations answered since they last heard, in one call: before a
        StreamBatch or Batch message is written, after a Stream message, before the writer waits."""
        ended = self._ended
        if ended:
            self._ended = []
            self.chain.done(self.call, ended)  # type: ignore[union-attr,arg-type]

    def _answer(self, response: pb.StreamResponse) -> None:
        if self.closed:
            return
        self.out.append(response)
        self._wakeup()

    # -- the writer's side ----------------------------------------------------------------------
    async def wait(self) -> None:
        """The writer's wait for responses; first tells the filters of what was answered and lets the
        reader go on if it waits for room."""
        self.tell()
        room = self._room
        if room is not None and self.unanswered < MAX_STREAM_IN_FLIGHT:
            self._room = None
            if not room.done():
                room.set_result(None)
        self._wake = self.loop.create_future()
        await self._wake

    def take(self, limit: int) -> list[pb.StreamResponse]:
        """Up to `limit` queued responses, counted as answered (and told to the filters)."""
        self.tell()
        out = self.out
        if len(out) <= limit:
            taken = list(out)
            out.clear()
        else:
            taken = [out.popleft() for _ in range(limit)]
        self.unanswered -= len(taken)
        return taken

    def close(self, abandoned: bool) -> None:
        """The RPC is over: stop the timer and the retries, once each has classified its first outcome.

        abandoned (the client cancelled, or the RPC failed): its queued operations leave the node queues
        too, as a cancelled unary call's do; their breaker probes are released through Router.execute.
        Filters hear of every operation still unanswered, as CANCELLED.

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
        if self.chain is not None and self.call is not None:
            self._ended.extend(item.end(grpc.StatusCode.CANCELLED, "the call ended before the answer")
                               for item in self.in_flight.values() if item is not None)
            self.tell()
        self.in_flight.clear()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    # -- timeout_ms -----------------------------------------------------------------------------
    def _track(self, request_id: int, deadline: float) -> int:
        """Remember an op with a timeout_ms until its answer; one timer per call, not per op."""
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
        """May this op be answered now? False once its timeout_ms has answered it."""
        return not seq or self._timed.pop(seq, None) is not None

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            request_id = self._timed.pop(heapq.heappop(expiry)[1], None)
            if request_id is not None:
                self._fail(request_id, DeadlineExceeded("timeout_ms passed before the operation completed"))
        if not self._timed:
            expiry.clear()  # what is left was answered in time
        elif expiry and not self.closed:  # at most one wake-up per EXPIRY_TICK_S, however many ops
            self._arm(expiry[0][0], EXPIRY_TICK_S)


def _status(request_id: int, code: grpc.StatusCode, message: str) -> pb.StreamResponse:
    return pb.StreamResponse(request_id=request_id, status=pb.Status(code=code.value[0], message=message))
