"""Proto <-> Operation. All input validation lives here, before anything is routed.

Error messages name the field and the rule, never the value: a bad field may hold a PAN or key.
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Callable
from typing import Any

from hsmlb.errors import InvalidArgument
from hsmlb.ops import CostClass, KeyInfo, Operation, OpKind
from hsmlb.v1 import hsmlb_pb2 as pb

MAX_KEY_IDENTIFIER = 322  # APC KeyArnOrKeyAliasType
MAX_DATA_HEX = 8192
SUPPORTED_MODES = {pb.ECB: "ECB", pb.CBC: "CBC"}
MAC_ALGORITHMS = {pb.CMAC: "CMAC", pb.HMAC_SHA224: "HMAC_SHA224", pb.HMAC_SHA256: "HMAC_SHA256",
                  pb.HMAC_SHA384: "HMAC_SHA384", pb.HMAC_SHA512: "HMAC_SHA512"}
MAC_FULL_LENGTH = {"CMAC": 16, "HMAC_SHA224": 28, "HMAC_SHA256": 32, "HMAC_SHA384": 48, "HMAC_SHA512": 64}
SIGNING = {pb.RSASSA_PKCS1_V1_5_SHA_256: ("RSASSA_PKCS1_V1_5_SHA_256", CostClass.RSA),
           pb.RSASSA_PSS_SHA_256: ("RSASSA_PSS_SHA_256", CostClass.RSA),
           pb.ECDSA_SHA_256: ("ECDSA_SHA_256", CostClass.ECDSA)}


def unhex(field: str, value: str, *, min_bytes: int = 0, max_hex: int = MAX_DATA_HEX, multiple: int = 1) -> bytes:
    if len(value) > max_hex:
        raise InvalidArgument(f"{field}: longer than {max_hex} hex characters")
    try:
        data = binascii.unhexlify(value)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{field}: must be an even number of hex digits (0-9, A-F)") from None
    if len(data) < min_bytes:
        raise InvalidArgument(f"{field}: must be at least {min_bytes} bytes ({2 * min_bytes} hex characters)")
    if len(data) % multiple:
        raise InvalidArgument(f"{field}: length must be a multiple of {multiple} bytes for this mode")
    return data


def key_identifier(value: str) -> str:
    if not value:
        raise InvalidArgument("key_identifier: required")
    if len(value) > MAX_KEY_IDENTIFIER or not value.isprintable():
        raise InvalidArgument(f"key_identifier: must be 1-{MAX_KEY_IDENTIFIER} printable characters")
    return value


def _cipher(req: Any, data_field: str, attrs_field: str, kind: OpKind) -> Operation:
    attrs = getattr(req, attrs_field)
    if attrs.WhichOneof("attributes") != "symmetric":
        raise InvalidArgument(f"{attrs_field}: symmetric attributes are required")
    symmetric = attrs.symmetric
    mode = SUPPORTED_MODES.get(symmetric.mode)
    if mode is None:
        name = pb.EncryptionMode.Name(symmetric.mode) if symmetric.mode in pb.EncryptionMode.values() \
            else str(symmetric.mode)
        raise InvalidArgument(f"{attrs_field}.symmetric.mode: {name} is not supported (supported: ECB, CBC)")
    iv = b""
    if mode == "CBC":
        iv = unhex(f"{attrs_field}.symmetric.initialization_vector", symmetric.initialization_vector,
                   min_bytes=8, max_hex=32)
        if len(iv) not in (8, 16):
            raise InvalidArgument(f"{attrs_field}.symmetric.initialization_vector: must be 8 (TDES) or 16 (AES) bytes")
    elif symmetric.initialization_vector:
        raise InvalidArgument(f"{attrs_field}.symmetric.initialization_vector: not allowed with ECB")
    data = unhex(data_field, getattr(req, data_field), min_bytes=8, multiple=8)
    return Operation(kind, key_identifier(req.key_identifier), (mode, iv, data))


def _mac_algorithm(attrs: Any, field: str) -> str:
    if attrs.WhichOneof("attributes") != "algorithm":
        raise InvalidArgument(f"{field}.algorithm: required")
    algorithm = MAC_ALGORITHMS.get(attrs.algorithm)
    if algorithm is None:
        raise InvalidArgument(f"{field}.algorithm: {pb.MacAlgorithm.Name(attrs.algorithm)} is not supported "
                              f"(supported: {', '.join(MAC_ALGORITHMS.values())})"
                              if attrs.algorithm in pb.MacAlgorithm.values()
                              else f"{field}.algorithm: unknown value {attrs.algorithm}")
    return algorithm


def _mac_length(value: int, algorithm: str) -> int | None:
    """The requested truncation; None (value 0) means the whole MAC, whose length may depend on the key.

    The bound here is the algorithm's longest MAC (CMAC: 16, AES); the router checks the key's own
    (CMAC with a TDES key: 8), as only it knows the key.
    """
    full = MAC_FULL_LENGTH[algorithm]
    if value == 0:
        return None
    if not 4 <= value <= full:
        raise InvalidArgument(f"mac_length: must be 4-{full} bytes for {algorithm}"
                              + (" (4-8 with a TDES key)" if algorithm == "CMAC" else ""))
    return value


def _signing(value: int) -> tuple[str, CostClass]:
    if value not in SIGNING:
        raise InvalidArgument(
            "signing_algorithm: must be RSASSA_PKCS1_V1_5_SHA_256, RSASSA_PSS_SHA_256 or ECDSA_SHA_256")
    return SIGNING[value]


def decode_encrypt(req: pb.EncryptDataRequest) -> Operation:
    return _cipher(req, "plain_text", "encryption_attributes", OpKind.ENCRYPT)


def decode_decrypt(req: pb.DecryptDataRequest) -> Operation:
    return _cipher(req, "cipher_text", "decryption_attributes", OpKind.DECRYPT)


def decode_generate_mac(req: pb.GenerateMacRequest) -> Operation:
    algorithm = _mac_algorithm(req.generation_attributes, "generation_attributes")
    length = _mac_length(req.mac_length, algorithm)
    data = unhex("message_data", req.message_data, min_bytes=1)
    return Operation(OpKind.GENERATE_MAC, key_identifier(req.key_identifier), (algorithm, data, length))


def decode_verify_mac(req: pb.VerifyMacRequest) -> Operation:
    algorithm = _mac_algorithm(req.verification_attributes, "verification_attributes")
    mac = unhex("mac", req.mac, min_bytes=4, max_hex=128)
    length = _mac_length(req.mac_length or len(mac), algorithm)
    if len(mac) != length:
        raise InvalidArgument("mac: length does not match mac_length")
    data = unhex("message_data", req.message_data, min_bytes=1)
    return Operation(OpKind.VERIFY_MAC, key_identifier(req.key_identifier), (algorithm, data, mac))


def decode_sign(req: pb.SignRequest) -> Operation:
    algorithm, cost = _signing(req.signing_algorithm)
    message = unhex("message", req.message, min_bytes=1)
    return Operation(OpKind.SIGN, key_identifier(req.key_identifier), (algorithm, message), cost=cost)


def decode_verify(req: pb.VerifyRequest) -> Operation:
    algorithm, cost = _signing(req.signing_algorithm)
    message = unhex("message", req.message, min_bytes=1)
    signature = unhex("signature", req.signature, min_bytes=8, max_hex=1024)
    return Operation(OpKind.VERIFY, key_identifier(req.key_identifier), (algorithm, message, signature), cost=cost)


def decode_random(req: pb.GenerateRandomRequest) -> Operation:
    if not 1 <= req.number_of_bytes <= 1024:
        raise InvalidArgument("number_of_bytes: must be 1-1024")
    return Operation(OpKind.RANDOM, None, (req.number_of_bytes,))


def _hex(data: bytes) -> str:
    return data.hex().upper()


def _arn(key: KeyInfo | None) -> str:
    return key.alias if key else ""


def _kcv(key: KeyInfo | None) -> str:
    return key.kcv if key else ""


def encode_encrypt(op: Operation, result: bytes, key: KeyInfo | None) -> pb.EncryptDataResponse:
    return pb.EncryptDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), cipher_text=_hex(result))


def encode_decrypt(op: Operation, result: bytes, key: KeyInfo | None) -> pb.DecryptDataResponse:
    return pb.DecryptDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), plain_text=_hex(result))


def encode_generate_mac(op: Operation, result: bytes, key: KeyInfo | None) -> pb.GenerateMacResponse:
    return pb.GenerateMacResponse(key_arn=_arn(key), key_check_value=_kcv(key), mac=_hex(result[: op.args[2]]))


def encode_verify_mac(op: Operation, result: bytes, key: KeyInfo | None) -> pb.VerifyMacResponse:
    expected = op.args[2]
    ok = hmac.compare_digest(result[: len(expected)], expected)
    return pb.VerifyMacResponse(key_arn=_arn(key), key_check_value=_kcv(key), verified=ok,
                                reason="" if ok else "INVALID_MAC")


def encode_sign(op: Operation, result: bytes, key: KeyInfo | None) -> pb.SignResponse:
    return pb.SignResponse(key_arn=_arn(key), signature=_hex(result),
                           signing_algorithm=pb.SigningAlgorithm.Value(op.args[0]))


def encode_verify(op: Operation, result: bool, key: KeyInfo | None) -> pb.VerifyResponse:
    return pb.VerifyResponse(key_arn=_arn(key), verified=bool(result), reason="" if result else "INVALID_SIGNATURE")


def encode_random(op: Operation, result: bytes, key: KeyInfo | None) -> pb.GenerateRandomResponse:
    return pb.GenerateRandomResponse(random=_hex(result))


Decoder = Callable[[Any], Operation]
Encoder = Callable[[Operation, Any, KeyInfo | None], Any]
