"""Reading APC request members: typed getters that fail with a ValidationException-shaped error.

Every failure names the member path (APC's fieldList) and the rule, never the value: request
members include PANs, PIN blocks and key material.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from hsmlb.payments import dukpt
from hsmlb.payments.primitives import Family
from hsmlb.payments.types import SYMMETRIC_BYTES, KeyMaterial, KeyResolver, PaymentValidationError

_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")

TDES = frozenset({"TDES_2KEY", "TDES_3KEY"})
AES = frozenset({"AES_128", "AES_192", "AES_256"})
BLOCK_CIPHERS = TDES | AES
HMAC_HASH = {"HMAC_SHA224": "SHA224", "HMAC_SHA256": "SHA256", "HMAC_SHA384": "SHA384", "HMAC_SHA512": "SHA512"}


def invalid(path: str, message: str) -> PaymentValidationError:
    return PaymentValidationError(f"{path}: {message}", [{"path": path, "message": message}])


def not_supported(path: str) -> PaymentValidationError:
    return invalid(path, "not supported by this service")


def family(algorithm: str) -> Family:
    return "TDES" if algorithm in TDES else "AES"


def _raw(obj: Mapping[str, Any], name: str, path: str, required: bool) -> Any:
    value = obj.get(name)
    if value is None and required:
        raise invalid(path, "is required")
    return value


def struct(obj: Mapping[str, Any], name: str, path: str, required: bool = True) -> dict[str, Any] | None:
    value = _raw(obj, name, path, required)
    if value is not None and not isinstance(value, Mapping):
        raise invalid(path, "must be a structure")
    return value


def string(obj: Mapping[str, Any], name: str, path: str, required: bool = True,
           choices: Collection[str] | None = None) -> str | None:
    value = _raw(obj, name, path, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(path, "must be a string")
    if choices is not None and value not in choices:
        raise invalid(path, f"must be one of {', '.join(sorted(choices))}")
    return value


def digits(obj: Mapping[str, Any], name: str, path: str, lo: int, hi: int, required: bool = True) -> str | None:
    value = string(obj, name, path, required)
    if value is not None and not (lo <= len(value) <= hi and _DIGITS.issuperset(value)):
        raise invalid(path, f"must be {lo} to {hi} decimal digits" if lo != hi else f"must be {lo} decimal digits")
    return value


def hexbytes(obj: Mapping[str, Any], name: str, path: str, lengths: Collection[int] | None = None,
             lo: int = 1, hi: int = 1 << 20, required: bool = True) -> bytes | None:
    """Decode a hex member; lengths are in bytes (any of `lengths`, else lo..hi)."""
    value = string(obj, name, path, required)
    if value is None:
        return None
    if len(value) % 2 or not _HEX.issuperset(value):
        raise invalid(path, "must be an even number of hex digits")
    n = len(value) // 2
    if lengths is not None and n not in lengths:
        raise invalid(path, "must be " + " or ".join(f"{2 * k} hex digits" for k in sorted(lengths)))
    if lengths is None and not lo <= n <= hi:
        raise invalid(path, f"must be {2 * lo} to {2 * hi} hex digits")
    return bytes.fromhex(value)


def integer(obj: Mapping[str, Any], name: str, path: str, lo: int, hi: int, default: int | None) -> int | None:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(path, f"must be an integer from {lo} to {hi}")
    return value


def union(obj: Mapping[str, Any], name: str, path: str, supported: Collection[str],
          structures: bool = True) -> tuple[str, Any, str]:
    """(member, value, member path) of a tagged union; exactly one member must be set.

    With `structures` (every member of the union is a structure, as in all APC unions but MacAttributes)
    the member's value is checked to be one, so a caller that reads it cannot fail on a string or list.
    """
    value = struct(obj, name, path)
    assert value is not None
    members = [k for k, v in value.items() if v is not None]
    if len(members) != 1:
        raise invalid(path, "exactly one member must be set")
    member = members[0]
    member_path = f"{path}.{member}"
    if member not in supported:
        raise not_supported(member_path)
    if structures and not isinstance(value[member], Mapping):
        raise invalid(member_path, "must be a structure")
    return member, value[member], member_path


def key(resolve: KeyResolver, params: Mapping[str, Any], name: str, usages: Collection[str],
        algorithms: Collection[str]) -> KeyMaterial:
    """Resolve the key a member names and check it may do this (APC key usage and algorithm)."""
    identifier = string(params, name, name)
    assert identifier is not None
    material = resolve(identifier)
    if material.usage not in usages:
        raise invalid(name, f"key usage {material.usage} is not valid here; expected {' or '.join(sorted(usages))}")
    if material.algorithm not in algorithms:
        raise invalid(name, f"key algorithm {material.algorithm} is not valid here")
    want = SYMMETRIC_BYTES.get(material.algorithm)
    if (want is not None and len(material.material) != want) or not material.material:
        raise invalid(name, "key material does not match its algorithm")
    return material


# ------------------------------------------------------------------------------- DUKPT

_AES_USAGE = {
    ("MAC", "REQUEST"): "MAC_GENERATION", ("MAC", "RESPONSE"): "MAC_VERIFICATION", ("MAC", "BIDIRECTIONAL"): "MAC_BOTH",
    ("DATA", "REQUEST"): "DATA_ENCRYPT", ("DATA", "RESPONSE"): "DATA_DECRYPT", ("DATA", "BIDIRECTIONAL"): "DATA_BOTH",
}
# X9.24-1 has request and response variants only; BIDIRECTIONAL takes the request variant, which is
# also the single MAC/data variant of the 2004 edition.
_TDES_USAGE = {
    ("MAC", "REQUEST"): "MAC_REQUEST", ("MAC", "RESPONSE"): "MAC_RESPONSE",
    ("MAC", "BIDIRECTIONAL"): "MAC_REQUEST",
    ("DATA", "REQUEST"): "DATA_REQUEST", ("DATA", "RESPONSE"): "DATA_RESPONSE",
    ("DATA", "BIDIRECTIONAL"): "DATA_REQUEST",
}
VARIANTS = ("BIDIRECTIONAL", "REQUEST", "RESPONSE")


def dukpt_key(bdk: KeyMaterial, attrs: Mapping[str, Any], path: str, purpose: str,
              type_member: str = "DukptKeyDerivationType") -> tuple[str, Family, bytes]:
    """(algorithm, family, working key) for a DUKPT request; purpose is PIN, MAC or DATA."""
    variant = string(attrs, "DukptKeyVariant", f"{path}.DukptKeyVariant", required=False, choices=VARIANTS)
    variant = variant or "BIDIRECTIONAL"
    derived = string(attrs, type_member, f"{path}.{type_member}", required=False, choices=tuple(dukpt.STRENGTH))
    if bdk.algorithm == "TDES_2KEY":
        ksn = hexbytes(attrs, "KeySerialNumber", f"{path}.KeySerialNumber", lengths=(8, 10))
        if derived not in (None, "TDES_2KEY"):
            raise invalid(f"{path}.{type_member}", "must be TDES_2KEY for a TDES_2KEY BDK")
        usage = "PIN" if purpose == "PIN" else _TDES_USAGE[(purpose, variant)]
        assert ksn is not None
        return "TDES_2KEY", "TDES", dukpt.tdes_derive(bdk.material, ksn, usage)
    if bdk.algorithm not in AES:
        raise invalid("KeyIdentifier", f"DUKPT with a {bdk.algorithm} BDK is not supported")
    ksn = hexbytes(attrs, "KeySerialNumber", f"{path}.KeySerialNumber", lengths=(12,))
    derived = derived or bdk.algorithm
    if dukpt.STRENGTH[derived] > dukpt.STRENGTH[bdk.algorithm]:
        raise invalid(f"{path}.{type_member}", "must not be stronger than the BDK")
    usage = "PIN" if purpose == "PIN" else _AES_USAGE[(purpose, variant)]
    assert ksn is not None
    return derived, family(derived), dukpt.aes_derive(bdk.material, ksn, usage, derived)
