"""ISO 9564-1 PIN blocks: formats 0, 1 and 3 (8 bytes, TDES) and format 4 (16 bytes, AES).

Clear-block layout (nibbles): C | L | PIN (L digits) | fill, where C is the format number and
L the PIN length (4-12). Format 0 fills with F, format 1 with random nibbles, format 3 with
random nibbles A-F; formats 0 and 3 are XORed with the PAN field 0000 || 12 rightmost PAN digits
excluding the check digit (ISO 9564-1:2017 9.3.1 / 9.3.4). Format 4 (9.4) keeps PIN and PAN in
two 16-byte fields: PIN field 4 | L | PIN | A fill to 16 nibbles | 8 random bytes; PAN field
M | PAN (12 + M digits; shorter PANs left-padded with zeros and M = 0) | zero fill. The block is
E_K(E_K(PIN field) XOR PAN field).

Every error raised here is a PaymentValidationError whose message names the rule that failed and
never the PIN, PAN or block contents.
"""

from __future__ import annotations

import os

from hsmlb.payments.primitives import decrypt_ecb, encrypt_ecb, xor
from hsmlb.payments.types import PaymentValidationError

_DIGITS = frozenset("0123456789")
_AF = "ABCDEF"
_HEX = "0123456789ABCDEF"


# One message for every way a deciphered block can be malformed: naming which check failed
# (control field, length, digits, fill) would tell a prober something about the clear block.
NOT_A_VALID_BLOCK = "the PIN block does not decipher to a valid block of its stated format"


def _fail(message: str) -> PaymentValidationError:
    return PaymentValidationError(message)


def _check_pin(pin: str) -> None:
    if not (4 <= len(pin) <= 12 and _DIGITS.issuperset(pin)):
        raise _fail("PIN must be 4 to 12 decimal digits")


def _check_pan(pan: str, minimum: int) -> None:
    if not (minimum <= len(pan) <= 19 and _DIGITS.issuperset(pan)):
        raise _fail(f"PAN must be {minimum} to 19 decimal digits")


def _random_nibbles(count: int, alphabet: str) -> str:
    # os.urandom per the standard's "random fill"; modulo bias over 6 values is immaterial here.
    return "".join(alphabet[b % len(alphabet)] for b in os.urandom(count))


def pan_field_iso0(pan: str) -> bytes:
    """0000 || the 12 rightmost PAN digits excluding the check digit, left-padded with zeros."""
    _check_pan(pan, 2)
    return bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0"))


def _clear_block(fmt: int, pin: str, fill: str) -> bytes:
    return bytes.fromhex(f"{fmt}{len(pin):X}{pin}{fill}")


def encode_iso0(pin: str, pan: str) -> bytes:
    _check_pin(pin)
    return xor(_clear_block(0, pin, "F" * (14 - len(pin))), pan_field_iso0(pan))


def encode_iso1(pin: str) -> bytes:
    _check_pin(pin)
    return _clear_block(1, pin, _random_nibbles(14 - len(pin), _HEX))


def encode_iso3(pin: str, pan: str) -> bytes:
    _check_pin(pin)
    return xor(_clear_block(3, pin, _random_nibbles(14 - len(pin), _AF)), pan_field_iso0(pan))


def encode(fmt: int, pin: str, pan: str | None = None) -> bytes:
    """Clear 8-byte PIN block in format 0, 1 or 3 (pan is required for 0 and 3)."""
    if fmt == 1:
        return encode_iso1(pin)
    if fmt in (0, 3):
        if pan is None:
            raise _fail(f"ISO format {fmt} needs a PAN")
        return encode_iso0(pin, pan) if fmt == 0 else encode_iso3(pin, pan)
    raise _fail("PIN block format must be 0, 1 or 3 for 8-byte blocks")


def _parse_pin(nibbles: str, fmt: int, end: int) -> tuple[str, str]:
    """(PIN, fill) from the clear PIN field nibbles, after checking control and length nibbles."""
    if nibbles[0] != str(fmt):
        raise _fail(NOT_A_VALID_BLOCK)
    length = int(nibbles[1], 16)
    if not 4 <= length <= 12:
        raise _fail(NOT_A_VALID_BLOCK)
    pin = nibbles[2 : 2 + length]
    if not _DIGITS.issuperset(pin):
        raise _fail(NOT_A_VALID_BLOCK)
    return pin, nibbles[2 + length : end]


def decode(fmt: int, block: bytes, pan: str | None = None) -> str:
    """PIN from a clear 8-byte block in format 0, 1 or 3; checks control, length and fill rules."""
    if len(block) != 8:
        raise _fail("ISO format 0, 1 and 3 PIN blocks are 8 bytes")
    if fmt in (0, 3):
        if pan is None:
            raise _fail(f"ISO format {fmt} needs a PAN")
        block = xor(block, pan_field_iso0(pan))
    elif fmt != 1:
        raise _fail("PIN block format must be 0, 1 or 3 for 8-byte blocks")
    pin, fill = _parse_pin(block.hex().upper(), fmt, 16)
    if fmt == 0 and fill.strip("F"):
        raise _fail(NOT_A_VALID_BLOCK)
    if fmt == 3 and fill.strip(_AF):
        raise _fail(NOT_A_VALID_BLOCK)
    return pin


def iso4_pin_field(pin: str, random_half: bytes | None = None) -> bytes:
    """Plain format-4 PIN field; the random second half comes from os.urandom unless given."""
    _check_pin(pin)
    random_half = os.urandom(8) if random_half is None else random_half
    if len(random_half) != 8:
        raise _fail("format 4 random fill is 8 bytes")
    return bytes.fromhex(f"4{len(pin):X}{pin}" + "A" * (14 - len(pin))) + random_half


def iso4_pan_field(pan: str) -> bytes:
    """Plain format-4 PAN field: M | PAN | zeros, with M = len(PAN) - 12 (0 and left zero-padding below 12)."""
    _check_pan(pan, 1)
    if len(pan) < 12:
        return bytes.fromhex(("0" + pan.rjust(12, "0")).ljust(32, "0"))
    return bytes.fromhex((str(len(pan) - 12) + pan).ljust(32, "0"))


def decode_iso4_pin_field(field: bytes) -> str:
    """PIN from a plain format-4 PIN field; the fill up to nibble 16 must be A (ISO 9564-1 9.4.2)."""
    if len(field) != 16:
        raise _fail("ISO format 4 PIN fields are 16 bytes")
    pin, fill = _parse_pin(field.hex().upper(), 4, 16)
    if fill.strip("A"):
        raise _fail(NOT_A_VALID_BLOCK)
    return pin


def encipher_iso4(key: bytes, pin: str, pan: str, random_half: bytes | None = None) -> bytes:
    """Format-4 encipherment: E_K(E_K(PIN field) XOR PAN field) with an AES key."""
    intermediate = encrypt_ecb("AES", key, iso4_pin_field(pin, random_half))
    return encrypt_ecb("AES", key, xor(intermediate, iso4_pan_field(pan)))


def decipher_iso4(key: bytes, block: bytes, pan: str) -> str:
    """Reverse of encipher_iso4; validates the recovered PIN field."""
    if len(block) != 16:
        raise _fail("ISO format 4 PIN blocks are 16 bytes")
    intermediate = xor(decrypt_ecb("AES", key, block), iso4_pan_field(pan))
    return decode_iso4_pin_field(decrypt_ecb("AES", key, intermediate))
