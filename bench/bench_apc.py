"""Signed APC requests per CPU-second of the client: ApcRegionBackend.perform vs a plain boto3 client.

Why: the region backend exists to make the daemon's per-request CPU small (precompiled rest-json,
botocore's SigV4 signer, pooled aiohttp connections) where a boto3 call costs about a millisecond.
Both sides call the same operation (EncryptData, AES-128 ECB, one block) on the same emulator in
the same run; only this process's CPU time (time.process_time) is counted, never the emulator's.
The backend runs `--concurrency` requests at a time (as the daemon would); boto3 runs sequentially
(its client is synchronous). The local quota bucket is set out of the way: it is not measured here.

    python bench/bench_apc.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

from hsmlb.backends.apc import ApcRegionBackend
from hsmlb.config import ApcQuotas, ApcRegionConfig
from hsmlb.dev.regions import spawn_emulator
from hsmlb.ops import Operation, OpKind

ROOT = Path(__file__).resolve().parent.parent
REGION, ACCESS, SECRET = "us-east-1", "AKIDBENCHHSMLB", "bench-secret"
ALIAS = "alias/zek-aes128"
BLOCK = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")


async def backend_rate(node: ApcRegionBackend, ops: int, concurrency: int) -> float:
    """Ops per CPU-second through perform(), `concurrency` in flight."""
    op = Operation(OpKind.ENCRYPT, ALIAS, ("ECB", b"", BLOCK))
    per_worker = ops // concurrency

    async def worker(count: int) -> None:
        for _ in range(count):
            await node.perform(op, 0)

    await asyncio.gather(*(worker(10) for _ in range(concurrency)))  # warm: first-call costs out of the way
    start = time.process_time()
    await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    return per_worker * concurrency / (time.process_time() - start)


def boto3_rate(client: object, arn: str, ops: int) -> float:
    """Ops per CPU-second through a plain boto3 client, sequentially."""
    call = client.encrypt_data  # type: ignore[attr-defined]
    params = {"KeyIdentifier": arn, "PlainText": BLOCK.hex().upper(),
              "EncryptionAttributes": {"Symmetric": {"Mode": "ECB"}}}
    for _ in range(min(ops, 50)):
        call(**params)
    start = time.process_time()
    for _ in range(ops):
        call(**params)
    return ops / (time.process_time() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ops", type=int, default=8000, help="backend requests per run")
    parser.add_argument("--boto-ops", type=int, default=2000, help="boto3 requests per run")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    emulator = spawn_emulator("bench", ROOT / "hsmlb/dev/dev-keys.yaml", "--region", REGION, "--access-key-id", ACCESS,
                              "--secret-access-key", SECRET, timeout_s=30)
    url = emulator.endpoint_url
    with tempfile.TemporaryDirectory() as tmp:
        credentials = Path(tmp) / "credentials"
        credentials.write_text(f"[default]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n")
        config = ApcRegionConfig(kind="apc", name="bench", region=REGION, endpoint_url=url,
                                 credentials_file=credentials, connections=args.concurrency,
                                 quotas=ApcQuotas(symmetric_per_s=1e9, asymmetric_per_s=1e9))
        node = ApcRegionBackend(config)
        try:
            await node.start()
            arn = node.keys[ALIAS].label
            client = boto3.client("payment-cryptography-data", endpoint_url=url, region_name=REGION,
                                  aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                                  config=BotoConfig(retries={"total_max_attempts": 1}))
            ours: list[float] = []
            theirs: list[float] = []
            for run in range(args.runs):
                ours.append(await backend_rate(node, args.ops, args.concurrency))
                theirs.append(boto3_rate(client, arn, args.boto_ops))
                print(f"run {run + 1}: backend {ours[-1]:8.0f} ops/CPU-s   boto3 {theirs[-1]:8.0f} ops/CPU-s   "
                      f"ratio {ours[-1] / theirs[-1]:.2f}x", flush=True)
            mine, boto = statistics.median(ours), statistics.median(theirs)
            print(f"median of {args.runs}: ApcRegionBackend.perform {mine:.0f} signed requests per CPU-second "
                  f"({1e6 / mine:.0f} us/op, concurrency {args.concurrency}); boto3 {boto:.0f} "
                  f"({1e6 / boto:.0f} us/op, sequential); ratio {mine / boto:.2f}x")
        finally:
            await node.close()
            emulator.stop()


if __name__ == "__main__":
    asyncio.run(main())
