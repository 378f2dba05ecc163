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


class HsmlbError(Exception):
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable = False
    counts_against_node = False

    def __init__(self, message: str) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message


class CallerError(HsmlbError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(CallerError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class KeyNotFound(CallerError):
    status = grpc.StatusCode.NOT_FOUND


class PermissionDenied(CallerError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(HsmlbError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Throttled(Overloaded):
    """Back-pressure from one node: another node may take the request; this one is not at fault."""


class Unavailable(HsmlbError):
    status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(HsmlbError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class NodeFault(HsmlbError):
    status = grpc.StatusCode.UNAVAILABLE
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
