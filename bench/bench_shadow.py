"""hsmlb benchmark: the cost of shadowing. The primary's ops/s and p99 with every token answer shadowed
to the emulated regions (candidate pool, 100%) against the same cluster without shadowing, A/B in one run.

One dev cluster (tokens + two emulated regions), two daemons on it: `off` (tokens primary, regions failover,
no shadow) and `on` (the same route with `candidate: apc, shadow_percent: 100`, as `hsmlb dev up --serve
--shadow` writes it). Each run measures both, in turn, with the batched wire (StreamBatch, --items ops per
message, AES-128 ECB EncryptData) from a fresh load client process (bench/_load.py), then (--unary) the
unary path. --runs N: the median, min and max of each figure. At the end the `on` daemon's shadow report
is printed: the regions' quota (APC: 500 symmetric ops/s per region by default) bounds what can be shadowed,
so at the token pool's rates most shadow calls are skipped{quota} or skipped{shed}; what is compared costs
the daemon a candidate request each.

    python bench/bench_shadow.py [--seconds 4] [--runs 3] [--items 16] [--window 512] [--no-unary]

Everything listens on or talks to 127.0.0.1 only and is torn down at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import yaml
from bench_daemon import Bench, measure, summarize

from hsmlb.dev.cluster import default_keys_file, dev_routes
from hsmlb.dev.regions import Emulator, region_node_config, start_dev_regions
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

FIGURES = (("ops_per_s", "ops/s", ",.0f"), ("p50_us", "p50 us", ",.0f"), ("p99_us", "p99 us", ",.0f"),
           ("cpu_us_per_op", "CPU us/op", ",.1f"), ("errors", "errors", ",.0f"))


class ShadowBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.emulators: list[Emulator] = []
        self.daemons: dict[str, tuple[Any, str]] = {}

    def start(self) -> None:
        self.cluster_up()
        self.emulators = start_dev_regions(default_keys_file(), self.state_dir.resolve())
        base = yaml.safe_load(self.config_path.read_text())
        base["nodes"] += [region_node_config(e, self.state_dir.resolve()) for e in self.emulators]
        for name, shadow in (("off", False), ("on", True)):
            config = {**base, "routes": dev_routes(shadow)}
            path = self.state_dir / f"hsmlb-shadow-{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.daemons[name] = self.start_daemon(path, f"daemon-{name}.log")

    def run_once(self) -> dict[str, float]:
        figures: dict[str, float] = {}
        phases = [("batch", ("--items", str(self.args.items)))] + ([("unary", ())] if self.args.unary else [])
        for mode, extra in phases:
            for name, (proc, address) in self.daemons.items():
                for key, value in self.phase(proc, address, mode, check=True, extra=extra).items():
                    figures[f"{mode}.{name}.{key}"] = value
            for key in ("ops_per_s", "p99_us"):
                figures[f"{mode}.on_over_off.{key}"] = figures[f"{mode}.on.{key}"] / figures[f"{mode}.off.{key}"]
        return figures

    def shadow_report(self) -> list[Any]:
        with grpc.insecure_channel(self.daemons["on"][1]) as channel:
            return list(pb_grpc.AdminStub(channel).GetShadowReport(pb.GetShadowReportRequest(), timeout=10).ops)

    def close(self) -> None:
        super().close()
        for emulator in self.emulators:
            emulator.stop()


def report(args: argparse.Namespace, summary: dict[str, dict[str, float]], ops: list[Any]) -> None:
    print(f"\nhsmlb shadowing cost: {args.runs} run(s), {args.seconds:g} s per phase, AES-128 ECB EncryptData; "
          f"StreamBatch {args.items} items/message, {args.streams} stream(s), {args.window} outstanding; unary "
          f"{args.concurrency} in flight; {os.cpu_count()} CPUs (a shared machine: compare the ratios)")
    print("each cell: median [min-max] over the runs; off = no shadow, on = every token answer shadowed")
    for mode in ("batch", "unary") if args.unary else ("batch",):
        print(f"\n{mode}")
        print(f"{'':<12}" + "".join(f"{n:>28}" for n in ("shadow off", "shadow on", "on / off")))
        for key, label, fmt in FIGURES:
            cells = []
            for name in ("off", "on", "on_over_off"):
                s = summary.get(f"{mode}.{name}.{key}")
                cell_fmt = ".3f" if name == "on_over_off" else fmt
                cells.append(f"{s['median']:{cell_fmt}} [{s['min']:{cell_fmt}}-{s['max']:{cell_fmt}}]" if s else "")
            print(f"{label:<12}" + "".join(f"{c:>28}" for c in cells))
    print("\nshadow report of the `on` daemon (all runs):")
    for r in ops:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items())) or "-"
        print(f"  {r.op}/{r.side}: samples {r.samples}, matches {r.matches}, discrepancies {r.discrepancies}, "
              f"candidate errors {r.candidate_errors}, skipped {skipped}; p99 primary {r.primary_p99_ms:.2f} ms, "
              f"candidate {r.candidate_p99_ms:.2f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="cluster state dir (default: a temp dir, removed at the end)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per phase, not measured")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=16, help="operations per StreamBatch message")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--window", type=int, default=512, help="operations outstanding, over all streams")
    parser.add_argument("--concurrency", type=int, default=32, help="unary calls in flight")
    parser.add_argument("--no-unary", dest="unary", action="store_false")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = ShadowBench(args)
    code, runs, ops = measure(
        bench, args.runs,
        lambda r: (f"batch off {r['batch.off.ops_per_s']:,.0f} ops/s p99 {r['batch.off.p99_us']:,.0f} us, on "
                   f"{r['batch.on.ops_per_s']:,.0f} ops/s p99 {r['batch.on.p99_us']:,.0f} us"),
        finish=bench.shadow_report)
    if code:
        return code
    report(args, summarize(runs), ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
