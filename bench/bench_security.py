"""Cost of security (acceptance 5 of the security issue): the daemon with mTLS + authorization (with a
per-caller bucket) + the audit log on, against the same daemon with all three off, on the batched
path (StreamBatch: the best capacity profile), AES-128 ECB EncryptData. Prints figures; asserts nothing.

Both daemons run side by side on the same tokens and are loaded one at a time, alternating, by a
client in its own process; each run gives throughput, p50 and p99 per operation for each. With
--runs N: the median, min and max of each figure, and the on/off ratios.

    python bench/bench_security.py [--seconds 5] [--runs 3] [--batch 64] [--window 8] [--nodes 2]
                                   [--state-dir DIR] [--json out.json]

Loopback only; everything it starts is stopped at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
KEY = "alias/zek-aes128"
PLAIN = "6BC1BEE22E409F96E93D7E117393172A"


# -- the load client (run as a child: --client) ----------------------------------------------------
async def _client(args: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from hsmlb.auth.tls import channel_credentials
    from hsmlb.v1 import hsmlb_pb2 as pb
    from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

    creds = channel_credentials(args.ca, args.cert, args.key) if args.ca else None
    channel = grpc.aio.secure_channel(args.address, creds) if creds else grpc.aio.insecure_channel(args.address)
    attributes = pb.EncryptionDecryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))
    body = pb.EncryptDataRequest(key_identifier=KEY, plain_text=PLAIN, encryption_attributes=attributes)
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}

    async def phase(seconds: float) -> None:
        call = pb_grpc.OperationsStub(channel).StreamBatch(timeout=seconds + 60)
        slots = asyncio.Semaphore(args.window)
        sent: dict[int, tuple[float, int]] = {}  # request_id -> (sent at, batch)
        unanswered: dict[int, int] = {}  # batch -> its items not answered yet
        ids = itertools.count(1)
        stop_at = time.perf_counter() + seconds

        async def sender() -> None:
            batch_no = 0
            while time.perf_counter() < stop_at:
                await slots.acquire()
                batch_no += 1
                now = time.perf_counter()
                items = []
                for _ in range(args.batch):
                    rid = next(ids)
                    sent[rid] = (now, batch_no)
                    items.append(pb.StreamRequest(request_id=rid, encrypt_data=body))
                unanswered[batch_no] = args.batch
                await call.write(pb.BatchRequest(items=items))
            await call.done_writing()

        task = asyncio.ensure_future(sender())
        try:
            while True:
                reply = await call.read()
                if reply is grpc.aio.EOF:
                    break
                now = time.perf_counter()
                for item in reply.items:
                    started, batch_no = sent.pop(item.request_id, (0.0, 0))
                    if started and item.WhichOneof("result") == "encrypt_data":
                        counts["ok"] += 1
                        latencies.append(now - started)
                    else:
                        counts["errors"] += 1
                    if batch_no:
                        unanswered[batch_no] -= 1
                        if unanswered[batch_no] == 0:
                            del unanswered[batch_no]
                            slots.release()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    await asyncio.wait_for(channel.channel_ready(), 30)
    await phase(1.0)  # warm-up
    latencies.clear()
    counts.update(ok=0, errors=0)
    print("READY", flush=True)  # the parent reads the daemon's CPU counters now, then says go
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.perf_counter()
    await phase(args.seconds)
    elapsed = time.perf_counter() - started
    await channel.close()
    ordered = sorted(latencies) or [float("nan")]
    return {"ops_per_s": counts["ok"] / elapsed, "errors": counts["errors"], "ops": counts["ok"],
            "p50_us": ordered[len(ordered) // 2] * 1e6, "p99_us": ordered[min(len(ordered) - 1,
                                                                                int(0.99 * len(ordered)))] * 1e6}


# -- the parent ------------------------------------------------------------------------------------
def _start(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "hsmlb", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=log.open("wb"), cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if line.startswith("hsmlb listening on "):
            return proc, line.split()[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"daemon did not start; see {log}")


def _load(address: str, daemon: int, args: argparse.Namespace, tls: dict[str, Path] | None) -> dict[str, Any]:
    """One measured phase; adds the daemon's CPU (its whole process tree: token workers too) per op."""
    from _procs import cpu_split

    cmd = [sys.executable, __file__, "--client", "--address", address, "--seconds", str(args.seconds),
           "--batch", str(args.batch), "--window", str(args.window)]
    if tls:
        cmd += ["--ca", str(tls["ca"]), "--cert", str(tls["app_cert"]), "--key", str(tls["app_key"])]
    client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert client.stdin is not None and client.stdout is not None
        if client.stdout.readline().strip() != "READY":
            raise SystemExit("load client did not get ready")
        before = cpu_split(daemon)
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        after = cpu_split(daemon)
        client.wait(60)
    finally:
        if client.poll() is None:
            client.kill()
    figures = json.loads(line)
    ops = max(1, figures["ops"])
    for key, name in (("main_s", "loop"), ("threads_s", "threads"), ("children_s", "workers")):
        figures[f"{name}_us_per_op"] = (after[key] - before[key]) / ops * 1e6
    figures["cpu_us_per_op"] = figures["loop_us_per_op"] + figures["threads_us_per_op"] + figures["workers_us_per_op"]
    return figures


def _stop(proc: subprocess.Popen[bytes]) -> None:
    from hsmlb.dev.procs import stop

    stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--address")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="operations per BatchRequest")
    parser.add_argument("--window", type=int, default=8, help="batches in flight")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--features", default="tls,auth,audit", help="what 'on' turns on (a breakdown)")
    args = parser.parse_args()
    if args.client:
        import uvloop

        print(json.dumps(uvloop.run(_client(args))))
        return

    from hsmlb.audit.cli import keygen
    from hsmlb.auth.devca import dev_pki
    from hsmlb.auth.devtls import dev_callers
    from hsmlb.dev.cluster import default_keys_file, dev_up

    work = Path(tempfile.mkdtemp(prefix="hsmlb-bench-sec-"))
    state = args.state_dir or work / "dev"
    base = yaml.safe_load(dev_up(state, default_keys_file(), listen="127.0.0.1:0").read_text())
    base["nodes"] = [n for n in base["nodes"] if n.get("kind", "pkcs11") == "pkcs11"][: args.nodes]
    base.pop("routes", None)
    pki = dev_pki(work / "tls")
    keygen(work / "audit.key")
    callers = dev_callers({"per_s": 1e7, "burst": 1e7})  # the bucket runs, never refuses
    features = set(args.features.split(","))
    secure = dict(base)
    if "tls" in features:
        secure["tls"] = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
                         "client_ca_file": str(pki["ca"])}
    if "auth" in features:
        secure["auth"] = {"callers": callers}
    if "audit" in features:
        secure["audit"] = {"dir": str(work / "audit"), "signing_key_file": str(work / "audit.key")}
    on_tls = pki if "tls" in features else None
    (work / "off.yaml").write_text(yaml.safe_dump(base))
    (work / "on.yaml").write_text(yaml.safe_dump(secure))
    procs = []
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        off, off_addr = _start(work / "off.yaml", work / "off.log")
        procs.append(off)
        on, on_addr = _start(work / "on.yaml", work / "on.log")
        procs.append(on)
        time.sleep(2)  # nodes up
        for run in range(args.runs):
            order = (("off", off_addr, None), ("on", on_addr, on_tls)) if run % 2 == 0 else \
                (("on", on_addr, on_tls), ("off", off_addr, None))
            for name, address, tls in order:
                figures = _load(address, (off if name == "off" else on).pid, args, tls)
                results[name].append(figures)
                print(f"run {run + 1} {name:>3}: {figures['ops_per_s']:,.0f} ops/s  p50 {figures['p50_us']:,.0f} us  "
                      f"p99 {figures['p99_us']:,.0f} us  daemon CPU {figures['cpu_us_per_op']:,.1f} us/op (event loop "
                      f"{figures['loop_us_per_op']:,.1f}, other threads {figures['threads_us_per_op']:,.1f}, "
                      f"token workers {figures['workers_us_per_op']:,.1f})  "
                      f"errors {figures['errors']}", flush=True)
    finally:
        for proc in procs:
            _stop(proc)
    audit_records = sum(1 for p in (work / "audit").glob("audit-*.jsonl") for _ in p.open())
    print(f"\nbatched path (StreamBatch, {args.batch} ops/batch, {args.window} batches in flight), {args.nodes} "
          f"token nodes, {args.runs} runs of {args.seconds:g} s each; on = {args.features}; "
          f"audit records written: {audit_records:,}")
    summary: dict[str, Any] = {}
    for key in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_op", "loop_us_per_op", "threads_us_per_op",
                "workers_us_per_op"):
        for name in ("off", "on"):
            values = [r[key] for r in results[name]]
            summary[f"{name}.{key}"] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
            s = summary[f"{name}.{key}"]
            print(f"{name:>3} {key:<17} median {s['median']:>10,.1f}  (min {s['min']:,.1f}, max {s['max']:,.1f})")
    ratio = summary["on.ops_per_s"]["median"] / summary["off.ops_per_s"]["median"]
    p99_delta_ms = (summary["on.p99_us"]["median"] - summary["off.p99_us"]["median"]) / 1000
    ratios = [a["ops_per_s"] / b["ops_per_s"] for a, b in zip(results["on"], results["off"], strict=True)]
    print(f"throughput on/off: {ratio:.1%} of the median (per run: {', '.join(f'{r:.1%}' for r in ratios)}); "
          f"p99 on - off: {p99_delta_ms:+.2f} ms; daemon CPU per op on/off: "
          f"{summary['on.cpu_us_per_op']['median'] / summary['off.cpu_us_per_op']['median']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary, "ratio": ratio,
                                         "p99_delta_ms": p99_delta_ms}, indent=2))


if __name__ == "__main__":
    main()
