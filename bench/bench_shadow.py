"""hsmlb benchmark: the cost of shadowing (issue 11, acceptance 7). The primary's throughput at saturation
and its p99 paced at a fixed rate below saturation, with every token answer shadowed to the emulated
regions (candidate pool, shadow_percent 100) against the same cluster without shadowing, A/B in one run,
plus the fraction of the primary's operations actually shadowed (the rest skipped by the shadow budget,
the regions' quota or a full candidate).

One dev cluster (tokens + two emulated regions), two daemons on it: `off` (tokens primary, regions failover,
no shadow) and `on` (the same route with `candidate: apc, shadow_percent: 100`, as `hsmlb dev up --serve
--shadow` writes it). Each run measures both in alternating slots (ABBA, --slots of --slot seconds each,
who is A swapped every run) from one client process (bench/_alternate.py), so that the host's drift over
seconds hits both alike, with the batched wire (StreamBatch, --items ops per message, AES-128 ECB
EncryptData); each daemon's figures pool all its slots:
  * saturation: closed loop, --window operations outstanding: ops/s, daemon CPU us/op, errors;
  * paced: open loop at --rate ops/s (below saturation), latency counted from when each op was due: p50, p99.
--runs N: the median, min and max of each figure. The shadow budget (hsmlb/shadow/budget.py) lets shadow
calls use only what the primary leaves over, so at saturation the shadowed fraction shrinks, not the primary.
The emulated regions run on the same 2 cores here; in production they are remote. --regions-nice 19 runs
them at the lowest CPU priority; --regions-cpu 1 gives them CPU 1 and the rest CPU 0, the closest this host
gets to regions on machines of their own (the primary then has one core, in both daemons alike).

    python bench/bench_shadow.py [--runs 3] [--slots 8] [--slot 0.5] [--rate 1000] [--items 16] [--window 512]
                                 [--regions-nice 19] [--regions-cpu 1] [--budget-max-per-s 250] [--in-loop]

Defaults take about 2-3 minutes. Everything listens on or talks to 127.0.0.1 only and is torn down at the
end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import yaml
from _procs import threads, tree_cpu_s
from bench_daemon import Bench, measure, summarize

from hsmlb.dev.cluster import default_keys_file, dev_routes
from hsmlb.dev.regions import Emulator, region_node_config, start_dev_regions
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc

FIGURES = (("sat.ops_per_s", "saturation ops/s", ",.0f"), ("sat.cpu_us_per_op", "saturation CPU us/op", ",.1f"),
           ("sat.regions_cpu_us_per_op", "  regions CPU us/op", ",.1f"),
           ("sat.errors", "saturation errors", ",.0f"), ("sat.shadowed", "saturation shadowed", ".1%"),
           ("paced.ops_per_s", "paced ops/s", ",.0f"), ("paced.p50_us", "paced p50 us", ",.0f"),
           ("paced.p99_us", "paced p99 us", ",.0f"), ("paced.cpu_us_per_op", "paced CPU us/op", ",.1f"),
           ("paced.regions_cpu_us_per_op", "  regions CPU us/op", ",.1f"),
           ("paced.errors", "paced errors", ",.0f"), ("paced.shadowed", "paced shadowed", ".1%"))
RATIOS = ("sat.ops_per_s", "sat.cpu_us_per_op", "paced.p99_us")
SHADOW_OP = "encrypt"


class ShadowBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.emulators: list[Emulator] = []
        self.daemons: dict[str, tuple[Any, str]] = {}
        self.budget: tuple[float, int, float] = (0.0, 0, 0.0)
        self.cuts = 0
        self.runs_done = 0

    def start(self) -> None:
        regions_cpu = self.args.regions_cpu
        if regions_cpu is not None:  # everything started from here on (daemons, workers, load clients) inherits it
            os.sched_setaffinity(0, os.sched_getaffinity(0) - {regions_cpu})
        self.cluster_up()
        self.emulators = start_dev_regions(default_keys_file(), self.state_dir.resolve())
        for emulator in self.emulators:
            for tid in threads(emulator.process.pid):  # niceness and affinity are per thread
                if self.args.regions_nice:
                    os.setpriority(os.PRIO_PROCESS, tid, self.args.regions_nice)
                if regions_cpu is not None:
                    os.sched_setaffinity(tid, {regions_cpu})
        base = yaml.safe_load(self.config_path.read_text())
        base["nodes"] += [region_node_config(e, self.state_dir.resolve()) for e in self.emulators]
        for name, shadow in (("off", False), ("on", True)):
            config = {**base, "routes": dev_routes(shadow), "shadow": {}}
            if self.args.budget_max_per_s is not None:  # the operators' lever: coverage traded for the primary's p99
                config["shadow"]["budget_max_per_s"] = self.args.budget_max_per_s
            if self.args.in_loop:  # shadow calls on the primary's event loop, as before the executor
                config["shadow"]["executor"] = False
            elif regions_cpu is not None and not self.args.executor_with_primary:
                config["shadow"]["executor_cpus"] = [regions_cpu]  # the executor beside the regions, off the primary's
            path = self.state_dir / f"hsmlb-shadow-{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.daemons[name] = self.start_daemon(path, f"daemon-{name}.log")

    def run_once(self) -> dict[str, float]:
        a = self.args
        figures: dict[str, float] = {}
        common = ("--items", str(a.items), "--streams", str(a.streams))
        names = ("on", "off") if self.runs_done % 2 else ("off", "on")  # who is A in the ABBA slots
        for phase, mode, extra in (("sat", "batch", (*common, "--window", str(a.window))),
                                   ("paced", "paced", (*common, "--rate", str(a.rate)))):
            before, regions_before = self.coverage(), self.regions_cpu_s()
            result = self.alternate(*names, self.daemons, mode, a.slots, a.slot, extra)
            after, regions_cpu = self.coverage(), self.regions_cpu_s() - regions_before
            for name in names:
                for key, value in result[name].items():
                    figures[f"{name}.{phase}.{key}"] = value
            total = after[1] - before[1]
            figures[f"on.{phase}.shadowed"] = (after[0] - before[0]) / total if total else 0.0
            figures[f"off.{phase}.shadowed"] = 0.0
            # the regions answer only the `on` daemon's shadow calls: their CPU over the phase, per `on` op
            on_ops = result["on"]["ops"]
            figures[f"on.{phase}.regions_cpu_us_per_op"] = regions_cpu / on_ops * 1e6 if on_ops else float("nan")
            figures[f"off.{phase}.regions_cpu_us_per_op"] = 0.0
            cuts = self.budget[1]
            figures[f"on.{phase}.budget_cuts"] = cuts - self.cuts
            self.cuts = cuts
        self.runs_done += 1
        for key in RATIOS:
            figures[f"on_over_off.{key}"] = figures[f"on.{key}"] / figures[f"off.{key}"]
        return figures

    def regions_cpu_s(self) -> float:
        return sum(tree_cpu_s(e.process.pid) for e in self.emulators)

    def shadow_report(self) -> list[Any]:
        return list(self.report_of_on().ops)

    def report_of_on(self) -> Any:
        with grpc.insecure_channel(self.daemons["on"][1]) as channel:
            return pb_grpc.AdminStub(channel).GetShadowReport(pb.GetShadowReportRequest(), timeout=10)

    def coverage(self) -> tuple[int, int]:
        """(operations shadowed, operations the primary answered) of the `on` daemon so far, candidate side."""
        report = self.report_of_on()
        self.budget = (report.budget_rate_per_s, report.budget_cuts, report.budget_lag_ms)
        for r in report.ops:
            if r.op == SHADOW_OP and r.side == "candidate":
                called = r.samples + r.candidate_errors
                return called, called + sum(r.skipped.values())
        return 0, 0

    def close(self) -> None:
        super().close()
        for emulator in self.emulators:
            emulator.stop()


def report(args: argparse.Namespace, summary: dict[str, dict[str, float]], ops: list[Any]) -> None:
    print(f"\nhsmlb shadowing cost: {args.runs} run(s), off and on alternated in {args.slots} x {args.slot:g} s slots "
          f"each per phase, regions at niceness {args.regions_nice}"
          f"{'' if args.regions_cpu is None else f' on CPU {args.regions_cpu} (the rest on the others)'}; "
          f"shadow budget_max_per_s {'default' if args.budget_max_per_s is None else f'{args.budget_max_per_s:g}'}; "
          "AES-128 ECB EncryptData, "
          f"StreamBatch {args.items} items/message, {args.streams} stream(s); saturation: {args.window} outstanding "
          f"(closed loop); paced: {args.rate:,.0f} ops/s offered (open loop); {os.cpu_count()} CPUs")
    where = "on the daemon's event loop" if args.in_loop else "in the shadow executor process"
    print(f"each cell: median [min-max] over the runs; off = no shadow, on = shadow_percent 100 to the regions, "
          f"the calls made {where}; shadowed = share of the primary's ops that got a shadow call")

    def cell(key: str, fmt: str) -> str:
        s = summary.get(key)
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]" if s else ""

    print(f"{'':<22}" + "".join(f"{n:>30}" for n in ("shadow off", "shadow on", "on / off")))
    for key, label, fmt in FIGURES:
        ratio = cell(f"on_over_off.{key}", ".3f") if key in RATIOS else ""
        print(f"{label:<22}{cell(f'off.{key}', fmt):>30}{cell(f'on.{key}', fmt):>30}{ratio:>30}")
    sat, p99 = summary["on_over_off.sat.ops_per_s"], summary["on_over_off.paced.p99_us"]
    print(f"\nacceptance 7: primary throughput at saturation, shadow on / off = {sat['median']:.3f} "
          f"[{sat['min']:.3f}-{sat['max']:.3f}]; primary p99 paced at {args.rate:,.0f} ops/s, on / off = "
          f"{p99['median']:.3f} [{p99['min']:.3f}-{p99['max']:.3f}] ({summary['off.paced.p99_us']['median']:,.0f} "
          f"-> {summary['on.paced.p99_us']['median']:,.0f} us); shadowed {summary['on.sat.shadowed']['median']:.1%} "
          f"at saturation, {summary['on.paced.shadowed']['median']:.1%} paced")
    print("\nshadow report of the `on` daemon (all runs):")
    for r in ops:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items())) or "-"
        print(f"  {r.op}/{r.side}: samples {r.samples}, matches {r.matches}, discrepancies {r.discrepancies}, "
              f"candidate errors {r.candidate_errors}, skipped {skipped}; p99 primary {r.primary_p99_ms:.2f} ms, "
              f"candidate {r.candidate_p99_ms:.2f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="cluster state dir (default: a temp dir, removed at the end)")
    parser.add_argument("--slots", type=int, default=8, help="slots per daemon per phase, off and on alternated "
                        "ABBA from one client (bench/_alternate.py)")
    parser.add_argument("--slot", type=float, default=0.5, help="seconds per slot")
    parser.add_argument("--regions-nice", type=int, default=0, help="run the emulated regions at this niceness "
                        "(they stand for remote regions: 19 keeps their CPU off the primary's share of the cores)")
    parser.add_argument("--budget-max-per-s", type=float, help="the `on` daemon's shadow.budget_max_per_s "
                        "(default: the daemon's, 2,000/s)")
    parser.add_argument("--regions-cpu", type=int, help="pin the emulated regions to this CPU and everything else "
                        "(daemons, token workers, load clients) to the others: the regions as remote machines")
    parser.add_argument("--in-loop", action="store_true", help="the `on` daemon makes its shadow calls on its own "
                        "event loop (shadow.executor: false) instead of in the executor process")
    parser.add_argument("--executor-with-primary", action="store_true", help="with --regions-cpu: leave the executor "
                        "on the primary's CPUs (default: shadow.executor_cpus is the regions' CPU)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per phase, not measured")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase: ops/s offered, below saturation")
    parser.add_argument("--items", type=int, default=16, help="operations per StreamBatch message")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--window", type=int, default=512, help="saturation: operations outstanding, all streams")
    parser.add_argument("--concurrency", type=int, default=32, help="(unused: the load client's unary setting)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = ShadowBench(args)
    code, runs, ops = measure(
        bench, args.runs,
        lambda r: (f"saturation off {r['off.sat.ops_per_s']:,.0f} on {r['on.sat.ops_per_s']:,.0f} ops/s "
                   f"(shadowed {r['on.sat.shadowed']:.0%}); paced p99 off {r['off.paced.p99_us']:,.0f} on "
                   f"{r['on.paced.p99_us']:,.0f} us (shadowed {r['on.paced.shadowed']:.0%}); shadow budget cut "
                   f"{r['on.sat.budget_cuts']:.0f} times at saturation, {r['on.paced.budget_cuts']:.0f} paced"),
        finish=bench.shadow_report)
    if code:
        return code
    report(args, summarize(runs), ops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
