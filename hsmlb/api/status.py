"""What a caller is told when an operation fails: one message convention and structured details.

Why one place: unary calls, Stream items and Batch items must say the same thing for the same fault.
INVALID_ARGUMENT always names its field (`field.path: rule`, proto names) and carries
google.rpc.BadRequest field violations: in `grpc-status-details-bin` for a unary call, in the item's
`Status.details` for Stream/StreamBatch/Batch (hsmlb.v1.Status has google.rpc.Status's shape).
Messages that name a node are replaced by their class's generic text (see errors.HsmlbError.public_message);
the full message goes to the DEBUG log and to the filters (audit, telemetry).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from hsmlb.errors import HsmlbError, InvalidArgument
from hsmlb.v1 import hsmlb_pb2 as pb

log = logging.getLogger("hsmlb.api")
DETAILS_KEY = "grpc-status-details-bin"
WHOLE_REQUEST = "(request)"

# For token errors that cannot know the proto (PKCS#11 return codes): the RPC's data and attribute fields.
_DATA = {"encrypt_data": "plain_text", "decrypt_data": "cipher_text", "generate_mac": "message_data",
         "verify_mac": "message_data", "sign": "message", "verify": "signature", "re_encrypt_data": "cipher_text"}
_ATTRIBUTES = {"encrypt_data": "encryption_attributes", "decrypt_data": "decryption_attributes",
               "generate_mac": "generation_attributes", "verify_mac": "verification_attributes",
               "sign": "signing_algorithm", "verify": "signing_algorithm"}


def _guess_field(operation: str, message: str) -> str:
    text = message.lower()
    if "parameters" in text or ("algorithm" in text and "key" not in text):
        return _ATTRIBUTES.get(operation, WHOLE_REQUEST)
    if "cipher text" in text:
        return "cipher_text"
    if "data" in text or "signature" in text:
        return _DATA.get(operation, WHOLE_REQUEST)
    if "key" in text:
        return "key_identifier"
    return WHOLE_REQUEST


def caller_error(exc: HsmlbError, operation: str = "") -> tuple[str, list[tuple[str, str]]]:
    """(message, field violations) for the caller; every INVALID_ARGUMENT names a field."""
    message = exc.public_message
    if message is not exc.message:
        log.debug("%s answered %s: %s", operation or "operation", exc.status.name, exc.message)
    if not isinstance(exc, InvalidArgument):
        return message, []
    if exc.violations:
        return message, exc.violations
    if message.startswith(f"{WHOLE_REQUEST}: "):  # the whole request is wrong (it does not decode)
        return message, [(WHOLE_REQUEST, message[len(WHOLE_REQUEST) + 2:])]
    field = _guess_field(operation, message)
    return f"{field}: {message}", [(field, message)]


def _bad_request(violations: list[tuple[str, str]]) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=field, description=rule) for field, rule in violations]))
    return detail


def trailers(code: grpc.StatusCode, message: str, violations: list[tuple[str, str]]) -> tuple[tuple[str, bytes], ...]:
    """`grpc-status-details-bin` for a unary answer; empty when there is nothing structured to add."""
    if not violations:
        return ()
    status = status_pb2.Status(code=code.value[0], message=message, details=[_bad_request(violations)])
    return ((DETAILS_KEY, status.SerializeToString()),)


def drop_if_late(context: grpc.aio.ServicerContext) -> None:
    """Raise CancelledError instead of answering a unary call whose deadline has passed.

    Why: grpc core cancels such a call on its own deadline timer, and an answer or status sent now races
    that cancel. When core fails the send before grpc.aio has seen the cancel, grpc.aio logs
    `ExecuteBatchError raised in core by servicer method` at ERROR (aio/server.pyx.pxi, _handle_exceptions
    checks rpc_state.client_closed, which only its close-watcher task sets). A handler that raises
    CancelledError ends as a cancelled RPC there (DEBUG, nothing sent), and core's timer answers the caller
    DEADLINE_EXCEEDED, as it would have anyway. One time_remaining() call, well under a microsecond."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise asyncio.CancelledError("the deadline passed: grpc core answers the call")


async def refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str,
                 trailing_metadata: tuple[tuple[str, bytes], ...] = ()) -> None:
    """context.abort, unless the call's deadline has passed (drop_if_late)."""
    drop_if_late(context)
    await context.abort(code, message, trailing_metadata=trailing_metadata)


async def abort(context: grpc.aio.ServicerContext, exc: HsmlbError, operation: str = "") -> None:
    message, violations = caller_error(exc, operation)
    await refuse(context, exc.status, message, trailers(exc.status, message, violations))


def item_status(request_id: int, code: grpc.StatusCode, message: str,
                violations: list[tuple[str, str]] | None = None) -> pb.StreamResponse:
    status = pb.Status(code=code.value[0], message=message)
    if violations:
        status.details.append(_bad_request(violations))
    return pb.StreamResponse(request_id=request_id, status=status)


def violations_of(details: bytes | pb.Status) -> list[tuple[str, str]]:
    """(field, description) pairs from a unary call's `grpc-status-details-bin` value or a stream item's Status."""
    status = status_pb2.Status.FromString(details) if isinstance(details, bytes) else details
    found: list[tuple[str, str]] = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found
