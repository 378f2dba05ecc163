"""AsyncClient: one awaitable method per operation, batched transparently over a few long-lived StreamBatch streams.

Why batching: a gRPC message costs client and daemon ~100-150 us of CPU each in Python, a SoftHSM2 AES
operation ~20 us; carrying many operations per message is what lets two cores do tens of thousands of
operations per second. Callers still see one call, one result, one error, one latency.

How: a call is queued in a buffer; the buffer is handed over `linger` seconds after its first entry
(0: on the next event-loop turn, which gathers every call made in the same turn) or at once when it
holds `max_batch` calls, to the next of `streams` StreamBatch calls (round robin). Each stream has one
writer task: while a write is in flight, calls queue behind it, and the next message carries all of
them (up to `max_batch`), so batches grow with the load without a timer. Each stream's reader matches
answers by request_id. A stream that breaks fails every call it carries with the stream's status
(their outcome is unknown: they may have run), and the next flush opens a new stream in its place.
At most `max_in_flight` calls are in flight: further calls wait for room (`wait_when_full=True`,
within their timeout) or fail at once with ResourceExhausted.

A call's `timeout` becomes the item's `timeout_ms` (the time left when it is sent: the daemon answers
DEADLINE_EXCEEDED when it passes) and a local deadline `GRACE_S` later, in case no answer comes.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Sequence
from typing import Any

import grpc

from hsmlb_client._channel import Pem, Tls, aio_channel
from hsmlb_client._operations import MAX_BATCH_ITEMS, Operations, build_request, result_of, timeout_ms
from hsmlb_client.errors import (
    Cancelled,
    DeadlineExceeded,
    HsmlbError,
    ResourceExhausted,
    Unavailable,
    error_for,
    from_rpc_error,
)
from hsmlb_client.v1 import hsmlb_pb2 as pb
from hsmlb_client.v1 import hsmlb_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 10.0
GRACE_S = 0.05  # the local deadline's slack after the item's own: the daemon's answer says more
WHEEL_TICK_S = 0.01  # local deadlines are kept to this precision
BROKEN = "the stream carrying this operation broke; it may or may not have run"


class _Entry:
    __slots__ = ("deadline", "field", "future", "request", "traceparent")

    def __init__(self, field: str, request: Any, deadline: float | None, traceparent: str,
                 future: asyncio.Future[Any]) -> None:
        self.field, self.request, self.deadline, self.traceparent, self.future = (
            field, request, deadline, traceparent, future)


class _BatchStream:
    """One StreamBatch call. Calls queue here and one writer task sends them. At most `pipeline` messages
    wait for answers at once (a message waits until its last item is answered); meanwhile calls queue,
    and the next message carries all of them (up to max_batch): batches grow with the load and the
    round trip by themselves, as Kafka's max.in.flight does. Answers are matched by request_id."""

    def __init__(self, stub: pb_grpc.OperationsStub, metadata: Sequence[tuple[str, str]] | None,
                 loop: asyncio.AbstractEventLoop, max_batch: int, wait_for_ready: bool, pipeline: int) -> None:
        self.loop = loop
        self.call = stub.StreamBatch(metadata=metadata, wait_for_ready=wait_for_ready)
        self.pending: dict[int, tuple[asyncio.Future[Any], int]] = {}  # request_id -> (future, message number)
        self.broken = False
        self.batches = 0
        self._open: dict[int, int] = {}  # message number -> its items not yet answered
        self._pipeline = pipeline
        self._max_batch = max_batch
        self._next_id = 0
        self._queue: list[_Entry] = []
        self._wake: asyncio.Future[None] | None = None
        self._reader = loop.create_task(self._read())
        self._writer = loop.create_task(self._write())

    def send(self, entries: list[_Entry]) -> None:
        self._queue.extend(entries)
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _take(self) -> pb.BatchRequest:
        """The next message: up to max_batch queued calls still waiting, each with the time it has left."""
        queue, size = self._queue, self._max_batch
        taken = queue[:size]
        del queue[:size]
        now = self.loop.time()
        batch = pb.BatchRequest()
        add = batch.items.add
        pending = self.pending
        message = self.batches + 1
        request_id = first = self._next_id
        for e in taken:
            if e.future.done():  # timed out (or cancelled) while queued
                continue
            request_id += 1
            add(request_id=request_id, timeout_ms=timeout_ms(e.deadline - now) if e.deadline is not None else 0,
                traceparent=e.traceparent, **{e.field: e.request})
            pending[request_id] = (e.future, message)
        self._next_id = request_id
        if request_id > first:
            self._open[message] = request_id - first
        return batch

    async def _write(self) -> None:
        try:
            while True:
                while self._queue and (len(self._open) < self._pipeline or len(self._queue) >= self._max_batch):
                    batch = self._take()
                    if batch.items:
                        self.batches += 1
                        await self.call.write(batch)
                self._wake = self.loop.create_future()
                await self._wake
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            self.fail(from_rpc_error(exc, BROKEN))
        except Exception as exc:  # the call ended under the write (grpc.aio raises several kinds)
            self.fail(Unavailable(f"{BROKEN} ({type(exc).__name__})"))

    async def _read(self) -> None:
        try:
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    self.fail(Unavailable(f"{BROKEN} (the daemon ended the stream)"))
                    return
                pending, opened = self.pending, self._open
                closed = False
                for reply in message.items:
                    entry = pending.pop(reply.request_id, None)
                    if entry is None:
                        continue
                    future, number = entry
                    if not future.done():
                        future.set_result(reply)
                    left = opened[number] - 1
                    if left:
                        opened[number] = left
                    else:
                        del opened[number]
                        closed = True
                if closed and self._queue:
                    self._wakeup()
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            self.fail(from_rpc_error(exc, BROKEN))
        except Exception as exc:
            self.fail(Unavailable(f"{BROKEN} ({type(exc).__name__})"))

    def fail(self, error: HsmlbError) -> None:
        """Fail every call this stream carries (each with its own copy of `error`) and end the stream."""
        if self.broken:
            return
        self.broken = True
        pending, self.pending = self.pending, {}
        queued, self._queue = self._queue, []
        for future in (*(f for f, _ in pending.values()), *(e.future for e in queued)):
            if not future.done():
                future.set_exception(error_for(error.code, error.message))
        self.call.cancel()
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not current:
                task.cancel()


class _Deadlines:
    """The calls' local deadlines on a wheel of WHEEL_TICK_S slots: one timer per client instead of one per call
    (asyncio.timeout costs ~20 us a call). A call past its deadline is failed with DeadlineExceeded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, set[asyncio.Future[Any]]] = {}
        self.order: list[int] = []  # heap of slot keys
        self.timer: asyncio.TimerHandle | None = None
        self.timer_key = 0

    def add(self, at: float, future: asyncio.Future[Any]) -> int:
        key = int(at / WHEEL_TICK_S) + 1  # the slot's time is at or after `at`
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = set()
            heapq.heappush(self.order, key)
            if self.timer is None or key < self.timer_key:
                self._arm(key)
        slot.add(future)
        return key

    def remove(self, key: int, future: asyncio.Future[Any]) -> None:
        slot = self.slots.get(key)
        if slot is not None:
            slot.discard(future)

    def _arm(self, key: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_key = key
        self.timer = self.loop.call_at(key * WHEEL_TICK_S, self._expire)

    def _expire(self) -> None:
        self.timer = None
        now_key = self.loop.time() / WHEEL_TICK_S
        order = self.order
        while order and order[0] <= now_key:
            for future in self.slots.pop(heapq.heappop(order), ()):
                if not future.done():
                    future.set_exception(DeadlineExceeded("no answer within the call's timeout"))
        if order:
            self._arm(order[0])


class AsyncClient(Operations):
    """hsmlb over grpc.aio with transparent batching. Use as `async with AsyncClient(target) as client:`.

    target: "host:port". streams: StreamBatch calls to spread batches over. max_batch: operations per
    message (at most 1,024, the daemon's limit). linger: seconds a batch waits for company after its
    first call (0: until the event loop's next turn). max_in_flight and wait_when_full: back-pressure
    (see the module's text). timeout: the default per-call timeout in seconds (None: none). TLS:
    `tls=True` (system roots) or `root_certificates`; add `certificate_chain` and `private_key` for
    mutual TLS; each PEM bytes, a PEM string or a file path. metadata: sent on every stream.
    wait_for_ready (default True): a new stream waits for the connection (re)established, within the calls'
    timeouts, instead of failing at once while the channel is reconnecting; False fails fast with Unavailable.
    pipeline: messages per stream awaiting their answers before further calls queue for the next message.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, streams: int = 2, max_batch: int = 256,
                 linger: float = 0.0, max_in_flight: int = 4096, wait_when_full: bool = True,
                 timeout: float | None = DEFAULT_TIMEOUT_S, tls: bool = False, root_certificates: Pem = None,
                 certificate_chain: Pem = None, private_key: Pem = None, server_name: str | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Sequence[tuple[str, Any]] = (),
                 wait_for_ready: bool = True, pipeline: int = 4) -> None:
        if pipeline < 1:
            raise ValueError("need pipeline >= 1")
        if streams < 1 or max_in_flight < 1 or not 1 <= max_batch <= MAX_BATCH_ITEMS or linger < 0:
            raise ValueError(f"need streams >= 1, max_in_flight >= 1, 1 <= max_batch <= {MAX_BATCH_ITEMS}, linger >= 0")
        self.target = target
        self._tls = Tls.of(tls, root_certificates, certificate_chain, private_key, server_name)
        self._options = tuple(options)
        self._metadata = tuple(metadata) or None
        self._wait_for_ready = wait_for_ready
        self._pipeline = pipeline
        self._n_streams, self._max_batch, self._linger = streams, max_batch, linger
        self._max_in_flight, self._wait_when_full, self._timeout = max_in_flight, wait_when_full, timeout
        self._channel: grpc.aio.Channel | None = None
        self._streams: list[_BatchStream | None] = [None] * streams
        self._next_stream = 0
        self._buffer: list[_Entry] = []
        self._flush_handle: asyncio.Handle | None = None
        self._in_flight = 0
        self._room: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.operations = 0  # operations handed to the streams (see `batches`)
        self._batches_before = 0  # messages sent by streams since replaced

    @property
    def batches(self) -> int:
        """BatchRequest messages sent: with `operations`, the batching's effect."""
        return self._batches_before + sum(s.batches for s in self._streams if s is not None)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet answered (at most max_in_flight)."""
        return self._in_flight

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Fail what is unanswered with Cancelled and close the channel; further calls raise Cancelled."""
        self._closed = True
        closing = Cancelled("the client was closed before the answer")
        for stream in self._streams:
            if stream is not None:
                stream.fail(closing)
        for entry in self._buffer:
            if not entry.future.done():
                entry.future.set_exception(Cancelled(closing.message))
        self._buffer.clear()
        for waiter in self._room:
            if not waiter.done():
                waiter.set_exception(Cancelled(closing.message))
        if self._channel is not None:
            await self._channel.close()

    async def _call(self, field: str, request: Any, fields: dict[str, Any], timeout: float | None,
                    traceparent: str) -> Any:
        if self._closed:
            raise Cancelled("the client is closed")
        request = build_request(field, request, fields)
        if self._channel is None:
            self._start()
        loop = self._loop
        timeout = self._timeout if timeout is None else timeout
        deadline = loop.time() + timeout if timeout else None
        if self._in_flight >= self._max_in_flight:
            await self._wait_for_room(deadline)
        self._in_flight += 1
        future: asyncio.Future[Any] = loop.create_future()
        buffer = self._buffer
        buffer.append(_Entry(field, request, deadline, traceparent, future))
        if len(buffer) >= self._max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = (loop.call_later(self._linger, self._flush) if self._linger
                                  else loop.call_soon(self._flush))
        key = self._deadlines.add(deadline + GRACE_S, future) if deadline is not None else 0
        try:
            reply = await future
        finally:
            if key:
                self._deadlines.remove(key, future)
            self._in_flight -= 1
            self._release_room()
        return result_of(field, reply)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadlines = _Deadlines(self._loop)
        self._channel = aio_channel(self.target, self._tls, self._options)
        self._stub = pb_grpc.OperationsStub(self._channel)

    def _flush(self) -> None:
        self._flush_handle = None
        buffer = self._buffer
        if not buffer:
            return
        self._buffer = []
        self.operations += len(buffer)
        self._stream().send(buffer)

    def _stream(self) -> _BatchStream:
        """The next stream, round robin; a broken one is replaced by a new call on the same channel."""
        index = self._next_stream = (self._next_stream + 1) % self._n_streams
        stream = self._streams[index]
        if stream is None or stream.broken:
            if stream is not None:
                self._batches_before += stream.batches
            stream = self._streams[index] = _BatchStream(self._stub, self._metadata, self._loop, self._max_batch,
                                                                self._wait_for_ready, self._pipeline)
        return stream

    # -- back-pressure ----------------------------------------------------------------------------
    async def _wait_for_room(self, deadline: float | None) -> None:
        if not self._wait_when_full:
            raise ResourceExhausted(f"the client already has {self._max_in_flight} operations in flight "
                                    "(max_in_flight); wait_when_full=False refuses more at once")
        while self._in_flight >= self._max_in_flight:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._room.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    async with asyncio.timeout_at(deadline):
                        await waiter
            except TimeoutError:
                self._release_room()  # pass on a wake-up this waiter may have had: a spare one is harmless
                raise DeadlineExceeded(f"the call's timeout passed while {self._max_in_flight} operations were "
                                       "in flight (max_in_flight)") from None
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _release_room(self) -> None:
        room = self._room
        while room:
            waiter = room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
