"""Property tests: a token-only daemon (node-a, host-side engine) and a region-only daemon (apc-east)
give byte-identical answers to the same deterministic payment requests.

Inputs are random (hypothesis); requests that need valid cryptograms or PIN blocks are built with
hsmlb.payments (emv, pinblock, dukpt, primitives) under the dev keys file material. For the
randomized PIN block formats (ISO 1, 3 and 4) a PIN is translated into the format on one backend
and back to ISO 0 on the other, and must come back as the original ISO 0 block.

What this proves and what it does not: both kinds compute payment results with the same engine
(hsmlb/payments, in the token worker and in the emulator), so agreement here checks everything
around it (key provisioning and discovery, KCVs, the codec, routing, wire formats, error mapping)
rather than the cryptography; the cryptography is checked against public vectors in
test_payments_kat*.py and test_payments_daemon*.py. The symmetric ReEncryptData case does compare
two implementations (token primitives against the engine).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmlb.payments import dukpt, emv, pinblock
from hsmlb.payments import primitives as P
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests._payment_common import MATERIAL, h, iso_format
from tests.conftest import DaemonProcess, PaymentCluster, node_table, start_daemon, sym

TIMEOUT = 10
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Pair:
    tokens: pb_grpc.OperationsStub
    region: pb_grpc.OperationsStub
    daemons: tuple[DaemonProcess, DaemonProcess]

    def stub(self, name: str) -> pb_grpc.OperationsStub:
        return self.tokens if name == "tokens" else self.region

    def outcomes(self, method: str, request: Any) -> list[Any]:
        """Both daemons' answers, tokens then region: the reply, or the status code."""
        found: list[Any] = []
        for stub in (self.tokens, self.region):
            try:
                found.append(getattr(stub, method)(request, timeout=TIMEOUT))
            except grpc.RpcError as exc:
                found.append(exc.code())
        return found

    def both(self, method: str, request: Any) -> Any:
        """The same request on both daemons: identical replies (or identical error codes); the reply."""
        outcomes = self.outcomes(method, request)
        assert outcomes[0] == outcomes[1], (method, outcomes)
        assert not isinstance(outcomes[0], grpc.StatusCode), (method, outcomes[0])
        return outcomes[0]


@pytest.fixture(scope="module")
def pair(strict_payment_cluster: PaymentCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    logs = tmp_path_factory.mktemp("logs")
    tokens = start_daemon(strict_payment_cluster.variant(["node-a"], "eq-tokens"), logs / "eq-tokens.log")
    try:
        region = start_daemon(strict_payment_cluster.variant(["apc-east"], "eq-region"), logs / "eq-region.log")
    except BaseException:
        tokens.stop()
        raise
    try:
        with tokens.channel() as t_channel, region.channel() as r_channel:
            yield Pair(pb_grpc.OperationsStub(t_channel), pb_grpc.OperationsStub(r_channel), (tokens, region))
        for daemon, node in ((tokens, "node-a"), (region, "apc-east")):  # no answer here was a node fault
            status = node_table(daemon)[node]
            assert status.ops_failed == 0, (node, status.ops_failed, status.detail)
    finally:
        tokens.stop()
        region.stop()


# ------------------------------------------------------------------------------ strategies

pans = st.integers(12, 19).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
pins = st.integers(4, 12).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))
expiries = st.text("0123456789", min_size=4, max_size=4)
psns = st.text("0123456789", min_size=2, max_size=2)


def counter(bits: int, ones: int) -> st.SearchStrategy[int]:
    """A DUKPT transaction counter of `bits` bits with 1..`ones` bits set (as real devices produce)."""
    return st.sets(st.integers(0, bits - 1), min_size=1, max_size=ones).map(lambda s: sum(1 << b for b in s))


# 10-byte TDES KSN: 59 bits of BDK id / device id, then the 21-bit counter
tdes_ksns = st.tuples(st.binary(min_size=8, max_size=8), counter(21, 10)).map(
    lambda t: h((int.from_bytes(t[0], "big") << 16 & ~0x1FFFFF | t[1]).to_bytes(10, "big")))
# 12-byte AES KSN: 8-byte initial key id, 32-bit counter
aes_ksns = st.tuples(st.binary(min_size=8, max_size=8), counter(32, 16)).map(
    lambda t: h(t[0] + t[1].to_bytes(4, "big")))
variants = st.sampled_from([pb.REQUEST, pb.RESPONSE, pb.BIDIRECTIONAL])


# ------------------------------------------------------------------------------ card validation

@EXAMPLES
@given(alias=st.sampled_from(["alias/cvk-1", "alias/cvk-2"]), pan=pans, expiry=expiries,
       kind=st.sampled_from(["CVV", "CVV2", "iCVV"]), service_code=st.text("0123456789", min_size=3, max_size=3),
       length=st.sampled_from([0, 3, 4, 5]))
def test_cvv_family(pair: Pair, alias: str, pan: str, expiry: str, kind: str, service_code: str, length: int) -> None:
    if kind == "CVV2":
        attrs = pb.CardGenerationAttributes(card_verification_value2=pb.CardVerificationValue2(card_expiry_date=expiry))
    else:
        attrs = pb.CardGenerationAttributes(card_verification_value1=pb.CardVerificationValue1(
            card_expiry_date=expiry, service_code="999" if kind == "iCVV" else service_code))
    out = pair.both("GenerateCardValidationData", pb.GenerateCardValidationDataRequest(
        key_identifier=alias, primary_account_number=pan, generation_attributes=attrs, validation_data_length=length))
    assert len(out.validation_data) == (length or 3) and out.validation_data.isdigit()
    ok = pair.both("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
        key_identifier=alias, primary_account_number=pan, verification_attributes=attrs,
        validation_data=out.validation_data))
    assert ok.verified
    wrong = str((int(out.validation_data) + 1) % 10 ** len(out.validation_data)).zfill(len(out.validation_data))
    bad = pair.both("VerifyCardValidationData", pb.VerifyCardValidationDataRequest(
        key_identifier=alias, primary_account_number=pan, verification_attributes=attrs, validation_data=wrong))
    assert not bad.verified and bad.reason == "INVALID_VALIDATION_DATA"


# ------------------------------------------------------------------------------ MACs

MAC_KEYS = {  # algorithm -> (aliases, longest MAC in bytes for the shortest-block key among them)
    pb.ISO9797_ALGORITHM1: (["alias/mac-iso9797-1"], 8),
    pb.ISO9797_ALGORITHM3: (["alias/mac-retail"], 8),
    pb.CMAC: (["alias/cmac-aes128", "alias/cmac-aes192", "alias/cmac-aes256", "alias/cmac-tdes2",
               "alias/cmac-tdes3"], 8),
    pb.HMAC_SHA256: (["alias/hmac-1", "alias/hmac-2"], 32),
    pb.HMAC_SHA512: (["alias/hmac-sha512"], 32),
}


@EXAMPLES
@given(algorithm=st.sampled_from(list(MAC_KEYS)), pick=st.integers(0, 4), message=st.binary(min_size=1, max_size=96),
       length=st.integers(3, 32))
def test_macs(pair: Pair, algorithm: int, pick: int, message: bytes, length: int) -> None:
    aliases, longest = MAC_KEYS[algorithm]
    alias = aliases[pick % len(aliases)]
    mac_length = 0 if length < 4 else min(length, longest)
    out = pair.both("GenerateMac", pb.GenerateMacRequest(
        key_identifier=alias, message_data=h(message), generation_attributes=pb.MacAttributes(algorithm=algorithm),
        mac_length=mac_length))
    request = pb.VerifyMacRequest(key_identifier=alias, message_data=h(message), mac=out.mac,
                                  verification_attributes=pb.MacAttributes(algorithm=algorithm))
    assert pair.both("VerifyMac", request).verified
    request.message_data = h(message + b"\x01")
    bad = pair.both("VerifyMac", request)
    assert not bad.verified and bad.reason == "INVALID_MAC"


@EXAMPLES
@given(kind=st.sampled_from(["dukpt_iso9797_algorithm1", "dukpt_iso9797_algorithm3", "dukpt_cmac"]),
       tdes_ksn=tdes_ksns, aes_ksn=aes_ksns, variant=variants, message=st.binary(min_size=1, max_size=64),
       mac_length=st.sampled_from([0, 4, 8]))
def test_dukpt_macs(pair: Pair, kind: str, tdes_ksn: str, aes_ksn: str, variant: int, message: bytes,
                    mac_length: int) -> None:
    if kind == "dukpt_cmac":
        bdk, dukpt_attrs = "alias/bdk-aes128", pb.MacAlgorithmDukpt(
            key_serial_number=aes_ksn, dukpt_key_variant=variant, dukpt_derivation_type=pb.AES_128)
    else:  # DUKPT ISO 9797 MACs take whole blocks (the caller pads)
        bdk, dukpt_attrs = "alias/bdk-tdes", pb.MacAlgorithmDukpt(key_serial_number=tdes_ksn, dukpt_key_variant=variant)
        message += bytes(-len(message) % 8)
    attrs = pb.MacAttributes(**{kind: dukpt_attrs})
    out = pair.both("GenerateMac", pb.GenerateMacRequest(key_identifier=bdk, message_data=h(message),
                                                         generation_attributes=attrs, mac_length=mac_length))
    ok = pair.both("VerifyMac", pb.VerifyMacRequest(key_identifier=bdk, message_data=h(message), mac=out.mac,
                                                    verification_attributes=attrs))
    assert ok.verified


# ------------------------------------------------------------------------------ EMV

SESSIONS = ["emv_common", "mastercard", "visa", "amex"]


@EXAMPLES
@given(pan=pans, psn=psns, atc=st.binary(min_size=2, max_size=2), un=st.binary(min_size=4, max_size=4),
       data=st.binary(min_size=1, max_size=64), session=st.sampled_from(SESSIONS), option=st.sampled_from("AB"),
       arpc=st.sampled_from([None, 1, 2]), arc=st.binary(min_size=2, max_size=2),
       csu=st.binary(min_size=4, max_size=4), prop=st.binary(max_size=8))
def test_arqc_and_arpc(pair: Pair, pan: str, psn: str, atc: bytes, un: bytes, data: bytes, session: str,
                       option: str, arpc: int | None, arc: bytes, csu: bytes, prop: bytes) -> None:
    imk = MATERIAL["alias/imk-ac"]
    icc_mk = emv.icc_master_key(imk, pan, psn, option)
    card = dict(primary_account_number=pan, pan_sequence_number=psn)
    if session == "emv_common":
        key = emv.session_key_emv_common(icc_mk, atc)
        attrs = pb.SessionKeyDerivation(emv_common=pb.SessionKeyEmvCommon(
            **card, application_transaction_counter=h(atc)))
    elif session == "mastercard":
        key = emv.session_key_mastercard(icc_mk, atc, un)
        attrs = pb.SessionKeyDerivation(mastercard=pb.SessionKeyMastercard(
            **card, application_transaction_counter=h(atc), unpredictable_number=h(un)))
    else:
        key = icc_mk
        attrs = pb.SessionKeyDerivation(**{session: getattr(pb, f"SessionKey{session.title()}")(**card)})
    arqc = emv.application_cryptogram(key, data, padding=1)
    request = pb.VerifyAuthRequestCryptogramRequest(
        key_identifier="alias/imk-ac", transaction_data=h(data), auth_request_cryptogram=h(arqc),
        major_key_derivation_mode=pb.EMV_OPTION_A if option == "A" else pb.EMV_OPTION_B,
        session_key_derivation_attributes=attrs)
    if arpc == 1:
        request.auth_response_attributes.arpc_method1.auth_response_code = h(arc)
    elif arpc == 2:
        request.auth_response_attributes.arpc_method2.card_status_update = h(csu)
        request.auth_response_attributes.arpc_method2.proprietary_authentication_data = h(prop)
    out = pair.both("VerifyAuthRequestCryptogram", request)
    assert out.verified
    if arpc == 1:
        assert out.auth_response_value == h(emv.arpc_method_1(key, arqc, arc))
    elif arpc == 2:
        assert out.auth_response_value == h(emv.arpc_method_2(key, arqc, csu, prop))
    else:
        assert out.auth_response_value == ""
    request.auth_request_cryptogram = h(P.xor(arqc, b"\x00" * 7 + b"\x01"))
    bad = pair.both("VerifyAuthRequestCryptogram", request)
    assert not bad.verified and bad.reason == "INVALID_AUTH_REQUEST_CRYPTOGRAM"


# ------------------------------------------------------------------------------ data encryption

DATA_KEYS = {"alias/zek-aes128": 16, "alias/dek-aes256": 16, "alias/dek-tdes2": 8, "alias/dek-tdes3": 8}


@EXAMPLES
@given(alias=st.sampled_from(list(DATA_KEYS)), blocks=st.integers(1, 8), seed=st.binary(min_size=16, max_size=16),
       cbc=st.booleans(), iv=st.binary(min_size=16, max_size=16))
def test_ecb_cbc_encryption(pair: Pair, alias: str, blocks: int, seed: bytes, cbc: bool, iv: bytes) -> None:
    size = DATA_KEYS[alias]
    plain = (seed * blocks)[: size * blocks]
    attrs = sym(pb.CBC, h(iv[:size])) if cbc else sym(pb.ECB)
    out = pair.both("EncryptData", pb.EncryptDataRequest(key_identifier=alias, plain_text=h(plain),
                                                         encryption_attributes=attrs))
    back = pair.both("DecryptData", pb.DecryptDataRequest(key_identifier=alias, cipher_text=out.cipher_text,
                                                          decryption_attributes=attrs))
    assert back.plain_text == h(plain)


def cipher_attrs(alias: str, cbc: bool, iv: bytes, dukpt_ksn: str = "") -> pb.ReEncryptionAttributes:
    size = DATA_KEYS.get(alias, 8)
    if dukpt_ksn:
        return pb.ReEncryptionAttributes(dukpt=pb.DukptEncryptionAttributes(
            key_serial_number=dukpt_ksn, mode=pb.CBC if cbc else pb.ECB, dukpt_key_variant=pb.REQUEST,
            initialization_vector=h(iv[:size]) if cbc else ""))
    return pb.ReEncryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(
        mode=pb.CBC if cbc else pb.ECB, initialization_vector=h(iv[:size]) if cbc else ""))


def local_encrypt(alias: str, cbc: bool, iv: bytes, data: bytes) -> bytes:
    family = "AES" if DATA_KEYS[alias] == 16 else "TDES"
    key = MATERIAL[alias]
    return P.encrypt_cbc(family, key, data, iv[: DATA_KEYS[alias]]) if cbc else P.encrypt_ecb(family, key, data)


@EXAMPLES
@given(incoming=st.sampled_from([*DATA_KEYS, "alias/bdk-tdes"]), outgoing=st.sampled_from(list(DATA_KEYS)),
       in_cbc=st.booleans(), out_cbc=st.booleans(), iv_in=st.binary(min_size=16, max_size=16),
       iv_out=st.binary(min_size=16, max_size=16), blocks=st.integers(1, 4), seed=st.binary(min_size=16, max_size=16),
       ksn=tdes_ksns)
def test_reencrypt(pair: Pair, incoming: str, outgoing: str, in_cbc: bool, out_cbc: bool, iv_in: bytes,
                   iv_out: bytes, blocks: int, seed: bytes, ksn: str) -> None:
    """Symmetric (two token calls on a PKCS#11 node) and DUKPT-in (the engine) re-encryption, with explicit IVs."""
    plain = seed * blocks  # whole blocks for AES and TDES alike
    if incoming == "alias/bdk-tdes":
        key = dukpt.tdes_derive(MATERIAL[incoming], bytes.fromhex(ksn), "DATA_REQUEST")
        cipher = P.encrypt_cbc("TDES", key, plain, iv_in[:8]) if in_cbc else P.encrypt_ecb("TDES", key, plain)
        in_attrs = cipher_attrs(incoming, in_cbc, iv_in, ksn)
    else:
        cipher, in_attrs = local_encrypt(incoming, in_cbc, iv_in, plain), cipher_attrs(incoming, in_cbc, iv_in)
    out = pair.both("ReEncryptData", pb.ReEncryptDataRequest(
        incoming_key_identifier=incoming, outgoing_key_identifier=outgoing, cipher_text=h(cipher),
        incoming_encryption_attributes=in_attrs,
        outgoing_encryption_attributes=cipher_attrs(outgoing, out_cbc, iv_out)))
    assert out.cipher_text == h(local_encrypt(outgoing, out_cbc, iv_out, plain))


@EXAMPLES
@given(aes=st.booleans(), tdes_ksn=tdes_ksns, aes_ksn=aes_ksns, variant=variants, cbc=st.booleans(),
       blocks=st.integers(1, 6), seed=st.binary(min_size=16, max_size=16))
def test_dukpt_encryption(pair: Pair, aes: bool, tdes_ksn: str, aes_ksn: str, variant: int, cbc: bool, blocks: int,
                          seed: bytes) -> None:
    size = 16 if aes else 8
    plain = (seed * blocks)[: size * blocks]
    attrs = pb.DukptEncryptionAttributes(key_serial_number=aes_ksn if aes else tdes_ksn, dukpt_key_variant=variant,
                                         mode=pb.CBC if cbc else pb.ECB)
    bdk = "alias/bdk-aes128" if aes else "alias/bdk-tdes"
    out = pair.both("EncryptData", pb.EncryptDataRequest(
        key_identifier=bdk, plain_text=h(plain), encryption_attributes=pb.EncryptionDecryptionAttributes(dukpt=attrs)))
    back = pair.both("DecryptData", pb.DecryptDataRequest(
        key_identifier=bdk, cipher_text=out.cipher_text,
        decryption_attributes=pb.EncryptionDecryptionAttributes(dukpt=attrs)))
    assert back.plain_text == h(plain)


# ------------------------------------------------------------------------------ PIN translation

def iso0_under(alias: str, pin: str, pan: str) -> str:
    return h(P.encrypt_ecb("TDES", MATERIAL[alias], pinblock.encode_iso0(pin, pan)))


@EXAMPLES
@given(pin=pins, pan=pans, source=st.sampled_from(["zone", "tdes-dukpt", "aes-dukpt-iso4"]), tdes_ksn=tdes_ksns,
       aes_ksn=aes_ksns)
def test_iso0_translation(pair: Pair, pin: str, pan: str, source: str, tdes_ksn: str, aes_ksn: str) -> None:
    """ISO 0 output is deterministic: zone -> zone, TDES DUKPT -> zone, AES DUKPT (ISO 4) -> zone."""
    request = pb.TranslatePinDataRequest(outgoing_key_identifier="alias/pek-tdes3",
                                         outgoing_translation_attributes=iso_format(0, pan))
    if source == "zone":
        request.incoming_key_identifier = "alias/pek-tdes"
        request.incoming_translation_attributes.CopyFrom(iso_format(0, pan))
        request.encrypted_pin_block = iso0_under("alias/pek-tdes", pin, pan)
    elif source == "tdes-dukpt":
        key = dukpt.tdes_derive(MATERIAL["alias/bdk-tdes"], bytes.fromhex(tdes_ksn), "PIN")
        request.incoming_key_identifier = "alias/bdk-tdes"
        request.incoming_translation_attributes.CopyFrom(iso_format(0, pan))
        request.encrypted_pin_block = h(P.encrypt_ecb("TDES", key, pinblock.encode_iso0(pin, pan)))
        request.incoming_dukpt_attributes.key_serial_number = tdes_ksn
    else:
        key = dukpt.aes_derive(MATERIAL["alias/bdk-aes128"], bytes.fromhex(aes_ksn), "PIN")
        request.incoming_key_identifier = "alias/bdk-aes128"
        request.incoming_translation_attributes.CopyFrom(iso_format(4, pan))
        request.encrypted_pin_block = h(pinblock.encipher_iso4(key, pin, pan))
        request.incoming_dukpt_attributes.key_serial_number = aes_ksn
        request.incoming_dukpt_attributes.dukpt_key_derivation_type = pb.AES_128
    out = pair.both("TranslatePinData", request)
    assert out.pin_block == iso0_under("alias/pek-tdes3", pin, pan)


@EXAMPLES
@given(pin=pins, pan=pans, fmt=st.sampled_from([1, 3, 4]), first=st.sampled_from(["tokens", "region"]))
def test_randomized_formats_round_trip_across_backends(pair: Pair, pin: str, pan: str, fmt: int, first: str) -> None:
    """ISO 0 -> ISO 1/3/4 on one backend, back to ISO 0 on the other: the original ISO 0 block."""
    second = "region" if first == "tokens" else "tokens"
    original = iso0_under("alias/pek-tdes", pin, pan)
    middle_key = "alias/pek-aes128" if fmt == 4 else "alias/pek-tdes3"
    out = pair.stub(first).TranslatePinData(pb.TranslatePinDataRequest(
        incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier=middle_key,
        incoming_translation_attributes=iso_format(0, pan), outgoing_translation_attributes=iso_format(fmt, pan),
        encrypted_pin_block=original), timeout=TIMEOUT)
    block = bytes.fromhex(out.pin_block)
    if fmt == 4:
        assert pinblock.decipher_iso4(MATERIAL[middle_key], block, pan) == pin
    else:
        clear = P.decrypt_ecb("TDES", MATERIAL[middle_key], block)
        assert pinblock.decode(fmt, clear, pan if fmt == 3 else None) == pin
    back = pair.stub(second).TranslatePinData(pb.TranslatePinDataRequest(
        incoming_key_identifier=middle_key, outgoing_key_identifier="alias/pek-tdes",
        incoming_translation_attributes=iso_format(fmt, pan), outgoing_translation_attributes=iso_format(0, pan),
        encrypted_pin_block=out.pin_block), timeout=TIMEOUT)
    assert back.pin_block == original


# -------------------------------------------- key separation and defaults: the same answer on both kinds

PIN, PAN = "1234", "4111111111111111"
PIN_BLOCK = iso0_under("alias/pek-tdes", PIN, PAN)
ECB = pb.ReEncryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.ECB))
USAGE_CASES = {  # native ops with keys whose TR-31 usage forbids them: APC refuses every one
    "decrypt-pin-block-with-pek": ("DecryptData", pb.DecryptDataRequest(
        key_identifier="alias/pek-tdes", cipher_text=PIN_BLOCK, decryption_attributes=sym(pb.ECB))),
    "reencrypt-pin-block-to-data-key": ("ReEncryptData", pb.ReEncryptDataRequest(
        incoming_key_identifier="alias/pek-tdes", outgoing_key_identifier="alias/dek-tdes2", cipher_text=PIN_BLOCK,
        incoming_encryption_attributes=ECB, outgoing_encryption_attributes=ECB)),
    "encrypt-with-cvk": ("EncryptData", pb.EncryptDataRequest(
        key_identifier="alias/cvk-1", plain_text="00" * 8, encryption_attributes=sym(pb.ECB))),
    "encrypt-with-emv-master-key": ("EncryptData", pb.EncryptDataRequest(
        key_identifier="alias/imk-ac", plain_text="00" * 8, encryption_attributes=sym(pb.ECB))),
    "cmac-with-retail-mac-key": ("GenerateMac", pb.GenerateMacRequest(
        key_identifier="alias/mac-retail", message_data="00",
        generation_attributes=pb.MacAttributes(algorithm=pb.CMAC))),
    "hmac-sha512-with-sha256-key": ("GenerateMac", pb.GenerateMacRequest(
        key_identifier="alias/hmac-1", message_data="00",
        generation_attributes=pb.MacAttributes(algorithm=pb.HMAC_SHA512))),
}


def test_decrypt_data_under_a_pin_key_never_reveals_the_clear_pin_block(pair: Pair) -> None:
    method, request = USAGE_CASES["decrypt-pin-block-with-pek"]
    tokens, region = pair.outcomes(method, request)
    assert region == grpc.StatusCode.INVALID_ARGUMENT
    clear = h(pinblock.encode_iso0(PIN, PAN))
    assert getattr(tokens, "plain_text", "") != clear
    assert tokens == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_key_usage_is_enforced_alike_on_both_backends(pair: Pair, case: str) -> None:
    method, request = USAGE_CASES[case]
    assert pair.outcomes(method, request) == [grpc.StatusCode.INVALID_ARGUMENT] * 2


def test_reencrypt_cbc_without_iv_uses_a_zero_iv_on_both_backends(pair: Pair) -> None:
    plain = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")
    cbc = pb.ReEncryptionAttributes(symmetric=pb.SymmetricEncryptionAttributes(mode=pb.CBC))
    request = pb.ReEncryptDataRequest(
        incoming_key_identifier="alias/zek-aes128", outgoing_key_identifier="alias/dek-tdes2",
        cipher_text=h(local_encrypt("alias/zek-aes128", True, bytes(16), plain)),
        incoming_encryption_attributes=cbc, outgoing_encryption_attributes=ECB)
    tokens, region = pair.outcomes("ReEncryptData", request)
    want = h(local_encrypt("alias/dek-tdes2", False, bytes(16), plain))
    assert region.cipher_text == want
    assert getattr(tokens, "cipher_text", tokens) == want
