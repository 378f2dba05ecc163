"""Load client for bench_daemon.py and bench_batch.py: one phase (unary, stream, batch or paced) against one server.

Protocol on stdio, so the parent can read the server's CPU counters exactly around the measured part:
connect and warm up, print READY, wait for a line on stdin, run the phase for --seconds (then
drain what is outstanding), print one JSON line with the figures, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import uvloop

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

KEY = "alias/zek-aes128"
PLAIN = "6BC1BEE22E409F96E93D7E117393172A"  # NIST SP 800-38A F.1.1 block 1
CIPHER = "3AD77BB40D7A3660A89ECAF32466EF97"  # ... and its AES-128 ECB encryption
RPC_TIMEOUT_S = 10.0
DRAIN_S = 30.0  # how long a stream may take to answer what is outstanding when the phase ends
GO_TIMEOUT_S = 120.0


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    wrong: int = 0  # answered, but not with the expected cipher text
    latencies: list[float] = field(default_factory=list)

    def record(self, cipher_text: str | None, expect: str | None, seconds: float) -> None:
        if cipher_text is None:
            self.errors += 1
        elif expect is not None and cipher_text.upper() != expect:
            self.wrong += 1
        else:
            self.ok += 1
            self.latencies.append(seconds)

    def add(self, other: Tally) -> None:
        self.ok, self.errors, self.wrong = self.ok + other.ok, self.errors + other.errors, self.wrong + other.wrong
        self.latencies.extend(other.latencies)


@dataclass
class PhaseResult:
    mode: str
    ops: int
    errors: int
    wrong: int
    elapsed_s: float
    ops_per_s: float
    p50_us: float
    p99_us: float
    cpu_s: float  # this load generator's own CPU (all threads) during the measured phase


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request() -> pb.EncryptDataRequest:
    attributes = pb.EncryptionDecryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))
    return pb.EncryptDataRequest(key_identifier=KEY, plain_text=PLAIN, encryption_attributes=attributes)


async def unary_phase(stub: pb_grpc.OperationsStub, seconds: float, concurrency: int, expect: str | None) -> Tally:
    tally = Tally()
    req = request()
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                reply = await stub.EncryptData(req, timeout=RPC_TIMEOUT_S)
                cipher_text: str | None = reply.cipher_text
            except grpc.aio.AioRpcError:
                cipher_text = None
            tally.record(cipher_text, expect, time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


async def _one_stream(stub: pb_grpc.OperationsStub, seconds: float, window: int, expect: str | None,
                      tally: Tally) -> None:
    body = request()
    call = stub.Stream(timeout=seconds + DRAIN_S + RPC_TIMEOUT_S)
    slots = asyncio.Semaphore(window)
    sent: dict[int, float] = {}
    ids = itertools.count(1)
    stop_at = time.perf_counter() + seconds

    async def sender() -> None:
        while time.perf_counter() < stop_at:
            await slots.acquire()
            request_id = next(ids)
            sent[request_id] = time.perf_counter()
            await call.write(pb.StreamRequest(request_id=request_id, encrypt_data=body))
        await call.done_writing()

    sending = asyncio.ensure_future(sender())
    try:
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            started = sent.pop(reply.request_id, None)
            if started is None:
                tally.errors += 1
                continue
            cipher_text = reply.encrypt_data.cipher_text if reply.WhichOneof("result") == "encrypt_data" else None
            tally.record(cipher_text, expect, time.perf_counter() - started)
            slots.release()
    except grpc.aio.AioRpcError:
        pass
    finally:
        await _end(call, sending, sent, tally)


async def _end(call: Any, sending: asyncio.Future[None], sent: dict[int, float], tally: Tally) -> None:
    """A stream's end: stop its sender, count every op sent and never answered as an error, cancel the call."""
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    tally.errors += len(sent)
    call.cancel()


async def _read_batches(call: Any, sender: Coroutine[Any, Any, None], sent: dict[int, float], expect: str | None,
                        tally: Tally, answered: Callable[[], None] | None = None) -> None:
    """Run a StreamBatch's `sender` while reading its answers: each item's latency from its time in `sent`;
    `answered` after each message; at the end, every item sent and never answered counts as an error."""
    sending = asyncio.ensure_future(sender)
    try:
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            now = time.perf_counter()
            for item in reply.items:
                started = sent.pop(item.request_id, None)
                if started is None:
                    tally.errors += 1
                    continue
                cipher_text = item.encrypt_data.cipher_text if item.WhichOneof("result") == "encrypt_data" else None
                tally.record(cipher_text, expect, now - started)
            if answered is not None:
                answered()
    except grpc.aio.AioRpcError:
        pass
    finally:
        await _end(call, sending, sent, tally)


async def _one_batch_stream(stub: pb_grpc.OperationsStub, seconds: float, window: int, items: int,
                            expect: str | None, tally: Tally) -> None:
    """StreamBatch: messages of `items` operations, at most `window` operations outstanding."""
    body = request()
    call = stub.StreamBatch(timeout=seconds + DRAIN_S + RPC_TIMEOUT_S)
    sent: dict[int, float] = {}
    room = asyncio.Event()
    ids = itertools.count(1)
    stop_at = time.perf_counter() + seconds

    async def sender() -> None:
        while time.perf_counter() < stop_at:
            if len(sent) + items > window:
                room.clear()
                await room.wait()
                continue
            message = pb.BatchRequest()
            add = message.items.add
            now = time.perf_counter()
            for _ in range(items):
                request_id = next(ids)
                sent[request_id] = now
                add(request_id=request_id, encrypt_data=body)
            await call.write(message)
        await call.done_writing()

    def answered() -> None:
        if len(sent) + items <= window:
            room.set()

    await _read_batches(call, sender(), sent, expect, tally, answered)


async def _one_paced_stream(stub: pb_grpc.OperationsStub, seconds: float, rate: float, items: int,
                            expect: str | None, tally: Tally) -> None:
    """StreamBatch, open loop: a message of `items` operations every items/rate seconds, on schedule whatever
    is outstanding; each latency runs from the message's scheduled time (no coordinated omission)."""
    body = request()
    call = stub.StreamBatch(timeout=seconds + DRAIN_S + RPC_TIMEOUT_S)
    sent: dict[int, float] = {}
    ids = itertools.count(1)
    interval = items / rate
    messages = max(1, int(seconds / interval))
    start = time.perf_counter()

    async def sender() -> None:
        for n in range(messages):
            due = start + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = pb.BatchRequest()
            add = message.items.add
            for _ in range(items):
                request_id = next(ids)
                sent[request_id] = due
                add(request_id=request_id, encrypt_data=body)
            await call.write(message)
        await call.done_writing()

    await _read_batches(call, sender(), sent, expect, tally)


async def paced_phase(stub: pb_grpc.OperationsStub, seconds: float, streams: int, rate: float, items: int,
                      expect: str | None) -> Tally:
    """Open loop at `rate` operations/s in all, over `streams` StreamBatch streams: latency below saturation."""
    tally = Tally()
    await asyncio.gather(*(_one_paced_stream(stub, seconds, rate / streams, items, expect, tally)
                           for _ in range(streams)))
    return tally


async def stream_phase(stub: pb_grpc.OperationsStub, seconds: float, streams: int, window: int,
                       expect: str | None, items: int = 0) -> Tally:
    tally = Tally()
    per_stream = max(1, window // streams)
    if items:
        await asyncio.gather(*(_one_batch_stream(stub, seconds, max(per_stream, items), items, expect, tally)
                               for _ in range(streams)))
    else:
        await asyncio.gather(*(_one_stream(stub, seconds, per_stream, expect, tally) for _ in range(streams)))
    return tally


async def run_phase(stub: pb_grpc.OperationsStub, args: argparse.Namespace, seconds: float) -> Tally:
    expect = CIPHER if args.check else None
    if args.mode == "unary":
        coro = unary_phase(stub, seconds, args.concurrency, expect)
    elif args.mode == "paced":
        coro = paced_phase(stub, seconds, args.streams, args.rate, args.items, expect)
    else:
        coro = stream_phase(stub, seconds, args.streams, args.window, expect, args.items if args.mode == "batch" else 0)
    return await asyncio.wait_for(coro, seconds + DRAIN_S + 2 * RPC_TIMEOUT_S)


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """Plaintext, or (m)TLS with --ca and optionally a client --cert/--key (a daemon with `tls:`)."""
    if not getattr(args, "ca", None):
        return grpc.aio.insecure_channel(args.address)
    from hsmlb.auth.tls import channel_credentials

    return grpc.aio.secure_channel(args.address, channel_credentials(args.ca, args.cert, args.key))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with _channel(args) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.OperationsStub(channel)
        warm = await run_phase(stub, args, args.warmup)
        if warm.ok == 0:
            raise SystemExit(f"load: warm-up got no good answer from {args.address} "
                             f"({warm.errors} errors, {warm.wrong} wrong)")
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), GO_TIMEOUT_S)
        started, cpu_started = time.perf_counter(), time.process_time()
        tally = await run_phase(stub, args, args.seconds)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    result = PhaseResult(mode=args.mode, ops=tally.ok, errors=tally.errors, wrong=tally.wrong, elapsed_s=elapsed,
                         ops_per_s=tally.ok / elapsed, p50_us=percentile(tally.latencies, 0.50) * 1e6,
                         p99_us=percentile(tally.latencies, 0.99) * 1e6, cpu_s=cpu)
    return asdict(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--mode", choices=("unary", "stream", "batch", "paced"), required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32, help="unary: calls in flight")
    parser.add_argument("--streams", type=int, default=2, help="stream: concurrent streams")
    parser.add_argument("--window", type=int, default=128, help="stream: requests outstanding, over all streams")
    parser.add_argument("--items", type=int, default=16, help="batch, paced: operations per StreamBatch message")
    parser.add_argument("--rate", type=float, default=5000.0, help="paced: operations/s offered, over all streams")
    parser.add_argument("--ca", help="TLS: the CA file that signed the server's certificate")
    parser.add_argument("--cert", help="mTLS: the client certificate file")
    parser.add_argument("--key", help="mTLS: the client key file")
    parser.add_argument("--check", action="store_true", help="count answers that are not the NIST cipher text as wrong")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
