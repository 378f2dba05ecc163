"""Operators' command line and logs against a real daemon: `hsmlb nodes --wide`, `hsmlb status`, and
`--log-format json` with the trace id on the lines a traced call causes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import NODES, ONLY_A, WHO, encrypt_request
from tests._telemetry_helpers import telemetry_daemon
from tests.conftest import Cluster

TRACE = "5bf92f3577b34da6a3ce929d0e0e4799"


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "hsmlb", *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_nodes_wide_and_status(cluster: Cluster, tmp_path: Path) -> None:
    with telemetry_daemon(cluster, tmp_path, metrics=False) as (daemon, _), daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        for _ in range(5):
            ops.EncryptData(encrypt_request(), timeout=10)
        pb_grpc.AdminStub(channel).SetNodeState(pb.SetNodeStateRequest(node="node-c", action=pb.DRAIN,
                                                                       requested_by=WHO), timeout=5)
        wide = _cli("nodes", "--wide", "--address", daemon.address).splitlines()
        header = wide[0].split()
        for column in ("RETRIES", "THROTTLED", "EJECTIONS", "WEIGHT", "SKIPPED", "CAPABILITIES", "KIND"):
            assert column in header, header
        rows = {line.split()[0]: line for line in wide[1:] if line.split() and line.split()[0] in NODES}
        assert set(rows) == set(NODES)
        assert "encrypt" in rows["node-a"] and "pin_translation" in rows["node-a"]  # capabilities
        assert "pin_translation" not in rows["node-d"]  # the strict token: no host-side derivation
        assert "draining" in rows["node-c"]
        narrow = _cli("nodes", "--address", daemon.address).splitlines()[0]
        assert "CAPABILITIES" not in narrow  # the default view stays narrow

        status = _cli("status", "--address", daemon.address)
        lines = dict(line.split(None, 1) for line in status.splitlines() if line.strip() and "  " in line)
        assert "least_outstanding" in status
        assert lines["nodes"].startswith("4 configured, 4 up, 3 healthy"), status
        assert "node-c (draining)" in status
        assert int(lines["operations"].split()[0]) >= 5  # the encrypts above, served by the nodes


def test_json_logs_carry_the_trace_id(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # spans to the daemon's stdout; nothing else listens
    router = {"outlier": {"consecutive_node_faults": 1}}
    with telemetry_daemon(cluster, tmp_path, metrics=False, router=router, logging={"format": "json"}) \
            as (daemon, _), daemon.channel() as channel:
        pb_grpc.AdminStub(channel).InjectFault(pb.InjectFaultRequest(node="node-a", fault="error_rate", value=1.0),
                                               timeout=10)
        ops = pb_grpc.OperationsStub(channel)
        with pytest.raises(grpc.RpcError):  # only node-a holds it: the node fault reaches the caller
            ops.EncryptData(encrypt_request(ONLY_A), timeout=10,
                            metadata=[("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "ejected" not in daemon.log_text():
            time.sleep(0.05)
        text = daemon.log_text()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(e["message"].startswith("serving on port") for e in entries)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    ejected = [e for e in entries if "ejected" in e["message"] and "node-a" in e["message"]]
    assert ejected and ejected[0]["trace_id"] == TRACE, ejected
    untraced = [e for e in entries if e["message"].startswith("serving on port")]
    assert "trace_id" not in untraced[0]
    plain = [line for line in text.splitlines() if " INFO hsmlb." in line or " WARNING hsmlb." in line]
    assert not plain, plain[:3]  # the daemon's own lines are all JSON
