"""Property and contract tests for hsmlb.payments.engine (hypothesis; no cluster).

Properties: random-fill PIN formats round-trip through TranslatePinData, 0 -> 4 -> 0 is the
identity, DUKPT data encryption round-trips, generated MACs verify and a flipped bit fails with
INVALID_MAC. Contract: unsupported members and wrong keys fail with a field path, failures never
echo PANs or PINs, and unknown keys raise KeyNotFoundError.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsmlb.payments import (
    SUPPORTED_OPERATIONS,
    KeyNotFoundError,
    PaymentValidationError,
    VerificationFailed,
    execute,
    pinblock,
)
from hsmlb.payments import primitives as P
from tests._payment_common import h
from tests._payment_engine import KEYS, resolve, run

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pins = st.text("0123456789", min_size=4, max_size=12)
pans = st.text("0123456789", min_size=12, max_size=19)
ZONE = {0: "alias/pek-tdes", 1: "alias/pek-tdes", 3: "alias/pek-tdes3", 4: "alias/pek-aes128"}


def _attrs(fmt: int, pan: str) -> dict[str, Any]:
    return {f"IsoFormat{fmt}": {} if fmt == 1 else {"PrimaryAccountNumber": pan}}


def _encrypt_pin(fmt: int, pin: str, pan: str) -> str:
    key = KEYS[ZONE[fmt]].material
    if fmt == 4:
        return h(pinblock.encipher_iso4(key, pin, pan))
    return h(P.encrypt_ecb("TDES", key, pinblock.encode(fmt, pin, pan)))


def _decrypt_pin(fmt: int, block: str, pan: str) -> str:
    key, raw = KEYS[ZONE[fmt]].material, bytes.fromhex(block)
    if fmt == 4:
        return pinblock.decipher_iso4(key, raw, pan)
    return pinblock.decode(fmt, P.decrypt_ecb("TDES", key, raw), pan)


def _translate(block: str, fin: int, fout: int, pan: str, **extra: Any) -> str:
    return run("TranslatePinData", IncomingKeyIdentifier=ZONE[fin], OutgoingKeyIdentifier=ZONE[fout],
               IncomingTranslationAttributes=_attrs(fin, pan), OutgoingTranslationAttributes=_attrs(fout, pan),
               EncryptedPinBlock=block, **extra)["PinBlock"]


# ------------------------------------------------------------------------------ PIN properties

@SETTINGS
@given(pin=pins, pan=pans, fin=st.sampled_from([0, 1, 3, 4]), fout=st.sampled_from([0, 1, 3, 4]))
def test_translate_preserves_the_pin(pin: str, pan: str, fin: int, fout: int) -> None:
    out = _translate(_encrypt_pin(fin, pin, pan), fin, fout, pan)
    assert len(out) == (32 if fout == 4 else 16)
    assert _decrypt_pin(fout, out, pan) == pin


@SETTINGS
@given(pin=pins, pan=pans)
def test_random_fill_formats_differ_each_time(pin: str, pan: str) -> None:
    for fmt in (1, 3):
        blocks = {pinblock.encode(fmt, pin, pan) for _ in range(8)}
        assert len(blocks) > 1 and {pinblock.decode(fmt, b, pan) for b in blocks} == {pin}
    assert pinblock.iso4_pin_field(pin) != pinblock.iso4_pin_field(pin)


@SETTINGS
@given(pin=pins, pan=pans)
def test_iso0_to_iso4_to_iso0_is_identity(pin: str, pan: str) -> None:
    start = _encrypt_pin(0, pin, pan)
    assert _translate(_translate(start, 0, 4, pan), 4, 0, pan) == start


@SETTINGS
@given(pin=pins, pan=pans, counter=st.integers(1, 0x1FFFFF))
def test_dukpt_pin_in_zone_out(pin: str, pan: str, counter: int) -> None:
    ksn = h((0xFFFF9876543210E00000 | counter).to_bytes(10, "big"))
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/pek-tdes", OutgoingKeyIdentifier="alias/bdk-tdes",
              IncomingTranslationAttributes=_attrs(0, pan), OutgoingTranslationAttributes=_attrs(3, pan),
              EncryptedPinBlock=_encrypt_pin(0, pin, pan), OutgoingDukptAttributes={"KeySerialNumber": ksn})
    back = run("TranslatePinData", IncomingKeyIdentifier="alias/bdk-tdes", OutgoingKeyIdentifier="alias/pek-tdes",
               IncomingTranslationAttributes=_attrs(3, pan), OutgoingTranslationAttributes=_attrs(0, pan),
               EncryptedPinBlock=out["PinBlock"], IncomingDukptAttributes={"KeySerialNumber": ksn})
    assert _decrypt_pin(0, back["PinBlock"], pan) == pin


# ------------------------------------------------------------------------------ DUKPT data

BDKS = {"alias/bdk-tdes": ("TDES_2KEY", 8, 10), "alias/bdk-aes128": ("AES_128", 16, 12)}


@SETTINGS
@given(alias=st.sampled_from(sorted(BDKS)), blocks=st.integers(1, 8), seed=st.binary(min_size=64, max_size=64),
       counter=st.integers(1, 0xFFFF), mode=st.sampled_from(["ECB", "CBC", None]),
       variant=st.sampled_from(["REQUEST", "RESPONSE", "BIDIRECTIONAL", None]), use_iv=st.booleans())
def test_dukpt_encrypt_decrypt_round_trip(alias: str, blocks: int, seed: bytes, counter: int, mode: str | None,
                                          variant: str | None, use_iv: bool) -> None:
    derived, block, ksn_len = BDKS[alias]
    data = h((seed * 4)[: blocks * block])
    prefix = bytes.fromhex("FFFF9876543210E0" if ksn_len == 10 else "1234567890123456")
    ksn = prefix + counter.to_bytes(ksn_len - len(prefix), "big")
    attrs: dict[str, Any] = {"KeySerialNumber": h(ksn), "DukptKeyDerivationType": derived}
    if mode:
        attrs["Mode"] = mode
    if variant:
        attrs["DukptKeyVariant"] = variant
    if use_iv and mode != "ECB":
        attrs["InitializationVector"] = seed[:block].hex()
    enc = run("EncryptData", KeyIdentifier=alias, PlainText=data, EncryptionAttributes={"Dukpt": attrs})
    assert enc["CipherText"] != data
    assert run("DecryptData", KeyIdentifier=alias, CipherText=enc["CipherText"],
               DecryptionAttributes={"Dukpt": attrs}) == {"PlainText": data}
    other = {**attrs, "KeySerialNumber": (ksn[:-1] + bytes([ksn[-1] ^ 1])).hex()}  # the next device key
    assert run("DecryptData", KeyIdentifier=alias, CipherText=enc["CipherText"],
               DecryptionAttributes={"Dukpt": other})["PlainText"] != data


@SETTINGS
@given(seed=st.binary(min_size=16, max_size=512), aes=st.booleans())
def test_re_encrypt_symmetric_to_dukpt(seed: bytes, aes: bool) -> None:
    data = h((seed * 2)[: (len(seed) // 16 or 1) * 16].ljust(16, b"\0"))
    src = "alias/zek-aes128" if aes else "alias/dek-tdes3"
    ct = run("EncryptData", KeyIdentifier=src, PlainText=data, EncryptionAttributes={"Symmetric": {"Mode": "CBC"}})
    dukpt_attrs = {"KeySerialNumber": "123456789012345600000007", "Mode": "ECB"}
    out = run("ReEncryptData", IncomingKeyIdentifier=src, OutgoingKeyIdentifier="alias/bdk-aes128",
              CipherText=ct["CipherText"], IncomingEncryptionAttributes={"Symmetric": {"Mode": "CBC"}},
              OutgoingEncryptionAttributes={"Dukpt": dukpt_attrs})
    assert run("DecryptData", KeyIdentifier="alias/bdk-aes128", CipherText=out["CipherText"],
               DecryptionAttributes={"Dukpt": dukpt_attrs}) == {"PlainText": data}


# ------------------------------------------------------------------------------ MAC properties

MACS: list[tuple[str, dict[str, Any], int]] = [  # (alias, attributes, block alignment the request needs)
    ("alias/mac-iso9797-1", {"Algorithm": "ISO9797_ALGORITHM1"}, 1),
    ("alias/mac-retail", {"Algorithm": "ISO9797_ALGORITHM3"}, 1),
    ("alias/cmac-aes256", {"Algorithm": "CMAC"}, 1),
    ("alias/cmac-tdes2", {"Algorithm": "CMAC"}, 1),
    ("alias/hmac-1", {"Algorithm": "HMAC_SHA256"}, 1),
    ("alias/bdk-tdes", {"DukptIso9797Algorithm1": {"KeySerialNumber": "FFFF9876543210E00012",
                                                   "DukptKeyVariant": "REQUEST"}}, 8),
    ("alias/bdk-tdes", {"DukptIso9797Algorithm3": {"KeySerialNumber": "FFFF9876543210E00012",
                                                   "DukptKeyVariant": "RESPONSE"}}, 8),
    ("alias/bdk-aes128", {"DukptCmac": {"KeySerialNumber": "123456789012345600000009",
                                        "DukptKeyVariant": "BIDIRECTIONAL"}}, 1),
    ("alias/bdk-aes128", {"DukptIso9797Algorithm1": {"KeySerialNumber": "123456789012345600000009",
                                                     "DukptKeyVariant": "REQUEST",
                                                     "DukptDerivationType": "TDES_2KEY"}}, 8),
]


@SETTINGS
@given(case=st.sampled_from(MACS), message=st.binary(min_size=1, max_size=200), bit=st.integers(0, 1 << 16),
       length=st.one_of(st.none(), st.integers(4, 8)))
def test_generated_macs_verify_and_a_flipped_bit_fails(case: tuple[str, dict[str, Any], int], message: bytes,
                                                       bit: int, length: int | None) -> None:
    alias, attrs, align = case
    message = message.ljust(-(-len(message) // align) * align, b"\0")
    extra = {} if length is None else {"MacLength": length}
    mac = run("GenerateMac", KeyIdentifier=alias, MessageData=message.hex(), GenerationAttributes=attrs,
              **extra)["Mac"]
    if length is not None:
        assert len(mac) == 2 * length
    assert run("VerifyMac", KeyIdentifier=alias, MessageData=message.hex(), Mac=mac,
               VerificationAttributes=attrs) == {}
    raw = bytearray(bytes.fromhex(mac))
    raw[(bit // 8) % len(raw)] ^= 1 << (bit % 8)
    with pytest.raises(VerificationFailed) as info:
        run("VerifyMac", KeyIdentifier=alias, MessageData=message.hex(), Mac=raw.hex(),
            VerificationAttributes=attrs)
    assert info.value.reason == "INVALID_MAC"
    flipped = bytearray(message)
    flipped[(bit // 8) % len(flipped)] ^= 1 << (bit % 8)
    with pytest.raises(VerificationFailed):
        run("VerifyMac", KeyIdentifier=alias, MessageData=flipped.hex(), Mac=mac, VerificationAttributes=attrs)


def test_default_mac_lengths() -> None:
    """ISO 9797 CBC-MACs default to 4 bytes; CMAC and HMAC return their whole output."""
    want = [4, 4, 16, 8, 32, 4, 4, 16, 4]
    got = [len(run("GenerateMac", KeyIdentifier=alias, MessageData="00" * 16, GenerationAttributes=attrs)["Mac"]) // 2
           for alias, attrs, _ in MACS]
    assert got == want


# ------------------------------------------------------------------------------ contract

def _error(op: str, **params: Any) -> PaymentValidationError:
    with pytest.raises(PaymentValidationError) as info:
        execute(op, params, resolve)
    return info.value


CVV_PARAMS = {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": "4123456789012345"}


@pytest.mark.parametrize(("op", "params", "path"), [
    ("GenerateCardValidationData",
     {**CVV_PARAMS, "GenerationAttributes": {"AmexCardSecurityCodeVersion1": {"CardExpiryDate": "2512"}}},
     "GenerationAttributes.AmexCardSecurityCodeVersion1"),
    ("VerifyCardValidationData",
     {**CVV_PARAMS, "ValidationData": "123", "VerificationAttributes": {"DynamicCardVerificationValue": {
         "PanSequenceNumber": "00", "CardExpiryDate": "2512", "ServiceCode": "101",
         "ApplicationTransactionCounter": "0001"}}},
     "VerificationAttributes.DynamicCardVerificationValue"),
    ("VerifyAuthRequestCryptogram",
     {"KeyIdentifier": "alias/imk-ac", "TransactionData": "00" * 8, "AuthRequestCryptogram": "00" * 8,
      "MajorKeyDerivationMode": "EMV_OPTION_A", "SessionKeyDerivationAttributes": {"Emv2000": {
          "PrimaryAccountNumber": "4123456789012345", "PanSequenceNumber": "00",
          "ApplicationTransactionCounter": "0001"}}},
     "SessionKeyDerivationAttributes.Emv2000"),
    ("GenerateMac", {"KeyIdentifier": "alias/mac-retail", "MessageData": "00",
                     "GenerationAttributes": {"Algorithm": "AS2805_4_1"}}, "GenerationAttributes.Algorithm"),
    ("EncryptData", {"KeyIdentifier": "alias/zek-aes128", "PlainText": "00" * 16,
                     "EncryptionAttributes": {"Symmetric": {"Mode": "CFB8"}}}, "EncryptionAttributes.Symmetric.Mode"),
    ("EncryptData", {"KeyIdentifier": "alias/zek-aes128", "PlainText": "00" * 16,
                     "EncryptionAttributes": {"Asymmetric": {}}}, "EncryptionAttributes.Asymmetric"),
    ("TranslatePinData", {"IncomingKeyIdentifier": "alias/pek-tdes", "OutgoingKeyIdentifier": "alias/pek-tdes",
                          "IncomingTranslationAttributes": {"As2805Format0": {"PrimaryAccountNumber": "4" * 16}},
                          "OutgoingTranslationAttributes": {"IsoFormat1": {}}, "EncryptedPinBlock": "00" * 8},
     "IncomingTranslationAttributes.As2805Format0"),
])
def test_unsupported_members_are_named(op: str, params: dict[str, Any], path: str) -> None:
    error = _error(op, **params)
    assert error.field_list == [{"path": path, "message": "not supported by this service"}]
    assert "not supported" in error.message


@pytest.mark.parametrize(("op", "params"), [
    ("GenerateCardValidationData", {"KeyIdentifier": "alias/dek-tdes2", "PrimaryAccountNumber": "4123456789012345",
                                    "GenerationAttributes": {"CardVerificationValue2": {"CardExpiryDate": "2512"}}}),
    ("GenerateMac", {"KeyIdentifier": "alias/mac-iso9797-1", "MessageData": "00",
                     "GenerationAttributes": {"Algorithm": "ISO9797_ALGORITHM3"}}),
    ("GenerateMac", {"KeyIdentifier": "alias/hmac-1", "MessageData": "00",
                     "GenerationAttributes": {"Algorithm": "CMAC"}}),
    ("EncryptData", {"KeyIdentifier": "alias/pek-tdes", "PlainText": "00" * 8,
                     "EncryptionAttributes": {"Symmetric": {"Mode": "ECB"}}}),
    ("EncryptData", {"KeyIdentifier": "alias/zek-aes128", "PlainText": "00" * 16,
                     "EncryptionAttributes": {"Dukpt": {"KeySerialNumber": "123456789012345600000001"}}}),
    ("VerifyAuthRequestCryptogram", {"KeyIdentifier": "alias/cvk-1", "TransactionData": "00",
                                     "AuthRequestCryptogram": "00" * 8, "MajorKeyDerivationMode": "EMV_OPTION_A",
                                     "SessionKeyDerivationAttributes": {"Visa": {
                                         "PrimaryAccountNumber": "4123456789012345", "PanSequenceNumber": "00"}}}),
])
def test_wrong_key_usage_names_the_key_member(op: str, params: dict[str, Any]) -> None:
    assert _error(op, **params).field_list[0]["path"] == "KeyIdentifier"


def test_format_and_key_algorithm_must_agree() -> None:
    error = _error("TranslatePinData", IncomingKeyIdentifier="alias/pek-tdes", OutgoingKeyIdentifier="alias/pek-tdes",
                   IncomingTranslationAttributes=_attrs(0, "4" * 16), OutgoingTranslationAttributes=_attrs(4, "4" * 16),
                   EncryptedPinBlock="00" * 8)
    assert error.field_list[0]["path"] == "OutgoingKeyIdentifier"


def test_requests_are_validated() -> None:
    assert _error("GenerateMac", KeyIdentifier="alias/cmac-aes128", MessageData="0g",
                  GenerationAttributes={"Algorithm": "CMAC"}).field_list[0]["path"] == "MessageData"
    assert _error("GenerateMac", KeyIdentifier="alias/cmac-tdes2", MessageData="00", MacLength=16,
                  GenerationAttributes={"Algorithm": "CMAC"}).field_list[0]["path"] == "MacLength"
    assert _error("EncryptData", KeyIdentifier="alias/dek-tdes2", PlainText="00" * 9,
                  EncryptionAttributes={"Symmetric": {"Mode": "CBC"}}).field_list[0]["path"] == "PlainText"
    assert _error("GenerateMac", KeyIdentifier="alias/bdk-tdes", MessageData="00" * 9,
                  GenerationAttributes={"DukptIso9797Algorithm1": {"KeySerialNumber": "FFFF9876543210E00001",
                                                                  "DukptKeyVariant": "REQUEST"}}
                  ).field_list[0]["path"] == "MessageData"
    assert _error("EncryptData", KeyIdentifier="alias/bdk-aes128", PlainText="00" * 16,
                  EncryptionAttributes={"Dukpt": {"KeySerialNumber": "123456789012345600000001",
                                                  "DukptKeyDerivationType": "AES_256"}}
                  ).field_list[0]["path"] == "EncryptionAttributes.Dukpt.DukptKeyDerivationType"
    assert _error("GenerateCardValidationData", **CVV_PARAMS, ValidationDataLength=6,
                  GenerationAttributes={"CardVerificationValue2": {"CardExpiryDate": "2512"}}
                  ).field_list[0]["path"] == "ValidationDataLength"
    assert _error("GenerateCardValidationData", **CVV_PARAMS, GenerationAttributes={
        "CardVerificationValue1": {"CardExpiryDate": "2512"}}).field_list[0]["path"] == \
        "GenerationAttributes.CardVerificationValue1.ServiceCode"
    assert _error("GenerateCardValidationData", **CVV_PARAMS, GenerationAttributes={
        "CardVerificationValue1": {"CardExpiryDate": "2512", "ServiceCode": "101"},
        "CardVerificationValue2": {"CardExpiryDate": "2512"}}).field_list[0]["path"] == "GenerationAttributes"
    assert "not supported" in _error("SignData").message
    assert {"GenerateCardValidationData", "VerifyCardValidationData", "TranslatePinData",
                                    "VerifyAuthRequestCryptogram", "GenerateMac", "VerifyMac", "EncryptData",
                                    "DecryptData", "ReEncryptData"} == SUPPORTED_OPERATIONS


def test_unknown_keys_propagate() -> None:
    with pytest.raises(KeyNotFoundError):
        execute("GenerateMac", {"KeyIdentifier": "alias/none", "MessageData": "00",
                                "GenerationAttributes": {"Algorithm": "CMAC"}}, resolve)


def test_cvv_lengths_and_icvv() -> None:
    base = {**CVV_PARAMS, "GenerationAttributes": {"CardVerificationValue1": {"CardExpiryDate": "8701",
                                                                             "ServiceCode": "999"}}}
    five = run("GenerateCardValidationData", **base, ValidationDataLength=5)["ValidationData"]
    assert len(five) == 5 and run("GenerateCardValidationData", **base)["ValidationData"] == five[:3]
    cvv2 = run("GenerateCardValidationData", **{**CVV_PARAMS, "GenerationAttributes": {
        "CardVerificationValue2": {"CardExpiryDate": "8701"}}})["ValidationData"]
    same = run("GenerateCardValidationData", **{**CVV_PARAMS, "GenerationAttributes": {
        "CardVerificationValue1": {"CardExpiryDate": "8701", "ServiceCode": "000"}}})["ValidationData"]
    assert cvv2 == same


# Junk that happens to form a valid block (a format-0 block of PIN 5678 under this PAN, after the first byte of a
# 4-digit format-0 block): hypothesis alone would reach the `else` branch below only by rare chance.
VALID_JUNK_PAN = "4761739001010119"


@SETTINGS
@example(pin="1234", pan=VALID_JUNK_PAN, junk=pinblock.encode_iso0("5678", VALID_JUNK_PAN), fin=0)
@given(pin=pins, pan=pans, junk=st.binary(min_size=8, max_size=8), fin=st.sampled_from([0, 3]))
def test_pin_block_errors_never_echo_pan_or_pin(pin: str, pan: str, junk: bytes, fin: int) -> None:
    """A block that decrypts to garbage fails validation without naming the PAN, PIN or block; garbage that
    happens to decode is a valid block, and the translation carries the PIN it holds into ISO 0."""
    clear = pinblock.encode(fin, pin, pan)[:1] + junk[1:]
    block = h(P.encrypt_ecb("TDES", KEYS[ZONE[fin]].material, clear))
    try:
        out = _translate(block, fin, 0, pan)
    except PaymentValidationError as error:
        text = f"{error} {error.field_list}"
        assert pan not in text and pin not in text and block not in text and block.lower() not in text
        assert error.field_list[0]["path"] == "EncryptedPinBlock"
        with pytest.raises(PaymentValidationError):  # rejected only because the clear block is malformed
            pinblock.decode(fin, clear, pan)
    else:
        assert _decrypt_pin(0, out, pan) == pinblock.decode(fin, clear, pan)
