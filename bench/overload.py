"""Overload: N concurrent unary EncryptData calls with one deadline, all at once (issue 10, acceptance 2).

Prints how every call ended (by status), the median latency of the RESOURCE_EXHAUSTED answers
(target <= 50 ms), the p50/p99 of the OK answers (target p99 <= 200 ms), and the daemon's RSS
before, right after and a few seconds after (target: back within 10% of the start).

    python bench/overload.py --config .hsmlb/dev/hsmlb.yaml [--calls 5000] [--deadline 5] [--runs 3]

starts `hsmlb serve` on a free port with that config (and stops it), or `--address HOST:PORT --pid PID`
measures a daemon already running. The CI test (tests/test_hardening_load.py) runs `fire` with fewer
calls and asserts only the statuses; timings here are figures to report, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

CHANNELS = 8  # each HTTP/2 connection carries at most max_concurrent_streams calls


@dataclass
class Outcome:
    codes: Counter[str] = field(default_factory=Counter)
    latency_s: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def record(self, code: str, latency: float) -> None:
        self.codes[code] += 1
        self.latency_s.setdefault(code, []).append(latency)

    def quantile_ms(self, code: str, q: float) -> float | None:
        values = sorted(self.latency_s.get(code, []))
        if not values:
            return None
        return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def request() -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text="6BC1BEE22E409F96E93D7E117393172A",
                                 encryption_attributes=pb.EncryptionDecryptionAttributes(
                                     symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB)))


async def _fire(address: str, calls: int, deadline_s: float) -> Outcome:
    outcome = Outcome()
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(CHANNELS)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)
        stubs = [pb_grpc.OperationsStub(c) for c in channels]
        message = request()

        async def one(i: int) -> None:
            started = time.perf_counter()
            try:
                await stubs[i % CHANNELS].EncryptData(message, timeout=deadline_s)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            outcome.record(code, time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        outcome.wall_s = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return outcome


def fire(address: str, calls: int, deadline_s: float = 5.0) -> Outcome:
    """All `calls` at once, spread over CHANNELS connections; how each ended and how long it took."""
    return asyncio.run(_fire(address, calls, deadline_s))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    data = yaml.safe_load(config.read_text())
    data["listen"] = f"127.0.0.1:{_free_port()}"
    variant = log.with_suffix(".yaml")
    variant.write_text(yaml.safe_dump(data))
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(variant)],
                                stdout=subprocess.PIPE, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("hsmlb listening on "):
        proc.kill()
        raise SystemExit(f"daemon did not start: {log.read_text()[-2000:]}")
    time.sleep(2.0)  # nodes healthy (checks every 0.25 s, 3 good ones to readmit)
    return proc, line.split()[-1]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(address: str, pid: int, calls: int, deadline_s: float) -> dict[str, object]:
    before = rss_mb(pid)
    cpu_before, client_before = cpu_s(pid), time.process_time()
    outcome = fire(address, calls, deadline_s)
    daemon_cpu, client_cpu = cpu_s(pid) - cpu_before, time.process_time() - client_before
    after = rss_mb(pid)
    time.sleep(5.0)
    settled = rss_mb(pid)
    return {"calls": calls, "codes": dict(outcome.codes), "wall_s": round(outcome.wall_s, 2),
            "daemon_cpu_s": round(daemon_cpu, 2), "client_cpu_s": round(client_cpu, 2),
            "exhausted_median_ms": outcome.quantile_ms("RESOURCE_EXHAUSTED", 0.5),
            "ok_p50_ms": outcome.quantile_ms("OK", 0.5), "ok_p99_ms": outcome.quantile_ms("OK", 0.99),
            "rss_mb": [round(before, 1), round(after, 1), round(settled, 1)],
            "rss_settled_vs_start": round(settled / before, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", type=Path, help="start a daemon with this config (on a free port)")
    target.add_argument("--address", help="a running daemon (with --pid for its RSS)")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--deadline", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    proc = None
    if args.config:
        proc, address = _start(args.config, Path(f"/tmp/hsmlb-overload-{os.getpid()}.log"))
        pid = proc.pid
    else:
        address, pid = args.address, args.pid or 0
    try:
        runs = []
        for run in range(args.runs):
            result = measure(address, pid, args.calls, args.deadline) if pid else \
                {"codes": dict(fire(address, args.calls, args.deadline).codes)}
            runs.append(result)
            print(json.dumps({"run": run + 1, **result}), flush=True)
        for key in ("exhausted_median_ms", "ok_p99_ms", "rss_settled_vs_start"):
            values = [r[key] for r in runs if r.get(key) is not None]
            if values:
                print(f"{key}: median {statistics.median(values):.3g} (min {min(values):.3g}, "  # type: ignore[arg-type]
                      f"max {max(values):.3g}) over {len(values)} runs")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
