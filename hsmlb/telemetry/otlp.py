"""OTLP trace requests (ExportTraceServiceRequest, protobuf wire format) encoded straight from span records.

Why not the SDK's encoder: it builds a protobuf object per attribute, per value and per span, in Python,
and hashes the resource (a JSON dump) per span: ~60-100 us per span on this machine, on the export thread
but under the same GIL as the event loop, so at 1% sampling it alone cost more than the metrics. Here a
span is a few byte strings joined: an attribute (key, value) pair is encoded once and kept (the values
are few: methods, aliases, node names, codes); the resource and scope once per process. The OpenTelemetry
project's exporters still send the bytes (export.py); their own encoder stays the fallback.

Wire format: opentelemetry-proto's trace/v1 and collector/trace/v1 (field numbers below). The tests decode
what this writes with opentelemetry-proto's generated classes, as a collector would.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.trace import SpanKind

_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags: the parent's is_remote is known / is true
_CACHE_MAX = 8192  # encoded attributes kept; request ids are many, so the cache is cleared when full
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement: ten bytes
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """AnyValue: string_value 1, bool_value 2, int_value 3, double_value 4; anything else as its str."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _double(value)
    return field(1, str(value).encode())


def key_value(key: str, value: Any) -> bytes:
    """KeyValue {key 1, value 2}."""
    return field(1, key.encode()) + field(2, any_value(value))


class Encoder:
    """ExportTraceServiceRequest bytes for a batch of SpanRecords of one resource and one scope."""

    def __init__(self, resource_attributes: dict[str, Any], scope_name: str, scope_version: str = "") -> None:
        resource = b"".join(field(1, key_value(k, v)) for k, v in resource_attributes.items())
        self._resource = field(1, resource)  # ResourceSpans.resource
        scope = field(1, scope_name.encode()) + (field(2, scope_version.encode()) if scope_version else b"")
        self._scope = field(1, scope)  # ScopeSpans.scope
        self._attributes: dict[tuple[str, type, Any], bytes] = {}  # (key, type, value) -> Span.attributes entry
        self._names: dict[str, bytes] = {}

    def _attribute(self, key: str, value: Any) -> bytes:
        cache = self._attributes
        cached = cache.get((key, type(value), value))
        if cached is None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cached = cache[(key, type(value), value)] = field(9, key_value(key, value))
        return cached

    def span(self, record: Any) -> bytes:
        """One Span message's fields (trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7, end 8,
        attributes 9, status 15, flags 16)."""
        name = self._names.get(record.name)
        if name is None:
            name = self._names[record.name] = field(5, record.name.encode())
        parts = [b"\x0a\x10", record.trace_id.to_bytes(16, "big"), b"\x12\x08", record.span_id.to_bytes(8, "big")]
        flags = _HAS_IS_REMOTE
        if record.parent_id:
            parts += (b"\x22\x08", record.parent_id.to_bytes(8, "big"))
            if record.kind is SpanKind.SERVER:  # a server span's parent is the caller's: remote
                flags |= _IS_REMOTE
        parts += (name, b"\x30", varint(_KIND[record.kind]), b"\x39", _fixed64(record.start_ns),
                  b"\x41", _fixed64(record.end_ns))
        attribute = self._attribute
        parts += [attribute(k, v) for k, v in record.attributes.items()]
        if record.error:
            parts.append(field(15, field(2, record.error.encode()) + b"\x18\x02"))  # STATUS_CODE_ERROR
        parts += (b"\x85\x01", _fixed32(flags))
        return b"".join(parts)

    def request(self, records: Iterable[Any]) -> bytes:
        """ExportTraceServiceRequest {resource_spans 1: ResourceSpans {resource 1, scope_spans 2: ScopeSpans
        {scope 1, spans 2}}}."""
        spans = b"".join(field(2, self.span(r)) for r in records)
        return field(1, self._resource + field(2, self._scope + spans))


def encode(records: Sequence[Any], resource_attributes: dict[str, Any], scope: str = "hsmlb") -> bytes:
    """One-off encoding (tests); the processor keeps an Encoder for its caches."""
    return Encoder(resource_attributes, scope).request(records)
