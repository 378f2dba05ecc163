"""OpenTelemetry spans for operations, created only when sampled, by our own thin hook on the seam.

Not opentelemetry-instrumentation-grpc: it makes one span per RPC (a stream's whole life is one
span) and pays ~100 us per RPC before any sampling decision. Here the decision comes first and is
cheap (a slice and an int of the trace id, or a countdown to the next sampled root operation); an
unsampled operation costs a truth test and that decision, nothing else. A sampled one gets:

- a SERVER span named by its method (`hsmlb.v1.Operations/EncryptData`), in the caller's trace
  when it sent a W3C `traceparent` (gRPC metadata, or the batched item's own), with the RPC
  semantic conventions and hsmlb's attributes (operation, key alias, node, attempts, outcome);
- a child span per backend attempt (node, kind, retry or not, node fault or caller fault), from
  the hook the router calls when an op carries one (`Operation.trace`).

Both are `SpanRecord`s (export.py), not SDK spans: the event loop pays ids, two clock reads and
one attribute dict per span; the export thread builds the SDK's span objects and encodes them.

Never a request's data: only the op's kind and key aliases, node names, counts and status codes.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind

from hsmlb.api.filters import Call, FilterBase, Item
from hsmlb.errors import DeadlineExceeded, HsmlbError, NodeFault, Overloaded, Throttled
from hsmlb.ops import Operation
from hsmlb.router import Router
from hsmlb.telemetry.config import TracingConfig
from hsmlb.telemetry.export import BoundedSpanProcessor, SpanRecord, make_exporter, otlp_endpoint
from hsmlb.telemetry.logs import current_trace_id

log = logging.getLogger("hsmlb.telemetry")
SERVICE = "hsmlb.v1.Operations"
UNKNOWN_ALIAS = "(not a known alias)"
_METHODS: dict[str, str] = {}  # proto field -> RPC method name ("encrypt_data" -> "EncryptData")
_LOW64 = (1 << 64) - 1
SERVER, CLIENT = SpanKind.SERVER, SpanKind.CLIENT


def method_name(field: str) -> str:
    name = _METHODS.get(field)
    if name is None:
        name = _METHODS[field] = "".join(p.capitalize() for p in field.split("_")) if field else "Unknown"
    return name


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a W3C traceparent, or None when it is not one."""
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-" or value[:2] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(value[3:35], 16), int(value[36:52], 16), int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(flags & 1)


class Sampler:
    """The local decision: trace-id ratio by default; the caller's flag only under `parentbased_*`."""

    def __init__(self, name: str, ratio: float, rng: random.Random | None = None) -> None:
        self.parent_based = name.startswith("parentbased_")
        root = name.removeprefix("parentbased_")
        self.ratio = 1.0 if root == "always_on" else 0.0 if root == "always_off" else ratio
        self.bound = round(self.ratio * (_LOW64 + 1))  # as the SDK's TraceIdRatioBased
        self._rng = rng or random.Random()

    @property
    def never(self) -> bool:
        return self.ratio <= 0 and not self.parent_based

    def sampled(self, parent: tuple[int, int, bool] | None) -> bool:
        if parent is not None:
            if self.parent_based:
                return parent[2]
            return (parent[0] & _LOW64) < self.bound
        return self.ratio >= 1 or (self.ratio > 0 and self._rng.getrandbits(64) < self.bound)

    def gap(self) -> int:
        """How many root operations to leave unsampled before the next sampled one.

        Drawing the gaps of a Bernoulli(ratio) sequence (geometric) samples the same share, with the
        same independence, as one draw per operation; a stream then pays a countdown per operation."""
        if self.ratio >= 1:
            return 0
        if self.ratio <= 0:
            return sys.maxsize
        return int(math.log(1.0 - self._rng.random()) / math.log1p(-self.ratio))


def _peer_address(peer: str) -> str:
    """gRPC's peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/x") without port or scheme."""
    _, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if rest.count(":") >= 1 and not peer.startswith("unix:") else rest
    return host.strip("[]")


class OpTrace:
    """A sampled operation's server span (a SpanRecord); the router calls `attempt` for each node it tries."""

    __slots__ = ("ids", "record", "sink")

    def __init__(self, record: SpanRecord, sink: Any, ids: random.Random) -> None:
        self.record = record
        self.sink = sink  # the processor's `add`: an ended record joins the export queue
        self.ids = ids

    def attempt(self, op: Any, member: Any, future: Any) -> None:
        """A backend attempt started on `member`; its span ends with the attempt's future."""
        parent = self.record
        child = SpanRecord("hsmlb.attempt", CLIENT, parent.trace_id, self.ids.getrandbits(64) or 1,
                           parent.span_id, False, time.time_ns())
        child.attributes = {"hsmlb.node": member.name, "hsmlb.node.kind": member.pool.backend.kind,
                            "hsmlb.attempt": op.attempts, "hsmlb.retry": op.attempts > 1}
        future.add_done_callback(partial(_attempt_done, child, self.sink))

    def shadow(self, side: str, member: Any, future: Any) -> None:
        """A shadow call (off the response path) to `member`: a span of its own under the operation's."""
        parent = self.record
        child = SpanRecord("hsmlb.shadow", CLIENT, parent.trace_id, self.ids.getrandbits(64) or 1,
                           parent.span_id, False, time.time_ns())
        child.attributes = {"hsmlb.node": member.name, "hsmlb.node.kind": member.pool.backend.kind,
                            "hsmlb.shadow.side": side}
        future.add_done_callback(partial(_attempt_done, child, self.sink))


def _attempt_done(record: SpanRecord, sink: Any, future: Any) -> None:
    if future.cancelled():
        outcome, fault = "cancelled", ""
    else:
        exc = future.exception()
        if exc is None:
            outcome, fault = "ok", ""
        elif isinstance(exc, Throttled):
            outcome, fault = "throttled", "node"
        elif isinstance(exc, Overloaded):
            outcome, fault = "overloaded", "node"
        elif isinstance(exc, DeadlineExceeded):
            outcome, fault = "deadline_exceeded", "node"
        elif isinstance(exc, NodeFault) or (isinstance(exc, HsmlbError) and exc.counts_against_node):
            outcome, fault = "node_fault", "node"
        elif isinstance(exc, HsmlbError):
            outcome, fault = "caller_fault", "caller"
        else:
            outcome, fault = "error", "node"
        if exc is not None:
            record.error = type(exc).__name__
    attributes = record.attributes
    attributes["hsmlb.outcome"] = outcome
    if fault:
        attributes["hsmlb.fault"] = fault
    record.end_ns = time.time_ns()
    sink(record)


class TracingFilter(FilterBase):
    """Decides per operation; only a sampled one gets a span record (and the op its router hook).

    A sampled operation costs the event loop two small records (server span, attempt span) and one
    attribute dict each; the SDK's span objects and the OTLP encoding are built on the export thread."""

    def __init__(self, sink: Any, sampler: Sampler, server_address: str, router: Router | None,
                 ids: random.Random | None = None) -> None:
        self.sink = sink
        self.sampler = sampler
        self.server_address = server_address
        self.router = router
        self.ids = ids or random.Random()
        self._skip = sampler.gap()  # root operations left unsampled before the next sampled one
        self._open = 0  # sampled operations not yet ended: while 0, `done` has nothing to look for

    def _alias(self, alias: str | None) -> str:
        """The key alias, when a node holds it: the caller's string is data until it names a known key
        (a PAN pasted in the alias field must not reach a span)."""
        if not alias:
            return ""
        return alias if self.router is None or self.router.cluster.key(alias) is not None else UNKNOWN_ALIAS

    def admit(self, call: Call, item: Item) -> None:
        op = item.op
        if op is None:
            return
        traceparent = item.traceparent
        if traceparent:
            parent = parse_traceparent(traceparent)
            if not self.sampler.sampled(parent):
                return
        elif self._skip:  # Sampler.sampled(None) as a countdown: the path of 99% of operations
            self._skip -= 1
            return
        else:
            self._skip = self.sampler.gap()
            parent = None
        ids = self.ids
        method = method_name(item.field)
        started_ns = time.time_ns() - int((time.monotonic() - item.started) * 1e9)
        if parent is not None:
            record = SpanRecord(f"{SERVICE}/{method}", SERVER, parent[0], ids.getrandbits(64) or 1, parent[1],
                                parent[2], started_ns)
        else:
            record = SpanRecord(f"{SERVICE}/{method}", SERVER, ids.getrandbits(128) or 1, ids.getrandbits(64) or 1,
                                0, False, started_ns)
        peer = call.state.get("peer_address")
        if peer is None:  # once per RPC, not per sampled operation of a stream
            peer = call.state["peer_address"] = _peer_address(call.peer)
        record.attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method,
                             "server.address": self.server_address, "network.peer.address": peer,
                             "hsmlb.operation": op.kind.value, "hsmlb.rpc": call.method.rsplit("/", 1)[-1],
                             "hsmlb.key_alias": self._alias(op.key_alias)}
        if item.request_id:
            record.attributes["hsmlb.request_id"] = item.request_id
        op.trace = OpTrace(record, self.sink, ids)
        self._open += 1
        if not item.request_id:  # a unary call runs in its own task: its log lines may carry the trace id
            current_trace_id.set(f"{record.trace_id:032x}")

    def done(self, call: Call, items: Sequence[Item]) -> None:
        if not self._open:  # most batches at 1%: no sampled operation among them
            return
        for item in items:
            op = item.op
            if op is not None and op.trace is not None:  # the unsampled 99%: two reads per operation
                try:
                    self._end(op, item)
                except Exception:  # one span's bug must not leave the batch's other spans open
                    log.exception("ending a span failed")

    def _end(self, op: Operation, item: Item) -> None:
        hook = op.trace
        op.trace = None
        self._open -= 1
        record = hook.record
        code = item.code
        attributes = record.attributes
        attributes["rpc.grpc.status_code"] = code.value[0]
        attributes["hsmlb.node"] = op.node
        attributes["hsmlb.attempts"] = op.attempts
        attributes["hsmlb.outcome"] = code.name
        if code is not grpc.StatusCode.OK:
            record.error = code.name
        record.end_ns = time.time_ns() - int((time.monotonic() - item.ended) * 1e9)  # when it ended, not told
        self.sink(record)
        if not item.request_id:
            current_trace_id.set("")


class Tracing:
    """The tracer provider, its exporter behind a bounded queue, and the filter."""

    def __init__(self, config: TracingConfig, server_address: str, router: Router | None = None) -> None:
        exporter = make_exporter(config)
        assert exporter is not None
        self.config = config
        where = "the console" if config.exporter == "console" else otlp_endpoint(config)
        self.processor = BoundedSpanProcessor(exporter, where, config.max_queue_size, config.export_interval_s,
                                              config.max_export_batch_size,
                                              Resource.create({"service.name": config.service_name}))
        self.sampler = Sampler(config.sampler, config.sampler_arg)
        self.filter = TracingFilter(self.processor.add, self.sampler, server_address, router)

    def collector(self) -> Any:
        from hsmlb.telemetry.metrics import SpanCollector

        return SpanCollector(self.processor)

    def shutdown(self) -> None:
        self.processor.shutdown()


def build_tracing(config: TracingConfig, router: Router, server_address: str = "127.0.0.1") -> Tracing | None:
    """None when tracing is off: disabled, no exporter, or a sampler that never samples."""
    if not config.enabled or config.exporter == "none" or Sampler(config.sampler, config.sampler_arg).never:
        return None
    try:
        return Tracing(config, server_address, router)
    except ImportError as exc:  # an install without the OTLP exporter packages: serve, untraced, and say so once
        log.error("tracing is off: the %s exporter cannot be loaded (%s); install hsmlb's dependencies",
                  config.exporter, exc.name)
        return None
