"""Hot-path cost of issue 10's bounds, A/B in one process: CPU per operation through NodePool.perform
with each bound on and off (per-attempt timeout, queue-wait bound), and the daemon-wide unary in-flight
bound's enter/leave. The backend answers at once, so what is measured is the pool's own bookkeeping.

    python bench/bench_limits.py [--ops 200000] [--runs 3]

Prints, per variant, microseconds of CPU per op: median of the runs (min-max), and the B/A ratio of the
medians and of the fastest runs (on a shared machine the fastest run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from hsmlb.backends.pkcs11 import STOPPED_POLL_S
from hsmlb.ops import Operation, OpKind
from hsmlb.pool import NodePool
from hsmlb.pool.attempt_timeout import AttemptTimeout
from hsmlb.pool.overload import InFlightLimit

BATCH = 64  # ops in flight at once (a pool of 64 sessions: nothing queues)


class _Instant:
    """A backend whose every answer is ready at once."""

    name = "instant"

    def perform(self, op: Operation, slot: int) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(b"x")
        return future


async def _pool_run(ops: int, timeout: bool, wait_bound: bool) -> float:
    pool = NodePool(_Instant(), size=BATCH, queue_limit=BATCH,  # type: ignore[arg-type]
                    max_wait_s=0.1 if wait_bound else None,
                    attempt_timeout=AttemptTimeout(10, 0.5, 2.0) if timeout else None)
    op = Operation(OpKind.ENCRYPT, "alias/k", ("ECB", b"", b"\0" * 16))
    started = time.process_time()
    for _ in range(ops // BATCH):
        await asyncio.gather(*[pool.perform(op) for _ in range(BATCH)])
    return (time.process_time() - started) / ops * 1e6


def _limit_run(ops: int, bound: bool) -> float:
    limit = InFlightLimit(256)
    started = time.process_time()
    for _ in range(ops):
        if bound and limit.enter():
            limit.leave()
    return (time.process_time() - started) / ops * 1e6


async def _stop_check_tick(ticks: int) -> float:
    """One supervisor tick of a token node (backends/pkcs11.py _watch): a timed wait on the worker's
    exit, then a look at /proc whether it is stopped. CPU us per tick (the 0.1 s sleep excluded)."""
    from hsmlb.backends.pkcs11 import _process_stopped  # the very look the daemon takes

    exited = asyncio.get_running_loop().create_future()
    pid = os.getpid()
    started = time.process_time()
    for _ in range(ticks):
        await asyncio.wait({exited}, timeout=0)
        _process_stopped(pid)
    return (time.process_time() - started) / ticks * 1e6


def _figure(name: str, a: list[float], b: list[float]) -> None:
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{name}: off {ma:.3f} us/op ({min(a):.3f}-{max(a):.3f}), on {mb:.3f} us/op ({min(b):.3f}-{max(b):.3f}); "
          f"medians {mb - ma:+.3f} us/op (ratio {mb / ma:.3f}), fastest runs {min(b) - min(a):+.3f} us/op "
          f"(ratio {min(b) / min(a):.3f}) over {len(a)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    variants: dict[str, tuple[list[float], list[float]]] = {"attempt timeout": ([], []), "queue-wait bound": ([], []),
                                                             "unary in-flight bound": ([], [])}
    for _ in range(args.runs):  # A and B interleaved, so drift on a shared machine hits both
        variants["attempt timeout"][0].append(asyncio.run(_pool_run(args.ops, False, False)))
        variants["attempt timeout"][1].append(asyncio.run(_pool_run(args.ops, True, False)))
        variants["queue-wait bound"][0].append(asyncio.run(_pool_run(args.ops, False, False)))
        variants["queue-wait bound"][1].append(asyncio.run(_pool_run(args.ops, False, True)))
        variants["unary in-flight bound"][0].append(_limit_run(args.ops * 5, False))
        variants["unary in-flight bound"][1].append(_limit_run(args.ops * 5, True))
    for name, (a, b) in variants.items():
        _figure(name, a, b)
    ticks = [asyncio.run(_stop_check_tick(20_000)) for _ in range(args.runs)]
    tick = statistics.median(ticks)
    print(f"worker stop-check tick: {tick:.1f} us CPU ({min(ticks):.1f}-{max(ticks):.1f}); every "
          f"{STOPPED_POLL_S:g} s per token node: {tick / STOPPED_POLL_S / 1e4:.3f}% of a core per node, idle or busy")


if __name__ == "__main__":
    main()
