"""Token worker link alone: CPU per op of one worker process for a given batch size, without the daemon.

Spawns `python -m hsmlb.backends.pkcs11_worker` on a socketpair exactly as the daemon does, then sends
frames of --batch AES-128 ECB encrypt requests and waits for every reply before the next frame, for
--seconds. Prints one JSON line: ops/s, the worker's CPU us/op (from /proc) and this client's.
It shows what one wake-up of the worker costs, amortised over the batch.

    python bench/_worker_link.py --config CONFIG [--node node-a] [--batch 1 4 16 64] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from _procs import CLK_TCK, _stat_fields

from hsmlb.backends import wire
from hsmlb.config import load_config

ROOT = Path(__file__).resolve().parent.parent
BLOCK = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")
CIPHER = bytes.fromhex("3AD77BB40D7A3660A89ECAF32466EF97")
LABEL = "alias/zek-aes128"


def _cpu_s(pid: int) -> float:
    fields = _stat_fields(pid)
    if fields is None:
        raise RuntimeError(f"worker {pid} is gone")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _receive(sock: socket.socket, decoder: wire.FrameDecoder) -> list:
    while True:
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError("worker closed the link")
        frames = decoder.feed(data)
        if frames:
            return frames


def measure(sock: socket.socket, decoder: wire.FrameDecoder, pid: int, batch: int, seconds: float,
            slots: int) -> dict[str, float]:
    ids = iter(range(1, 1 << 62))
    done = 0
    cpu0, own0, started = _cpu_s(pid), time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        requests = [(next(ids), i % slots, "encrypt", LABEL, ("ECB", b"", BLOCK), 0.0) for i in range(batch)]
        sock.sendall(wire.encode(requests))
        waiting = batch
        while waiting:
            for frame in _receive(sock, decoder):
                for _, code, payload in frame:
                    if code is not None or payload != CIPHER:
                        raise RuntimeError(f"bad reply: {code} {payload!r}")
                    waiting -= 1
        done += batch
    elapsed = time.perf_counter() - started
    return {"batch": batch, "ops_per_s": done / elapsed, "worker_cpu_us_per_op": (_cpu_s(pid) - cpu0) / done * 1e6,
            "client_cpu_us_per_op": (time.process_time() - own0) / done * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--node", default="node-a")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    node = next(n for n in load_config(args.config).nodes if n.name == args.node)
    parent, child = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "hsmlb.backends.pkcs11_worker", str(child.fileno())],
                            pass_fds=(child.fileno(),), env={**os.environ, **node.env}, cwd=ROOT)
    child.close()
    try:
        parent.sendall(wire.encode({"module": str(node.module), "token_label": node.token_label,
                                    "token_serial": node.token_serial, "pin": node.read_pin(),
                                    "pool_size": node.pool_size, "fault_injection": False}))
        decoder = wire.FrameDecoder()
        hello = _receive(parent, decoder)[0]
        if "ready" not in hello:
            raise SystemExit(f"worker did not start: {hello}")
        results = [measure(parent, decoder, proc.pid, batch, args.seconds, node.pool_size) for batch in args.batch]
        print(json.dumps(results), flush=True)
    finally:
        parent.close()
        proc.wait(10)


if __name__ == "__main__":
    main()
