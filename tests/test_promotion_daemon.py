"""Candidate weight, promotion, the switch and the automatic weight drop through a real daemon, its
Admin RPCs and CLI; each change survives a restart (the state file beside the config).

Acceptance 4 and 5 of the shadowing issue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._shadow_helpers import REGIONS, TOKENS, failed, ops_ok, shadow_config, stream, symmetric_and_payment_mix
from tests.conftest import DaemonProcess, PaymentCluster, set_faults, start_daemon

WHO = "tests@promotion"


def _encrypts(n: int) -> list[tuple[str, object]]:
    ecb = next(r for r in symmetric_and_payment_mix() if r[0] == "encrypt_data")
    return [ecb] * n


def _cvvs(n: int) -> list[tuple[str, object]]:
    return [next(r for r in symmetric_and_payment_mix() if r[0] == "generate_card_validation_data")] * n


def _served(daemon: DaemonProcess, requests: list[tuple[str, object]]) -> dict[str, int]:
    """Run `requests` (none may fail); how many each pool served."""
    with daemon.channel() as channel:
        before = ops_ok(channel)
        assert failed(stream(channel, requests)) == []
        after = ops_ok(channel)
    return {"hsm": sum(after[n] - before[n] for n in TOKENS), "apc": sum(after[n] - before[n] for n in REGIONS)}


def _admin(daemon: DaemonProcess) -> tuple[grpc.Channel, pb_grpc.AdminStub]:
    channel = daemon.channel()
    return channel, pb_grpc.AdminStub(channel)


def _cli(daemon: DaemonProcess, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "hsmlb", *args, "--address", daemon.address], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _route(admin: pb_grpc.AdminStub, op: str) -> pb.RouteStatus:
    table = admin.ListRoutes(pb.ListRoutesRequest(), timeout=10)
    return {r.op: r for r in table.routes}.get(op) or {r.op: r for r in table.routes}["*"]


def test_weight_promote_switch_rollback_each_survive_a_restart(strict_payment_cluster: PaymentCluster,
                                                                tmp_path: Path):
    # a candidate without shadowing, so that what each pool serves is the clients' requests alone
    config = shadow_config(strict_payment_cluster, f"promote-{tmp_path.name}", shadow=False, route={"candidate": "apc"})
    logs = [tmp_path / f"d{i}.log" for i in range(5)]
    daemon = start_daemon(config, logs[0])
    try:
        channel, admin = _admin(daemon)
        with channel:
            with pytest.raises(grpc.RpcError) as refused:  # no shadow samples yet: the gate refuses
                admin.SetRouteWeight(pb.SetRouteWeightRequest(op="encrypt", candidate_percent=10, requested_by=WHO))
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "fewer than 20" in (refused.value.details() or "")
        out = _cli(daemon, "route", "set", "encrypt", "--candidate-percent", "10", "--force", "--reason", "test")
        assert "candidate apc weight 10%" in out
        served = _served(daemon, _encrypts(2000))
        share = served["apc"] / (served["apc"] + served["hsm"]) * 100
        print(f"\nFIGURE weight 10%: candidate served {share:.1f}% of 2000 encrypts")
        assert 7 <= share <= 13, served
    finally:
        daemon.stop()

    daemon = start_daemon(config, logs[1])  # the weight survives a restart
    try:
        channel, admin = _admin(daemon)
        with channel:
            assert _route(admin, "encrypt").candidate_percent == 10
            admin.PromoteRoute(pb.PromoteRouteRequest(op="encrypt", requested_by=WHO), timeout=10)
            route = _route(admin, "encrypt")
            assert (route.primary, route.candidate, route.candidate_percent) == ("apc", "hsm", 0)
        assert _served(daemon, _encrypts(100)) == {"hsm": 0, "apc": 100}
        assert _served(daemon, _cvvs(20))["hsm"] == 20  # only the promoted op moved
    finally:
        daemon.stop()

    daemon = start_daemon(config, logs[2])  # the promotion survives a restart
    try:
        assert _served(daemon, _encrypts(50)) == {"hsm": 0, "apc": 50}
        assert "switched to pool apc" in _cli(daemon, "route", "switch", "--to", "apc", "--reason", "drill")
        assert _served(daemon, _cvvs(50)) == {"hsm": 0, "apc": 50}  # every route, in one call
    finally:
        daemon.stop()

    daemon = start_daemon(config, logs[3])  # the switch survives a restart
    try:
        assert _served(daemon, _cvvs(50)) == {"hsm": 0, "apc": 50}
        assert "switched" not in _cli(daemon, "route", "rollback")
        assert _served(daemon, _cvvs(50)) == {"hsm": 50, "apc": 0}
        assert _served(daemon, _encrypts(50)) == {"hsm": 0, "apc": 50}  # the promotion is still there
    finally:
        daemon.stop()

    daemon = start_daemon(config, logs[4])  # and so does the rollback
    try:
        assert _served(daemon, _cvvs(50)) == {"hsm": 50, "apc": 0}
    finally:
        daemon.stop()
    text = "".join(log.read_text() for log in logs)
    assert "gate forced by" in text and f"requested by {WHO}" in text and "routes switched to pool apc" in text


def test_failing_weighted_candidate_drops_to_zero_and_no_request_fails(strict_payment_cluster: PaymentCluster,
                                                                       tmp_path: Path):
    # slow canaries: the live weighted requests, not a health check, must meet the fault first (a candidate
    # out of rotation gets no weighted requests, so there would be no error rate to act on)
    config = shadow_config(strict_payment_cluster, f"drop-{tmp_path.name}", auto_drop_min_requests=5,
                           router={"health_check": {"interval_s": 60}})
    daemon = start_daemon(config, tmp_path / "d.log")
    emulators = [strict_payment_cluster.emulator(name) for name in REGIONS]
    try:
        channel, admin = _admin(daemon)
        with channel:
            admin.SetRouteWeight(pb.SetRouteWeightRequest(op="encrypt", candidate_percent=50, force=True,
                                                          reason="acceptance 5", requested_by=WHO), timeout=10)
            for emulator in emulators:
                set_faults(emulator, error_rate=1.0)
            assert failed(stream(channel, _encrypts(400))) == []  # every request answered, none failed
            table = admin.ListRoutes(pb.ListRoutesRequest(), timeout=10)
        assert {r.op: r for r in table.routes}["encrypt"].candidate_percent == 0
        assert table.auto_drops == 1
    finally:
        for emulator in emulators:
            set_faults(emulator)
        daemon.stop()
    assert "weight dropped to 0 automatically" in (tmp_path / "d.log").read_text()
