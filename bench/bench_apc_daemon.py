"""APC-path operations per CPU-second: through the daemon (region node only) vs a plain boto3 client.

Why: the daemon should cost a payment service less CPU per APC request than calling APC with boto3
itself (target: at least 4x the ops per CPU-second). Both sides run the same operations
(GenerateCardValidationData with a CVV1 on alias/cvk-1, EncryptData AES-128 ECB on
alias/zek-aes128) against the same emulated region in the same run:

- daemon: `hsmlb serve` whose only node is the region; a lean grpc.aio Stream client in this
  process keeps `--in-flight` requests outstanding for `--ops` requests; the daemon's CPU is read
  from /proc/PID/stat around the phase (user+system, its whole process tree). This client's own CPU
  (time.process_time) is printed next to it.
- boto3: `boto3.client('payment-cryptography-data', endpoint_url=..., retries total_max_attempts 1)`
  calling sequentially (the client is synchronous) for `--boto-ops` requests; only this process's
  CPU (time.process_time) is counted.

The emulator's CPU is never counted on either side. The daemon's local APC quota bucket is set out
of the way (it would cap the rate at APC's default 500/s, which is not what is measured here).

    python bench/bench_apc_daemon.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import grpc
import yaml
from _procs import LineReader, stop, tree_cpu_s
from botocore.config import Config as BotoConfig

from hsmlb.dev.cluster import default_keys_file
from hsmlb.dev.regions import Emulator, dev_credentials, region_node_config, start_emulator
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

START_S = 60.0
PHASE_MAX_S = 120.0
PAN, EXPIRY, SERVICE_CODE, CVV = "4123456789012345", "8701", "111", "856"  # public_kat cvv-worked-example-111
PLAIN, CIPHER = "6BC1BEE22E409F96E93D7E117393172A", "3AD77BB40D7A3660A89ECAF32466EF97"  # SP 800-38A F.1.1


@dataclass(frozen=True)
class Op:
    name: str
    field: str  # StreamRequest member
    request: Any
    check: Callable[[Any], bool]
    boto_method: str
    boto_params: dict[str, Any]
    boto_check: Callable[[dict[str, Any]], bool]


OPS = [
    Op("GenerateCardValidationData", "generate_card_validation_data",
       pb.GenerateCardValidationDataRequest(
           key_identifier="alias/cvk-1", primary_account_number=PAN,
           generation_attributes=pb.CardGenerationAttributes(card_verification_value1=pb.CardVerificationValue1(
               card_expiry_date=EXPIRY, service_code=SERVICE_CODE))),
       lambda r: r.validation_data == CVV,
       "generate_card_validation_data",
       {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": PAN,
        "GenerationAttributes": {"CardVerificationValue1": {"CardExpiryDate": EXPIRY, "ServiceCode": SERVICE_CODE}}},
       lambda r: r["ValidationData"] == CVV),
    Op("EncryptData", "encrypt_data",
       pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text=PLAIN,
                             encryption_attributes=pb.EncryptionDecryptionAttributes(
                                 symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))),
       lambda r: r.cipher_text == CIPHER,
       "encrypt_data",
       {"KeyIdentifier": "alias/zek-aes128", "PlainText": PLAIN,
        "EncryptionAttributes": {"Symmetric": {"Mode": "ECB"}}},
       lambda r: r["CipherText"] == CIPHER),
]


# ------------------------------------------------------------------------------------------ set-up

def write_config(state_dir: Path, emulator: Emulator, connections: int) -> Path:
    region = region_node_config(emulator, state_dir, connections=connections)
    region["quotas"] = {"symmetric_per_s": 1e9, "asymmetric_per_s": 1e9}
    path = state_dir / "hsmlb-bench-apc.yaml"
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:0", "nodes": [region]}))
    return path


def start_daemon(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=sink, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address = LineReader(proc).wait_for("hsmlb listening on ", START_S).split()[-1]
        deadline = time.monotonic() + START_S
        with grpc.insecure_channel(address) as channel:
            admin = pb_grpc.AdminStub(channel)
            while time.monotonic() < deadline:
                nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
                if nodes and all(n.backend_state == "up" and n.state.startswith("healthy") for n in nodes):
                    return proc, address
                time.sleep(0.05)
        raise RuntimeError("the region node did not come up")
    except BaseException:
        stop(proc)
        raise


# ------------------------------------------------------------------------------------------ phases

@dataclass
class Phase:
    ops: int
    failed: int
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float


async def stream_phase(address: str, op: Op, total: int, in_flight: int, daemon_pid: int) -> Phase:
    """`total` requests over one Stream, `in_flight` outstanding; daemon CPU from /proc around it."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.OperationsStub(channel)
        await run_stream(stub, op, min(total, 200), in_flight)  # warm: connections, first-call costs
        cpu0, client0, wall0 = tree_cpu_s(daemon_pid), time.process_time(), time.monotonic()
        failed = await run_stream(stub, op, total, in_flight)
        wall, client = time.monotonic() - wall0, time.process_time() - client0
        return Phase(total, failed, tree_cpu_s(daemon_pid) - cpu0, client, wall)


async def run_stream(stub: pb_grpc.OperationsStub, op: Op, total: int, in_flight: int) -> int:
    window = asyncio.Semaphore(in_flight)
    message = pb.StreamRequest(**{op.field: op.request})
    deadline = time.monotonic() + PHASE_MAX_S

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(total):
            if time.monotonic() > deadline:
                return
            await window.acquire()
            message.request_id = i
            yield message

    ok = 0
    async for response in stub.Stream(requests(), timeout=PHASE_MAX_S + 30):
        window.release()
        ok += response.WhichOneof("result") == op.field and op.check(getattr(response, op.field))
    return total - ok


def boto3_phase(client: Any, op: Op, total: int) -> Phase:
    call = getattr(client, op.boto_method)
    for _ in range(min(total, 50)):  # warm: first-call costs (model loading, connection)
        call(**op.boto_params)
    cpu0, wall0 = time.process_time(), time.monotonic()
    failed = 0
    for _ in range(total):
        failed += not op.boto_check(call(**op.boto_params))
    return Phase(total, failed, 0.0, time.process_time() - cpu0, time.monotonic() - wall0)


# ------------------------------------------------------------------------------------------ report

def spread(values: list[float], unit: str = "", digits: int = 0) -> str:
    return (f"{statistics.median(values):.{digits}f}{unit} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ops", type=int, default=4000, help="daemon requests per op per run")
    parser.add_argument("--boto-ops", type=int, default=800, help="boto3 requests per op per run")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--connections", type=int, default=16, help="the region node's keep-alive connections")
    args = parser.parse_args()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    with tempfile.TemporaryDirectory(prefix="bench-apc-daemon-") as tmp:
        state_dir = Path(tmp)
        emulator = start_emulator("apc-bench", "us-east-1", default_keys_file(), state_dir)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            daemon, address = start_daemon(write_config(state_dir, emulator, args.connections), state_dir / "d.log")
            access, secret, _ = dev_credentials(state_dir)
            client = boto3.client("payment-cryptography-data", endpoint_url=emulator.endpoint_url,
                                  region_name=emulator.region, aws_access_key_id=access, aws_secret_access_key=secret,
                                  config=BotoConfig(retries={"total_max_attempts": 1}))
            results: dict[str, dict[str, list[float]]] = {
                op.name: {"daemon": [], "boto3": [], "ratio": [], "client_us": [], "daemon_us": [], "boto_us": [],
                          "daemon_wall_ops": []} for op in OPS}
            for run in range(1, args.runs + 1):
                for op in OPS:
                    ours = asyncio.run(stream_phase(address, op, args.ops, args.in_flight, daemon.pid))
                    theirs = boto3_phase(client, op, args.boto_ops)
                    if ours.failed or theirs.failed:
                        raise SystemExit(f"{op.name}: {ours.failed} daemon and {theirs.failed} boto3 requests failed")
                    rate, boto_rate = ours.ops / ours.server_cpu_s, theirs.ops / theirs.client_cpu_s
                    r = results[op.name]
                    r["daemon"].append(rate)
                    r["boto3"].append(boto_rate)
                    r["ratio"].append(rate / boto_rate)
                    r["daemon_us"].append(1e6 * ours.server_cpu_s / ours.ops)
                    r["client_us"].append(1e6 * ours.client_cpu_s / ours.ops)
                    r["boto_us"].append(1e6 * theirs.client_cpu_s / theirs.ops)
                    r["daemon_wall_ops"].append(ours.ops / ours.wall_s)
                    print(f"run {run} {op.name:27s} daemon {rate:7.0f} ops/CPU-s ({r['daemon_us'][-1]:5.0f} us/op, "
                          f"{ours.ops / ours.wall_s:6.0f} ops/s wall; load client {r['client_us'][-1]:4.0f} us/op)   "
                          f"boto3 {boto_rate:6.0f} ops/CPU-s ({r['boto_us'][-1]:5.0f} us/op)   "
                          f"ratio {rate / boto_rate:5.2f}x", flush=True)
            print(f"\nmedians of {args.runs} runs (min, max); daemon: Stream, {args.in_flight} in flight, "
                  f"{args.ops} requests per run; boto3: sequential, {args.boto_ops} requests per run")
            for name, r in results.items():
                print(f"{name}:\n"
                      f"  daemon       {spread(r['daemon'])} ops per daemon CPU-second = "
                      f"{spread(r['daemon_us'], ' us')} per op\n"
                      f"  boto3        {spread(r['boto3'])} ops per client CPU-second = {spread(r['boto_us'], ' us')} "
                      f"per op\n"
                      f"  ratio        {spread(r['ratio'], 'x', 2)}\n"
                      f"  load client  {spread(r['client_us'], ' us')} CPU per op (grpc.aio Stream client)\n"
                      f"  daemon wall  {spread(r['daemon_wall_ops'])} ops/s")
        finally:
            stop(daemon)
            emulator.stop()


if __name__ == "__main__":
    main()
