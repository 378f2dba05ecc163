"""The payment engine's contract: APC-shaped parameters in, APC-shaped results out.

One implementation of payment cryptography serves the APC emulator and the PKCS#11 nodes that
allow host-side derivation, so both compute the same bytes. Parameters and results are the
botocore `payment-cryptography-data` input/output dicts (PascalCase members, hex strings),
without the KeyArn/KeyCheckValue members, which the caller adds from its own key inventory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A key as the engine needs it. `material` is clear key bytes: host memory, test clusters only."""

    identifier: str  # the alias or ARN the caller used
    algorithm: str  # APC KeyAlgorithm: TDES_2KEY, TDES_3KEY, AES_128, AES_192, AES_256, HMAC_SHA256, ...
    usage: str  # APC KeyUsage: TR31_C0_CARD_VERIFICATION_KEY, TR31_P0_PIN_ENCRYPTION_KEY, ...
    material: bytes = field(repr=False)


# Clear key length per APC KeyAlgorithm for block-cipher keys: the engine and the keys file check the same.
SYMMETRIC_BYTES = {"TDES_2KEY": 16, "TDES_3KEY": 24, "AES_128": 16, "AES_192": 24, "AES_256": 32}

# Resolves a KeyIdentifier; raises KeyNotFoundError when there is no such key.
KeyResolver = Callable[[str], KeyMaterial]


class PaymentError(Exception):
    """Base of the engine's errors; messages never carry PANs, PINs, PIN blocks or key bytes."""


class PaymentValidationError(PaymentError):
    """The request is malformed or does not fit the key (APC ValidationException)."""

    def __init__(self, message: str, field_list: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field_list = field_list or []  # [{"path": "GenerationAttributes.CardVerificationValue1", "message": ...}]


class KeyNotFoundError(PaymentError):
    """No key with that identifier (APC ResourceNotFoundException)."""


class VerificationFailed(PaymentError):
    """A verification did not match (APC VerificationFailedException); a result, not a fault."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason  # INVALID_PIN | INVALID_MAC | INVALID_VALIDATION_DATA | INVALID_AUTH_REQUEST_CRYPTOGRAM
        self.message = message or f"verification failed: {reason}"


# Which request member names the key whose ARN and KCV the response reports.
RESULT_KEY_MEMBER: dict[str, str] = {"TranslatePinData": "OutgoingKeyIdentifier",
                                     "ReEncryptData": "OutgoingKeyIdentifier"}


def result_key_identifier(operation: str, params: dict) -> str:
    return params[RESULT_KEY_MEMBER.get(operation, "KeyIdentifier")]
