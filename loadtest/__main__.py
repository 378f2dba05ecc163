"""`python -m loadtest {run,stream,profiles}`: the capacity suite's one command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from loadtest import profiles, tls


def _thresholds(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("threshold overrides (default: the profile's)")
    group.add_argument("--min-tps", type=float)
    group.add_argument("--p99-sym-ms", type=float)
    group.add_argument("--p99-asym-ms", type=float)
    group.add_argument("--max-failure-ratio", type=float)
    parser.add_argument("--exclude", default="", help="comma-separated substrings of op names to leave out, "
                        "e.g. CardValidation,TranslatePin,AuthRequestCryptogram")


def cmd_stream(args: argparse.Namespace) -> int:
    from loadtest import ops, stream_client, verdict

    profile = profiles.with_overrides(profiles.get(args.profile), min_tps=args.min_tps, p99_sym_ms=args.p99_sym_ms,
                                      p99_asym_ms=args.p99_asym_ms, max_failure_ratio=args.max_failure_ratio)
    exclude = ops.parse_exclude(args.exclude)
    shape: dict = {}
    if profile.stream.client == "sdk":
        from loadtest import sdk_client

        summary, tally, notices, cpu, shape = sdk_client.run(
            args.target, profile.mix, args.seconds, args.streams, args.in_flight, args.warmup, exclude)
    else:
        summary, tally, notices, cpu = stream_client.run(
            args.target, profile.mix, args.seconds, args.streams, args.in_flight, args.rate, args.warmup, exclude)
    for notice in notices:
        print(f"loadtest: {notice}", flush=True)
    runnable = ops.resolve_mix(profile.mix, stream=True, exclude=exclude)[0]
    rows = verdict.evaluate(summary, profile.thresholds, {verdict.class_of(n) for n in runnable},
                            profile=profiles.get(args.profile).thresholds)
    if args.json:
        data = json.loads(verdict.to_json(profile.name, rows, summary))
        data["client"] = {"kind": profile.stream.client, "cpu_s": cpu, "streams": args.streams,
                          "in_flight": args.in_flight, "rate": args.rate, "failure_reasons": tally.reasons, **shape}
        Path(args.json).write_text(json.dumps(data, indent=1))
    if not args.quiet:
        print(verdict.render(profile.name, rows, summary), flush=True)
        print(f"client CPU {cpu:.1f} s over {summary.duration_s:.1f} s "
              f"({cpu / max(summary.requests, 1) * 1e6:.0f} us per request)", flush=True)
        if shape.get("batches"):
            print(f"client batching: {shape['operations']:,} operations in {shape['batches']:,} messages "
                  f"({shape['operations'] / shape['batches']:.1f} per message)", flush=True)
    for reason, count in sorted(tally.reasons.items(), key=lambda kv: -kv[1])[:5]:
        print(f"loadtest: {count:,} x {reason}", flush=True)
    return verdict.exit_code(rows)


def cmd_profiles(_args: argparse.Namespace) -> int:
    for p in profiles.PROFILES.values():
        t = p.thresholds
        load = (f"{p.users} users, {p.processes} proc" if p.driver == "locust"
                else f"{p.stream.streams} streams x {p.stream.in_flight}")
        p99 = ", ".join(f"p99 {k} <= {v:g} ms" for k, v in t.p99_ms.items())
        print(f"{p.name:<17} {p.driver:<6} {p.duration_s:>4.0f}s  {load:<22} TPS >= {t.min_tps:,.0f}, {p99}, "
              f"failures <= {t.max_failure_ratio:.2%}\n{'':<18}{p.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="cluster + daemon + load + verdict, in one command")
    run.add_argument("--profile", required=True, choices=sorted(profiles.PROFILES))
    run.add_argument("--processes", type=int, help="Locust processes (default: the profile's)")
    run.add_argument("--users", type=int, help="Locust users in all (default: the profile's)")
    run.add_argument("--spawn-rate", type=float, help="users started per second")
    run.add_argument("--duration", type=float, help="seconds of load (default: the profile's)")
    run.add_argument("--target", help="HOST:PORT of a running daemon instead of starting a dev cluster")
    run.add_argument("--report-dir", help="parent of the report directory (default loadtest/reports)")
    _thresholds(run)
    tls.add_arguments(run)

    stream = sub.add_parser("stream", help="the own asyncio client (Stream, or the SDK per the profile) against a "
                            "running daemon")
    stream.add_argument("--target", required=True, help="HOST:PORT")
    stream.add_argument("--profile", default="burst", help="mix and thresholds to use (default burst)")
    stream.add_argument("--seconds", type=float, default=10.0)
    stream.add_argument("--streams", type=int, default=4)
    stream.add_argument("--in-flight", type=int, default=32, help="requests outstanding per stream (SDK: concurrent "
                        "transactions per stream)")
    stream.add_argument("--rate", type=float, help="target requests/s over all streams (default: as fast as K allows)")
    stream.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    stream.add_argument("--json", help="write the verdict and figures here")
    stream.add_argument("--quiet", action="store_true", help="do not print the verdict table (the caller will)")
    _thresholds(stream)
    tls.add_arguments(stream)

    sub.add_parser("profiles", help="list the profiles")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "stream"):
        tls.export(args.ca, args.cert, args.key)  # Locust workers and stream clients inherit it
    if args.command == "run":
        from loadtest.runner import cmd_run

        return cmd_run(args)
    if args.command == "stream":
        return cmd_stream(args)
    return cmd_profiles(args)


if __name__ == "__main__":
    sys.exit(main())
