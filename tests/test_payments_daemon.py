"""Payment known-answer vectors through the real daemon, on each backend kind: DUKPT and zone PIN
blocks, the CVV family, request errors, the strict token, and the vector bookkeeping. MACs, EMV
cryptograms and data encryption are in test_payments_daemon_mac_data.py; the shared daemons,
accounting, oracles and builders in tests/_payment_backend.py.

Every vector of tests/vectors/public_kat.json and extra_kat.json that maps to an API operation is
sent over gRPC to a daemon whose only node is a PKCS#11 token with host-side derivation (node-a)
and to one whose only node is an emulated APC region (apc-east). Results are checked against the
vector, or (PIN translations) decrypted here with `cryptography` under the dev key material and
compared with the clear PIN block. An autouse check proves, with ListNodes ops_ok deltas, that
the intended node answered every successful request and no node fault occurred.

Also: failed verifications are results, malformed input is INVALID_ARGUMENT naming the APC field
path (never the value), an unknown alias is NOT_FOUND, and a strict token (node-d, native ops
only) that holds a payment key answers UNAVAILABLE and counts it in skipped_ops.
`test_every_vector_is_accounted_for` fails when a vector file gains an id neither module places.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests import _payment_backend
from tests._payment_backend import (
    NOT_API,
    TIMEOUT,
    WELL_KNOWN_KCV,
    Backend,
    aes,
    arqc_request,
    covers,
    cvv1,
    cvv2,
    cvv_oracle,
    fmt0,
    fmt4,
    iso0_clear,
    mac_alg,
    tdes,
    translate,
    xor,
    zone_iso0,
)
from tests._payment_common import ALL, EXTRA, MATERIAL, PUBLIC, h
from tests.conftest import DaemonProcess, PaymentCluster, node_table, start_daemon, sym

# The shared per-kind daemons and the per-test accounting (pytest looks fixtures up by name in this module).
backend = _payment_backend.backend
served_by_intended_node = _payment_backend.served_by_intended_node


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
    """Every vector id is sent by a test here or in the sibling module (imported for its @covers claims,
    whichever tests were selected) or is listed in NOT_API with the reason, never both."""
    importlib.import_module("tests.test_payments_daemon_mac_data")
    assert not covers.ids & set(NOT_API)
    assert covers.ids | set(NOT_API) == set(ALL)


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
