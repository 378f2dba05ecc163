"""The whole error tree, in one place.

    HsmlbError
    ├── CallerError            the request is wrong; never counts against a node, never retried
    │   ├── InvalidArgument    bad hex, wrong length, unsupported mode, usage the key forbids
    │   ├── KeyNotFound        no node knows the alias
    │   └── PermissionDenied   the backend refused the caller's use of the key (APC AccessDeniedException)
    ├── Overloaded             every eligible node's queue is full (RESOURCE_EXHAUSTED); not a node fault
    │   └── Throttled          a node asked us to slow down (APC ThrottlingException, or our own quota
    │                          bucket for it is empty); tried on another node, never ejects this one
    ├── Unavailable            no eligible node is up (UNAVAILABLE)
    ├── DeadlineExceeded       the caller's deadline passed before the op ran
    └── NodeFault              the node is at fault (device error, lost session, dead worker, timeout);
                               feeds health and breakers; idempotent ops are retried on another node

Backends translate their own failures (PKCS#11 return codes, HTTP statuses) into this tree once,
at their boundary; everything above the backend speaks only these types.
Messages never carry PANs, PINs, PIN blocks or key material: every message goes through `redact`
when the error is made, since many carry a caller's value (a key alias) that may hold one.
Callers of the Operations service see `public_message` (no node or region names; api/status.py),
and an InvalidArgument carries its field violations (`field.path: rule`) for google.rpc.BadRequest.
"""

from __future__ import annotations

import re

import grpc

# 13+ digits (any script), maybe split by single spaces, dashes or dots: a PAN spelled any way.
_PAN_LIKE = re.compile(r"\d(?:[ .-]?\d){12,}")
# 16+ hex digits, or 12+ with a letter among them: a PIN block or key bytes, or a piece of one (12 digits
# alone are an AWS account). Not an ARN's key id (`key/...`), which names a key, not its bytes.
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])(?<!key/)(?:(?=\d*[A-Fa-f])[0-9A-Fa-f]{12,}|[0-9A-Fa-f]{16,})(?![0-9A-Za-z])")


def _mask_pan(match: re.Match[str]) -> str:
    digits = re.sub(r"[ .-]", "", match[0])
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]  # PCI DSS: first six and last four at most


def redact(text: str) -> str:
    """`text` with PAN-like digit runs masked to their first 6 / last 4 digits and long hex runs removed.

    Why here: errors are made in many places (router, backends, workers) and their messages reach
    callers, ListNodes and logs; one pass where every error is made covers them all."""
    return _HEX_RUN.sub("<redacted>", _PAN_LIKE.sub(_mask_pan, text))


# A message that names a node ("node node-a: ...") shows topology: callers get the class's `public` text
# instead, and the full message stays in logs, traces and the Admin service.
_NODE_NAMED = re.compile(r"^node [A-Za-z0-9_.-]+")
_REGION = re.compile(r"\bregion [a-z]{2}(?:-[a-z]+)+-\d+")
# "field.path: rule" (the proto's snake_case names, maybe with " (APC Member.Path)") or APC's "Member.Path: rule".
_PROTO_FIELD = re.compile(r"^([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)((?: \(APC [A-Za-z0-9_.]+\))?): (.+)$", re.S)
_APC_FIELD = re.compile(r"^([A-Z][A-Za-z0-9]*(?:\.[A-Z][A-Za-z0-9]*)*): (.+)$", re.S)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def proto_name(apc_path: str) -> str:
    """APC's member path in the proto's snake_case names (the proto mirrors APC's members one to one):
    CardVerificationValue2.CardExpiryDate -> card_verification_value2.card_expiry_date."""
    return ".".join(_CAMEL.sub("_", part).lower() for part in apc_path.split("."))


def field_text(apc_path: str, rule: str) -> str:
    """One field's error in the one convention: `proto_path (APC ApcPath): rule`."""
    return f"{proto_name(apc_path)} (APC {apc_path}): {rule}"


class HsmlbError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable = False
    counts_against_node = False
    public = "the operation failed"
    reason = ""  # refusals (Overloaded) say why in a few fixed words: the shed metric's label

    def __init__(self, message: str) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message

    @property
    def public_message(self) -> str:
        """What a caller of the Operations service is told: no node or region names (they stay in the logs).
        Overload says only that (sessions and queue sizes are topology); other faults keep their reason."""
        named = _NODE_NAMED.match(self.message)
        if named is None:
            return self.message
        if isinstance(self, Overloaded):
            return self.public
        rest = self.message[named.end():]
        reason = _REGION.sub("the region", rest[1:].strip() if rest.startswith(":") else f"the node{rest}".strip())
        return f"{self.public}: {reason}" if reason else self.public


class CallerError(HsmlbError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(CallerError):
    """`violations`: (field path, rule) pairs for google.rpc.BadRequest. Given, or read from a message
    in the convention `field.path: rule`; a message in APC's `Member.Path: rule` is rewritten into it."""

    status = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None) -> None:
        apc = _APC_FIELD.match(message)
        if apc is not None and violations is None:
            message = field_text(apc[1], apc[2])
        super().__init__(message)
        if violations is None:
            named = _PROTO_FIELD.match(self.message)
            violations = [(named[1], named[3])] if named else []
        self.violations = [(redact(path), redact(rule)) for path, rule in violations]


class KeyNotFound(CallerError):
    status = grpc.StatusCode.NOT_FOUND
    public = "no node holds the requested key"


class PermissionDenied(CallerError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(HsmlbError):
    """`reason`: why, in a few fixed words (a bounded metric label), stated where the refusal is raised."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    public = "every node that can serve this request is busy; retry later"
    reason = "other"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class Throttled(Overloaded):
    """Back-pressure from one node: another node may take the request; this one is not at fault."""

    public = "the backends' request quota is in use; retry later"
    reason = "backend_quota"


class Unavailable(HsmlbError):
    status = grpc.StatusCode.UNAVAILABLE
    public = "no node can serve this request now"


class DeadlineExceeded(HsmlbError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED
    public = "the deadline passed before the operation completed"


class NodeFault(HsmlbError):
    status = grpc.StatusCode.UNAVAILABLE
    public = "the node serving this request failed"
    retryable = True
    counts_against_node = True


# Wire codes between a backend worker and the daemon (see backends/pkcs11_worker.py).
WIRE_CODES: dict[str, type[HsmlbError]] = {
    "invalid": InvalidArgument,
    "not_found": KeyNotFound,
    "deadline": DeadlineExceeded,
    "node": NodeFault,
}


def from_wire(code: str, message: str) -> HsmlbError:
    return WIRE_CODES.get(code, NodeFault)(message)
