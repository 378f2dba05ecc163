"""The own asyncio load client on the SDK: `hsmlb_client.AsyncClient`, closed loop, on uvloop.

Why: the issue's P2 target (>= 20,000 ops/s at p99 <= 10 ms) is about what a service written
against the SDK gets. N tasks (streams x in_flight) each await one operation at a time, as N
concurrent transactions would; the client batches what is ready in the same event-loop turn over
`streams` StreamBatch streams. Same request pools, verdict and report shape as stream_client.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import hsmlb_client

from loadtest import ops, stream_client, tls
from loadtest.stream_client import Plan, Tally

CALL_TIMEOUT_S = stream_client.MESSAGE_TIMEOUT_MS / 1000


async def drive(target: str, plan: Plan, seconds: float, streams: int, concurrency: int) -> tuple[Tally, dict]:
    tally = Tally(latencies={k: [] for k in set(plan.klass.values())})
    # The pools hold StreamRequests (stream_client's plan); the SDK takes the operation's own request.
    requests = {n: ops.sdk_messages(n, [getattr(m, plan.fields[n]) for m in pool]) for n, pool in plan.messages.items()}
    schedule, length = plan.schedule, len(plan.schedule)
    perf = time.perf_counter
    stop_at = perf() + seconds
    async with hsmlb_client.AsyncClient(target, streams=streams, max_in_flight=max(4096, concurrency),
                                        timeout=CALL_TIMEOUT_S, **tls.sdk_kwargs()) as client:
        methods = {n: getattr(client, f) for n, f in plan.fields.items()}

        async def transaction(offset: int) -> None:
            i = offset
            while perf() < stop_at:
                i += 1
                name = schedule[i % length]
                pool = requests[name]
                t0 = perf()
                try:
                    reply = await methods[name](pool[i % len(pool)])
                except hsmlb_client.HsmlbError as error:
                    tally.fail(f"{error.code.name}: {error.message}")
                else:
                    if plan.verifies[name] and not reply.verified:
                        tally.fail(f"{name}: not verified")
                    else:
                        tally.ok += 1
                        tally.latencies[plan.klass[name]].append((perf() - t0) * 1000)
                tally.ops[name] = tally.ops.get(name, 0) + 1

        await asyncio.gather(*(transaction(k * 97) for k in range(concurrency)))
        shape = {"batches": client.batches, "operations": client.operations}
    return tally, shape


def run(target: str, mix: Mapping[str, float], seconds: float, streams: int, in_flight: int,
        warmup_s: float = 1.0, exclude: tuple[str, ...] = ()) -> tuple[Any, Tally, list[str], float, dict]:
    """Prime, warm up (not measured), measure: streams x in_flight concurrent transactions.
    Returns the summary, the tally, notices, client CPU seconds and the batching figures."""
    try:
        import uvloop

        loop_run: Any = uvloop.run
    except ImportError:
        loop_run = asyncio.run
    plan, notices = stream_client.prepare(target, mix, exclude)
    concurrency = streams * in_flight
    if warmup_s > 0:
        loop_run(drive(target, plan, warmup_s, streams, concurrency))
    cpu0 = sum(os.times()[:2])
    started = time.perf_counter()
    tally, shape = loop_run(drive(target, plan, seconds, streams, concurrency))
    elapsed = time.perf_counter() - started
    cpu = sum(os.times()[:2]) - cpu0
    summary = stream_client.summarize(tally, min(elapsed, seconds) if elapsed > 0 else seconds)
    return summary, tally, notices, cpu, shape
