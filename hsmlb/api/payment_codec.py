"""Payment operations: proto <-> the botocore input dict that every backend kind takes.

Proto names mirror APC's members in snake_case, so one walk turns a request into the
payment-cryptography-data input dict; it is validated against botocore's own service model,
so the daemon refuses exactly what APC would, with the same field paths.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from hsmlb.apc.model import validate_apc
from hsmlb.api.codec import (
    _arn,
    _kcv,
    decode_decrypt,
    decode_encrypt,
    decode_generate_mac,
    decode_verify_mac,
    encode_decrypt,
    encode_encrypt,
    encode_generate_mac,
    encode_verify_mac,
)
from hsmlb.ops import VERIFICATION_FAILED, Capability, KeyInfo, Operation, OpKind
from hsmlb.v1 import hsmlb_pb2 as pb

MAC_PAYMENT_ALGORITHMS = {pb.ISO9797_ALGORITHM1, pb.ISO9797_ALGORITHM3}


@cache
def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def apc_params(message: Any) -> dict[str, Any]:
    """The botocore input dict. An enum number outside the proto's enum (proto3 enums are open) passes
    as its digits, and validate_apc refuses it with APC's own message and field path."""
    params: dict[str, Any] = {}
    for field, value in message.ListFields():
        name = _pascal(field.name)
        if field.type == field.TYPE_MESSAGE:
            params[name] = apc_params(value)
        elif field.type == field.TYPE_ENUM:
            known = field.enum_type.values_by_number.get(value)
            params[name] = known.name if known is not None else str(value)
        else:
            params[name] = value
    return params


def _payment(kind: OpKind, operation: str, req: Any, capability: str = "") -> Operation:
    params = apc_params(req)
    validate_apc(operation, params)
    if "OutgoingKeyIdentifier" in params:
        key, other = params["OutgoingKeyIdentifier"], (params["IncomingKeyIdentifier"],)
    else:
        key, other = params["KeyIdentifier"], ()
    return Operation(kind, key, (operation, params), capability=capability, other_keys=other)


def _attributes_kind(attrs: Any) -> str | None:
    return attrs.WhichOneof("attributes")


def decode_encrypt_any(req: pb.EncryptDataRequest) -> Operation:
    if _attributes_kind(req.encryption_attributes) == "dukpt":
        return _payment(OpKind.ENCRYPT, "EncryptData", req, Capability.DUKPT)
    return decode_encrypt(req)


def decode_decrypt_any(req: pb.DecryptDataRequest) -> Operation:
    if _attributes_kind(req.decryption_attributes) == "dukpt":
        return _payment(OpKind.DECRYPT, "DecryptData", req, Capability.DUKPT)
    return decode_decrypt(req)


def _mac_capability(attrs: Any) -> str:
    which = _attributes_kind(attrs)
    if which and which.startswith("dukpt"):
        return Capability.DUKPT
    if which == "algorithm" and attrs.algorithm in MAC_PAYMENT_ALGORITHMS:
        return Capability.ISO9797_MAC
    return ""


def decode_generate_mac_any(req: pb.GenerateMacRequest) -> Operation:
    capability = _mac_capability(req.generation_attributes)
    if capability:
        return _payment(OpKind.GENERATE_MAC, "GenerateMac", req, capability)
    return decode_generate_mac(req)


def decode_verify_mac_any(req: pb.VerifyMacRequest) -> Operation:
    capability = _mac_capability(req.verification_attributes)
    if capability:
        return _payment(OpKind.VERIFY_MAC, "VerifyMac", req, capability)
    return decode_verify_mac(req)


def decode_reencrypt(req: pb.ReEncryptDataRequest) -> Operation:
    sides = (_attributes_kind(req.incoming_encryption_attributes), _attributes_kind(req.outgoing_encryption_attributes))
    return _payment(OpKind.REENCRYPT, "ReEncryptData", req, Capability.DUKPT if "dukpt" in sides else "")


def decode_generate_card_validation(req: pb.GenerateCardValidationDataRequest) -> Operation:
    return _payment(OpKind.GENERATE_CARD_VALIDATION, "GenerateCardValidationData", req, Capability.CARD_VALIDATION)


def decode_verify_card_validation(req: pb.VerifyCardValidationDataRequest) -> Operation:
    return _payment(OpKind.VERIFY_CARD_VALIDATION, "VerifyCardValidationData", req, Capability.CARD_VALIDATION)


def decode_translate_pin(req: pb.TranslatePinDataRequest) -> Operation:
    return _payment(OpKind.TRANSLATE_PIN, "TranslatePinData", req, Capability.PIN_TRANSLATION)


def decode_verify_arqc(req: pb.VerifyAuthRequestCryptogramRequest) -> Operation:
    return _payment(OpKind.VERIFY_ARQC, "VerifyAuthRequestCryptogram", req, Capability.EMV_CRYPTOGRAM)


def _verdict(result: dict[str, Any]) -> tuple[bool, str]:
    """(verified, reason); backends pass on only APC's enum names (see backends/apc.py)."""
    reason = result.get(VERIFICATION_FAILED, "")
    return not reason, reason


def encode_encrypt_any(op: Operation, result: Any, key: KeyInfo | None) -> pb.EncryptDataResponse:
    if op.apc:
        return pb.EncryptDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), cipher_text=result["CipherText"])
    return encode_encrypt(op, result, key)


def encode_decrypt_any(op: Operation, result: Any, key: KeyInfo | None) -> pb.DecryptDataResponse:
    if op.apc:
        return pb.DecryptDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), plain_text=result["PlainText"])
    return encode_decrypt(op, result, key)


def encode_generate_mac_any(op: Operation, result: Any, key: KeyInfo | None) -> pb.GenerateMacResponse:
    if op.apc:
        return pb.GenerateMacResponse(key_arn=_arn(key), key_check_value=_kcv(key), mac=result["Mac"])
    return encode_generate_mac(op, result, key)


def encode_verify_mac_any(op: Operation, result: Any, key: KeyInfo | None) -> pb.VerifyMacResponse:
    if op.apc:
        ok, reason = _verdict(result)
        return pb.VerifyMacResponse(key_arn=_arn(key), key_check_value=_kcv(key), verified=ok, reason=reason)
    return encode_verify_mac(op, result, key)


def encode_reencrypt(op: Operation, result: dict, key: KeyInfo | None) -> pb.ReEncryptDataResponse:
    return pb.ReEncryptDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), cipher_text=result["CipherText"])


def encode_generate_card_validation(op: Operation, result: dict,
                                    key: KeyInfo | None) -> pb.GenerateCardValidationDataResponse:
    return pb.GenerateCardValidationDataResponse(key_arn=_arn(key), key_check_value=_kcv(key),
                                                 validation_data=result["ValidationData"])


def encode_verify_card_validation(op: Operation, result: dict,
                                  key: KeyInfo | None) -> pb.VerifyCardValidationDataResponse:
    ok, reason = _verdict(result)
    return pb.VerifyCardValidationDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), verified=ok,
                                               reason=reason)


def encode_translate_pin(op: Operation, result: dict, key: KeyInfo | None) -> pb.TranslatePinDataResponse:
    return pb.TranslatePinDataResponse(key_arn=_arn(key), key_check_value=_kcv(key), pin_block=result["PinBlock"])


def encode_verify_arqc(op: Operation, result: dict, key: KeyInfo | None) -> pb.VerifyAuthRequestCryptogramResponse:
    ok, reason = _verdict(result)
    return pb.VerifyAuthRequestCryptogramResponse(
        key_arn=_arn(key), key_check_value=_kcv(key), verified=ok, reason=reason,
        auth_response_value=result.get("AuthResponseValue", ""))
