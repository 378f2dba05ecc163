"""Payment known-answer vectors through the real daemon, on each backend kind: MACs (ISO 9797 1 and 3,
CMAC, HMAC), EMV ARQC verification and ARPC generation, data encryption and re-encryption, and DUKPT
data and MAC keys. The rest of the vectors, and the bookkeeping that every vector is placed, are in
test_payments_daemon.py (whose docstring says how the daemons are set up and checked).
"""

from __future__ import annotations

import hashlib

import pytest

from hsmlb.keys import token_material
from hsmlb.v1 import hsmlb_pb2 as pb
from tests import _payment_backend
from tests._payment_backend import WELL_KNOWN_KCV, Backend, arqc_request, covers, mac_alg, tdes
from tests._payment_common import CMAC_ALIASES, CVN_IDS, DEV_KEYS, EXTRA, MATERIAL, PUBLIC, h
from tests.conftest import sym

# The shared per-kind daemons and the per-test accounting (pytest looks fixtures up by name in this module).
backend = _payment_backend.backend
served_by_intended_node = _payment_backend.served_by_intended_node


# ------------------------------------------------------------------------------ MACs

@covers("mac-iso9797-1-alg3-annexB")
def test_retail_mac_alg3(backend: Backend) -> None:
    attrs = mac_alg(pb.ISO9797_ALGORITHM3)
    for case in PUBLIC["mac-iso9797-1-alg3-annexB"]["expected"]["cases"]:
        req = dict(key_identifier="alias/mac-retail", message_data=case["data_hex"], generation_attributes=attrs)
        assert backend.call("GenerateMac", pb.GenerateMacRequest(**req)).mac == case["mac4"]  # APC default: 4 bytes
        out = backend.call("GenerateMac", pb.GenerateMacRequest(**req, mac_length=8))
        assert out.mac == case["mac8_computed"] and out.key_check_value == WELL_KNOWN_KCV
        ok = backend.call("VerifyMac", pb.VerifyMacRequest(
            key_identifier="alias/mac-retail", message_data=case["data_hex"], mac=case["mac4"],
            verification_attributes=attrs))
        assert ok.verified and ok.reason == ""
        wrong = case["mac4"][:-1] + ("0" if case["mac4"][-1] != "0" else "1")
        bad = backend.call("VerifyMac", pb.VerifyMacRequest(
            key_identifier="alias/mac-retail", message_data=case["data_hex"], mac=wrong,
            verification_attributes=attrs))
        assert not bad.verified and bad.reason == "INVALID_MAC"


@covers("mac-iso9797-1-alg1-psec", "pad-iso9797-1-psec")
def test_cbc_mac_alg1_and_padding(backend: Backend) -> None:
    v = EXTRA["mac-iso9797-1-alg1-psec"]
    attrs = mac_alg(pb.ISO9797_ALGORITHM1)
    out = backend.call("GenerateMac", pb.GenerateMacRequest(
        key_identifier="alias/mac-iso9797-1", message_data=v["inputs"]["data_hex"], generation_attributes=attrs,
        mac_length=8))
    assert out.mac == v["expected"]["padding1"]  # unaligned data gets padding method 1
    pads = EXTRA["pad-iso9797-1-psec"]["expected"]
    data = bytes.fromhex(v["inputs"]["data_hex"])
    padded2 = data + b"\x80" + bytes(-(len(data) + 1) % 8)
    assert [h(bytes.fromhex(d) + b"\x80" + bytes(-(len(d) // 2 + 1) % 8)) for d, _ in pads["method2"]] == \
        [want for _, want in pads["method2"]]  # the method-2 rule used here, on the vector
    out = backend.call("GenerateMac", pb.GenerateMacRequest(
        key_identifier="alias/mac-iso9797-1", message_data=h(padded2), generation_attributes=attrs))
    assert out.mac == v["expected"]["padding2"][:8]  # padding method 2 is the caller's; APC default 4 bytes
    for data_hex, padded in pads["method1"]:  # method 1 by the daemon == method 1 by the caller
        macs = [backend.call("GenerateMac", pb.GenerateMacRequest(
            key_identifier="alias/mac-iso9797-1", message_data=m, generation_attributes=attrs, mac_length=8)).mac
            for m in (data_hex, padded)]
        assert macs[0] == macs[1]
    ok = backend.call("VerifyMac", pb.VerifyMacRequest(
        key_identifier="alias/mac-iso9797-1", message_data=v["inputs"]["data_hex"], mac=v["expected"]["padding1"],
        verification_attributes=attrs, mac_length=8))
    assert ok.verified
    bad = backend.call("VerifyMac", pb.VerifyMacRequest(
        key_identifier="alias/mac-iso9797-1", message_data=v["inputs"]["data_hex"], mac=v["expected"]["padding2"],
        verification_attributes=attrs, mac_length=8))
    assert not bad.verified and bad.reason == "INVALID_MAC"


@covers("cmac-aes-nist-sp800-38b", "cmac-tdes-nist-sp800-38b")
@pytest.mark.parametrize("vid", ["cmac-aes-nist-sp800-38b", "cmac-tdes-nist-sp800-38b"])
def test_cmac(backend: Backend, vid: str) -> None:
    message = bytes.fromhex(PUBLIC[vid]["inputs"]["message64"])
    for group, cases in PUBLIC[vid]["expected"].items():
        alias = CMAC_ALIASES[group]
        assert h(MATERIAL[alias]) == cases["key"]
        for n, mac in cases.items():
            if n in ("key", "0"):  # MessageData is at least one byte
                continue
            data = h(message[: int(n)])
            out = backend.call("GenerateMac", pb.GenerateMacRequest(
                key_identifier=alias, message_data=data, generation_attributes=mac_alg(pb.CMAC)))
            assert out.mac == mac, (group, n)
            ok = backend.call("VerifyMac", pb.VerifyMacRequest(
                key_identifier=alias, message_data=data, mac=mac, verification_attributes=mac_alg(pb.CMAC)))
            assert ok.verified, (group, n)
        data = h(message[:16])
        bad = backend.call("VerifyMac", pb.VerifyMacRequest(
            key_identifier=alias, message_data=data, mac=cases["16"][:8], verification_attributes=mac_alg(pb.CMAC),
            mac_length=4))
        assert bad.verified  # a 4-byte truncation of the right MAC
        bad = backend.call("VerifyMac", pb.VerifyMacRequest(
            key_identifier=alias, message_data=data, mac="00" * 4, verification_attributes=mac_alg(pb.CMAC),
            mac_length=4))
        assert not bad.verified and bad.reason == "INVALID_MAC", group


def generic_secret_kcv(alias: str) -> str:
    """SoftHSM2's CKA_CHECK_VALUE rule for generic secrets (SHA-1, leftmost 3 bytes), checked on the vector, applied
    to what the dev tokens and regions hold: HMAC keys zero-padded (same MACs, RFC 2104)."""
    g = EXTRA["kcv-softhsm2-generic-secret"]
    assert hashlib.sha1(bytes.fromhex(g["inputs"]["key"])).hexdigest()[:6].upper() == g["expected"]["kcv"]
    entry = next(e for e in DEV_KEYS if e.alias == alias)
    return hashlib.sha1(token_material(entry)).hexdigest()[:6].upper()


@covers("hmac-sha256-iso9797-2", "kcv-softhsm2-generic-secret")
def test_hmac_sha256(backend: Backend) -> None:
    aliases = {h(MATERIAL["alias/hmac-1"]): "alias/hmac-1", h(MATERIAL["alias/hmac-2"]): "alias/hmac-2"}
    checked = 0
    for case in PUBLIC["hmac-sha256-iso9797-2"]["expected"]["cases"]:
        if not case["msg_ascii"]:  # MessageData is at least one byte
            continue
        alias, data = aliases[case["key"]], h(case["msg_ascii"].encode())
        out = backend.call("GenerateMac", pb.GenerateMacRequest(
            key_identifier=alias, message_data=data, generation_attributes=mac_alg(pb.HMAC_SHA256)))
        assert out.mac == case["mac"]
        assert out.key_check_value == generic_secret_kcv(alias)
        ok = backend.call("VerifyMac", pb.VerifyMacRequest(
            key_identifier=alias, message_data=data, mac=case["mac"], verification_attributes=mac_alg(pb.HMAC_SHA256)))
        assert ok.verified
        bad = backend.call("VerifyMac", pb.VerifyMacRequest(
            key_identifier=alias, message_data=data + "00", mac=case["mac"],
            verification_attributes=mac_alg(pb.HMAC_SHA256)))
        assert not bad.verified and bad.reason == "INVALID_MAC"
        checked += 1
    assert checked == 3


# ------------------------------------------------------------------------------ EMV


@covers(*CVN_IDS)
@pytest.mark.parametrize("vid", CVN_IDS)
def test_arqc_verification_and_arpc(backend: Backend, vid: str) -> None:
    request, arpc = arqc_request(vid)
    assert h(MATERIAL["alias/imk-ac"]) == EXTRA[vid]["inputs"]["imk"]
    out = backend.call("VerifyAuthRequestCryptogram", request)
    assert out.verified and out.reason == "" and out.auth_response_value == arpc
    assert out.key_check_value == WELL_KNOWN_KCV
    bare = pb.VerifyAuthRequestCryptogramRequest()
    bare.CopyFrom(request)
    bare.ClearField("auth_response_attributes")
    out = backend.call("VerifyAuthRequestCryptogram", bare)
    assert out.verified and out.auth_response_value == ""
    wrong = pb.VerifyAuthRequestCryptogramRequest()
    wrong.CopyFrom(request)
    last = request.auth_request_cryptogram[-1]
    wrong.auth_request_cryptogram = request.auth_request_cryptogram[:-1] + ("0" if last != "0" else "1")
    out = backend.call("VerifyAuthRequestCryptogram", wrong)
    assert not out.verified and out.reason == "INVALID_AUTH_REQUEST_CRYPTOGRAM" and out.auth_response_value == ""


# ------------------------------------------------------------------------------ data encryption

@covers("aes-nist-sp800-38a-ecb-cbc", "tdes-nist-sp800-67-ecb")
def test_nist_data_encryption(backend: Backend) -> None:
    v = EXTRA["aes-nist-sp800-38a-ecb-cbc"]
    plain, iv = v["inputs"]["plaintext"], v["inputs"]["cbc_iv"]
    # AES-192's vector key is held only as a CMAC key (alias/cmac-aes192), which may not encrypt.
    for size, alias in (("AES128", "alias/zek-aes128"), ("AES256", "alias/dek-aes256")):
        assert h(MATERIAL[alias]) == v["inputs"]["keys"][size]
        for mode, attrs in (("ECB", sym(pb.ECB)), ("CBC", sym(pb.CBC, iv))):
            want = v["expected"][mode][size]
            out = backend.call("EncryptData", pb.EncryptDataRequest(
                key_identifier=alias, plain_text=plain, encryption_attributes=attrs))
            assert out.cipher_text == want, (size, mode)
            back = backend.call("DecryptData", pb.DecryptDataRequest(
                key_identifier=alias, cipher_text=want, decryption_attributes=attrs))
            assert back.plain_text == plain, (size, mode)
    # ReEncryptData: the AES-128 ECB vector re-enciphered into the AES-256 CBC one, and back
    ecb, cbc = pb.ReEncryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB)), \
        pb.ReEncryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.CBC, initialization_vector=iv))
    out = backend.call("ReEncryptData", pb.ReEncryptDataRequest(
        incoming_key_identifier="alias/zek-aes128", outgoing_key_identifier="alias/dek-aes256",
        cipher_text=v["expected"]["ECB"]["AES128"], incoming_encryption_attributes=ecb,
        outgoing_encryption_attributes=cbc))
    assert out.cipher_text == v["expected"]["CBC"]["AES256"] and out.key_arn == "alias/dek-aes256"
    out = backend.call("ReEncryptData", pb.ReEncryptDataRequest(
        incoming_key_identifier="alias/dek-aes256", outgoing_key_identifier="alias/zek-aes128",
        cipher_text=v["expected"]["CBC"]["AES256"], incoming_encryption_attributes=cbc,
        outgoing_encryption_attributes=ecb))
    assert out.cipher_text == v["expected"]["ECB"]["AES128"]
    t = EXTRA["tdes-nist-sp800-67-ecb"]
    assert h(MATERIAL["alias/dek-tdes3"]) == t["inputs"]["key"]
    out = backend.call("EncryptData", pb.EncryptDataRequest(
        key_identifier="alias/dek-tdes3", plain_text=t["inputs"]["plaintext"], encryption_attributes=sym(pb.ECB)))
    assert out.cipher_text == t["expected"]["ciphertext"]
    back = backend.call("DecryptData", pb.DecryptDataRequest(
        key_identifier="alias/dek-tdes3", cipher_text=out.cipher_text, decryption_attributes=sym(pb.ECB)))
    assert back.plain_text == t["inputs"]["plaintext"]


# ------------------------------------------------------------------------------ DUKPT data and MACs

VARIANTS = {"request": pb.REQUEST, "response": pb.RESPONSE}


@covers("dukpt-tdes-x9.24-1-A4-mac-data")
def test_dukpt_tdes_mac_and_data(backend: Backend) -> None:
    v = EXTRA["dukpt-tdes-x9.24-1-A4-mac-data"]
    msg = v["inputs"]["message_ascii"].encode()
    padded = h(msg + bytes(-len(msg) % 8))
    for step in v["expected"]["sequence"]:
        for direction, variant in VARIANTS.items():
            mac_attrs = pb.MacAttributes(dukpt_iso9797_algorithm3=pb.MacAlgorithmDukpt(
                key_serial_number=step["ksn"], dukpt_key_variant=variant))
            out = backend.call("GenerateMac", pb.GenerateMacRequest(
                key_identifier="alias/bdk-tdes", message_data=padded, generation_attributes=mac_attrs, mac_length=8))
            assert out.mac == step[f"mac_{direction}"], (step["ksn"], direction)
            ok = backend.call("VerifyMac", pb.VerifyMacRequest(
                key_identifier="alias/bdk-tdes", message_data=padded, mac=out.mac[:8],
                verification_attributes=mac_attrs))
            assert ok.verified
            other = step["mac_response" if direction == "request" else "mac_request"][:8]
            bad = backend.call("VerifyMac", pb.VerifyMacRequest(
                key_identifier="alias/bdk-tdes", message_data=padded, mac=other, verification_attributes=mac_attrs))
            assert not bad.verified and bad.reason == "INVALID_MAC"
            dukpt = pb.DukptEncryptionAttributes(key_serial_number=step["ksn"], dukpt_key_variant=variant)
            enc = backend.call("EncryptData", pb.EncryptDataRequest(
                key_identifier="alias/bdk-tdes", plain_text=padded,
                encryption_attributes=pb.EncryptionDecryptionAttributes(dukpt=dukpt)))
            assert enc.cipher_text == step[f"data_{direction}"], (step["ksn"], direction)  # APC default mode: CBC
            dukpt.mode = pb.CBC
            dec = backend.call("DecryptData", pb.DecryptDataRequest(
                key_identifier="alias/bdk-tdes", cipher_text=enc.cipher_text,
                decryption_attributes=pb.EncryptionDecryptionAttributes(dukpt=dukpt)))
            assert dec.plain_text == padded
            out = backend.call("ReEncryptData", pb.ReEncryptDataRequest(  # DUKPT data in, zone data key out
                incoming_key_identifier="alias/bdk-tdes", outgoing_key_identifier="alias/dek-tdes2",
                cipher_text=step[f"data_{direction}"],
                incoming_encryption_attributes=pb.ReEncryptionAttributes(dukpt=dukpt),
                outgoing_encryption_attributes=pb.ReEncryptionAttributes(
                    symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))))
            assert out.cipher_text == h(tdes(MATERIAL["alias/dek-tdes2"], bytes.fromhex(padded)))


@covers("dukpt-aes128-x9.24-3-B1")
def test_dukpt_aes_cmac_and_data(backend: Backend) -> None:
    v = EXTRA["dukpt-aes128-x9.24-3-B1"]
    assert h(MATERIAL["alias/bdk-aes128"]) == v["inputs"]["bdk"]
    msg = v["inputs"]["message_ascii"].encode()
    padded = h(msg + bytes(-len(msg) % 32))
    for step in v["expected"]["sequence"]:
        for direction, variant in VARIANTS.items():
            mac_attrs = pb.MacAttributes(dukpt_cmac=pb.MacAlgorithmDukpt(
                key_serial_number=step["ksn"], dukpt_key_variant=variant, dukpt_derivation_type=pb.AES_128))
            out = backend.call("GenerateMac", pb.GenerateMacRequest(
                key_identifier="alias/bdk-aes128", message_data=h(msg), generation_attributes=mac_attrs))
            assert out.mac == step[f"cmac_{direction}"], (step["ksn"], direction)
            dukpt = pb.DukptEncryptionAttributes(key_serial_number=step["ksn"], dukpt_key_variant=variant, mode=pb.CBC)
            enc = backend.call("EncryptData", pb.EncryptDataRequest(
                key_identifier="alias/bdk-aes128", plain_text=padded,
                encryption_attributes=pb.EncryptionDecryptionAttributes(dukpt=dukpt)))
            assert enc.cipher_text == step[f"data_{direction}"], (step["ksn"], direction)
            dec = backend.call("DecryptData", pb.DecryptDataRequest(
                key_identifier="alias/bdk-aes128", cipher_text=enc.cipher_text,
                decryption_attributes=pb.EncryptionDecryptionAttributes(dukpt=dukpt)))
            assert dec.plain_text == padded
    step = v["expected"]["sequence"][0]
    mac_attrs = pb.MacAttributes(dukpt_cmac=pb.MacAlgorithmDukpt(
        key_serial_number=step["ksn"], dukpt_key_variant=pb.REQUEST, dukpt_derivation_type=pb.AES_128))
    bad = backend.call("VerifyMac", pb.VerifyMacRequest(
        key_identifier="alias/bdk-aes128", message_data=h(msg), mac=step["cmac_response"],
        verification_attributes=mac_attrs))
    assert not bad.verified and bad.reason == "INVALID_MAC"
    ok = backend.call("VerifyMac", pb.VerifyMacRequest(
        key_identifier="alias/bdk-aes128", message_data=h(msg), mac=step["cmac_request"],
        verification_attributes=mac_attrs))
    assert ok.verified
