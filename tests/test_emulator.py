"""`hsmlb apc-emulator` end to end: a real emulator subprocess on loopback, plain boto3 clients.

Results are checked against the public vectors in tests/vectors/public_kat.json, or against an
independent computation with `cryptography` whose building blocks are themselves checked against
those vectors. No mocks: what boto3 accepts here, it accepts from the real service's wire format.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from hsmlb.emulator.testing import EmulatorProcess, post, sign, start_emulator
from tests._payment_common import MATERIAL  # the dev keys file's clear material, loaded once
from tests.test_emulator_model import aes, icc_mk_option_a, iso4_block, pad_method2, retail_mac, session_key, tdes, xor

ROOT = Path(__file__).resolve().parents[1]
KEYS_FILE = ROOT / "hsmlb" / "dev" / "dev-keys.yaml"
VECTORS = {v["id"]: v for v in json.loads((ROOT / "tests/vectors/public_kat.json").read_text())["vectors"]}
ACCESS, SECRET, REGION = "AKIDEMULATORTEST", "emulator-test-secret", "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1})


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    running = start_emulator(KEYS_FILE, "--fault-injection", "--access-key-id", ACCESS, "--secret-access-key", SECRET)
    assert running.region == REGION
    yield running
    assert running.stop() == 0  # graceful SIGTERM


def client(emulator: EmulatorProcess, service: str = "payment-cryptography-data", **overrides: Any) -> Any:
    settings: dict[str, Any] = {"endpoint_url": emulator.url, "region_name": REGION, "aws_access_key_id": ACCESS,
                                "aws_secret_access_key": SECRET, "config": NO_RETRY, **overrides}
    return boto3.client(service, **settings)


@pytest.fixture(scope="module")
def apc(emulator: EmulatorProcess) -> Any:
    return client(emulator)


def error_of(call: Any, **params: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value


def code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


# -- (1) every operation, checked against public vectors --

def test_encrypt_decrypt_nist_aes_ecb(apc: Any) -> None:
    plain, cipher = "6BC1BEE22E409F96E93D7E117393172A", "3AD77BB40D7A3660A89ECAF32466EF97"  # SP 800-38A F.1.1
    out = apc.encrypt_data(KeyIdentifier="alias/zek-aes128", PlainText=plain,
                           EncryptionAttributes={"Symmetric": {"Mode": "ECB"}})
    assert out["CipherText"] == cipher and out["KeyCheckValue"] == aes(MATERIAL["alias/zek-aes128"], bytes(16))[
        :3].hex().upper()
    assert out["KeyArn"].startswith(f"arn:aws:payment-cryptography:{REGION}:111122223333:key/")
    back = apc.decrypt_data(KeyIdentifier=out["KeyArn"], CipherText=cipher,
                            DecryptionAttributes={"Symmetric": {"Mode": "ECB"}})
    assert back["PlainText"] == plain and back["KeyArn"] == out["KeyArn"]


def test_reencrypt_checked_with_cryptography(apc: Any) -> None:
    plain = bytes(range(32))
    first = apc.encrypt_data(KeyIdentifier="alias/dek-aes256", PlainText=plain.hex(),
                             EncryptionAttributes={"Symmetric": {"Mode": "CBC", "InitializationVector": "00" * 16}})
    out = apc.re_encrypt_data(
        IncomingKeyIdentifier="alias/dek-aes256", OutgoingKeyIdentifier="alias/dek-tdes2",
        CipherText=first["CipherText"],
        IncomingEncryptionAttributes={"Symmetric": {"Mode": "CBC", "InitializationVector": "00" * 16}},
        OutgoingEncryptionAttributes={"Symmetric": {"Mode": "ECB"}})
    assert out["KeyCheckValue"] == "08D7B4"  # the outgoing key's, per APC
    assert tdes(MATERIAL["alias/dek-tdes2"], bytes.fromhex(out["CipherText"]), decrypt=True) == plain


@pytest.mark.parametrize("name", ["AES128", "AES192", "AES256", "TDES2", "TDES3"])
def test_cmac_nist(apc: Any, name: str) -> None:
    alias, vector = f"alias/cmac-{name.lower()}", f"cmac-{name.rstrip('0123456789').lower()}-nist-sp800-38b"
    message = bytes.fromhex(VECTORS[vector]["inputs"]["message64"])
    for length, mac in VECTORS[vector]["expected"][name].items():
        if length in ("key", "0"):  # APC's MessageData is at least one byte
            continue
        out = apc.generate_mac(KeyIdentifier=alias, MessageData=message[:int(length)].hex(),
                               GenerationAttributes={"Algorithm": "CMAC"})
        assert out["Mac"] == mac, (name, length)


def test_hmac_iso9797_2(apc: Any) -> None:
    aliases = {e.upper(): a for a, e in (("alias/hmac-1", "00112233445566778899AABBCCDDEEFF"),
                                         ("alias/hmac-2", "0123456789ABCDEFFEDCBA9876543210"))}
    for case in VECTORS["hmac-sha256-iso9797-2"]["expected"]["cases"]:
        if not case["msg_ascii"]:
            continue
        out = apc.generate_mac(KeyIdentifier=aliases[case["key"]], MessageData=case["msg_ascii"].encode().hex(),
                               GenerationAttributes={"Algorithm": "HMAC_SHA256"})
        assert out["Mac"] == case["mac"]


def test_retail_mac_and_verify(apc: Any) -> None:
    for case in VECTORS["mac-iso9797-1-alg3-annexB"]["expected"]["cases"]:
        out = apc.generate_mac(KeyIdentifier="alias/mac-retail", MessageData=case["data_hex"],
                               GenerationAttributes={"Algorithm": "ISO9797_ALGORITHM3"}, MacLength=8)
        assert out["Mac"] == case["mac8_computed"]
        apc.verify_mac(KeyIdentifier="alias/mac-retail", MessageData=case["data_hex"], Mac=case["mac4"],
                       VerificationAttributes={"Algorithm": "ISO9797_ALGORITHM3"})
    wrong = error_of(apc.verify_mac, KeyIdentifier="alias/mac-retail", MessageData="00" * 8, Mac="A1C72E74",
                     VerificationAttributes={"Algorithm": "ISO9797_ALGORITHM3"})
    assert isinstance(wrong, apc.exceptions.VerificationFailedException)
    assert wrong.response["Reason"] == "INVALID_MAC" and wrong.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_cvv_worked_example(apc: Any) -> None:
    inputs = VECTORS["cvv-worked-example-111"]["inputs"]
    attrs = {"CardVerificationValue1": {"CardExpiryDate": inputs["expiry"], "ServiceCode": inputs["service_code"]}}
    out = apc.generate_card_validation_data(KeyIdentifier="alias/cvk-1", PrimaryAccountNumber=inputs["pan"],
                                            GenerationAttributes=attrs)
    assert out["ValidationData"] == VECTORS["cvv-worked-example-111"]["expected"]["cvv"]
    assert out["KeyCheckValue"] == "08D7B4"
    apc.verify_card_validation_data(KeyIdentifier="alias/cvk-1", PrimaryAccountNumber=inputs["pan"],
                                    VerificationAttributes=attrs, ValidationData=out["ValidationData"])
    wrong = error_of(apc.verify_card_validation_data, KeyIdentifier="alias/cvk-1",
                     PrimaryAccountNumber=inputs["pan"], VerificationAttributes=attrs, ValidationData="000")
    assert isinstance(wrong, apc.exceptions.VerificationFailedException)
    assert wrong.response["Reason"] == "INVALID_VALIDATION_DATA"


def test_translate_dukpt_a4_to_zone_iso0(apc: Any) -> None:
    vector = VECTORS["dukpt-tdes-x9.24-1-2009-A4"]
    pan = vector["inputs"]["pan"]
    for step in vector["expected"]["sequence"][:3] + vector["expected"]["rollover_sequence"][:1]:
        out = apc.translate_pin_data(
            IncomingKeyIdentifier="alias/bdk-tdes", OutgoingKeyIdentifier="alias/pek-tdes",
            IncomingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}},
            OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}},
            EncryptedPinBlock=step["encrypted_pin_block"],
            IncomingDukptAttributes={"KeySerialNumber": step["ksn"], "DukptKeyDerivationType": "TDES_2KEY"})
        clear = tdes(MATERIAL["alias/pek-tdes"], bytes.fromhex(out["PinBlock"]), decrypt=True)
        assert clear.hex().upper() == vector["inputs"]["clear_pin_block_iso0"], step["ksn"]
        assert out["KeyCheckValue"] == tdes(MATERIAL["alias/pek-tdes"], bytes(8))[:3].hex().upper()


@pytest.mark.parametrize("dukpt", [False, True], ids=["aes-zone-key", "aes-dukpt-x9.24-3"])
def test_translate_iso4_to_zone_iso0(apc: Any, dukpt: bool) -> None:
    iso0 = VECTORS["pinblock-iso0-idtech"]
    pin, pan = iso0["inputs"]["pin"], iso0["inputs"]["pan"]
    # alias/pek-aes128 holds the X9.24-3 PIN key of BDK alias/bdk-aes128 at KSN 1234567890123456 00000001
    block = iso4_block(MATERIAL["alias/pek-aes128"], pin, pan)
    incoming: dict[str, Any] = {"IncomingKeyIdentifier": "alias/pek-aes128"}
    if dukpt:
        incoming = {"IncomingKeyIdentifier": "alias/bdk-aes128", "IncomingDukptAttributes": {
            "KeySerialNumber": "123456789012345600000001", "DukptKeyDerivationType": "AES_128"}}
    out = apc.translate_pin_data(
        **incoming, OutgoingKeyIdentifier="alias/pek-tdes",
        IncomingTranslationAttributes={"IsoFormat4": {"PrimaryAccountNumber": pan}},
        OutgoingTranslationAttributes={"IsoFormat0": {"PrimaryAccountNumber": pan}}, EncryptedPinBlock=block.hex())
    clear = tdes(MATERIAL["alias/pek-tdes"], bytes.fromhex(out["PinBlock"]), decrypt=True)
    assert clear.hex().upper() == iso0["expected"]["clear_pin_block"]


def test_iso9797_1_algorithm1(apc: Any) -> None:
    key, data = MATERIAL["alias/mac-iso9797-1"], b"hello world".ljust(16, b"\0")  # padding method 1
    state = bytes(8)
    for i in range(0, len(data), 8):  # full TDES CBC-MAC, computed independently
        state = tdes(key, xor(state, data[i:i + 8]))
    out = apc.generate_mac(KeyIdentifier="alias/mac-iso9797-1", MessageData=b"hello world".hex(),
                           GenerationAttributes={"Algorithm": "ISO9797_ALGORITHM1"}, MacLength=8)
    assert out["Mac"] == state.hex().upper() == "68D9038F23360DF3"  # psec's published value too


def test_verify_arqc_emv_common_and_visa(apc: Any) -> None:
    v = VECTORS["emv-optA-csk-arqc-arpc"]["inputs"]
    assert MATERIAL["alias/imk-ac"].hex().upper() == v["imk_ac"]
    icc_mk = icc_mk_option_a(bytes.fromhex(v["imk_ac"]), v["pan"], v["psn"])
    data = pad_method2(bytes.fromhex(v["data_unpadded"]))  # APC MACs TransactionData as sent
    card = {"PrimaryAccountNumber": v["pan"], "PanSequenceNumber": v["psn"]}
    # EMV common session key, ATC 0x0001: R = ATC || 0^6; ARPC method 1 under the session key.
    sk = session_key(icc_mk, b"\x00\x01" + bytes(6))
    arqc = retail_mac(sk, data)
    out = apc.verify_auth_request_cryptogram(
        KeyIdentifier="alias/imk-ac", TransactionData=data.hex(), AuthRequestCryptogram=arqc.hex(),
        MajorKeyDerivationMode="EMV_OPTION_A",
        SessionKeyDerivationAttributes={"EmvCommon": {**card, "ApplicationTransactionCounter": "0001"}},
        AuthResponseAttributes={"ArpcMethod1": {"AuthResponseCode": v["arpc_rc"]}})
    assert out["AuthResponseValue"] == tdes(sk, xor(arqc, bytes(8))).hex().upper()
    # Visa (CVN10): the ICC master key itself; ARPC method 1 then matches the vector's ICC-MK ARPC form.
    arqc = retail_mac(icc_mk, data)
    out = apc.verify_auth_request_cryptogram(
        KeyIdentifier="alias/imk-ac", TransactionData=data.hex(), AuthRequestCryptogram=arqc.hex(),
        MajorKeyDerivationMode="EMV_OPTION_A", SessionKeyDerivationAttributes={"Visa": card},
        AuthResponseAttributes={"ArpcMethod1": {"AuthResponseCode": "0000"}})
    assert out["AuthResponseValue"] == tdes(icc_mk, arqc).hex().upper()
    wrong = error_of(apc.verify_auth_request_cryptogram, KeyIdentifier="alias/imk-ac", TransactionData=data.hex(),
                     AuthRequestCryptogram="00" * 8, MajorKeyDerivationMode="EMV_OPTION_A",
                     SessionKeyDerivationAttributes={"Visa": card})
    assert wrong.response["Reason"] == "INVALID_AUTH_REQUEST_CRYPTOGRAM"


# -- (2) model validation on the server, with fieldList --

def _validation(error: ClientError, apc: Any) -> dict[str, str]:
    assert isinstance(error, apc.exceptions.ValidationException)
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return {f["path"]: f["message"] for f in error.response["fieldList"]}


def test_bad_pan_pattern(apc: Any) -> None:
    pan = "41234567890123X5"
    error = error_of(apc.generate_card_validation_data, KeyIdentifier="alias/cvk-1", PrimaryAccountNumber=pan,
                     GenerationAttributes={"CardVerificationValue2": {"CardExpiryDate": "8701"}})
    assert list(_validation(error, apc)) == ["PrimaryAccountNumber"]
    assert pan not in json.dumps(error.response)


def test_too_long_and_nested_pattern(apc: Any) -> None:
    pan = "4123456789012345678901"  # 22 digits: boto3 checks no maximum, the service must
    attrs = {"CardVerificationValue1": {"CardExpiryDate": "87O1", "ServiceCode": "111"}}
    error = error_of(apc.generate_card_validation_data, KeyIdentifier="alias/cvk-1", PrimaryAccountNumber=pan,
                     GenerationAttributes=attrs)
    fields = _validation(error, apc)
    assert "less than or equal to 19" in fields["PrimaryAccountNumber"]
    assert "regular expression" in fields["GenerationAttributes.CardVerificationValue1.CardExpiryDate"]
    assert pan not in json.dumps(error.response) and "87O1" not in json.dumps(error.response)


def test_union_and_required_need_server_side_checks(emulator: EmulatorProcess) -> None:
    # boto3 checks unions and required members itself; turn that off to see the service's answer
    raw = client(emulator, config=Config(retries={"total_max_attempts": 1}, parameter_validation=False))
    both = {"CardVerificationValue1": {"CardExpiryDate": "8701", "ServiceCode": "111"},
            "CardVerificationValue2": {"CardExpiryDate": "8701"}}
    error = error_of(raw.generate_card_validation_data, KeyIdentifier="alias/cvk-1",
                     PrimaryAccountNumber="4123456789012345", GenerationAttributes=both)
    assert "Exactly one member" in _validation(error, raw)["GenerationAttributes"]
    error = error_of(raw.generate_card_validation_data, KeyIdentifier="alias/cvk-1",
                     PrimaryAccountNumber="4123456789012345",
                     GenerationAttributes={"CardVerificationValue1": {"CardExpiryDate": "8701"}})
    fields = _validation(error, raw)
    assert fields == {"GenerationAttributes.CardVerificationValue1.ServiceCode": "Member must not be null"}


def signed_request(emulator: EmulatorProcess, path: str, body: dict | bytes, secret: str = SECRET,
                   when: datetime | None = None, signed: bool = True) -> tuple[int, dict, dict]:
    """A raw request (no boto3 serializer), SigV4-signed by botocore's signer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if signed:
        headers = sign(emulator.url + path, data, headers, ACCESS, secret, REGION, when)
    return post(emulator.url + path, data, headers)


def test_unknown_member_and_bad_json(emulator: EmulatorProcess) -> None:
    body = {"MessageData": "00", "GenerationAttributes": {"Algorithm": "CMAC"}, "KeyIdentifier": "alias/cmac-aes128",
            "Surprise": 1}
    status, headers, answer = signed_request(emulator, "/mac/generate", body)
    assert status == 400 and headers["x-amzn-ErrorType"] == "ValidationException" and headers["x-amzn-RequestId"]
    assert answer["fieldList"] == [{"path": "Surprise", "message": "Unknown member"}]
    status, headers, answer = signed_request(emulator, "/mac/generate", b"{not json")
    assert status == 400 and headers["x-amzn-ErrorType"] == "SerializationException"


def test_unsupported_operation_is_a_clean_validation_error(apc: Any) -> None:
    error = error_of(apc.generate_pin_data, GenerationKeyIdentifier="alias/cvk-1",
                     EncryptionKeyIdentifier="alias/pek-tdes", PrimaryAccountNumber="4123456789012345",
                     PinBlockFormat="ISO_FORMAT_0",
                     GenerationAttributes={"VisaPin": {"PinVerificationKeyIndex": 1}})
    assert isinstance(error, apc.exceptions.ValidationException)
    assert "not supported by the apc-emulator" in error.response["Error"]["Message"]


# -- (3) SigV4 --

def test_wrong_secret_and_unknown_access_key(emulator: EmulatorProcess) -> None:
    args = {"KeyIdentifier": "alias/cmac-aes128", "MessageData": "00", "GenerationAttributes": {"Algorithm": "CMAC"}}
    error = error_of(client(emulator, aws_secret_access_key="not-the-secret").generate_mac, **args)
    assert code(error) == "InvalidSignatureException"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "signature we calculated does not match" in error.response["Error"]["Message"]
    error = error_of(client(emulator, aws_access_key_id="AKIDSOMEONEELSE").generate_mac, **args)
    assert code(error) == "UnrecognizedClientException"


def test_missing_auth_and_expired_signature(emulator: EmulatorProcess) -> None:
    body = {"MessageData": "00", "GenerationAttributes": {"Algorithm": "CMAC"}, "KeyIdentifier": "alias/cmac-aes128"}
    status, headers, _ = signed_request(emulator, "/mac/generate", body, signed=False)
    assert status == 403 and headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    status, headers, answer = signed_request(emulator, "/mac/generate", body,
                                             when=datetime.now(UTC) - timedelta(minutes=6))
    assert status == 403 and headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert answer["message"].startswith("Signature expired")
    status, _, answer = signed_request(emulator, "/mac/generate", body)
    mac = CMAC(algorithms.AES(MATERIAL["alias/cmac-aes128"]))
    mac.update(b"\0")
    assert status == 200 and answer["Mac"] == mac.finalize().hex().upper()


# -- (4) not found --

def test_unknown_alias_is_resource_not_found(apc: Any) -> None:
    error = error_of(apc.generate_mac, KeyIdentifier="alias/no-such-key", MessageData="00",
                     GenerationAttributes={"Algorithm": "CMAC"})
    assert isinstance(error, apc.exceptions.ResourceNotFoundException)
    assert error.response["ResourceId"] == "alias/no-such-key"
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 404


# -- (5) control plane --

def test_control_plane_reports_kcvs(emulator: EmulatorProcess) -> None:
    control = client(emulator, "payment-cryptography")
    key = control.get_key(KeyIdentifier="alias/dek-tdes2")["Key"]
    assert key["KeyCheckValue"] == VECTORS["kcv-well-known-test-key"]["expected"]["kcv_ansi_x9_24"]
    assert key["KeyCheckValueAlgorithm"] == "ANSI_X9_24" and key["KeyState"] == "CREATE_COMPLETE"
    assert key["KeyAttributes"]["KeyAlgorithm"] == "TDES_2KEY" and key["KeyAttributes"]["KeyModesOfUse"]["Encrypt"]
    assert control.get_key(KeyIdentifier=key["KeyArn"])["Key"]["KeyArn"] == key["KeyArn"]
    aliases: list[dict] = []
    token: dict[str, str] = {}
    for _ in range(50):  # bounded pagination
        page = control.list_aliases(MaxResults=4, **token)
        aliases += page["Aliases"]
        if "NextToken" not in page:
            break
        token = {"NextToken": page["NextToken"]}
    names = {a["AliasName"]: a["KeyArn"] for a in aliases}
    assert names["alias/dek-tdes2"] == key["KeyArn"] and "alias/sign-rsa" not in names
    summaries = {k["KeyArn"]: k for k in control.list_keys(MaxResults=100)["Keys"]}
    for alias, arn in names.items():
        material = MATERIAL[alias]
        if len(material) in (16, 24) and alias.startswith(("alias/dek-tdes", "alias/cvk")):
            assert summaries[arn]["KeyCheckValue"] == tdes(material, bytes(8))[:3].hex().upper()
    assert control.get_alias(AliasName="alias/cvk-1")["Alias"]["KeyArn"] == names["alias/cvk-1"]
    error = error_of(control.get_key, KeyIdentifier="alias/no-such-key")
    assert isinstance(error, control.exceptions.ResourceNotFoundException)


# -- (6) faults --

def _faults(emulator: EmulatorProcess, **settings: float) -> dict:
    status, _, answer = post(emulator.url + "/_emulator/faults", json.dumps(settings).encode(),
                             {"Content-Type": "application/json"})
    assert status == 200
    return answer


def test_fault_switches(emulator: EmulatorProcess, apc: Any) -> None:
    args = {"KeyIdentifier": "alias/cmac-aes128", "MessageData": "00", "GenerationAttributes": {"Algorithm": "CMAC"}}
    try:
        assert _faults(emulator, error_rate=1)["error_rate"] == 1
        error = error_of(apc.generate_mac, **args)
        assert isinstance(error, apc.exceptions.InternalServerException)
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        _faults(emulator, error_rate=0, throttle_rate=1)
        error = error_of(apc.generate_mac, **args)
        assert isinstance(error, apc.exceptions.ThrottlingException)
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        control = client(emulator, "payment-cryptography")
        error = error_of(control.list_aliases)
        assert isinstance(error, control.exceptions.ThrottlingException)
        _faults(emulator, throttle_rate=0, latency_ms=150)
        started = time.monotonic()
        apc.generate_mac(**args)
        assert time.monotonic() - started >= 0.15
    finally:
        _faults(emulator, error_rate=0, throttle_rate=0, latency_ms=0)
    apc.generate_mac(**args)
    with urllib.request.urlopen(emulator.url + "/_emulator/stats", timeout=10) as response:
        stats = json.loads(response.read())
    outcomes = stats["operations"]["GenerateMac"]
    assert outcomes["InternalServerException"] >= 1 and outcomes["ThrottlingException"] >= 1 and outcomes["ok"] >= 2
    assert stats["faults"] == {"latency_ms": 0.0, "error_rate": 0.0, "throttle_rate": 0.0, "corrupt_rate": 0.0}


def test_plain_emulator_has_no_hooks_and_needs_credentials() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    refused = subprocess.run([sys.executable, "-m", "hsmlb", "apc-emulator", "--port", "0", "--keys",
                              str(KEYS_FILE)], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 2 and "credentials required" in refused.stderr
    plain = start_emulator(KEYS_FILE, module=("hsmlb.emulator",),
                           env={**env, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET})
    try:
        for path in ("/_emulator/stats", "/_emulator/faults"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(plain.url + path, timeout=10)
            assert caught.value.code == 404
        apc = client(plain)
        assert apc.generate_mac(KeyIdentifier="alias/cmac-aes128", MessageData="00",
                                GenerationAttributes={"Algorithm": "CMAC"})["Mac"]
    finally:
        assert plain.stop() == 0
