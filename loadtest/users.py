"""Locust users for hsmlb: gateway users on the SDK (batched), unary calls, and the one-op Stream.

`GatewayUser` is how a payment gateway talks to hsmlb: each Locust user is one concurrent
transaction, and the process's one `hsmlb_client.Client` coalesces the users' operations into
batched `Batch` calls (a batcher greenlet, 0.5 ms linger). Each operation still fires its own
request event (type `batched`), timed from the user's submission to its result, so linger and
queueing are in the latency.

Follows Locust's documented gRPC pattern (gevent-patched sync grpc, a thin wrapper that fires
`environment.events.request` per call), kept lean because Locust itself costs 250-400 us per
request here: requests are pre-built and primed once per process, the channel and stub are shared
by the process's users, and a call is one schedule lookup, one RPC and one event. The locustfile
must have run `grpc.experimental.gevent.init_gevent()` before any channel exists.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, ClassVar

import gevent.lock
import gevent.queue
import grpc
from locust import User, task

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from loadtest import ops, tls

if TYPE_CHECKING:  # imported where used: a profile without gateway users runs without the SDK installed
    import hsmlb_client

RPC_TIMEOUT_S = 5.0
STREAM_MESSAGE_TIMEOUT_MS = 5000  # the server answers a late message with DEADLINE_EXCEEDED, never hangs
STREAM_SLACK_S = 120.0  # a stream's own deadline: the run time plus this
_END = object()
SDK_MAX_BATCH = 256  # operations per Batch call at most
SDK_LINGER_S = 0.0005  # how long a batch waits for the other users' operations after its first
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class RequestFailed(Exception):
    """What Locust records for a failed request: the status or reason, never request data."""


class _Shared:
    """Per process and host: one channel and stub, request pools primed once (under a lock)."""

    _by_key: ClassVar[dict[tuple[str, tuple[str, ...]], _Shared]] = {}
    _clients: ClassVar[dict[str, hsmlb_client.Client]] = {}
    _lock = gevent.lock.Semaphore()

    def __init__(self, host: str, names: tuple[str, ...]) -> None:
        self.host = host
        self.channel = tls.channel(host)
        self.stub = pb_grpc.OperationsStub(self.channel)
        self.pools = ops.build_pools(list(names))
        ops.prime_pools(self.pools, lambda rpc, req: getattr(self.stub, rpc)(req, timeout=30))

    @classmethod
    def sdk(cls, host: str) -> hsmlb_client.Client:
        """The process's one SDK client per host: one batcher for all its gateway users."""
        import hsmlb_client

        with cls._lock:
            if host not in cls._clients:
                cls._clients[host] = hsmlb_client.Client(host, max_batch=SDK_MAX_BATCH, linger=SDK_LINGER_S,
                                                         timeout=RPC_TIMEOUT_S, **tls.sdk_kwargs())
            return cls._clients[host]

    @classmethod
    def get(cls, host: str, names: tuple[str, ...]) -> _Shared:
        key = (host, names)
        with cls._lock:
            if key not in cls._by_key:
                cls._by_key[key] = cls(host, names)
            return cls._by_key[key]


class HsmlbUser(User):
    """Common part: the op schedule, pacing and result reporting. Subclasses set `mix` and `rate_per_user`."""

    abstract = True
    mix: ClassVar[dict[str, float]] = {}
    rate_per_user: ClassVar[float | None] = None  # requests/s; None = no wait (closed loop)
    request_type: ClassVar[str] = "grpc"
    stream: ClassVar[bool] = False

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        exclude = ops.parse_exclude(getattr(environment.parsed_options, "exclude", None))
        runnable, _ = ops.resolve_mix(self.mix, stream=self.stream, exclude=exclude)
        self._names = tuple(sorted(runnable))
        self._schedule = ops.schedule(runnable)
        self._i = random.randrange(len(self._schedule))
        self._interval = 1.0 / self.rate_per_user if self.rate_per_user else 0.0
        self._next_at = time.monotonic()
        self._fire = environment.events.request.fire
        self._verifies = {name: ops.verifies(ops.OPS[name]) for name in self._names}

    def wait_time(self) -> float:
        """Constant pacing without catch-up bursts; 0 when unpaced."""
        if not self._interval:
            return 0.0
        now = time.monotonic()
        self._next_at = max(self._next_at + self._interval, now)
        return self._next_at - now

    def on_start(self) -> None:
        self._shared = _Shared.get(self.host, self._names)

    def _report(self, name: str, started: float, exc: Exception | None) -> None:
        self._fire(request_type=self.request_type, name=name, response_time=(time.perf_counter() - started) * 1000,
                   response_length=0, exception=exc, context=None)


def _rpc_failure(exc: grpc.RpcError) -> RequestFailed:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else ""
    return RequestFailed(f"{code.name if code else 'RPC'}: {details}")


class UnaryUser(HsmlbUser):
    """One unary RPC per task; reply `verified` must be true where the reply has it."""

    abstract = True

    def on_start(self) -> None:
        super().on_start()
        stub, pools = self._shared.stub, self._shared.pools
        self._calls = {n: (getattr(stub, ops.OPS[n].rpc), pools[n], self._verifies[n]) for n in self._names}

    @task
    def call(self) -> None:
        self._i += 1
        name = self._schedule[self._i % len(self._schedule)]
        method, pool, check = self._calls[name]
        request = pool[self._i % len(pool)]
        exc: Exception | None = None
        started = time.perf_counter()
        try:
            reply = method(request, timeout=RPC_TIMEOUT_S)
            if check and not reply.verified:
                exc = RequestFailed(f"not verified: {reply.reason}")
        except grpc.RpcError as rpc_error:
            exc = _rpc_failure(rpc_error)
        self._report(name, started, exc)


class StreamUser(HsmlbUser):
    """One `Stream` per user, one message in flight: send, wait for the matching request_id."""

    abstract = True
    request_type = "grpc-stream"
    stream = True
    _replies: Any = None

    def on_start(self) -> None:
        super().on_start()
        pools = self._shared.pools
        # Own copies, so setting request_id never races another user's pending message.
        self._messages = {n: [pb.StreamRequest(timeout_ms=STREAM_MESSAGE_TIMEOUT_MS, **{ops.OPS[n].stream_field: r})
                              for r in pools[n]] for n in self._names}
        self._fields = {n: ops.OPS[n].stream_field for n in self._names}
        self._request_id = 0
        self._open()

    def _open(self) -> None:
        self._outbox: gevent.queue.Queue = gevent.queue.Queue()
        run_time = getattr(self.environment.parsed_options, "run_time", None) or 600
        self._replies = self._shared.stub.Stream(iter(self._outbox.get, _END), timeout=run_time + STREAM_SLACK_S)

    def on_stop(self) -> None:
        if self._replies is not None:
            self._outbox.put(_END)
            self._replies.cancel()
            self._replies = None

    @task
    def call(self) -> None:
        if self._replies is None:
            self._open()  # the last stream broke; its failure is already counted
        self._i += 1
        self._request_id += 1
        name = self._schedule[self._i % len(self._schedule)]
        pool = self._messages[name]
        message = pool[self._i % len(pool)]
        message.request_id = self._request_id
        exc: Exception | None = None
        started = time.perf_counter()
        try:
            self._outbox.put(message)
            reply = next(self._replies)
            which = reply.WhichOneof("result")
            if reply.request_id != self._request_id:
                exc = RequestFailed("reply for another request_id")
            elif which == "status":
                exc = RequestFailed(f"{_CODE_NAMES.get(reply.status.code, reply.status.code)}: {reply.status.message}")
            elif self._verifies[name] and not getattr(reply, self._fields[name]).verified:
                exc = RequestFailed("not verified")
        except grpc.RpcError as rpc_error:
            exc = _rpc_failure(rpc_error)
            self.on_stop()
        except StopIteration:
            exc = RequestFailed("stream ended")
            self.on_stop()
        self._report(name, started, exc)


class GatewayUser(HsmlbUser):
    """One concurrent transaction of a gateway: its operations go through the process's SDK client, which
    batches them with the other users'. One request event per operation, type `batched`."""

    abstract = True
    request_type = "batched"
    stream = True  # the ops must exist as batch items (StreamRequest fields)

    def on_start(self) -> None:
        import hsmlb_client

        super().on_start()
        self._sdk_error = hsmlb_client.HsmlbError
        client, pools = _Shared.sdk(self.host), self._shared.pools
        self._calls = {n: (getattr(client, ops.OPS[n].stream_field), ops.sdk_messages(n, pools[n]), self._verifies[n])
                       for n in self._names}

    @task
    def call(self) -> None:
        self._i += 1
        name = self._schedule[self._i % len(self._schedule)]
        method, pool, check = self._calls[name]
        request = pool[self._i % len(pool)]
        exc: Exception | None = None
        started = time.perf_counter()
        try:
            reply = method(request)
            if check and not reply.verified:
                exc = RequestFailed(f"not verified: {reply.reason}")
        except self._sdk_error as error:
            exc = RequestFailed(f"{error.code.name}: {error.message}")
        self._report(name, started, exc)
