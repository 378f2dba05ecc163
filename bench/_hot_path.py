"""The daemon's own per-operation cost on the batched path, in one process, without gRPC or tokens.

A StreamCall (as StreamBatch uses it) over the real Router, Cluster, NodePools and balancer, with
four nodes whose backend answers every request of a loop turn in one batch on the next turn, as the
token worker link does. Each round dispatches --items EncryptData items (decoded from a real
BatchRequest), lets them complete, and takes the responses as the writer would (one BatchResponse,
serialized). Prints CPU us per operation; with --profile, the cProfile top functions. --filters puts
the seam's telemetry filters on it as the daemon builds them (metrics, tracing at 1% whose export never
runs in so short a run, or both: `default`); bench/seam_instructions.py counts what they cost.

    python bench/_hot_path.py [--items 64] [--ops 200000] [--profile] [--filters none|metrics|tracing|default]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

import uvloop

from hsmlb.api.stream import MAX_RESPONSE_ITEMS, StreamCall
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.ops import NATIVE_CAPABILITIES, KeyInfo, Operation
from hsmlb.pool import NodePool
from hsmlb.router import LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.router import Router

try:
    from hsmlb.server import tune_gc
except ImportError:  # an older revision run for comparison (PYTHONPATH=its tree): it did not tune the collector
    def tune_gc() -> None:
        return None
from hsmlb.v1 import hsmlb_pb2 as pb

AES = KeyInfo("alias/zek-aes128", "alias/zek-aes128", "AES", "ABCDEF", frozenset({"encrypt", "decrypt"}))
PLAIN = "6BC1BEE22E409F96E93D7E117393172A"
CIPHER = bytes.fromhex("3AD77BB40D7A3660A89ECAF32466EF97")


class BatchingBackend:
    """Answers what a loop turn sent on the next turn, all at once, like Pkcs11Backend's link."""

    kind = "fake"

    def __init__(self, name: str) -> None:
        self.name, self.state = name, "up"
        self.capabilities = NATIVE_CAPABILITIES
        self.on_change: list[Any] = []
        self.keys = {AES.alias: AES}
        self._outbox: list[asyncio.Future[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def perform(self, op: Operation, slot: int) -> asyncio.Future[Any]:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        future = loop.create_future()
        if not self._outbox:
            loop.call_soon(self._answer)
        self._outbox.append(future)
        return future

    def _answer(self) -> None:
        batch, self._outbox = self._outbox, []
        for future in batch:
            if not future.done():
                future.set_result(CIPHER)


def build_router(nodes: int, pool_size: int) -> Router:
    members = []
    for index in range(nodes):
        backend = BatchingBackend(f"node-{index}")
        members.append(Member(pool=NodePool(backend, size=pool_size, queue_limit=100_000),  # type: ignore[arg-type]
                              health=NodeHealth(backend.name, HealthPolicy(), time.monotonic()),
                              breaker=NodeBreaker(backend.name, time.monotonic)))
    return Router(Cluster(members), LeastOutstanding())


def telemetry_chain(router: Router, filters: str) -> tuple[Any, Any]:
    """(FilterChain, Call) for `filters`, or (None, None) for none: the seam as `hsmlb serve` builds it."""
    if filters == "none":
        return None, None
    from hsmlb.api.filters import Call, FilterChain
    from hsmlb.telemetry.config import TracingConfig
    from hsmlb.telemetry.metrics import Metrics, MetricsFilter
    from hsmlb.telemetry.tracing import build_tracing

    chain: list[Any] = []
    if filters in ("metrics", "default"):
        chain.append(MetricsFilter(Metrics(router)))
    if filters in ("tracing", "default"):  # a collector that is never reached: no export in the run
        tracing = build_tracing(TracingConfig(endpoint="http://127.0.0.1:9", export_interval_s=60), router)
        assert tracing is not None
        chain.append(tracing.filter)
    return FilterChain(chain), Call("/hsmlb.v1.Operations/StreamBatch", "ipv4:127.0.0.1:5555")


async def run(items: int, ops: int, nodes: int, pool_size: int, filters: str = "none") -> float:
    router = build_router(nodes, pool_size)
    loop = asyncio.get_running_loop()
    work = StreamCall(router, loop, None, *telemetry_chain(router, filters))
    attrs = pb.EncryptionDecryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))
    body = pb.EncryptDataRequest(key_identifier=AES.alias, plain_text=PLAIN, encryption_attributes=attrs)
    next_id = 1
    done = 0
    started = time.process_time()
    while done < ops:
        message = pb.BatchRequest()
        for _ in range(items):
            message.items.add(request_id=next_id, encrypt_data=body)
            next_id += 1
        message = pb.BatchRequest.FromString(message.SerializeToString())  # as gRPC hands it over
        work.dispatch_batch(message.items)
        while work.unanswered:
            if work.out:
                reply = pb.BatchResponse(items=work.take(MAX_RESPONSE_ITEMS))
                reply.SerializeToString()
                for answer in reply.items:
                    if answer.WhichOneof("result") != "encrypt_data":
                        raise RuntimeError(f"op failed: {answer.status.message}")
                done += len(reply.items)
            else:
                await work.wait()
    work.close(abandoned=False)
    return (time.process_time() - started) / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--pool-size", type=int, default=32)
    parser.add_argument("--slices", type=int, default=1, help="repeat in this many slices of --ops and print the "
                        "least CPU per op: on a shared machine the least-disturbed slice")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--filters", choices=("none", "metrics", "tracing", "default"), default="none")
    parser.add_argument("--default-gc", action="store_true", help="leave the collector as Python starts it "
                        "(default: tuned as `hsmlb serve` tunes it)")
    args = parser.parse_args()
    if not args.default_gc:
        tune_gc()
    uvloop.run(run(args.items, 2000, args.nodes, args.pool_size, args.filters))  # warm-up
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    us = min(uvloop.run(run(args.items, args.ops, args.nodes, args.pool_size, args.filters))
             for _ in range(args.slices))
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    print(f"{us:.1f} us CPU per op ({args.items} items per message, {args.nodes} nodes, pool {args.pool_size})")


if __name__ == "__main__":
    main()
