"""Cost of security, exactly as the security issue's acceptance 5 states it: mTLS + authorization (with a
per-caller bucket) + the audit log all on, against the same daemon with all three off, A/B in one run on
the batched capacity profile (StreamBatch, AES-128 ECB EncryptData). Prints figures; asserts nothing.

Two daemons run side by side on the same dev tokens (bench_daemon.Bench starts and stops everything);
each phase is one load client process (bench/_load.py), the two daemons loaded one at a time, the order
alternating run to run. Each run has two parts:
  * saturation: closed loop, --items operations per message, --window outstanding over --streams
    streams: throughput on/off (the acceptance: >= 90%), and daemon CPU per op split by thread;
  * paced: open loop at --rate operations/s over --streams streams in messages of --paced-items, each
    latency from the message's scheduled time (bench/_load.py --mode paced; default: 5,000 ops/s in 16s,
    the capacity profile, capped at half the off daemon's saturation throughput of the first run so
    the rate stays below saturation on a slow or shared machine): p99 on - off (the acceptance: <= 2 ms).
With --runs N (default 3): the median and min-max of each figure, and the A/B ratios per run.

    python bench/bench_security.py [--runs 3] [--seconds 5] [--rate 5000] [--json out.json]

About 2.5 minutes with the defaults. Loopback only; everything it starts is stopped at the end, on
error, on SIGTERM and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from bench_daemon import Bench, measure, write_json

SIDES = ("off", "on")


class SecurityBench(Bench):
    """Bench with two daemons: `off` (plaintext, open policy, no audit) and `on` (all three)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.daemons: dict[str, tuple[Any, str]] = {}
        self.client_tls: tuple[str, ...] = ()
        self.rate = 0.0
        self.runs_done = 0

    def start(self) -> None:
        from hsmlb.api.filters import ANONYMOUS
        from hsmlb.audit.cli import keygen
        from hsmlb.auth.devca import dev_pki
        from hsmlb.auth.devtls import dev_callers
        from hsmlb.auth.tls import channel_credentials

        self.cluster_up()
        base = yaml.safe_load(self.config_path.read_text())
        base["nodes"] = [n for n in base["nodes"] if n.get("kind", "pkcs11") == "pkcs11"][: self.args.nodes]
        base.pop("routes", None)
        pki = dev_pki(self.state_dir / "tls")
        keygen(self.state_dir / "audit.key")
        features = set(self.args.features.split(","))
        admin_creds = None
        secure = dict(base)
        if "tls" in features:
            secure["tls"] = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]),
                             "client_ca_file": str(pki["ca"])}
            self.client_tls = ("--ca", str(pki["ca"]), "--cert", str(pki["app_cert"]), "--key", str(pki["app_key"]))
            admin_creds = channel_credentials(pki["ca"], pki["operator_cert"], pki["operator_key"])
        if "auth" in features:
            callers = dev_callers({"per_s": 1e7, "burst": 1e7})  # the bucket runs, never refuses
            if "tls" not in features:  # no certificate, no identity: `anonymous` may do what `app` may (and
                callers[0].update(identity=ANONYMOUS, admin=True)  # list nodes: the bench's wait for them)
            secure["auth"] = {"callers": callers}
        if "audit" in features:
            secure["audit"] = {"dir": str(self.audit_dir), "signing_key_file": str(self.state_dir / "audit.key")}
        for side, config in (("off", base), ("on", secure)):
            path = self.state_dir / f"{side}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.admin_credentials = admin_creds if side == "on" else None  # the node wait: over mTLS, as admin
            self.daemons[side] = self.start_daemon(path, f"{side}.log")

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    def run_once(self) -> dict[str, float]:
        a = self.args
        figures: dict[str, float] = {}
        sides = SIDES if self.runs_done % 2 == 0 else SIDES[::-1]
        for side in sides:
            proc, address = self.daemons[side]
            extra = ("--items", str(a.items), *(self.client_tls if side == "on" else ()))
            for key, value in self.phase(proc, address, "batch", check=True, extra=extra).items():
                figures[f"sat.{side}.{key}"] = value
        if not self.rate:
            self.rate = min(a.rate, 0.5 * figures["sat.off.ops_per_s"])
        for side in sides:
            proc, address = self.daemons[side]
            extra = ("--items", str(a.paced_items), "--rate", f"{self.rate:.0f}",
                     *(self.client_tls if side == "on" else ()))
            for key, value in self.phase(proc, address, "paced", check=True, extra=extra).items():
                figures[f"paced.{side}.{key}"] = value
        figures["sat.ratio"] = figures["sat.on.ops_per_s"] / figures["sat.off.ops_per_s"]
        figures["sat.cpu_ratio"] = figures["sat.on.cpu_us_per_op"] / figures["sat.off.cpu_us_per_op"]
        figures["paced.p99_delta_ms"] = (figures["paced.on.p99_us"] - figures["paced.off.p99_us"]) / 1000
        figures["paced.rate"] = self.rate
        self.runs_done += 1
        return figures


def _span(runs: list[dict[str, float]], key: str, fmt: str = ",.0f") -> str:
    values = [r[key] for r in runs]
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def report(args: argparse.Namespace, runs: list[dict[str, float]], records: int) -> dict[str, Any]:
    n = len(runs)
    print(f"\nsecurity cost, {n} run(s): on = {args.features} vs all off; {args.nodes} token nodes; AES-128 ECB "
          f"EncryptData; records in the audit log: {records:,}; medians (min-max)")
    print(f"saturation (StreamBatch, {args.items} ops/message, {args.window} outstanding on {args.streams} streams, "
          f"{args.seconds:g} s per phase):")
    for side in SIDES:
        p = f"sat.{side}."
        cpu = {name: _span(runs, p + key, ",.1f") for name, key in (
            ("all", "cpu_us_per_op"), ("loop", "main_cpu_us_per_op"), ("threads", "threads_cpu_us_per_op"),
            ("workers", "workers_cpu_us_per_op"))}
        print(f"  {side:>3}: {_span(runs, p + 'ops_per_s')} ops/s; daemon CPU {cpu['all']} us/op (event loop "
              f"{cpu['loop']}, other threads {cpu['threads']}, token workers {cpu['workers']}); "
              f"errors {_span(runs, p + 'errors')}")
    ratios = ", ".join(f"{r['sat.ratio']:.1%}" for r in runs)
    print(f"  throughput on/off: {_span(runs, 'sat.ratio', '.1%')} (per run {ratios}); acceptance >= 90%; "
          f"daemon CPU per op on/off {_span(runs, 'sat.cpu_ratio', '.2f')}x")
    print(f"paced (open loop, {runs[0]['paced.rate']:,.0f} ops/s offered in messages of {args.paced_items}, "
          f"{args.seconds:g} s per phase):")
    for side in SIDES:
        p = f"paced.{side}."
        print(f"  {side:>3}: achieved {_span(runs, p + 'ops_per_s')} ops/s; p50 {_span(runs, p + 'p50_us')} us; "
              f"p99 {_span(runs, p + 'p99_us')} us; errors {_span(runs, p + 'errors')}")
    deltas = ", ".join(f"{r['paced.p99_delta_ms']:+.2f}" for r in runs)
    print(f"  p99 on - off: {_span(runs, 'paced.p99_delta_ms', '+.2f')} ms (per run {deltas}); acceptance <= 2 ms")
    summary = {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs),
                     "max": max(r[key] for r in runs)} for key in runs[0]}
    verdict = summary["sat.ratio"]["median"] >= 0.90 and summary["paced.p99_delta_ms"]["median"] <= 2.0
    print(f"acceptance 5 (medians): {'holds' if verdict else 'FAILS'}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repeat everything; report median and min-max")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per phase, not measured")
    parser.add_argument("--items", type=int, default=64, help="saturation: operations per StreamBatch message")
    parser.add_argument("--window", type=int, default=256, help="saturation: operations outstanding, all streams")
    parser.add_argument("--streams", type=int, default=2, help="saturation: concurrent StreamBatch streams")
    parser.add_argument("--rate", type=float, default=5000.0, help="paced: operations per second offered (capped "
                        "at half the off daemon's saturation throughput)")
    parser.add_argument("--paced-items", type=int, default=16, help="paced: operations per message")
    parser.add_argument("--nodes", type=int, default=2, help="serve from the first N dev token nodes")
    parser.add_argument("--features", default="tls,auth,audit", help="what 'on' turns on (for a breakdown)")
    parser.add_argument("--state-dir", type=Path, help="cluster state dir (default: a temp dir, removed at the end)")
    parser.add_argument("--json", type=Path, help="also write the runs and the summary here")
    args = parser.parse_args(argv)
    args.concurrency = 1  # Bench.phase passes these on; unused by the batch phases
    if args.runs < 1 or args.seconds <= 0 or args.items < 1 or args.paced_items < 1 or args.rate <= 0 \
            or args.window < max(args.items, args.streams) or args.nodes < 1 \
            or not set(args.features.split(",")) <= {"tls", "auth", "audit"}:
        parser.error("--runs, --seconds, --items, --paced-items, --rate, --nodes must be positive, --window >= --items "
                     "and --streams; --features is a comma list of tls, auth, audit")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = SecurityBench(args)
    records = [0]

    def count_records() -> None:  # before close(): the state dir may be a temp dir it removes
        records[0] = sum(1 for p in bench.audit_dir.glob("audit-*.jsonl") for _ in p.open("rb"))

    code, runs, _ = measure(
        bench, args.runs,
        lambda r: (f"saturation on/off {r['sat.ratio']:.1%} ({r['sat.on.ops_per_s']:,.0f} / "
                   f"{r['sat.off.ops_per_s']:,.0f} ops/s); paced at {r['paced.rate']:,.0f} ops/s p99 on "
                   f"{r['paced.on.p99_us']:,.0f} us, off {r['paced.off.p99_us']:,.0f} us "
                   f"({r['paced.p99_delta_ms']:+.2f} ms)"),
        banner=lambda: (f"off {bench.daemons['off'][1]}, on {bench.daemons['on'][1]} ({args.features}), "
                        f"state {bench.state_dir}"),
        finish=count_records)
    if code:
        return code
    summary = report(args, runs, records[0])
    write_json(args, runs, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
