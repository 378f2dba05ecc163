"""Planted sensitive values for the dynamic audit (tests/test_hunt_sensitive.py): distinctive PANs,
PIN blocks and key hex in every spelling, requests with them in every string field, and the detector
that finds any of them (or any long digit/hex run not known to be safe) in captured text."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from hsmlb.payments import pinblock
from hsmlb.payments import primitives as P
from hsmlb.v1 import hsmlb_pb2 as pb
from loadtest.payloads import luhn_check_digit
from tests._payment_common import MATERIAL, h, iso_format
from tests.conftest import sym

PAN16 = "492917350264123" + luhn_check_digit("492917350264123")
PAN19 = "622126001234567890" + luhn_check_digit("622126001234567890")
PIN = "58204173"
PIN_BLOCK = "04127AC3E59BDF68"
KEY32 = "5C1E9A7F3B0D2486E4A8C6F0B2D4E6A1"
PANS = (PAN16, PAN19)
CLEAR_BLOCK = h(pinblock.encode_iso0(PIN, PAN16))
ZONE_BLOCK = h(P.encrypt_ecb("TDES", MATERIAL["alias/pek-tdes"], bytes.fromhex(CLEAR_BLOCK)))
SECRETS = {"PIN block": PIN_BLOCK, "key": KEY32, "clear ISO-0 block": CLEAR_BLOCK, "ISO-0 under pek-tdes": ZONE_BLOCK,
           **{f"material {a}": h(m) for a, m in MATERIAL.items()}}
FULLWIDTH = "".join(chr(0xFF10 + int(c)) for c in PAN19)
# Each planted spelling: as is, wrong length, non-hex, separated, full-width digits, over every limit.
VARIANTS = (PAN16, PAN19, PIN_BLOCK, KEY32, PAN16 + "Z", PIN_BLOCK[:-1], f"{PAN16[:4]} {PAN16[4:8]}-{PAN16[8:]}",
            FULLWIDTH, "é" + PAN16, KEY32 * 20, "C" + PAN16, "AC3E59BDF6804127")  # letter-led too


def base_requests() -> dict[str, Any]:
    """One well-formed request per RPC, carrying the planted values where the field takes them."""
    cvv = pb.CardGenerationAttributes(card_verification_value1=pb.CardVerificationValue1(
        card_expiry_date="2712", service_code="101"))
    mac = pb.MacAttributes(algorithm=pb.CMAC)
    return {
        "EncryptData": pb.EncryptDataRequest(key_identifier="alias/zek-aes128", plain_text=KEY32,
                                             encryption_attributes=sym(pb.ECB)),
        "DecryptData": pb.DecryptDataRequest(key_identifier="alias/zek-aes128", cipher_text=KEY32,
                                             decryption_attributes=sym(pb.ECB)),
        "GenerateMac": pb.GenerateMacRequest(key_identifier="alias/cmac-aes128", message_data=PIN_BLOCK,
                                             generation_attributes=mac),
        "VerifyMac": pb.VerifyMacRequest(key_identifier="alias/cmac-aes128", message_data=PIN_BLOCK, mac="00000000",
                                         verification_attributes=mac),
        "Sign": pb.SignRequest(key_identifier="alias/sign-ec", message=PIN_BLOCK, signing_algorithm=pb.ECDSA_SHA_256),
        "Verify": pb.VerifyRequest(key_identifier="alias/sign-ec", message=PIN_BLOCK, signature="00" * 70,
                                   signing_algorithm=pb.ECDSA_SHA_256),
        "ReEncryptData": pb.ReEncryptDataRequest(
            incoming_key_identifier="alias/zek-aes128", outgoing_key_identifier="alias/dek-aes256", cipher_text=KEY32,
            incoming_encryption_attributes=pb.ReEncryptionAttributes(symmetric=sym(pb.ECB).symmetric),
            outgoing_encryption_attributes=pb.ReEncryptionAttributes(symmetric=sym(pb.ECB).symmetric)),
        "GenerateCardValidationData": pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=PAN16, generation_attributes=cvv),
        "VerifyCardValidationData": pb.VerifyCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=PAN19, verification_attributes=cvv,
            validation_data="123"),
        "TranslatePinData": pb.TranslatePinDataRequest(
            incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/pek-tdes3",
            incoming_translation_attributes=iso_format(0, PAN16), outgoing_translation_attributes=iso_format(0, PAN16),
            encrypted_pin_block=ZONE_BLOCK),
        "VerifyAuthRequestCryptogram": pb.VerifyAuthRequestCryptogramRequest(
            key_identifier="alias/imk-ac", transaction_data="00" * 8 + PAN16, auth_request_cryptogram=PIN_BLOCK,
            major_key_derivation_mode=pb.EMV_OPTION_A, session_key_derivation_attributes=pb.SessionKeyDerivation(
                visa=pb.SessionKeyVisa(primary_account_number=PAN19, pan_sequence_number="01")),
            auth_response_attributes=pb.CryptogramAuthResponse(
                arpc_method1=pb.CryptogramVerificationArpcMethod1(auth_response_code="3030"))),
    }


def _string_paths(descriptor: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            out.append((*prefix, f.name))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and len(prefix) < 5:
            out += _string_paths(f.message_type, (*prefix, f.name))
    return out


def planted_requests() -> list[tuple[str, Any]]:
    """(method, request): each base request with one string field replaced by one planted variant."""
    out: list[tuple[str, Any]] = []
    for method, base in base_requests().items():
        out.append((method, base))
        for path in _string_paths(base.DESCRIPTOR):
            for value in VARIANTS:
                request = type(base)()
                request.CopyFrom(base)
                holder = request
                for name in path[:-1]:
                    holder = getattr(holder, name)
                setattr(holder, path[-1], value)
                out.append((method, request))
    return out


STREAM_FIELDS = {m.name: f.name for m in pb.DESCRIPTOR.services_by_name["Operations"].methods
                 for f in pb.StreamRequest.DESCRIPTOR.oneofs_by_name["operation"].fields
                 if f.message_type == m.input_type}


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) if not c.isascii() and c.isdigit() else c for c in text)


# Contexts whose long runs are known to be safe: ARN key ids, grpc's loop ids, long float fractions (weights),
# and SigV4 hashes/signatures that botocore prints at DEBUG for the control plane (a line of 64 lowercase hex).
_SAFE_CONTEXT = re.compile(r"key/[0-9a-z]+|id\(loop\)=\d+|\d\.\d{6,}|Signature=[0-9a-f]{64}|^[0-9a-f]{64}$",
                           re.MULTILINE)


def leaks(text: str) -> list[str]:
    """What `text` shows that it must not: a planted or secret value, 7+ digits of a PAN (separators
    and full-width digits read through), or a 13+ digit / 16+ hex run not known to be safe."""
    upper = _ascii_digits(text).upper()
    found = [name for name, value in SECRETS.items()
             if value.upper()[:12] in upper or value.upper()[-12:] in upper]
    found += [f"PIN {PIN}"] if PIN in upper else []
    runs = [re.sub(r"[ .\-]", "", r) for r in re.findall(r"\d(?:[ .\-]?\d)+", upper)]
    for pan in PANS:
        if any(pan[i:i + 7] in run for run in runs for i in range(len(pan) - 6)):
            found.append(f"digits of PAN {pan[:6]}...")
    upper = _SAFE_CONTEXT.sub("<safe>", _ascii_digits(text)).upper()
    found += [f"digit run {r[:6]}..({len(r)})" for r in re.findall(r"(?<![0-9A-Z])\d{13,}", upper)]
    found += [f"hex run {r[:6]}..({len(r)})" for r in re.findall(r"(?<![0-9A-Z])[0-9A-F]{16,}(?![0-9A-Z])", upper)]
    return found
