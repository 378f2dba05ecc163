"""Known-answer tests through the daemon: every public vector the daemon's API can express.

The CMAC, HMAC and KCV vectors come from tests/vectors/public_kat.json (each cites its source);
the AES ECB/CBC vectors are copied from NIST SP 800-38A Appendix F (cited next to each).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import VECTORS, sym

KAT: dict[str, dict[str, Any]] = {v["id"]: v for v in json.loads(VECTORS.read_text())["vectors"]}

# key group in public_kat.json -> the dev-keys.yaml alias holding that key
CMAC_ALIASES = {
    ("cmac-aes-nist-sp800-38b", "AES128"): "alias/cmac-aes128",
    ("cmac-aes-nist-sp800-38b", "AES192"): "alias/cmac-aes192",
    ("cmac-aes-nist-sp800-38b", "AES256"): "alias/cmac-aes256",
    ("cmac-tdes-nist-sp800-38b", "TDES2"): "alias/cmac-tdes2",
    ("cmac-tdes-nist-sp800-38b", "TDES3"): "alias/cmac-tdes3",
}
HMAC_ALIASES = {"00112233445566778899AABBCCDDEEFF": "alias/hmac-1", "0123456789ABCDEFFEDCBA9876543210": "alias/hmac-2"}


def _cmac_cases() -> tuple[list[Any], list[Any]]:
    """(N > 0 cases, N == 0 cases) as pytest params: (alias, message hex, expected MAC)."""
    full, empty = [], []
    for (vector_id, group), alias in CMAC_ALIASES.items():
        vector = KAT[vector_id]
        message64 = vector["inputs"]["message64"]
        for n, mac in vector["expected"][group].items():
            if n == "key":
                continue
            param = pytest.param(alias, message64[: 2 * int(n)], mac, id=f"{group}-N{n}")
            (full if int(n) else empty).append(param)
    return full, empty


def _hmac_cases() -> tuple[list[Any], list[Any]]:
    full, empty = [], []
    for i, case in enumerate(KAT["hmac-sha256-iso9797-2"]["expected"]["cases"]):
        alias = HMAC_ALIASES[case["key"]]
        message = case["msg_ascii"].encode().hex().upper()
        label = case["msg_ascii"].replace(" ", "_") or "empty"
        param = pytest.param(alias, message, case["mac"], id=f"{alias.split('/')[1]}-{i}-{label}")
        (full if message else empty).append(param)
    return full, empty


CMAC_CASES, CMAC_EMPTY = _cmac_cases()
HMAC_CASES, HMAC_EMPTY = _hmac_cases()

# NIST SP 800-38A Appendix F: the four plaintext blocks (F.1.1 etc.) are the message64 above.
SP800_38A_PLAIN = KAT["cmac-aes-nist-sp800-38b"]["inputs"]["message64"]
SP800_38A_IV = "000102030405060708090A0B0C0D0E0F"  # F.2.1 / F.2.5 initialization vector
SP800_38A = [
    # F.1.1 ECB-AES128.Encrypt, key 2B7E1516...
    pytest.param("alias/zek-aes128", pb.ECB, "", "3AD77BB40D7A3660A89ECAF32466EF97F5D3D58503B9699DE785895A96FDBAAF"
                 "43B1CD7F598ECE23881B00E3ED0306887B0C785E27E8AD3F8223207104725DD4", id="F.1.1-ECB-AES128"),
    # F.1.5 ECB-AES256.Encrypt, key 603DEB10...
    pytest.param("alias/dek-aes256", pb.ECB, "", "F3EED1BDB5D2A03C064B5A7E3DB181F8591CCB10D410ED26DC5BA74A31362870"
                 "B6ED21B99CA6F4F9F153E7B1BEAFED1D23304B7A39F9F3FF067D8D8F9E24ECC7", id="F.1.5-ECB-AES256"),
    # F.2.1 CBC-AES128.Encrypt
    pytest.param("alias/zek-aes128", pb.CBC, SP800_38A_IV, "7649ABAC8119B246CEE98E9B12E9197D5086CB9B507219EE95DB113A"
                 "917678B273BED6B8E3C1743B7116E69E222295163FF1CAA1681FAC09120ECA307586E1A7", id="F.2.1-CBC-AES128"),
    # F.2.5 CBC-AES256.Encrypt
    pytest.param("alias/dek-aes256", pb.CBC, SP800_38A_IV, "F58C4C04D6E5F1BA779EABFB5F7BFBD69CFC4E967EDB808D679F777B"
                 "C6702C7D39F23369A9D9BACFA530E26304231461B2EB05E2C39BE9FCDA6C19078C6A9D1B", id="F.2.5-CBC-AES256"),
]


def _generate(ops: pb_grpc.OperationsStub, alias: str, message: str, algorithm: int) -> pb.GenerateMacResponse:
    return ops.GenerateMac(pb.GenerateMacRequest(key_identifier=alias, message_data=message,
                                                 generation_attributes=pb.MacAttributes(algorithm=algorithm)),
                           timeout=10)


def _verify(ops: pb_grpc.OperationsStub, alias: str, message: str, mac: str, algorithm: int) -> pb.VerifyMacResponse:
    return ops.VerifyMac(pb.VerifyMacRequest(key_identifier=alias, message_data=message, mac=mac,
                                             verification_attributes=pb.MacAttributes(algorithm=algorithm)),
                         timeout=10)


# ------------------------------------------------------------------------------------- CMAC
@pytest.mark.parametrize(("alias", "message", "expected"), CMAC_CASES)
def test_cmac_known_answer(ops: pb_grpc.OperationsStub, alias: str, message: str, expected: str) -> None:
    reply = _generate(ops, alias, message, pb.CMAC)
    assert reply.mac == expected
    assert reply.key_arn == alias


@pytest.mark.parametrize(("alias", "message", "expected"), CMAC_CASES)
def test_cmac_known_answer_verifies(ops: pb_grpc.OperationsStub, alias: str, message: str, expected: str) -> None:
    assert _verify(ops, alias, message, expected, pb.CMAC).verified
    assert _verify(ops, alias, message, expected.lower(), pb.CMAC).verified  # hex input is case-insensitive


@pytest.mark.parametrize(("alias", "message", "expected"), CMAC_EMPTY)
def test_cmac_empty_message_is_rejected(ops: pb_grpc.OperationsStub, alias: str, message: str, expected: str) -> None:
    """APC's MessageDataType has min length 2 hex characters, so the API (like APC) refuses N=0."""
    assert message == ""
    with pytest.raises(grpc.RpcError) as err:
        _generate(ops, alias, message, pb.CMAC)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message_data" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _verify(ops, alias, message, expected, pb.CMAC)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message_data" in err.value.details()


@pytest.mark.parametrize(("alias", "message", "expected"), CMAC_EMPTY + HMAC_EMPTY)
def test_empty_message_vectors_hold_on_the_token(token_session: Any, alias: str, message: str, expected: str) -> None:
    """The N=0 vectors still check the provisioned keys: computed directly on node-b's token."""
    from pkcs11 import KeyType, Mechanism, ObjectClass

    key = token_session.get_key(label=alias, object_class=ObjectClass.SECRET_KEY)
    mechanism = {KeyType.AES: Mechanism.AES_CMAC, KeyType.DES3: Mechanism.DES3_CMAC}.get(key.key_type,
                                                                                      Mechanism.SHA256_HMAC)
    assert key.sign(b"", mechanism=mechanism).hex().upper() == expected


# ------------------------------------------------------------------------------------- HMAC
@pytest.mark.parametrize(("alias", "message", "expected"), HMAC_CASES)
def test_hmac_sha256_known_answer(ops: pb_grpc.OperationsStub, alias: str, message: str, expected: str) -> None:
    reply = _generate(ops, alias, message, pb.HMAC_SHA256)
    assert reply.mac == expected
    assert _verify(ops, alias, message, expected, pb.HMAC_SHA256).verified


@pytest.mark.parametrize(("alias", "message", "expected"), HMAC_EMPTY)
def test_hmac_empty_message_is_rejected(ops: pb_grpc.OperationsStub, alias: str, message: str, expected: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _generate(ops, alias, message, pb.HMAC_SHA256)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message_data" in err.value.details()


# -------------------------------------------------------------------------------------- KCV
KCV = KAT["kcv-well-known-test-key"]["expected"]["kcv_ansi_x9_24"]


def test_kcv_in_encrypt_response(ops: pb_grpc.OperationsStub) -> None:
    reply = ops.EncryptData(pb.EncryptDataRequest(key_identifier="alias/dek-tdes2", plain_text="0000000000000000",
                                                  encryption_attributes=sym(pb.ECB)), timeout=10)
    assert reply.key_check_value.startswith(KCV)
    # The KCV is by definition the first bytes of TDES-ECB of a zero block.
    assert reply.cipher_text.startswith(KCV)


def test_kcv_in_other_responses(ops: pb_grpc.OperationsStub) -> None:
    reply = ops.DecryptData(pb.DecryptDataRequest(key_identifier="alias/dek-tdes2", cipher_text="0000000000000000",
                                                  decryption_attributes=sym(pb.ECB)), timeout=10)
    assert reply.key_check_value.startswith(KCV)


def test_kcv_in_admin_list_nodes(admin: pb_grpc.AdminStub) -> None:
    nodes = admin.ListNodes(pb.ListNodesRequest(), timeout=10).nodes
    holders = [(n.name, k) for n in nodes for k in n.keys if k.alias == "alias/dek-tdes2"]
    assert len(holders) >= 3  # every primary node holds it
    for name, key in holders:
        assert key.key_check_value.startswith(KCV), name
        assert key.key_type == "DES3"


# ---------------------------------------------------------------- AES, NIST SP 800-38A App. F
@pytest.mark.parametrize(("alias", "mode", "iv", "cipher"), SP800_38A)
def test_sp800_38a_encrypt(ops: pb_grpc.OperationsStub, alias: str, mode: int, iv: str, cipher: str) -> None:
    reply = ops.EncryptData(pb.EncryptDataRequest(key_identifier=alias, plain_text=SP800_38A_PLAIN,
                                                  encryption_attributes=sym(mode, iv)), timeout=10)
    assert reply.cipher_text == cipher
    assert reply.key_arn == alias


@pytest.mark.parametrize(("alias", "mode", "iv", "cipher"), SP800_38A)
def test_sp800_38a_decrypt(ops: pb_grpc.OperationsStub, alias: str, mode: int, iv: str, cipher: str) -> None:
    reply = ops.DecryptData(pb.DecryptDataRequest(key_identifier=alias, cipher_text=cipher.lower(),
                                                  decryption_attributes=sym(mode, iv)), timeout=10)
    assert reply.plain_text == SP800_38A_PLAIN


@pytest.mark.parametrize(("alias", "mode", "iv", "cipher"), SP800_38A)
def test_sp800_38a_first_block(ops: pb_grpc.OperationsStub, alias: str, mode: int, iv: str, cipher: str) -> None:
    """Block 1 alone gives ciphertext block 1 in both modes (CBC chains from the same IV)."""
    reply = ops.EncryptData(pb.EncryptDataRequest(key_identifier=alias, plain_text=SP800_38A_PLAIN[:32],
                                                  encryption_attributes=sym(mode, iv)), timeout=10)
    assert reply.cipher_text == cipher[:32]
