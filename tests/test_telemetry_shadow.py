"""Shadowing as telemetry shows it: tokens primary, emulated regions shadowed at 100% (as `hsmlb dev up
--serve --shadow` writes it). Outcomes and latencies per operation in /metrics, the comparison in
/status.json, and a span per shadow call under the traced operation's span."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hsmlb.dev.cluster import dev_routes
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._daemon_helpers import NIST_ECB, nist_request
from tests._telemetry_helpers import Collector, fetch, scrape, telemetry_daemon, value
from tests.conftest import PaymentCluster

N = 40


def test_shadow_outcomes_in_metrics_status_and_spans(strict_payment_cluster: PaymentCluster, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    collector = Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")

    def routed(data: dict) -> None:
        data["routes"] = dev_routes(shadow=True)

    try:
        with telemetry_daemon(strict_payment_cluster, tmp_path, mutate=routed,
                              tracing={"export_interval_s": 0.2}) as (daemon, url), daemon.channel() as channel:
            ops = pb_grpc.OperationsStub(channel)
            for _ in range(N):
                assert ops.EncryptData(nist_request(), timeout=10).cipher_text == NIST_ECB
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                samples = scrape(url)
                if value(samples, "hsmlb_shadow_outcomes_total", op="encrypt", side="candidate") >= N:
                    break
                time.sleep(0.2)
            assert value(samples, "hsmlb_shadow_outcomes_total", op="encrypt", side="candidate") == N
            assert value(samples, "hsmlb_shadow_outcomes_total", op="encrypt", outcome="match") == N
            assert value(samples, "hsmlb_shadow_outcomes_total", op="encrypt", outcome="discrepancy") == 0
            assert value(samples, "hsmlb_shadow_latency_seconds", op="encrypt", path="candidate", quantile="0.99") > 0
            doc = json.loads(fetch(url + "status.json"))
            rows = [r for r in doc["shadow"]["operations"] if r["op"] == "encrypt" and r["side"] == "candidate"]
            assert rows and rows[0]["matches"] == N and rows[0]["discrepancies"] == 0
            assert doc["routes"][0]["candidate"] == "apc"
            shadows = collector.wait(lambda s: s["name"] == "hsmlb.shadow")
            assert shadows, "no shadow span"
            servers = {s["span_id"]: s for s in collector.spans if s["kind"] == 2}
            parent = servers.get(shadows[0]["parent"])
            assert parent is not None and parent["name"] == "hsmlb.v1.Operations/EncryptData"
            assert shadows[0]["attrs"]["hsmlb.node"] in ("apc-east", "apc-west")
            assert shadows[0]["attrs"]["hsmlb.shadow.side"] == "candidate"
            assert shadows[0]["attrs"]["hsmlb.node.kind"] == "apc"
    finally:
        collector.close()
