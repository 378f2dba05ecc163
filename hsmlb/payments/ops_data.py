"""EncryptData / DecryptData / ReEncryptData with symmetric data keys or DUKPT data keys.

Symmetric: a TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY (TDES or AES), ECB or CBC. DUKPT: a
TR31_B0_BASE_DERIVATION_KEY and a KSN; the data key is the X9.24-1 data variant (request or
response, with the 2009 one-way step) or the X9.24-3 data encryption key (encrypt, decrypt or
both ways), and Mode defaults to CBC. Per the APC data-plane model a missing IV is all zeros,
and no padding is applied: the data must be whole cipher blocks. CFB/OFB modes, asymmetric and
EMV-derived keys are not supported and fail naming the member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hsmlb.payments import _request as rq
from hsmlb.payments.primitives import BLOCK_SIZE, Family, decrypt_cbc, decrypt_ecb, encrypt_cbc, encrypt_ecb
from hsmlb.payments.types import KeyResolver

_MODES = ("ECB", "CBC")
_ALL_MODES = ("ECB", "CBC", "CFB", "CFB1", "CFB8", "CFB64", "CFB128", "OFB")


class _Spec:
    """A resolved cipher: family, key bytes, mode and IV."""

    __slots__ = ("family", "iv", "key", "mode")

    def __init__(self, family: Family, key: bytes, mode: str, iv: bytes | None) -> None:
        self.family, self.key, self.mode, self.iv = family, key, mode, iv

    def encrypt(self, data: bytes) -> bytes:
        if self.mode == "ECB":
            return encrypt_ecb(self.family, self.key, data)
        return encrypt_cbc(self.family, self.key, data, self.iv)

    def decrypt(self, data: bytes) -> bytes:
        if self.mode == "ECB":
            return decrypt_ecb(self.family, self.key, data)
        return decrypt_cbc(self.family, self.key, data, self.iv)


def _spec(params: Mapping[str, Any], resolve: KeyResolver, key_name: str, attrs_name: str) -> _Spec:
    member, attrs, path = rq.union(params, attrs_name, attrs_name, ("Symmetric", "Dukpt"))
    if member == "Symmetric":
        key = rq.key(resolve, params, key_name, ("TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY",), rq.BLOCK_CIPHERS)
        mode = rq.string(attrs, "Mode", f"{path}.Mode", choices=_ALL_MODES)
        if attrs.get("PaddingType") is not None:
            raise rq.not_supported(f"{path}.PaddingType")
        family, material = rq.family(key.algorithm), key.material
    else:
        bdk = rq.key(resolve, params, key_name, ("TR31_B0_BASE_DERIVATION_KEY",), ("TDES_2KEY", *rq.AES))
        mode = rq.string(attrs, "Mode", f"{path}.Mode", required=False, choices=_MODES) or "CBC"
        _, family, material = rq.dukpt_key(bdk, attrs, path, "DATA")
    if mode not in _MODES:
        raise rq.not_supported(f"{path}.Mode")
    iv = rq.hexbytes(attrs, "InitializationVector", f"{path}.InitializationVector", lengths=(8, 16), required=False)
    if iv is not None and mode == "CBC" and len(iv) != BLOCK_SIZE[family]:
        raise rq.invalid(f"{path}.InitializationVector", "must be one cipher block long")
    assert mode is not None
    return _Spec(family, material, mode, iv)


def _blocks(data: bytes, spec: _Spec, path: str) -> bytes:
    if len(data) % BLOCK_SIZE[spec.family]:
        raise rq.invalid(path, "must be a multiple of the cipher block size (no padding is applied)")
    return data


def encrypt_data(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    spec = _spec(params, resolve, "KeyIdentifier", "EncryptionAttributes")
    data = rq.hexbytes(params, "PlainText", "PlainText", lo=1, hi=2048)
    assert data is not None
    return {"CipherText": spec.encrypt(_blocks(data, spec, "PlainText")).hex().upper()}


def decrypt_data(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    spec = _spec(params, resolve, "KeyIdentifier", "DecryptionAttributes")
    data = rq.hexbytes(params, "CipherText", "CipherText", lo=1, hi=2112)
    assert data is not None
    return {"PlainText": spec.decrypt(_blocks(data, spec, "CipherText")).hex().upper()}


def re_encrypt_data(params: Mapping[str, Any], resolve: KeyResolver) -> dict[str, Any]:
    incoming = _spec(params, resolve, "IncomingKeyIdentifier", "IncomingEncryptionAttributes")
    outgoing = _spec(params, resolve, "OutgoingKeyIdentifier", "OutgoingEncryptionAttributes")
    data = rq.hexbytes(params, "CipherText", "CipherText", lo=1, hi=2112)
    assert data is not None
    clear = incoming.decrypt(_blocks(data, incoming, "CipherText"))
    return {"CipherText": outgoing.encrypt(_blocks(clear, outgoing, "CipherText")).hex().upper()}
