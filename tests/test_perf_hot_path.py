"""The lean hot path keeps its behaviour: Stream without a task per message, the pool's futures,
the worker link's batching and the wire format. Pure asyncio, scripted backends: no tokens, no
sockets, no timing assertions (figures come from bench/bench_daemon.py).
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmlb.api import stream as operations
from hsmlb.api.operations import OperationsServicer
from hsmlb.backends import pkcs11 as pkcs11_backend
from hsmlb.backends import wire
from hsmlb.config import Pkcs11NodeConfig
from hsmlb.errors import NodeFault
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.ops import NATIVE_CAPABILITIES, KeyInfo, Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.router import LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.router import Router
from hsmlb.v1 import hsmlb_pb2 as pb

AES = KeyInfo("alias/zek", "alias/zek", "AES", "ABCDEF", frozenset({"encrypt", "decrypt"}))
PLAIN = "6BC1BEE22E409F96E93D7E117393172A"
CIPHER = bytes.fromhex("3AD77BB40D7A3660A89ECAF32466EF97")


class FutureBackend:
    """Answers through futures, as the PKCS#11 link does: `outcome` at once, or when the test says."""

    kind = "fake"

    def __init__(self, name: str, outcome: Any = None) -> None:
        self.name, self.state = name, "up"
        self.capabilities = NATIVE_CAPABILITIES
        self.on_change: list[Any] = []
        self.keys = {AES.alias: AES}
        self.outcome = outcome  # None: held in `pending` until answer()
        self.pending: list[asyncio.Future[Any]] = []

    def perform(self, op: Operation, slot: int) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if isinstance(self.outcome, BaseException):
            future.set_exception(self.outcome)
        elif self.outcome is not None:
            future.set_result(self.outcome)
        else:
            self.pending.append(future)
        return future

    def answer(self, result: Any = CIPHER) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.set_result(result)


class Context:
    def time_remaining(self) -> float | None:
        return None


class Requests:
    """A Stream's request iterator fed by the test; counts what the servicer has pulled."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.StreamRequest | None] = asyncio.Queue()
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[pb.StreamRequest]:
        return self

    async def __anext__(self) -> pb.StreamRequest:
        request = await self.queue.get()
        if request is None:
            raise StopAsyncIteration
        self.pulled += 1
        return request


def _router(*backends: FutureBackend) -> Router:
    members = [Member(NodePool(b, size=4, queue_limit=256), NodeHealth(b.name, HealthPolicy(), 0.0),
                      NodeBreaker(b.name, asyncio.get_running_loop().time)) for b in backends]
    return Router(Cluster(members), LeastOutstanding(random.Random(5)))


def _encrypt(request_id: int, key: str = AES.alias, timeout_ms: int = 0) -> pb.StreamRequest:
    attributes = pb.EncryptionDecryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))
    body = pb.EncryptDataRequest(key_identifier=key, plain_text=PLAIN, encryption_attributes=attributes)
    return pb.StreamRequest(request_id=request_id, timeout_ms=timeout_ms, encrypt_data=body)


async def _collect(stream: AsyncIterator[pb.StreamResponse], into: list[pb.StreamResponse]) -> None:
    async for response in stream:
        into.append(response)


async def _settle(turns: int = 10) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def _until(done: Callable[[], bool], step: Callable[[], object] = lambda: None, turns: int = 10_000,
                 pause_s: float = 0.0) -> None:
    """Run loop turns (calling `step` before each) until done(): bounded in count, so a regression fails
    here instead of hanging until pytest's timeout."""
    for _ in range(turns):
        if done():
            return
        step()
        await asyncio.sleep(pause_s)
    assert done(), f"condition not reached in {turns} loop turns"


# -- Stream ---------------------------------------------------------------------------------------
async def test_stream_dispatches_without_a_task_per_message_and_matches_ids():
    backend = FutureBackend("a")
    router = _router(backend)
    requests, responses = Requests(), []
    writer = asyncio.ensure_future(_collect(OperationsServicer(router).Stream(requests, Context()), responses))
    tasks_before = len(asyncio.all_tasks())
    for i in range(200):
        requests.queue.put_nowait(_encrypt(i))
    await _until(lambda: len(backend.pending) >= 4 and requests.pulled >= 200)  # 4 busy, the rest queued
    assert len(asyncio.all_tasks()) <= tasks_before + 2  # the reader and nothing per message
    await _until(lambda: len(responses) >= 200, backend.answer)
    requests.queue.put_nowait(None)
    await asyncio.wait_for(writer, 5)
    assert sorted(r.request_id for r in responses) == list(range(200))
    assert {r.encrypt_data.cipher_text for r in responses} == {CIPHER.hex().upper()}
    assert router.cluster.members[0].pool.stats.ops_ok == 200


async def test_stream_answers_each_bad_message_with_its_own_status():
    router = _router(FutureBackend("a", outcome=CIPHER))
    requests, responses = Requests(), []
    for request in (_encrypt(1), pb.StreamRequest(request_id=2), _encrypt(3, key="alias/nope"), _encrypt(4)):
        requests.queue.put_nowait(request)
    requests.queue.put_nowait(None)
    await asyncio.wait_for(_collect(OperationsServicer(router).Stream(requests, Context()), responses), 5)
    by_id = {r.request_id: r for r in responses}
    assert sorted(by_id) == [1, 2, 3, 4]
    assert by_id[1].WhichOneof("result") == by_id[4].WhichOneof("result") == "encrypt_data"
    assert by_id[2].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id[3].status.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_stream_stops_reading_at_its_in_flight_cap(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(operations, "MAX_STREAM_IN_FLIGHT", 3)
    backend = FutureBackend("a")
    requests, responses = Requests(), []
    writer = asyncio.ensure_future(_collect(OperationsServicer(_router(backend)).Stream(requests, Context()),
                                            responses))
    for i in range(10):
        requests.queue.put_nowait(_encrypt(i))
    await _settle()
    assert requests.pulled == 3  # back-pressure: the client's further messages stay in gRPC's flow control
    await _until(lambda: len(responses) >= 10, backend.answer)
    requests.queue.put_nowait(None)
    await asyncio.wait_for(writer, 5)
    assert sorted(r.request_id for r in responses) == list(range(10))


async def test_stream_timeout_ms_answers_a_running_op_once():
    backend = FutureBackend("a")
    router = _router(backend)
    requests, responses = Requests(), []
    writer = asyncio.ensure_future(_collect(OperationsServicer(router).Stream(requests, Context()), responses))
    requests.queue.put_nowait(_encrypt(7, timeout_ms=20))
    requests.queue.put_nowait(_encrypt(8))
    # the op started (backend.pending) and never returned: its timeout_ms answers it
    await _until(lambda: bool(responses), turns=500, pause_s=0.01)
    assert len(backend.pending) == 2
    assert [(r.request_id, r.status.code) for r in responses] == [(7, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])]
    backend.answer()  # the late result is dropped; the node's health still counts the success
    requests.queue.put_nowait(None)
    await asyncio.wait_for(writer, 5)
    assert [r.request_id for r in responses] == [7, 8]
    assert responses[1].encrypt_data.cipher_text == CIPHER.hex().upper()
    assert router.cluster.members[0].pool.stats.ops_ok == 2


async def test_stream_node_fault_is_classified_and_retried_on_another_node():
    faulty, good = FutureBackend("a", outcome=NodeFault("device error")), FutureBackend("b", outcome=CIPHER)
    router = _router(faulty, good)
    requests, responses = Requests(), []
    for i in range(20):
        requests.queue.put_nowait(_encrypt(i))
    requests.queue.put_nowait(None)
    await asyncio.wait_for(_collect(OperationsServicer(router).Stream(requests, Context()), responses), 10)
    assert sorted(r.request_id for r in responses) == list(range(20))
    assert all(r.WhichOneof("result") == "encrypt_data" for r in responses)
    a, b = router.cluster.members
    assert a.retries_from > 0 and a.pool.stats.ops_failed == a.retries_from and b.pool.stats.ops_ok == 20


# -- pool -----------------------------------------------------------------------------------------
class CoroutineBackend(FutureBackend):
    """perform() returns a coroutine, as an HTTP backend does."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.cancelled = 0

    async def perform(self, op: Operation, slot: int) -> Any:  # type: ignore[override]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_pool_runs_coroutine_backends_as_tasks_and_cancels_them_with_the_caller():
    backend = CoroutineBackend("apc")
    pool = NodePool(backend, size=2, queue_limit=4)
    running = pool.perform(Operation(OpKind.RANDOM, None, (8,)))
    await _settle()
    assert pool.in_use == 1
    running.cancel()
    await _settle()
    assert backend.cancelled == 1 and pool.in_use == 0 and pool.load == 0


# -- worker link ----------------------------------------------------------------------------------
class Transport:
    def __init__(self) -> None:
        self.frames: list[list[tuple]] = []

    def write(self, data: bytes) -> None:
        self.frames.extend(wire.FrameDecoder().feed(data))

    def is_closing(self) -> bool:
        return False


class Link:
    def __init__(self) -> None:
        self.transport = Transport()


def _linked_backend() -> tuple[pkcs11_backend.Pkcs11Backend, Transport]:
    config = Pkcs11NodeConfig(name="n", module="/nonexistent/libsofthsm2.so", token_label="t", pin_env="PIN")
    backend = pkcs11_backend.Pkcs11Backend(config)
    link = Link()
    backend._loop, backend._link, backend._state = asyncio.get_running_loop(), link, "up"  # type: ignore[assignment]
    return backend, link.transport


def _op() -> Operation:
    return Operation(OpKind.ENCRYPT, AES.alias, ("ECB", b"", bytes(16)))


async def test_link_sends_a_loop_turn_in_one_write_and_paces_wake_ups(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pkcs11_backend, "WAKE_INTERVAL_S", 0.2)
    backend, transport = _linked_backend()
    first = [backend.perform(_op(), slot) for slot in range(5)]
    await _settle(2)
    assert [len(frame) for frame in transport.frames] == [5]  # one turn, one write
    busy = backend.perform(_op(), 0)
    await _settle(2)
    assert [len(frame) for frame in transport.frames] == [5, 1]  # the worker is awake: no waiting
    backend._on_frame([(request[0], None, CIPHER) for frame in transport.frames for request in frame])
    assert all(f.result() == CIPHER for f in [*first, busy])
    idle = backend.perform(_op(), 0)  # the worker is idle and was woken just now: this one waits
    await _settle(3)
    assert len(transport.frames) == 2 and not idle.done()
    await _until(lambda: len(transport.frames) == 3, turns=500, pause_s=0.01)  # the paced wake-up
    assert [len(frame) for frame in transport.frames] == [5, 1, 1]


# -- wire -----------------------------------------------------------------------------------------
def test_wire_uses_marshal_and_falls_back_to_pickle_for_other_types():
    plain = [(1, 0, "encrypt", "alias/zek", ("ECB", b"", bytes(16)), 0.0)]
    typed = [(2, None, OpKind.ENCRYPT)]  # marshal refuses an enum
    plain_frame, typed_frame = wire.encode(plain), wire.encode(typed)
    assert not wire.HEADER.unpack_from(plain_frame)[0] & wire.PICKLED
    assert wire.HEADER.unpack_from(typed_frame)[0] & wire.PICKLED
    decoded = wire.FrameDecoder().feed(plain_frame + typed_frame)
    assert decoded == [plain, typed] and decoded[1][0][2] is OpKind.ENCRYPT


async def test_stream_answers_an_op_its_backend_cancelled():
    """A backend that gives up on an op (cancels its future) must not leave the message unanswered."""
    backend = FutureBackend("a")
    router = _router(backend)
    requests, responses = Requests(), []
    writer = asyncio.ensure_future(_collect(OperationsServicer(router).Stream(requests, Context()), responses))
    requests.queue.put_nowait(_encrypt(1))
    await _until(lambda: len(backend.pending) == 1)
    backend.pending.pop().cancel()
    requests.queue.put_nowait(None)
    await asyncio.wait_for(writer, 5)
    assert [(r.request_id, r.status.code) for r in responses] == [(1, grpc.StatusCode.UNAVAILABLE.value[0])]


def test_bench_batch_prints_the_p3_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The coordinator reruns bench/bench_batch.py for the issue's P3: it must say the two figures and their goals."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import bench_batch
    finally:
        sys.path.pop(0)
    args = bench_batch.parse_args(["--items", "16", "64"])
    figure = {"median": 90.0, "min": 80.0, "max": 110.0}
    bench_batch.p3(args, {"batch64.daemon[all].cpu_us_per_op": figure,
                          "unary.daemon[all].ratio_vs_echo": {"median": 1.5, "min": 1.4, "max": 1.6}})
    out = capsys.readouterr().out
    assert "P3 daemon[all]: batched (64 items/message) 90.0 [80.0-110.0] us CPU/op (goal <= 60)" in out
    assert "unary 1.50x [1.40-1.60] the echo's CPU/call (goal <= 1.3)" in out
