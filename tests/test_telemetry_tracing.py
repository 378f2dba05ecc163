"""OpenTelemetry spans from a real daemon, exported over OTLP/HTTP protobuf to a collector stand-in on loopback.

The stand-in decodes each export with opentelemetry-proto's ExportTraceServiceRequest, as a real
collector would. Configuration is the standard OTEL_* environment.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._routing_helpers import encrypt_request
from tests._sensitive_plant import STREAM_FIELDS, base_requests, leaks, planted_requests
from tests._telemetry_helpers import Collector, scrape, telemetry_daemon, value
from tests.conftest import Cluster

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
NEVER = 1_000_000
FAST_EXPORT = {"export_interval_s": 0.2}
# error_rate also fails the canaries and would eject node-a: keep it routable, so retries show
KEEP_ROUTABLE = {"outlier": {"consecutive_node_faults": NEVER, "failure_rate": 1.0, "failure_rate_min_requests": NEVER},
                 "breaker": {"fail_max": NEVER}, "health_check": {"unhealthy_threshold": NEVER},
                 "retry": {"min_retries_per_s": 1000}}


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    stand_in = Collector()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", stand_in.url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "hsmlb-under-test")
    yield stand_in
    stand_in.close()


def _traceparent(n: int, sampled: bool = True) -> tuple[str, str]:
    trace_id = f"{n:032x}"
    return trace_id, f"00-{trace_id}-00f067aa0ba902b7-{'01' if sampled else '00'}"


def _children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]]


def test_spans_in_the_callers_trace_with_attempts_retries_and_stream_items(cluster: Cluster, tmp_path: Path,
                                                                         collector: Collector) -> None:
    with telemetry_daemon(cluster, tmp_path, metrics=False, tracing=FAST_EXPORT, router=KEEP_ROUTABLE) \
            as (daemon, _), daemon.channel() as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        ops.EncryptData(encrypt_request(), timeout=10,
                        metadata=[("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")])
        servers = collector.wait(lambda s: s["trace_id"] == TRACE and s["kind"] == 2)  # SPAN_KIND_SERVER
        assert len(servers) == 1, collector.spans
        server = servers[0]
        assert server["name"] == "hsmlb.v1.Operations/EncryptData" and server["parent"] == "00f067aa0ba902b7"
        assert server["service"] == "hsmlb-under-test"
        attrs = server["attrs"]
        assert (attrs["rpc.system"], attrs["rpc.service"], attrs["rpc.method"]) == \
            ("grpc", "hsmlb.v1.Operations", "EncryptData")
        assert attrs["rpc.grpc.status_code"] == 0 and attrs["server.address"] == "127.0.0.1"
        assert attrs["network.peer.address"] == "127.0.0.1"
        assert attrs["hsmlb.operation"] == "encrypt" and attrs["hsmlb.key_alias"] == "alias/dek-aes256"
        assert attrs["hsmlb.node"] in ("node-a", "node-b", "node-c") and attrs["hsmlb.outcome"] == "OK"
        attempts = collector.wait(lambda s: s["parent"] == server["span_id"])
        assert len(attempts) == 1 and attempts[0]["name"] == "hsmlb.attempt"
        first = attempts[0]["attrs"]
        assert first["hsmlb.node"] == attrs["hsmlb.node"] and first["hsmlb.retry"] is False
        assert first["hsmlb.node.kind"] == "pkcs11" and first["hsmlb.outcome"] == "ok" and first["hsmlb.attempt"] == 1

        # a retried operation: node-a fails every operation; the first attempt that lands there is retried elsewhere
        admin.InjectFault(pb.InjectFaultRequest(node="node-a", fault="error_rate", value=1.0), timeout=10)
        retried: list[dict[str, Any]] = []
        for n in range(1, 60):
            trace_id, parent = _traceparent(0xA000 + n)
            ops.EncryptData(encrypt_request(), timeout=10, metadata=[("traceparent", parent)])
            found = collector.wait(lambda s, t=trace_id: s["trace_id"] == t and s["kind"] == 2, 5)
            if found and found[0]["attrs"]["hsmlb.attempts"] == 2:
                retried = found
                break
        admin.InjectFault(pb.InjectFaultRequest(node="node-a", fault="error_rate", value=0.0), timeout=10)
        assert retried, "no operation was retried in 59 tries"
        tries = sorted(collector.wait(lambda s: s["parent"] == retried[0]["span_id"]),
                       key=lambda s: s["attrs"]["hsmlb.attempt"])
        assert len(tries) == 2, tries
        assert tries[0]["attrs"]["hsmlb.node"] == "node-a" and tries[0]["attrs"]["hsmlb.outcome"] == "node_fault"
        assert tries[0]["attrs"]["hsmlb.fault"] == "node" and tries[0]["status"][0] == 2  # STATUS_CODE_ERROR
        assert tries[1]["attrs"]["hsmlb.retry"] is True and tries[1]["attrs"]["hsmlb.node"] != "node-a"
        assert tries[1]["attrs"]["hsmlb.outcome"] == "ok"

        # Stream: a span per operation; an item's own traceparent beats the stream's
        stream_trace, stream_parent = _traceparent(0xB000)
        item_trace, item_parent = _traceparent(0xC000)
        requests = [pb.StreamRequest(request_id=1, encrypt_data=encrypt_request()),
                    pb.StreamRequest(request_id=2, encrypt_data=encrypt_request(), traceparent=item_parent)]
        assert len(list(ops.Stream(iter(requests), timeout=10, metadata=[("traceparent", stream_parent)]))) == 2
        batch_trace, batch_parent = _traceparent(0xD000)
        batch = pb.BatchRequest(items=[pb.StreamRequest(request_id=i, encrypt_data=encrypt_request(),
                                                        traceparent=batch_parent) for i in (7, 8)])
        assert len(ops.Batch(batch, timeout=10).items) == 2
        in_stream = collector.wait(lambda s: s["trace_id"] == stream_trace and s["kind"] == 2)
        in_item = collector.wait(lambda s: s["trace_id"] == item_trace and s["kind"] == 2)
        in_batch = collector.wait(lambda s: s["trace_id"] == batch_trace and s["kind"] == 2)
        time.sleep(0.5)  # let a duplicate, if any, arrive too
        in_batch = collector.wait(lambda s: s["trace_id"] == batch_trace and s["kind"] == 2)
        assert [s["attrs"]["hsmlb.request_id"] for s in in_stream] == [1]
        assert [s["attrs"]["hsmlb.request_id"] for s in in_item] == [2]
        assert sorted(s["attrs"]["hsmlb.request_id"] for s in in_batch) == [7, 8]
        assert {s["attrs"]["hsmlb.rpc"] for s in in_stream + in_batch} == {"Stream", "Batch"}
        assert all(s["name"] == "hsmlb.v1.Operations/EncryptData" for s in in_stream + in_item + in_batch)


def test_no_planted_secret_in_any_exported_span(cluster: Cluster, tmp_path: Path, collector: Collector) -> None:
    """Every RPC with PANs, PIN blocks and key hex planted in every string field, unary and streamed."""
    planted = [(m, r) for m, r in planted_requests() if m in ("EncryptData", "GenerateCardValidationData",
                                                              "TranslatePinData", "VerifyAuthRequestCryptogram")]
    with telemetry_daemon(cluster, tmp_path, metrics=False, tracing=FAST_EXPORT) as (daemon, _), \
            daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        for method, request in [*base_requests().items(), *planted]:
            with contextlib.suppress(grpc.RpcError):  # refused or failed: its span is exported all the same
                getattr(ops, method)(request, timeout=10)
        stream = [pb.StreamRequest(request_id=i + 1, **{STREAM_FIELDS[m]: r})
                  for i, (m, r) in enumerate(base_requests().items())]
        list(ops.Stream(iter(stream), timeout=30))
        seen, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 20
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 1.0:  # until no span came for 1 s
            time.sleep(0.1)
            if len(collector.spans) != seen:
                seen, quiet_since = len(collector.spans), time.monotonic()
        with collector.lock:
            spans = list(collector.spans)
    servers = [s for s in spans if s["kind"] == 2]
    # every request that decoded has its span: the base ones, and planted ones refused after decoding
    # (a PAN as a key alias: NOT_FOUND); those refused while decoding never reach the seam
    assert len(servers) >= 2 * len(base_requests()), len(servers)
    assert any(s["attrs"]["hsmlb.outcome"] == "NOT_FOUND" for s in servers)
    found = {name for s in spans for name in leaks(s["text"])}
    assert not found, found


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_default_sampler_with_no_collector_serves_and_logs_once(cluster: Cluster, tmp_path: Path, protocol: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens where spans go; trace ids under the 1% ratio's bound make every operation sampled."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # discard: nothing listens
    for var in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    with telemetry_daemon(cluster, tmp_path, tracing={"export_interval_s": 0.1, "max_export_batch_size": 5,
                                                      "export_timeout_s": 0.5}) as (daemon, url), \
            daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        for n in range(1, 121):
            _, parent = _traceparent((0xE << 100) + n)  # low 64 bits tiny: under the default 1% bound
            assert ops.EncryptData(encrypt_request(), timeout=10, metadata=[("traceparent", parent)]).cipher_text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and value(scrape(url), "hsmlb_span_export_failures_total") < 3:
            time.sleep(0.2)
        samples = scrape(url)
        assert value(samples, "hsmlb_span_export_failures_total") >= 3  # several failed exports ...
        assert value(samples, "hsmlb_spans_dropped_total") >= 10
        assert ops.EncryptData(encrypt_request(), timeout=10).cipher_text  # ... still serving
        log = daemon.log_text()
    lines = [line for line in log.splitlines() if re.search(r"span|export|opentelemetry|otlp", line, re.I)]
    assert len(lines) == 1, lines  # ... and one line about it
