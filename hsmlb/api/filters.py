"""The per-operation seam: cross-cutting concerns beside the request path, one filter each.

Authorization, rate limits, audit, telemetry (and whatever comes next) are not written into the
servicers. Each is a `Filter` in its own module, and the servicers call the chain at three points:

    open(call)              once per RPC: a unary call, a Stream, a StreamBatch, a Batch. What a
                            batch can pay once (the caller's identity, its policy) is paid here.
    admit(call, item)       once per operation, after decoding and before routing. Raise an
                            HsmlbError to refuse this one operation (its neighbours go on).
    done(call, items)       once per operation, whatever happened to it: decoded or not, refused,
                            failed, answered, timed out, cancelled; `item.code` is its gRPC status.
                            Batch-aware: a stream tells the operations answered since its last
                            response message in one call (a unary call tells its one), so a
                            filter pays its call, its lookups and its hand-off once per batch.
    admin(call, action)     once per Admin action (drills, fault injection, route changes).

Order is stated where the chain is built (server.py): admit runs first to last (auth before audit
before telemetry), done runs last to first, like a Finagle filter stack or tower layers. A filter
must not raise from `done`; the chain logs and swallows such a bug rather than lose an answer.

Cost: with no filters configured the servicers skip the chain entirely (`if chain:`), so the hot
path pays one truth test per operation. With filters, an operation pays one Item (~0.17 us, and its
outcome's stores when it ends), the admit calls (none when no filter admits, and a single admitting
filter is called directly), and its share of one done call per response message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from hsmlb.ops import KeyInfo, Operation

log = logging.getLogger("hsmlb.filters")
ANONYMOUS = "anonymous"
OK = grpc.StatusCode.OK


@dataclass(slots=True)
class Call:
    """One RPC as the filters see it. `identity` is set by the authentication filter (mTLS)."""

    method: str  # the RPC's full method name: "/hsmlb.v1.Operations/EncryptData"
    peer: str
    context: grpc.aio.ServicerContext | None = None
    identity: str = ANONYMOUS
    traceparent: str = ""  # the RPC's W3C trace context from metadata, where the caller sent one
    state: dict[str, Any] = field(default_factory=dict)  # per-filter, per-call scratch (policy, span)

    @classmethod
    def from_context(cls, method: str, context: grpc.aio.ServicerContext | None) -> Call:
        if context is None:
            return cls(method, "")
        traceparent = ""
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                traceparent = value if isinstance(value, str) else ""
                break
        return cls(method, context.peer() or "", context, traceparent=traceparent)


class Item:
    """One operation through the seam: what it was and, once ended, how it ended.

    Never holds request data beyond the decoded Operation, which filters must treat as sensitive:
    only `op.kind`, `op.key_alias`, `op.other_keys`, `op.node` and `op.attempts` may leave the process.

    A plain slotted class, one per operation, so what it stores is what it costs: only what is known
    when it is made (~0.17 us), and the outcome when it ends (`end`, or the stream's inlined success).
    Storing all ten up front cost ~0.42 us; a dataclass with a default factory ~0.95 us. The outcome
    fields therefore exist from `end` on: `done` only ever sees ended items; `admit` must not read them.
    StreamCall.dispatch makes its items with `__init__`'s stores inlined (the call itself is half the
    cost): a field added here must be added there (test_unit_telemetry checks both make the same fields)."""

    __slots__ = ("code", "ended", "field", "key", "message", "op", "reason", "request_id", "started",
                 "traceparent")
    code: grpc.StatusCode  # its gRPC status
    ended: float  # time.monotonic() when it ended (not when the filters were told)
    message: str  # the status message (already redacted) when code is not OK; "" when OK
    reason: str  # RESOURCE_EXHAUSTED: the refusal's fixed reason (errors.Overloaded.reason); else ""
    key: KeyInfo | None  # the key the response reports, on success

    def __init__(self, field: str, request_id: int = 0, op: Operation | None = None, traceparent: str = "",
                 started: float = 0.0) -> None:
        self.field = field  # the proto's operation name: "encrypt_data", "translate_pin_data", ...
        self.request_id = request_id  # the Stream/batch item's id; 0 for unary calls
        self.op = op  # None when the request did not decode
        self.traceparent = traceparent  # the item's own trace context (batched streams), else the call's
        self.started = started or time.monotonic()  # a batch's items share their message's arrival

    def end(self, code: grpc.StatusCode, message: str = "", key: KeyInfo | None = None, reason: str = "") -> Item:
        """How it ended, stamped now; returns itself so a caller can end and tell in one expression."""
        self.ended = time.monotonic()
        self.code = code
        self.message = message
        self.reason = reason
        self.key = key
        return self


class Filter(Protocol):
    """One concern beside the path. Every method is optional in spirit: FilterBase gives no-ops."""

    def open(self, call: Call) -> None: ...
    def admit(self, call: Call, item: Item) -> None: ...
    def done(self, call: Call, items: Sequence[Item]) -> None: ...
    def admin(self, call: Call, action: str, target: str, code: grpc.StatusCode, detail: str) -> None: ...


class FilterBase:
    """No-op defaults, so a filter implements only the points it cares about."""

    def open(self, call: Call) -> None:
        return None

    def admit(self, call: Call, item: Item) -> None:
        return None

    def done(self, call: Call, items: Sequence[Item]) -> None:
        return None

    def admin(self, call: Call, action: str, target: str, code: grpc.StatusCode, detail: str) -> None:
        return None


def _overrides(f: Filter, name: str) -> bool:
    """False when `f`'s method is FilterBase's no-op."""
    return getattr(type(f), name, None) is not getattr(FilterBase, name)


class FilterChain:
    """The filters in their stated order. Falsy when empty: servicers then skip it altogether."""

    def __init__(self, filters: list[Filter] | tuple[Filter, ...] = ()) -> None:
        self.filters: tuple[Filter, ...] = tuple(filters)
        self._reversed = tuple(reversed(self.filters))
        # per operation, only the filters that do something there (a no-op call is ~0.1-0.2 us, per filter, per op)
        self._admit = tuple(f.admit for f in self.filters if _overrides(f, "admit"))
        self._done = tuple(f.done for f in self._reversed if _overrides(f, "done"))
        self.admits = bool(self._admit)  # False: a servicer may skip `admit` altogether
        if len(self._admit) == 1:  # the common case (tracing alone): one call per operation, not two
            self.admit = self._admit[0]  # type: ignore[method-assign]

    def __bool__(self) -> bool:
        return bool(self.filters)

    def open(self, call: Call) -> None:
        """Raises an HsmlbError to refuse the whole RPC (an unauthenticated caller)."""
        for f in self.filters:
            f.open(call)

    def admit(self, call: Call, item: Item) -> None:
        for admit in self._admit:
            admit(call, item)

    def done(self, call: Call, items: Sequence[Item]) -> None:
        """Tell every filter, last to first, of operations that have ended (`Item.end`).

        A filter that raises loses its own view of the rest of this batch, never the caller's answer."""
        for done in self._done:
            try:
                done(call, items)
            except Exception:  # a filter bug must not lose the caller's answer
                log.exception("filter %s failed in done()", type(done.__self__).__name__)  # type: ignore[attr-defined]

    def admin(self, call: Call, action: str, target: str, code: grpc.StatusCode, detail: str = "") -> None:
        for f in self._reversed:
            try:
                f.admin(call, action, target, code, detail)
            except Exception:
                log.exception("filter %s failed in admin()", type(f).__name__)

    def close(self) -> None:
        """The daemon stops: filters that hold resources (the audit writer) finish, last to first. Blocking."""
        for f in self._reversed:
            close = getattr(f, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("filter %s failed in close()", type(f).__name__)
