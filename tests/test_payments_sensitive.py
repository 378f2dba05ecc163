"""Payment requests: PANs, PINs, PIN blocks and values derived from the clear PIN never leave the
request path: not in gRPC error messages, not in ListNodes, not in the daemons' logs, not in the
emulated region's output.

A token daemon (node-a with host-side derivation, node-d strict) and a region daemon (an emulated
region of this module's own), all logging at DEBUG, get valid and malformed payment requests over
unary calls and the Stream, and requests that meet node faults and throttling. A PAN may appear in
an error at most masked (first 6 / last 4 digits): no run of 7 digits of a PAN may appear anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from hsmlb.dev.regions import Emulator, region_node_config, start_emulator
from hsmlb.payments import dukpt, emv, pinblock
from hsmlb.payments import primitives as P
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._payment_common import MATERIAL, h, iso_format
from tests.conftest import DaemonProcess, PaymentCluster, debug_logging, set_faults, start_daemon
from tests.test_sensitive_data import luhn_valid

# Card-network test PANs (Luhn-valid, not real accounts) and PINs long enough never to occur by chance.
PANS = ("4761739001010119", "5413330089020011", "6011000990139424")
PINS = ("73920584", "481726395012")
KSN = "FFFF9876543210E00007"
STREAM_FIELDS = {"GenerateCardValidationData": "generate_card_validation_data",
                 "VerifyCardValidationData": "verify_card_validation_data", "TranslatePinData": "translate_pin_data",
                 "VerifyAuthRequestCryptogram": "verify_auth_request_cryptogram", "EncryptData": "encrypt_data",
                 "GenerateMac": "generate_mac"}
EMULATOR_KEEP = 200  # hsmlb.dev.regions keeps the first line and the last 199 of an emulator's output


@dataclass
class Secrets:
    """What must never be shown, by name: PINs, clear and enciphered PIN blocks, derived keys, key material."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: str) -> str:
        self.values[name] = value.upper()
        return value

    def leaks(self, text: str) -> list[str]:
        upper = text.upper()
        found = [name for name, value in self.values.items() if value in upper]
        return found + [f"PAN digits of {pan[:6]}..." for pan in PANS if pan_exposed(pan, text)]


def pan_exposed(pan: str, text: str) -> bool:
    """True if 7 consecutive digits of the PAN appear in a run of digits: more than first 6 / last 4 masking shows."""
    windows = {pan[i:i + 7] for i in range(len(pan) - 6)}
    return any(w in run for run in re.findall(r"\d{7,}", text) for w in windows)


@dataclass
class Traffic:
    errors: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    successes: int = 0
    list_nodes: list[str] = field(default_factory=list)

    def error(self, code: str, text: str) -> None:
        self.errors.append(f"{code} {text}")
        self.codes[code] = self.codes.get(code, 0) + 1


def payment_requests(pan: str, pin: str, secrets: Secrets) -> list[tuple[str, Any]]:
    """(method, request) pairs carrying the PAN, a PIN block of `pin` and values derived from it."""
    clear0 = secrets.add(f"clear ISO-0 block {pin}/{pan}", h(pinblock.encode_iso0(pin, pan)))
    secrets.add(f"ISO-4 PIN field {pin}", h(pinblock.iso4_pin_field(pin, bytes(8))[:8]))
    zone = secrets.add(f"ISO-0 under pek-tdes {pin}/{pan}", h(P.encrypt_ecb("TDES", MATERIAL["alias/pek-tdes"],
                                                                            bytes.fromhex(clear0))))
    pin_key = dukpt.tdes_derive(MATERIAL["alias/bdk-tdes"], bytes.fromhex(KSN), "PIN")
    secrets.add("DUKPT PIN key", h(pin_key))
    dukpt_block = secrets.add(f"ISO-0 under the DUKPT key {pin}/{pan}",
                              h(P.encrypt_ecb("TDES", pin_key, bytes.fromhex(clear0))))
    other_pan = PANS[(PANS.index(pan) + 1) % len(PANS)]
    cvv = pb.CardGenerationAttributes(card_verification_value1=pb.CardVerificationValue1(
        card_expiry_date="2712", service_code="101"))
    imk = MATERIAL["alias/imk-ac"]
    data = bytes.fromhex("0000000010000000000000000840000000000840250101005912345678") + pan.encode()[:6]
    arqc = emv.application_cryptogram(emv.icc_master_key_option_a(imk, pan, "01"), data, padding=1)
    visa = pb.SessionKeyDerivation(visa=pb.SessionKeyVisa(primary_account_number=pan, pan_sequence_number="01"))

    def translate(block: str, in_fmt: int = 0, out_fmt: int = 0, in_pan: str = pan, incoming: str = "alias/pek-tdes",
                  outgoing: str = "alias/pek-tdes3", **extra: Any) -> pb.TranslatePinDataRequest:
        return pb.TranslatePinDataRequest(
            incoming_key_identifier=incoming, outgoing_key_identifier=outgoing,
            incoming_translation_attributes=iso_format(in_fmt, in_pan),
            outgoing_translation_attributes=iso_format(out_fmt, pan),
            encrypted_pin_block=block, **extra)

    def arqc_request(cryptogram: bytes, psn: str = "01", tx: str = h(data)) -> pb.VerifyAuthRequestCryptogramRequest:
        session = pb.SessionKeyDerivation()
        session.CopyFrom(visa)
        session.visa.pan_sequence_number = psn
        return pb.VerifyAuthRequestCryptogramRequest(
            key_identifier="alias/imk-ac", transaction_data=tx, auth_request_cryptogram=h(cryptogram),
            major_key_derivation_mode=pb.EMV_OPTION_A, session_key_derivation_attributes=session,
            auth_response_attributes=pb.CryptogramAuthResponse(
                arpc_method1=pb.CryptogramVerificationArpcMethod1(auth_response_code="3030")))

    return [
        # valid: results, including failed verifications
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=pan, generation_attributes=cvv)),
        ("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=pan, verification_attributes=cvv,
            validation_data="000")),
        ("TranslatePinData", translate(zone)),
        ("TranslatePinData", translate(zone, out_fmt=1)),
        ("TranslatePinData", translate(zone, out_fmt=3)),
        ("TranslatePinData", translate(zone, out_fmt=4, outgoing="alias/pek-aes128")),
        ("TranslatePinData", translate(dukpt_block, incoming="alias/bdk-tdes",
                                       incoming_dukpt_attributes=pb.DukptDerivationAttributes(key_serial_number=KSN))),
        ("VerifyAuthRequestCryptogram", arqc_request(arqc)),
        ("VerifyAuthRequestCryptogram", arqc_request(P.xor(arqc, b"\x01" * 8))),
        ("EncryptData", pb.EncryptDataRequest(key_identifier="alias/bdk-tdes", plain_text=clear0 + pan,
                                              encryption_attributes=pb.EncryptionDecryptionAttributes(
                                                  dukpt=pb.DukptEncryptionAttributes(key_serial_number=KSN)))),
        ("GenerateMac", pb.GenerateMacRequest(key_identifier="alias/mac-retail", message_data=clear0 + pan,
                                              generation_attributes=pb.MacAttributes(algorithm=pb.ISO9797_ALGORITHM3))),
        # malformed, at the codec (APC model)
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=pan[:-1] + "X", generation_attributes=cvv)),
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/cvk-1", primary_account_number=pan + "0123", generation_attributes=cvv)),
        ("TranslatePinData", translate(zone[:-1])),
        ("TranslatePinData", translate(zone[:-1] + "G")),
        ("TranslatePinData", translate(dukpt_block, incoming="alias/bdk-tdes",
                                       incoming_dukpt_attributes=pb.DukptDerivationAttributes(
                                           key_serial_number=pan + "X"))),
        ("VerifyAuthRequestCryptogram", arqc_request(arqc, psn="0X")),
        ("VerifyAuthRequestCryptogram", arqc_request(arqc, tx=h(data) + pan[:3])),
        # malformed for the key or the block, found by the node (engine or region)
        ("TranslatePinData", translate(zone, in_pan=other_pan)),  # decodes under the wrong PAN
        ("TranslatePinData", translate(dukpt_block)),  # a DUKPT block read as a zone block
        ("TranslatePinData", translate(zone, out_fmt=4)),  # ISO 4 under a TDES key
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/pek-tdes", primary_account_number=pan, generation_attributes=cvv)),
        ("GenerateMac", pb.GenerateMacRequest(key_identifier="alias/mac-retail", message_data=clear0 + pan,
                                              generation_attributes=pb.MacAttributes(algorithm=pb.ISO9797_ALGORITHM3),
                                              mac_length=12)),
        # unknown key
        ("TranslatePinData", translate(zone, outgoing="alias/no-such-key")),
        ("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
            key_identifier="alias/no-such-cvk", primary_account_number=pan, generation_attributes=cvv)),
    ]


def _send(ops: pb_grpc.OperationsStub, traffic: Traffic, method: str, request: Any) -> None:
    try:
        getattr(ops, method)(request, timeout=30)
        traffic.successes += 1
    except grpc.RpcError as err:
        traffic.error(err.code().name, f"{err.details()} {err.debug_error_string()}")


def drive(daemon: DaemonProcess, secrets: Secrets, region: Emulator | None) -> Traffic:
    traffic = Traffic()
    with daemon.channel() as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        for pan in PANS:
            for pin in PINS:
                requests = payment_requests(pan, pin, secrets)
                for method, request in requests:
                    _send(ops, traffic, method, request)
                stream = [pb.StreamRequest(request_id=i, **{STREAM_FIELDS[m]: r}) for i, (m, r) in enumerate(requests)]
                for reply in ops.Stream(iter(stream), timeout=60):
                    if reply.WhichOneof("result") == "status":
                        traffic.error(f"stream:{reply.status.code}", reply.status.message)
                    else:
                        traffic.successes += 1
        traffic.list_nodes.append(str(admin.ListNodes(pb.ListNodesRequest(), timeout=10)))
        if region is not None:  # the region fails, then throttles, requests that carry PANs and PIN blocks
            for setting in ({"error_rate": 1.0}, {"throttle_rate": 1.0}):
                try:
                    set_faults(region, **setting)
                    for pan in PANS:
                        for method, request in payment_requests(pan, PINS[0], secrets)[:8]:
                            _send(ops, traffic, method, request)
                    traffic.list_nodes.append(str(admin.ListNodes(pb.ListNodesRequest(), timeout=10)))
                finally:
                    set_faults(region)
    return traffic


@dataclass
class Run:
    secrets: Secrets
    traffic: dict[str, Traffic]
    logs: dict[str, str]
    emulator_lines: list[str]


@pytest.fixture(scope="module")
def run(strict_payment_cluster: PaymentCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    cluster, logs_dir = strict_payment_cluster, tmp_path_factory.mktemp("payments-sensitive")
    secrets = Secrets()
    for name in ("user.pin", "so.pin"):
        secrets.add(name, (cluster.state_dir / name).read_text().strip())
    for alias, material in MATERIAL.items():
        secrets.add(alias, h(material))
    for pin in PINS:
        secrets.add(f"PIN {pin}", pin)
    with debug_logging():
        daemons: dict[str, DaemonProcess] = {}
        region = start_emulator("apc-sensitive", "us-east-2", cluster.keys_file, cluster.state_dir,
                                fault_injection=True)
        try:
            daemons["tokens"] = start_daemon(cluster.variant(["node-a", "node-d"], "sens-tokens"),
                                             logs_dir / "tokens.log")
            region_node = region_node_config(region, cluster.state_dir)
            daemons["region"] = start_daemon(cluster.variant([], "sens-region", extra_nodes=[region_node]),
                                             logs_dir / "region.log")
        except BaseException:  # a daemon that did not start must not leave the others running
            for daemon in daemons.values():
                daemon.stop()
            region.stop()
            raise
    try:
        traffic = {"tokens": drive(daemons["tokens"], secrets, None),
                   "region": drive(daemons["region"], secrets, region)}
    finally:
        for daemon in daemons.values():
            daemon.stop()  # flushes everything, shutdown included
        region.stop()
    yield Run(secrets, traffic, {name: d.log_text() for name, d in daemons.items()}, list(region.log))


def test_pans_are_luhn_valid_and_masking_is_detected() -> None:
    assert all(luhn_valid(pan) for pan in PANS)
    assert pan_exposed(PANS[0], f"card {PANS[0]}") and pan_exposed(PANS[0], f"x{PANS[0][3:10]}x")
    assert not pan_exposed(PANS[0], f"card {PANS[0][:6]}******{PANS[0][-4:]}")


def test_traffic_reached_both_backends_and_every_layer(run: Run) -> None:
    for name, traffic in run.traffic.items():
        assert traffic.successes >= len(PANS) * len(PINS) * 2 * 11, name  # the valid requests, unary and stream
        text = "\n".join(traffic.errors)
        for evidence in ("PrimaryAccountNumber", "EncryptedPinBlock", "KeySerialNumber", "PanSequenceNumber",
                         "TransactionData", "KeyIdentifier", "no-such"):
            assert evidence in text, (name, evidence)
        assert {"INVALID_ARGUMENT", "NOT_FOUND"} <= set(traffic.codes), (name, traffic.codes)
    region = run.traffic["region"]
    assert {"UNAVAILABLE", "RESOURCE_EXHAUSTED"} <= set(region.codes), region.codes  # node faults and throttling
    assert "apc-sensitive" in region.list_nodes[1] and "detail" in region.list_nodes[1]
    assert "DEBUG" in run.logs["tokens"] and "DEBUG" in run.logs["region"]


def test_error_messages_carry_no_pan_pin_or_block(run: Run) -> None:
    for name, traffic in run.traffic.items():
        assert [e for e in traffic.errors if run.secrets.leaks(e)] == [], name


def test_list_nodes_carries_no_request_data(run: Run) -> None:
    for name, traffic in run.traffic.items():
        assert traffic.list_nodes, name
        assert run.secrets.leaks("\n".join(traffic.list_nodes)) == [], name


@pytest.mark.parametrize("daemon", ["tokens", "region"])
def test_daemon_log_carries_no_pan_pin_or_block(run: Run, daemon: str) -> None:
    log = run.logs[daemon]
    assert log.count("\n") > 5
    assert run.secrets.leaks(log) == []


def test_emulator_output_carries_no_pan_pin_or_block(run: Run) -> None:
    lines = run.emulator_lines
    assert len(lines) < EMULATOR_KEEP  # nothing was dropped from the middle: this is the whole output
    text = "\n".join(lines)
    assert "faults now" in text  # the fault switches were logged, so the log did run during the traffic
    assert run.secrets.leaks(text) == []

