"""TranslatePinData: decrypt a PIN block under one key, re-format it, encrypt it under another.

Each side is a zone PIN key (TR31_P0_PIN_ENCRYPTION_KEY) or, with DUKPT attributes, a BDK
(TR31_B0_BASE_DERIVATION_KEY) from which the PIN working key for the KSN is derived (X9.24-1
PIN variant, or the X9.24-3 PIN encryption usage). ISO formats 0, 1 and 3 are 8-byte blocks
under TDES (ECB, one block); format 4 is a 16-byte block under AES (ISO 9564-1 9.4). The clear
PIN exists only inside this function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hsmlb.payments import _request as rq
from hsmlb.payments import pinblock
from hsmlb.payments.primitives import Family, decrypt_ecb, encrypt_ecb
from hsmlb.payments.types import KeyResolver, PaymentValidationError

_FORMATS = {"IsoFormat0": 0, "IsoFormat1": 1, "IsoFormat3": 3, "IsoFormat4": 4}
_PEK = "TR31_P0_PIN_ENCRYPTION_KEY"
_BDK = "TR31_B0_BASE_DERIVATION_KEY"


def _side(params: Mapping[str, Any], resolve: KeyResolver, direction: str) -> tuple[int, str | None, Family, bytes]:
    """(ISO format, PAN or None, cipher family, PIN key) for the Incoming or Outgoing side."""
    attrs_name = f"{direction}TranslationAttributes"
    member, attrs, path = rq.union(params, attrs_name, attrs_name, tuple(_FORMATS))
    fmt = _FORMATS[member]
    pan = None
    if fmt != 1:
        pan = rq.digits(attrs, "PrimaryAccountNumber", f"{path}.PrimaryAccountNumber", 12, 19)
    key_name = f"{direction}KeyIdentifier"
    dukpt_attrs = rq.struct(params, f"{direction}DukptAttributes", f"{direction}DukptAttributes", required=False)
    if dukpt_attrs is not None:
        bdk = rq.key(resolve, params, key_name, (_BDK,), ("TDES_2KEY", *rq.AES))
        _, family, key = rq.dukpt_key(bdk, dukpt_attrs, f"{direction}DukptAttributes", "PIN")
    else:
        pek = rq.key(resolve, params, key_name, (_PEK,), rq.BLOCK_CIPHERS)
        family, key = rq.family(pek.algorithm), pek.material
    if (fmt == 4) != (family == "AES"):
        want = "an AES key" if fmt == 4 else "a TDES key"
        raise rq.invalid(key_name, f"ISO format {fmt} PIN blocks need {want}")
    return fmt, pan, family, key


def _decrypt_pin(fmt: int, pan: str | None, key: bytes, block: bytes) -> str:
    if fmt == 4:
        if len(block) != 16:
            raise rq.invalid("EncryptedPinBlock", "ISO format 4 PIN blocks are 32 hex digits")
        assert pan is not None
        return pinblock.decipher_iso4(key, block, pan)
    if len(block) != 8:
        raise rq.invalid("EncryptedPinBlock", f"ISO format {fmt} PIN blocks are 16 hex digits")
    return pinblock.decode(fmt, decrypt_ecb("TDES", key, block), pan)


def _encrypt_pin(fmt: int, pan: str | None, key: bytes, pin: str) -> bytes:
    if fmt == 4:
        assert pan is not None
        return pinblock.encipher_iso4(key, pin, pan, os.urandom(8))
    return encrypt_ecb("TDES", key, pinblock.encode(fmt, pin, pan))


def translate_pin_data(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    block = rq.hexbytes(params, "EncryptedPinBlock", "EncryptedPinBlock", lengths=(8, 16))
    assert block is not None
    in_fmt, in_pan, _, in_key = _side(params, resolve, "Incoming")
    out_fmt, out_pan, _, out_key = _side(params, resolve, "Outgoing")
    try:
        pin = _decrypt_pin(in_fmt, in_pan, in_key, block)
    except PaymentValidationError as exc:
        if exc.field_list:
            raise
        raise rq.invalid("EncryptedPinBlock", exc.message) from None
    return {"PinBlock": _encrypt_pin(out_fmt, out_pan, out_key, pin).hex().upper()}
