"""EMV application cryptograms: ICC master keys, session keys, ARQC and ARPC (EMV 4.4 Book 2).

- ICC master key (Annex A1.4): option A enciphers Y = rightmost 16 digits of PAN || PSN (zero
  padded on the left) and its complement under the issuer master key; option B, for PANs longer
  than 16 digits, first decimalizes SHA-1(PAN || PSN). Results get odd parity.
- Session keys (A1.3.1 common session key derivation): SK = E_MK(R with byte 2 = F0) ||
  E_MK(R with byte 2 = 0F) for an 8-byte diversification value R. EMV CSK uses R = ATC || 0^6;
  Mastercard SKD uses R = ATC || 00 00 || UN. Visa CVN10 and Amex use the ICC master key itself.
- ARQC (8.1.2): ISO/IEC 9797-1 MAC algorithm 3 over the transaction data under the AC key.
- ARPC method 1 (8.2.1): E_K(ARQC XOR (ARC || 0^6)); method 2 (8.2.2): 4-byte MAC algorithm 3,
  padding method 2, over ARQC || CSU || proprietary authentication data.
"""

from __future__ import annotations

import hashlib

from hsmlb.payments.primitives import adjust_parity, encrypt_ecb, mac_iso9797_alg3, xor

_FF8 = b"\xff" * 8
_DECIMALIZE_AF = str.maketrans("abcdef", "012345")


def _check_card(imk: bytes, pan: str, psn: str) -> None:
    if len(imk) != 16:
        raise ValueError("issuer master key must be a 2-key TDES key")
    if not (pan.isdigit() and pan.isascii()):
        raise ValueError("PAN must be decimal digits")
    if not (len(psn) == 2 and psn.isdigit() and psn.isascii()):
        raise ValueError("PAN sequence number must be 2 digits")


def _from_y(imk: bytes, y: bytes) -> bytes:
    return adjust_parity(encrypt_ecb("TDES", imk, y + xor(y, _FF8)))  # IMK: long-lived, cached


def icc_master_key_option_a(imk: bytes, pan: str, psn: str = "00") -> bytes:
    """EMV Book 2 A1.4.1: Y = rightmost 16 digits of PAN || PSN, left zero-padded."""
    _check_card(imk, pan, psn)
    return _from_y(imk, bytes.fromhex((pan + psn)[-16:].rjust(16, "0")))


def icc_master_key_option_b(imk: bytes, pan: str, psn: str = "00") -> bytes:
    """EMV Book 2 A1.4.2: option A up to 16 PAN digits, else decimalized SHA-1 of PAN || PSN."""
    _check_card(imk, pan, psn)
    if len(pan) <= 16:
        return icc_master_key_option_a(imk, pan, psn)
    digits = pan + psn
    digest = hashlib.sha1(bytes.fromhex(digits.rjust(len(digits) + len(digits) % 2, "0"))).hexdigest()
    result = "".join(c for c in digest if c.isdigit())[:16]
    if len(result) < 16:
        letters = "".join(c for c in digest if not c.isdigit())
        result += letters.translate(_DECIMALIZE_AF)[: 16 - len(result)]
    return _from_y(imk, bytes.fromhex(result))


def icc_master_key(imk: bytes, pan: str, psn: str, option: str) -> bytes:
    if option == "A":
        return icc_master_key_option_a(imk, pan, psn)
    if option == "B":
        return icc_master_key_option_b(imk, pan, psn)
    raise ValueError("master key derivation option must be A or B")


def session_key_common(icc_mk: bytes, r: bytes) -> bytes:
    """EMV Book 2 A1.3.1 common session key derivation from an 8-byte diversification value."""
    if len(icc_mk) != 16 or len(r) != 8:
        raise ValueError("session key derivation needs a 16-byte key and an 8-byte R")
    left = r[:2] + b"\xf0" + r[3:]
    right = r[:2] + b"\x0f" + r[3:]
    return adjust_parity(encrypt_ecb("TDES", icc_mk, left + right, cache=False))


def session_key_emv_common(icc_mk: bytes, atc: bytes) -> bytes:
    """EMV CSK: R = ATC || 00 00 00 00 00 00."""
    if len(atc) != 2:
        raise ValueError("ATC must be 2 bytes")
    return session_key_common(icc_mk, atc + bytes(6))


def session_key_mastercard(icc_mk: bytes, atc: bytes, unpredictable_number: bytes) -> bytes:
    """Mastercard session key derivation (M/Chip SKD): R = ATC || 00 00 || UN."""
    if len(atc) != 2 or len(unpredictable_number) != 4:
        raise ValueError("ATC must be 2 bytes and the unpredictable number 4 bytes")
    return session_key_common(icc_mk, atc + b"\x00\x00" + unpredictable_number)


def application_cryptogram(session_key: bytes, data: bytes, padding: int = 2) -> bytes:
    """ARQC/TC/AAC: 8-byte MAC algorithm 3 (padding 1 = zeros as in Visa CVN10, 2 = EMV 80 00..)."""
    return mac_iso9797_alg3(session_key, data, padding)


def arpc_method_1(key: bytes, arqc: bytes, arc: bytes) -> bytes:
    """EMV Book 2 8.2.1: ARPC = 3DES_K(ARQC XOR (ARC || 0^6)), 8 bytes."""
    if len(arqc) != 8 or len(arc) != 2:
        raise ValueError("ARQC must be 8 bytes and the authorisation response code 2 bytes")
    return encrypt_ecb("TDES", key, xor(arqc, arc + bytes(6)))


def arpc_method_2(key: bytes, arqc: bytes, csu: bytes, proprietary: bytes = b"") -> bytes:
    """EMV Book 2 8.2.2: ARPC = leftmost 4 bytes of MAC alg 3 (pad 2) over ARQC || CSU || PAD."""
    if len(arqc) != 8 or len(csu) != 4 or len(proprietary) > 8:
        raise ValueError("ARQC must be 8 bytes, CSU 4 bytes, proprietary data at most 8 bytes")
    return mac_iso9797_alg3(key, arqc + csu + proprietary, 2)[:4]
