"""DUKPT: TDES per ANSI X9.24-1:2009 and AES per ANSI X9.24-3:2017, host (BDK) side.

TDES (X9.24-1:2009 A.6): the IPEK is the BDK-encryption of the KSN's leftmost 8 bytes with the
21-bit counter cleared, under BDK and BDK XOR C0C0C0C000000000C0C0C0C000000000; the current
transaction key walks the counter's set bits from the top, applying the non-reversible key
generation process each time. Working keys are variants of it (A.4 / A.5 masks); the data keys
additionally go through the one-way function "variant encrypted with itself", as in the 2009
edition's test data.

AES (X9.24-3:2017 6.3): every key is AES-ECB(derivation key, 16-byte derivation data) blocks,
where the derivation data carries version 01, a block counter, the key usage, the algorithm of the
derived key, its length in bits and either the 8-byte initial key ID (for the initial key) or the
right half of the IK ID and a transaction counter. Intermediate keys have the BDK's type; working
keys may be any type no stronger than the BDK, including 2-key and 3-key TDES.
"""

from __future__ import annotations

from functools import lru_cache

from hsmlb.payments.primitives import encrypt_ecb, xor

# ---------------------------------------------------------------- TDES DUKPT (X9.24-1:2009)

_C0_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")
TDES_VARIANTS: dict[str, bytes] = {
    "PIN": bytes.fromhex("00000000000000FF00000000000000FF"),
    "MAC_REQUEST": bytes.fromhex("000000000000FF00000000000000FF00"),
    "MAC_RESPONSE": bytes.fromhex("00000000FF00000000000000FF000000"),
    "DATA_REQUEST": bytes.fromhex("0000000000FF00000000000000FF0000"),
    "DATA_RESPONSE": bytes.fromhex("000000FF00000000000000FF00000000"),
}
_COUNTER_MASK = 0x1FFFFF


def _tdes_ksn(ksn: bytes) -> bytes:
    """10-byte KSN; an 8-byte KSN is taken as the usual FFFF-prefixed one."""
    if len(ksn) == 8:
        return b"\xff\xff" + ksn
    if len(ksn) != 10:
        raise ValueError("TDES DUKPT KSN must be 10 bytes")
    return ksn


def tdes_ipek(bdk: bytes, ksn: bytes) -> bytes:
    """Initial PIN encryption key (X9.24-1:2009 A.6 'Derive initial key')."""
    if len(bdk) != 16:
        raise ValueError("TDES DUKPT BDK must be a 2-key TDES key")
    ksn = _tdes_ksn(ksn)
    return _ipek(bdk, ksn[:7] + bytes([ksn[7] & 0xE0]))


@lru_cache(maxsize=256)
def _ipek(bdk: bytes, base: bytes) -> bytes:
    # Cached per device (KSN without its counter), so a device's later transactions skip it.
    return encrypt_ecb("TDES", bdk, base) + encrypt_ecb("TDES", xor(bdk, _C0_MASK), base)


def _nrkgp(key: bytes, register: bytes) -> bytes:
    """Non-reversible key generation process (X9.24-1:2009 A.2, 'special encrypt')."""
    k_left, k_right = key[:8], key[8:]
    right = xor(encrypt_ecb("TDES", k_left, xor(register, k_right), cache=False), k_right)
    key = xor(key, _C0_MASK)
    k_left, k_right = key[:8], key[8:]
    left = xor(encrypt_ecb("TDES", k_left, xor(register, k_right), cache=False), k_right)
    return left + right


def tdes_transaction_key(ipek: bytes, ksn: bytes) -> bytes:
    """Current transaction key for the KSN's counter, before any variant."""
    ksn = _tdes_ksn(ksn)
    tail = int.from_bytes(ksn[2:], "big")
    counter = tail & _COUNTER_MASK
    register = tail & ~_COUNTER_MASK
    key = ipek
    bit = 1 << 20
    while bit:
        if counter & bit:
            register |= bit
            key = _nrkgp(key, register.to_bytes(8, "big"))
        bit >>= 1
    return key


def tdes_working_key(transaction_key: bytes, usage: str) -> bytes:
    """Variant of the transaction key; DATA_* variants also get the one-way step E_V(V)."""
    variant = xor(transaction_key, TDES_VARIANTS[usage])
    if usage.startswith("DATA_"):
        return encrypt_ecb("TDES", variant, variant, cache=False)
    return variant


def tdes_derive(bdk: bytes, ksn: bytes, usage: str) -> bytes:
    """Working key for a KSN straight from the BDK (usage: a TDES_VARIANTS name)."""
    return tdes_working_key(tdes_transaction_key(tdes_ipek(bdk, ksn), ksn), usage)


# ---------------------------------------------------------------- AES DUKPT (X9.24-3:2017)

# Key type -> (algorithm indicator, length in bits), X9.24-3:2017 Table 2.
KEY_TYPES: dict[str, tuple[int, int]] = {
    "TDES_2KEY": (0x0000, 128),
    "TDES_3KEY": (0x0001, 192),
    "AES_128": (0x0002, 128),
    "AES_192": (0x0003, 192),
    "AES_256": (0x0004, 256),
}
# Key usage indicators, X9.24-3:2017 Table 3.
USAGES: dict[str, int] = {
    "KEY_ENCRYPTION": 0x0002,
    "PIN": 0x1000,
    "MAC_GENERATION": 0x2000,
    "MAC_VERIFICATION": 0x2001,
    "MAC_BOTH": 0x2002,
    "DATA_ENCRYPT": 0x3000,
    "DATA_DECRYPT": 0x3001,
    "DATA_BOTH": 0x3002,
    "KEY_DERIVATION": 0x8000,
    "KEY_DERIVATION_INITIAL": 0x8001,
}
_AES_TYPES = {16: "AES_128", 24: "AES_192", 32: "AES_256"}
# Key strength order for "a working key is no stronger than the key it is derived from" (X9.24-3:2017 6.1):
# the algorithm indicator's order, not key length (the standard's test-vector supplement derives 3-key
# TDEA, 192-bit, working keys from an AES-128 BDK).
STRENGTH: dict[str, int] = {name: indicator for name, (indicator, _) in KEY_TYPES.items()}


def aes_bdk_type(bdk: bytes) -> str:
    try:
        return _AES_TYPES[len(bdk)]
    except KeyError:
        raise ValueError("AES DUKPT BDK must be 16, 24 or 32 bytes") from None


def _derivation_data(usage: int, key_type: str, tail: bytes) -> bytearray:
    algorithm, bits = KEY_TYPES[key_type]
    head = bytes((0x01, 0x01)) + usage.to_bytes(2, "big") + algorithm.to_bytes(2, "big") + bits.to_bytes(2, "big")
    return bytearray(head + tail)


def _derive_key(derivation_key: bytes, key_type: str, data: bytearray) -> bytes:
    """X9.24-3:2017 6.3.2 Derive_Key: as many AES blocks as the key needs, block counter in byte 1."""
    bits = KEY_TYPES[key_type][1]
    out = b""
    for counter in range(1, (bits + 127) // 128 + 1):
        data[1] = counter
        out += encrypt_ecb("AES", derivation_key, bytes(data), cache=False)
    return out[: bits // 8]


def _aes_ksn(ksn: bytes) -> tuple[bytes, int]:
    if len(ksn) != 12:
        raise ValueError("AES DUKPT KSN must be 12 bytes")
    return ksn[:8], int.from_bytes(ksn[8:], "big")


@lru_cache(maxsize=256)
def aes_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    """Initial DUKPT key for a device (X9.24-3:2017 6.3.3 / B.4)."""
    bdk_type = aes_bdk_type(bdk)
    if len(initial_key_id) != 8:
        raise ValueError("initial key ID must be 8 bytes")
    data = _derivation_data(USAGES["KEY_DERIVATION_INITIAL"], bdk_type, initial_key_id)
    return _derive_key(bdk, bdk_type, data)


def aes_transaction_key(initial_key: bytes, ksn: bytes) -> bytes:
    """Derivation key for the KSN's 32-bit counter, walking its set bits from the top (6.3.4 / B.5)."""
    key_type = aes_bdk_type(initial_key)
    ikid, counter = _aes_ksn(ksn)
    key, working = initial_key, 0
    bit = 1 << 31
    while bit:
        if counter & bit:
            working |= bit
            tail = ikid[4:] + working.to_bytes(4, "big")
            key = _derive_key(key, key_type, _derivation_data(USAGES["KEY_DERIVATION"], key_type, tail))
        bit >>= 1
    return key


def aes_working_key(transaction_key: bytes, ksn: bytes, usage: str, key_type: str) -> bytes:
    """Working key of a usage (a USAGES name) and type (a KEY_TYPES name) for this KSN."""
    if STRENGTH[key_type] > STRENGTH[aes_bdk_type(transaction_key)]:
        raise ValueError("derived key type must not be stronger than the BDK")
    ikid, counter = _aes_ksn(ksn)
    data = _derivation_data(USAGES[usage], key_type, ikid[4:] + counter.to_bytes(4, "big"))
    return _derive_key(transaction_key, key_type, data)


def aes_derive(bdk: bytes, ksn: bytes, usage: str, key_type: str | None = None) -> bytes:
    """Working key for a KSN straight from the BDK; key_type defaults to the BDK's own type."""
    key_type = key_type or aes_bdk_type(bdk)
    transaction_key = aes_transaction_key(aes_initial_key(bdk, ksn[:8]), ksn)
    return aes_working_key(transaction_key, ksn, usage, key_type)
