"""Payment known answers through the real daemon: one daemon per backend kind (a token with host-side
derivation, an emulated APC region), per-test accounting that the intended node answered, independent
`cryptography` oracles, and request builders. Shared by test_payments_daemon*.py.

A test module takes the fixtures by binding them to its own names (pytest finds fixtures in the
module's namespace): `backend = _payment_backend.backend` and the autouse `served_by_intended_node`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._payment_common import EXTRA, MATERIAL, PUBLIC, Claims, h, iso_format
from tests.conftest import DaemonProcess, PaymentCluster, node_table, start_daemon

BACKENDS = {"tokens": "node-a", "region": "apc-east"}
TIMEOUT = 10
WELL_KNOWN_KCV = PUBLIC["kcv-well-known-test-key"]["expected"]["kcv_ansi_x9_24"]

# Vector ids sent through the API (claimed with @covers), and those that cannot be, with the reason.
covers = Claims()
NOT_API = {
    "des-sp800-17-grabbe": "single DES: no API key type is single-length DES",
    "emv-optA-csk-arqc-arpc": "session key from a raw R value, not from an ATC: no APC session-key derivation",
    "emv-kd-optA-optB": "session keys from a raw R value: no APC session-key derivation",
    "emv-pyemv-docstring-examples": "primitives on a given session key: not an APC request",
    "emv-pyemv-visa-pad-aligned": "ARQC under a raw-R session key: not an APC request",
}


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
    text = h(block)
    digits = [c for c in text if c.isdigit()] + [str(int(c, 16) - 10) for c in text if not c.isdigit()]
    return "".join(digits[:length])


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
    return iso_format(0, pan)


def fmt4(pan: str) -> pb.TranslationIsoFormats:
    return iso_format(4, pan)


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
