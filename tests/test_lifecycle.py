"""Daemon lifecycle and operator surface: graceful shutdown, client deadlines, `config check`,
reflection and health, `hsmlb nodes`, and the Admin ListNodes numbers."""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, NODES, inject, nist_request, set_state, still_serves, wait_for
from tests.conftest import Cluster, DaemonProcess, start_daemon

IN_FLIGHT = 12
GRACE_S = 5.0  # the generated config's shutdown_grace_s (the default)
EXIT_MARGIN_S = 10.0  # after the grace: health checker stopped, workers closed and reaped


def _worker_pids(daemon_pid: int) -> set[int]:
    """Live token worker processes whose parent is the daemon, from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_worker(int(entry.name), daemon_pid):
            pids.add(int(entry.name))
    return pids


def _is_worker(pid: int, parent: int | None = None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, not yet reaped
        return False
    return b"hsmlb.backends.pkcs11_worker" in cmdline and (parent is None or int(fields[1]) == parent)


def _refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


# ------------------------------------------------------------------------- (1) graceful shutdown
def test_sigterm_drains_in_flight_refuses_new_and_exits_clean(fresh_daemon: DaemonProcess) -> None:
    _sigterm_drains(fresh_daemon, lambda: fresh_daemon.proc.send_signal(signal.SIGTERM))


def test_sigterm_to_the_whole_process_group_still_drains(cluster: Cluster, tmp_path: Path) -> None:
    """A service manager (systemd's default KillMode=control-group) or a terminal's Ctrl-C signals every
    process of the group at once: the token workers must leave their shutdown to the daemon, or the
    in-flight requests die with them and the drain serves nothing."""
    daemon = start_daemon(cluster.config, tmp_path / "daemon.log", new_session=True)
    try:
        _sigterm_drains(daemon, lambda: os.killpg(daemon.proc.pid, signal.SIGTERM))
        assert "token worker exited" not in daemon.log_text()
    finally:
        daemon.stop()


def _sigterm_drains(daemon: DaemonProcess, send_sigterm: Callable[[], None]) -> None:
    workers = _worker_pids(daemon.proc.pid)
    assert len(workers) == len(NODES)
    with daemon.channel() as channel:
        inject(channel, NODES, "delay", 0.3)
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        calls = [ops.EncryptData.future(nist_request(), timeout=30) for _ in range(IN_FLIGHT)]

        def all_in_daemon() -> bool:
            nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=5).nodes
            return sum(n.sessions_in_use + n.queued for n in nodes) >= IN_FLIGHT

        assert wait_for(all_in_daemon, 10), "the slow requests never reached the nodes"
        pending_at_signal = sum(not c.done() for c in calls)
        send_sigterm()
        assert wait_for(lambda: "signal received" in daemon.log_text(), 10), daemon.log_text()[-2000:]
        # An RPC that races the listener's close is answered CANCELLED by grpc-core; once the port
        # refuses connections, a new request must fail UNAVAILABLE.
        assert wait_for(lambda: _refuses(daemon.address), 5), "the daemon kept accepting connections"
        still_running = sum(not c.done() for c in calls)

        # Its own subchannel: a second channel to the same target otherwise shares the first one's HTTP/2
        # connection (grpc's global subchannel pool), and its call then races the server's GOAWAY on that
        # old connection (CANCELLED) instead of being a new connection to the closed port.
        late = grpc.insecure_channel(daemon.address, options=[("grpc.use_local_subchannel_pool", 1)])
        with late as late_channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.OperationsStub(late_channel).EncryptData(nist_request(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()

        results = [c.result(timeout=GRACE_S + 5) for c in calls]  # raises if any in-flight call failed
    assert pending_at_signal > 0, "no request was still in flight at SIGTERM: the test proved nothing"
    assert still_running > 0, "the listener closed only after the in-flight requests were done"
    assert [r.cipher_text for r in results] == [NIST_ECB] * IN_FLIGHT
    assert daemon.proc.wait(GRACE_S + EXIT_MARGIN_S) == 0
    assert wait_for(lambda: not any(_is_worker(pid) for pid in workers), 5), "token workers outlived the daemon"
    assert "stopped" in daemon.log_text()


# ------------------------------------------------------------------------- (2) client deadlines
def test_unary_deadline_is_honoured(fresh_daemon: DaemonProcess) -> None:
    with fresh_daemon.channel() as channel:
        inject(channel, NODES, "delay", 0.5)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as late:
            pb_grpc.OperationsStub(channel).EncryptData(nist_request(), timeout=0.1)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 2
        inject(channel, NODES, "delay", 0.0)
        still_serves(channel)
    assert fresh_daemon.proc.poll() is None


def test_stream_message_deadline_while_queued(fresh_daemon: DaemonProcess) -> None:
    """Only node-a serves; a message with timeout_ms=100 queued behind a 0.5 s op gets status 4."""
    with fresh_daemon.channel() as channel:
        set_state(channel, ["node-b", "node-c", "node-d"], pb.DRAIN, "test_lifecycle")
        inject(channel, NODES, "delay", 0.5)
        started = time.monotonic()
        requests = [pb.StreamRequest(request_id=1, encrypt_data=nist_request()),
                    pb.StreamRequest(request_id=2, timeout_ms=100, encrypt_data=nist_request())]
        replies = {r.request_id: r for r in pb_grpc.OperationsStub(channel).Stream(iter(requests), timeout=30)}
        elapsed = time.monotonic() - started
        assert sorted(replies) == [1, 2]
        assert replies[1].encrypt_data.cipher_text == NIST_ECB
        assert replies[2].WhichOneof("result") == "status", replies[2]
        assert replies[2].status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] == 4
        assert elapsed < 5
        inject(channel, NODES, "delay", 0.0)
        set_state(channel, ["node-b", "node-c", "node-d"], pb.RESTORE, "test_lifecycle")
        still_serves(channel)
    assert fresh_daemon.proc.poll() is None


def test_stream_message_deadline_while_running(cluster: Cluster, tmp_path: Path) -> None:
    """Health probes off (interval 60 s), so the worker is idle and starts the op at once."""
    config = yaml.safe_load(cluster.config.read_text())
    config["listen"] = "127.0.0.1:0"
    config["router"] = {"health_check": {"interval_s": 60}}
    path = tmp_path / "no-probes.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = start_daemon(path, tmp_path / "daemon.log")
    try:
        with daemon.channel() as channel:
            inject(channel, NODES, "delay", 0.5)
            started = time.monotonic()
            request = pb.StreamRequest(request_id=42, timeout_ms=100, encrypt_data=nist_request())
            replies = list(pb_grpc.OperationsStub(channel).Stream(iter([request]), timeout=30))
            elapsed = time.monotonic() - started
            assert [r.request_id for r in replies] == [42]
            assert replies[0].WhichOneof("result") == "status", f"served after {elapsed:.2f}s, timeout_ms=100"
            assert replies[0].status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            assert elapsed < 0.4
    finally:
        daemon.stop()


# ------------------------------------------------------------------------- (3) hsmlb config check
def _config_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsmlb", "config", "check", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_config_check_accepts_the_cluster_config(cluster: Cluster) -> None:
    result = _config_check(cluster.config)
    assert result.returncode == 0, result.stderr
    assert "OK (4 nodes)" in result.stdout


def _pool_size_zero(c: dict[str, Any]) -> None:
    c["nodes"][1]["pool_size"] = 0


def _literal_pin(c: dict[str, Any]) -> None:
    c["nodes"][0]["pin"] = "73914268"


def _no_module(c: dict[str, Any]) -> None:
    del c["nodes"][2]["module"]


def _duplicate_names(c: dict[str, Any]) -> None:
    c["nodes"][3]["name"] = "node-a"


def _unknown_top_level(c: dict[str, Any]) -> None:
    c["listen_adress"] = "127.0.0.1:1"


@pytest.mark.parametrize(("mutate", "expected"), [
    (_pool_size_zero, r"nodes\.1\.pool_size: .*greater than or equal to 1"),
    (_literal_pin, r"nodes\.0: .*a PIN may not be written in the config"),
    (_no_module, r"nodes\.2\.module: Field required"),
    (_duplicate_names, r"node names must be unique: node-a"),
    (_unknown_top_level, r"listen_adress: Extra inputs are not permitted"),
], ids=["pool_size_0", "literal_pin", "missing_module", "duplicate_names", "unknown_key"])
def test_config_check_names_the_bad_field(cluster: Cluster, tmp_path: Path, mutate: Callable[[dict], None],
                                          expected: str) -> None:
    config = copy.deepcopy(yaml.safe_load(cluster.config.read_text()))
    mutate(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _config_check(path)
    assert result.returncode != 0, result.stdout
    assert "config error" in result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert "73914268" not in result.stdout + result.stderr  # a literal PIN is never echoed
    assert "OK" not in result.stdout


# ------------------------------------------------------------------------- (4) reflection and health
def test_reflection_lists_the_services(daemon: DaemonProcess) -> None:
    with daemon.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=10))
    assert len(replies) == 1
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"hsmlb.v1.Operations", "hsmlb.v1.Admin", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("service", ["", "hsmlb.v1.Operations"])
def test_health_check_serving(daemon: DaemonProcess, service: str) -> None:
    with daemon.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------- (5) hsmlb nodes --keys
def _sections(text: str) -> dict[str, str]:
    """`hsmlb nodes --keys` prints `\\nNODE:` and then that node's key lines."""
    parts = re.split(r"^(node-[a-d]):$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_nodes_cli_lists_nodes_and_keys(daemon: DaemonProcess) -> None:
    result = subprocess.run([sys.executable, "-m", "hsmlb", "nodes", "--address", daemon.address, "--keys"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("\n\n", 1)[0]
    assert table.splitlines()[0].split()[:2] == ["NODE", "STATE"]
    for node in NODES:
        assert re.search(rf"^{node}\s+healthy", table, flags=re.MULTILINE), table
    sections = _sections(result.stdout)
    assert sorted(sections) == list(NODES), result.stdout
    assert re.search(r"alias/only-node-a\s+AES\s+kcv=[0-9A-F]{6}", sections["node-a"]), sections["node-a"]
    assert "alias/dek-aes256" in sections["node-a"]
    assert "alias/only-node-a" not in sections["node-b"]
    assert "alias/zek-aes128" in sections["node-d"]
    assert "alias/dek-aes256" not in sections["node-d"]


# ------------------------------------------------------------------------- (6) ListNodes numbers
def test_list_nodes_pool_and_key_check_values(admin: pb_grpc.AdminStub) -> None:
    nodes = {n.name: n for n in admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes}
    assert sorted(nodes) == list(NODES)
    for name, node in nodes.items():
        assert node.kind == "pkcs11"
        assert node.pool_size == 4, name
        assert 0 <= node.sessions_in_use <= node.pool_size
        assert node.backend_state == "up" and node.operator == "active" and node.breaker == "closed"
        keys = {k.alias: k for k in node.keys}
        assert keys, name
        for key in keys.values():
            if key.key_type in ("AES", "DES3", "GENERIC_SECRET"):
                assert re.fullmatch(r"[0-9A-F]{6}", key.key_check_value), (name, key)
            else:
                assert key.key_type in ("RSA", "EC") and key.key_check_value == "", (name, key)
        assert keys["alias/zek-aes128"].key_check_value == "7DF76B"
        assert set(keys["alias/zek-aes128"].usages) == {"encrypt", "decrypt"}
    for name in ("node-a", "node-b", "node-c"):
        keys = {k.alias: k for k in nodes[name].keys}
        assert keys["alias/dek-tdes2"].key_check_value == "08D7B4"
        assert keys["alias/sign-ec"].key_type == "EC" and "sign" in keys["alias/sign-ec"].usages
    assert {k.alias for k in nodes["node-d"].keys} == {"alias/zek-aes128", "alias/cmac-aes128"}
