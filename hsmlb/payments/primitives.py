"""Block-cipher, MAC and padding primitives the payment functions are built from.

Everything here is a pure function of its inputs. Cipher contexts are built from cached key
schedules (`functools.lru_cache` keyed by the key bytes), because payment operations run the same
few keys many times and rebuilding a `Cipher` per call dominates the cost of one 8-byte block.
The caches hold clear key bytes in host memory, which is acceptable only because the engine
itself only ever runs on clear test keys (see types.KeyMaterial).

Families: "TDES" covers single DES (8-byte key, K1K1K1), 2-key TDES (K1K2K1) and 3-key TDES;
"AES" covers AES-128/192/256.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Literal

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac as _cmac
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

Family = Literal["TDES", "AES"]

BLOCK_SIZE: dict[str, int] = {"TDES": 8, "AES": 16}
_ZERO = {8: bytes(8), 16: bytes(16)}
_HASHES = {"SHA224": hashes.SHA224, "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
_CACHE = 1024


def xor(a: bytes, b: bytes) -> bytes:
    """Bytewise XOR of two equal-length strings (one big-int operation, no per-byte loop)."""
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(n, "big")


def tdes_key(key: bytes) -> bytes:
    """Expand to a 24-byte K1K2K3 key: single DES is K1K1K1, 2-key TDES is K1K2K1 (SP 800-67 3.1)."""
    if len(key) == 8:
        return key * 3
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    raise ValueError("TDES key must be 8, 16 or 24 bytes")


def _new_algorithm(family: str, key: bytes) -> algorithms.AES | TripleDES:
    if family == "AES":
        if len(key) not in (16, 24, 32):
            raise ValueError("AES key must be 16, 24 or 32 bytes")
        return algorithms.AES(key)
    if family == "TDES":
        return TripleDES(tdes_key(key))
    raise ValueError("unknown cipher family")


_algorithm = lru_cache(maxsize=_CACHE)(_new_algorithm)


@lru_cache(maxsize=_CACHE)
def _ecb(family: str, key: bytes) -> Cipher:
    return Cipher(_algorithm(family, key), modes.ECB())


@lru_cache(maxsize=_CACHE)
def _cbc_zero_iv(family: str, key: bytes) -> Cipher:
    return Cipher(_algorithm(family, key), modes.CBC(_ZERO[BLOCK_SIZE[family]]))


def _cbc(family: str, key: bytes, iv: bytes | None) -> Cipher:
    size = BLOCK_SIZE[family]
    if iv is None or iv == _ZERO[size]:
        return _cbc_zero_iv(family, key)
    if len(iv) != size:
        raise ValueError("IV length must equal the cipher block size")
    return Cipher(_algorithm(family, key), modes.CBC(iv))


def _check_blocks(family: str, data: bytes) -> None:
    if len(data) % BLOCK_SIZE[family]:
        raise ValueError("data length must be a multiple of the cipher block size")


def encrypt_ecb(family: Family, key: bytes, data: bytes, cache: bool = True) -> bytes:
    """ECB encryption without padding; cache=False for one-off keys (DUKPT/EMV derivation steps)
    so they do not evict the long-lived keys from the key-schedule cache."""
    _check_blocks(family, data)
    cipher = _ecb(family, key) if cache else Cipher(_new_algorithm(family, key), modes.ECB())
    ctx = cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def decrypt_ecb(family: Family, key: bytes, data: bytes) -> bytes:
    _check_blocks(family, data)
    ctx = _ecb(family, key).decryptor()
    return ctx.update(data) + ctx.finalize()


def encrypt_cbc(family: Family, key: bytes, data: bytes, iv: bytes | None = None) -> bytes:
    """CBC encryption without padding; a missing IV means the all-zero IV (APC's default)."""
    _check_blocks(family, data)
    ctx = _cbc(family, key, iv).encryptor()
    return ctx.update(data) + ctx.finalize()


def decrypt_cbc(family: Family, key: bytes, data: bytes, iv: bytes | None = None) -> bytes:
    _check_blocks(family, data)
    ctx = _cbc(family, key, iv).decryptor()
    return ctx.update(data) + ctx.finalize()


def des_encrypt(key8: bytes, block: bytes) -> bytes:
    """Single DES, one block (FIPS 46-3 via TDES with K1=K2=K3)."""
    return encrypt_ecb("TDES", key8, block)


def des_decrypt(key8: bytes, block: bytes) -> bytes:
    return decrypt_ecb("TDES", key8, block)


def kcv(family: Family, key: bytes, length: int = 3) -> bytes:
    """Key check value per ANSI X9.24-1 (and its AES counterpart): leftmost bytes of E_K(0^n)."""
    return encrypt_ecb(family, key, _ZERO[BLOCK_SIZE[family]])[:length]


def kcv_sha1(material: bytes, length: int = 3) -> bytes:
    """Leftmost bytes of SHA-1(key): what SoftHSM2 reports as CKA_CHECK_VALUE for a generic secret."""
    return hashlib.sha1(material).digest()[:length]


def adjust_parity(key: bytes) -> bytes:
    """Set each byte to odd parity (FIPS 46-3: the low bit of every key byte is a parity bit)."""
    return bytes(b ^ 1 ^ (b.bit_count() & 1) for b in key)


def pad_iso9797_1(data: bytes, block: int) -> bytes:
    """ISO/IEC 9797-1 padding method 1: zero bits up to a positive multiple of the block size."""
    rem = len(data) % block
    if data and not rem:
        return data
    return data + bytes(block - rem)


def pad_iso9797_2(data: bytes, block: int) -> bytes:
    """ISO/IEC 9797-1 padding method 2: one '1' bit (0x80) then zeros to a multiple of the block."""
    data = data + b"\x80"
    rem = len(data) % block
    return data + bytes(block - rem) if rem else data


def _pad(data: bytes, block: int, padding: int) -> bytes:
    if padding == 1:
        return pad_iso9797_1(data, block)
    if padding == 2:
        return pad_iso9797_2(data, block)
    if padding == 0:
        if not data or len(data) % block:
            raise ValueError("data length must be a positive multiple of the block size")
        return data
    raise ValueError("padding must be 0 (none), 1 or 2")


def mac_iso9797_alg1(family: Family, key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1 (CBC-MAC, zero IV): the last CBC block, untruncated."""
    padded = _pad(data, BLOCK_SIZE[family], padding)
    size = BLOCK_SIZE[family]
    return encrypt_cbc(family, key, padded)[-size:]


def mac_iso9797_alg3(key: bytes, data: bytes, padding: int = 1) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 (ANSI X9.19 retail MAC) with a 2-key TDES key K1||K2.

    Single-DES CBC under K1 over all but the last block, then the last chained block goes through
    E_K1(D_K2(E_K1(.))), which is exactly one 2-key TDES encryption.
    """
    if len(key) != 16:
        raise ValueError("MAC algorithm 3 needs a 2-key TDES key")
    padded = _pad(data, 8, padding)
    head, last = padded[:-8], padded[-8:]
    chain = encrypt_cbc("TDES", key[:8], head)[-8:] if head else _ZERO[8]
    return encrypt_ecb("TDES", key, xor(chain, last))


@lru_cache(maxsize=_CACHE)
def _cmac_ctx(family: str, key: bytes) -> _cmac.CMAC:
    return _cmac.CMAC(_algorithm(family, key))


def cmac(family: Family, key: bytes, data: bytes) -> bytes:
    """CMAC (NIST SP 800-38B, = ISO/IEC 9797-1 MAC algorithm 5), full block length."""
    ctx = _cmac_ctx(family, key).copy()
    ctx.update(data)
    return ctx.finalize()


@lru_cache(maxsize=_CACHE)
def _hmac_ctx(hash_name: str, key: bytes) -> _hmac.HMAC:
    return _hmac.HMAC(key, _HASHES[hash_name]())


def hmac(hash_name: str, key: bytes, data: bytes) -> bytes:
    """HMAC (RFC 2104 / ISO/IEC 9797-2 MAC algorithm 2); hash_name is SHA224, SHA256, SHA384 or SHA512."""
    if hash_name not in _HASHES:
        raise ValueError("unsupported HMAC hash")
    ctx = _hmac_ctx(hash_name, key).copy()
    ctx.update(data)
    return ctx.finalize()


def decimalize(hex_digits: str) -> str:
    """Decimal digits of a hex string in order, then its A-F digits minus 10 (Visa CVV/PVV method)."""
    digits = [c for c in hex_digits if c.isdigit()]
    digits += [str(int(c, 16) - 10) for c in hex_digits if not c.isdigit()]
    return "".join(digits)
