"""Span export: the OTLP (gRPC or HTTP/protobuf) or console exporter behind a bounded queue.

Not the SDK's BatchSpanProcessor: with the collector down it warns once per dropped span (a log
storm at thousands of operations a second). Here the queue is bounded, a full queue drops the
span and counts it, and a failing collector is logged once (and once more when it recovers);
the exporters' own per-retry warnings are silenced. One daemon thread exports; the event loop
only appends to a deque.

Not the SDK's Span either: starting one costs 20-35 us on this machine (a lock, attribute
validation, a sampler call, a context), more than the operation it describes. The event loop
makes a `SpanRecord` (ids, times, one attribute dict of plain str/int/bool values) and queues it
when it ends. For OTLP the export thread encodes the records itself (otlp.py, ~8x cheaper than the
SDK's encoder) and hands the bytes to the OpenTelemetry exporter's own transport (its HTTP client
with retries, or its gRPC stub); where an exporter version offers no such transport, and for the
console, records become the SDK's ReadableSpan and go through `exporter.export` as usual.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from hsmlb.telemetry.config import TracingConfig
from hsmlb.telemetry.otlp import Encoder

log = logging.getLogger("hsmlb.telemetry")
_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.grpc.exporter",
                     "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                     "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                     "opentelemetry.exporter.otlp.proto.http", "opentelemetry.exporter.otlp.proto.grpc",
                     "opentelemetry.exporter.otlp", "opentelemetry.exporter")


def otlp_endpoint(config: TracingConfig) -> str:
    """The exporter's URL: OTEL_EXPORTER_OTLP_ENDPOINT is a base; HTTP appends the signal's path."""
    if config.protocol == "grpc":
        return config.endpoint or "http://localhost:4317"
    base = config.endpoint or "http://localhost:4318"
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


def make_exporter(config: TracingConfig) -> SpanExporter | None:
    """The configured exporter, or None for `none`. OTLP exporters come from the OpenTelemetry project."""
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=config.service_name)
    for name in _EXPORTER_LOGGERS:  # we say it once ourselves (BoundedSpanProcessor); they say it per retry
        logging.getLogger(name).setLevel(logging.CRITICAL)
    endpoint = otlp_endpoint(config)
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://") or None,
                            timeout=config.export_timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint, timeout=config.export_timeout_s)


class SpanRecord:
    """A span as the event loop makes it: plain values, no lock, no validation (every attribute is ours)."""

    __slots__ = ("attributes", "end_ns", "error", "kind", "name", "parent_id", "parent_sampled", "span_id",
                 "start_ns", "trace_id")

    def __init__(self, name: str, kind: SpanKind, trace_id: int, span_id: int, parent_id: int,
                 parent_sampled: bool, start_ns: int) -> None:
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: a root span
        self.parent_sampled = parent_sampled  # a remote parent's flag (server spans in a caller's trace)
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes: dict[str, str | int | bool] = {}
        self.error = ""  # the status description when the span ended in error


_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_OK_STATUS = Status(StatusCode.UNSET)


def readable(record: SpanRecord, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """The SDK's finished-span form of a record, for the exporters (on the export thread)."""
    trace_id = record.trace_id
    parent = None
    if record.parent_id:
        remote = record.kind is SpanKind.SERVER
        parent = SpanContext(trace_id, record.parent_id, remote,
                             _SAMPLED if record.parent_sampled or not remote else _NOT_SAMPLED)
    return ReadableSpan(record.name, SpanContext(trace_id, record.span_id, False, _SAMPLED), parent, resource,
                        record.attributes, kind=record.kind,
                        status=Status(StatusCode.ERROR, record.error) if record.error else _OK_STATUS,
                        start_time=record.start_ns, end_time=record.end_ns, instrumentation_scope=scope)


def encoded_sender(exporter: SpanExporter) -> Callable[[bytes], bool] | None:
    """The exporter's own transport for an already encoded ExportTraceServiceRequest, or None (console, or an
    exporter version whose transport is not the one known here: then `exporter.export` encodes)."""
    client = getattr(exporter, "_client", None)
    if client is None:
        return None
    if callable(getattr(client, "Export", None)) and hasattr(exporter, "_timeout"):  # OTLP/gRPC: the stub
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        def send_grpc(data: bytes) -> bool:
            client.Export(request=ExportTraceServiceRequest.FromString(data),
                          metadata=getattr(exporter, "_headers", None) or None, timeout=exporter._timeout)
            return True

        return send_grpc
    export = getattr(client, "export", None)
    if callable(export):  # OTLP/HTTP: its client (compression, headers, retries with backoff)
        return lambda data: bool(export(data).success)
    return None


class _Resource(Resource):
    """The process's one resource with its hash computed once: the SDK's OTLP encoder groups spans by
    resource, and Resource.__hash__ is a JSON dump of its attributes, per span (14% of the encoding)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or super().__eq__(other)


class BoundedSpanProcessor:
    """Queue ended span records (at most `max_queue`; more are dropped and counted); a thread exports them."""

    def __init__(self, exporter: SpanExporter, where: str, max_queue: int = 2048, interval_s: float = 2.0,
                 batch: int = 512, resource: Resource | None = None) -> None:
        self.exporter = exporter
        self.where = where
        self.max_queue = max_queue
        self.interval_s = interval_s
        self.batch = batch
        self.resource = _Resource(resource or Resource.create({}))
        self.scope = InstrumentationScope("hsmlb")
        self.send = encoded_sender(exporter)
        self.encoder = Encoder(dict(self.resource.attributes), self.scope.name)
        self.queue: deque[SpanRecord] = deque()
        self.exported = 0
        self.dropped = 0
        self.failures = 0
        self._failing = False
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one export at a time (the thread, force_flush, shutdown)
        self._thread = threading.Thread(target=self._run, name="hsmlb-span-export", daemon=True)
        self._thread.start()

    def add(self, record: SpanRecord) -> None:
        """An ended span (on the event loop): append, or drop and count when the queue is full."""
        queue = self.queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            return
        queue.append(record)
        if len(queue) == self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._export_all()

    def _export_all(self) -> None:
        with self._lock:
            while self.queue:
                records = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
                self._export(records)

    def _export(self, records: Sequence[SpanRecord]) -> None:
        try:
            if self.send is not None:
                ok = self.send(self.encoder.request(records))
            else:
                resource, scope = self.resource, self.scope
                ok = self.exporter.export([readable(r, resource, scope) for r in records]) is SpanExportResult.SUCCESS
        except Exception:
            ok = False
        if ok:
            self.exported += len(records)
            if self._failing:
                self._failing = False
                log.info("span export to %s works again", self.where)
            return
        self.failures += 1
        self.dropped += len(records)
        if not self._failing:
            self._failing = True
            log.warning("span export to %s failed; spans are dropped and counted (hsmlb_spans_dropped_total), "
                        "not logged again until export works", self.where)

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """Export what is queued, once, within about `timeout_s` (never when the collector is failing)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        if self._failing or not self._lock.acquire(timeout=timeout_s):
            self.dropped += len(self.queue)
            self.queue.clear()
        else:
            try:
                records = list(self.queue)
                self.queue.clear()
                if records:
                    self._export(records)
            finally:
                self._lock.release()
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._export_all()
        return True

    def counters(self) -> dict[str, Any]:
        return {"exported": self.exported, "dropped": self.dropped, "failures": self.failures,
                "queued": len(self.queue)}
