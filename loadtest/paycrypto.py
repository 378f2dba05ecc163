"""Client-side payment cryptography for building valid requests: CVV, EMV ARQC, encrypted PIN blocks.

Why here: verifications (CVV, ARQC) and PIN translation need inputs made under the dev keys, and
a load test must send correct ones, or every verification is a failure. The dev keys are public
test material (hsmlb/dev/dev-keys.yaml); nothing here is ever used with real keys. Checked against
the public vectors in tests/vectors/public_kat.json.

Deliberately not hsmlb.payments: the load generator builds its inputs with code of its own, so a
wrong engine shows up as failed verifications in the load test instead of agreeing with itself.
"""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes


def _tdes_ecb(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    """TDES ECB; a 16-byte key is K1K2 (K3 = K1), an 8-byte key is single DES."""
    if len(key) not in (8, 16, 24):
        raise ValueError("TDES key: 8, 16 or 24 bytes")
    full = key * 3 if len(key) == 8 else key + key[:8] if len(key) == 16 else key
    cipher = Cipher(TripleDES(full), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def des_ecb(key8: bytes, block: bytes, decrypt: bool = False) -> bytes:
    return _tdes_ecb(key8, block, decrypt)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def cvv(cvk: bytes, pan: str, expiry: str, service_code: str, digits: int = 3) -> str:
    """Visa CVV/CVC (also CVV2 with service code 000, iCVV with 999), X9.8-style on a 2-key TDES CVK."""
    ka, kb = cvk[:8], cvk[8:16]
    data = (pan + expiry + service_code).ljust(32, "0")
    b1, b2 = bytes.fromhex(data[:16]), bytes.fromhex(data[16:32])
    step = des_ecb(ka, b1)
    step = des_ecb(ka, _xor(step, b2))
    step = des_ecb(kb, step, decrypt=True)
    step = des_ecb(ka, step)
    hexed = step.hex().upper()
    decimal = "".join(c for c in hexed if c.isdigit())
    extra = "".join(str(int(c, 16) - 10) for c in hexed if not c.isdigit())
    return (decimal + extra)[:digits]


def _odd_parity(key: bytes) -> bytes:
    return bytes(b & 0xFE | (bin(b & 0xFE).count("1") + 1) % 2 for b in key)


def icc_master_key_option_a(imk: bytes, pan: str, psn: str) -> bytes:
    """EMV Book 2 A1.4.1 option A: Y = rightmost 16 digits of PAN || PSN; MK = E(Y) || E(Y xor FF..)."""
    y = bytes.fromhex((pan + (psn or "00"))[-16:].rjust(16, "0"))
    left = _tdes_ecb(imk, y)
    right = _tdes_ecb(imk, _xor(y, b"\xff" * 8))
    return _odd_parity(left + right)


def common_session_key(mk: bytes, r: bytes) -> bytes:
    """EMV Book 2 A1.3.1 common session key derivation; R is ATC || 00..00 for the application cryptogram."""
    left = _tdes_ecb(mk, r[:2] + b"\xf0" + r[3:8])
    right = _tdes_ecb(mk, r[:2] + b"\x0f" + r[3:8])
    return _odd_parity(left + right)


def pad_method_2(data: bytes) -> bytes:
    """ISO 9797-1 padding method 2 (80 00..), as most EMV schemes pad CDOL1 data before the MAC."""
    return data + b"\x80" + b"\x00" * ((7 - len(data) % 8) % 8)


def iso9797_alg3(key: bytes, data: bytes, pad: bool = True) -> bytes:
    """ISO 9797-1 MAC algorithm 3 (retail MAC); padding method 2 unless the data is already padded."""
    padded = pad_method_2(data) if pad else data
    if len(padded) % 8:
        raise ValueError("data: whole 8-byte blocks when pad=False")
    ka, kb = key[:8], key[8:16]
    state = b"\x00" * 8
    for i in range(0, len(padded), 8):
        state = des_ecb(ka, _xor(state, padded[i:i + 8]))
    return des_ecb(ka, des_ecb(kb, state, decrypt=True))


def arqc(imk: bytes, pan: str, psn: str, atc: str, padded_data: str) -> str:
    """ARQC as a card computes it: option A ICC MK, EMV common session key on the ATC, retail MAC over
    the transaction data as padded by the scheme (APC MACs TransactionData as sent)."""
    mk = icc_master_key_option_a(imk, pan, psn)
    sk = common_session_key(mk, bytes.fromhex(atc) + b"\x00" * 6)
    return iso9797_alg3(sk, bytes.fromhex(padded_data), pad=False).hex().upper()


def kcv(key: bytes) -> str:
    """Key check value of a TDES key: E(zero block), first 2 bytes (as the EMV vectors quote it)."""
    return _tdes_ecb(key, b"\x00" * 8)[:2].hex().upper()


def encrypt_pin_block(pek: bytes, clear_block_hex: str) -> str:
    """A clear ISO-0 block under a TDES PEK, as a terminal or acquirer sends it."""
    return _tdes_ecb(pek, bytes.fromhex(clear_block_hex)).hex().upper()
