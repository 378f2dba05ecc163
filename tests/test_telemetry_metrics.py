"""Prometheus metrics and /status.json against a real daemon on the dev cluster's SoftHSM2 tokens.

/metrics is parsed with prometheus_client's own parser; counts are compared before and after real
calls (unary and Stream), a drill, and an ejection caused by fault injection.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import DEK, NODES, PLAIN, WHO, encrypt_request
from tests._telemetry_helpers import fetch, scrape, telemetry_daemon, value
from tests.conftest import Cluster

N = 25
SERIES = ("hsmlb_operations_total", "hsmlb_operation_duration_seconds_bucket", "hsmlb_node_up", "hsmlb_node_healthy",
          "hsmlb_node_outstanding", "hsmlb_node_ejections_total", "hsmlb_node_breaker_open", "hsmlb_retries_total",
          "hsmlb_throttled_total", "hsmlb_key_holders", "hsmlb_node_keys", "hsmlb_kcv_conflicts")


def _stream(ops: pb_grpc.OperationsStub, count: int) -> list[pb.StreamResponse]:
    requests = [pb.StreamRequest(request_id=i + 1, encrypt_data=encrypt_request()) for i in range(count)]
    return list(ops.Stream(iter(requests), timeout=30))


def test_operations_counted_and_node_series_present(cluster: Cluster, tmp_path: Path) -> None:
    with telemetry_daemon(cluster, tmp_path) as (daemon, url), daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        before = scrape(url)
        for name in SERIES[2:]:
            if name in ("hsmlb_retries_total", "hsmlb_throttled_total", "hsmlb_node_ejections_total"):
                assert {labels["node"] for labels, _ in before[name]} == set(NODES), name
            else:
                assert name in before, f"{name} missing from /metrics"
        assert {labels["node"] for labels, _ in before["hsmlb_node_up"]} == set(NODES)
        assert value(before, "hsmlb_key_holders", alias=DEK) == 3  # node-a, b, c

        ciphers = {ops.EncryptData(encrypt_request(), timeout=10).cipher_text for _ in range(N)}
        after = scrape(url)
        ok = value(after, "hsmlb_operations_total", op="encrypt_data", code="OK") - \
            value(before, "hsmlb_operations_total", op="encrypt_data", code="OK")
        assert ok == N
        assert value(after, "hsmlb_operation_duration_seconds_count", op="encrypt_data") - \
            value(before, "hsmlb_operation_duration_seconds_count", op="encrypt_data") == N
        served = {labels["node"] for labels, v in after["hsmlb_operations_total"] if labels["op"] == "encrypt_data"}
        assert served <= {"node-a", "node-b", "node-c"}, served  # the holders of the key, never "none"
        # the 50 us .. 5 s buckets, not prometheus_client's defaults that start at 5 ms
        bounds = {labels["le"] for labels, _ in after["hsmlb_operation_duration_seconds_bucket"]}
        assert {"5e-05", "0.001", "5.0"} <= bounds

        answers = _stream(ops, N)
        assert all(a.WhichOneof("result") == "encrypt_data" for a in answers)
        streamed = scrape(url)
        assert value(streamed, "hsmlb_operations_total", op="encrypt_data", code="OK") - \
            value(after, "hsmlb_operations_total", op="encrypt_data", code="OK") == N

        try:
            ops.EncryptData(encrypt_request("alias/no-such-key"), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        missing = scrape(url)
        assert value(missing, "hsmlb_operations_total", op="encrypt_data", node="none", code="NOT_FOUND") == 1

        # nothing of the request's data in the metrics or the status document
        for text in (fetch(url + "metrics"), fetch(url + "status.json")):
            assert PLAIN not in text and PLAIN.lower() not in text
            assert not any(c and c in text for c in ciphers)


def test_drill_and_ejection_show_in_gauges_counters_and_status(cluster: Cluster, tmp_path: Path) -> None:
    router = {"outlier": {"consecutive_node_faults": 3, "base_ejection_s": 30}, "retry": {"min_retries_per_s": 1000}}
    with telemetry_daemon(cluster, tmp_path, router=router) as (daemon, url), daemon.channel() as channel:
        admin, ops = pb_grpc.AdminStub(channel), pb_grpc.OperationsStub(channel)
        admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.FAIL, requested_by=WHO), timeout=5)
        drilled = scrape(url)
        assert value(drilled, "hsmlb_node_operator_state", node="node-b", state="failed") == 1
        assert value(drilled, "hsmlb_node_healthy", node="node-b") == 0
        assert value(drilled, "hsmlb_node_healthy", node="node-a") == 1
        assert value(drilled, "hsmlb_admin_actions_total", action="set_node_state") == 1
        status = json.loads(fetch(url + "status.json"))
        node_b = next(n for n in status["nodes"] if n["name"] == "node-b")
        assert node_b["operator"] == "failed" and not node_b["healthy"]
        assert status["drills"][0]["node"] == "node-b" and status["drills"][0]["requested_by"] == WHO
        admin.SetNodeState(pb.SetNodeStateRequest(node="node-b", action=pb.RESTORE, requested_by=WHO), timeout=5)

        admin.InjectFault(pb.InjectFaultRequest(node="node-a", fault="error_rate", value=1.0), timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ops.EncryptData(encrypt_request(), timeout=10)  # retried elsewhere when node-a fails it
            samples = scrape(url)
            if value(samples, "hsmlb_node_ejections_total", node="node-a") >= 1:
                break
        assert value(samples, "hsmlb_node_ejections_total", node="node-a") >= 1
        assert value(samples, "hsmlb_node_ejected", node="node-a") == 1
        assert value(samples, "hsmlb_node_healthy", node="node-a") == 0
        assert value(samples, "hsmlb_retries_total", node="node-a") >= 1
        assert value(samples, "hsmlb_node_ops_failed_total", node="node-a") >= 1
        status = json.loads(fetch(url + "status.json"))
        node_a = next(n for n in status["nodes"] if n["name"] == "node-a")
        assert node_a["ejections"] >= 1 and node_a["state"].startswith("ejected")
        admin.InjectFault(pb.InjectFaultRequest(node="node-a", fault="error_rate", value=0.0), timeout=10)


def test_status_page_and_document(cluster: Cluster, tmp_path: Path) -> None:
    with telemetry_daemon(cluster, tmp_path) as (_, url):
        page = fetch(url)
        assert "<script>" in page and "status.json" in page
        assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched from elsewhere
        doc = json.loads(fetch(url + "status.json"))
        assert [n["name"] for n in doc["nodes"]] == list(NODES)
        dek = next(k for k in doc["keys"] if k["alias"] == DEK)
        assert sorted(dek["holders"]) == ["node-a", "node-b", "node-c"] and dek["kcv_agreed"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(doc["hardware"]) < len(NODES):
            time.sleep(0.2)
            doc = json.loads(fetch(url + "status.json"))
        token = doc["hardware"]["node-a"]
        assert token["model"] == "SoftHSM v2" and token["firmware"] and "TOKEN_INITIALIZED" in token["flags"]
        assert "sessions" in token and "free_private_memory" in token  # C_GetTokenInfo's counts, read via ctypes
