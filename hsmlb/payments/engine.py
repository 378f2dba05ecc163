"""The payment engine's single entry point: `execute(operation, params, resolve)`.

Parameters and results are the botocore `payment-cryptography-data` input/output dicts without
KeyArn/KeyCheckValue (the caller adds those). Verifications return {} (or the ARPC) on success
and raise VerificationFailed with APC's reason otherwise; malformed requests, keys of the wrong
usage or algorithm, and options this engine does not implement raise PaymentValidationError
naming the member in its field_list. KeyNotFoundError from `resolve` propagates unchanged.

Implemented: GenerateCardValidationData / VerifyCardValidationData (CVV1, CVV2),
TranslatePinData (ISO 0/1/3/4, zone keys and TDES/AES DUKPT on either side),
VerifyAuthRequestCryptogram (options A/B; EmvCommon, Mastercard, Visa, Amex; ARPC 1 and 2),
GenerateMac / VerifyMac (ISO 9797 alg 1 and 3, CMAC, HMAC, DUKPT alg 1/alg 3/CMAC),
EncryptData / DecryptData / ReEncryptData (symmetric ECB/CBC and DUKPT).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hsmlb.payments import ops_card, ops_data, ops_mac, ops_pin
from hsmlb.payments._request import AES, HMAC_HASH, TDES
from hsmlb.payments.primitives import kcv as _block_kcv
from hsmlb.payments.primitives import kcv_sha1
from hsmlb.payments.types import KeyResolver, PaymentValidationError

Operation = Callable[[Mapping[str, Any], KeyResolver], dict[str, Any]]

_OPERATIONS: dict[str, Operation] = {
    "GenerateCardValidationData": ops_card.generate_card_validation_data,
    "VerifyCardValidationData": ops_card.verify_card_validation_data,
    "VerifyAuthRequestCryptogram": ops_card.verify_auth_request_cryptogram,
    "TranslatePinData": ops_pin.translate_pin_data,
    "GenerateMac": ops_mac.generate_mac,
    "VerifyMac": ops_mac.verify_mac,
    "EncryptData": ops_data.encrypt_data,
    "DecryptData": ops_data.decrypt_data,
    "ReEncryptData": ops_data.re_encrypt_data,
}

SUPPORTED_OPERATIONS: frozenset[str] = frozenset(_OPERATIONS)


def execute(operation: str, params: dict, resolve: KeyResolver) -> dict:
    """Run one APC data-plane operation; pure apart from `resolve` and the random PIN fill."""
    handler = _OPERATIONS.get(operation)
    if handler is None:
        raise PaymentValidationError(f"operation {operation} is not supported by the payment engine")
    if not isinstance(params, Mapping):
        raise PaymentValidationError("request parameters must be a structure")
    try:
        return handler(params, resolve)
    except ValueError:  # a primitive's own input check: its text is not echoed, as it could quote data
        raise PaymentValidationError("invalid request: a value does not fit the key or the operation") from None


def kcv(algorithm: str, material: bytes) -> str:
    """Key check value as 6 upper-case hex digits.

    TDES and AES keys: ANSI X9.24-1 method, the leftmost 3 bytes of E_K(zero block) (the value
    SoftHSM2 reports as CKA_CHECK_VALUE for DES3 and AES keys, and APC's ANSI_X9_24 KCV for TDES).
    HMAC keys: the leftmost 3 bytes of SHA-1(key), which is what SoftHSM2 reports as
    CKA_CHECK_VALUE for a CKK_GENERIC_SECRET key (checked on a scratch token), so every backend of
    this project reports the same value for the same key.
    """
    if algorithm in TDES or algorithm in AES:
        return _block_kcv("TDES" if algorithm in TDES else "AES", material).hex().upper()
    if algorithm in HMAC_HASH:
        return kcv_sha1(material).hex().upper()
    raise PaymentValidationError(f"no key check value is defined for {algorithm} keys")
