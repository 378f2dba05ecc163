"""GenerateMac / VerifyMac: ISO 9797-1 algorithms 1 and 3, CMAC, HMAC, and their DUKPT forms.

APC behaviour followed here:
- Static-key ISO 9797 algorithms 1 and 3 pad data that is not block-aligned with ISO 9797-1
  padding method 1 (user guide, "Generate and verify MAC"); other paddings are the caller's.
- DUKPT CBC-MACs are not padded: the message must be block-aligned and at least one block
  (observed against the live service by the public J8k3/aws-payment-cryptography-hsm-proxy
  grounding report); DUKPT CMAC takes any length.
- Without MacLength, ISO 9797 algorithms 1 and 3 return 4 bytes (same report: "APC returns a
  4-byte Alg1 MAC"); CMAC and HMAC return their full output (the APC HMAC_SHA256 example
  returns 32 bytes). MacLength counts bytes.
- Verification compares the leftmost len(Mac) bytes in constant time; a mismatch is
  VerificationFailed INVALID_MAC.
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Mapping
from typing import Any

from hsmlb.payments import _request as rq
from hsmlb.payments.primitives import BLOCK_SIZE, cmac, hmac, mac_iso9797_alg1, mac_iso9797_alg3
from hsmlb.payments.types import KeyResolver, VerificationFailed

_ALGORITHMS = ("ISO9797_ALGORITHM1", "ISO9797_ALGORITHM3", "CMAC", "HMAC", *rq.HMAC_HASH)
_DUKPT = ("DukptIso9797Algorithm1", "DukptIso9797Algorithm3", "DukptCmac")
_STATIC_USAGE = {
    "ISO9797_ALGORITHM1": ("TR31_M1_ISO_9797_1_MAC_KEY", rq.BLOCK_CIPHERS),
    "ISO9797_ALGORITHM3": ("TR31_M3_ISO_9797_3_MAC_KEY", ("TDES_2KEY",)),
    "CMAC": ("TR31_M6_ISO_9797_5_CMAC_KEY", rq.BLOCK_CIPHERS),
}
_SHORT_DEFAULT = 4  # default MacLength for the ISO 9797 CBC-MACs


def _static(params: Mapping[str, Any], resolve: KeyResolver, algorithm: str, path: str,
            data: bytes) -> tuple[bytes, int]:
    if algorithm in _STATIC_USAGE:
        usage, algorithms = _STATIC_USAGE[algorithm]
        key = rq.key(resolve, params, "KeyIdentifier", (usage,), algorithms)
        fam = rq.family(key.algorithm)
        if algorithm == "ISO9797_ALGORITHM1":
            return mac_iso9797_alg1(fam, key.material, data, padding=1), _SHORT_DEFAULT
        if algorithm == "ISO9797_ALGORITHM3":
            return mac_iso9797_alg3(key.material, data, padding=1), _SHORT_DEFAULT
        full = cmac(fam, key.material, data)
        return full, len(full)
    key = rq.key(resolve, params, "KeyIdentifier", ("TR31_M7_HMAC_KEY",), tuple(rq.HMAC_HASH))
    if algorithm != "HMAC" and algorithm != key.algorithm:
        raise rq.invalid(path, "does not match the HMAC key's hash algorithm")
    full = hmac(rq.HMAC_HASH[key.algorithm], key.material, data)
    return full, len(full)


def _dukpt(params: Mapping[str, Any], resolve: KeyResolver, member: str, attrs: Mapping[str, Any], path: str,
           data: bytes) -> tuple[bytes, int]:
    bdk = rq.key(resolve, params, "KeyIdentifier", ("TR31_B0_BASE_DERIVATION_KEY",), ("TDES_2KEY", *rq.AES))
    rq.string(attrs, "DukptKeyVariant", f"{path}.DukptKeyVariant", choices=rq.VARIANTS)
    derived, fam, key = rq.dukpt_key(bdk, attrs, path, "MAC", type_member="DukptDerivationType")
    if member == "DukptCmac":
        full = cmac(fam, key, data)
        return full, len(full)
    block = BLOCK_SIZE[fam]
    if len(data) % block:
        raise rq.invalid("MessageData", "must be a multiple of the cipher block size for DUKPT ISO 9797 MACs")
    if member == "DukptIso9797Algorithm1":
        return mac_iso9797_alg1(fam, key, data, padding=0), _SHORT_DEFAULT
    if derived != "TDES_2KEY":
        raise rq.invalid(f"{path}.DukptDerivationType", "ISO 9797 algorithm 3 needs a TDES_2KEY working key")
    return mac_iso9797_alg3(key, data, padding=0), _SHORT_DEFAULT


def _compute(params: Mapping[str, Any], resolve: KeyResolver, attrs_name: str) -> tuple[bytes, int]:
    """(full MAC, default length) for the request's MAC attributes."""
    member, value, path = rq.union(params, attrs_name, attrs_name, ("Algorithm", *_DUKPT), structures=False)
    data = rq.hexbytes(params, "MessageData", "MessageData", lo=1, hi=4096)
    assert data is not None
    if member == "Algorithm":
        if value not in _ALGORITHMS:
            raise rq.not_supported(path)
        return _static(params, resolve, value, path, data)
    if not isinstance(value, Mapping):
        raise rq.invalid(path, "must be a structure")
    return _dukpt(params, resolve, member, value, path, data)


def _length(params: Mapping[str, Any], full: bytes, default: int) -> int:
    length = rq.integer(params, "MacLength", "MacLength", 4, 32, None)
    if length is None:
        return min(default, len(full))
    if length > len(full):
        raise rq.invalid("MacLength", "is longer than the MAC algorithm's output")
    return length


def generate_mac(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    full, default = _compute(params, resolve, "GenerationAttributes")
    return {"Mac": full[: _length(params, full, default)].hex().upper()}


def verify_mac(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    given = rq.hexbytes(params, "Mac", "Mac", lo=4, hi=64)
    assert given is not None
    full, _ = _compute(params, resolve, "VerificationAttributes")
    length = rq.integer(params, "MacLength", "MacLength", 4, 32, None)
    if length is not None and length != len(given):
        raise rq.invalid("MacLength", "does not match the length of Mac")
    if len(given) > len(full):
        raise rq.invalid("Mac", "is longer than the MAC algorithm's output")
    if not _hmac.compare_digest(full[: len(given)], given):
        raise VerificationFailed("INVALID_MAC", "MAC verification failed")
    return {}
