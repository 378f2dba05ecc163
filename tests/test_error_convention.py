"""Errors that help (issue 10): one field-path convention for core and payment operations, google.rpc.BadRequest
details on unary calls and Stream items alike, and no node or region names in what callers are told."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import status_pb2

from hsmlb.api.status import DETAILS_KEY, caller_error, violations_of
from hsmlb.errors import DeadlineExceeded, InvalidArgument, KeyNotFound, NodeFault, Overloaded, Throttled, Unavailable
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import DaemonProcess

PAN = "4111111111111111"


def _cvv(pan: str, expiry: str) -> pb.GenerateCardValidationDataRequest:
    return pb.GenerateCardValidationDataRequest(
        key_identifier="alias/cvk-1", primary_account_number=pan,
        generation_attributes=pb.CardGenerationAttributes(
            card_verification_value2=pb.CardVerificationValue2(card_expiry_date=expiry)))


def _unary(ops: pb_grpc.OperationsStub, method: str, request: object) -> tuple[str, list[tuple[str, str]], bytes]:
    with pytest.raises(grpc.RpcError) as err:
        getattr(ops, method)(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    trailers = dict(err.value.trailing_metadata() or ())
    return err.value.details() or "", violations_of(trailers[DETAILS_KEY]), trailers[DETAILS_KEY]


def test_payment_errors_use_proto_paths_with_apc_names(ops: pb_grpc.OperationsStub) -> None:
    details, violations, raw = _unary(ops, "GenerateCardValidationData", _cvv(PAN[:8], "12"))
    assert details.startswith("primary_account_number (APC PrimaryAccountNumber): must "), details
    assert "generation_attributes.card_verification_value2.card_expiry_date " \
           "(APC GenerationAttributes.CardVerificationValue2.CardExpiryDate): must" in details
    assert [field for field, _ in violations] == [
        "primary_account_number", "generation_attributes.card_verification_value2.card_expiry_date"]
    assert "Value at" not in details and "41111111" not in details and PAN[:8] not in str(violations)
    status = status_pb2.Status.FromString(raw)  # the standard google.rpc.Status a client library decodes
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and status.message == details


def test_stream_items_carry_the_same_details_as_unary(ops: pb_grpc.OperationsStub) -> None:
    cases = {1: ("generate_card_validation_data", _cvv(PAN[:8], "12"), "GenerateCardValidationData"),
             2: ("encrypt_data", pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text="0G"),
                 "EncryptData")}
    requests = [pb.StreamRequest(request_id=i, **{field: request}) for i, (field, request, _) in cases.items()]
    replies = {r.request_id: r for r in ops.Stream(iter(requests), timeout=10)}
    for request_id, (_, request, method) in cases.items():
        status = replies[request_id].status
        details, violations, _ = _unary(ops, method, request)
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert (status.message, violations_of(status)) == (details, violations)


def test_batch_items_name_their_fields(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        reply = pb_grpc.OperationsStub(channel).Batch(pb.BatchRequest(items=[
            pb.StreamRequest(request_id=1, generate_random=pb.GenerateRandomRequest(number_of_bytes=0)),
            pb.StreamRequest(request_id=2)]), timeout=10)
    by_id = {item.request_id: item.status for item in reply.items}
    assert violations_of(by_id[1]) == [("number_of_bytes", "must be 1-1024")]
    assert violations_of(by_id[2])[0][0] == "operation"


# ------------------------------------------------------------------ what callers are told, without a daemon
@pytest.mark.parametrize("error", [
    Overloaded("node node-a: all 4 sessions busy and 1024 queued"),
    Throttled("node apc-east: us-east-1 request quota (500/s) in use"),
    NodeFault("node apc-east: region us-east-1 rejected our credentials (UnrecognizedClientException)"),
    NodeFault("node node-b is down"),
    Unavailable("node node-c is shutting down"),
    DeadlineExceeded("node apc-west: no answer before the deadline"),
    KeyNotFound("node apc-west: region us-west-2 has no key alias/x"),
], ids=lambda e: type(e).__name__)
def test_no_node_or_region_names_reach_callers(error: Exception) -> None:
    message, violations = caller_error(error)  # type: ignore[arg-type]
    for name in ("node-a", "node-b", "node-c", "apc-east", "apc-west", "us-east-1", "us-west-2", "1024 queued"):
        assert name not in message, message
    assert message and not violations


def test_every_invalid_argument_names_a_field() -> None:
    """Token errors cannot know the proto; the RPC they came from names the field."""
    for text, operation, field in (("the data length is not valid for this key and mechanism", "encrypt_data",
                                    "plain_text"),
                                   ("the cipher text is not valid for this key and mechanism", "decrypt_data",
                                    "cipher_text"),
                                   ("the key's type does not match the requested algorithm", "sign",
                                    "key_identifier"),
                                   ("the algorithm parameters (IV, lengths) are not valid", "encrypt_data",
                                    "encryption_attributes"),
                                   ("the request's arguments are not valid", "sign", "(request)")):
        message, violations = caller_error(InvalidArgument(text), operation)
        assert message == f"{field}: {text}" and violations == [(field, text)]
    apc = InvalidArgument("IncomingTranslationAttributes.IsoFormat0.PrimaryAccountNumber: must be 12 to 19 digits")
    assert apc.message.startswith("incoming_translation_attributes.iso_format0.primary_account_number "
                                  "(APC IncomingTranslationAttributes.IsoFormat0.PrimaryAccountNumber): ")
