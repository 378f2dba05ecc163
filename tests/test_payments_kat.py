"""Known-answer tests for hsmlb.payments, engine level: DUKPT, PIN blocks and CVVs from
tests/vectors/public_kat.json and extra_kat.json, through the primitive functions and, where the
vector maps to an APC operation, through engine.execute with the dev keys of hsmlb/dev/dev-keys.yaml
(tests/_payment_engine.py). No cluster is started. MACs, ciphers, KCVs and EMV are in
test_payments_kat_mac_data.py.

`test_every_vector_is_checked` fails when a vector file gains an id neither module handles.
"""

from __future__ import annotations

import importlib

import pytest

from hsmlb.payments import PaymentValidationError, VerificationFailed, dukpt, pinblock
from hsmlb.payments import cvv as cvv_mod
from hsmlb.payments import primitives as P
from tests._payment_common import ALL, EXTRA, PUBLIC, h
from tests._payment_engine import KEYS, checks, run


def pek_decrypt_iso0(pin_block_hex: str, alias: str = "alias/pek-tdes") -> bytes:
    return P.decrypt_ecb("TDES", KEYS[alias].material, bytes.fromhex(pin_block_hex))


# ------------------------------------------------------------------------------ DUKPT

@checks("dukpt-tdes-x9.24-1-2009-A4")
def test_tdes_dukpt_pin_sequence() -> None:
    v = PUBLIC["dukpt-tdes-x9.24-1-2009-A4"]
    bdk, clear = bytes.fromhex(v["inputs"]["bdk"]), v["inputs"]["clear_pin_block_iso0"]
    assert h(dukpt.tdes_ipek(bdk, bytes.fromhex(v["inputs"]["initial_ksn"]))) == v["expected"]["ipek"]
    assert h(pinblock.encode_iso0(v["inputs"]["pin"], v["inputs"]["pan"])) == clear
    mask = bytes.fromhex(v["inputs"]["pin_variant_mask"])
    for step in v["expected"]["sequence"] + v["expected"]["rollover_sequence"]:
        ksn = bytes.fromhex(step["ksn"])
        current = dukpt.tdes_transaction_key(dukpt.tdes_ipek(bdk, ksn), ksn)
        assert h(current) == step["current_key"], step["ksn"]
        pin_key = dukpt.tdes_derive(bdk, ksn, "PIN")
        assert pin_key == P.xor(current, mask)
        assert h(P.encrypt_ecb("TDES", pin_key, bytes.fromhex(clear))) == step["encrypted_pin_block"]
        # engine: DUKPT ISO 0 in, zone-key ISO 0 out; the clear block must survive unchanged
        out = run("TranslatePinData", IncomingKeyIdentifier="alias/bdk-tdes", OutgoingKeyIdentifier="alias/pek-tdes",
                  IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": v["inputs"]["pan"]}},
                  OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": v["inputs"]["pan"]}},
                  EncryptedPinBlock=step["encrypted_pin_block"],
                  IncomingDukptAttributes={"KeySerialNumber": step["ksn"], "DukptKeyDerivationType": "TDES_2KEY"})
        assert h(pek_decrypt_iso0(out["PinBlock"])) == clear
    # the note's computed PIN-variant key (regression only)
    assert h(dukpt.tdes_derive(bdk, bytes.fromhex("FFFF9876543210E00001"), "PIN")) == "042666B49184CF5C68DE9628D0397B36"


@checks("dukpt-tdes-x9.24-1-A4-mac-data")
def test_tdes_dukpt_mac_and_data() -> None:
    v = EXTRA["dukpt-tdes-x9.24-1-A4-mac-data"]
    bdk, msg = bytes.fromhex(v["inputs"]["bdk"]), v["inputs"]["message_ascii"].encode()
    padded = P.pad_iso9797_1(msg, 8)
    ksn1 = bytes.fromhex("FFFF9876543210E00001")
    variants = v["expected"]["variant_keys_ksn1"]
    assert h(dukpt.tdes_derive(bdk, ksn1, "PIN")) == variants["pin"]
    assert h(dukpt.tdes_derive(bdk, ksn1, "MAC_REQUEST")) == variants["mac_request"]
    assert h(dukpt.tdes_derive(bdk, ksn1, "MAC_RESPONSE")) == variants["mac_response"]
    current = dukpt.tdes_transaction_key(dukpt.tdes_ipek(bdk, ksn1), ksn1)
    assert h(P.xor(current, dukpt.TDES_VARIANTS["DATA_REQUEST"])) == variants["data_request_variant"]
    for step in v["expected"]["sequence"]:
        ksn = bytes.fromhex(step["ksn"])
        for direction in ("request", "response"):
            mac_key = dukpt.tdes_derive(bdk, ksn, f"MAC_{direction.upper()}")
            assert h(P.mac_iso9797_alg3(mac_key, msg)) == step[f"mac_{direction}"]
            data_key = dukpt.tdes_derive(bdk, ksn, f"DATA_{direction.upper()}")
            assert h(P.encrypt_cbc("TDES", data_key, padded)) == step[f"data_{direction}"]
            attrs = {"KeySerialNumber": step["ksn"], "DukptKeyVariant": direction.upper()}
            out = run("GenerateMac", KeyIdentifier="alias/bdk-tdes", MessageData=h(padded), MacLength=8,
                      GenerationAttributes={"DukptIso9797Algorithm3": attrs})
            assert out == {"Mac": step[f"mac_{direction}"]}
            assert run("VerifyMac", KeyIdentifier="alias/bdk-tdes", MessageData=h(padded), Mac=out["Mac"][:8],
                       VerificationAttributes={"DukptIso9797Algorithm3": attrs}) == {}
            enc = run("EncryptData", KeyIdentifier="alias/bdk-tdes", PlainText=h(padded),
                      EncryptionAttributes={"Dukpt": attrs})
            assert enc == {"CipherText": step[f"data_{direction}"]}
            dec = run("DecryptData", KeyIdentifier="alias/bdk-tdes", CipherText=enc["CipherText"],
                      DecryptionAttributes={"Dukpt": {**attrs, "Mode": "CBC"}})
            assert dec == {"PlainText": h(padded)}


@checks("dukpt-aes128-x9.24-3-B1")
def test_aes_dukpt_b1() -> None:
    v = EXTRA["dukpt-aes128-x9.24-3-B1"]
    bdk, ikid = bytes.fromhex(v["inputs"]["bdk"]), bytes.fromhex(v["inputs"]["initial_key_id"])
    ik = dukpt.aes_initial_key(bdk, ikid)
    assert h(ik) == v["expected"]["initial_key"]
    ik256 = dukpt.aes_initial_key(bytes.fromhex(v["inputs"]["bdk256"]), ikid)
    assert h(ik256) == v["expected"]["initial_key_aes256"]
    for step in v["expected"]["more_transaction_keys"]:
        assert h(dukpt.aes_transaction_key(ik, bytes.fromhex(step["ksn"]))) == step["transaction_key"], step["ksn"]
    msg = v["inputs"]["message_ascii"].encode()
    padded = P.pad_iso9797_1(msg, 32)
    for step in v["expected"]["sequence"]:
        ksn = bytes.fromhex(step["ksn"])
        assert h(dukpt.aes_transaction_key(ik, ksn)) == step["transaction_key"]
        for direction, mac_usage, data_usage in (("request", "MAC_GENERATION", "DATA_ENCRYPT"),
                                                 ("response", "MAC_VERIFICATION", "DATA_DECRYPT")):
            assert h(P.cmac("AES", dukpt.aes_derive(bdk, ksn, mac_usage), msg)) == step[f"cmac_{direction}"]
            assert h(P.encrypt_cbc("AES", dukpt.aes_derive(bdk, ksn, data_usage), padded)) == step[f"data_{direction}"]
            attrs = {"KeySerialNumber": step["ksn"], "DukptKeyVariant": direction.upper(),
                     "DukptDerivationType": "AES_128"}
            out = run("GenerateMac", KeyIdentifier="alias/bdk-aes128", MessageData=h(msg),
                      GenerationAttributes={"DukptCmac": attrs})
            assert out == {"Mac": step[f"cmac_{direction}"]}
            data_attrs = {"KeySerialNumber": step["ksn"], "DukptKeyVariant": direction.upper(), "Mode": "CBC"}
            enc = run("EncryptData", KeyIdentifier="alias/bdk-aes128", PlainText=h(padded),
                      EncryptionAttributes={"Dukpt": data_attrs})
            assert enc == {"CipherText": step[f"data_{direction}"]}
    ksn1 = bytes.fromhex(v["expected"]["sequence"][0]["ksn"])
    assert h(dukpt.aes_derive(bdk, ksn1, "PIN")) == v["expected"]["working_keys_ksn1"]["PIN"]


# ------------------------------------------------------------------------------ PIN blocks

@checks("pinblock-iso0-idtech", "pinblock-iso0-payshield-fmt01")
@pytest.mark.parametrize("vid", ["pinblock-iso0-idtech", "pinblock-iso0-payshield-fmt01"])
def test_iso0_clear_blocks(vid: str) -> None:
    v = PUBLIC[vid]
    pin, pan, clear = v["inputs"]["pin"], v["inputs"]["pan"], v["expected"]["clear_pin_block"]
    assert h(pinblock.encode_iso0(pin, pan)) == clear
    assert pinblock.decode(0, bytes.fromhex(clear), pan) == pin
    block = h(P.encrypt_ecb("TDES", KEYS["alias/pek-tdes"].material, bytes.fromhex(clear)))
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/pek-tdes", OutgoingKeyIdentifier="alias/pek-tdes3",
              IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}},
              OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}}, EncryptedPinBlock=block)
    assert h(pek_decrypt_iso0(out["PinBlock"], "alias/pek-tdes3")) == clear


@checks("pinblock-iso0-psec")
def test_iso0_psec() -> None:
    v = EXTRA["pinblock-iso0-psec"]
    pan = v["inputs"]["pan"]
    for case in v["expected"]["cases"]:
        assert h(pinblock.encode_iso0(case["pin"], pan)) == case["clear_pin_block"]
        assert pinblock.decode(0, bytes.fromhex(case["clear_pin_block"]), pan) == case["pin"]
    for bad in v["expected"]["rejected"]:
        block = h(P.encrypt_ecb("TDES", KEYS["alias/pek-tdes"].material, bytes.fromhex(bad["clear_pin_block"])))
        with pytest.raises(PaymentValidationError) as info:
            run("TranslatePinData", IncomingKeyIdentifier="alias/pek-tdes", OutgoingKeyIdentifier="alias/pek-tdes",
                IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}},
                OutgoingTranslationAttributes={"IsoFormat1": {}}, EncryptedPinBlock=block)
        assert info.value.field_list[0]["path"] == "EncryptedPinBlock", bad["why"]
        assert "1234" not in str(info.value) and pan not in str(info.value)


@checks("pinblock-iso4-x9.24-3-fields")
def test_iso4_fields() -> None:
    v = PUBLIC["pinblock-iso4-x9.24-3-fields"]
    pin, pan, exp = v["inputs"]["pin"], v["inputs"]["pan"], v["expected"]
    assert h(pinblock.iso4_pin_field(pin)[:8]) == exp["pin_field_first8"]
    assert h(pinblock.iso4_pan_field(pan)) == exp["pan_field"]
    for case in exp["extra_cases"]:
        if "pin_field_first8" in case:
            assert h(pinblock.iso4_pin_field(case["pin"])[:8]) == case["pin_field_first8"]
        if "pan_field" in case:
            assert h(pinblock.iso4_pan_field(case["pan"])) == case["pan_field"]
    # engine: ISO 0 -> ISO 4; peel the format-4 encipherment with the clear AES key and read the fields
    clear0 = pinblock.encode_iso0(pin, pan)
    block = h(P.encrypt_ecb("TDES", KEYS["alias/pek-tdes"].material, clear0))
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/pek-tdes", OutgoingKeyIdentifier="alias/pek-aes128",
              IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}},
              OutgoingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": pan}}, EncryptedPinBlock=block)
    key = KEYS["alias/pek-aes128"].material
    inner = P.xor(P.decrypt_ecb("AES", key, bytes.fromhex(out["PinBlock"])), bytes.fromhex(exp["pan_field"]))
    assert h(P.decrypt_ecb("AES", key, inner)[:8]) == exp["pin_field_first8"]


@checks("pinblock-iso4-x9.24-3-supplement")
def test_iso4_supplement() -> None:
    v = EXTRA["pinblock-iso4-x9.24-3-supplement"]
    i, exp = v["inputs"], v["expected"]
    rand = bytes.fromhex(i["random_fill"])
    assert h(pinblock.iso4_pin_field(i["pin"], rand)) == exp["pin_field"]
    assert h(pinblock.iso4_pan_field(i["pan"])) == exp["pan_field"]
    for ksn, tx in zip(i["ksns"], exp["transactions"], strict=True):
        key = dukpt.aes_derive(bytes.fromhex(i["bdk"]), bytes.fromhex(ksn), "PIN")
        assert h(key) == tx["pin_key"]
        a = P.encrypt_ecb("AES", key, bytes.fromhex(exp["pin_field"]))
        assert h(a) == tx["intermediate_a"]
        assert h(P.xor(a, bytes.fromhex(exp["pan_field"]))) == tx["intermediate_b"]
        assert h(pinblock.encipher_iso4(key, i["pin"], i["pan"], rand)) == tx["encrypted_pin_block"]
        assert pinblock.decipher_iso4(key, bytes.fromhex(tx["encrypted_pin_block"]), i["pan"]) == i["pin"]
        out = run("TranslatePinData", IncomingKeyIdentifier="alias/bdk-aes128", OutgoingKeyIdentifier="alias/pek-tdes",
                  IncomingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": i["pan"]}},
                  OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": i["pan"]}},
                  EncryptedPinBlock=tx["encrypted_pin_block"],
                  IncomingDukptAttributes={"KeySerialNumber": ksn, "DukptKeyDerivationType": "AES_128"})
        assert pek_decrypt_iso0(out["PinBlock"]) == pinblock.encode_iso0(i["pin"], i["pan"])
    # the first PIN key doubles as the zone key alias/pek-aes128
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/pek-aes128", OutgoingKeyIdentifier="alias/pek-tdes",
              IncomingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": i["pan"]}},
              OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": i["pan"]}},
              EncryptedPinBlock=exp["transactions"][0]["encrypted_pin_block"])
    assert pek_decrypt_iso0(out["PinBlock"]) == pinblock.encode_iso0(i["pin"], i["pan"])


@checks("pinblock-iso4-psec-decipher")
def test_iso4_psec() -> None:
    v = EXTRA["pinblock-iso4-psec-decipher"]
    i = v["inputs"]
    assert pinblock.decipher_iso4(bytes.fromhex(i["key"]), bytes.fromhex(i["encrypted_pin_block"]), i["pan"]) == \
        v["expected"]["pin"]
    out = run("TranslatePinData", IncomingKeyIdentifier="alias/pek-aes128-2", OutgoingKeyIdentifier="alias/pek-tdes",
              IncomingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": i["pan"]}},
              OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": i["pan"]}},
              EncryptedPinBlock=i["encrypted_pin_block"])
    assert pinblock.decode(0, pek_decrypt_iso0(out["PinBlock"]), i["pan"]) == v["expected"]["pin"]


# ------------------------------------------------------------------------------ CVV

@checks("cvv-worked-example-111", "cvv-psec")
@pytest.mark.parametrize(("vid", "alias"), [("cvv-worked-example-111", "alias/cvk-1"), ("cvv-psec", "alias/cvk-2")])
def test_cvv(vid: str, alias: str) -> None:
    v = {**PUBLIC, **EXTRA}[vid]
    i, exp = v["inputs"], v["expected"]
    cvk = bytes.fromhex(i["cvk"])
    assert KEYS[alias].material == cvk
    assert cvv_mod.cvv(cvk, i["pan"], i["expiry"], i["service_code"]) == exp["cvv"]
    if "final_block" in exp:
        assert h(cvv_mod.cvv_block(cvk, i["pan"], i["expiry"], i["service_code"])) == exp["final_block"]
    attrs = {"CardVerificationValue1": {"CardExpiryDate": i["expiry"], "ServiceCode": i["service_code"]}}
    out = run("GenerateCardValidationData", KeyIdentifier=alias, PrimaryAccountNumber=i["pan"],
              GenerationAttributes=attrs)
    assert out == {"ValidationData": exp["cvv"]}
    assert run("VerifyCardValidationData", KeyIdentifier=alias, PrimaryAccountNumber=i["pan"],
               VerificationAttributes=attrs, ValidationData=exp["cvv"]) == {}
    wrong = f"{(int(exp['cvv']) + 1) % 1000:03d}"
    with pytest.raises(VerificationFailed) as info:
        run("VerifyCardValidationData", KeyIdentifier=alias, PrimaryAccountNumber=i["pan"],
            VerificationAttributes=attrs, ValidationData=wrong)
    assert info.value.reason == "INVALID_VALIDATION_DATA"


def test_every_vector_is_checked() -> None:
    """Every id in both vector files is claimed (via @checks, at import) by a test in this module or in the
    sibling one, imported here for its claims whichever tests were selected."""
    importlib.import_module("tests.test_payments_kat_mac_data")
    assert set(ALL) == checks.ids
