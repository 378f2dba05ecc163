"""Bug hunt in hsmlb.payments, in process through `execute` with the dev keys (no cluster).

Findings reproduced here (fixed in hsmlb/payments):
- AES DUKPT refused 3-key TDEA working keys from an AES-128 BDK with a pathless "invalid request", though
  ANSI X9.24-3 allows them (its test-vector supplement has a whole suite of them) and the request check
  already let them through: the derivation compared key lengths, not strengths.
- A union member that must be a structure but was sent as a string or list (IsoFormat0, CardVerificationValue2,
  SessionKeyDerivationAttributes.Visa, AuthResponseAttributes.ArpcMethod1, EncryptionAttributes.Symmetric)
  crashed with AttributeError instead of a ValidationException naming the member; IsoFormat1 took any value.

The rest pins edges that held: malformed PIN blocks of every format, DUKPT KSN lengths and derivation types,
and CVV, EMV and MAC member checks. Each refusal must name the member path and never echo PAN, PIN or block.
"""

from __future__ import annotations

from typing import Any

import pytest

from hsmlb.payments import PaymentValidationError, VerificationFailed, emv, execute, pinblock
from hsmlb.payments import primitives as P
from tests._payment_common import h
from tests._payment_engine import KEYS, adhoc, resolve, resolver, run

PAN = "4761739001010119"
PIN = "1234"

# ANSI X9.24-3-2017 Test Vectors supplement (ASC X9, 2018-01-29), suite "3-key TDEA keys from AES-128 BDK",
# BDK FEDCBA9876543210F1F1F1F1F1F1F1F1 (alias/bdk-aes128), initial key ID 1234567890123456, counter 1.
# Values as copied from the supplement into stored public code: a C# test "AnnexBVectorsCoverTdeaWorkingKeyTypes"
# (TDEA-3 PIN key) and a payment knowledge-base file ("reference_vectors_3TDEA_from_AES128_BDK": PIN, MAC
# generation and data encryption keys).
TDES3_KSN1 = "123456789012345600000001"
TDES3_PIN_KEY = "EA8B3F37EB9B15831167EF2977FD8762D9B5913F35766F6A"
TDES3_MAC_GEN_KEY = "2A1061A6EAC2C14FAC3758EA07B3648A624B24E942785BF1"
TDES3_DATA_ENC_KEY = "F716DFBC6B2D2D5825B694EEEE181A013F2F1C09380BBE0C"


def _error(op: str, keys: Any = None, **params: Any) -> PaymentValidationError:
    with pytest.raises(PaymentValidationError) as info:
        execute(op, params, resolve if keys is None else resolver(keys))
    return info.value


def _assert_clean(error: PaymentValidationError, *secrets: str) -> None:
    text = f"{error} {error.message} {error.field_list}"
    for secret in secrets:
        assert secret not in text and secret.lower() not in text


# ------------------------------------------------------------------------------ finding 1: TDES-3 from AES-128

def test_aes128_bdk_derives_tdes3_data_key() -> None:
    plain = "0123456789ABCDEF" * 2
    attrs = {"KeySerialNumber": TDES3_KSN1, "DukptKeyDerivationType": "TDES_3KEY", "DukptKeyVariant": "REQUEST",
             "Mode": "ECB"}
    out = run("EncryptData", KeyIdentifier="alias/bdk-aes128", PlainText=plain, EncryptionAttributes={"Dukpt": attrs})
    assert out == {"CipherText": h(P.encrypt_ecb("TDES", bytes.fromhex(TDES3_DATA_ENC_KEY), bytes.fromhex(plain)))}


def test_aes128_bdk_derives_tdes3_mac_key() -> None:
    message = bytes(range(16))
    attrs = {"KeySerialNumber": TDES3_KSN1, "DukptKeyVariant": "REQUEST", "DukptDerivationType": "TDES_3KEY"}
    out = run("GenerateMac", KeyIdentifier="alias/bdk-aes128", MessageData=h(message), MacLength=8,
              GenerationAttributes={"DukptIso9797Algorithm1": attrs})
    want = P.mac_iso9797_alg1("TDES", bytes.fromhex(TDES3_MAC_GEN_KEY), message, padding=0)
    assert out == {"Mac": h(want)}


def test_aes128_bdk_derives_tdes3_pin_key() -> None:
    block = h(P.encrypt_ecb("TDES", bytes.fromhex(TDES3_PIN_KEY), pinblock.encode_iso0(PIN, PAN)))
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/bdk-aes128", OutgoingKeyIdentifier="alias/pek-tdes",
              IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": PAN}},
              OutgoingTranslationAttributes={"IsoFormat1": {}}, EncryptedPinBlock=block,
              IncomingDukptAttributes={"KeySerialNumber": TDES3_KSN1, "DukptKeyDerivationType": "TDES_3KEY"})
    clear = P.decrypt_ecb("TDES", KEYS["alias/pek-tdes"].material, bytes.fromhex(out["PinBlock"]))
    assert pinblock.decode(1, clear) == PIN


# ------------------------------------------------------------------------------ finding 2: union members

_VISA = {"PrimaryAccountNumber": PAN, "PanSequenceNumber": "00"}
_ARQC_DATA = bytes(range(24))


def _visa_arqc() -> str:
    icc_mk = emv.icc_master_key(KEYS["alias/imk-ac"].material, PAN, "00", "A")
    return h(emv.application_cryptogram(icc_mk, _ARQC_DATA, padding=1))


UNION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("TranslatePinData", {"IncomingKeyIdentifier": "alias/pek-tdes", "OutgoingKeyIdentifier": "alias/pek-tdes",
                          "IncomingTranslationAttributes": {"IsoFormat0": PAN},
                          "OutgoingTranslationAttributes": {"IsoFormat1": {}}, "EncryptedPinBlock": "00" * 8},
     "IncomingTranslationAttributes.IsoFormat0"),
    ("TranslatePinData", {"IncomingKeyIdentifier": "alias/pek-tdes", "OutgoingKeyIdentifier": "alias/pek-tdes",
                          "IncomingTranslationAttributes": {"IsoFormat1": {}},
                          "OutgoingTranslationAttributes": {"IsoFormat1": "yes"}, "EncryptedPinBlock": "00" * 8},
     "OutgoingTranslationAttributes.IsoFormat1"),
    ("GenerateCardValidationData", {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": PAN,
                                    "GenerationAttributes": {"CardVerificationValue2": ["2512"]}},
     "GenerationAttributes.CardVerificationValue2"),
    ("VerifyAuthRequestCryptogram", {"KeyIdentifier": "alias/imk-ac", "TransactionData": "00" * 8,
                                     "AuthRequestCryptogram": "00" * 8, "MajorKeyDerivationMode": "EMV_OPTION_A",
                                     "SessionKeyDerivationAttributes": {"Visa": PAN}},
     "SessionKeyDerivationAttributes.Visa"),
    ("EncryptData", {"KeyIdentifier": "alias/zek-aes128", "PlainText": "00" * 16,
                     "EncryptionAttributes": {"Symmetric": "ECB"}}, "EncryptionAttributes.Symmetric"),
]


@pytest.mark.parametrize(("op", "params", "path"), UNION_CASES, ids=[c[2] for c in UNION_CASES])
def test_union_member_of_the_wrong_type_is_named(op: str, params: dict[str, Any], path: str) -> None:
    error = _error(op, **params)
    assert error.field_list == [{"path": path, "message": "must be a structure"}]
    _assert_clean(error, PAN)


def test_arpc_member_of_the_wrong_type_is_named() -> None:
    """Reached only after a good ARQC: the ARPC attributes are read last."""
    base = {"KeyIdentifier": "alias/imk-ac", "TransactionData": h(_ARQC_DATA), "AuthRequestCryptogram": _visa_arqc(),
            "MajorKeyDerivationMode": "EMV_OPTION_A", "SessionKeyDerivationAttributes": {"Visa": _VISA}}
    assert run("VerifyAuthRequestCryptogram", **base) == {}
    error = _error("VerifyAuthRequestCryptogram", **base, AuthResponseAttributes={"ArpcMethod1": "0000"})
    assert error.field_list == [{"path": "AuthResponseAttributes.ArpcMethod1", "message": "must be a structure"}]


def test_mac_algorithm_member_is_still_a_string() -> None:
    """MacAttributes.Algorithm is the one union member that is not a structure."""
    out = run("GenerateMac", KeyIdentifier="alias/cmac-aes128", MessageData="00",
              GenerationAttributes={"Algorithm": "CMAC"})
    assert len(out["Mac"]) == 32
    error = _error("GenerateMac", KeyIdentifier="alias/bdk-aes128", MessageData="00",
                   GenerationAttributes={"DukptCmac": TDES3_KSN1})
    assert error.field_list[0]["path"] == "GenerationAttributes.DukptCmac"


# ------------------------------------------------------------------------------ held: malformed PIN blocks

_ZONE = {0: "alias/pek-tdes", 1: "alias/pek-tdes", 3: "alias/pek-tdes", 4: "alias/pek-aes128"}
_R8 = "5A3C9E01B27D4F68"  # a fixed stand-in for format 4's random half


def _encipher(fmt: int, nibbles: str) -> str:
    """The block a terminal would send for clear PIN-field nibbles `nibbles` (PAN bound for 0, 3 and 4)."""
    key = KEYS[_ZONE[fmt]].material
    field = bytes.fromhex(nibbles)
    if fmt == 4:
        return h(P.encrypt_ecb("AES", key, P.xor(P.encrypt_ecb("AES", key, field), pinblock.iso4_pan_field(PAN))))
    if fmt in (0, 3):
        field = P.xor(field, pinblock.pan_field_iso0(PAN))
    return h(P.encrypt_ecb("TDES", key, field))


def _translate(fmt: int, block: str) -> dict[str, Any]:
    incoming = {f"IsoFormat{fmt}": {} if fmt == 1 else {"PrimaryAccountNumber": PAN}}
    return run("TranslatePinData", IncomingKeyIdentifier=_ZONE[fmt], OutgoingKeyIdentifier="alias/pek-tdes",
               IncomingTranslationAttributes=incoming, OutgoingTranslationAttributes={"IsoFormat1": {}},
               EncryptedPinBlock=block)


GOOD_BLOCKS = [  # (format, clear nibbles, PIN it holds)
    (0, "041234FFFFFFFFFF", "1234"),
    (0, "0C123456789012FF", "123456789012"),
    (1, "141234" + "9E01B27D4F", "1234"),
    (1, "1C123456789012" + "B2", "123456789012"),
    (3, "341234ABCDEFABCD", "1234"),
    (3, "341234FFFFFFFFFF", "1234"),
    (3, "3C123456789012EA", "123456789012"),
    (4, "441234AAAAAAAAAA" + _R8, "1234"),
    (4, "4C123456789012AA" + _R8, "123456789012"),
]


@pytest.mark.parametrize(("fmt", "nibbles", "pin"), GOOD_BLOCKS)
def test_well_formed_blocks_translate(fmt: int, nibbles: str, pin: str) -> None:
    out = _translate(fmt, _encipher(fmt, nibbles))
    clear = P.decrypt_ecb("TDES", KEYS["alias/pek-tdes"].material, bytes.fromhex(out["PinBlock"]))
    assert pinblock.decode(1, clear) == pin


BAD_BLOCKS = [  # (format, clear nibbles, why)
    (0, "031234FFFFFFFFFF", "PIN length 3"),
    (0, "0D1234567890123F", "PIN length 13"),
    (1, "131234" + "9E01B27D4F", "PIN length 3"),
    (1, "1D1234567890123F", "PIN length 13"),
    (1, "04123488" + "01B27D4F", "control nibble 0 in a format 1 block"),
    (1, "14123A" + "9E01B27D4F", "non-decimal PIN digit"),
    (3, "041234FFFFFFFFFF", "a format 0 block declared format 3"),
    (3, "3412345BCDEFABCD", "decimal fill digit"),
    (3, "341234ABCDEFAB0D", "decimal fill digit at the end"),
    (3, "3D1234567890123A", "PIN length 13"),
    (4, "441234AAAAAAAAAB" + _R8, "fill digit B"),
    (4, "341234AAAAAAAAAA" + _R8, "control nibble 3 in a format 4 block"),
    (4, "431234AAAAAAAAAA" + _R8, "PIN length 3"),
    (4, "4D1234567890123A" + _R8, "PIN length 13"),
    (4, "4412F4AAAAAAAAAA" + _R8, "non-decimal PIN digit"),
]


@pytest.mark.parametrize(("fmt", "nibbles", "why"), BAD_BLOCKS, ids=[f"{f}-{w}" for f, _, w in BAD_BLOCKS])
def test_malformed_blocks_are_refused_without_echo(fmt: int, nibbles: str, why: str) -> None:
    block = _encipher(fmt, nibbles)
    with pytest.raises(PaymentValidationError) as info:
        _translate(fmt, block)
    assert info.value.field_list[0]["path"] == "EncryptedPinBlock", why
    _assert_clean(info.value, PAN, PIN, block, nibbles)


@pytest.mark.parametrize("fmt", [0, 3, 4])
@pytest.mark.parametrize("pan", ["4" * 11, "4" * 20, "4" * 15 + "x"])
def test_pan_outside_12_to_19_digits_is_refused(fmt: int, pan: str) -> None:
    error = _error("TranslatePinData", IncomingKeyIdentifier=_ZONE[fmt], OutgoingKeyIdentifier="alias/pek-tdes",
                   IncomingTranslationAttributes={f"IsoFormat{fmt}": {"PrimaryAccountNumber": pan}},
                   OutgoingTranslationAttributes={"IsoFormat1": {}}, EncryptedPinBlock="00" * (16 if fmt == 4 else 8))
    assert error.field_list[0]["path"] == f"IncomingTranslationAttributes.IsoFormat{fmt}.PrimaryAccountNumber"
    _assert_clean(error, pan)


@pytest.mark.parametrize("pan", ["476173900101", "4761739001010119123"])
def test_pan_length_edges_round_trip_through_format_4(pan: str) -> None:
    block = h(P.encrypt_ecb("TDES", KEYS["alias/pek-tdes"].material, pinblock.encode_iso0("123456789012", pan)))
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/pek-tdes", OutgoingKeyIdentifier="alias/pek-aes128",
              IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}},
              OutgoingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": pan}}, EncryptedPinBlock=block)
    key = KEYS["alias/pek-aes128"].material
    assert pinblock.decipher_iso4(key, bytes.fromhex(out["PinBlock"]), pan) == "123456789012"
    with pytest.raises(PaymentValidationError):  # bound to the PAN: another PAN does not decipher it
        pinblock.decipher_iso4(key, bytes.fromhex(out["PinBlock"]), pan[:-2] + "00")


# ------------------------------------------------------------------------------ held: DUKPT members

_TDES_KSN = "FFFF9876543210E00001"


def _dukpt_encrypt(bdk: str, keys: Any = None, **attrs: Any) -> PaymentValidationError:
    return _error("EncryptData", keys, KeyIdentifier=bdk, PlainText="00" * 16, EncryptionAttributes={"Dukpt": attrs})


@pytest.mark.parametrize(("bdk", "attrs", "member"), [
    ("alias/bdk-tdes", {"KeySerialNumber": TDES3_KSN1}, "KeySerialNumber"),  # an AES KSN for a TDES BDK
    ("alias/bdk-aes128", {"KeySerialNumber": _TDES_KSN}, "KeySerialNumber"),  # a TDES KSN for an AES BDK
    ("alias/bdk-aes128", {"KeySerialNumber": TDES3_KSN1[:-1]}, "KeySerialNumber"),
    ("alias/bdk-tdes", {"KeySerialNumber": _TDES_KSN, "DukptKeyDerivationType": "AES_128"}, "DukptKeyDerivationType"),
    ("alias/bdk-tdes", {"KeySerialNumber": _TDES_KSN, "DukptKeyDerivationType": "TDES_3KEY"},
     "DukptKeyDerivationType"),
    ("alias/bdk-aes128", {"KeySerialNumber": TDES3_KSN1, "DukptKeyDerivationType": "AES_192"},
     "DukptKeyDerivationType"),
    ("alias/bdk-aes128", {"KeySerialNumber": TDES3_KSN1, "DukptKeyDerivationType": "AES-128"},
     "DukptKeyDerivationType"),
    ("alias/bdk-aes128", {"KeySerialNumber": TDES3_KSN1, "DukptKeyVariant": "BOTH"}, "DukptKeyVariant"),
])
def test_dukpt_member_errors_name_the_member(bdk: str, attrs: dict[str, Any], member: str) -> None:
    assert _dukpt_encrypt(bdk, **attrs).field_list[0]["path"] == f"EncryptionAttributes.Dukpt.{member}"


def test_dukpt_derived_key_strength_follows_the_bdk() -> None:
    """AES-256 BDK: every type derives; AES-192 BDK: AES-256 is refused (X9.24-3:2017 6.1), the rest derive."""
    for algorithm, size in (("AES_256", 32), ("AES_192", 24)):
        keys = adhoc("alias/hunt-bdk", algorithm, "TR31_B0_BASE_DERIVATION_KEY", "0F1E2D3C4B5A6978" * (size // 8))
        for derived in ("TDES_2KEY", "TDES_3KEY", "AES_128", "AES_192", "AES_256"):
            attrs = {"KeySerialNumber": TDES3_KSN1, "DukptKeyDerivationType": derived}
            if algorithm == "AES_192" and derived == "AES_256":
                assert _dukpt_encrypt("alias/hunt-bdk", keys, **attrs).field_list[0]["path"] == \
                    "EncryptionAttributes.Dukpt.DukptKeyDerivationType"
                continue
            enc = run("EncryptData", keys, KeyIdentifier="alias/hunt-bdk", PlainText="00" * 16,
                      EncryptionAttributes={"Dukpt": attrs})
            assert run("DecryptData", keys, KeyIdentifier="alias/hunt-bdk", CipherText=enc["CipherText"],
                       DecryptionAttributes={"Dukpt": attrs}) == {"PlainText": "00" * 16}


def test_dukpt_mac_algorithm_3_needs_a_tdes2_working_key() -> None:
    error = _error("GenerateMac", KeyIdentifier="alias/bdk-aes128", MessageData="00" * 8,
                   GenerationAttributes={"DukptIso9797Algorithm3": {"KeySerialNumber": TDES3_KSN1,
                                                                     "DukptKeyVariant": "REQUEST",
                                                                     "DukptDerivationType": "TDES_3KEY"}})
    assert error.field_list[0]["path"] == "GenerationAttributes.DukptIso9797Algorithm3.DukptDerivationType"


def test_format_4_with_a_tdes_dukpt_key_names_the_key() -> None:
    error = _error("TranslatePinData", IncomingKeyIdentifier="alias/bdk-aes128", OutgoingKeyIdentifier="alias/pek-tdes",
                   IncomingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": PAN}},
                   OutgoingTranslationAttributes={"IsoFormat1": {}}, EncryptedPinBlock="00" * 16,
                   IncomingDukptAttributes={"KeySerialNumber": TDES3_KSN1, "DukptKeyDerivationType": "TDES_2KEY"})
    assert error.field_list[0]["path"] == "IncomingKeyIdentifier"


# ------------------------------------------------------------------------------ held: CVV, EMV, MAC members

_CVV = {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": PAN}
_CVV1 = {"CardExpiryDate": "2512", "ServiceCode": "101"}
_EMV = {"KeyIdentifier": "alias/imk-ac", "TransactionData": "00" * 8, "AuthRequestCryptogram": "00" * 8,
        "MajorKeyDerivationMode": "EMV_OPTION_A"}
_EMV_COMMON = {**_VISA, "ApplicationTransactionCounter": "0001"}
_MC = {**_EMV_COMMON, "UnpredictableNumber": "01020304"}
_MAC = {"KeyIdentifier": "alias/hmac-sha224", "MessageData": "00"}

MEMBER_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("GenerateCardValidationData", {**_CVV, "PrimaryAccountNumber": PAN[:11],
                                    "GenerationAttributes": {"CardVerificationValue1": _CVV1}}, "PrimaryAccountNumber"),
    ("GenerateCardValidationData", {**_CVV, "PrimaryAccountNumber": PAN + "0123",
                                    "GenerationAttributes": {"CardVerificationValue1": _CVV1}}, "PrimaryAccountNumber"),
    ("GenerateCardValidationData", {**_CVV, "GenerationAttributes": {"CardVerificationValue2": {
        "CardExpiryDate": "251"}}}, "GenerationAttributes.CardVerificationValue2.CardExpiryDate"),
    ("GenerateCardValidationData", {**_CVV, "GenerationAttributes": {"CardVerificationValue2": {
        "CardExpiryDate": "12/25"}}}, "GenerationAttributes.CardVerificationValue2.CardExpiryDate"),
    ("GenerateCardValidationData", {**_CVV, "GenerationAttributes": {"CardVerificationValue1": {
        **_CVV1, "ServiceCode": "10"}}}, "GenerationAttributes.CardVerificationValue1.ServiceCode"),
    ("GenerateCardValidationData", {**_CVV, "ValidationDataLength": 2,
                                    "GenerationAttributes": {"CardVerificationValue1": _CVV1}}, "ValidationDataLength"),
    ("VerifyCardValidationData", {**_CVV, "ValidationData": "12",
                                  "VerificationAttributes": {"CardVerificationValue1": _CVV1}}, "ValidationData"),
    ("VerifyCardValidationData", {**_CVV, "ValidationData": "123456",
                                  "VerificationAttributes": {"CardVerificationValue1": _CVV1}}, "ValidationData"),
    ("VerifyCardValidationData", {**_CVV, "ValidationData": "12A",
                                  "VerificationAttributes": {"CardVerificationValue1": _CVV1}}, "ValidationData"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "SessionKeyDerivationAttributes": {"EmvCommon": {
        **_EMV_COMMON, "ApplicationTransactionCounter": "001"}}},
     "SessionKeyDerivationAttributes.EmvCommon.ApplicationTransactionCounter"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "SessionKeyDerivationAttributes": {"EmvCommon": {
        **_EMV_COMMON, "ApplicationTransactionCounter": "000102"}}},
     "SessionKeyDerivationAttributes.EmvCommon.ApplicationTransactionCounter"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "SessionKeyDerivationAttributes": {"Visa": {
        **_VISA, "PanSequenceNumber": "0"}}}, "SessionKeyDerivationAttributes.Visa.PanSequenceNumber"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "SessionKeyDerivationAttributes": {"Amex": {
        "PrimaryAccountNumber": PAN}}}, "SessionKeyDerivationAttributes.Amex.PanSequenceNumber"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "SessionKeyDerivationAttributes": {"Mastercard": {
        **_MC, "UnpredictableNumber": "010203"}}}, "SessionKeyDerivationAttributes.Mastercard.UnpredictableNumber"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "SessionKeyDerivationAttributes": {"Visa": {
        **_VISA, "PrimaryAccountNumber": PAN + "x"}}}, "SessionKeyDerivationAttributes.Visa.PrimaryAccountNumber"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "AuthRequestCryptogram": "00" * 7,
                                     "SessionKeyDerivationAttributes": {"Visa": _VISA}}, "AuthRequestCryptogram"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "TransactionData": "000",
                                     "SessionKeyDerivationAttributes": {"Visa": _VISA}}, "TransactionData"),
    ("VerifyAuthRequestCryptogram", {**_EMV, "MajorKeyDerivationMode": "EMV_OPTION_C",
                                     "SessionKeyDerivationAttributes": {"Visa": _VISA}}, "MajorKeyDerivationMode"),
    ("GenerateMac", {**_MAC, "MacLength": 3, "GenerationAttributes": {"Algorithm": "HMAC_SHA224"}}, "MacLength"),
    ("GenerateMac", {**_MAC, "MacLength": 29, "GenerationAttributes": {"Algorithm": "HMAC_SHA224"}}, "MacLength"),
    ("GenerateMac", {**_MAC, "MacLength": True, "GenerationAttributes": {"Algorithm": "HMAC_SHA224"}}, "MacLength"),
    ("GenerateMac", {**_MAC, "MessageData": "", "GenerationAttributes": {"Algorithm": "HMAC_SHA224"}}, "MessageData"),
    ("GenerateMac", {**_MAC, "MessageData": "abc", "GenerationAttributes": {"Algorithm": "HMAC_SHA224"}},
     "MessageData"),
    ("GenerateMac", {**_MAC, "MessageData": "00" * 4097, "GenerationAttributes": {"Algorithm": "HMAC_SHA224"}},
     "MessageData"),
    ("GenerateMac", {**_MAC, "GenerationAttributes": {"Algorithm": "HMAC_SHA256"}}, "GenerationAttributes.Algorithm"),
    ("GenerateMac", {**_MAC, "GenerationAttributes": {"Algorithm": "HMAC_SHA256", "CMAC": "x"}},
     "GenerationAttributes"),
    ("VerifyMac", {**_MAC, "Mac": "00" * 8, "MacLength": 4, "VerificationAttributes": {"Algorithm": "HMAC"}},
     "MacLength"),
    ("VerifyMac", {**_MAC, "Mac": "00" * 29, "VerificationAttributes": {"Algorithm": "HMAC"}}, "Mac"),
    ("VerifyMac", {**_MAC, "Mac": "000", "VerificationAttributes": {"Algorithm": "HMAC"}}, "Mac"),
]


@pytest.mark.parametrize(("op", "params", "path"), MEMBER_CASES,
                         ids=[f"{i}-{c[2]}" for i, c in enumerate(MEMBER_CASES)])
def test_member_errors_name_the_member_and_not_the_value(op: str, params: dict[str, Any], path: str) -> None:
    error = _error(op, **params)
    assert error.field_list[0]["path"] == path
    _assert_clean(error, PAN)


def test_hmac_key_binds_its_hash() -> None:
    """The generic HMAC takes the key's hash; a named hash must be the key's; lengths follow that hash."""
    generic = run("GenerateMac", **_MAC, GenerationAttributes={"Algorithm": "HMAC"})
    named = run("GenerateMac", **_MAC, GenerationAttributes={"Algorithm": "HMAC_SHA224"})
    assert generic == named and len(named["Mac"]) == 2 * 28
    assert run("VerifyMac", **_MAC, Mac=named["Mac"][:8], VerificationAttributes={"Algorithm": "HMAC_SHA224"}) == {}
    with pytest.raises(VerificationFailed):
        run("VerifyMac", **{**_MAC, "MessageData": "01"}, Mac=named["Mac"][:8],
            VerificationAttributes={"Algorithm": "HMAC_SHA224"})
