"""Client: the blocking twin of AsyncClient for threads and for gevent (Locust), with the same batching.

Why unary `Batch` calls and a batcher of its own: under gevent, a batcher living in a synchronous
bidi stream's request iterator is driven by gRPC's own thread and sent batches of one. Here the
batcher is a thread of its own (a greenlet once gevent has patched `threading`): woken by the
first call of a batch, it lingers `linger` seconds (0.5 ms by default) so the other callers can
queue, takes up to `max_batch` calls and sends them as ONE non-blocking `Batch` call; its answer
wakes each caller with its own result. Batches overlap: the batcher never waits for an answer.

A `Batch` answer waits for its slowest item, so signatures (RSA-2048 ~0.5 ms of token time each, and
queued behind the tokens' RSA capacity) travel in a Batch call of their own (SLOW_FIELDS): a symmetric
operation never waits for a signature that happened to be taken in the same batch.

A call's `timeout` becomes the item's `timeout_ms` (the time left when it is sent), the Batch call's
deadline (the latest of its items', plus GRACE_S) and the caller's local wait. Back-pressure: at most
`max_in_flight` calls at once; further callers block for room within their timeout
(`wait_when_full=True`) or fail at once with ResourceExhausted. A Batch call that fails (the daemon
went away, the connection broke) fails each of its operations with that status; the next batch goes
out on the channel's next connection.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import grpc

from hsmlb_client._channel import Pem, Tls, sync_channel
from hsmlb_client._operations import MAX_BATCH_ITEMS, Operations, build_request, result_of, timeout_ms
from hsmlb_client.errors import (
    Cancelled,
    DeadlineExceeded,
    HsmlbError,
    InternalError,
    ResourceExhausted,
    error_for,
    from_rpc_error,
)
from hsmlb_client.v1 import hsmlb_pb2 as pb
from hsmlb_client.v1 import hsmlb_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_LINGER_S = 0.0005
GRACE_S = 0.05
FAILED = "the Batch call carrying this operation failed; it may or may not have run"
SLOW_FIELDS = frozenset({"sign"})  # sent in Batch calls of their own (see the module)


class _Waiter:
    __slots__ = ("abandoned", "deadline", "error", "event", "field", "reply", "request", "traceparent")

    def __init__(self, field: str, request: Any, deadline: float | None, traceparent: str) -> None:
        self.field, self.request, self.deadline, self.traceparent = field, request, deadline, traceparent
        self.event = threading.Event()
        self.reply: Any = None
        self.error: HsmlbError | None = None
        self.abandoned = False


def _lanes(batch: list[_Waiter]) -> list[list[_Waiter]]:
    """The batch as the Batch calls to send: signatures apart from the rest (see the module)."""
    slow = [w for w in batch if w.field in SLOW_FIELDS]
    if not slow:
        return [batch] if batch else []
    if len(slow) == len(batch):
        return [batch]
    return [[w for w in batch if w.field not in SLOW_FIELDS], slow]


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


class Client(Operations):
    """hsmlb for threads and gevent with transparent batching. Use as `with Client(target) as client:`.

    Same parameters as AsyncClient (wait_for_ready included), less `streams`; `linger` defaults to 0.5 ms. Under gevent
    monkey-patching, gRPC is made cooperative (`grpc.experimental.gevent.init_gevent()`) before the
    channel is made.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, max_batch: int = 256, linger: float = DEFAULT_LINGER_S,
                 max_in_flight: int = 4096, wait_when_full: bool = True, timeout: float | None = DEFAULT_TIMEOUT_S,
                 tls: bool = False, root_certificates: Pem = None, certificate_chain: Pem = None,
                 private_key: Pem = None, server_name: str | None = None, metadata: Sequence[tuple[str, str]] = (),
                 options: Sequence[tuple[str, Any]] = (), wait_for_ready: bool = True) -> None:
        if max_in_flight < 1 or not 1 <= max_batch <= MAX_BATCH_ITEMS or linger < 0:
            raise ValueError(f"need max_in_flight >= 1, 1 <= max_batch <= {MAX_BATCH_ITEMS}, linger >= 0")
        if _gevent_patched():
            import grpc.experimental.gevent as grpc_gevent

            grpc_gevent.init_gevent()
        self.target = target
        self._max_batch, self._linger, self._timeout = max_batch, linger, timeout
        self._max_in_flight, self._wait_when_full = max_in_flight, wait_when_full
        self._metadata = tuple(metadata) or None
        self._wait_for_ready = wait_for_ready
        tls_settings = Tls.of(tls, root_certificates, certificate_chain, private_key, server_name)
        self._channel = sync_channel(target, tls_settings, options)
        self._batch = pb_grpc.OperationsStub(self._channel).Batch
        self._lock = threading.Lock()
        self._buffer: list[_Waiter] = []
        self._wake = threading.Event()
        self._room = threading.Condition(self._lock)  # calls waiting for in_flight < max_in_flight
        self._room_waiters = 0
        self._in_flight = 0
        self._closed = False
        self.batches = 0  # Batch calls sent, and the operations they carried: the batching's effect
        self.operations = 0
        self._batcher = threading.Thread(target=self._run, name="hsmlb-client-batcher", daemon=True)
        self._batcher.start()

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet answered (at most max_in_flight)."""
        return self._in_flight

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Fail queued calls with Cancelled, cancel the Batch calls in flight, stop the batcher."""
        self._closed = True
        with self._lock:
            queued, self._buffer = self._buffer, []
        for waiter in queued:
            waiter.error = Cancelled("the client was closed before the answer")
            waiter.event.set()
        self._wake.set()
        self._channel.close()

    def _call(self, field: str, request: Any, fields: dict[str, Any], timeout: float | None,
              traceparent: str) -> Any:
        if self._closed:
            raise Cancelled("the client is closed")
        request = build_request(field, request, fields)
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout if timeout else None
        waiter = _Waiter(field, request, deadline, traceparent)
        with self._lock:
            if self._closed:
                raise Cancelled("the client is closed")
            if self._in_flight >= self._max_in_flight:
                self._wait_for_room(deadline)
            self._in_flight += 1
            self._buffer.append(waiter)
            first = len(self._buffer) == 1
        try:
            if first:
                self._wake.set()
            # The Batch call's own deadline (its latest item's plus GRACE_S) ends the wait; this one is a backstop.
            if not waiter.event.wait(None if deadline is None else deadline + 2 * GRACE_S - time.monotonic()):
                waiter.abandoned = True
                raise DeadlineExceeded(f"no answer within the call's timeout of {timeout:g} s")
            if waiter.error is not None:
                raise waiter.error
            return result_of(field, waiter.reply)
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._room_waiters:
                    self._room.notify()

    def _wait_for_room(self, deadline: float | None) -> None:
        """Under the lock: wait until fewer than max_in_flight calls are in flight, or refuse (see the module)."""
        if not self._wait_when_full:
            raise ResourceExhausted(f"the client already has {self._max_in_flight} operations in flight "
                                    "(max_in_flight); wait_when_full=False refuses more at once")
        self._room_waiters += 1
        try:
            while self._in_flight >= self._max_in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not self._room.wait(left):
                    raise DeadlineExceeded(f"the call's timeout passed while {self._max_in_flight} operations "
                                           "were in flight (max_in_flight)")
        finally:
            self._room_waiters -= 1

    # -- the batcher ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            if self._linger and len(self._buffer) < self._max_batch:
                time.sleep(self._linger)
            with self._lock:
                batch = self._buffer[:self._max_batch]
                del self._buffer[:self._max_batch]
                if self._buffer:
                    self._wake.set()
            for lane in _lanes(batch):
                try:
                    self._send(lane)
                except Exception as exc:  # never let the batcher die: its callers would wait forever
                    self._fail(lane, InternalError(f"the client could not send the batch ({type(exc).__name__})"))

    def _send(self, waiters: list[_Waiter]) -> None:
        now = time.monotonic()
        request = pb.BatchRequest()
        add = request.items.add
        live: list[_Waiter] = []
        latest: float | None = now
        for waiter in waiters:
            if waiter.abandoned:
                continue
            deadline = waiter.deadline
            if deadline is None:
                latest = None
            elif latest is not None:
                latest = max(latest, deadline)
            live.append(waiter)
            add(request_id=len(live), timeout_ms=timeout_ms(deadline - now) if deadline is not None else 0,
                traceparent=waiter.traceparent, **{waiter.field: waiter.request})
        if not live:
            return
        rpc_timeout = None if latest is None else latest - now + GRACE_S
        future = self._batch.future(request, timeout=rpc_timeout, metadata=self._metadata,
                                    wait_for_ready=self._wait_for_ready)
        self.batches += 1
        self.operations += len(live)
        future.add_done_callback(partial(self._answered, live))

    def _answered(self, waiters: list[_Waiter], future: grpc.Future) -> None:
        try:
            reply = future.result()
        except grpc.RpcError as exc:
            self._fail(waiters, from_rpc_error(exc, FAILED))
            return
        except grpc.FutureCancelledError:
            self._fail(waiters, Cancelled("the client was closed before the answer"))
            return
        for item in reply.items:
            index = item.request_id - 1
            if 0 <= index < len(waiters):
                waiter = waiters[index]
                waiter.reply = item
                waiter.event.set()
        missing = [w for w in waiters if w.reply is None]
        if missing:
            self._fail(missing, InternalError("the daemon's Batch answer had no result for this operation"))

    @staticmethod
    def _fail(waiters: list[_Waiter], error: HsmlbError) -> None:
        for waiter in waiters:
            waiter.error = error_for(error.code, error.message)
            waiter.event.set()
