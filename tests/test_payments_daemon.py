"""Payment known-answer vectors through the real daemon, on each backend kind.

Every vector of tests/vectors/public_kat.json and extra_kat.json that maps to an API operation is
sent over gRPC to a daemon whose only node is a PKCS#11 token with host-side derivation (node-a)
and to one whose only node is an emulated APC region (apc-east). Results are checked against the
vector, or (PIN translations) decrypted here with `cryptography` under the dev key material and
compared with the clear PIN block. An autouse check proves, with ListNodes ops_ok deltas, that
the intended node answered every successful request and no node fault occurred.

Also: failed verifications are results, malformed input is INVALID_ARGUMENT naming the APC field
path (never the value), an unknown alias is NOT_FOUND, and a strict token (node-d, native ops
only) that holds a payment key answers UNAVAILABLE and counts it in skipped_ops.
`test_every_vector_is_accounted_for` fails when a vector file gains an id this module does not place.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmlb.dev.cluster import default_keys_file
from hsmlb.keys import load_keys, token_material
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import DaemonProcess, PaymentCluster, node_table, start_daemon, sym

VECTORS = Path(__file__).resolve().parent / "vectors"
PUBLIC = {v["id"]: v for v in json.loads((VECTORS / "public_kat.json").read_text())["vectors"]}
EXTRA = {v["id"]: v for v in json.loads((VECTORS / "extra_kat.json").read_text())["vectors"]}
ALL = {**PUBLIC, **EXTRA}
MATERIAL = {e.alias: m for e in load_keys(default_keys_file()) if (m := e.material()) is not None}
BACKENDS = {"tokens": "node-a", "region": "apc-east"}
TIMEOUT = 10
WELL_KNOWN_KCV = PUBLIC["kcv-well-known-test-key"]["expected"]["kcv_ansi_x9_24"]

# Vector ids this module sends through the API, and those it cannot, with the reason.
COVERED: set[str] = set()
NOT_API = {
    "des-sp800-17-grabbe": "single DES: no API key type is single-length DES",
    "emv-optA-csk-arqc-arpc": "session key from a raw R value, not from an ATC: no APC session-key derivation",
    "emv-kd-optA-optB": "session keys from a raw R value: no APC session-key derivation",
    "emv-pyemv-docstring-examples": "primitives on a given session key: not an APC request",
    "emv-pyemv-visa-pad-aligned": "ARQC under a raw-R session key: not an APC request",
}


def covers(*ids: str):  # type: ignore[no-untyped-def]
    for vid in ids:
        assert vid in ALL, vid
        COVERED.add(vid)
    return lambda fn: fn


# ------------------------------------------------------------------------------ independent oracles

def tdes(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    """DES (8-byte key), 2-key or 3-key TDES, ECB."""
    cipher = Cipher(TripleDES({8: key * 3, 16: key + key[:8]}.get(len(key), key)), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def aes(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    ctx = cipher.decryptor() if decrypt else cipher.encryptor()
    return ctx.update(data) + ctx.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def iso0_clear(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0: 0 | L | PIN | F fill, XOR 0000 || 12 rightmost PAN digits before the check digit."""
    field_ = f"0{len(pin):X}{pin}".ljust(16, "F")
    return xor(bytes.fromhex(field_), bytes.fromhex("0000" + pan[:-1][-12:].rjust(12, "0")))


def cvv_oracle(cvk: bytes, pan: str, expiry: str, service_code: str, length: int = 3) -> str:
    """Visa CVV method: DES_A, XOR, TDES(A,B), decimalize (digits first, then A-F as 0-5)."""
    data = (pan + expiry + service_code).ljust(32, "0")
    block = tdes(cvk[:8], bytes.fromhex(data[:16]))
    block = tdes(cvk, xor(block, bytes.fromhex(data[16:32])))
    text = block.hex().upper()
    digits = [c for c in text if c.isdigit()] + [str(int(c, 16) - 10) for c in text if not c.isdigit()]
    return "".join(digits[:length])


def h(data: bytes) -> str:
    return data.hex().upper()


# ------------------------------------------------------------------------------ daemons and accounting

@dataclass
class Backend:
    name: str
    node: str
    daemon: DaemonProcess
    ops: pb_grpc.OperationsStub
    answered: int = 0  # successful RPCs, each of which the node must have answered once
    log: list[str] = field(default_factory=list)

    def call(self, method: str, request: Any) -> Any:
        reply = getattr(self.ops, method)(request, timeout=TIMEOUT)
        self.answered += 1
        return reply

    def fail(self, method: str, request: Any, code: grpc.StatusCode) -> str:
        with pytest.raises(grpc.RpcError) as info:
            getattr(self.ops, method)(request, timeout=TIMEOUT)
        assert info.value.code() == code, (method, info.value.details())
        return info.value.details() or ""


@pytest.fixture(scope="module", params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, strict_payment_cluster: PaymentCluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    name, node = request.param, BACKENDS[request.param]
    config = strict_payment_cluster.variant([node], f"kat-{name}")
    daemon = start_daemon(config, tmp_path_factory.mktemp("logs") / f"kat-{name}.log")
    try:
        with daemon.channel() as channel:
            yield Backend(name, node, daemon, pb_grpc.OperationsStub(channel))
    finally:
        daemon.stop()


@pytest.fixture(autouse=True)
def served_by_intended_node(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every successful RPC of the test was answered by the backend's node: ops_ok delta == RPCs, no faults."""
    if "backend" not in request.fixturenames:
        yield
        return
    b: Backend = request.getfixturevalue("backend")
    before, sent = node_table(b.daemon), b.answered
    yield
    after = node_table(b.daemon)
    assert list(after) == [b.node]
    assert after[b.node].kind == ("pkcs11" if b.name == "tokens" else "apc")
    assert after[b.node].ops_ok - before[b.node].ops_ok == b.answered - sent
    assert after[b.node].ops_failed == before[b.node].ops_failed


# ------------------------------------------------------------------------------ request builders

def fmt0(pan: str) -> pb.TranslationIsoFormats:
    return pb.TranslationIsoFormats(iso_format0=pb.TranslationPinDataIsoFormat034(primary_account_number=pan))


def fmt4(pan: str) -> pb.TranslationIsoFormats:
    return pb.TranslationIsoFormats(iso_format4=pb.TranslationPinDataIsoFormat034(primary_account_number=pan))


def cvv1(expiry: str, service_code: str) -> pb.CardGenerationAttributes:
    return pb.CardGenerationAttributes(card_verification_value1=pb.CardVerificationValue1(
        card_expiry_date=expiry, service_code=service_code))


def cvv2(expiry: str) -> pb.CardGenerationAttributes:
    return pb.CardGenerationAttributes(card_verification_value2=pb.CardVerificationValue2(card_expiry_date=expiry))


def mac_alg(algorithm: int) -> pb.MacAttributes:
    return pb.MacAttributes(algorithm=algorithm)


def translate(b: Backend, block: str, incoming: str, outgoing: str, in_fmt: pb.TranslationIsoFormats,
              out_fmt: pb.TranslationIsoFormats, **dukpt: pb.DukptDerivationAttributes) -> pb.TranslatePinDataResponse:
    return b.call("TranslatePinData", pb.TranslatePinDataRequest(
        incoming_key_identifier=incoming, outgoing_key_identifier=outgoing, incoming_translation_attributes=in_fmt,
        outgoing_translation_attributes=out_fmt, encrypted_pin_block=block, **dukpt))


def zone_iso0(pin_block_hex: str, alias: str = "alias/pek-tdes") -> bytes:
    return tdes(MATERIAL[alias], bytes.fromhex(pin_block_hex), decrypt=True)


# ------------------------------------------------------------------------------ DUKPT PIN blocks

@covers("dukpt-tdes-x9.24-1-2009-A4")
def test_dukpt_tdes_a4_pin_blocks_to_zone_iso0(backend: Backend) -> None:
    v = PUBLIC["dukpt-tdes-x9.24-1-2009-A4"]
    pan, clear = v["inputs"]["pan"], v["inputs"]["clear_pin_block_iso0"]
    assert h(iso0_clear(v["inputs"]["pin"], pan)) == clear
    for step in v["expected"]["sequence"] + v["expected"]["rollover_sequence"]:
        out = translate(backend, step["encrypted_pin_block"], "alias/bdk-tdes", "alias/pek-tdes", fmt0(pan), fmt0(pan),
                        incoming_dukpt_attributes=pb.DukptDerivationAttributes(
                            key_serial_number=step["ksn"], dukpt_key_derivation_type=pb.TDES_2KEY))
        assert h(zone_iso0(out.pin_block)) == clear, step["ksn"]
        assert out.key_check_value == WELL_KNOWN_KCV and out.key_arn


# ------------------------------------------------------------------------------ CVV family

@covers("cvv-worked-example-111", "cvv-psec", "kcv-well-known-test-key")
@pytest.mark.parametrize(("vid", "alias"), [("cvv-worked-example-111", "alias/cvk-1"), ("cvv-psec", "alias/cvk-2")])
def test_cvv_cvv2_icvv_generate_and_verify(backend: Backend, vid: str, alias: str) -> None:
    i, exp = ALL[vid]["inputs"], ALL[vid]["expected"]
    cvk = MATERIAL[alias]
    assert h(cvk) == i["cvk"]
    assert cvv_oracle(cvk, i["pan"], i["expiry"], i["service_code"]) == exp["cvv"]  # the oracle, on the vector
    cases = [("CVV", cvv1(i["expiry"], i["service_code"]), i["service_code"]),
             ("CVV2", cvv2(i["expiry"]), "000"),
             ("iCVV", cvv1(i["expiry"], "999"), "999")]
    for name, attrs, service_code in cases:
        want = cvv_oracle(cvk, i["pan"], i["expiry"], service_code)
        out = backend.call("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier=alias, primary_account_number=i["pan"], generation_attributes=attrs))
        assert out.validation_data == want, name
        if alias == "alias/cvk-1":
            assert out.key_check_value == WELL_KNOWN_KCV
        five = backend.call("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier=alias, primary_account_number=i["pan"], generation_attributes=attrs,
            validation_data_length=5))
        assert five.validation_data == cvv_oracle(cvk, i["pan"], i["expiry"], service_code, 5), name
        ok = backend.call("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
            key_identifier=alias, primary_account_number=i["pan"], verification_attributes=attrs,
            validation_data=want))
        assert ok.verified and ok.reason == "", name
        wrong = f"{(int(want) + 1) % 1000:03d}"
        bad = backend.call("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
            key_identifier=alias, primary_account_number=i["pan"], verification_attributes=attrs,
            validation_data=wrong))
        assert not bad.verified and bad.reason == "INVALID_VALIDATION_DATA", name


# ------------------------------------------------------------------------------ PIN blocks

@covers("pinblock-iso0-idtech", "pinblock-iso0-payshield-fmt01", "pinblock-iso0-psec")
def test_iso0_blocks_translate_between_zone_keys(backend: Backend) -> None:
    cases = [(PUBLIC[vid]["inputs"]["pin"], PUBLIC[vid]["inputs"]["pan"], PUBLIC[vid]["expected"]["clear_pin_block"])
             for vid in ("pinblock-iso0-idtech", "pinblock-iso0-payshield-fmt01")]
    psec = EXTRA["pinblock-iso0-psec"]
    cases += [(c["pin"], psec["inputs"]["pan"], c["clear_pin_block"]) for c in psec["expected"]["cases"]]
    for pin, pan, clear in cases:
        assert h(iso0_clear(pin, pan)) == clear
        block = h(tdes(MATERIAL["alias/pek-tdes"], bytes.fromhex(clear)))
        out = translate(backend, block, "alias/pek-tdes", "alias/pek-tdes3", fmt0(pan), fmt0(pan))
        assert h(zone_iso0(out.pin_block, "alias/pek-tdes3")) == clear


@covers("pinblock-iso0-psec")
def test_malformed_clear_blocks_are_invalid_argument_naming_the_member(backend: Backend) -> None:
    v = EXTRA["pinblock-iso0-psec"]
    pan = v["inputs"]["pan"]
    for bad in v["expected"]["rejected"]:
        block = h(tdes(MATERIAL["alias/pek-tdes"], bytes.fromhex(bad["clear_pin_block"])))
        details = backend.fail("TranslatePinData", pb.TranslatePinDataRequest(
            incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/pek-tdes",
            incoming_translation_attributes=fmt0(pan),
            outgoing_translation_attributes=pb.TranslationIsoFormats(iso_format1=pb.TranslationPinDataIsoFormat1()),
            encrypted_pin_block=block), grpc.StatusCode.INVALID_ARGUMENT)
        assert "EncryptedPinBlock" in details, (bad["why"], details)
        for secret in (block, bad["clear_pin_block"], pan, pan[-12:]):
            assert secret not in details.upper(), bad["why"]


@covers("pinblock-iso4-x9.24-3-fields")
def test_iso0_to_iso4_fields(backend: Backend) -> None:
    v = PUBLIC["pinblock-iso4-x9.24-3-fields"]
    pin, pan, exp = v["inputs"]["pin"], v["inputs"]["pan"], v["expected"]
    block = h(tdes(MATERIAL["alias/pek-tdes"], iso0_clear(pin, pan)))
    out = translate(backend, block, "alias/pek-tdes", "alias/pek-aes128", fmt0(pan), fmt4(pan))
    key = MATERIAL["alias/pek-aes128"]
    inner = xor(aes(key, bytes.fromhex(out.pin_block), decrypt=True), bytes.fromhex(exp["pan_field"]))
    assert h(aes(key, inner, decrypt=True)[:8]) == exp["pin_field_first8"]
    for case in exp["extra_cases"]:  # other PIN lengths and PAN lengths, through the same translation
        c_pin, c_pan = case.get("pin", pin), case.get("pan", pan)
        if len(c_pan) < 12:  # APC's PrimaryAccountNumber is 12-19 digits
            continue
        block = h(tdes(MATERIAL["alias/pek-tdes"], iso0_clear(c_pin, c_pan)))
        out = translate(backend, block, "alias/pek-tdes", "alias/pek-aes128", fmt0(c_pan), fmt4(c_pan))
        pan_field = bytes.fromhex(case["pan_field"]) if "pan_field" in case else bytes.fromhex(exp["pan_field"])
        field_ = aes(key, xor(aes(key, bytes.fromhex(out.pin_block), decrypt=True), pan_field), decrypt=True)
        if "pin_field_first8" in case:
            assert h(field_[:8]) == case["pin_field_first8"]
        else:
            assert h(field_[:8]) == exp["pin_field_first8"]


@covers("pinblock-iso4-x9.24-3-supplement", "dukpt-aes128-x9.24-3-B1")
def test_iso4_aes_dukpt_and_zone_key_to_iso0(backend: Backend) -> None:
    v = EXTRA["pinblock-iso4-x9.24-3-supplement"]
    i, exp = v["inputs"], v["expected"]
    clear = iso0_clear(i["pin"], i["pan"])
    assert h(MATERIAL["alias/bdk-aes128"]) == i["bdk"]
    assert h(MATERIAL["alias/pek-aes128"]) == exp["transactions"][0]["pin_key"]
    assert EXTRA["dukpt-aes128-x9.24-3-B1"]["expected"]["working_keys_ksn1"]["PIN"] == exp["transactions"][0]["pin_key"]
    for ksn, tx in zip(i["ksns"], exp["transactions"], strict=True):
        out = translate(backend, tx["encrypted_pin_block"], "alias/bdk-aes128", "alias/pek-tdes", fmt4(i["pan"]),
                        fmt0(i["pan"]), incoming_dukpt_attributes=pb.DukptDerivationAttributes(
                            key_serial_number=ksn, dukpt_key_derivation_type=pb.AES_128))
        assert zone_iso0(out.pin_block) == clear, ksn
    out = translate(backend, exp["transactions"][0]["encrypted_pin_block"], "alias/pek-aes128", "alias/pek-tdes",
                    fmt4(i["pan"]), fmt0(i["pan"]))
    assert zone_iso0(out.pin_block) == clear


@covers("pinblock-iso4-psec-decipher")
def test_iso4_psec_decipher(backend: Backend) -> None:
    i = EXTRA["pinblock-iso4-psec-decipher"]["inputs"]
    assert h(MATERIAL["alias/pek-aes128-2"]) == i["key"]
    out = translate(backend, i["encrypted_pin_block"], "alias/pek-aes128-2", "alias/pek-tdes", fmt4(i["pan"]),
                    fmt0(i["pan"]))
    assert zone_iso0(out.pin_block) == iso0_clear(EXTRA["pinblock-iso4-psec-decipher"]["expected"]["pin"], i["pan"])


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


CMAC_ALIASES = {"AES128": "alias/cmac-aes128", "AES192": "alias/cmac-aes192", "AES256": "alias/cmac-aes256",
                "TDES2": "alias/cmac-tdes2", "TDES3": "alias/cmac-tdes3"}


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
    entry = next(e for e in load_keys(default_keys_file()) if e.alias == alias)
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

def arqc_request(vid: str) -> tuple[pb.VerifyAuthRequestCryptogramRequest, str]:
    """The pyemv CVN vectors as APC requests (the caller pads CVN18/133 data with method 2, as APC expects)."""
    i, exp = EXTRA[vid]["inputs"], EXTRA[vid]["expected"]
    card = dict(primary_account_number=i["pan"], pan_sequence_number=i["psn"])
    if vid.endswith("cvn10"):
        data = i["transaction_data"]
        session = pb.SessionKeyDerivation(visa=pb.SessionKeyVisa(**card))
        mode, response = pb.EMV_OPTION_A, pb.CryptogramAuthResponse(
            arpc_method1=pb.CryptogramVerificationArpcMethod1(auth_response_code=i["arc"]))
    else:
        raw = bytes.fromhex(i["transaction_data_unpadded"])
        data = h(raw + b"\x80" + bytes(-(len(raw) + 1) % 8))
        if vid.endswith("cvn18"):
            session = pb.SessionKeyDerivation(emv_common=pb.SessionKeyEmvCommon(
                **card, application_transaction_counter=i["atc"]))
            mode, response = pb.EMV_OPTION_B, pb.CryptogramAuthResponse(
                arpc_method2=pb.CryptogramVerificationArpcMethod2(card_status_update=i["csu"]))
        else:
            session = pb.SessionKeyDerivation(mastercard=pb.SessionKeyMastercard(
                **card, application_transaction_counter=i["atc"], unpredictable_number=i["un"]))
            mode, response = pb.EMV_OPTION_A, pb.CryptogramAuthResponse(
                arpc_method1=pb.CryptogramVerificationArpcMethod1(auth_response_code=i["arc"]))
    request = pb.VerifyAuthRequestCryptogramRequest(
        key_identifier="alias/imk-ac", transaction_data=data, auth_request_cryptogram=exp["arqc"],
        major_key_derivation_mode=mode, session_key_derivation_attributes=session, auth_response_attributes=response)
    return request, exp.get("arpc_method1") or exp["arpc_method2"]


CVN_IDS = ["emv-pyemv-cvn10", "emv-pyemv-cvn18", "emv-pyemv-cvn133-mastercard-skd"]


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


# ------------------------------------------------------------------------------ errors

PAN = "4123456789012345"
BAD_PAN = "41234567890123X5"
BAD_EXPIRY = "87O1"


def test_malformed_input_names_the_field_never_the_value(backend: Backend) -> None:
    cases: list[tuple[str, Any, str, tuple[str, ...]]] = [
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=BAD_PAN, generation_attributes=cvv2("8701")),
         "PrimaryAccountNumber", (BAD_PAN,)),
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=PAN, generation_attributes=cvv1(BAD_EXPIRY, "111")),
         "GenerationAttributes.CardVerificationValue1.CardExpiryDate", (BAD_EXPIRY, PAN)),
        ("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=PAN + "12345", verification_attributes=cvv2("8701"),
            validation_data="123"), "PrimaryAccountNumber", (PAN + "12345",)),
        ("TranslatePinData", pb.TranslatePinDataRequest(
            incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/pek-tdes",
            incoming_translation_attributes=fmt0(PAN), outgoing_translation_attributes=fmt0(PAN),
            encrypted_pin_block="0412AC89ABCDEF6Z"), "EncryptedPinBlock", ("0412AC89ABCDEF6Z", PAN)),
        ("TranslatePinData", pb.TranslatePinDataRequest(
            incoming_key_identifier="alias/bdk-tdes", outgoing_key_identifier="alias/pek-tdes",
            incoming_translation_attributes=fmt0(PAN), outgoing_translation_attributes=fmt0(PAN),
            encrypted_pin_block="1B9C1845EB993A7A",
            incoming_dukpt_attributes=pb.DukptDerivationAttributes(key_serial_number="FFFF98765432XXE00001")),
         "IncomingDukptAttributes.KeySerialNumber", ("FFFF98765432XXE00001", "1B9C1845EB993A7A", PAN)),
        ("VerifyAuthRequestCryptogram", pb.VerifyAuthRequestCryptogramRequest(
            key_identifier="alias/imk-ac", transaction_data="ABC", auth_request_cryptogram="29CCA15AE665FA2E",
            major_key_derivation_mode=pb.EMV_OPTION_A,
            session_key_derivation_attributes=pb.SessionKeyDerivation(visa=pb.SessionKeyVisa(
                primary_account_number=PAN, pan_sequence_number="00"))), "TransactionData", (PAN, "29CCA15AE665FA2E")),
        ("GenerateMac", pb.GenerateMacRequest(
            key_identifier="alias/bdk-tdes", message_data="00" * 8,
            generation_attributes=pb.MacAttributes(dukpt_iso9797_algorithm3=pb.MacAlgorithmDukpt(
                key_serial_number="FFFF", dukpt_key_variant=pb.REQUEST))),
         "GenerationAttributes.DukptIso9797Algorithm3.KeySerialNumber", ()),
    ]
    for method, request, path, secrets in cases:
        details = backend.fail(method, request, grpc.StatusCode.INVALID_ARGUMENT)
        assert path in details, (method, path, details)
        for secret in secrets:
            assert secret not in details, (method, path)


def test_key_that_does_not_fit_the_op_is_invalid_argument(backend: Backend) -> None:
    """Checked by the node that holds the key (engine or region): the key usage is not the codec's to know."""
    details = backend.fail("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
        key_identifier="alias/pek-tdes", primary_account_number=PAN, generation_attributes=cvv2("8701")),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert "KeyIdentifier" in details and PAN not in details
    details = backend.fail("TranslatePinData", pb.TranslatePinDataRequest(
        incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/pek-tdes",
        incoming_translation_attributes=fmt0(PAN), outgoing_translation_attributes=fmt4(PAN),
        encrypted_pin_block=h(tdes(MATERIAL["alias/pek-tdes"], iso0_clear("1234", PAN)))),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert "OutgoingKeyIdentifier" in details and PAN not in details


def test_unknown_alias_is_not_found(backend: Backend) -> None:
    missing = "alias/no-such-key"
    for method, request in (
            ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
                key_identifier=missing, primary_account_number=PAN, generation_attributes=cvv2("8701"))),
            ("TranslatePinData", pb.TranslatePinDataRequest(
                incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier=missing,
                incoming_translation_attributes=fmt0(PAN), outgoing_translation_attributes=fmt0(PAN),
                encrypted_pin_block="0412AC89ABCDEF67")),
            ("VerifyAuthRequestCryptogram", arqc_request("emv-pyemv-cvn10")[0].__class__(
                key_identifier=missing, transaction_data="00" * 8, auth_request_cryptogram="00" * 8,
                major_key_derivation_mode=pb.EMV_OPTION_A, session_key_derivation_attributes=pb.SessionKeyDerivation(
                    visa=pb.SessionKeyVisa(primary_account_number=PAN, pan_sequence_number="00")))),
            ("GenerateMac", pb.GenerateMacRequest(key_identifier=missing, message_data="00",
                                                  generation_attributes=mac_alg(pb.ISO9797_ALGORITHM3))),
            ("EncryptData", pb.EncryptDataRequest(key_identifier=missing, plain_text="00" * 16,
                                                  encryption_attributes=sym(pb.ECB)))):
        details = backend.fail(method, request, grpc.StatusCode.NOT_FOUND)
        assert missing in details and PAN not in details, method


# ------------------------------------------------------------------------------ the strict token

@pytest.fixture(scope="module")
def strict_daemon(strict_payment_cluster: PaymentCluster, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[DaemonProcess]:
    daemon = start_daemon(strict_payment_cluster.variant(["node-d"], "kat-strict"),
                          tmp_path_factory.mktemp("logs") / "kat-strict.log")
    yield daemon
    daemon.stop()


def test_strict_token_holder_answers_unavailable_and_counts_skipped_ops(strict_daemon: DaemonProcess) -> None:
    i = PUBLIC["cvv-worked-example-111"]["inputs"]
    before = node_table(strict_daemon)["node-d"]
    keys = {k.alias for k in before.keys}
    assert {"alias/cvk-1", "alias/mac-retail"} <= keys and "card_validation" not in before.capabilities
    assert "encrypt" in before.capabilities
    requests = [
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=i["pan"],
            generation_attributes=cvv1(i["expiry"], i["service_code"])), "card_validation"),
        ("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=i["pan"], verification_attributes=cvv2(i["expiry"]),
            validation_data="123"), "card_validation"),
        ("GenerateMac", pb.GenerateMacRequest(key_identifier="alias/mac-retail", message_data="00" * 8,
                                              generation_attributes=mac_alg(pb.ISO9797_ALGORITHM3)), "iso9797_mac"),
    ]
    with strict_daemon.channel() as channel:
        ops = pb_grpc.OperationsStub(channel)
        for method, request, _ in requests:
            with pytest.raises(grpc.RpcError) as info:
                getattr(ops, method)(request, timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, method
            assert i["pan"] not in (info.value.details() or "")
        # native ops on the same token keep working
        out = ops.EncryptData(pb.EncryptDataRequest(key_identifier="alias/zek-aes128",
                                                    plain_text="6BC1BEE22E409F96E93D7E117393172A",
                                                    encryption_attributes=sym(pb.ECB)), timeout=TIMEOUT)
        assert out.cipher_text == "3AD77BB40D7A3660A89ECAF32466EF97"
        mac = ops.GenerateMac(pb.GenerateMacRequest(key_identifier="alias/cmac-aes128",
                                                    message_data=PUBLIC["cmac-aes-nist-sp800-38b"]["inputs"][
                                                        "message64"][:32], generation_attributes=mac_alg(pb.CMAC)),
                              timeout=TIMEOUT)
        assert mac.mac == PUBLIC["cmac-aes-nist-sp800-38b"]["expected"]["AES128"]["16"]
    after = node_table(strict_daemon)["node-d"]
    assert after.skipped_ops["card_validation"] - before.skipped_ops.get("card_validation", 0) == 2
    assert after.skipped_ops["iso9797_mac"] - before.skipped_ops.get("iso9797_mac", 0) == 1
    assert after.ops_ok - before.ops_ok == 2 and after.ops_failed == before.ops_failed
    assert after.state.startswith("healthy") and after.ejections == 0  # not serving is not a fault


# ------------------------------------------------------------------------------ bookkeeping

def test_every_vector_is_accounted_for() -> None:
    assert not COVERED & set(NOT_API)
    assert COVERED | set(NOT_API) == set(ALL)


def test_dev_up_provisions_two_state_dirs_in_one_process(tmp_path: Path) -> None:
    """The session's cluster fixtures call dev_up in the pytest process, one state dir each."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from hsmlb.dev.cluster import default_keys_file, dev_up
        for name in ("first", "second"):
            dev_up(Path({str(tmp_path)!r}) / name, default_keys_file(), listen="127.0.0.1:0")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-1500:]
