"""Unit tests of the APC emulator's pieces that need no server: the model validator, routing,
SigV4 verification (against botocore-signed requests), faults and the key inventory (its KCVs
against the dev cluster's SoftHSM2 tokens); plus the independent crypto oracle that
tests/test_emulator.py checks server results with."""

from __future__ import annotations

import contextlib
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from multidict import CIMultiDict

from hsmlb.apc.validation import MAX_ERRORS, Compiler, input_validator, load_service
from hsmlb.config import ConfigError
from hsmlb.dev.cluster import PARTIAL_NODE, PRIMARY_NODES, default_keys_file, find_module
from hsmlb.emulator.errors import ApiError, ErrorStatus
from hsmlb.emulator.faults import FaultConfig, Faults
from hsmlb.emulator.keys import KeyStore, key_id
from hsmlb.emulator.routes import ControlPlane, DataPlane
from hsmlb.emulator.sigv4 import IncomingRequest, SigV4Verifier
from hsmlb.payments.types import KeyNotFoundError
from tests.conftest import Cluster

VECTORS = {v["id"]: v for v in json.loads((Path(__file__).parent / "vectors/public_kat.json").read_text())["vectors"]}

PAN = "4123456789012345"
DATA = load_service("payment-cryptography-data")
COMPILER = Compiler()


def _errors(operation: str, params: dict) -> dict[str, str]:
    validator = input_validator(COMPILER, DATA.operation_model(operation))
    return {e.path: e.message for e in validator.errors(params)}


def _cvv(**overrides: object) -> dict:
    params = {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": PAN,
              "GenerationAttributes": {"CardVerificationValue1": {"CardExpiryDate": "8701", "ServiceCode": "111"}}}
    params.update(overrides)
    return params


# -- model validator --

def test_valid_input_passes() -> None:
    assert _errors("GenerateCardValidationData", _cvv()) == {}
    assert _errors("GenerateMac", {"KeyIdentifier": "arn:aws:payment-cryptography:us-east-1:111122223333:key/"
                                   + "a" * 16, "MessageData": "00", "GenerationAttributes": {"Algorithm": "CMAC"},
                                   "MacLength": 8}) == {}


def test_pattern_is_anchored_and_value_absent() -> None:
    bad = "4123x56789012345"
    errors = _errors("GenerateCardValidationData", _cvv(PrimaryAccountNumber=bad))
    assert list(errors) == ["PrimaryAccountNumber"]
    assert "regular expression" in errors["PrimaryAccountNumber"] and bad not in errors["PrimaryAccountNumber"]
    # a digit run followed by junk would pass a search(); the model means the whole value
    errors = _errors("GenerateCardValidationData", _cvv(PrimaryAccountNumber="412345678901234Z"))
    assert "PrimaryAccountNumber" in errors


def test_nested_path_and_lengths() -> None:
    attrs = {"CardVerificationValue1": {"CardExpiryDate": "12345", "ServiceCode": "11"}}
    errors = _errors("GenerateCardValidationData", _cvv(GenerationAttributes=attrs))
    assert "less than or equal to 4" in errors["GenerationAttributes.CardVerificationValue1.CardExpiryDate"]
    assert "greater than or equal to 3" in errors["GenerationAttributes.CardVerificationValue1.ServiceCode"]


def test_required_enum_integer_type() -> None:
    errors = _errors("GenerateMac", {"KeyIdentifier": "alias/mac", "MessageData": "00",
                                     "GenerationAttributes": {"Algorithm": "MD5"}, "MacLength": 99})
    assert "enum" in errors["GenerationAttributes.Algorithm"]
    assert "less than or equal to 32" in errors["MacLength"]
    errors = _errors("GenerateMac", {"KeyIdentifier": "alias/mac", "GenerationAttributes": {"Algorithm": "CMAC"},
                                     "MacLength": True})
    assert errors["MessageData"] == "Member must not be null"
    assert "integer" in errors["MacLength"]


def test_union_needs_exactly_one_member() -> None:
    both = {"CardVerificationValue1": {"CardExpiryDate": "8701", "ServiceCode": "111"},
            "CardVerificationValue2": {"CardExpiryDate": "8701"}}
    assert "Exactly one member" in _errors("GenerateCardValidationData", _cvv(GenerationAttributes=both))[
        "GenerationAttributes"]
    assert "GenerationAttributes" in _errors("GenerateCardValidationData", _cvv(GenerationAttributes={}))


def test_unknown_members_rejected_without_echoing_data_keys() -> None:
    errors = _errors("GenerateCardValidationData", _cvv(Extra="x"))
    assert errors == {"Extra": "Unknown member"}
    errors = _errors("GenerateCardValidationData", _cvv(**{PAN: "x"}))
    assert errors == {"(root)": "Unknown member"}  # a data-like member name is not echoed


def test_error_count_is_bounded() -> None:
    params = _cvv(**{f"Extra{i}": i for i in range(50)})
    validator = input_validator(COMPILER, DATA.operation_model("GenerateCardValidationData"))
    assert len(validator.errors(params)) == MAX_ERRORS


def test_every_model_shape_compiles() -> None:
    for name in ("payment-cryptography-data", "payment-cryptography"):
        service = load_service(name)
        for operation in service.operation_names:
            input_validator(COMPILER, service.operation_model(operation))


# -- routing, error statuses --

def test_data_routes_come_from_the_model() -> None:
    plane = DataPlane(COMPILER)
    op, labels = plane.route("POST", "/keys/alias%2Fdek-aes256/encrypt") or (None, {})
    assert op is not None and op.name == "EncryptData" and labels == {"KeyIdentifier": "alias/dek-aes256"}
    op, labels = plane.route("POST", "/keys/alias%2Fx/reencrypt") or (None, {})
    assert op is not None and labels == {"IncomingKeyIdentifier": "alias/x"}
    found = plane.route("POST", "/mac/generate")
    assert found is not None and found[0].name == "GenerateMac" and found[0].supported
    found = plane.route("POST", "/pindata/generate")
    assert found is not None and not found[0].supported
    assert plane.route("GET", "/mac/generate") is None
    assert plane.route("POST", "/keys/a/b/encrypt") is None


def test_control_routes_by_target() -> None:
    plane = ControlPlane(COMPILER)
    op = plane.route("POST", "/", "PaymentCryptographyControlPlane.GetKey")
    assert op is not None and op.supported
    assert plane.route("POST", "/", "Nope.GetKey") is None
    assert plane.content_type == "application/x-amz-json-1.0"


def test_error_statuses_from_model() -> None:
    data, control = ErrorStatus(DATA), ErrorStatus(load_service("payment-cryptography"))
    assert data.of(ApiError("ThrottlingException", "")) == 429
    assert data.of(ApiError("ResourceNotFoundException", "")) == 404
    assert data.of(ApiError("ValidationException", "")) == 400
    assert data.of(ApiError("InternalServerException", "")) == 500
    assert data.message_member["ValidationException"] == "message"
    assert control.of(ApiError("ThrottlingException", "")) == 400
    assert control.of(ApiError("InternalServerException", "")) == 500
    assert data.of(ApiError("InvalidSignatureException", "")) == 403


# -- SigV4 --

def _signed(secret: str = "secret", access: str = "AKIDEXAMPLE", region: str = "us-east-1",
            when: datetime | None = None, path: str = "/keys/alias%2Fdek/encrypt") -> IncomingRequest:
    body = json.dumps({"PlainText": "00"}).encode()
    aws = AWSRequest("POST", f"http://127.0.0.1:1234{path}", data=body,
                     headers={"Content-Type": "application/json", "Host": "127.0.0.1:1234"})
    signer = SigV4Auth(Credentials(access, secret), "payment-cryptography", region)
    if when is None:
        signer.add_auth(aws)
    else:  # sign as of `when`: the steps of add_auth with a chosen timestamp
        aws.context["timestamp"] = aws.headers["X-Amz-Date"] = when.strftime("%Y%m%dT%H%M%SZ")
        signed = signer.signed_headers(signer.headers_to_sign(aws))
        signature = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
        aws.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={signer.scope(aws)}, SignedHeaders={signed}, Signature={signature}")
    return IncomingRequest("POST", "http://emulator" + path, CIMultiDict(aws.headers.items()), body)


VERIFIER = SigV4Verifier("AKIDEXAMPLE", "secret", "us-east-1")


def _code(request: IncomingRequest) -> str | None:
    try:
        VERIFIER.verify(request)
    except ApiError as exc:
        return exc.code
    return None


def test_sigv4_accepts_botocore_signature() -> None:
    assert _code(_signed()) is None


def test_sigv4_rejections() -> None:
    assert _code(_signed(secret="wrong")) == "InvalidSignatureException"
    assert _code(_signed(access="AKIDOTHER")) == "UnrecognizedClientException"
    assert _code(_signed(region="eu-west-1")) == "InvalidSignatureException"
    tampered = _signed()
    tampered.body = b'{"PlainText": "01"}'
    assert _code(tampered) == "InvalidSignatureException"
    unsigned = _signed()
    unsigned.headers = CIMultiDict((k, v) for k, v in unsigned.headers.items() if k != "Authorization")
    assert _code(unsigned) == "MissingAuthenticationTokenException"
    garbled = _signed()
    garbled.headers["Authorization"] = "AWS4-HMAC-SHA256 nonsense"
    assert _code(garbled) == "IncompleteSignatureException"


def test_sigv4_clock_skew() -> None:
    now = datetime.now(UTC)
    assert _code(_signed(when=now - timedelta(minutes=4))) is None
    old = _signed(when=now - timedelta(minutes=6))
    with pytest.raises(ApiError, match="Signature expired"):
        VERIFIER.verify(old)
    with pytest.raises(ApiError, match="not yet current"):
        VERIFIER.verify(_signed(when=now + timedelta(minutes=6)))


# -- faults --

def test_fault_config_bounds() -> None:
    config = FaultConfig().update({"error_rate": 1, "latency_ms": 5})
    assert config.error_rate == 1.0 and config.latency_ms == 5.0
    for bad in ({"error_rate": 2}, {"nope": 1}, {"throttle_rate": "x"}, {"latency_ms": -1}):
        with pytest.raises(ValueError):
            FaultConfig().update(bad)


async def test_faults_raise_modelled_codes() -> None:
    faults = Faults(FaultConfig(error_rate=1.0))
    with pytest.raises(ApiError) as caught:
        await faults.apply()
    assert caught.value.code == "InternalServerException"
    faults.config = FaultConfig(throttle_rate=1.0)
    with pytest.raises(ApiError) as caught:
        await faults.apply()
    assert caught.value.code == "ThrottlingException"
    faults.record("GenerateMac", "ok")
    assert faults.stats()["operations"] == {"GenerateMac": {"ok": 1}}


# -- keys --

@pytest.fixture(scope="module")
def token_kcvs(cluster: Cluster, token_session: Any) -> dict[str, str]:
    """alias -> CKA_CHECK_VALUE (hex) of every secret key on the dev cluster's tokens.

    The oracle for the emulator's KCVs: SoftHSM2 computes the check value itself when a key is
    created (dev_up never supplies one), so this does not compare the engine's kcv() with itself.
    token_session has loaded SoftHSM2 against this cluster; node-b is read through it, the other
    tokens through sessions of their own on the same (cached) library, from this one thread.
    """
    import pkcs11

    lib = pkcs11.lib(str(find_module()))
    pin = (cluster.state_dir / "user.pin").read_text().strip()
    found: dict[str, str] = {}
    for node in (*PRIMARY_NODES, PARTIAL_NODE):
        if node == "node-b":
            _check_values(token_session, found)
            continue
        with contextlib.closing(lib.get_token(token_label=node).open(user_pin=pin)) as session:
            _check_values(session, found)
    return found


def _check_values(session: Any, found: dict[str, str]) -> None:
    from pkcs11 import Attribute, ObjectClass

    for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
        alias, kcv = key[Attribute.LABEL], bytes(key[Attribute.CHECK_VALUE]).hex().upper()
        assert found.setdefault(alias, kcv) == kcv, alias  # every token agrees on a key's KCV


def test_keys_have_model_valid_arns_and_dev_cluster_kcvs(token_kcvs: dict[str, str]) -> None:
    store = KeyStore(default_keys_file(), "us-east-1")
    control = load_service("payment-cryptography")
    arn_pattern = control.shape_for("KeyArn").metadata["pattern"]
    assert store.keys and store.skipped  # symmetric keys served, asymmetric ones skipped
    for key in store.keys:
        assert re.fullmatch(arn_pattern, key.arn) and len(key.arn) >= 70
        assert key.kcv == token_kcvs[key.alias], key.alias  # what the dev tokens report for the same alias
        assert store.find(key.alias) is store.find(key.arn) is key
    assert store.find("alias/dek-tdes2").kcv == "08D7B4"  # the public KCV of the well-known test key
    other_region = KeyStore(default_keys_file(), "eu-west-1").find("alias/dek-tdes2").arn
    assert other_region.rsplit("/", 1)[1] == key_id("alias/dek-tdes2") == store.find("alias/dek-tdes2").arn[-32:]
    assert ":eu-west-1:" in other_region
    with pytest.raises(KeyNotFoundError):
        store.resolve("alias/none")
    with pytest.raises(ConfigError):  # would make every ARN off-model
        KeyStore(default_keys_file(), "local")


# -- independent crypto oracle for tests/test_emulator.py (cryptography, not the engine), checked here --

def tdes(key: bytes, data: bytes, decrypt: bool = False) -> bytes:
    ctx = Cipher(TripleDES(key + key[:8] if len(key) == 16 else key), modes.ECB())
    op = ctx.decryptor() if decrypt else ctx.encryptor()
    return op.update(data) + op.finalize()


def aes(key: bytes, data: bytes) -> bytes:
    op = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return op.update(data) + op.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def retail_mac(key: bytes, data: bytes) -> bytes:
    """ISO 9797-1 MAC algorithm 3 (data already padded): single-DES CBC, then 3DES on the last block."""
    state = bytes(8)
    for i in range(0, len(data) - 8, 8):
        state = tdes(key[:8] * 2, xor(state, data[i:i + 8]))
    return tdes(key, xor(state, data[-8:]))


def pad_method2(data: bytes) -> bytes:
    data += b"\x80"
    return data + bytes(-len(data) % 8)


def odd_parity(key: bytes) -> bytes:
    return bytes(b ^ 1 ^ (b.bit_count() & 1) for b in key)


def icc_mk_option_a(imk: bytes, pan: str, psn: str) -> bytes:
    y = bytes.fromhex((pan + psn)[-16:].rjust(16, "0"))
    return odd_parity(tdes(imk, y + xor(y, b"\xff" * 8)))


def session_key(icc_mk: bytes, r: bytes) -> bytes:
    return odd_parity(tdes(icc_mk, r[:2] + b"\xf0" + r[3:] + r[:2] + b"\x0f" + r[3:]))


def iso4_block(key: bytes, pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 4 encipherment: E_K(E_K(PIN field) XOR PAN field)."""
    pin_field = bytes.fromhex(f"4{len(pin)}{pin}".ljust(16, "A")) + os.urandom(8)
    pan_field = bytes.fromhex(f"{len(pan) - 12}{pan}".ljust(32, "0"))
    return aes(key, xor(aes(key, pin_field), pan_field))


def test_iso4_builder_matches_public_field_encoding() -> None:
    expected = VECTORS["pinblock-iso4-x9.24-3-fields"]["expected"]
    assert f"4{len('1234')}1234".ljust(16, "A") == expected["pin_field_first8"]
    assert f"{16 - 12}4111111111111111".ljust(32, "0") == expected["pan_field"]


def test_emv_oracle_matches_public_vector() -> None:
    """The test's own EMV building blocks reproduce the pyemv HSM-verified vector."""
    v = VECTORS["emv-optA-csk-arqc-arpc"]
    inputs, expected = v["inputs"], v["expected"]
    icc_mk = icc_mk_option_a(bytes.fromhex(inputs["imk_ac"]), inputs["pan"], inputs["psn"])
    assert tdes(icc_mk, bytes(8))[:2].hex().upper() == expected["icc_mk_kcv"]
    sk = session_key(icc_mk, bytes.fromhex(inputs["csk_r"]))
    assert tdes(sk, bytes(8))[:2].hex().upper() == expected["sk_kcv"]
    arqc = retail_mac(sk, pad_method2(bytes.fromhex(inputs["data_unpadded"])))
    assert arqc.hex().upper() == expected["arqc"]
    arpc1 = tdes(icc_mk, xor(arqc, bytes.fromhex(inputs["arpc_rc"]) + bytes(6)))
    assert arpc1.hex().upper() == expected["arpc_method1_iccmk"]
