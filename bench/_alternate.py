"""Load client that measures two servers (A and B) in alternating short slots from one process: A/B in one run.

Why: on this shared 2-core host the speed drifts by tens of percent over seconds and the co-located load
generator's p99 moves by milliseconds from one phase to the next, so two phases of a few seconds each, one
per variant, differ by more than the costs being measured (a 5% throughput or 1 ms p99 criterion). Slots
of --slot seconds in ABBA order put A and B side by side in time many times over: drift hits both alike,
and each variant's p99 is taken over all its slots' latencies pooled. Beside it, the paired p99
difference: each slot's own p99, B's minus A's in neighbouring slots, the median over the pairs. A
pooled p99 moves with one bad slot (a stall of the shared host lands in one variant's slot, not both);
the paired median does not, and it cancels drift slower than a slot pair.

Each slot is one phase of bench/_load.py (`batch`: closed loop; `paced`: open loop at --rate) on fresh
StreamBatch calls, drained before the next slot starts, with the server's process tree CPU read around it
(--pid-a, --pid-b). Same stdio protocol as _load.py: READY, wait for a line, one JSON line, exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from typing import Any

import grpc
import uvloop
from _load import GO_TIMEOUT_S, Tally, percentile, run_phase
from _procs import tree_cpu_s

from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

ABBA = (0, 1, 1, 0)


def figures(tally: Tally, elapsed: float, server_cpu: float) -> dict[str, float]:
    return {"ops": tally.ok, "ops_per_s": tally.ok / elapsed if elapsed else 0.0,
            "p50_us": percentile(tally.latencies, 0.50) * 1e6, "p99_us": percentile(tally.latencies, 0.99) * 1e6,
            "p999_us": percentile(tally.latencies, 0.999) * 1e6,
            "cpu_us_per_op": server_cpu / tally.ok * 1e6 if tally.ok else float("nan"),
            "errors": float(tally.errors + tally.wrong)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    addresses, pids = (args.address_a, args.address_b), (args.pid_a, args.pid_b)
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        stubs = []
        for channel, address in zip(channels, addresses, strict=True):
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = pb_grpc.OperationsStub(channel)
            warm = await run_phase(stub, args, args.warmup)
            if warm.ok == 0:
                raise SystemExit(f"alternate: warm-up got no good answer from {address}")
            stubs.append(stub)
        print("READY", flush=True)
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), GO_TIMEOUT_S)
        tallies, elapsed, cpu = [Tally(), Tally()], [0.0, 0.0], [0.0, 0.0]
        rates: list[list[float]] = [[], []]
        p99s: list[list[float]] = [[], []]
        cpu_started = time.process_time()
        for slot in range(2 * args.slots):
            side = ABBA[slot % 4]
            before, started = tree_cpu_s(pids[side]), time.perf_counter()
            tally = await run_phase(stubs[side], args, args.slot)
            took = time.perf_counter() - started
            cpu[side] += tree_cpu_s(pids[side]) - before
            elapsed[side] += took
            rates[side].append(tally.ok / took)
            p99s[side].append(percentile(tally.latencies, 0.99) * 1e6)
            tallies[side].add(tally)
        loadgen_cpu = time.process_time() - cpu_started
    finally:
        for channel in channels:
            await channel.close()
    # slots 2k and 2k+1 are neighbours in time (AB, BA, AB, ...): their ratio has the drift cancelled
    pairs = [rates[1][k] / rates[0][k] for k in range(args.slots) if rates[0][k]]
    p99_pairs = [p99s[1][k] - p99s[0][k] for k in range(args.slots)
                 if not (math.isnan(p99s[0][k]) or math.isnan(p99s[1][k]))]
    return {"a": figures(tallies[0], elapsed[0], cpu[0]), "b": figures(tallies[1], elapsed[1], cpu[1]),
            "slots": args.slots, "pair_ratio_median": statistics.median(pairs) if pairs else float("nan"),
            "pair_p99_diff_us": statistics.median(p99_pairs) if p99_pairs else float("nan"),
            "slot_p99_us": p99s, "loadgen_cpu_s": loadgen_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address-a", required=True)
    parser.add_argument("--address-b", required=True)
    parser.add_argument("--pid-a", type=int, required=True, help="server A's process (its tree's CPU is read)")
    parser.add_argument("--pid-b", type=int, required=True)
    parser.add_argument("--mode", choices=("batch", "paced"), required=True)
    parser.add_argument("--slots", type=int, default=8, help="slots per server (2 x slots in all, ABBA order)")
    parser.add_argument("--slot", type=float, default=0.5, help="seconds per slot")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--window", type=int, default=512, help="batch: operations outstanding, all streams")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--rate", type=float, default=5000.0, help="paced: operations/s offered, all streams")
    args = parser.parse_args()
    args.check, args.concurrency = True, 1  # what run_phase reads: answers checked against the NIST cipher text
    print(json.dumps(uvloop.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
