"""Visa CVV / Mastercard CVC method (the same algorithm under both names) with a 2-key TDES CVK.

CVV1 is computed over the track service code, iCVV is CVV1 with service code 999, CVV2/CVC2 uses
service code 000. The card data is PAN || expiry || service code, right-padded with zeros to
32 digits and split into two 8-byte blocks A and B: E_K1(A) XOR B is encrypted with the full
2-key TDES CVK, and the result is decimalized (decimal digits first, then A-F minus 10).
"""

from __future__ import annotations

from hsmlb.payments.primitives import decimalize, encrypt_ecb, xor

CVV2_SERVICE_CODE = "000"


def _validate(cvk: bytes, pan: str, expiry: str, service_code: str, length: int) -> None:
    if len(cvk) != 16:
        raise ValueError("CVK must be a 2-key TDES key")
    if not (12 <= len(pan) <= 19 and pan.isdigit()):
        raise ValueError("PAN must be 12 to 19 digits")
    if not (len(expiry) == 4 and expiry.isdigit()):
        raise ValueError("card expiry date must be 4 digits")
    if not (len(service_code) == 3 and service_code.isdigit()):
        raise ValueError("service code must be 3 digits")
    if not 3 <= length <= 5:
        raise ValueError("validation data length must be 3 to 5")


def cvv_block(cvk: bytes, pan: str, expiry: str, service_code: str) -> bytes:
    """The 8-byte block the CVV digits are decimalized from: E_K1K2(E_K1(A) XOR B)."""
    _validate(cvk, pan, expiry, service_code, 3)
    data = bytes.fromhex((pan + expiry + service_code).ljust(32, "0"))
    return encrypt_ecb("TDES", cvk, xor(encrypt_ecb("TDES", cvk[:8], data[:8]), data[8:]))


def cvv(cvk: bytes, pan: str, expiry: str, service_code: str, length: int = 3) -> str:
    """The first `length` digits of the CVV computation (expiry is used exactly as given)."""
    _validate(cvk, pan, expiry, service_code, length)
    return decimalize(cvv_block(cvk, pan, expiry, service_code).hex().upper())[:length]


def cvv2(cvk: bytes, pan: str, expiry: str, length: int = 3) -> str:
    return cvv(cvk, pan, expiry, CVV2_SERVICE_CODE, length)

