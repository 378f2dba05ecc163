"""Capability routing, skipped-operation counts and throttling back-pressure, as pure policy.

Backends here are scripted stand-ins on the Backend protocol (no tokens, no sockets): this is the
router's decision logic, tested with a fake clock; the real backends are tested end to end elsewhere.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.credentials import Credentials, ReadOnlyCredentials
from google.protobuf import descriptor

from hsmlb.apc.discovery import Discovery, key_info
from hsmlb.apc.model import SERVICE
from hsmlb.apc.native import pick_canary
from hsmlb.apc.validation import load_service
from hsmlb.apc.wire import ApiFailure
from hsmlb.api.payment_codec import apc_params
from hsmlb.backends.apc import ApcRegionBackend
from hsmlb.backends.base import Backend, BackendState
from hsmlb.backends.pkcs11 import Pkcs11Backend
from hsmlb.clock import FakeClock
from hsmlb.config import ApcRegionConfig, Pkcs11NodeConfig, parse_config
from hsmlb.errors import InvalidArgument, KeyNotFound, Overloaded, Throttled, Unavailable
from hsmlb.health import HealthPolicy, NodeHealth
from hsmlb.ops import (
    HOST_SIDE_CAPABILITIES,
    NATIVE_CAPABILITIES,
    VERIFICATION_FAILED,
    Capability,
    KeyInfo,
    Operation,
    OpKind,
)
from hsmlb.pool import NodePool
from hsmlb.router import LeastOutstanding
from hsmlb.router.breaker import NodeBreaker
from hsmlb.router.cluster import Cluster, Member
from hsmlb.router.router import Router
from hsmlb.v1 import hsmlb_pb2 as pb
from tests._scripted import ScriptedBackend

AES = KeyInfo("alias/zek", "alias/zek", "AES", "ABCDEF", frozenset({"encrypt", "decrypt"}))
PEK = KeyInfo("alias/pek", "alias/pek", "DES3", "08D7B4", frozenset({"encrypt", "decrypt"}))
BDK = KeyInfo("alias/bdk", "alias/bdk", "DES3", "123456", frozenset({"encrypt"}))


def _router(*backends: ScriptedBackend) -> tuple[Router, FakeClock]:
    clock = FakeClock()
    members = [Member(NodePool(b, size=4, queue_limit=8), NodeHealth(b.name, HealthPolicy(), clock()),
                      NodeBreaker(b.name, clock)) for b in backends]
    return Router(Cluster(members), LeastOutstanding(), clock), clock


def _translate() -> Operation:
    return Operation(OpKind.TRANSLATE_PIN, "alias/pek", ("TranslatePinData", {}),
                     capability=Capability.PIN_TRANSLATION, other_keys=("alias/bdk",))


async def test_payment_ops_go_only_to_capable_nodes_and_the_others_count_skips():
    strict = ScriptedBackend("strict-token", [AES, PEK, BDK], capabilities=NATIVE_CAPABILITIES)
    derive = ScriptedBackend("host-side", [AES, PEK, BDK], capabilities=NATIVE_CAPABILITIES | HOST_SIDE_CAPABILITIES)
    router, _ = _router(strict, derive)
    for _ in range(10):
        await router.execute(_translate())
    assert (strict.calls, derive.calls) == (0, 10)
    members = router.cluster.by_name
    assert members["strict-token"].skipped == {"pin_translation": 10}
    assert members["host-side"].skipped == {}


async def test_a_translation_needs_a_node_holding_both_keys():
    only_pek = ScriptedBackend("a", [PEK], capabilities=NATIVE_CAPABILITIES | HOST_SIDE_CAPABILITIES)
    both = ScriptedBackend("b", [PEK, BDK], capabilities=NATIVE_CAPABILITIES | HOST_SIDE_CAPABILITIES)
    router, _ = _router(only_pek, both)
    for _ in range(5):
        await router.execute(_translate())
    assert (only_pek.calls, both.calls) == (0, 5)
    unknown = Operation(OpKind.TRANSLATE_PIN, "alias/pek", ("TranslatePinData", {}),
                        capability=Capability.PIN_TRANSLATION, other_keys=("alias/nope",))
    with pytest.raises(KeyNotFound, match="alias/nope"):
        await router.execute(unknown)


async def test_nothing_capable_is_unavailable_not_a_caller_error():
    strict = ScriptedBackend("strict-token", [PEK, BDK], capabilities=NATIVE_CAPABILITIES)
    router, _ = _router(strict)
    with pytest.raises(Unavailable):
        await router.execute(_translate())


async def test_throttled_node_passes_the_request_on_and_is_never_ejected():
    throttled = ScriptedBackend("region", [AES], capabilities=NATIVE_CAPABILITIES, outcome=Throttled("slow down"))
    token = ScriptedBackend("token", [AES], capabilities=NATIVE_CAPABILITIES)
    router, _ = _router(throttled, token)
    op = Operation(OpKind.ENCRYPT, "alias/zek", ("ECB", b"", b"\0" * 16))
    for _ in range(60):
        result, _key = await router.execute(op)
        assert result == b"ok"
    region = router.cluster.by_name["region"]
    assert region.throttled == throttled.calls > 0
    assert region.health.ejected_until is None and region.breaker.state == "closed"


async def test_all_nodes_throttled_is_resource_exhausted():
    router, _ = _router(ScriptedBackend("r1", [AES], capabilities=NATIVE_CAPABILITIES, outcome=Throttled("quota")),
                        ScriptedBackend("r2", [AES], capabilities=NATIVE_CAPABILITIES, outcome=Throttled("quota")))
    with pytest.raises(Overloaded) as raised:
        await router.execute(Operation(OpKind.ENCRYPT, "alias/zek", ("ECB", b"", b"\0" * 16)))
    assert raised.value.status.name == "RESOURCE_EXHAUSTED"


async def test_native_key_checks_do_not_apply_to_payment_ops():
    # A BDK carries no `decrypt` attribute, but DUKPT decryption with it is legitimate: the engine
    # (or APC) checks its TR-31 usage, not the token attribute.
    node = ScriptedBackend("n", [BDK], capabilities=NATIVE_CAPABILITIES | HOST_SIDE_CAPABILITIES)
    router, _ = _router(node)
    dukpt = Operation(OpKind.DECRYPT, "alias/bdk", ("DecryptData", {}), capability=Capability.DUKPT)
    assert (await router.execute(dukpt))[0] == b"ok"
    with pytest.raises(InvalidArgument, match="does not allow decrypt"):
        await router.execute(Operation(OpKind.DECRYPT, "alias/bdk", ("ECB", b"", b"\0" * 8)))


def test_node_kinds_are_discriminated_and_default_to_pkcs11():
    config = parse_config({"nodes": [
        {"name": "t", "module": "/m.so", "token_label": "t", "pin_env": "PIN"},
        {"kind": "apc", "name": "east", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:1"}]})
    assert isinstance(config.nodes[0], Pkcs11NodeConfig) and isinstance(config.nodes[1], ApcRegionConfig)
    assert config.nodes[1].quotas.symmetric_per_s == 500 and config.nodes[1].quotas.asymmetric_per_s == 20


def _request_messages() -> dict[str, Any]:
    return {"EncryptData": pb.EncryptDataRequest, "DecryptData": pb.DecryptDataRequest,
            "ReEncryptData": pb.ReEncryptDataRequest, "GenerateMac": pb.GenerateMacRequest,
            "VerifyMac": pb.VerifyMacRequest, "GenerateCardValidationData": pb.GenerateCardValidationDataRequest,
            "VerifyCardValidationData": pb.VerifyCardValidationDataRequest,
            "TranslatePinData": pb.TranslatePinDataRequest,
            "VerifyAuthRequestCryptogram": pb.VerifyAuthRequestCryptogramRequest}


@pytest.mark.parametrize("operation", sorted(_request_messages()))
def test_every_proto_field_is_an_apc_member_of_the_same_shape(operation: str):
    """The proto mirrors APC: each field's PascalCase name is a member of botocore's shape, recursively."""
    model = load_service(SERVICE)

    def walk(message: descriptor.Descriptor, shape: Any, path: str) -> int:
        checked = 0
        for field in message.fields:
            name = "".join(p[:1].upper() + p[1:] for p in field.name.split("_"))
            assert name in shape.members, f"{path}.{field.name} -> {name} is not in {shape.name}"
            member = shape.members[name]
            if field.message_type is not None:
                assert member.type_name == "structure", f"{path}.{name}"
                checked += walk(field.message_type, member, f"{path}.{name}")
            elif field.enum_type is not None:
                names, apc = {v.name for v in field.enum_type.values if v.number}, set(member.enum)
                # Every APC value is expressible; extra proto values (a shared enum) fail APC's validation.
                assert apc <= names or names <= apc, f"{path}.{name}: {names ^ apc}"
            checked += 1
        return checked

    assert walk(_request_messages()[operation].DESCRIPTOR, model.operation_model(operation).input_shape, operation) > 2


def test_apc_params_is_the_botocore_input_dict():
    request = pb.TranslatePinDataRequest(
        incoming_key_identifier="alias/bdk", outgoing_key_identifier="alias/pek",
        encrypted_pin_block="1B9C1845EB993A7A",
        incoming_translation_attributes=pb.TranslationIsoFormats(
            iso_format0=pb.TranslationPinDataIsoFormat034(primary_account_number="4012345678909")),
        outgoing_translation_attributes=pb.TranslationIsoFormats(iso_format1=pb.TranslationPinDataIsoFormat1()),
        incoming_dukpt_attributes=pb.DukptDerivationAttributes(key_serial_number="FFFF9876543210E00001",
                                                               dukpt_key_derivation_type=pb.TDES_2KEY))
    assert apc_params(request) == {
        "IncomingKeyIdentifier": "alias/bdk", "OutgoingKeyIdentifier": "alias/pek",
        "EncryptedPinBlock": "1B9C1845EB993A7A",
        "IncomingTranslationAttributes": {"IsoFormat0": {"PrimaryAccountNumber": "4012345678909"}},
        "OutgoingTranslationAttributes": {"IsoFormat1": {}},
        "IncomingDukptAttributes": {"KeySerialNumber": "FFFF9876543210E00001", "DukptKeyDerivationType": "TDES_2KEY"}}


# -- the backend contract ---------------------------------------------------------------------------
# The real backends are constructed here, never started: no worker, no socket, no region.
def test_backend_state_fires_on_change_once_per_real_transition():
    node, other = BackendState(), BackendState()
    assert (node.state, node.keys, node.on_change) == ("starting", {}, [])
    seen: list[tuple[object, str]] = []
    node.on_change.append(lambda n: seen.append((n, n.state)))
    for state in ("up", "up", "down", "down", "up"):
        node._set_state(state)
    assert seen == [(node, "up"), (node, "down"), (node, "up")]
    assert other.on_change == [] and other.state == "starting"  # callbacks are per node, never shared


def _real_backends(host_side: bool) -> tuple[Pkcs11Backend, ApcRegionBackend]:
    config = parse_config({"nodes": [
        {"name": "t", "module": "/m.so", "token_label": "t", "pin_env": "PIN",
         "allow_host_side_derivation": host_side},
        {"kind": "apc", "name": "east", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:1"}]})
    token, region = config.nodes
    assert isinstance(token, Pkcs11NodeConfig) and isinstance(region, ApcRegionConfig)
    return Pkcs11Backend(token), ApcRegionBackend(region)


@pytest.mark.parametrize("host_side", [False, True])
def test_real_backends_implement_the_whole_protocol_with_capability_values(host_side: bool):
    token, region = _real_backends(host_side)
    members = {*Backend.__annotations__, *(name for name in vars(Backend) if not name.startswith("_"))}
    assert {"capabilities", "on_change", "state", "keys", "perform", "probe", "close"} <= members
    for node in (token, region):
        assert isinstance(node, BackendState)
        assert [name for name in sorted(members) if not hasattr(node, name)] == []
        assert (node.state, node.keys, node.on_change) == ("starting", {}, [])
        assert node.capabilities and all(isinstance(c, Capability) for c in node.capabilities)
    assert token.capabilities == (NATIVE_CAPABILITIES | HOST_SIDE_CAPABILITIES if host_side else NATIVE_CAPABILITIES)
    assert region.capabilities >= HOST_SIDE_CAPABILITIES
    assert not {Capability.SIGN, Capability.VERIFY, Capability.RANDOM} & region.capabilities
    seen: list[str] = []
    token.on_change.append(lambda n: seen.append(f"{n.name}:{n.state}"))
    region.on_change.append(lambda n: seen.append(f"{n.name}:{n.state}"))
    token._set_state("down")
    region._set_state("down")
    region._set_state("down")
    assert seen == ["t:down", "east:down"]


def _hmac_key(alias: str, algorithm: str) -> KeyInfo:
    """A control-plane `Key` for an HMAC key, as discovery turns it into a KeyInfo."""
    return key_info(alias, {"KeyArn": f"arn:aws:payment-cryptography:us-east-1:111122223333:key/{alias[6:]}",
                            "KeyCheckValue": "a1b2c3", "KeyAttributes": {
                                "KeyAlgorithm": algorithm, "KeyUsage": "TR31_M7_HMAC_KEY",
                                "KeyModesOfUse": {"Generate": True, "Verify": True}}})


def test_apc_canary_takes_the_hmac_algorithm_from_key_info():
    key = _hmac_key("alias/hmac", "HMAC_SHA256")
    assert (key.algorithm, key.key_type, key.bits, key.kcv) == ("HMAC_SHA256", "GENERIC_SECRET", 256, "A1B2C3")
    assert "sign" in key.usages

    def found(*keys: KeyInfo) -> Discovery:
        return Discovery(Credentials("test", "test"), ReadOnlyCredentials("test", "test", None),
                         "http://127.0.0.1:1", "http://127.0.0.1:1", {k.alias: k for k in keys})

    assert pick_canary(found(key).keys) == (
        "GenerateMac", {"KeyIdentifier": key.label, "MessageData": "00",
                        "GenerationAttributes": {"Algorithm": "HMAC_SHA256"}})
    # an HMAC key whose algorithm the region did not report gives no MAC canary (GetKey is used instead)
    assert pick_canary(found(_hmac_key("alias/bare", "")).keys) is None


@pytest.mark.parametrize("reason", ["INVALID_MAC", "AC3E59BDF6804127", "C4111111111111111", "", None])
def test_region_verification_reasons_pass_only_the_model_enum(reason: str | None) -> None:
    """A front door may answer VerificationFailedException with request values as the Reason."""
    _, region = _real_backends(host_side=False)
    members = {} if reason is None else {"Reason": reason}
    result = region._failure(ApiFailure(400, "VerificationFailedException", "", members), "VerifyMac", None, None)
    assert result == {VERIFICATION_FAILED: "INVALID_MAC" if reason == "INVALID_MAC" else "VERIFICATION_FAILED"}


def test_the_native_key_check_is_remembered_per_request_shape_and_forgotten_on_rebuild():
    """Cluster.holders remembers the (alias, shape) pairs that passed check_native_key: another shape on the
    same key (a CBC IV of the wrong length after ECB passed) is still checked, and a rebuild with a changed
    key (now DES3) checks again."""
    backend = ScriptedBackend("a", [AES])
    router, _ = _router(backend)
    cluster = router.cluster

    def encrypt(mode: str, iv: bytes) -> Operation:
        return Operation(OpKind.ENCRYPT, AES.alias, (mode, iv, bytes(16)))

    for _ in range(2):
        assert [m.name for m in cluster.holders(encrypt("ECB", b""))] == ["a"]
        assert [m.name for m in cluster.holders(encrypt("CBC", bytes(16)))] == ["a"]
        with pytest.raises(InvalidArgument, match="initialization_vector: must be 16 bytes"):
            cluster.holders(encrypt("CBC", bytes(8)))
    backend.keys = {AES.alias: KeyInfo(AES.alias, AES.label, "DES3", "08D7B4", frozenset({"encrypt"}))}
    cluster.rebuild()
    with pytest.raises(InvalidArgument, match="initialization_vector: must be 8 bytes"):
        cluster.holders(encrypt("CBC", bytes(16)))
    assert [m.name for m in cluster.holders(encrypt("CBC", bytes(8)))] == ["a"]
