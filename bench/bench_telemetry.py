"""hsmlb benchmark, the cost of telemetry (issue 12, acceptance 4): three daemons on one dev cluster, one run.

  off      tracing disabled, no metrics listener (no filter on the seam at all)
  default  metrics on (/metrics and the status page's 2 s sampler) + tracing at the default 1% trace-id ratio
  full     metrics on + tracing at 100% (always_on): every operation and attempt a span, exported

Spans go over OTLP/HTTP protobuf to a discard sink in this process (it answers 200 and keeps nothing), so
the daemon pays the real encode-and-send cost. Each run starts the daemons afresh. On the batched wire
(StreamBatch, --items per message):

  saturation  closed loop, --window operations outstanding over --streams streams: throughput and the daemon's
              CPU per operation (/proc, the daemon and its token workers);
  paced       open loop, --rate operations/s offered in messages of --items on --paced-streams streams, below
              saturation: p99 latency from each message's scheduled send time (no coordinated omission).

off and default, the pair acceptance 4 compares, are measured in alternating slots of --slot seconds (ABBA,
--slots each, who is A swapped every run) from one client process (bench/_alternate.py): on this shared
host the speed drifts by tens of percent over seconds and one phase's p99 moves by milliseconds with the
co-located load generator's scheduling, more than the cost measured; side by side in time, drift hits both
alike. Each variant's figures pool all its slots (p99 over every latency); beside the pooled p99 difference,
the paired one (the median over neighbouring slot pairs of default's slot p99 minus off's), which one
stalled slot cannot move. full (100% sampling) gets one phase of --seconds each, from a fresh client.
--default-runs puts another configuration in the `default` daemon's place: `off` for an A/A run, whose
differences are the bench's own (position, start order, host), the floor under any A/B figure; `metrics`
or `tracing` (one half of the default) to split its cost.

It prints acceptance 4 as it reads: default/off throughput at saturation (>= 0.95), default - off paced p99
(<= 1 ms), and the cost of 100% sampling; each a median [min-max] of the per-run figures over --runs.

    python bench/bench_telemetry.py [--runs 3] [--seconds 3] [--items 16] [--window 512] [--rate 5000]
                                    [--slots 30] [--slot 0.5]

With the defaults it takes about 4 minutes (--runs 5: about 7). 30 slots rather than 10: the per-run
default/off ratio then spreads over ~6 points instead of ~25 (10 runs each, same host, same code).
Loopback only; everything started is torn down at the end.
The machine may be shared: only ratios within a run mean much there.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from _procs import stop
from bench_daemon import ENV, Bench, measure, summarize, write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"tracing": {"enabled": False}},
    "default": {"metrics": {"listen": "127.0.0.1:0"}, "tracing": {}},
    "full": {"metrics": {"listen": "127.0.0.1:0"}, "tracing": {"sampler": "always_on"}},
}
IN_DEFAULTS_PLACE: dict[str, dict[str, Any]] = {  # --default-runs: what else the `default` daemon may run
    "default": VARIANTS["default"], "off": VARIANTS["off"],
    "metrics": {"metrics": {"listen": "127.0.0.1:0"}, "tracing": {"enabled": False}}, "tracing": {"tracing": {}},
}
PHASES = ("saturation", "paced")


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


class TelemetryBench(Bench):
    """One cluster, one span sink, a daemon per variant."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.daemons: dict[str, Any] = {}
        self.runs_done = 0
        self.slot_log: list[dict[str, Any]] = []  # per run and phase: each slot's p99, in time order

    def start(self) -> None:
        self.sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=self.sink.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{self.sink.server_address[1]}"
        self.cluster_up()
        base = yaml.safe_load(self.config_path.read_text())
        for name, top in VARIANTS.items():
            top = IN_DEFAULTS_PLACE[self.args.default_runs] if name == "default" else top
            config = {**base, **top}
            if top["tracing"].get("enabled", True):
                config["tracing"] = {**top["tracing"], "protocol": "http/protobuf", "endpoint": endpoint}
            path = self.state_dir / f"hsmlb-telemetry-{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.daemons[name] = self.start_daemon(path, f"daemon-{name}.log")
        self.daemon, self.daemon_address = self.daemons["off"]

    def restart(self) -> None:
        """Fresh daemons (same configs): two processes of the same code differ by up to ~10% in CPU per op
        on a shared machine (their token workers too), which would otherwise bias every run the same way."""
        for name, (proc, _) in self.daemons.items():
            stop(proc)
            self.procs.remove(proc)
            self.daemons[name] = self.start_daemon(self.state_dir / f"hsmlb-telemetry-{name}.yaml",
                                                   f"daemon-{name}.log")
        self.daemon, self.daemon_address = self.daemons["off"]

    def run_once(self) -> dict[str, float]:
        a = self.args
        if self.runs_done:
            self.restart()
        flip = self.runs_done % 2  # who is A in the ABBA slots: swapped every run
        self.runs_done += 1
        names = ("default", "off") if flip else ("off", "default")
        figures: dict[str, float] = {}
        items = ("--items", str(a.items))
        saturation = (*items, "--streams", str(a.streams), "--window", str(a.window))
        paced = (*items, "--streams", str(a.paced_streams), "--rate", str(a.rate))
        for phase, mode, extra in (("saturation", "batch", saturation), ("paced", "paced", paced)):
            result = self.alternate(*names, self.daemons, mode, a.slots, a.slot, extra)
            for name in names:
                for key, value in result[name].items():
                    figures[f"{phase}.{name}.{key}"] = value
            ratio = result["b_over_a"]
            figures[f"ab.default.{phase}_pair_ratio"] = 1 / ratio if flip else ratio
            diff_ms = result["b_minus_a_p99_us"] / 1000
            figures[f"ab.default.{phase}_pair_p99_ms"] = -diff_ms if flip else diff_ms
            self.slot_log.append({"run": self.runs_done, "phase": phase, "a": names[0], **result["slot_p99_us"]})
        proc, address = self.daemons["full"]
        for phase, mode, extra in (("saturation", "batch", ("--items", str(a.items))),
                                   ("paced", "paced", ("--items", str(a.items), "--rate", str(a.rate),
                                                       "--streams", str(a.paced_streams)))):
            for key, value in self.phase(proc, address, mode, check=True, extra=extra).items():
                figures[f"{phase}.full.{key}"] = value
        for name in ("default", "full"):
            figures[f"ab.{name}.throughput_ratio"] = (figures[f"saturation.{name}.ops_per_s"]
                                                      / figures["saturation.off.ops_per_s"])
            figures[f"ab.{name}.cpu_us_per_op"] = (figures[f"saturation.{name}.cpu_us_per_op"]
                                                   - figures["saturation.off.cpu_us_per_op"])
            figures[f"ab.{name}.paced_p99_ms"] = (figures[f"paced.{name}.p99_us"] - figures["paced.off.p99_us"]) / 1000
            figures[f"ab.{name}.paced_cpu_us_per_op"] = (figures[f"paced.{name}.cpu_us_per_op"]
                                                         - figures["paced.off.cpu_us_per_op"])
        return figures

    def close(self) -> None:
        if hasattr(self, "sink"):
            self.sink.shutdown()
        super().close()


def cell(summary: dict[str, dict[str, float]], key: str, fmt: str) -> str:
    s = summary[key]
    return f"{s['median']:{fmt}} [{s['min']:{fmt}} .. {s['max']:{fmt}}]"


def report(args: argparse.Namespace, summary: dict[str, dict[str, float]]) -> None:
    print(f"\nhsmlb telemetry cost: {args.runs} run(s), {args.seconds:g} s per phase, AES-128 ECB EncryptData on "
          f"StreamBatch, {args.items} per message; saturation: {args.window} outstanding over {args.streams} "
          f"stream(s); paced: {args.rate:,.0f} ops/s offered on {args.paced_streams} stream(s); off/default in "
          f"{args.slots} x {args.slot:g} s alternating slots each per phase; {os.cpu_count()} CPUs; "
          "each cell: median [min .. max] over the runs")
    print(f"{'':<26}" + "".join(f"{n:>34}" for n in VARIANTS))
    for phase, key, label, fmt in (("saturation", "ops_per_s", "saturation ops/s", ",.0f"),
                                   ("saturation", "cpu_us_per_op", "saturation CPU us/op", ",.1f"),
                                   ("saturation", "p99_us", "saturation p99 us (queue)", ",.0f"),
                                   ("saturation", "errors", "saturation errors", ",.0f"),
                                   ("paced", "ops_per_s", "paced ops/s", ",.0f"),
                                   ("paced", "p50_us", "paced p50 us", ",.0f"),
                                   ("paced", "p99_us", "paced p99 us", ",.0f"),
                                   ("paced", "cpu_us_per_op", "paced CPU us/op", ",.1f"),
                                   ("paced", "errors", "paced errors", ",.0f")):
        print(f"{label:<26}" + "".join(f"{cell(summary, f'{phase}.{n}.{key}', fmt):>34}" for n in VARIANTS))
    tput = summary["ab.default.throughput_ratio"]
    p99 = summary["ab.default.paced_p99_ms"]
    what = ("metrics on + tracing at 1%" if args.default_runs == "default"
            else f"{args.default_runs} in its place (--default-runs)")
    print(f"\nacceptance 4 (default = {what}, against off in the same run):")
    print(f"  throughput at saturation, default/off: {cell(summary, 'ab.default.throughput_ratio', '.3f')}"
          f"  (>= 0.95: {'holds' if tput['median'] >= 0.95 else 'FAILS'} on the median); neighbouring slots' "
          f"ratio {cell(summary, 'ab.default.saturation_pair_ratio', '.3f')}")
    paired = summary["ab.default.paced_pair_p99_ms"]
    print(f"  p99 paced at {args.rate:,.0f} ops/s, default - off: pooled "
          f"{cell(summary, 'ab.default.paced_p99_ms', '+.3f')} ms  (<= 1 ms: "
          f"{'holds' if p99['median'] <= 1.0 else 'FAILS'} on the median); paired slots "
          f"{cell(summary, 'ab.default.paced_pair_p99_ms', '+.3f')} ms  (<= 1 ms: "
          f"{'holds' if paired['median'] <= 1.0 else 'FAILS'} on the median)")
    print(f"  daemon CPU, default - off: {cell(summary, 'ab.default.cpu_us_per_op', '+.1f')} us/op at saturation, "
          f"{cell(summary, 'ab.default.paced_cpu_us_per_op', '+.1f')} us/op paced")
    print("the cost of 100% sampling (always_on, every op and attempt a span, exported), against off:")
    print(f"  throughput at saturation, full/off: {cell(summary, 'ab.full.throughput_ratio', '.3f')}; "
          f"daemon CPU {cell(summary, 'ab.full.cpu_us_per_op', '+.1f')} us/op")
    print(f"  p99 paced, full - off: {cell(summary, 'ab.full.paced_p99_ms', '+.3f')} ms; "
          f"daemon CPU {cell(summary, 'ab.full.paced_cpu_us_per_op', '+.1f')} us/op paced")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="cluster state dir (default: a temp dir, removed at the end)")
    parser.add_argument("--runs", type=int, default=3, help="repeat everything; report median [min .. max]")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per phase, not measured")
    parser.add_argument("--items", type=int, default=16, help="operations per StreamBatch message")
    parser.add_argument("--streams", type=int, default=2, help="saturation: concurrent StreamBatch streams")
    parser.add_argument("--window", type=int, default=512, help="saturation: operations outstanding, all streams")
    parser.add_argument("--rate", type=float, default=5000.0, help="paced: operations/s offered, all streams")
    parser.add_argument("--paced-streams", type=int, default=1, help="paced: concurrent StreamBatch streams")
    parser.add_argument("--slots", type=int, default=30,
                        help="off and default: slots per variant per phase, alternated ABBA from one client")
    parser.add_argument("--slot", type=float, default=0.5, help="off and default: seconds per slot")
    parser.add_argument("--default-runs", choices=tuple(IN_DEFAULTS_PLACE), default="default",
                        help="the `default` daemon's configuration: off for an A/A run (the bench's own "
                        "differences), metrics or tracing alone to split the cost")
    parser.add_argument("--json", type=Path, help="also write the results here (with every slot's p99)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.items < 1 or args.streams < 1 or args.window < args.items \
            or args.rate <= 0 or args.paced_streams < 1 or args.slots < 1 or args.slot <= 0:
        parser.error("--runs, --seconds, --items, --streams, --rate, --paced-streams, --slots, --slot must be "
                     "positive, --window >= --items")
    args.concurrency, args.pool_size, args.balancer, args.nodes = 1, None, None, None  # what Bench reads
    args.idle_seconds, args.token = 0.0, "node-a"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for key in [k for k in ENV if k.startswith("OTEL_")]:  # the configs say what each daemon does
        del ENV[key]
    bench = TelemetryBench(args)
    code, runs, _ = measure(
        bench, args.runs,
        lambda r: (", ".join(f"{v} {r[f'saturation.{v}.ops_per_s']:,.0f} ops/s p99 paced "
                             f"{r[f'paced.{v}.p99_us'] / 1000:.2f} ms" for v in VARIANTS)
                   + f"; default/off {r['ab.default.throughput_ratio']:.3f}"))
    if code:
        return code
    summary = summarize(runs)
    report(args, summary)
    write_json(args, runs, {**summary, "slot_p99_us": bench.slot_log})
    return 0


if __name__ == "__main__":
    sys.exit(main())
