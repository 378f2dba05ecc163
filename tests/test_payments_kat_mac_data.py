"""Known-answer tests for hsmlb.payments, engine level: MACs, ciphers and KCVs, and EMV cryptograms, through
the primitive functions and, where the vector maps to an APC operation, through engine.execute with the dev
keys (tests/_payment_engine.py). No cluster is started. The other vectors, and the bookkeeping that every
vector is checked, are in test_payments_kat.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from hsmlb.payments import VerificationFailed, emv, engine, kcv
from hsmlb.payments import primitives as P
from tests._payment_common import CMAC_ALIASES, CVN_IDS, EXTRA, PUBLIC, h
from tests._payment_engine import KEYS, adhoc, checks, resolve, run

# ------------------------------------------------------------------------------ MACs

@checks("mac-iso9797-1-alg3-annexB")
def test_retail_mac() -> None:
    v = PUBLIC["mac-iso9797-1-alg3-annexB"]
    key = bytes.fromhex(v["inputs"]["key"])
    assert KEYS["alias/mac-retail"].material == key
    for case in v["expected"]["cases"]:
        data = bytes.fromhex(case["data_hex"])
        assert data == case["data_ascii"].encode()
        assert h(P.mac_iso9797_alg3(key, data)) == case["mac8_computed"]
        attrs = {"Algorithm": "ISO9797_ALGORITHM3"}
        out = run("GenerateMac", KeyIdentifier="alias/mac-retail", MessageData=case["data_hex"],
                  GenerationAttributes=attrs)
        assert out == {"Mac": case["mac4"]}  # APC's default length for ISO 9797 algorithm 3 is 4 bytes
        out = run("GenerateMac", KeyIdentifier="alias/mac-retail", MessageData=case["data_hex"],
                  GenerationAttributes=attrs, MacLength=8)
        assert out == {"Mac": case["mac8_computed"]}
        assert run("VerifyMac", KeyIdentifier="alias/mac-retail", MessageData=case["data_hex"], Mac=case["mac4"],
                   VerificationAttributes=attrs) == {}


@checks("mac-iso9797-1-alg1-psec", "pad-iso9797-1-psec")
def test_cbc_mac_and_padding() -> None:
    pads = EXTRA["pad-iso9797-1-psec"]["expected"]
    for data, want in pads["method1"]:
        assert h(P.pad_iso9797_1(bytes.fromhex(data), 8)) == want
    for data, want in pads["method2"]:
        assert h(P.pad_iso9797_2(bytes.fromhex(data), 8)) == want
    v = EXTRA["mac-iso9797-1-alg1-psec"]
    key, data = bytes.fromhex(v["inputs"]["key"]), bytes.fromhex(v["inputs"]["data_hex"])
    assert h(P.mac_iso9797_alg1("TDES", key, data, 1)) == v["expected"]["padding1"]
    assert h(P.mac_iso9797_alg1("TDES", key, data, 2)) == v["expected"]["padding2"]
    attrs = {"Algorithm": "ISO9797_ALGORITHM1"}
    out = run("GenerateMac", KeyIdentifier="alias/mac-iso9797-1", MessageData=v["inputs"]["data_hex"],
              GenerationAttributes=attrs, MacLength=8)
    assert out == {"Mac": v["expected"]["padding1"]}  # APC pads unaligned data with method 1
    # padding method 2 is the caller's job: send the padded data
    padded = h(P.pad_iso9797_2(data, 8))
    assert run("GenerateMac", KeyIdentifier="alias/mac-iso9797-1", MessageData=padded,
               GenerationAttributes=attrs) == {"Mac": v["expected"]["padding2"][:8]}



@checks("cmac-aes-nist-sp800-38b", "cmac-tdes-nist-sp800-38b")
@pytest.mark.parametrize("vid", ["cmac-aes-nist-sp800-38b", "cmac-tdes-nist-sp800-38b"])
def test_cmac(vid: str) -> None:
    v = PUBLIC[vid]
    message = bytes.fromhex(v["inputs"]["message64"])
    for group, cases in v["expected"].items():
        key, family = bytes.fromhex(cases["key"]), ("AES" if group.startswith("AES") else "TDES")
        assert KEYS[CMAC_ALIASES[group]].material == key
        for n, mac in cases.items():
            if n == "key":
                continue
            assert h(P.cmac(family, key, message[: int(n)])) == mac, (group, n)
            if int(n) == 0:
                continue  # MessageData is at least one byte in the APC model
            out = run("GenerateMac", KeyIdentifier=CMAC_ALIASES[group], MessageData=h(message[: int(n)]),
                      GenerationAttributes={"Algorithm": "CMAC"})
            assert out == {"Mac": mac}


@checks("hmac-sha256-iso9797-2")
def test_hmac() -> None:
    aliases = {"00112233445566778899AABBCCDDEEFF": "alias/hmac-1", "0123456789ABCDEFFEDCBA9876543210": "alias/hmac-2"}
    for case in PUBLIC["hmac-sha256-iso9797-2"]["expected"]["cases"]:
        msg = case["msg_ascii"].encode()
        assert h(P.hmac("SHA256", bytes.fromhex(case["key"]), msg)) == case["mac"]
        if msg:
            for algorithm in ("HMAC_SHA256", "HMAC"):
                out = run("GenerateMac", KeyIdentifier=aliases[case["key"]], MessageData=h(msg),
                          GenerationAttributes={"Algorithm": algorithm})
                assert out == {"Mac": case["mac"]}


# ------------------------------------------------------------------------------ ciphers and KCVs

@checks("aes-nist-sp800-38a-ecb-cbc")
def test_aes_sp800_38a() -> None:
    v = EXTRA["aes-nist-sp800-38a-ecb-cbc"]
    plain, iv = v["inputs"]["plaintext"], v["inputs"]["cbc_iv"]
    for size, hex_key in v["inputs"]["keys"].items():
        key, alias = bytes.fromhex(hex_key), f"alias/kat-{size.lower()}"
        keys = adhoc(alias, f"AES_{size[3:]}", "TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY", hex_key)
        assert alias not in KEYS  # a table of this test's own: the shared one never holds it
        for mode in ("ECB", "CBC"):
            want = v["expected"][mode][size]
            fn = P.encrypt_ecb if mode == "ECB" else P.encrypt_cbc
            args = () if mode == "ECB" else (bytes.fromhex(iv),)
            assert h(fn("AES", key, bytes.fromhex(plain), *args)) == want
            attrs = {"Mode": mode, **({"InitializationVector": iv} if mode == "CBC" else {})}
            assert run("EncryptData", keys, KeyIdentifier=alias, PlainText=plain,
                       EncryptionAttributes={"Symmetric": attrs}) == {"CipherText": want}
            assert run("DecryptData", keys, KeyIdentifier=alias, CipherText=want,
                       DecryptionAttributes={"Symmetric": attrs}) == {"PlainText": plain}


@checks("tdes-nist-sp800-67-ecb", "des-sp800-17-grabbe")
def test_tdes_and_des() -> None:
    v = EXTRA["tdes-nist-sp800-67-ecb"]
    key, plain, want = v["inputs"]["key"], v["inputs"]["plaintext"], v["expected"]["ciphertext"]
    assert h(P.encrypt_ecb("TDES", bytes.fromhex(key), bytes.fromhex(plain))) == want
    assert KEYS["alias/dek-tdes3"].material == bytes.fromhex(key)
    assert run("EncryptData", KeyIdentifier="alias/dek-tdes3", PlainText=plain,
               EncryptionAttributes={"Symmetric": {"Mode": "ECB"}}) == {"CipherText": want}
    d = EXTRA["des-sp800-17-grabbe"]
    got = P.des_encrypt(bytes.fromhex(d["inputs"]["key"]), bytes.fromhex(d["inputs"]["plaintext"]))
    assert h(got) == d["expected"]["ciphertext"]
    assert h(P.des_decrypt(bytes.fromhex(d["inputs"]["key"]), got)) == d["inputs"]["plaintext"]


@checks("kcv-well-known-test-key", "kcv-softhsm2-generic-secret")
def test_kcv() -> None:
    v = PUBLIC["kcv-well-known-test-key"]
    assert kcv("TDES_2KEY", bytes.fromhex(v["inputs"]["key"])) == v["expected"]["kcv_ansi_x9_24"]
    assert kcv("TDES_3KEY", bytes.fromhex(v["inputs"]["key"] * 2)[:24]) == v["expected"]["kcv_ansi_x9_24"]
    g = EXTRA["kcv-softhsm2-generic-secret"]
    assert kcv(g["inputs"]["algorithm"], bytes.fromhex(g["inputs"]["key"])) == g["expected"]["kcv"]
    assert kcv("AES_128", bytes(16)) == "66E94B"  # all-zero AES-128 key and block: 66E94BD4... (NIST AESAVS)


# ------------------------------------------------------------------------------ EMV

@checks("emv-optA-csk-arqc-arpc", "emv-pyemv-visa-pad-aligned")
def test_emv_common_primitives() -> None:
    v, exp = PUBLIC["emv-optA-csk-arqc-arpc"]["inputs"], PUBLIC["emv-optA-csk-arqc-arpc"]["expected"]
    imk = bytes.fromhex(v["imk_ac"])
    assert h(P.kcv("TDES", imk, 2)) == v["imk_kcv"]
    mk = emv.icc_master_key_option_a(imk, v["pan"], v["psn"])
    assert h(P.kcv("TDES", mk, 2)) == exp["icc_mk_kcv"]
    sk = emv.session_key_common(mk, bytes.fromhex(v["csk_r"]))
    assert h(P.kcv("TDES", sk, 2)) == exp["sk_kcv"]
    arqc = emv.application_cryptogram(sk, bytes.fromhex(v["data_unpadded"]), padding=2)
    assert h(arqc) == exp["arqc"]
    arc, csu, prop = bytes.fromhex(v["arpc_rc"]), bytes.fromhex(v["csu"]), bytes.fromhex(v["prop_auth_data"])
    assert h(emv.arpc_method_1(mk, arqc, arc)) == exp["arpc_method1_iccmk"]
    assert h(emv.arpc_method_2(sk, arqc, csu, prop)) == exp["arpc_method2"]
    assert h(emv.arpc_method_2(sk, arqc, csu)) == exp["arpc_method2_no_pad"]
    visa = emv.application_cryptogram(sk, bytes.fromhex(exp["visa_pad_data"]), padding=1)
    assert h(visa) == exp["visa_pad_arqc"]
    assert h(emv.arpc_method_1(mk, visa, arc)) == exp["visa_pad_arpc1"]
    w = EXTRA["emv-pyemv-visa-pad-aligned"]
    aligned = emv.application_cryptogram(sk, bytes.fromhex(w["inputs"]["data"]), padding=1)
    assert h(aligned) == w["expected"]["arqc"]
    assert h(emv.arpc_method_1(mk, aligned, arc)) == w["expected"]["arpc_method1_iccmk"]


@checks("emv-kd-optA-optB")
def test_emv_key_derivation_options() -> None:
    v = PUBLIC["emv-kd-optA-optB"]
    imk, r = bytes.fromhex(v["inputs"]["imk"]), bytes.fromhex(v["inputs"]["csk_r"])
    data = bytes.fromhex(v["inputs"]["data"])
    for case in v["expected"]["cases"]:
        psn = case["psn"] if case["psn"].isdigit() else "00"
        mk = emv.icc_master_key(imk, case["pan"], psn, case["mode"])
        if "icc_mk_kcv" in case:
            assert h(P.kcv("TDES", mk, 2)) == case["icc_mk_kcv"], case
        sk = emv.session_key_common(mk, r)
        assert h(P.kcv("TDES", sk, 2)) == case["sk_kcv"], case
        arqc = emv.application_cryptogram(sk, data)
        assert h(arqc) == case["arqc"], case
        if "arpc1_iccmk" in case:
            assert h(emv.arpc_method_1(mk, arqc, b"\0\0")) == case["arpc1_iccmk"]
        if "arpc1_sk" in case:
            assert h(emv.arpc_method_1(sk, arqc, b"\0\0")) == case["arpc1_sk"]
        if "arpc2_csu00000000" in case:
            assert h(emv.arpc_method_2(sk, arqc, bytes(4))) == case["arpc2_csu00000000"]


@checks("emv-pyemv-docstring-examples")
def test_emv_docstring_examples() -> None:
    v = EXTRA["emv-pyemv-docstring-examples"]
    i, exp = v["inputs"], v["expected"]
    imk, sk = bytes.fromhex(i["imk"]), bytes.fromhex(i["sk"])
    assert h(emv.icc_master_key_option_a(imk, i["pan"], i["psn"])) == exp["icc_mk_option_a"]
    assert h(emv.icc_master_key_option_b(imk, i["pan"], i["psn"])) == exp["icc_mk_option_b"]
    assert h(emv.session_key_common(imk, bytes.fromhex(i["r"]))) == exp["common_sk_of_imk"]
    assert h(emv.application_cryptogram(sk, bytes.fromhex(i["ac_data"]))) == exp["ac"]
    arqc = bytes.fromhex(i["arqc_for_arpc"])
    assert h(emv.arpc_method_1(sk, arqc, bytes.fromhex(i["arc"]))) == exp["arpc_method1"]
    assert h(emv.arpc_method_2(sk, arqc, bytes.fromhex(i["csu"]))) == exp["arpc_method2"]


def _arqc_request(vid: str) -> tuple[dict[str, Any], str]:
    v = EXTRA[vid]
    i, exp = v["inputs"], v["expected"]
    card = {"PrimaryAccountNumber": i["pan"], "PanSequenceNumber": i["psn"]}
    if vid.endswith("cvn10"):
        data, session, mode = i["transaction_data"], {"Visa": card}, "EMV_OPTION_A"
        response = {"ArpcMethod1": {"AuthResponseCode": i["arc"]}}
    elif vid.endswith("cvn18"):
        data = h(P.pad_iso9797_2(bytes.fromhex(i["transaction_data_unpadded"]), 8))  # the caller pads (APC guide)
        session = {"EmvCommon": {**card, "ApplicationTransactionCounter": i["atc"]}}
        mode, response = "EMV_OPTION_B", {"ArpcMethod2": {"CardStatusUpdate": i["csu"]}}
    else:
        data = h(P.pad_iso9797_2(bytes.fromhex(i["transaction_data_unpadded"]), 8))
        session = {"Mastercard": {**card, "ApplicationTransactionCounter": i["atc"], "UnpredictableNumber": i["un"]}}
        mode, response = "EMV_OPTION_A", {"ArpcMethod1": {"AuthResponseCode": i["arc"]}}
    params = {"KeyIdentifier": "alias/imk-ac", "TransactionData": data, "AuthRequestCryptogram": exp["arqc"],
              "MajorKeyDerivationMode": mode, "SessionKeyDerivationAttributes": session,
              "AuthResponseAttributes": response}
    return params, exp.get("arpc_method1") or exp["arpc_method2"]




@checks(*CVN_IDS)
@pytest.mark.parametrize("vid", CVN_IDS)
def test_verify_arqc_through_engine(vid: str) -> None:
    params, arpc = _arqc_request(vid)
    assert KEYS["alias/imk-ac"].material == bytes.fromhex(EXTRA[vid]["inputs"]["imk"])
    assert engine.execute("VerifyAuthRequestCryptogram", params, resolve) == {"AuthResponseValue": arpc}
    assert engine.execute("VerifyAuthRequestCryptogram", {**params, "AuthResponseAttributes": None}, resolve) == {}
    bad = {**params, "AuthRequestCryptogram": params["AuthRequestCryptogram"][:-1] + "0"}
    if bad == params:
        bad["AuthRequestCryptogram"] = params["AuthRequestCryptogram"][:-1] + "1"
    with pytest.raises(VerificationFailed) as info:
        engine.execute("VerifyAuthRequestCryptogram", bad, resolve)
    assert info.value.reason == "INVALID_AUTH_REQUEST_CRYPTOGRAM"
