"""AsyncClient: one awaitable method per operation, batched transparently over a few long-lived StreamBatch streams.

Why batching: a gRPC message costs client and daemon ~100-150 us of CPU each in Python, a SoftHSM2 AES
operation ~20 us; carrying many operations per message is what lets two cores do tens of thousands of
operations per second. Callers still see one call, one result, one error, one latency.

How: a call is queued in a buffer; the buffer is flushed `linger` seconds after its first entry (0:
on the next event-loop turn, which gathers every call made in the same turn) or at once when it holds
`max_batch` calls. A flush writes one BatchRequest on the next of `streams` StreamBatch calls (round
robin); each stream's reader matches answers by request_id. A stream that breaks fails every call it
carries with the stream's status (their outcome is unknown: they may have run), and the next flush
opens a new stream in its place. At most `max_in_flight` calls are in flight: further calls wait
for room (`wait_when_full=True`, within their timeout) or fail at once with ResourceExhausted.

A call's `timeout` becomes the item's `timeout_ms` (the time left when it is sent: the daemon answers
DEADLINE_EXCEEDED when it passes) and a local deadline `GRACE_S` later, in case no answer comes.
"""

from __future__ import annotations

import asyncio
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
BROKEN = "the stream carrying this operation broke; it may or may not have run"


class _Entry:
    __slots__ = ("deadline", "field", "future", "request", "traceparent")

    def __init__(self, field: str, request: Any, deadline: float | None, traceparent: str,
                 future: asyncio.Future[Any]) -> None:
        self.field, self.request, self.deadline, self.traceparent, self.future = (
            field, request, deadline, traceparent, future)


class _BatchStream:
    """One StreamBatch call: batches written in order by one writer task, answers matched by request_id."""

    def __init__(self, stub: pb_grpc.OperationsStub, metadata: Sequence[tuple[str, str]] | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.call = stub.StreamBatch(metadata=metadata)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.broken = False
        self._next_id = 0
        self._outbox: deque[pb.BatchRequest] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._reader = loop.create_task(self._read())
        self._writer = loop.create_task(self._write())

    def send(self, entries: list[_Entry], now: float) -> None:
        batch = pb.BatchRequest()
        add = batch.items.add
        pending = self.pending
        request_id = self._next_id
        for e in entries:
            request_id += 1
            add(request_id=request_id, timeout_ms=timeout_ms(e.deadline - now) if e.deadline is not None else 0,
                traceparent=e.traceparent, **{e.field: e.request})
            pending[request_id] = e.future
        self._next_id = request_id
        self._outbox.append(batch)
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write(self) -> None:
        try:
            while True:
                while self._outbox:
                    await self.call.write(self._outbox.popleft())
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
                pending = self.pending
                for reply in message.items:
                    future = pending.pop(reply.request_id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
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
        self._outbox.clear()
        for future in pending.values():
            if not future.done():
                future.set_exception(error_for(error.code, error.message))
        self.call.cancel()
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not current:
                task.cancel()


class AsyncClient(Operations):
    """hsmlb over grpc.aio with transparent batching. Use as `async with AsyncClient(target) as client:`.

    target: "host:port". streams: StreamBatch calls to spread batches over. max_batch: operations per
    message (at most 1,024, the daemon's limit). linger: seconds a batch waits for company after its
    first call (0: until the event loop's next turn). max_in_flight and wait_when_full: back-pressure
    (see the module's text). timeout: the default per-call timeout in seconds (None: none). TLS:
    `tls=True` (system roots) or `root_certificates`; add `certificate_chain` and `private_key` for
    mutual TLS; each PEM bytes, a PEM string or a file path. metadata: sent on every stream.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, streams: int = 2, max_batch: int = 256,
                 linger: float = 0.0, max_in_flight: int = 4096, wait_when_full: bool = True,
                 timeout: float | None = DEFAULT_TIMEOUT_S, tls: bool = False, root_certificates: Pem = None,
                 certificate_chain: Pem = None, private_key: Pem = None, server_name: str | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Sequence[tuple[str, Any]] = ()) -> None:
        if streams < 1 or max_in_flight < 1 or not 1 <= max_batch <= MAX_BATCH_ITEMS or linger < 0:
            raise ValueError(f"need streams >= 1, max_in_flight >= 1, 1 <= max_batch <= {MAX_BATCH_ITEMS}, linger >= 0")
        self.target = target
        self._tls = Tls.of(tls, root_certificates, certificate_chain, private_key, server_name)
        self._options = tuple(options)
        self._metadata = tuple(metadata) or None
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
        self.batches = 0  # BatchRequests sent, and the operations they carried: the batching's effect
        self.operations = 0

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
        try:
            if deadline is None:
                reply = await future
            else:
                async with asyncio.timeout_at(deadline + GRACE_S):
                    reply = await future
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within the call's timeout of {timeout:g} s") from None
        finally:
            self._in_flight -= 1
            self._release_room()
        return result_of(field, reply)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._channel = aio_channel(self.target, self._tls, self._options)
        self._stub = pb_grpc.OperationsStub(self._channel)

    def _flush(self) -> None:
        self._flush_handle = None
        buffer = self._buffer
        if not buffer:
            return
        now = self._loop.time()
        size = self._max_batch
        for start in range(0, len(buffer), size):
            entries = [e for e in buffer[start:start + size] if not e.future.done()]  # done: timed out while queued
            if entries:
                self._stream().send(entries, now)
                self.batches += 1
                self.operations += len(entries)
        buffer.clear()

    def _stream(self) -> _BatchStream:
        """The next stream, round robin; a broken one is replaced by a new call on the same channel."""
        index = self._next_stream = (self._next_stream + 1) % self._n_streams
        stream = self._streams[index]
        if stream is None or stream.broken:
            stream = self._streams[index] = _BatchStream(self._stub, self._metadata, self._loop)
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
