"""hsmlb benchmark, batched wire: StreamBatch ops/s, latency and daemon CPU per op, all daemon processes
included, against a bare grpc.aio echo in the same run; and the unary call against the same echo (P3).

One run measures, each phase from a fresh co-located asyncio load client (bench/_load.py, its own process):
  * for each --items (operations per StreamBatch message, default 1 4 16 64), with at most --window
    operations outstanding over --streams streams: the bare echo (bench/echo_server.py, the daemon's gRPC
    options, one echo message per request message) and the daemon (AES-128 ECB EncryptData on the dev
    cluster's tokens);
  * unary EncryptData (--concurrency calls in flight) on the echo and on the daemon (unless --no-unary);
  * the token's own op: CPU per AES-128 ECB encrypt straight through python-pkcs11 on one pooled session
    (bench/_pkcs11_direct.py), so that "daemon CPU - token op" shows what is ours.
Per phase: ops/s, p50/p99 per operation (from the item's send to its answer), and server CPU us/op from
/proc/PID/stat utime+stime read before and after the phase, for the server and every descendant, split
into the event loop thread, gRPC's threads and the token workers (children), plus wake-ups per op.
With --nodes-variants (e.g. `all 2 all/32`) one daemon per variant runs on the same cluster (`2`: only the
first two token nodes in its config: fewer, busier token workers; `/32`: pool_size 32 on each token node;
`+copies`: session_key_copies on the token nodes),
each measured in turn in every run; `all/32@/tmp/base`: the same, running the hsmlb source unpacked in
/tmp/base (e.g. `git archive BASE | tar -x -C /tmp/base`, plus hsmlb/v1/*_pb2*.py): before/after in one run.
With --runs N everything repeats N times; the median, min and max of each figure are printed, and at the
end one "P3" line per daemon: CPU per op at the largest --items (goal <= 60 us) and the unary call's CPU as a
multiple of the echo's (goal <= 1.3x). Defaults: 3 runs, about 3 minutes on 2 vCPUs.

    python bench/bench_batch.py [--seconds 4] [--runs 3] [--items 1 4 16 64] [--window 512] [--streams 2]
                                [--nodes-variants all 2] [--no-unary] [--json out.json]

Everything listens on or talks to 127.0.0.1 only and is torn down at the end, on error and on Ctrl-C.
Figures measured on this 2-core machine, shared with other work: see README "Performance".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from bench_daemon import Bench, measure, summarize, write_json

PHASE_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("ops_per_s", "ops/s", ",.0f"),
    ("p50_us", "p50 us", ",.0f"),
    ("p99_us", "p99 us", ",.0f"),
    ("cpu_us_per_op", "CPU us/op", ",.1f"),
    ("main_cpu_us_per_op", " loop", ",.1f"),
    ("threads_cpu_us_per_op", " grpc thr", ",.1f"),
    ("workers_cpu_us_per_op", " workers", ",.1f"),
    ("wakeups_per_op", " wakeups/op", ",.2f"),
    ("loadgen_cpu_us_per_op", "client us/op", ",.1f"),
    ("errors", "errors", ",.0f"),
)


class BatchBench(Bench):
    """One cluster, one echo, one daemon per node variant."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.daemons: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def start(self) -> None:
        self.cluster_up()
        base = yaml.safe_load(self.config_path.read_text())
        for variant in self.args.nodes_variants:
            config = dict(base)
            spec, _, tree = variant.partition("@")
            spec, _, flag = spec.partition("+")
            nodes, _, pool = spec.partition("/")
            if nodes != "all":
                config["nodes"] = _first_tokens(base["nodes"], int(nodes))
            if pool:
                config["nodes"] = [{**n, "pool_size": int(pool)} if n.get("kind", "pkcs11") == "pkcs11" else n
                                   for n in config["nodes"]]
            if flag:  # +copies / +nocopies: the token nodes' session_key_copies
                config["nodes"] = [{**n, "session_key_copies": flag == "copies"} if n.get("kind", "pkcs11") == "pkcs11"
                                   else n for n in config["nodes"]]
            if tree and not flag:  # an older revision may not know the setting (its config forbids unknown keys)
                config["nodes"] = [{k: v for k, v in n.items() if k != "session_key_copies"} for n in config["nodes"]]
            path = self.state_dir / f"hsmlb-bench-{_slug(variant)}.yaml"
            path.write_text(yaml.safe_dump(config))
            self.daemons[variant] = self.start_daemon(path, f"daemon-{_slug(variant)}.log",
                                                      Path(tree) if tree else None)
        self.daemon, self.daemon_address = next(iter(self.daemons.values()))
        self.start_echo()

    def run_once(self) -> dict[str, float]:
        assert self.echo is not None
        figures: dict[str, float] = {
            "token.op_cpu_us": self.direct(pooled_only=True)["pooled_cpu_us_per_op"],
            "token.copy_op_cpu_us": self.direct(pooled_only=True, session_copy=True)["pooled_cpu_us_per_op"]}
        targets = [("echo", self.echo, self.echo_address)]
        targets += [(f"daemon[{v}]", proc, address) for v, (proc, address) in self.daemons.items()]
        for items in self.args.items:
            for name, proc, address in targets:
                result = self.phase(proc, address, "batch", check=name != "echo", extra=("--items", str(items)))
                for key, value in result.items():
                    figures[f"batch{items}.{name}.{key}"] = value
            for name, _, _ in targets[1:]:
                figures[f"batch{items}.{name}.ratio_vs_echo"] = (
                    figures[f"batch{items}.{name}.cpu_us_per_op"] / figures[f"batch{items}.echo.cpu_us_per_op"])
                token_op = figures["token.copy_op_cpu_us" if _uses_copies(name) else "token.op_cpu_us"]
                cpu = figures[f"batch{items}.{name}.cpu_us_per_op"]
                figures[f"batch{items}.{name}.ours_us_per_op"] = cpu - token_op
        if self.args.unary:
            for name, proc, address in targets:
                for key, value in self.phase(proc, address, "unary", check=name != "echo").items():
                    figures[f"unary.{name}.{key}"] = value
            for name, _, _ in targets[1:]:
                figures[f"unary.{name}.ratio_vs_echo"] = (
                    figures[f"unary.{name}.cpu_us_per_op"] / figures["unary.echo.cpu_us_per_op"])
        return figures


def _first_tokens(nodes: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The config's nodes with only the first `count` PKCS#11 token nodes (others, e.g. regions, kept)."""
    kept, tokens = [], 0
    for node in nodes:
        if node.get("kind", "pkcs11") == "pkcs11":
            tokens += 1
            if tokens > count:
                continue
        kept.append(node)
    return kept


def _uses_copies(name: str) -> bool:
    """Does the daemon named daemon[VARIANT] use session_key_copies? The dev cluster's default (on) unless
    the variant says otherwise or runs another revision's source (which predates them)."""
    spec, _, tree = name.removeprefix("daemon[").removesuffix("]").partition("@")
    _, plus, flag = spec.partition("+")
    return flag == "copies" if plus else not tree


def _slug(variant: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in variant)


def _variant_ok(variant: str) -> bool:
    spec, at, tree = variant.partition("@")
    if at and not (Path(tree) / "hsmlb" / "v1" / "hsmlb_pb2.py").is_file():
        return False
    spec, plus, flag = spec.partition("+")
    if plus and flag not in ("copies", "nocopies"):
        return False
    nodes, slash, pool = spec.partition("/")
    nodes_ok = nodes == "all" or (nodes.isdigit() and int(nodes) > 0)
    return nodes_ok and (not slash or (pool.isdigit() and int(pool) > 0))


def report(args: argparse.Namespace, summary: dict[str, dict[str, float]]) -> None:
    print(f"\nhsmlb batched-wire benchmark: {args.runs} run(s), {args.seconds:g} s per phase; AES-128 ECB "
          f"EncryptData; {args.streams} StreamBatch stream(s), {args.window} ops outstanding; unary "
          f"{args.concurrency} in flight; node variants {' '.join(args.nodes_variants)}; {os.cpu_count()} CPUs")
    print("each cell: median [min-max] over the runs")
    s, c = summary["token.op_cpu_us"], summary["token.copy_op_cpu_us"]
    print(f"token op alone (python-pkcs11 + SoftHSM2 AES-128 ECB on one pooled session, same run): "
          f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}] us CPU on the token object, "
          f"{c['median']:.1f} [{c['min']:.1f}-{c['max']:.1f}] through a session copy (session_key_copies)")
    phases = [f"batch{n}" for n in args.items] + (["unary"] if args.unary else [])
    for phase in phases:
        names = sorted({key.split(".")[1] for key in summary if key.startswith(phase + ".")},
                       key=lambda n: (n != "echo", n))
        print(f"\n{phase} ({'items per message ' + phase[5:] if phase != 'unary' else 'one op per call'})")
        print(f"{'':<14}" + "".join(f"{n:>26}" for n in names))
        for key, label, fmt in (*PHASE_FIGURES, ("ratio_vs_echo", "CPU vs echo", ".2f"),
                                ("ours_us_per_op", "CPU - token op", ",.1f")):
            cells = []
            for name in names:
                s = summary.get(f"{phase}.{name}.{key}")
                cells.append(f"{s['median']:{fmt}} [{s['min']:{fmt}}-{s['max']:{fmt}}]" if s else "")
            print(f"{label:<14}" + "".join(f"{c:>26}" for c in cells))
    p3(args, summary)
    print("\nCPU us/op = user+system CPU of the server process and all its descendants (daemon: + token workers) "
          "during the phase / operations completed; loop = event loop thread, grpc thr = gRPC's threads, "
          "workers = token worker processes; client = the load generator's own CPU; CPU - token op = the daemon's CPU "
          "per op less the token op alone (through a session copy where the daemon uses them): what is ours")


def p3(args: argparse.Namespace, summary: dict[str, dict[str, float]]) -> None:
    """The issue's P3 figures, one line each per daemon variant: batched CPU per op at the largest batch
    (goal <= 60 us, all daemon processes), and unary CPU per call as a multiple of the echo's (goal <= 1.3x)."""
    items = max(args.items)
    for variant in args.nodes_variants:
        batch = summary.get(f"batch{items}.daemon[{variant}].cpu_us_per_op")
        unary = summary.get(f"unary.daemon[{variant}].ratio_vs_echo")
        line = f"P3 daemon[{variant}]:"
        if batch:
            line += (f" batched ({items} items/message) {batch['median']:.1f} [{batch['min']:.1f}-{batch['max']:.1f}] "
                     f"us CPU/op (goal <= 60)")
        if unary:
            line += (f"; unary {unary['median']:.2f}x [{unary['min']:.2f}-{unary['max']:.2f}] the echo's CPU/call "
                     "(goal <= 1.3)")
        print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="cluster state dir (default: a temp dir, removed at the end)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per phase, not measured")
    parser.add_argument("--runs", type=int, default=3, help="repeat the whole measurement; report median/min/max")
    parser.add_argument("--items", type=int, nargs="+", default=[1, 4, 16, 64], help="operations per message")
    parser.add_argument("--streams", type=int, default=2, help="concurrent StreamBatch streams")
    parser.add_argument("--window", type=int, default=512, help="operations outstanding, over all streams")
    parser.add_argument("--concurrency", type=int, default=32, help="unary calls in flight")
    parser.add_argument("--no-unary", dest="unary", action="store_false", help="skip the unary phases")
    parser.add_argument("--nodes-variants", nargs="+", default=["all"],
                        help="one daemon per variant: 'all' token nodes, or N (the first N token nodes); "
                        "'/P' after it: pool_size P on each token node; '+copies' or '+nocopies': the token nodes' "
                        "session_key_copies; '@TREE' after that: the daemon runs the "
                        "hsmlb source in TREE (an unpacked other revision, protos compiled), for A/B runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.seconds <= 0 or args.streams < 1 or args.window < args.streams \
            or min(args.items) < 1 or not all(_variant_ok(v) for v in args.nodes_variants):
        parser.error("--runs, --seconds, --streams, --items, --nodes-variants must be positive, --window >= --streams")
    # what Bench expects of its own arguments
    args.pool_size = args.balancer = args.nodes = None
    args.idle_seconds, args.token = 0.0, "node-a"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = BatchBench(args)
    first = args.nodes_variants[0]
    code, runs, _ = measure(
        bench, args.runs,
        lambda r: ", ".join(f"x{n}: {r[f'batch{n}.daemon[{first}].ops_per_s']:,.0f} ops/s "
                            f"{r[f'batch{n}.daemon[{first}].cpu_us_per_op']:.0f} us" for n in args.items),
        banner=lambda: (f"daemons {', '.join(f'{v}: {a} (pid {p.pid})' for v, (p, a) in bench.daemons.items())}; "
                        f"echo {bench.echo_address}; state {bench.state_dir}"))
    if code:
        return code
    summary = summarize(runs)
    report(args, summary)
    write_json(args, runs, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
