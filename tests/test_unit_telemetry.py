"""Telemetry's plain-value parts: sampling, trace context parsing, OTEL_* configuration, p99, shed reasons."""

from __future__ import annotations

import random

import pytest

from hsmlb.config import ConfigError, parse_config
from hsmlb.telemetry.config import TracingConfig
from hsmlb.telemetry.export import otlp_endpoint
from hsmlb.telemetry.history import BOUNDS, p99_from
from hsmlb.telemetry.opcount import DURATION_BUCKETS
from hsmlb.telemetry.tracing import Sampler, _peer_address, build_tracing, method_name, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"
UNSAMPLED = f"00-{TRACE}-00f067aa0ba902b7-00"
NODE = {"name": "n", "module": "/x.so", "token_label": "n", "pin_env": "PIN"}


def test_traceparent_parsing() -> None:
    assert parse_traceparent(SAMPLED) == (int(TRACE, 16), 0x00F067AA0BA902B7, True)
    assert parse_traceparent(UNSAMPLED) == (int(TRACE, 16), 0x00F067AA0BA902B7, False)
    for bad in ("", "00-xyz", SAMPLED.replace("-", "_"), f"00-{'0' * 32}-00f067aa0ba902b7-01",
                f"ff-{TRACE}-00f067aa0ba902b7-01", f"00-{TRACE[:-1]}g-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None, bad


def test_ratio_sampler_ignores_the_callers_flag() -> None:
    """The default: a caller sending sampled contexts cannot turn on 100% tracing."""
    sampler = Sampler("traceidratio", 0.01, random.Random(1))
    rng = random.Random(2)
    parents = [(rng.getrandbits(128) or 1, 1, True) for _ in range(20_000)]
    taken = sum(sampler.sampled(p) for p in parents)
    assert 100 < taken < 300  # ~1% of 20,000, by trace id
    assert all(sampler.sampled(p) == sampler.sampled((p[0], 9, False)) for p in parents[:500])  # flag ignored
    roots = sum(sampler.sampled(None) for _ in range(20_000))
    assert 100 < roots < 300


def test_parent_based_samplers_follow_the_flag_only_when_asked() -> None:
    parent_on, parent_off = (int(TRACE, 16), 1, True), (int(TRACE, 16), 1, False)
    on = Sampler("parentbased_always_off", 0.0)
    assert on.sampled(parent_on) and not on.sampled(parent_off) and not on.sampled(None)
    assert not on.never  # a caller's sampled flag can still turn it on
    ratio = Sampler("parentbased_traceidratio", 0.0)
    assert ratio.sampled(parent_on) and not ratio.sampled(None)
    assert Sampler("always_on", 0.0).sampled(parent_off)
    assert Sampler("always_off", 1.0).never and Sampler("traceidratio", 0.0).never


def test_a_streams_root_operations_are_sampled_by_countdown_at_the_configured_share() -> None:
    """The filter samples root operations by drawing the gaps between sampled ones (a countdown per
    operation): the share, every span ended once, and nothing left open for `done` to look for."""
    import grpc

    from hsmlb.api.filters import Call, Item
    from hsmlb.ops import Operation, OpKind
    from hsmlb.telemetry.tracing import TracingFilter

    call = Call("/hsmlb.v1.Operations/StreamBatch", "ipv4:127.0.0.1:5000")
    for ratio, low, high in ((0.01, 200, 400), (0.25, 4_700, 5_300), (1.0, 20_000, 20_000)):
        ended: list[object] = []
        flt = TracingFilter(ended.append, Sampler("traceidratio", ratio, random.Random(7)), "127.0.0.1", None)
        items = [Item("encrypt_data", i + 1, Operation(OpKind.ENCRYPT, "alias/k", ())) for i in range(20_000)]
        for item in items:
            flt.admit(call, item)
        sampled = sum(item.op.trace is not None for item in items)  # type: ignore[union-attr]
        assert low <= sampled <= high, (ratio, sampled)
        flt.done(call, [item.end(grpc.StatusCode.OK) for item in items])
        assert len(ended) == sampled and flt._open == 0
        assert all(item.op.trace is None for item in items)  # type: ignore[union-attr]
    gaps = Sampler("traceidratio", 0.01, random.Random(3))
    assert 80 < sum(gaps.gap() for _ in range(2_000)) / 2_000 < 120  # geometric: mean (1 - p) / p = 99
    assert Sampler("always_on", 0.0).gap() == 0


def test_otel_environment_overrides_the_file() -> None:
    base = TracingConfig(sampler_arg=0.5, service_name="from-file")
    env = {"OTEL_SERVICE_NAME": "gw-hsm", "OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_on",
           "OTEL_TRACES_SAMPLER_ARG": "0.25", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9999"}
    got = base.with_env(env)
    assert (got.service_name, got.exporter, got.sampler, got.sampler_arg, got.protocol) == \
        ("gw-hsm", "console", "always_on", 0.25, "http/protobuf")
    assert otlp_endpoint(got) == "http://127.0.0.1:9999/v1/traces"
    assert base.with_env({}) is base and base.with_env({"OTEL_SDK_DISABLED": "true"}).enabled is False
    assert otlp_endpoint(TracingConfig()) == "http://localhost:4317"
    with pytest.raises(ValueError, match="sampler"):
        base.with_env({"OTEL_TRACES_SAMPLER": "sometimes"})
    assert build_tracing(base.with_env({"OTEL_SDK_DISABLED": "true"}), None) is None  # type: ignore[arg-type]
    assert build_tracing(base.with_env({"OTEL_TRACES_EXPORTER": "none"}), None) is None  # type: ignore[arg-type]


def test_config_sections() -> None:
    config = parse_config({"nodes": [NODE]})
    assert config.metrics is None and config.logging.format == "text"  # metrics off unless configured
    config = parse_config({"nodes": [NODE], "metrics": {"listen": "127.0.0.1:9464"}, "logging": {"format": "json"},
                           "tracing": {"sampler": "parentbased_traceidratio", "sampler_arg": 0.1}})
    assert config.metrics is not None and config.metrics.listen == "127.0.0.1:9464"
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        parse_config({"nodes": [NODE], "metrics": {"listen": "nowhere"}})
    with pytest.raises(ConfigError, match=r"tracing\.sampler_arg"):
        parse_config({"nodes": [NODE], "tracing": {"sampler_arg": 2}})


def test_p99_and_names() -> None:
    counts = [0] * len(BOUNDS)
    assert p99_from(counts) is None
    for le, n in ((0.001, 90), (0.002, 8), (0.005, 1), (0.01, 1)):  # 99 of 100 by 5 ms
        counts[BOUNDS.index(le)] = n
    assert p99_from(counts) == 0.005
    counts[BOUNDS.index(0.01)] = 2  # 99 of 101 by 5 ms: short of 99.99
    assert p99_from(counts) == 0.01
    beyond = [0] * len(BOUNDS)
    beyond[-1] = 10
    assert p99_from(beyond) == DURATION_BUCKETS[-1]  # beyond the last bound: the last bound
    assert method_name("translate_pin_data") == "TranslatePinData"
    assert _peer_address("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert _peer_address("ipv6:[::1]:5000") == "::1"


def test_history_rates_per_node_and_in_total_from_count_differences() -> None:
    import grpc

    from hsmlb.telemetry.history import TOTAL, History, _rates
    from hsmlb.telemetry.opcount import OpCounts

    class _Metrics:
        counts = OpCounts()

    history = History(_Metrics(), history_s=60, interval_s=2.0)  # type: ignore[arg-type]
    counts = _Metrics.counts
    counts.record("EncryptData", "node-a", grpc.StatusCode.OK, 0.0004)
    before = history.read()
    for _ in range(98):
        counts.record("EncryptData", "node-a", grpc.StatusCode.OK, 0.0004)
    counts.record("EncryptData", "node-b", grpc.StatusCode.OK, 0.004)
    counts.record("EncryptData", "node-b", grpc.StatusCode.UNAVAILABLE, 0.04)
    rates = _rates(history.read(), before, 2.0)
    assert rates["node-a"] == {"tps": 49.0, "errors_per_s": 0.0, "p99_ms": 0.5}  # 98 ops, all by 0.5 ms
    assert rates["node-b"] == {"tps": 0.5, "errors_per_s": 0.5, "p99_ms": 50.0}  # 2 ops: p99 is the worst
    assert rates[TOTAL] == {"tps": 49.5, "errors_per_s": 0.5, "p99_ms": 5.0}  # 99 of 100 by 5 ms
    assert history.read()[TOTAL].ok == 100 and history.read()[TOTAL].errors == 1


def test_operation_counts_expose_as_prometheus_counters_and_histograms() -> None:
    import grpc
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from hsmlb.telemetry.opcount import OpCounts, OperationsCollector

    counts = OpCounts()
    for latency in (0.00004, 0.0004, 0.0004, 0.003, 9.0):
        counts.record("encrypt_data", "node-a", grpc.StatusCode.OK, latency)
    counts.record("encrypt_data", "", grpc.StatusCode.NOT_FOUND, 0.0001)
    registry = CollectorRegistry()
    registry.register(OperationsCollector(counts))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    a = (("node", "node-a"), ("op", "encrypt_data"))
    assert samples[("hsmlb_operations_total", (("code", "OK"), *a))] == 5
    assert samples[("hsmlb_operations_total", (("code", "NOT_FOUND"), ("node", "none"), ("op", "encrypt_data")))] == 1
    assert samples[("hsmlb_operation_duration_seconds_bucket", (("le", "5e-05"), *a))] == 1
    assert samples[("hsmlb_operation_duration_seconds_bucket", (("le", "0.0005"), *a))] == 3
    assert samples[("hsmlb_operation_duration_seconds_bucket", (("le", "5.0"), *a))] == 4
    assert samples[("hsmlb_operation_duration_seconds_bucket", (("le", "+Inf"), *a))] == 5
    assert samples[("hsmlb_operation_duration_seconds_count", a)] == 5
    assert abs(samples[("hsmlb_operation_duration_seconds_sum", a)] - 9.00384) < 1e-9


def test_lean_otlp_encoding_decodes_as_the_sdks_own() -> None:
    """otlp.py's bytes, parsed by opentelemetry-proto, equal the SDK encoder's request for the same spans:
    a remote-parented server span in error, a local child, a root; str, int (negative too), bool, float."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanKind

    from hsmlb.telemetry.export import SpanRecord, readable
    from hsmlb.telemetry.otlp import Encoder

    server = SpanRecord("hsmlb.v1.Operations/EncryptData", SpanKind.SERVER, int(TRACE, 16), 0x1234,
                        0x00F067AA0BA902B7, True, 1_700_000_000_000_000_000)
    server.attributes = {"rpc.system": "grpc", "rpc.grpc.status_code": 5, "hsmlb.retry": False,
                         "hsmlb.attempts": 2, "offset": -5, "ratio": 1.5}
    server.end_ns, server.error = server.start_ns + 1000, "NOT_FOUND"
    child = SpanRecord("hsmlb.attempt", SpanKind.CLIENT, server.trace_id, 0x9999, server.span_id, False,
                       server.start_ns + 5)
    child.attributes, child.end_ns = {"hsmlb.node": "node-a", "hsmlb.retry": True}, server.start_ns + 10
    root = SpanRecord("root", SpanKind.SERVER, 0xABC, 0xDEF, 0, False, 1)
    root.end_ns = 2
    records = [server, child, root, child]  # twice: the second from the attribute cache
    resource = Resource.create({"service.name": "hsmlb-test"})
    expected = encode_spans([readable(r, resource, InstrumentationScope("hsmlb")) for r in records])
    for span in expected.resource_spans[0].scope_spans[0].spans:
        if span.status.code == 0:
            span.ClearField("status")  # the SDK writes an empty Status for UNSET; absent means the same
    got = ExportTraceServiceRequest.FromString(Encoder(dict(resource.attributes), "hsmlb").request(records))
    assert got == expected


def test_span_records_reach_an_otlp_grpc_collector() -> None:
    """The default protocol: records encoded here, sent by the OpenTelemetry gRPC exporter's own stub to a
    TraceService on loopback, decode as the span the filter made (in the caller's trace, attributes intact)."""
    import time
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc

    from hsmlb.api.filters import Call, Item
    from hsmlb.ops import Operation, OpKind
    from hsmlb.telemetry.tracing import Tracing

    received: list[ts.ExportTraceServiceRequest] = []

    class Service(ts_grpc.TraceServiceServicer):
        def Export(self, request: ts.ExportTraceServiceRequest, context: object) -> ts.ExportTraceServiceResponse:
            received.append(request)
            return ts.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(2))
    ts_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tracing = Tracing(TracingConfig(sampler="always_on", protocol="grpc", endpoint=f"http://127.0.0.1:{port}",
                                    export_interval_s=0.1), "127.0.0.1", None)
    try:
        call = Call("/hsmlb.v1.Operations/Stream", "ipv4:127.0.0.1:5000", traceparent=SAMPLED)
        item = Item("encrypt_data", 9, traceparent=SAMPLED)
        item.op = Operation(OpKind.ENCRYPT, "alias/zek", ())
        tracing.filter.admit(call, item)
        item.op.node, item.op.attempts = "node-a", 1
        tracing.filter.done(call, [item.end(grpc.StatusCode.OK)])
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        tracing.shutdown()
        server.stop(0)
    span = received[0].resource_spans[0].scope_spans[0].spans[0]
    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
    assert (span.name, span.trace_id.hex(), span.parent_span_id.hex()) == \
        ("hsmlb.v1.Operations/EncryptData", TRACE, "00f067aa0ba902b7")
    assert attrs["hsmlb.request_id"] == 9 and attrs["hsmlb.node"] == "node-a" and attrs["hsmlb.outcome"] == "OK"
    assert attrs["network.peer.address"] == "127.0.0.1" and attrs["hsmlb.rpc"] == "Stream"


def test_a_refusal_is_counted_by_the_reason_stated_where_it_was_raised() -> None:
    """The shed label comes from the error (errors.Overloaded.reason) through the seam's done, not from
    the wording of its message: a reworded message keeps its label, an unknown refusal is `other`."""
    import grpc

    from hsmlb.api.filters import Call, FilterChain, Item
    from hsmlb.auth.filter import RateLimited
    from hsmlb.errors import Overloaded, Throttled
    from hsmlb.peer_cap import TooManyConnections
    from hsmlb.telemetry.metrics import Metrics, MetricsFilter

    metrics = Metrics(router=None)  # type: ignore[arg-type]  # the router is read only at scrape time
    chain = FilterChain([MetricsFilter(metrics)])
    call = Call("/hsmlb.v1.Operations/StreamBatch", "ipv4:127.0.0.1:5000")
    refusals = [Overloaded("every node is busy, in new words", "all_nodes_saturated"), Overloaded("no reason given"),
                Throttled("node r: quota in use"), RateLimited("caller x is over its rate", 5), TooManyConnections(4),
                Overloaded("a queue note", "node_queue_wait")]
    for exc in refusals:
        chain.done(call, [Item("encrypt_data").end(exc.status, exc.message, reason=exc.reason)])
    counted = {s.labels["reason"]: s.value for f in metrics.shed.collect() for s in f.samples
               if s.name == "hsmlb_shed_total"}
    assert counted == {"all_nodes_saturated": 1, "other": 1, "backend_quota": 1, "rate_limit": 1,
                       "peer_connections": 1, "node_queue_wait": 1}
    assert all(exc.status == grpc.StatusCode.RESOURCE_EXHAUSTED for exc in refusals)


def test_the_streams_inlined_items_have_the_fields_item_init_gives() -> None:
    """StreamCall.dispatch builds its Items with __init__'s stores inlined (half their cost): both ways must
    make the same fields with the same values, or a filter would read a missing slot."""
    import asyncio

    import grpc

    from hsmlb.api.filters import Call, FilterBase, FilterChain, Item
    from hsmlb.api.stream import StreamCall
    from hsmlb.v1 import hsmlb_pb2 as pb

    told: list[Item] = []

    class Keep(FilterBase):
        def done(self, call: Call, items: object) -> None:
            told.extend(items)  # type: ignore[call-overload]

    own = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"  # a batched item's own trace context
    call = Call("/hsmlb.v1.Operations/StreamBatch", "ipv4:127.0.0.1:5000", traceparent=own.replace("c", "a"))
    loop = asyncio.new_event_loop()
    try:
        stream = StreamCall(None, loop, None, FilterChain([Keep()]), call)  # type: ignore[arg-type]
        stream.dispatch(pb.StreamRequest(request_id=7), 123.5)  # no operation: refused before routing
        stream.dispatch(pb.StreamRequest(request_id=8, traceparent=own))
        stream.tell()
    finally:
        loop.close()
    expected = [Item("", 7, None, call.traceparent, 123.5), Item("", 8, None, own)]
    for item in expected:
        item.end(grpc.StatusCode.INVALID_ARGUMENT, "operation: one operation is required")
    assert len(told) == 2
    for got, want in zip(told, expected, strict=True):
        have = {name for name in Item.__slots__ if hasattr(got, name)}
        assert have == {name for name in Item.__slots__ if hasattr(want, name)} == set(Item.__slots__)
        for name in Item.__slots__:
            if name not in ("started", "ended"):
                assert getattr(got, name) == getattr(want, name), name
    assert told[0].started == 123.5 and told[1].started > 0  # a batch's arrival, else the item's own


def test_a_childs_log_lines_follow_the_daemons_format_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token workers and the shadow executor share the daemon's stderr: in JSON mode their lines are JSON too,
    naming the process; the level is the daemon's (passed through the environment they copy)."""
    import json
    import logging
    import os
    import subprocess
    import sys

    from hsmlb.telemetry.logs import FORMAT_ENV, LEVEL_ENV, share_with_children

    code = ("import logging; from hsmlb.telemetry.logs import child_logging; child_logging('token-worker'); "
            "log = logging.getLogger('hsmlb.pkcs11'); log.warning('node %s: %s', 'node-a', 'token gone'); "
            "log.info('an info line')")

    def child_stderr() -> list[str]:
        done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()

    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)
    monkeypatch.setenv(FORMAT_ENV, "")
    monkeypatch.setenv(LEVEL_ENV, "")
    share_with_children("json")
    assert os.environ[FORMAT_ENV] == "json" and os.environ[LEVEL_ENV] == "WARNING"
    lines = child_stderr()
    assert len(lines) == 1, lines  # WARNING and up, as the daemon
    entry = json.loads(lines[0])
    assert entry["process"] == "token-worker" and entry["pid"] > 0 and entry["level"] == "WARNING"
    assert entry["message"] == "node node-a: token gone" and entry["logger"] == "hsmlb.pkcs11"

    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)
    share_with_children("text")
    lines = child_stderr()
    assert len(lines) == 2 and not any(line.startswith("{") for line in lines), lines
    assert " WARNING hsmlb.pkcs11 [token-worker " in lines[0] and lines[0].endswith("node node-a: token gone")
