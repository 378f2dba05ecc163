"""Overload: N concurrent unary EncryptData calls with one deadline, all at once (issue 10, acceptance 2).

Prints the four acceptance figures, each the median of the runs (min-max): whether every call ended
OK or RESOURCE_EXHAUSTED, the median latency of the RESOURCE_EXHAUSTED answers (target <= 50 ms), the
p99 of the OK answers (target <= 200 ms), and the daemon's RSS a few seconds after against its start
(target: within 10%); with the daemon's and this client's CPU per call.

Latency is measured twice: from the call's start in this client (what a caller sees), and from the
moment its request left this client for grpc core ("sent": this Python client needs ~300-400 us of CPU
per call, so with 5,000 calls at once the last ones leave it about a second after the first).
Then the same burst against bench/echo_server.py (the daemon's own gRPC options, handlers that only
echo): the floor that grpc.aio on this machine sets for these figures, whatever the daemon does.

    python bench/overload.py --config .hsmlb/dev/hsmlb.yaml [--calls 5000] [--deadline 5] [--runs 3] [--no-echo]

starts `hsmlb serve` on a free port with that config (and stops it), or `--address HOST:PORT --pid PID`
measures a daemon already running. ~1.5 min with the defaults. The CI test (tests/test_hardening_load.py)
runs `fire` with fewer calls and asserts only the statuses; timings here are figures, never asserted.
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
    latency_s: dict[str, list[float]] = field(default_factory=dict)  # from the coroutine's start
    sent_s: dict[str, list[float]] = field(default_factory=dict)  # from the request leaving the client
    wall_s: float = 0.0

    def record(self, code: str, latency: float, since_sent: float) -> None:
        self.codes[code] += 1
        self.latency_s.setdefault(code, []).append(latency)
        self.sent_s.setdefault(code, []).append(since_sent)

    def quantile_ms(self, code: str, q: float, since_sent: bool = False) -> float | None:
        values = sorted((self.sent_s if since_sent else self.latency_s).get(code, []))
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

        loop = asyncio.get_running_loop()

        async def one(i: int) -> None:
            started = time.perf_counter()
            call = stubs[i % CHANNELS].EncryptData(message, timeout=deadline_s)
            # The call's own task hands the request to grpc core in its first step; a callback queued
            # now runs right after that step (FIFO ready queue): the moment the request left this client.
            sent = [started]
            loop.call_soon(_stamp, sent)
            try:
                await call
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            now = time.perf_counter()
            outcome.record(code, now - started, now - sent[-1])

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        outcome.wall_s = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return outcome


def _stamp(sent: list[float]) -> None:
    sent.append(time.perf_counter())


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
    command = [sys.executable, "-m", "hsmlb", "serve", "--config", str(variant)]
    proc, address = _spawn(command, log, "hsmlb listening on ")
    time.sleep(2.0)  # nodes healthy (checks every 0.25 s, 3 good ones to readmit)
    return proc, address


def _start_echo(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    echo = Path(__file__).with_name("echo_server.py")
    return _spawn([sys.executable, str(echo), "--listen", "127.0.0.1:0"], log, "echo listening on ")


def _spawn(command: list[str], log: Path, ready: str) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith(ready):
        proc.kill()
        raise SystemExit(f"{command[1]} did not start: {log.read_text()[-2000:]}")
    return proc, line.split()[-1]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


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
            "exhausted_median_sent_ms": outcome.quantile_ms("RESOURCE_EXHAUSTED", 0.5, True),
            "ok_p99_sent_ms": outcome.quantile_ms("OK", 0.99, True),
            "rss_mb": [round(before, 1), round(after, 1), round(settled, 1)],
            "rss_settled_vs_start": round(settled / before, 3)}


def _runs(label: str, address: str, pid: int, args: argparse.Namespace) -> list[dict[str, object]]:
    runs = []
    for run in range(args.runs):
        result = measure(address, pid, args.calls, args.deadline) if pid else \
            {"codes": dict(fire(address, args.calls, args.deadline).codes)}
        runs.append(result)
        print(json.dumps({"target": label, "run": run + 1, **result}), flush=True)
    return runs


def _spread(runs: list[dict[str, object]], key: str, digits: str = ".0f") -> str:
    values = [float(r[key]) for r in runs if r.get(key) is not None]  # type: ignore[arg-type]
    if not values:
        return "none"
    return f"{statistics.median(values):{digits}} ({min(values):{digits}}-{max(values):{digits}})"


def _summary(label: str, runs: list[dict[str, object]], calls: int) -> None:
    codes: Counter[str] = Counter()
    for r in runs:
        codes.update(r["codes"])  # type: ignore[arg-type]
    clean = set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    print(f"== {label}, {len(runs)} runs of {calls} calls; median (min-max) ==")
    print(f"  1. every call OK or RESOURCE_EXHAUSTED: {'yes' if clean else 'NO'} ({dict(codes)})")
    print(f"  2. RESOURCE_EXHAUSTED median ms: {_spread(runs, 'exhausted_median_ms')} "
          f"[from sent: {_spread(runs, 'exhausted_median_sent_ms')}] (target <= 50)")
    print(f"  3. OK p99 ms: {_spread(runs, 'ok_p99_ms')} [from sent: {_spread(runs, 'ok_p99_sent_ms')}] "
          f"(target <= 200); OK p50 ms {_spread(runs, 'ok_p50_ms')}")
    print(f"  4. RSS settled / start: {_spread(runs, 'rss_settled_vs_start', '.3f')} (target 0.90-1.10)")
    if any("daemon_cpu_s" in r for r in runs):
        for r in runs:
            r["server_us_per_call"] = 1e6 * float(r["daemon_cpu_s"]) / calls  # type: ignore[arg-type]
            r["client_us_per_call"] = 1e6 * float(r["client_cpu_s"]) / calls  # type: ignore[arg-type]
        print(f"  CPU per call: server {_spread(runs, 'server_us_per_call')} us, "
              f"this client {_spread(runs, 'client_us_per_call')} us; wall s {_spread(runs, 'wall_s', '.2f')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", type=Path, help="start a daemon with this config (on a free port)")
    target.add_argument("--address", help="a running daemon (with --pid for its RSS)")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--deadline", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-echo", action="store_true", help="skip the bare echo server's runs")
    args = parser.parse_args()
    logs = Path(f"/tmp/hsmlb-overload-{os.getpid()}")
    results: list[tuple[str, list[dict[str, object]]]] = []
    if args.config:
        proc, address = _start(args.config, logs.with_suffix(".daemon.log"))
        try:
            results.append(("hsmlb daemon", _runs("daemon", address, proc.pid, args)))
        finally:
            _stop(proc)
    else:
        results.append(("hsmlb daemon", _runs("daemon", args.address, args.pid or 0, args)))
    if not args.no_echo:
        proc, address = _start_echo(logs.with_suffix(".echo.log"))
        try:
            results.append(("bare echo server (same options, same client)", _runs("echo", address, proc.pid, args)))
        finally:
            _stop(proc)
    for label, runs in results:
        _summary(label, runs, args.calls)


if __name__ == "__main__":
    main()
