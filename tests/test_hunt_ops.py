"""Bug hunt: the operator surface (Admin drills, `hsmlb` CLI, config check) and the PKCS#11 node
lifecycle (PIN source, slow and hung workers, respawns, ejection back-off after long flapping).

Everything runs against the real parts: daemons on loopback, SoftHSM2 tokens, real worker processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from hsmlb.clock import FakeClock
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, NODES, nist_request, wait_for
from tests.conftest import Cluster, DaemonProcess, start_daemon, sym

ONLY_A = "alias/only-node-a"
SOLE_KEY_PLAIN = "00112233445566778899AABBCCDDEEFF"  # FIPS-197 C.1
SOLE_KEY_CIPHER = "69C4E0D86A7B0430D8CDB78070B4C55A"
WRONG_PIN = "735190"


def _nodes(admin: pb_grpc.AdminStub) -> dict[str, pb.NodeStatus]:
    return {n.name: n for n in admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes}


def _only_a() -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier=ONLY_A, plain_text=SOLE_KEY_PLAIN, encryption_attributes=sym(pb.ECB))


def _inject(admin: pb_grpc.AdminStub, node: str, fault: str, value: float = 0.0, timeout: float = 10) -> None:
    admin.InjectFault(pb.InjectFaultRequest(node=node, fault=fault, value=value), timeout=timeout)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsmlb", *args], capture_output=True, text=True, timeout=60)


def _worker_pid(daemon: DaemonProcess, node: str) -> int:
    """The pid of `node`'s current token worker, from the daemon's own "node X up: worker pid N" line."""
    pids = re.findall(rf"node {re.escape(node)} up: worker pid (\d+)", daemon.log_text())
    assert pids, daemon.log_text()[-2000:]
    return int(pids[-1])


# ------------------------------------------------------------------ (1) ejection back-off after long flapping
def test_ejection_backoff_stays_capped_after_a_thousand_flaps() -> None:
    """A node that passes its checks but fails live traffic is ejected, readmitted, ejected again, for
    hours. The back-off was base * 2**(n-1) with an int power: at the 1025th ejection the int no longer
    fits a float and record_result raised OverflowError on the request path (UNKNOWN to clients, and
    the node was never ejected again)."""
    clock = FakeClock()
    policy = HealthPolicy(consecutive_faults=1, healthy_threshold=1, base_ejection_s=1.0, max_ejection_s=60.0)
    health = NodeHealth("n", policy, clock())
    for _ in range(1100):
        assert health.record_result(True, clock()), "a routable node's node fault must eject it"
        assert health.ejected_until is not None and health.ejected_until - clock() <= policy.max_ejection_s + 1e-6
        clock.now = health.ejected_until + 0.01
        health.record_check(True, clock())
        assert health.routable(clock())
        clock.advance(1.0)  # fails again soon after readmission: the back-off never resets
    assert health.ejections == 1100
    assert health.record_result(True, clock()) and health.ejected_until == pytest.approx(clock() + 60.0)


# ------------------------------------------------------------------ (2) the PIN source at respawn
@pytest.fixture
def own_pin_daemon(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path, str]]:
    """A daemon whose node-b reads its PIN from a file of the test's own (the others keep the cluster's)."""
    pin = tmp_path / "node-b.pin"
    good = (cluster.state_dir / "user.pin").read_text().strip()
    pin.write_text(good + "\n")

    def mutate(data: dict[str, Any]) -> None:
        next(n for n in data["nodes"] if n["name"] == "node-b")["pin_file"] = str(pin)

    daemon = start_daemon(cluster.write_variant(tmp_path / "hsmlb.yaml", mutate=mutate), tmp_path / "daemon.log")
    try:
        yield daemon, pin, good
    finally:
        daemon.stop()


def test_pin_file_unreadable_at_a_respawn_is_retried_until_it_is_back(
        own_pin_daemon: tuple[DaemonProcess, Path, str]) -> None:
    """The worker dies while the PIN file is briefly away (a secrets mount being rotated). The respawn's
    read_pin raised ConfigError, which the supervisor did not catch: its task died silently (leaving a
    worker process waiting for its init), and the node stayed down for good after the file came back."""
    daemon, pin, good = own_pin_daemon
    away = pin.with_name("away.pin")
    with daemon.channel() as channel:
        admin = pb_grpc.AdminStub(channel)
        pin.rename(away)
        try:
            _inject(admin, "node-b", "kill_worker")
            assert wait_for(lambda: "pin_file" in _nodes(admin)["node-b"].detail, 10), _nodes(admin)["node-b"]
            down = _nodes(admin)["node-b"]
        finally:
            away.rename(pin)
        assert down.backend_state == "down"
        assert wait_for(lambda: _nodes(admin)["node-b"].state.startswith("healthy"), 10), _nodes(admin)["node-b"]
        assert pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
    assert good not in daemon.log_text()


def test_wrong_pin_shows_why_the_node_is_down_without_the_pin(
        own_pin_daemon: tuple[DaemonProcess, Path, str]) -> None:
    """The PIN was changed on the token (here: in the file) and the worker restarts: the node is down,
    and the operator must see why in ListNodes, not only "2 health checks failed"."""
    daemon, pin, good = own_pin_daemon
    with daemon.channel() as channel:
        admin = pb_grpc.AdminStub(channel)
        pin.write_text(WRONG_PIN + "\n")
        try:
            _inject(admin, "node-b", "kill_worker")
            assert wait_for(lambda: "PinIncorrect" in _nodes(admin)["node-b"].detail, 10), _nodes(admin)["node-b"]
            down = _nodes(admin)["node-b"]
        finally:
            pin.write_text(good + "\n")
        assert down.backend_state == "down" and not down.state.startswith("healthy"), down
        assert wait_for(lambda: _nodes(admin)["node-b"].state.startswith("healthy"), 15), _nodes(admin)["node-b"]
    for text in (daemon.log_text(), str(down)):
        assert good not in text and WRONG_PIN not in text


# ------------------------------------------------------------------ (3) slow and hung token workers
def test_slow_token_does_not_pile_up_canaries_and_its_fault_can_be_cleared(fresh_daemon: DaemonProcess) -> None:
    """Every ~0.5 s the health checker sent a new canary, and gave up on it after 0.25 s; on a token taking
    1.5 s per op the worker still ran each of them, so its backlog grew ~3x faster than it drained and a
    request sent later (here: clearing the fault) waited behind seconds of abandoned canaries (past the
    control timeout: UNKNOWN). At most one canary may wait in the worker."""
    with fresh_daemon.channel() as channel:
        admin = pb_grpc.AdminStub(channel)
        _inject(admin, "node-a", "delay", 1.5)
        time.sleep(3.5)  # ~7 health checks on a slow token: ~10 s of canaries if each one were run
        _inject(admin, "node-a", "delay", 0.0, timeout=20)  # at most the running op and one canary ahead
        assert wait_for(lambda: _nodes(admin)["node-a"].state.startswith("healthy"), 10), _nodes(admin)["node-a"]
        assert pb_grpc.OperationsStub(channel).EncryptData(_only_a(), timeout=5).cipher_text == SOLE_KEY_CIPHER


def test_control_request_to_a_busy_worker_is_unavailable_not_unknown(fresh_daemon: DaemonProcess) -> None:
    """InjectFault on a worker busy for longer than the control timeout raised a bare TimeoutError out of
    the servicer: grpc answered UNKNOWN "Unexpected <class 'TimeoutError'>" and logged a traceback."""
    with fresh_daemon.channel() as channel:
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        _inject(admin, "node-a", "delay", 5.5)
        with pytest.raises(grpc.RpcError) as late:
            ops.EncryptData(_only_a(), timeout=0.2)  # the worker now sleeps 5.5 s in it
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as busy:
            _inject(admin, "node-a", "delay", 0.0, timeout=15)
        assert busy.value.code() == grpc.StatusCode.UNAVAILABLE, busy.value.details()
        assert "did not answer" in (busy.value.details() or "")
    assert "Unexpected [TimeoutError]" not in fresh_daemon.log_text()


def test_hung_worker_is_killed_and_requests_without_deadline_do_not_wait_for_ever(
        cluster: Cluster, tmp_path: Path) -> None:
    """A worker stuck in the library (here: stopped) answered nothing, and requests without a deadline
    waited on it for ever, holding the node's sessions. Now it is killed after worker_timeout_s, its
    requests fail over (or fail UNAVAILABLE when it held the only copy of the key) and it is respawned."""

    def mutate(data: dict[str, Any]) -> None:
        for node in data["nodes"]:
            node["worker_timeout_s"] = 1.5

    daemon = start_daemon(cluster.write_variant(tmp_path / "hsmlb.yaml", mutate=mutate), tmp_path / "daemon.log")
    stopped = _worker_pid(daemon, "node-a")
    try:
        with daemon.channel() as channel:
            admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
            os.kill(stopped, signal.SIGSTOP)
            only_a = ops.EncryptData.future(_only_a())  # no deadline
            shared = [ops.EncryptData.future(nist_request()) for _ in range(8)]  # some land on node-a
            with pytest.raises(grpc.RpcError) as failed:
                only_a.result(timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
            assert [f.result(timeout=10).cipher_text for f in shared] == [NIST_ECB] * 8
            assert wait_for(lambda: _nodes(admin)["node-a"].state.startswith("healthy"), 10), _nodes(admin)
            assert ops.EncryptData(_only_a(), timeout=5).cipher_text == SOLE_KEY_CIPHER
            assert _nodes(admin)["node-a"].sessions_in_use == 0
        assert _worker_pid(daemon, "node-a") != stopped
        assert "killed as hung" in daemon.log_text()
    finally:
        if _alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        daemon.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_repeated_worker_kills_fail_no_request_and_leave_the_pool_clean(fresh_daemon: DaemonProcess) -> None:
    with fresh_daemon.channel() as channel:
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        for _ in range(5):
            calls = [ops.EncryptData.future(nist_request(), timeout=10) for _ in range(8)]
            _inject(admin, "node-b", "kill_worker")
            assert [c.result().cipher_text for c in calls] == [NIST_ECB] * 8
            time.sleep(0.1)
        assert wait_for(lambda: _nodes(admin)["node-b"].state.startswith("healthy"), 15), _nodes(admin)["node-b"]
        assert wait_for(lambda: all(n.sessions_in_use == n.queued == 0 and n.outstanding == 0
                                     for n in _nodes(admin).values()), 5), _nodes(admin)
        assert ops.EncryptData(nist_request(), timeout=5).cipher_text == NIST_ECB
    assert fresh_daemon.proc.poll() is None


# ------------------------------------------------------------------ (4) operator drills (held up; kept as guards)
def test_drills_refuse_bad_requests_and_restore_recovers_every_node(fresh_daemon: DaemonProcess) -> None:
    with fresh_daemon.channel() as channel:
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        for request, code in ((pb.SetNodeStateRequest(node="node-x", action=pb.FAIL), grpc.StatusCode.NOT_FOUND),
                              (pb.SetNodeStateRequest(node="node-a"), grpc.StatusCode.INVALID_ARGUMENT),
                              (pb.SetNodeStateRequest(node="node-a", action=77), grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as refused:
                admin.SetNodeState(request, timeout=5)
            assert refused.value.code() == code, refused.value.details()
        restored = admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.RESTORE), timeout=5).node
        assert restored.state == "healthy" and restored.weight == 1.0  # restoring an active node changes nothing

        admin.SetNodeState(pb.SetNodeStateRequest(node="node-a", action=pb.DRAIN, requested_by="t"), timeout=5)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as drained:
            ops.EncryptData(_only_a(), timeout=5)  # its last holder is drained: no panic routing to it
        assert drained.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 2
        assert ONLY_A in (drained.value.details() or "")

        for node in NODES:
            admin.SetNodeState(pb.SetNodeStateRequest(node=node, action=pb.FAIL, requested_by="t"), timeout=5)
        with pytest.raises(grpc.RpcError) as none_left:
            ops.EncryptData(nist_request(), timeout=5)
        assert none_left.value.code() == grpc.StatusCode.UNAVAILABLE
        for node in NODES:
            admin.SetNodeState(pb.SetNodeStateRequest(node=node, action=pb.RESTORE, requested_by="t"), timeout=5)
        warming = _nodes(admin)
        assert all(0.1 <= n.weight < 1.0 and n.state == "healthy (slow start)" for n in warming.values()), warming
        assert ops.EncryptData(nist_request(), timeout=5).cipher_text == NIST_ECB
        assert ops.EncryptData(_only_a(), timeout=5).cipher_text == SOLE_KEY_CIPHER


def test_drill_requester_cannot_forge_log_lines(fresh_daemon: DaemonProcess) -> None:
    forged = "ops\n2026-01-01 00:00:00,000 WARNING hsmlb.api.admin drill: node node-a active -> active"
    with fresh_daemon.channel() as channel:
        admin = pb_grpc.AdminStub(channel)
        failed = admin.SetNodeState(pb.SetNodeStateRequest(node="node-c", action=pb.FAIL, requested_by=forged),
                                    timeout=5).node
        admin.SetNodeState(pb.SetNodeStateRequest(node="node-c", action=pb.RESTORE, requested_by="t"), timeout=5)
    assert failed.state.startswith("failed by operator (ops?2026") and "\n" not in failed.state
    drill_lines = [line for line in fresh_daemon.log_text().splitlines() if "drill: node" in line]
    assert len(drill_lines) == 2 and all("requested by" in line for line in drill_lines), drill_lines


# ------------------------------------------------------------------ (5) the command line
def test_nodes_cli_without_a_daemon_fails_cleanly(cluster: Cluster, tmp_path: Path) -> None:
    refused = _cli("nodes", "--address", "127.0.0.1:1")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr, refused
    drill = _cli("node", "fail", "node-a", "--address", "127.0.0.1:1")
    assert drill.returncode == 1 and "UNAVAILABLE" in drill.stderr, drill
    missing = _cli("nodes", "--config", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2 and "cannot read config" in missing.stderr, missing
    for result in (refused, drill, missing):
        assert "Traceback" not in result.stderr


def test_nodes_cli_with_a_config_on_port_zero_asks_for_the_address(cluster: Cluster) -> None:
    """The dev cluster's config (like any test config) listens on port 0: the daemon's real port is not
    in it, and `hsmlb nodes --config` dialled 127.0.0.1:0 and reported a confusing connection refusal."""
    result = _cli("nodes", "--config", str(cluster.config))
    assert result.returncode == 2, result
    assert "--address" in result.stderr and "127.0.0.1:0" not in result.stdout
    assert "Traceback" not in result.stderr


def test_config_check_on_an_undecodable_pin_file_names_it_without_its_bytes(tmp_path: Path) -> None:
    """A PIN file that is not UTF-8 raised UnicodeDecodeError out of `config check` (a traceback quoting a
    byte of the PIN) and, in the daemon, out of the node's start."""
    pin = tmp_path / "pin"
    pin.write_bytes(b"\xfe\xed" + b"4321\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"nodes": [{"name": "a", "module": "/nonexistent.so", "token_label": "a",
                                                 "pin_file": str(pin)}]}))
    result = _cli("config", "check", str(config))
    assert result.returncode == 2, result
    assert "pin_file" in result.stderr and "Traceback" not in result.stderr
    assert "0xfe" not in result.stderr and "4321" not in result.stderr


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda c: c["nodes"][0].update(pool_size="four"), "nodes.0.pool_size"),
    (lambda c: c["nodes"][0].update(worker_timeout_s=-1), "nodes.0.worker_timeout_s"),
    (lambda c: c.setdefault("router", {}).setdefault("outlier", {}).update(max_ejection=3),
     "router.outlier.max_ejection"),
    (lambda c: c["nodes"].append(dict(c["nodes"][0])), "node names must be unique"),
])
def test_config_check_names_the_bad_field_here_too(cluster: Cluster, tmp_path: Path,
                                                   mutate: Callable[[dict[str, Any]], None], field: str) -> None:
    data = yaml.safe_load(cluster.config.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _cli("config", "check", str(path))
    assert result.returncode == 2 and field in result.stderr, result
    assert "Traceback" not in result.stderr
