"""Locust entry point: `locust -f loadtest/locustfile.py --profile NAME -H HOST:PORT ...`.

Why the user classes are made here at import: a profile names its user groups (unary or Stream,
mix, fixed user count, pacing) and Locust discovers user classes from this module before it
parses custom arguments, so the profile name is read from argv/`LOADTEST_PROFILE` first.
The verdict runs on the master (or the single process) at `quitting` and sets the exit code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import events
from locust import log as locust_log
from locust.runners import WorkerRunner

grpc_gevent.init_gevent()  # before any channel: grpc's I/O cooperates with gevent
# Every gRPC answer reaches the greenlets from a native thread of gevent's threadpool, which must take the GIL
# from the hub's thread: while greenlets run, that waits up to the switch interval (5 ms by default) per answer.
# 1 ms: measured with 64 paced gateway greenlets at 2.6k/s on 2 shared vCPUs, p50 13.5 -> 10-11 ms, p99 55-97
# -> 30-35 ms; `symmetric` back to back: 4,749 -> 4,903 TPS, p50 22.5 -> 20.5 ms, p99 41.5 -> 38.5 ms, same CPU.
GIL_SWITCH_INTERVAL_S = 0.001
sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # Locust puts loadtest/ itself on sys.path, not the repo root
    sys.path.insert(0, ROOT)

from hsmlb.v1 import hsmlb_pb2 as pb  # noqa: E402
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc  # noqa: E402
from loadtest import ops, profiles, tls, verdict  # noqa: E402
from loadtest.users import GatewayUser, StreamUser, UnaryUser  # noqa: E402

ADMIN_TIMEOUT_S = 5.0


def _profile_name(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--profile" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
    return os.environ.get("LOADTEST_PROFILE", "smoke")


PROFILE = profiles.get(_profile_name(sys.argv))
if PROFILE.driver != "locust":
    raise SystemExit(f"profile {PROFILE.name} is driven by the own stream client: python -m loadtest run "
                     f"--profile {PROFILE.name}")

for _group in PROFILE.groups:
    _base = {"stream": StreamUser, "gateway": GatewayUser}.get(_group.kind, UnaryUser)
    globals()[_group.name] = type(_group.name, (_base,), {
        "abstract": False, "mix": _group.mix, "rate_per_user": _group.rate_per_user,
        "fixed_count": _group.users, "__module__": __name__, "__doc__": f"{PROFILE.name}: {_group.kind} users"})


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("hsmlb loadtest")
    group.add_argument("--min-tps", type=float, default=None, help="override the profile's TPS threshold")
    group.add_argument("--p99-sym-ms", type=float, default=None, help="override the symmetric p99 threshold")
    group.add_argument("--p99-asym-ms", type=float, default=None, help="override the asymmetric p99 threshold")
    group.add_argument("--max-failure-ratio", type=float, default=None, help="override the failure ratio threshold")
    group.add_argument("--exclude", default="", help="comma-separated substrings of op names to leave out")
    group.add_argument("--verdict-json", default="", help="write the verdict here (and leave printing to the caller)")


def _judging(environment: Any) -> bool:
    return not isinstance(environment.runner, WorkerRunner)


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    # Locust's own --profile ("group test runs") names the hsmlb profile; it must be the one read at import.
    given = getattr(environment.parsed_options, "profile", None)
    if given not in (None, PROFILE.name):
        raise SystemExit("--profile must be given on the command line (or LOADTEST_PROFILE), not in a config file")
    if _judging(environment):
        exclude = ops.parse_exclude(getattr(environment.parsed_options, "exclude", None))
        for group in PROFILE.groups:
            for notice in ops.resolve_mix(group.mix, stream=group.kind != "unary", exclude=exclude)[1]:
                print(f"loadtest: {group.name}: {notice}", flush=True)


# ----------------------------------------------------------------------------- failover drill
_DRILL: dict[str, str] = {}


def _drill(host: str, drill: profiles.Drill) -> None:
    """Fail a node through the Admin API while load runs, hold, restore; record what the daemon said."""
    gevent.sleep(drill.fail_after_s)
    try:
        with tls.channel(host) as channel:
            admin = pb_grpc.AdminStub(channel)
            reply = admin.SetNodeState(pb.SetNodeStateRequest(node=drill.node, action=pb.FAIL,
                                                              requested_by="loadtest"), timeout=ADMIN_TIMEOUT_S)
            _DRILL["failed"] = reply.node.operator
            print(f"loadtest: drill: {drill.node} -> {reply.node.operator}", flush=True)
            gevent.sleep(drill.hold_s)
            reply = admin.SetNodeState(pb.SetNodeStateRequest(node=drill.node, action=pb.RESTORE,
                                                              requested_by="loadtest"), timeout=ADMIN_TIMEOUT_S)
            _DRILL["restored"] = reply.node.operator
            print(f"loadtest: drill: {drill.node} -> {reply.node.operator}", flush=True)
    except grpc.RpcError as exc:
        _DRILL["error"] = f"{exc.code().name}"  # type: ignore[attr-defined]


def _user_exceptions(environment: Any) -> int:
    """Exceptions raised in user tasks, as the runner collected them (from every worker process),
    plus one if a greenlet died unhandled in this process."""
    runner = environment.runner
    reported = sum(entry["count"] for entry in runner.exceptions.values()) if runner is not None else 0
    return reported + int(bool(locust_log.unhandled_greenlet_exception))


def drill_row(drill: profiles.Drill, outcome: dict[str, str]) -> verdict.Row:
    measured = f"{outcome.get('failed', '-')} -> {outcome.get('restored', '-')}"
    if "error" in outcome:
        measured += f" ({outcome['error']})"
    return verdict.Row(f"drill {drill.node} fail+restore", "failed -> active", measured,
                       outcome.get("failed") == "failed" and outcome.get("restored") == "active")


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    if PROFILE.drill is not None and _judging(environment):
        _DRILL.clear()
        gevent.spawn(_drill, environment.host, PROFILE.drill)


# ------------------------------------------------------------------------------------ verdict
def summary_from_stats(stats: Any) -> verdict.RunSummary:
    """Locust's stats (aggregated from workers on the master) -> the verdict's RunSummary."""
    entries = list(stats.entries.values())
    total = stats.total
    end = total.last_request_timestamp or total.start_time
    return verdict.RunSummary(
        requests=total.num_requests, failures=total.num_failures, duration_s=max(0.0, end - total.start_time),
        latency={k: verdict.latency_from_histogram(h)
                 for k, h in verdict.merge_by_class((e.name, e.response_times) for e in entries).items()},
        ops={f"{e.method} {e.name}": e.num_requests for e in entries})


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kwargs: Any) -> None:
    if not _judging(environment):
        return
    options = environment.parsed_options
    profile = profiles.with_overrides(PROFILE, min_tps=options.min_tps, p99_sym_ms=options.p99_sym_ms,
                                      p99_asym_ms=options.p99_asym_ms, max_failure_ratio=options.max_failure_ratio)
    summary = summary_from_stats(environment.stats)
    extra = [drill_row(PROFILE.drill, _DRILL)] if PROFILE.drill is not None else []
    extra.append(verdict.exceptions_row(_user_exceptions(environment)))
    exclude = ops.parse_exclude(getattr(options, "exclude", None))
    classes = {verdict.class_of(name) for group in PROFILE.groups
               for name in ops.resolve_mix(group.mix, stream=group.kind != "unary", exclude=exclude)[0]}
    rows = verdict.evaluate(summary, profile.thresholds, classes, extra, profile=PROFILE.thresholds)
    if options.verdict_json:
        Path(options.verdict_json).write_text(verdict.to_json(PROFILE.name, rows, summary))
    else:
        print(verdict.render(PROFILE.name, rows, summary), flush=True)
    environment.process_exit_code = verdict.exit_code(rows)
