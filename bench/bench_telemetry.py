"""hsmlb benchmark, the cost of telemetry: the same load on three daemons in one run, on one dev cluster.

  off      tracing disabled, no metrics listener (no filter on the seam at all)
  default  metrics on (/metrics and the status page's 2 s sampler) + tracing at the default 1% trace-id ratio
  full     metrics on + tracing at 100% (always_on): every operation and attempt a span, exported

Spans go over OTLP/HTTP protobuf to a discard sink in this process (it answers 200 and keeps nothing), so
the daemon pays the real encode-and-send cost. The load and the figures are bench/bench_batch.py's: the
batched wire (StreamBatch, --items per message) and unary EncryptData, each phase from a fresh client
process, server CPU from /proc for the daemon and its token workers; every daemon is measured in every
run; --runs repeats everything and the median, min and max are printed, with each daemon's ratio to `off`.

    python bench/bench_telemetry.py [--seconds 4] [--runs 3] [--items 16] [--window 512] [--streams 2]

Loopback only; everything started is torn down at the end. The machine is shared: compare within a run.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml
from bench_batch import BatchBench, parse_args, report
from bench_daemon import ENV, measure, summarize, write_json

VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"tracing": {"enabled": False}},
    "default": {"metrics": {"listen": "127.0.0.1:0"}, "tracing": {}},
    "full": {"metrics": {"listen": "127.0.0.1:0"}, "tracing": {"sampler": "always_on"}},
}


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


class TelemetryBench(BatchBench):
    def start(self) -> None:
        self.sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=self.sink.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{self.sink.server_address[1]}"
        self.cluster_up()
        base = yaml.safe_load(self.config_path.read_text())
        for name, top in VARIANTS.items():
            config = {**base, **top}
            if top["tracing"].get("enabled", True):
                config["tracing"] = {**top["tracing"], "protocol": "http/protobuf", "endpoint": endpoint}
            path = self.state_dir / f"hsmlb-telemetry-{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.daemons[name] = self.start_daemon(path, f"daemon-{name}.log")
        self.daemon, self.daemon_address = self.daemons["off"]
        self.start_echo()

    def close(self) -> None:
        if hasattr(self, "sink"):
            self.sink.shutdown()
        super().close()


def ratios(summary: dict[str, dict[str, float]], runs: list[dict[str, float]], phases: list[str]) -> None:
    """Per phase and daemon: throughput and p99 against `off` in the same run (median, min-max over runs)."""
    print("\nagainst `off` in the same run: median [min-max] over the runs")
    for phase in phases:
        for name in ("default", "full"):
            tput = [r[f"{phase}.daemon[{name}].ops_per_s"] / r[f"{phase}.daemon[off].ops_per_s"] for r in runs]
            p99 = [(r[f"{phase}.daemon[{name}].p99_us"] - r[f"{phase}.daemon[off].p99_us"]) / 1000 for r in runs]
            cpu = [r[f"{phase}.daemon[{name}].cpu_us_per_op"] - r[f"{phase}.daemon[off].cpu_us_per_op"] for r in runs]
            mid = len(runs) // 2
            print(f"{phase:<8} {name:<8} throughput {sorted(tput)[mid]:.3f} [{min(tput):.3f}-{max(tput):.3f}]"
                  f"  p99 {sorted(p99)[mid]:+.3f} ms [{min(p99):+.3f}-{max(p99):+.3f}]"
                  f"  CPU {sorted(cpu)[mid]:+.1f} us/op [{min(cpu):+.1f}-{max(cpu):+.1f}]")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else [*sys.argv[1:]] or ["--items", "16"])
    args.nodes_variants = list(VARIANTS)
    for key in [k for k in ENV if k.startswith("OTEL_")]:  # the configs say what each daemon does
        del ENV[key]
    code, runs, _ = measure(
        TelemetryBench(args), args.runs,
        lambda r: ", ".join(f"{v} {r[f'batch{args.items[0]}.daemon[{v}].ops_per_s']:,.0f} ops/s" for v in VARIANTS))
    if code:
        return code
    summary = summarize(runs)
    report(args, summary)
    ratios(summary, runs, [f"batch{n}" for n in args.items] + (["unary"] if args.unary else []))
    write_json(args, runs, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
