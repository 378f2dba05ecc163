"""The operation table and the one method per operation that both clients share.

Why a shared mixin: the async and the sync client differ only in how a call waits (`await` or a
blocking wait), so each method here just names its operation and hands the request to the client's
`_call`, which returns an awaitable (AsyncClient) or the result (Client). The request is the proto's
own message, built from keyword arguments in the proto's snake_case (nested messages as dicts, enums
as names or numbers) or passed ready-made; the result is the proto's response message.
"""

from __future__ import annotations

from typing import Any

from hsmlb_client.errors import InvalidArgument, error_for
from hsmlb_client.v1 import hsmlb_pb2 as pb

# StreamRequest/StreamResponse oneof field -> the unary RPC's name (its request and response messages).
OPERATIONS: dict[str, str] = {
    "encrypt_data": "EncryptData", "decrypt_data": "DecryptData", "re_encrypt_data": "ReEncryptData",
    "generate_mac": "GenerateMac", "verify_mac": "VerifyMac", "sign": "Sign", "verify": "Verify",
    "generate_random": "GenerateRandom", "generate_card_validation_data": "GenerateCardValidationData",
    "verify_card_validation_data": "VerifyCardValidationData", "translate_pin_data": "TranslatePinData",
    "verify_auth_request_cryptogram": "VerifyAuthRequestCryptogram",
}
REQUESTS: dict[str, type] = {field: getattr(pb, f"{rpc}Request") for field, rpc in OPERATIONS.items()}
MAX_BATCH_ITEMS = 1024  # the daemon answers items beyond this in one message RESOURCE_EXHAUSTED


def build_request(field: str, request: Any, fields: dict[str, Any]) -> Any:
    """The operation's request message from a ready message or keyword fields (not both)."""
    cls = REQUESTS[field]
    if request is None:
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:  # an unknown field or a wrong type: the caller's bug, said at once
            raise InvalidArgument(f"{OPERATIONS[field]}Request: {exc}") from None
    if fields:
        raise TypeError(f"{field}: pass either a request message or keyword fields, not both")
    if type(request) is not cls:  # e.g. the daemon package's own stubs: same wire format
        if getattr(getattr(request, "DESCRIPTOR", None), "full_name", None) != cls.DESCRIPTOR.full_name:
            raise TypeError(f"{field}: expected a {cls.DESCRIPTOR.full_name}, got {type(request).__name__}")
        request = cls.FromString(request.SerializeToString())
    return request


def result_of(field: str, reply: Any) -> Any:
    """A batch item's answer: the response message, or the typed error for its Status."""
    which = reply.WhichOneof("result")
    if which == field:
        return getattr(reply, field)
    if which == "status":
        raise error_for(reply.status.code, reply.status.message)
    raise error_for(13, f"the daemon answered {field} with {which or 'nothing'}")  # INTERNAL


def timeout_ms(remaining_s: float) -> int:
    """An item's timeout_ms from the time left (at least 1 ms: 0 would mean no timeout)."""
    return max(1, int(remaining_s * 1000 + 0.999))


class Operations:
    """One method per operation. Each takes the request (a message, or its fields as keywords), an
    optional `timeout` in seconds (default: the client's) and an optional W3C `traceparent`."""

    def _call(self, field: str, request: Any, fields: dict[str, Any], timeout: float | None,
              traceparent: str) -> Any:
        raise NotImplementedError

    # -- data encryption --------------------------------------------------------------------------
    def encrypt_data(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                     **fields: Any) -> Any:
        """EncryptData(key_identifier, plain_text hex, encryption_attributes) -> EncryptDataResponse."""
        return self._call("encrypt_data", request, fields, timeout, traceparent)

    def decrypt_data(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                     **fields: Any) -> Any:
        """DecryptData(key_identifier, cipher_text hex, decryption_attributes) -> DecryptDataResponse."""
        return self._call("decrypt_data", request, fields, timeout, traceparent)

    def re_encrypt_data(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                        **fields: Any) -> Any:
        """ReEncryptData(incoming_/outgoing_key_identifier, cipher_text, incoming_/outgoing_encryption_attributes)."""
        return self._call("re_encrypt_data", request, fields, timeout, traceparent)

    # -- MACs -------------------------------------------------------------------------------------
    def generate_mac(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                     **fields: Any) -> Any:
        """GenerateMac(key_identifier, message_data hex, generation_attributes, mac_length) -> GenerateMacResponse."""
        return self._call("generate_mac", request, fields, timeout, traceparent)

    def verify_mac(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                   **fields: Any) -> Any:
        """VerifyMac(key_identifier, message_data, mac, verification_attributes) -> VerifyMacResponse (verified)."""
        return self._call("verify_mac", request, fields, timeout, traceparent)

    # -- signatures and random --------------------------------------------------------------------
    def sign(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
             **fields: Any) -> Any:
        """Sign(key_identifier, message hex, signing_algorithm) -> SignResponse (signature)."""
        return self._call("sign", request, fields, timeout, traceparent)

    def verify(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
               **fields: Any) -> Any:
        """Verify(key_identifier, message, signature, signing_algorithm) -> VerifyResponse (verified)."""
        return self._call("verify", request, fields, timeout, traceparent)

    def generate_random(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                        **fields: Any) -> Any:
        """GenerateRandom(number_of_bytes) -> GenerateRandomResponse (random hex)."""
        return self._call("generate_random", request, fields, timeout, traceparent)

    # -- card and PIN payments --------------------------------------------------------------------
    def generate_card_validation_data(self, request: Any = None, /, *, timeout: float | None = None,
                                      traceparent: str = "", **fields: Any) -> Any:
        """GenerateCardValidationData(key_identifier, primary_account_number, generation_attributes, ...)."""
        return self._call("generate_card_validation_data", request, fields, timeout, traceparent)

    def verify_card_validation_data(self, request: Any = None, /, *, timeout: float | None = None,
                                    traceparent: str = "", **fields: Any) -> Any:
        """VerifyCardValidationData(key_identifier, primary_account_number, verification_attributes, ...)."""
        return self._call("verify_card_validation_data", request, fields, timeout, traceparent)

    def translate_pin_data(self, request: Any = None, /, *, timeout: float | None = None, traceparent: str = "",
                           **fields: Any) -> Any:
        """TranslatePinData(incoming_/outgoing_key_identifier, encrypted_pin_block, *_translation_attributes)."""
        return self._call("translate_pin_data", request, fields, timeout, traceparent)

    def verify_auth_request_cryptogram(self, request: Any = None, /, *, timeout: float | None = None,
                                       traceparent: str = "", **fields: Any) -> Any:
        """VerifyAuthRequestCryptogram(key_identifier, transaction_data, auth_request_cryptogram, ...)."""
        return self._call("verify_auth_request_cryptogram", request, fields, timeout, traceparent)
