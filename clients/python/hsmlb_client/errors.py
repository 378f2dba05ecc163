"""Typed errors: every failed operation raises an `HsmlbError` carrying the gRPC status code and message.

Why one subclass per common status: callers branch on what to do next (fix the request, try another key,
retry later, slow down) and `except hsmlb_client.Unavailable` reads better than comparing codes. The
daemon's message names the offending field, never its value; the client adds nothing sensitive either.

    HsmlbError (.code: grpc.StatusCode, .message: str)
    ├── InvalidArgument      bad hex, wrong length, unsupported mode; the field is named
    ├── NotFound             no node knows the key alias
    ├── PermissionDenied     the caller may not use the key (or the operation)
    ├── Unauthenticated      no or a bad client identity (TLS client certificate)
    ├── ResourceExhausted    overload: the daemon's queues, a rate limit, or this client's own in-flight bound
    ├── Unavailable          no node can serve now, or the stream carrying the call broke (outcome unknown)
    ├── DeadlineExceeded     the call's timeout passed
    ├── Cancelled            the call was cancelled (the client closed)
    └── InternalError        anything else the daemon could not classify
"""

from __future__ import annotations

import grpc

_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class HsmlbError(Exception):
    """An operation failed; `code` is its gRPC status, `message` the daemon's (or the client's) reason."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __reduce__(self) -> tuple[type, tuple[str, grpc.StatusCode]]:
        return type(self), (self.message, self.code)


class InvalidArgument(HsmlbError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(HsmlbError):
    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(HsmlbError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(HsmlbError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(HsmlbError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(HsmlbError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(HsmlbError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(HsmlbError):
    code = grpc.StatusCode.CANCELLED


class InternalError(HsmlbError):
    code = grpc.StatusCode.INTERNAL


_CLASSES: dict[grpc.StatusCode, type[HsmlbError]] = {cls.code: cls for cls in (
    InvalidArgument, NotFound, PermissionDenied, Unauthenticated, ResourceExhausted, Unavailable, DeadlineExceeded,
    Cancelled, InternalError)}


def error_for(code: grpc.StatusCode | int, message: str) -> HsmlbError:
    """The typed error for a status (a grpc.StatusCode or its number, as in a batch item's Status)."""
    status = code if isinstance(code, grpc.StatusCode) else _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    cls = _CLASSES.get(status, HsmlbError)
    return cls(message, status)


def from_rpc_error(exc: grpc.RpcError, context: str = "") -> HsmlbError:
    """An RpcError (sync or aio) as a typed error; `context` says what the RPC was carrying."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    message = f"{context}: {details}" if context else (details or "")
    return error_for(code or grpc.StatusCode.UNKNOWN, message)
