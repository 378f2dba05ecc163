"""Acceptance: bad input gets the right status and a message naming the field, and the daemon keeps serving.

Every case runs as a unary call and as one message of a bidi Stream between valid messages. The
module runs its own daemon, so the closing check (no node counted a failure) sees only this traffic.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from hsmlb.api.status import DETAILS_KEY, violations_of
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import DaemonProcess, start_daemon, sym

AES = "alias/zek-aes128"
BLOCK = "6BC1BEE22E409F96E93D7E117393172A"  # NIST SP 800-38A F.1.1 block 1 ...
BLOCK_CIPHER = "3AD77BB40D7A3660A89ECAF32466EF97"  # ... and its AES-128 ECB cipher text (same source)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FIELDS = {"EncryptData": "encrypt_data", "DecryptData": "decrypt_data", "GenerateMac": "generate_mac",
          "VerifyMac": "verify_mac", "Sign": "sign", "Verify": "verify", "GenerateRandom": "generate_random"}


@pytest.fixture(scope="module")
def daemon(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """This module's own daemon (overrides the shared one for `ops` and `admin` here)."""
    proc = start_daemon(cluster.config, tmp_path_factory.mktemp("bad-input") / "daemon.log")
    yield proc
    proc.stop()


@dataclass(frozen=True)
class Case:
    method: str
    request: Any
    code: grpc.StatusCode
    words: tuple[str, ...]  # each must appear in the error message


def enc(alias: str = AES, data: str = BLOCK, attrs: pb.EncryptionDecryptionAttributes | None = None,
        mode: int = pb.ECB, iv: str = "") -> pb.EncryptDataRequest:
    return pb.EncryptDataRequest(key_identifier=alias, plain_text=data,
                                 encryption_attributes=attrs if attrs is not None else sym(mode, iv))


def dec(alias: str = AES, data: str = BLOCK_CIPHER, mode: int = pb.ECB, iv: str = "",
        attrs: pb.EncryptionDecryptionAttributes | None = None) -> pb.DecryptDataRequest:
    return pb.DecryptDataRequest(key_identifier=alias, cipher_text=data,
                                 decryption_attributes=attrs if attrs is not None else sym(mode, iv))


def gmac(alias: str = "alias/cmac-aes128", data: str = BLOCK, algorithm: int | None = pb.CMAC,
         length: int = 0) -> pb.GenerateMacRequest:
    attrs = pb.MacAttributes() if algorithm is None else pb.MacAttributes(algorithm=algorithm)
    return pb.GenerateMacRequest(key_identifier=alias, message_data=data, generation_attributes=attrs,
                                 mac_length=length)


def vmac(alias: str = "alias/cmac-aes128", data: str = BLOCK, mac: str = "00" * 16, algorithm: int | None = pb.CMAC,
         length: int = 0) -> pb.VerifyMacRequest:
    attrs = pb.MacAttributes() if algorithm is None else pb.MacAttributes(algorithm=algorithm)
    return pb.VerifyMacRequest(key_identifier=alias, message_data=data, mac=mac, verification_attributes=attrs,
                               mac_length=length)


def sign(alias: str = "alias/sign-rsa", message: str = BLOCK, algorithm: int = pb.RSASSA_PSS_SHA_256) -> pb.SignRequest:
    return pb.SignRequest(key_identifier=alias, message=message, signing_algorithm=algorithm)


def verify(alias: str = "alias/sign-rsa", signature: str = "00" * 256,
           algorithm: int = pb.RSASSA_PKCS1_V1_5_SHA_256) -> pb.VerifyRequest:
    return pb.VerifyRequest(key_identifier=alias, message=BLOCK, signature=signature, signing_algorithm=algorithm)


def rnd(n: int) -> pb.GenerateRandomRequest:
    return pb.GenerateRandomRequest(number_of_bytes=n)


CASES: dict[str, Case] = {
    # unknown alias
    "unknown-alias-encrypt": Case("EncryptData", enc(alias="alias/no-such-key"), NOT_FOUND, ("alias/no-such-key",)),
    "unknown-alias-mac": Case("GenerateMac", gmac(alias="alias/no-such-key"), NOT_FOUND, ("alias/no-such-key",)),
    "unknown-alias-sign": Case("Sign", sign(alias="alias/no-such-key"), NOT_FOUND, ("alias/no-such-key",)),
    # bad hex
    "hex-non-hex": Case("EncryptData", enc(data=BLOCK[:-1] + "G"), INVALID, ("plain_text", "hex")),
    "hex-odd-length": Case("EncryptData", enc(data=BLOCK[:-1]), INVALID, ("plain_text", "hex")),
    "hex-spaces": Case("EncryptData", enc(data=" ".join([BLOCK[:16], BLOCK[16:]])), INVALID, ("plain_text", "hex")),
    "hex-0x-prefix": Case("EncryptData", enc(data="0x" + BLOCK), INVALID, ("plain_text",)),
    "hex-non-ascii": Case("EncryptData", enc(data=BLOCK[:-2] + "é0"), INVALID, ("plain_text",)),
    "hex-cipher-text": Case("DecryptData", dec(data="ZZ" * 16), INVALID, ("cipher_text", "hex")),
    "hex-iv": Case("EncryptData", enc(mode=pb.CBC, iv="00" * 15 + "GG"), INVALID, ("initialization_vector", "hex")),
    "hex-message-data": Case("GenerateMac", gmac(data="HELLO"), INVALID, ("message_data", "hex")),
    "hex-mac": Case("VerifyMac", vmac(mac="XY" * 16), INVALID, ("mac", "hex")),
    "hex-sign-message": Case("Sign", sign(message="hello world"), INVALID, ("message", "hex")),
    "hex-signature": Case("Verify", verify(signature="QQ" * 256), INVALID, ("signature", "hex")),
    # wrong lengths
    "aes-data-not-16-multiple": Case("EncryptData", enc(data=BLOCK + BLOCK[:16]), INVALID, ("length",)),
    "aes-cbc-cipher-not-16-multiple": Case("DecryptData", dec(data=BLOCK * 2 + BLOCK[:16], mode=pb.CBC, iv="00" * 16),
                                           INVALID, ("length",)),
    "data-not-8-multiple": Case("EncryptData", enc(data=BLOCK[:24]), INVALID, ("plain_text", "multiple")),
    "data-empty": Case("EncryptData", enc(data=""), INVALID, ("plain_text",)),
    "data-too-long": Case("EncryptData", enc(data="00" * 4112), INVALID, ("plain_text", "longer")),
    "mac-data-empty": Case("GenerateMac", gmac(data=""), INVALID, ("message_data",)),
    "iv-12-bytes": Case("EncryptData", enc(mode=pb.CBC, iv="00" * 12), INVALID, ("initialization_vector",)),
    "iv-17-bytes": Case("EncryptData", enc(mode=pb.CBC, iv="00" * 17), INVALID, ("initialization_vector",)),
    "iv-8-bytes-for-aes": Case("EncryptData", enc(mode=pb.CBC, iv="00" * 8), INVALID, ()),
    "iv-16-bytes-for-tdes": Case("EncryptData", enc(alias="alias/dek-tdes2", mode=pb.CBC, iv="00" * 16), INVALID, ()),
    "cbc-without-iv": Case("EncryptData", enc(mode=pb.CBC), INVALID, ("initialization_vector",)),
    "cbc-decrypt-without-iv": Case("DecryptData", dec(mode=pb.CBC), INVALID, ("initialization_vector",)),
    "iv-with-ecb": Case("EncryptData", enc(iv="00" * 16), INVALID, ("initialization_vector", "ECB")),
    "mac-length-3": Case("GenerateMac", gmac(length=3), INVALID, ("mac_length",)),
    "mac-length-17-cmac": Case("GenerateMac", gmac(length=17), INVALID, ("mac_length", "CMAC")),
    "mac-length-33-hmac": Case("GenerateMac", gmac(alias="alias/hmac-1", algorithm=pb.HMAC_SHA256, length=33),
                               INVALID, ("mac_length", "HMAC_SHA256")),
    "mac-length-negative": Case("GenerateMac", gmac(length=-1), INVALID, ("mac_length",)),
    "verify-mac-length-mismatch": Case("VerifyMac", vmac(mac="00" * 8, length=16), INVALID, ("mac",)),
    "verify-mac-too-short": Case("VerifyMac", vmac(mac="0000"), INVALID, ("mac",)),
    "signature-too-short": Case("Verify", verify(signature="00" * 4), INVALID, ("signature",)),
    "random-0": Case("GenerateRandom", rnd(0), INVALID, ("number_of_bytes",)),
    "random-5000": Case("GenerateRandom", rnd(5000), INVALID, ("number_of_bytes",)),
    "random-negative": Case("GenerateRandom", rnd(-1), INVALID, ("number_of_bytes",)),
    # key usage
    "usage-encrypt-with-cmac-key": Case("EncryptData", enc(alias="alias/cmac-aes128"), INVALID, ("usage", "encrypt")),
    "usage-decrypt-with-cmac-key": Case("DecryptData", dec(alias="alias/cmac-aes128"), INVALID, ("usage", "decrypt")),
    "usage-mac-with-data-key": Case("GenerateMac", gmac(alias=AES), INVALID, ("usage", AES)),
    "usage-verify-mac-with-data-key": Case("VerifyMac", vmac(alias=AES), INVALID, ("usage", AES)),
    "usage-sign-with-aes-key": Case("Sign", sign(alias=AES), INVALID, ("needs", "sign")),
    "usage-verify-with-aes-key": Case("Verify", verify(alias=AES), INVALID, ("needs", "verify")),
    "usage-sign-with-tdes-key": Case("Sign", sign(alias="alias/dek-tdes2"), INVALID, ("needs", "sign")),
    # unsupported modes and algorithms
    **{f"mode-{name}": Case("EncryptData", enc(mode=pb.EncryptionMode.Value(name)), INVALID, ("mode", name))
       for name in ("OFB", "CFB", "CFB1", "CFB8", "CFB64", "CFB128", "ENCRYPTION_MODE_UNSPECIFIED")},
    "mode-unknown-99": Case("EncryptData", enc(mode=99), INVALID, ("mode", "99")),
    "decrypt-mode-OFB": Case("DecryptData", dec(mode=pb.OFB), INVALID, ("mode", "OFB")),
    # ISO 9797-1 MACs are served (payment path), but not with a CMAC key: its TR-31 usage is M6.
    "mac-iso9797-alg3-on-cmac-key": Case("GenerateMac", gmac(algorithm=pb.ISO9797_ALGORITHM3), INVALID,
                                         ("KeyIdentifier", "TR31_M6", "TR31_M3")),
    "mac-iso9797-alg1-on-cmac-key": Case("VerifyMac", vmac(algorithm=pb.ISO9797_ALGORITHM1), INVALID,
                                         ("KeyIdentifier", "TR31_M1")),
    "mac-unspecified": Case("GenerateMac", gmac(algorithm=pb.MAC_ALGORITHM_UNSPECIFIED), INVALID, ("algorithm",)),
    "mac-unknown-77": Case("GenerateMac", gmac(algorithm=77), INVALID, ("algorithm", "77")),
    "signing-unspecified": Case("Sign", sign(algorithm=pb.SIGNING_ALGORITHM_UNSPECIFIED), INVALID,
                                ("signing_algorithm",)),
    "verify-signing-unspecified": Case("Verify", verify(algorithm=0), INVALID, ("signing_algorithm",)),
    "signing-unknown-42": Case("Sign", sign(algorithm=42), INVALID, ("signing_algorithm",)),
    # key type does not fit the algorithm
    "ecdsa-with-rsa-key": Case("Sign", sign(algorithm=pb.ECDSA_SHA_256), INVALID, ("ECDSA_SHA_256", "RSA")),
    "verify-ecdsa-with-rsa-key": Case("Verify", verify(algorithm=pb.ECDSA_SHA_256), INVALID, ("ECDSA_SHA_256",)),
    "pss-with-ec-key": Case("Sign", sign(alias="alias/sign-ec"), INVALID, ("RSASSA_PSS_SHA_256", "EC")),
    "hmac-with-aes-key": Case("GenerateMac", gmac(algorithm=pb.HMAC_SHA256), INVALID, ("HMAC_SHA256",)),
    "cmac-with-hmac-key": Case("GenerateMac", gmac(alias="alias/hmac-1"), INVALID, ("CMAC",)),
    # missing oneof / identifiers
    "encrypt-no-attributes": Case("EncryptData", pb.EncryptDataRequest(key_identifier=AES, plain_text=BLOCK),
                                  INVALID, ("encryption_attributes",)),
    "encrypt-empty-attributes": Case("EncryptData", enc(attrs=pb.EncryptionDecryptionAttributes()), INVALID,
                                     ("encryption_attributes",)),
    "decrypt-no-attributes": Case("DecryptData", pb.DecryptDataRequest(key_identifier=AES, cipher_text=BLOCK),
                                  INVALID, ("decryption_attributes",)),
    "mac-no-attributes": Case("GenerateMac", gmac(algorithm=None), INVALID, ("generation_attributes",)),
    "verify-mac-no-attributes": Case("VerifyMac", vmac(algorithm=None), INVALID, ("verification_attributes",)),
    "empty-key-identifier": Case("EncryptData", enc(alias=""), INVALID, ("key_identifier",)),
    "empty-key-identifier-mac": Case("GenerateMac", gmac(alias=""), INVALID, ("key_identifier",)),
    "empty-key-identifier-sign": Case("Sign", sign(alias=""), INVALID, ("key_identifier",)),
    "key-identifier-newline": Case("EncryptData", enc(alias="alias/zek\naes128"), INVALID, ("key_identifier",)),
    "key-identifier-too-long": Case("EncryptData", enc(alias="alias/" + "a" * 400), INVALID, ("key_identifier",)),
}
CASE_PARAMS = [pytest.param(case, id=name) for name, case in CASES.items()]


def _valid(request_id: int) -> pb.StreamRequest:
    return pb.StreamRequest(request_id=request_id, encrypt_data=enc())


def _bad(request_id: int, case: Case) -> pb.StreamRequest:
    return pb.StreamRequest(request_id=request_id, **{FIELDS[case.method]: case.request})


def _assert_valid_reply(reply: pb.StreamResponse) -> None:
    assert reply.WhichOneof("result") == "encrypt_data", reply
    assert reply.encrypt_data.cipher_text == BLOCK_CIPHER


def _assert_status(reply: pb.StreamResponse, case: Case) -> None:
    assert reply.WhichOneof("result") == "status", reply
    assert reply.status.code == case.code.value[0], reply.status
    for word in case.words:
        assert word in reply.status.message
    _assert_names_its_field(case, reply.status.message, violations_of(reply.status))


def _assert_names_its_field(case: Case, message: str, violations: list[tuple[str, str]]) -> None:
    """INVALID_ARGUMENT: the message starts with the field's proto path, and google.rpc.BadRequest says the same."""
    if case.code != INVALID:
        assert not violations
        return
    assert violations, message
    field = violations[0][0]
    assert re.fullmatch(r"[a-z][a-z0-9_.]*", field), field
    assert re.match(rf"{re.escape(field)}( \(APC [A-Za-z0-9.]+\))?: ", message), (field, message)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_unary(ops: pb_grpc.OperationsStub, case: Case) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(ops, case.method)(case.request, timeout=30)
    assert err.value.code() == case.code, err.value.details()
    details = err.value.details()
    assert details
    for word in case.words:
        assert word in details
    trailers = dict(err.value.trailing_metadata() or ())
    _assert_names_its_field(case, details, violations_of(trailers[DETAILS_KEY]) if DETAILS_KEY in trailers else [])


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_stream(ops: pb_grpc.OperationsStub, case: Case) -> None:
    replies = {r.request_id: r for r in ops.Stream(iter([_valid(1), _bad(2, case), _valid(3)]), timeout=30)}
    assert set(replies) == {1, 2, 3}
    _assert_status(replies[2], case)
    _assert_valid_reply(replies[1])
    _assert_valid_reply(replies[3])


def test_stream_all_cases_in_one_stream(ops: pb_grpc.OperationsStub) -> None:
    cases = list(CASES.values())
    requests = []
    for i, case in enumerate(cases):
        requests += [_bad(2 * i + 1, case), _valid(2 * i + 2)]
    requests.append(pb.StreamRequest(request_id=10_000))  # no operation at all
    replies = {r.request_id: r for r in ops.Stream(iter(requests), timeout=60)}
    assert len(replies) == len(requests)
    for i, case in enumerate(cases):
        _assert_status(replies[2 * i + 1], case)
        _assert_valid_reply(replies[2 * i + 2])
    assert replies[10_000].status.code == INVALID.value[0]
    assert "operation" in replies[10_000].status.message


def test_undecodable_request_is_refused(daemon: DaemonProcess, ops: pb_grpc.OperationsStub) -> None:
    """Bytes that are not a valid EncryptDataRequest (bad UTF-8 in a string field) fail that call only."""
    raw = enc().SerializeToString() + b"\x12\x02\xff\xfe"  # plain_text again, now invalid UTF-8
    with daemon.channel() as channel:
        call = channel.unary_unary("/hsmlb.v1.Operations/EncryptData")
        with pytest.raises(grpc.RpcError) as err:
            call(raw, timeout=10)
    assert err.value.code() != grpc.StatusCode.OK
    assert ops.EncryptData(enc(), timeout=10).cipher_text == BLOCK_CIPHER


# ------------------------------------------------------- checks that need the key's type (router)
@pytest.mark.parametrize("length", [9, 12, 16])
def test_tdes_cmac_mac_length_beyond_block_is_rejected(ops: pb_grpc.OperationsStub, length: int) -> None:
    with pytest.raises(grpc.RpcError) as err:
        ops.GenerateMac(gmac(alias="alias/cmac-tdes2", length=length), timeout=10)
    assert err.value.code() == INVALID
    assert "mac_length: must be 4-8 bytes for CMAC with a DES3 key" in err.value.details()


def test_tdes_cmac_default_and_block_length_and_verify_of_a_longer_mac(ops: pb_grpc.OperationsStub) -> None:
    full = ops.GenerateMac(gmac(alias="alias/cmac-tdes2"), timeout=10).mac
    assert len(full) == 16  # 8 bytes: the whole TDES CMAC when no mac_length is given
    assert ops.GenerateMac(gmac(alias="alias/cmac-tdes2", length=8), timeout=10).mac == full
    assert ops.VerifyMac(vmac(alias="alias/cmac-tdes2", mac=full), timeout=10).verified
    with pytest.raises(grpc.RpcError) as err:
        ops.VerifyMac(vmac(alias="alias/cmac-tdes2", mac=full + "00" * 8), timeout=10)
    assert err.value.code() == INVALID
    assert "mac: must be 4-8 bytes for CMAC with a DES3 key" in err.value.details()


@pytest.mark.parametrize(("case", "size"), [(CASES["iv-8-bytes-for-aes"], 16), (CASES["iv-16-bytes-for-tdes"], 8)],
                         ids=["aes", "tdes"])
def test_iv_of_wrong_block_size_names_the_iv(ops: pb_grpc.OperationsStub, case: Case, size: int) -> None:
    with pytest.raises(grpc.RpcError) as err:
        ops.EncryptData(case.request, timeout=10)
    assert err.value.code() == INVALID
    assert f"initialization_vector: must be {size} bytes for a" in err.value.details()


WRONG_CLASS = [
    pytest.param("Sign", sign(alias="alias/cmac-aes128"), "is an AES key; sign needs an EC or RSA key",
                 id="sign-with-secret-key"),
    pytest.param("Verify", verify(alias="alias/hmac-1"), "is a GENERIC_SECRET key; verify needs an EC or RSA key",
                 id="verify-with-secret-key"),
    pytest.param("GenerateMac", gmac(alias="alias/sign-rsa"), "is an RSA key; generate_mac needs an AES, DES3",
                 id="cmac-with-rsa-key")]


@pytest.mark.parametrize(("method", "request_", "words"), WRONG_CLASS)
def test_key_of_wrong_class_is_a_caller_error(fresh_daemon: DaemonProcess, method: str, request_: Any,
                                              words: str) -> None:
    """Run on a daemon of its own, so that the check of ops_failed sees only this request."""
    with fresh_daemon.channel() as channel:
        ops, admin = pb_grpc.OperationsStub(channel), pb_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            getattr(ops, method)(request_, timeout=30)
        failed = [n.name for n in admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes if n.ops_failed]
    assert err.value.code() == INVALID, err.value.details()
    assert words in err.value.details()
    assert failed == []


# ------------------------------------------------------------------ after all of the above
def test_zz_daemon_still_serves_and_no_node_was_blamed(daemon: DaemonProcess, ops: pb_grpc.OperationsStub,
                                                       admin: pb_grpc.AdminStub) -> None:
    """Runs last in this module (file order): nothing above may have cost a node anything."""
    assert ops.EncryptData(enc(), timeout=10).cipher_text == BLOCK_CIPHER
    assert ops.GenerateRandom(rnd(8), timeout=10).random
    assert daemon.proc.poll() is None
    nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
    assert len(nodes) == 4
    for node in nodes:
        assert node.ops_failed == 0, (node.name, node.detail)
        assert node.backend_state == "up", node.name
        assert node.state.startswith("healthy"), (node.name, node.state)
        assert node.breaker == "closed", node.name
        assert node.ejections == 0, node.name
    assert sum(n.ops_ok for n in nodes) > 0
