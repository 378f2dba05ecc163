"""The project's own lean load client: N Streams x K requests in flight (or a target rate), grpc.aio on uvloop.

Why: Locust spends 250-400 us of CPU per request on this machine, so two cores cannot offer
10,000 TPS through it. This client keeps K messages in flight per stream on one event loop (about
100 us of CPU per message, mostly grpc.aio), uses the same pre-built request pools and the same
verdict, and is what `run --profile burst` drives.

    python -m loadtest stream --target 127.0.0.1:50051 --seconds 10 --streams 4 --in-flight 32
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from loadtest import ops, tls, verdict

MESSAGE_TIMEOUT_MS = 5000  # per message: the server answers a late one with DEADLINE_EXCEEDED
DRAIN_S = 10.0  # how long a stream may take to answer what is outstanding when sending stops
CONNECT_TIMEOUT_S = 30.0
PRIME_TIMEOUT_S = 30.0


@dataclass
class Tally:
    ok: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)  # per class, ms
    ops: dict[str, int] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.failures += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


@dataclass(frozen=True)
class Plan:
    """What every stream sends: StreamRequests per op (request_id set at send), the schedule, checks."""

    messages: dict[str, list[Any]]
    schedule: list[str]
    fields: dict[str, str]
    verifies: dict[str, bool]
    klass: dict[str, str]


def prepare(target: str, mix: Mapping[str, float], exclude: tuple[str, ...] = ()) -> tuple[Plan, list[str]]:
    """Build and prime the pools over a plain sync channel, before the event loop starts."""
    runnable, notices = ops.resolve_mix(mix, stream=True, exclude=exclude)
    names = sorted(runnable)
    pools = ops.build_pools(names)
    with tls.channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        stub = pb_grpc.OperationsStub(channel)
        ops.prime_pools(pools, lambda rpc, req: getattr(stub, rpc)(req, timeout=PRIME_TIMEOUT_S))
    specs = {n: ops.OPS[n] for n in names}
    messages = {n: [pb.StreamRequest(timeout_ms=MESSAGE_TIMEOUT_MS, **{specs[n].stream_field: r}) for r in pools[n]]
                for n in names}
    plan = Plan(messages, ops.schedule(runnable), {n: s.stream_field for n, s in specs.items()},
                {n: ops.verifies(s) for n, s in specs.items()}, {n: s.klass for n, s in specs.items()})
    return plan, notices


async def _one_stream(stub: pb_grpc.OperationsStub, plan: Plan, offset: int, seconds: float, in_flight: int,
                      rate: float | None, tally: Tally) -> None:
    call = stub.Stream(timeout=seconds + DRAIN_S + MESSAGE_TIMEOUT_MS / 1000)
    slots = asyncio.Semaphore(in_flight)
    sent: dict[int, tuple[float, str]] = {}
    ids = itertools.count(1)
    started = time.perf_counter()
    stop_at = started + seconds
    schedule, length = plan.schedule, len(plan.schedule)

    async def writer() -> None:
        i = offset
        while (now := time.perf_counter()) < stop_at:
            if rate is not None and i - offset >= (now - started) * rate:
                await asyncio.sleep(0.001)  # ahead of the target rate
                continue
            await slots.acquire()
            i += 1
            name = schedule[i % length]
            pool = plan.messages[name]
            message = pool[i % len(pool)]
            request_id = next(ids)
            message.request_id = request_id
            sent[request_id] = (time.perf_counter(), name)
            await call.write(message)  # grpc.aio serializes here, so reusing `message` later is safe
        await call.done_writing()

    sending = asyncio.ensure_future(writer())
    perf = time.perf_counter
    try:
        while True:
            reply = await call.read()
            if reply is grpc.aio.EOF:
                break
            entry = sent.pop(reply.request_id, None)
            if entry is None:
                tally.fail("reply for an unknown request_id")
                continue
            slots.release()
            t0, name = entry
            which = reply.WhichOneof("result")
            if which == "status":
                tally.fail(f"status {reply.status.code}: {reply.status.message}")
            elif plan.verifies[name] and not getattr(reply, plan.fields[name]).verified:
                tally.fail(f"{name}: not verified")
            else:
                tally.ok += 1
                tally.latencies[plan.klass[name]].append((perf() - t0) * 1000)
            tally.ops[name] = tally.ops.get(name, 0) + 1
    except grpc.aio.AioRpcError as exc:
        tally.fail(f"stream {exc.code().name}")
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        for _ in range(len(sent)):  # sent, never answered
            tally.fail("no answer")
        call.cancel()


async def drive(target: str, plan: Plan, seconds: float, streams: int, in_flight: int,
                rate: float | None = None) -> Tally:
    """Run the streams for `seconds` (then drain); every stream gets 1/N of the rate."""
    tally = Tally(latencies={k: [] for k in set(plan.klass.values())})
    per_stream_rate = rate / streams if rate else None
    async with tls.aio_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        stub = pb_grpc.OperationsStub(channel)
        runs = (_one_stream(stub, plan, k * 97, seconds, in_flight, per_stream_rate, tally) for k in range(streams))
        await asyncio.wait_for(asyncio.gather(*runs), seconds + 2 * DRAIN_S + MESSAGE_TIMEOUT_MS / 1000)
    return tally


def summarize(tally: Tally, seconds: float) -> verdict.RunSummary:
    return verdict.RunSummary(requests=tally.ok + tally.failures, failures=tally.failures, duration_s=seconds,
                              latency={k: verdict.latency_from_samples(v) for k, v in tally.latencies.items() if v},
                              ops=dict(tally.ops))


def run(target: str, mix: Mapping[str, float], seconds: float, streams: int, in_flight: int,
        rate: float | None = None, warmup_s: float = 1.0,
        exclude: tuple[str, ...] = ()) -> tuple[verdict.RunSummary, Tally, list[str], float]:
    """Prime, warm up (not measured), measure. Returns the summary, the tally, notices and client CPU seconds."""
    try:
        import uvloop

        loop_run: Any = uvloop.run
    except ImportError:
        loop_run = asyncio.run
    plan, notices = prepare(target, mix, exclude)
    if warmup_s > 0:
        loop_run(drive(target, plan, warmup_s, streams, in_flight, rate))
    cpu0 = sum(os.times()[:2])
    started = time.perf_counter()
    tally = loop_run(drive(target, plan, seconds, streams, in_flight, rate))
    elapsed = time.perf_counter() - started
    cpu = sum(os.times()[:2]) - cpu0
    # The window is the sending time; answers drained after it still count (they were offered in it).
    return summarize(tally, min(elapsed, seconds) if elapsed > 0 else seconds), tally, notices, cpu
