"""Repeat profiles N times and report medians with min and max: what a release sign-off quotes.

Each run is the one command (`python -m loadtest run`), so a campaign measures exactly what a
capacity tester would; this only collects the runs' verdict.json and cpu.json and summarises them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.runner import REPORTS

RUN_SLACK_S = 240  # cluster start-up and teardown around a profile's own duration


def _spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def _one(profile: str, out: Path, extra: list[str], timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "loadtest", "run", "--profile", profile, "--report-dir", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    report = runs[-1] if runs else out
    verdict = json.loads((report / "verdict.json").read_text()) if (report / "verdict.json").exists() else {}
    cpu = json.loads((report / "cpu.json").read_text()) if (report / "cpu.json").exists() else {}
    return {"rc": done.returncode, "verdict": verdict, "cpu": cpu, "report": str(report)}


def summarise(profile: str, results: list[dict[str, Any]]) -> list[str]:
    summaries = [r["verdict"].get("summary", {}) for r in results if r["verdict"]]
    tps = [s.get("ok_tps", s["tps"]) for s in summaries]  # successful requests per second
    failures = [float(s["failures"]) for s in summaries]
    lines = [f"{profile}: {sum(r['rc'] == 0 for r in results)}/{len(results)} runs PASS",
             f"  TPS {_spread(tps)}; failed requests {_spread(failures)}"]
    classes = sorted({c for s in summaries for c in s.get("latency", {})})
    for tag in classes:
        p99 = [s["latency"][tag]["p99_ms"] for s in summaries if tag in s.get("latency", {})]
        p50 = [s["latency"][tag]["p50_ms"] for s in summaries if tag in s.get("latency", {})]
        lines.append(f"  {tag}: p50 {_spread(p50, '{:.1f}')} ms, p99 {_spread(p99, '{:.1f}')} ms")
    cpus = [r["cpu"] for r in results if r["cpu"].get("wall_s")]
    for part in ("daemon_s", "workers_s", "driver_s"):
        shares = [c[part] / c["wall_s"] for c in cpus if c.get(part) is not None]
        if shares:
            lines.append(f"  CPU {part[:-2]}: {_spread([100 * x for x in shares], '{:.0f}')} % of one core")
    # CPU per request over the whole run (start-up and priming included, so an upper bound per operation)
    per_op = {part: [r["cpu"][part] / r["verdict"]["summary"]["requests"] * 1e6 for r in results
                     if r["cpu"].get(part) is not None and r["verdict"].get("summary", {}).get("requests")]
              for part in ("daemon_s", "workers_s", "driver_s")}
    if any(per_op.values()):
        lines.append("  CPU per request (us, whole run): " + ", ".join(
            f"{part[:-2]} {_spread(values, '{:.0f}')}" for part, values in per_op.items() if values))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.campaign", description=__doc__)
    parser.add_argument("--profiles", default="symmetric,burst,mixed,failover")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(REPORTS / f"campaign-{time.strftime('%Y%m%d-%H%M%S')}"))
    parser.add_argument("extra", nargs="*", help="passed to every `run` (after --), e.g. -- --duration 30")
    args = parser.parse_args(argv)
    root = Path(args.out)
    report: dict[str, list[dict[str, Any]]] = {}
    for profile in args.profiles.split(","):
        report[profile] = []
        for run in range(args.runs):
            out = root / f"{profile}-{run + 1}"
            out.mkdir(parents=True, exist_ok=True)
            result = _one(profile, out, args.extra, RUN_SLACK_S + 120)
            report[profile].append(result)
            print(f"{profile} run {run + 1}: exit {result['rc']}, {result['report']}", flush=True)
    lines = [line for profile, results in report.items() for line in summarise(profile, results)]
    (root / "summary.txt").write_text("\n".join(lines) + "\n")
    (root / "summary.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    return 0 if all(r["rc"] == 0 for results in report.values() for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
