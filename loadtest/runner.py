"""`python -m loadtest run`: bring up cluster + daemon, drive them (Locust or the stream client), judge, tear down.

Why one command: a capacity claim is only worth something if anyone can reproduce it the same
way. Reports land in loadtest/reports/<profile>-<timestamp>/ (Locust CSV + HTML, verdict.json,
daemon.log); the exit code is the verdict's (or the driver's, if it failed before judging).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from loadtest import harness, profiles, verdict
from loadtest.profiles import Profile

HERE = Path(__file__).resolve().parent
REPORTS = HERE / "reports"
LOCUSTFILE = HERE / "locustfile.py"
DRIVER_SLACK_S = 180.0  # start-up, priming and shutdown on top of the run time
THRESHOLD_FLAGS = ("min_tps", "p99_sym_ms", "p99_asym_ms", "max_failure_ratio")


def report_dir(profile: str, base: Path = REPORTS) -> Path:
    path = base / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 100):  # two runs in the same second get their own directories
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            path = base / f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    raise RuntimeError(f"cannot create a report directory under {base}")


def _overrides(args: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for flag in THRESHOLD_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    if getattr(args, "exclude", ""):
        argv += ["--exclude", args.exclude]
    return argv


def locust_argv(profile: Profile, address: str, out: Path, args: argparse.Namespace) -> list[str]:
    users = args.users or profile.users
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-H", address,
            "-u", str(users), "-r", str(args.spawn_rate or profile.spawn_rate),
            "-t", f"{max(1, round(profile.duration_s))}s", "--reset-stats", "--only-summary", "--stop-timeout", "5",
            "--csv", str(out / "locust"), "--html", str(out / "report.html"),
            "--profile", profile.name, "--verdict-json", str(out / "verdict.json"), *_overrides(args)]
    processes = args.processes or profile.processes
    if processes > 1:
        argv += ["--processes", str(processes)]
    return argv


def stream_argv(profile: Profile, address: str, out: Path, args: argparse.Namespace) -> list[str]:
    s = profile.stream
    return [sys.executable, "-m", "loadtest", "stream", "--target", address, "--profile", profile.name,
            "--seconds", str(profile.duration_s), "--streams", str(s.streams), "--in-flight", str(s.in_flight),
            "--warmup", str(s.warmup_s), "--json", str(out / "verdict.json"), "--quiet", *_overrides(args)]


def run_driver(argv: list[str], timeout_s: float) -> int:
    """The driver in its own process group; on timeout SIGINT, then SIGKILL to the group."""
    proc = subprocess.Popen(argv, cwd=harness.ROOT, env={**harness.ENV, "LOADTEST_PROFILE": argv[argv.index(
        "--profile") + 1]}, start_new_session=True)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        print(f"loadtest: driver ran past {timeout_s:.0f}s; stopping it", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return 2
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise


@contextlib.contextmanager
def _target(args: argparse.Namespace, out: Path, profile: Profile) -> Iterator[tuple[str, int | None]]:
    if args.target:  # someone else's daemon (e.g. distributed mode): nothing to start or stop
        yield args.target, None
        return
    with harness.system_under_test(out, profile.fault_injection) as daemon:
        print(f"loadtest: daemon {daemon.address} (pid {daemon.proc.pid}), log {daemon.log_path}", flush=True)
        yield daemon.address, daemon.proc.pid


def cpu_line(wall_s: float, daemon: tuple[float, float] | None, driver_s: float) -> str:
    def share(s: float) -> str:
        return f"{s:.1f} s ({s / wall_s:.0%} of one core)" if wall_s > 0 else f"{s:.1f} s"
    parts = []
    if daemon is not None:
        parts += [f"daemon {share(daemon[0])}", f"token workers {share(daemon[1])}"]
    parts.append(f"load generator {share(driver_s)}")
    return f"CPU over {wall_s:.0f} s wall: " + ", ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    """Exit codes: the verdict's 0/1; 2 when the system under test or the driver could not run."""
    profile = profiles.with_overrides(profiles.get(args.profile), duration_s=args.duration)
    out = report_dir(profile.name, Path(args.report_dir) if args.report_dir else REPORTS)
    print(f"loadtest: profile {profile.name}: {profile.description}; reports in {out}", flush=True)
    try:
        return _run(args, profile, out)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"loadtest: could not run: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # everything started has been torn down by now
        print("loadtest: interrupted", file=sys.stderr, flush=True)
        return 130


def _run(args: argparse.Namespace, profile: Profile, out: Path) -> int:
    with _target(args, out, profile) as (address, daemon_pid):
        argv = (stream_argv if profile.driver == "stream" else locust_argv)(profile, address, out, args)
        before = harness.cpu_seconds(daemon_pid) if daemon_pid else None
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        rc = run_driver(argv, profile.duration_s + DRIVER_SLACK_S)
        wall = time.monotonic() - started
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = harness.cpu_seconds(daemon_pid) if daemon_pid else None
    driver_cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    daemon_cpu = (after[0] - before[0], after[1] - before[1]) if before and after else None
    verdict_file = out / "verdict.json"
    if verdict_file.exists():
        name, rows, summary = verdict.from_json(verdict_file.read_text())
        print(verdict.render(name, rows, summary), flush=True)
    else:
        print(f"loadtest: no verdict was written (driver exit {rc}); see the output above", flush=True)
        rc = rc or 1
    line = cpu_line(wall, daemon_cpu, driver_cpu)
    (out / "cpu.txt").write_text(line + "\n")
    (out / "cpu.json").write_text(json.dumps({"wall_s": wall, "daemon_s": daemon_cpu[0] if daemon_cpu else None,
                                              "workers_s": daemon_cpu[1] if daemon_cpu else None,
                                              "driver_s": driver_cpu}))
    print(line, flush=True)
    print(f"loadtest: exit {rc}; reports in {out}", flush=True)
    return rc
