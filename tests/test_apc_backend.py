"""The APC region backend against a real `hsmlb apc-emulator` process on loopback. No mocks.

Checks discovery, the warm pool, results against local `cryptography` computations, the wire
format against botocore's own serializer, every row of the error mapping, probes and supervision.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import ReadOnlyCredentials
from botocore.serialize import create_serializer
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsmlb.apc.wire import (
    DATA_SERVICE,
    JSON,
    FastSigner,
    Json10Template,
    RestJsonTemplate,
    compile_data_plane,
    service_model,
)
from hsmlb.backends import create_backend
from hsmlb.backends.apc import ApcRegionBackend
from hsmlb.config import ApcQuotas, ApcRegionConfig, Pkcs11NodeConfig
from hsmlb.dev.regions import Emulator, spawn_emulator
from hsmlb.errors import DeadlineExceeded, InvalidArgument, KeyNotFound, NodeFault, Throttled
from hsmlb.ops import Capability, Operation, OpKind
from tests._payment_common import MATERIAL  # the dev keys file's clear material, loaded once
from tests.conftest import set_faults

ROOT = Path(__file__).resolve().parent.parent
KEYS_FILE = ROOT / "hsmlb" / "dev" / "dev-keys.yaml"
VECTORS = ROOT / "tests" / "vectors" / "public_kat.json"
REGION = "us-east-1"
ACCESS, SECRET = "AKIDEXAMPLEHSMLB", "emulator-secret-for-tests"
CONNECTIONS = 4
START_S = 30
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
           "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL")


def start_region(port: int = 0) -> Emulator:
    """`hsmlb apc-emulator` as a child process (the shared starter), with its fault switch on."""
    return spawn_emulator("apc-test", KEYS_FILE, "--region", REGION, "--access-key-id", ACCESS,
                          "--secret-access-key", SECRET, "--fault-injection", port=port, timeout_s=START_S)


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Credentials only from our temp files: no ambient AWS environment, config or instance metadata."""
    directory = tmp_path_factory.mktemp("aws")
    (directory / "good").write_text(f"[default]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n")
    (directory / "wrong").write_text(f"[default]\naws_access_key_id = {ACCESS}\naws_secret_access_key = not-it\n")
    with pytest.MonkeyPatch.context() as patch:
        for name in AWS_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", str(directory / "no-config"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield directory


@pytest.fixture(scope="module")
def emulator(aws_env: Path) -> Iterator[Emulator]:
    server = start_region()
    yield server
    server.stop()


@pytest.fixture
def faults(emulator: Emulator) -> Iterator[Emulator]:
    yield emulator
    set_faults(emulator)  # all switches back to 0


def region_config(url: str, credentials: Path, **changes: Any) -> ApcRegionConfig:
    settings: dict[str, Any] = {"kind": "apc", "name": "apc-test", "region": REGION, "endpoint_url": url,
                                "credentials_file": credentials, "connections": CONNECTIONS, "request_timeout_s": 2.0}
    return ApcRegionConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
async def backend(emulator: Emulator, aws_env: Path) -> AsyncIterator[ApcRegionBackend]:
    node = ApcRegionBackend(region_config(emulator.endpoint_url, aws_env / "good"))
    await node.start()
    yield node
    await node.close()


def _cipher(alias: str) -> Any:
    material = MATERIAL[alias]
    if "aes" in alias:
        return algorithms.AES(material)
    return TripleDES(material + material[:8] if len(material) == 16 else material)  # K1K2 -> K1K2K1


def local_encrypt(alias: str, mode: str, iv: bytes, data: bytes) -> bytes:
    chosen = modes.ECB() if mode == "ECB" else modes.CBC(iv)
    encryptor = Cipher(_cipher(alias), chosen).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def local_cmac(alias: str, data: bytes) -> bytes:
    mac = cmac.CMAC(_cipher(alias))
    mac.update(data)
    return mac.finalize()


def native(kind: OpKind, alias: str, *args: Any, deadline: float | None = None) -> Operation:
    return Operation(kind, alias, args, deadline=deadline)


# -- discovery and the warm pool ----------------------------------------------------------------

async def test_discovery_matches_the_control_plane(backend: ApcRegionBackend, emulator: Emulator,
                                                   aws_env: Path) -> None:
    assert backend.state == "up" and backend.kind == "apc"
    symmetric = {alias for alias in MATERIAL}
    assert set(backend.keys) == symmetric  # the emulator skips asymmetric keys
    session = boto3.Session(aws_access_key_id=ACCESS, aws_secret_access_key=SECRET, region_name=REGION)
    control = session.client("payment-cryptography", endpoint_url=emulator.endpoint_url,
                             config=BotoConfig(retries={"total_max_attempts": 1}))
    for alias, key in backend.keys.items():
        described = control.get_key(KeyIdentifier=alias)["Key"]
        assert key.label == described["KeyArn"] and key.kcv == described["KeyCheckValue"].upper()
        assert key.key_usage == described["KeyAttributes"]["KeyUsage"]
    aes = backend.keys["alias/zek-aes128"]
    assert aes.kcv == local_encrypt("alias/zek-aes128", "ECB", b"", bytes(16))[:3].hex().upper()  # ANSI X9.24
    assert (aes.key_type, aes.bits) == ("AES", 128) and {"encrypt", "decrypt"} <= aes.usages
    assert backend.keys["alias/dek-tdes2"].kcv == "08D7B4"
    assert backend.keys["alias/dek-tdes3"].key_type == "DES3"
    first = next(iter(backend.keys.values()))  # the probe's fallback: awsJson1_0 GetKey, signed, over the pool
    assert (await backend._control_call())["Key"]["KeyCheckValue"] == first.kcv
    hmac_key = backend.keys["alias/hmac-1"]
    assert hmac_key.key_type == "GENERIC_SECRET" and {"sign", "verify"} <= hmac_key.usages


async def test_pool_is_pre_connected(backend: ApcRegionBackend) -> None:
    stats = backend.stats()
    assert stats["connections"] == CONNECTIONS
    assert stats["warm_connections"] == CONNECTIONS
    assert stats["idle_connections"] >= 1
    await backend._refresh_credentials()  # what the supervisor does every minute, off the event loop
    assert backend.stats()["credential_refreshes"] >= 1
    await backend.probe()


def test_capabilities_and_factory(aws_env: Path) -> None:
    config = region_config("http://127.0.0.1:1", aws_env / "good")
    node = create_backend(config)
    assert isinstance(node, ApcRegionBackend)
    assert Capability.CARD_VALIDATION in node.capabilities and Capability.ENCRYPT in node.capabilities
    assert not {Capability.SIGN, Capability.VERIFY, Capability.RANDOM} & node.capabilities
    token = Pkcs11NodeConfig(name="t", module=Path("/nonexistent.so"), token_label="x", pin_env="NOPE")
    assert create_backend(token).kind == "pkcs11"


async def test_inject_fault_is_refused(backend: ApcRegionBackend) -> None:
    with pytest.raises(InvalidArgument, match="done at the emulator"):
        await backend.inject_fault("kill_worker")


# -- results ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("alias", "mode", "iv"), [
    ("alias/zek-aes128", "ECB", b""), ("alias/dek-aes256", "CBC", bytes(range(16))),
    ("alias/dek-tdes2", "ECB", b""), ("alias/dek-tdes3", "CBC", bytes(range(8))),
])
async def test_encrypt_decrypt_match_cryptography(backend: ApcRegionBackend, alias: str, mode: str,
                                                  iv: bytes) -> None:
    plain = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172AAE2D8A571E03AC9C9EB76FAC45AF8E51")
    cipher = await backend.perform(native(OpKind.ENCRYPT, alias, mode, iv, plain), 0)
    assert cipher == local_encrypt(alias, mode, iv, plain)
    assert await backend.perform(native(OpKind.DECRYPT, alias, mode, iv, cipher), 0) == plain


async def test_aes128_ecb_is_the_nist_vector(backend: ApcRegionBackend) -> None:
    op = native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A"))
    assert (await backend.perform(op, 0)).hex().upper() == "3AD77BB40D7A3660A89ECAF32466EF97"


@pytest.mark.parametrize("alias", ["alias/cmac-aes128", "alias/cmac-aes256", "alias/cmac-tdes2", "alias/cmac-tdes3"])
async def test_cmac_matches_cryptography(backend: ApcRegionBackend, alias: str) -> None:
    data = bytes.fromhex("6BC1BEE22E409F96E93D7E117393172A")
    expected = local_cmac(alias, data)
    assert await backend.perform(native(OpKind.GENERATE_MAC, alias, "CMAC", data, None), 0) == expected
    truncated = await backend.perform(native(OpKind.GENERATE_MAC, alias, "CMAC", data, 4), 0)
    assert truncated[:4] == expected[:4]
    # VERIFY_MAC returns the MAC itself: the codec compares it with the caller's in constant time
    assert await backend.perform(native(OpKind.VERIFY_MAC, alias, "CMAC", data, expected[:8]), 0) == expected


async def test_hmac_matches_hashlib(backend: ApcRegionBackend) -> None:
    data = b"Sample message for keylen<blocklen"
    expected = hmac.new(MATERIAL["alias/hmac-1"], data, hashlib.sha256).digest()  # zero padding changes nothing
    assert await backend.perform(native(OpKind.GENERATE_MAC, "alias/hmac-1", "HMAC_SHA256", data, None), 0) == expected


async def test_apc_operation_card_validation(backend: ApcRegionBackend) -> None:
    import hsmlb.payments.engine  # noqa: F401  (a broken engine must fail this test, not skip it)
    vector = next(v for v in json.loads(VECTORS.read_text())["vectors"] if v["id"] == "cvv-worked-example-111")
    inputs = vector["inputs"]
    assert MATERIAL["alias/cvk-1"].hex().upper() == inputs["cvk"]
    params = {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": inputs["pan"], "ValidationDataLength": 3,
              "GenerationAttributes": {"CardVerificationValue1": {"CardExpiryDate": inputs["expiry"],
                                                                  "ServiceCode": inputs["service_code"]}}}
    op = Operation(OpKind.GENERATE_CARD_VALIDATION, "alias/cvk-1", ("GenerateCardValidationData", params),
                   capability=Capability.CARD_VALIDATION)
    result = await backend.perform(op, 0)
    assert result["ValidationData"] == vector["expected"]["cvv"]
    assert result["KeyArn"] == backend.keys["alias/cvk-1"].label
    assert params["KeyIdentifier"] == "alias/cvk-1"  # the caller's dict is not rewritten
    verify = {"KeyIdentifier": "alias/cvk-1", "PrimaryAccountNumber": inputs["pan"], "ValidationData": "000",
              "VerificationAttributes": params["GenerationAttributes"]}
    failed = await backend.perform(Operation(OpKind.VERIFY_CARD_VALIDATION, "alias/cvk-1",
                                             ("VerifyCardValidationData", verify),
                                             capability=Capability.CARD_VALIDATION), 0)
    assert set(failed) == {"VerificationFailedReason"} and failed["VerificationFailedReason"]


# -- the wire format ----------------------------------------------------------------------------

def _sample(shape: Any, name: str, depth: int = 0) -> Any:
    """A value for every member of `shape` (first member of unions), identifiers as ARNs."""
    if shape.type_name == "structure":
        members = list(shape.members.items())
        if shape.metadata.get("union"):
            members = members[:1]
        return {n: _sample(s, n, depth + 1) for n, s in members if depth < 4}
    if shape.type_name == "integer":
        return 8
    if name.endswith("KeyIdentifier"):
        return f"arn:aws:payment-cryptography:{REGION}:111122223333:key/abcdefghijklmnop"
    return "0123456789ABCDEF"


@pytest.mark.parametrize("operation", service_model(DATA_SERVICE).operation_names)
def test_wire_matches_botocore_serializer(operation: str) -> None:
    model = service_model(DATA_SERVICE).operation_model(operation)
    params = _sample(model.input_shape, "")
    expected = create_serializer("rest-json", include_validation=False).serialize_to_request(params, model)
    path, body = RestJsonTemplate.compile(model).render(params)
    assert compile_data_plane()[operation].method == expected["method"]
    assert path == expected["url_path"] and not expected["query_string"]
    assert body == expected["body"]  # byte for byte, not only the same JSON value
    assert expected["headers"]["Content-Type"] == JSON


@pytest.mark.parametrize("operation", service_model(DATA_SERVICE).operation_names)
@pytest.mark.parametrize(("base", "token"), [
    ("http://127.0.0.1:8443", None),
    (f"https://dataplane.payment-cryptography.{REGION}.amazonaws.com", "session-token/with+odd=chars"),
    ("http://LocalHost:80/prefix", None),
])
def test_fast_signer_equals_sigv4auth(operation: str, base: str, token: str | None) -> None:
    model = service_model(DATA_SERVICE).operation_model(operation)
    path, body = RestJsonTemplate.compile(model).render(_sample(model.input_shape, ""))
    credentials = ReadOnlyCredentials(ACCESS, SECRET, token)
    reference = AWSRequest(method="POST", url=base + path, data=body, headers={"Content-Type": JSON})
    SigV4Auth(credentials, "payment-cryptography", REGION).add_auth(reference)
    stamp = reference.headers["X-Amz-Date"]
    fast = FastSigner(credentials, REGION, base).sign("POST", path, {"Content-Type": JSON}, body, timestamp=stamp)
    assert fast == dict(reference.headers.items())


@pytest.mark.parametrize("operation", ["GetKey", "ListAliases"])
def test_control_plane_wire_matches_botocore(operation: str) -> None:
    model = service_model("payment-cryptography").operation_model(operation)
    params = {"GetKey": {"KeyIdentifier": "alias/zek-aes128"}, "ListAliases": {"MaxResults": 1}}[operation]
    expected = create_serializer("json", include_validation=False).serialize_to_request(params, model)
    headers, body = Json10Template.for_control_plane().render(operation, params)
    assert (expected["method"], expected["url_path"], expected["body"]) == ("POST", "/", body)
    assert {k: expected["headers"][k] for k in headers} == headers


def test_wire_refuses_unknown_members_and_missing_labels() -> None:
    template = compile_data_plane()["EncryptData"]
    with pytest.raises(InvalidArgument, match=r"key_identifier \(APC KeyIdentifier\): required"):
        template.render({"PlainText": "00"})
    with pytest.raises(InvalidArgument, match=r"bogus \(APC Bogus\): not a member"):
        template.render({"KeyIdentifier": "alias/x", "Bogus": 1})


# -- error mapping ------------------------------------------------------------------------------

async def test_validation_exception_names_fields_never_values(backend: ApcRegionBackend) -> None:
    secret = "4111111111111111ZZ"
    params = {"KeyIdentifier": "alias/zek-aes128", "PlainText": secret,
              "EncryptionAttributes": {"Symmetric": {"Mode": "ECB"}}}
    with pytest.raises(InvalidArgument) as raised:
        await backend.perform(Operation(OpKind.ENCRYPT, "alias/zek-aes128", ("EncryptData", params),
                                        capability=Capability.DUKPT), 0)
    assert "plain_text (APC PlainText): " in raised.value.message
    assert secret not in raised.value.message and "4111111111" not in raised.value.message


async def test_unknown_alias_is_key_not_found(backend: ApcRegionBackend) -> None:
    with pytest.raises(KeyNotFound, match="alias/does-not-exist"):
        await backend.perform(native(OpKind.ENCRYPT, "alias/does-not-exist", "ECB", b"", bytes(16)), 0)


async def test_wrong_secret_is_a_node_fault(backend: ApcRegionBackend, emulator: Emulator, aws_env: Path) -> None:
    node = ApcRegionBackend(region_config(emulator.endpoint_url, aws_env / "wrong", name="apc-wrong"))
    with pytest.raises(NodeFault, match="region rejected our credentials"):
        await node.start()
    assert node.state == "down"
    await node.close()
    # and on the hot path and in probes, as after a secret rotated under us
    backend._apply_credentials(ReadOnlyCredentials(ACCESS, "rotated-away", None))
    try:
        with pytest.raises(NodeFault, match="region rejected our credentials"):
            await backend.perform(native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes(16)), 0)
        with pytest.raises(NodeFault, match="region rejected our credentials"):
            await backend._control_call()
    finally:
        backend._apply_credentials(ReadOnlyCredentials(ACCESS, SECRET, None))


async def test_server_errors_are_node_faults_and_fail_the_probe(backend: ApcRegionBackend, faults: Emulator) -> None:
    await backend.probe()
    set_faults(faults, error_rate=1.0)
    with pytest.raises(NodeFault, match="InternalServerException"):
        await backend.perform(native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes(16)), 0)
    with pytest.raises(NodeFault):
        await backend.probe()
    set_faults(faults, error_rate=0.0)
    await backend.probe()


async def test_throttling_is_throttled_and_drains_the_bucket(backend: ApcRegionBackend, faults: Emulator) -> None:
    set_faults(faults, throttle_rate=1.0)
    op = native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes(16))
    with pytest.raises(Throttled, match="throttled"):
        await backend.perform(op, 0)
    local = backend.counts["throttled_locally"]
    with pytest.raises(Throttled, match="quota"):  # refused locally: the bucket is drained for a moment
        await backend.perform(op, 0)
    assert backend.counts["throttled_locally"] == local + 1
    await backend.probe()  # a throttled region is alive: the probe passes
    set_faults(faults, throttle_rate=0.0)
    await asyncio.sleep(0.2)
    assert len(await backend.perform(op, 0)) == 16


async def test_local_quota_refuses_beyond_the_rate(emulator: Emulator, aws_env: Path) -> None:
    quotas = ApcQuotas(symmetric_per_s=2, burst_s=0.5, max_wait_s=0)  # one token banked, one more each 0.5 s
    node = ApcRegionBackend(region_config(emulator.endpoint_url, aws_env / "good", name="apc-quota", connections=1,
                                          quotas=quotas))
    await node.start()
    op = native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes(16))
    try:
        assert len(await node.perform(op, 0)) == 16  # the banked token
        with pytest.raises(Throttled, match="quota"):  # the next one is half a second away
            await node.perform(op, 0)
        assert node.stats()["quotas"]["symmetric"]["refused"] >= 1
    finally:
        await node.close()


async def test_deadline_already_passed(backend: ApcRegionBackend) -> None:
    op = native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes(16), deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded):
        await backend.perform(op, 0)


async def test_stopped_region_fails_fast_as_node_fault(aws_env: Path) -> None:
    server = start_region()
    node = ApcRegionBackend(region_config(server.endpoint_url, aws_env / "good", name="apc-killed"))
    try:
        await node.start()
        await node.probe()
        server.stop()
        with pytest.raises(NodeFault, match="connection failed"):  # refused at once, not a timeout
            await node.perform(native(OpKind.ENCRYPT, "alias/zek-aes128", "ECB", b"", bytes(16)), 0)
        with pytest.raises(NodeFault):
            await node.probe()
    finally:
        server.stop()
        await node.close()


# -- supervision --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_down_at_start_then_reconnects_in_background(aws_env: Path) -> None:
    port = _free_port()
    node = ApcRegionBackend(region_config(f"http://127.0.0.1:{port}", aws_env / "good", name="apc-late",
                                          connect_timeout_s=0.5))
    changes: list[str] = []
    node.on_change.append(lambda n: changes.append(n.state))
    with pytest.raises(NodeFault):
        await node.start()
    assert node.state == "down" and changes == ["down"]
    server = start_region(port)
    try:
        for _ in range(200):  # bounded: the back-off starts at 0.5 s
            if node.state == "up":
                break
            await asyncio.sleep(0.1)
        assert node.state == "up" and changes == ["down", "up"]
        assert node.stats()["restarts"] == 1 and node.keys
        await node.probe()
    finally:
        await node.close()
        server.stop()
    assert node.state == "down"
    with pytest.raises(NodeFault):
        await node.probe()
