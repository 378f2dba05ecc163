"""Acceptance: each op through the daemon returns the same bytes as the same op done directly on a token.

`token_session` is a python-pkcs11 session on node-b, which holds the same keys as every primary
node. Symmetric results are also checked against the `cryptography` library (or hmac) computing
with the clear test material from hsmlb/dev/dev-keys.yaml: a third, independent opinion.
Inputs are random but seeded (random.Random(seed)), so a failure reproduces.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import decode_ecdsa_signature, encode_ec_public_key, encode_ecdsa_signature

from hsmlb.keys import load_keys
from hsmlb.v1 import hsmlb_pb2 as pb
from hsmlb.v1 import hsmlb_pb2_grpc as pb_grpc
from tests.conftest import Cluster, sym

ITERATIONS = 6
SEEDS = [pytest.param(seed, id=f"seed{seed}") for seed in (1, 2)]
CIPHER_KEYS = [("alias/zek-aes128", 16), ("alias/dek-aes256", 16), ("alias/dek-tdes2", 8), ("alias/dek-tdes3", 8)]
CIPHER_CASES = [pytest.param(alias, mode, block, id=f"{alias.split('/')[1]}-{pb.EncryptionMode.Name(mode)}")
                for alias, block in CIPHER_KEYS for mode in (pb.ECB, pb.CBC)]
CMAC_KEYS = ["alias/cmac-aes128", "alias/cmac-aes192", "alias/cmac-aes256", "alias/cmac-tdes2", "alias/cmac-tdes3"]
HMACS = {pb.HMAC_SHA224: (Mechanism.SHA224_HMAC, hashlib.sha224),
         pb.HMAC_SHA256: (Mechanism.SHA256_HMAC, hashlib.sha256),
         pb.HMAC_SHA384: (Mechanism.SHA384_HMAC, hashlib.sha384),
         pb.HMAC_SHA512: (Mechanism.SHA512_HMAC, hashlib.sha512)}
# The dev cluster zero-pads HMAC keys to 64 bytes (hsmlb.keys.token_material): SoftHSM2 wants at least
# the digest length, and the MACs must equal those of the 16-byte keys in the keys file (the oracle).
# An HMAC key is bound to one hash (as in APC: its algorithm is HMAC_SHA256, HMAC_SHA512...).
HMAC_KEYS = {pb.HMAC_SHA224: ("alias/hmac-sha224",), pb.HMAC_SHA256: ("alias/hmac-1", "alias/hmac-2"),
             pb.HMAC_SHA384: ("alias/hmac-sha384",), pb.HMAC_SHA512: ("alias/hmac-sha512",)}
HMAC_CASES = [pytest.param(alias, algorithm, id=f"{alias.split('/')[1]}-{pb.MacAlgorithm.Name(algorithm)}")
              for algorithm, aliases in HMAC_KEYS.items() for alias in aliases]
PSS_SHA256 = (Mechanism.SHA256, MGF.SHA256, 32)
UPPER_HEX = re.compile(r"[0-9A-F]*")


@pytest.fixture(scope="module")
def material(cluster: Cluster) -> dict[str, bytes]:
    """alias -> clear test key material from the keys file (symmetric keys only)."""
    return {e.alias: m for e in load_keys(cluster.keys_file) if (m := e.material()) is not None}


def _secret(session: Any, alias: str) -> Any:
    return session.get_key(label=alias, object_class=ObjectClass.SECRET_KEY)


def _hex(data: bytes, rng: random.Random) -> str:
    """Send hex in either case: the API accepts both."""
    return data.hex().upper() if rng.random() < 0.5 else data.hex()


def _oracle_cipher(key: bytes, key_type: KeyType, mode: int, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    if key_type == KeyType.AES:
        algorithm: Any = algorithms.AES(key)
    else:
        algorithm = TripleDES(key + key[:8] if len(key) == 16 else key)
    cipher = Cipher(algorithm, modes.CBC(iv) if mode == pb.CBC else modes.ECB())
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _cipher_mechanism(key: Any, mode: int) -> Mechanism:
    if key.key_type == KeyType.AES:
        return Mechanism.AES_CBC if mode == pb.CBC else Mechanism.AES_ECB
    return Mechanism.DES3_CBC if mode == pb.CBC else Mechanism.DES3_ECB


# --------------------------------------------------------------------------------- ciphers
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("alias", "mode", "block"), CIPHER_CASES)
@pytest.mark.parametrize("encrypt", [pytest.param(True, id="encrypt"), pytest.param(False, id="decrypt")])
def test_cipher_matches_token(ops: pb_grpc.OperationsStub, token_session: Any, material: dict[str, bytes],
                              encrypt: bool, alias: str, mode: int, block: int, seed: int) -> None:
    direction = "encrypt" if encrypt else "decrypt"
    rng = random.Random(f"{direction}-{alias}-{mode}-{seed}")
    key = _secret(token_session, alias)
    for _ in range(ITERATIONS):
        data = rng.randbytes(block * rng.randint(1, 16))
        iv = rng.randbytes(block) if mode == pb.CBC else b""
        attrs = sym(mode, _hex(iv, rng))
        if encrypt:
            result = ops.EncryptData(pb.EncryptDataRequest(key_identifier=alias, plain_text=_hex(data, rng),
                                                           encryption_attributes=attrs), timeout=10).cipher_text
        else:
            result = ops.DecryptData(pb.DecryptDataRequest(key_identifier=alias, cipher_text=_hex(data, rng),
                                                           decryption_attributes=attrs), timeout=10).plain_text
        direct = getattr(key, direction)(data, mechanism=_cipher_mechanism(key, mode), mechanism_param=iv or None)
        assert result == direct.hex().upper()
        assert bytes.fromhex(result) == _oracle_cipher(material[alias], key.key_type, mode, iv, data, encrypt)


def test_stream_results_match_token(ops: pb_grpc.OperationsStub, token_session: Any) -> None:
    """The bidi Stream path returns the same bytes as the token, matched by request_id."""
    rng = random.Random("stream")
    key = _secret(token_session, "alias/dek-aes256")
    inputs = {i: (rng.randbytes(16 * rng.randint(1, 8)), rng.randbytes(16)) for i in range(1, 41)}
    requests = [pb.StreamRequest(request_id=i, encrypt_data=pb.EncryptDataRequest(
        key_identifier="alias/dek-aes256", plain_text=data.hex(), encryption_attributes=sym(pb.CBC, iv.hex())))
        for i, (data, iv) in inputs.items()]
    replies = {r.request_id: r for r in ops.Stream(iter(requests), timeout=30)}
    assert set(replies) == set(inputs)
    for i, (data, iv) in inputs.items():
        direct = key.encrypt(data, mechanism=Mechanism.AES_CBC, mechanism_param=iv)
        assert replies[i].WhichOneof("result") == "encrypt_data", replies[i]
        assert replies[i].encrypt_data.cipher_text == direct.hex().upper()


# -------------------------------------------------------------------------------------- MACs
def _mac(ops: pb_grpc.OperationsStub, alias: str, data: str, algorithm: int, length: int = 0) -> str:
    return ops.GenerateMac(pb.GenerateMacRequest(key_identifier=alias, message_data=data, mac_length=length,
                                                 generation_attributes=pb.MacAttributes(algorithm=algorithm)),
                           timeout=10).mac


def _verify_mac(ops: pb_grpc.OperationsStub, alias: str, data: str, mac: str, algorithm: int,
                length: int = 0) -> pb.VerifyMacResponse:
    return ops.VerifyMac(pb.VerifyMacRequest(key_identifier=alias, message_data=data, mac=mac, mac_length=length,
                                             verification_attributes=pb.MacAttributes(algorithm=algorithm)),
                         timeout=10)


def _flip(hex_text: str, rng: random.Random) -> str:
    data = bytearray(bytes.fromhex(hex_text))
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data.hex().upper()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alias", CMAC_KEYS)
def test_cmac_matches_token(ops: pb_grpc.OperationsStub, token_session: Any, material: dict[str, bytes],
                            alias: str, seed: int) -> None:
    rng = random.Random(f"cmac-{alias}-{seed}")
    key = _secret(token_session, alias)
    mechanism = Mechanism.AES_CMAC if key.key_type == KeyType.AES else Mechanism.DES3_CMAC
    clear = material[alias]
    algorithm = algorithms.AES(clear) if key.key_type == KeyType.AES else TripleDES(
        clear + clear[:8] if len(clear) == 16 else clear)
    for _ in range(ITERATIONS):
        data = rng.randbytes(rng.randint(1, 200))
        direct = key.sign(data, mechanism=mechanism)
        oracle = cmac.CMAC(algorithm)
        oracle.update(data)
        assert _mac(ops, alias, _hex(data, rng), pb.CMAC) == direct.hex().upper() == oracle.finalize().hex().upper()
        length = rng.randint(4, len(direct))
        assert _mac(ops, alias, data.hex(), pb.CMAC, length) == direct[:length].hex().upper()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("alias", "algorithm"), HMAC_CASES)
def test_hmac_matches_token(ops: pb_grpc.OperationsStub, token_session: Any, material: dict[str, bytes],
                            alias: str, algorithm: int, seed: int) -> None:
    rng = random.Random(f"hmac-{alias}-{algorithm}-{seed}")
    key = _secret(token_session, alias)
    mechanism, digest = HMACS[algorithm]
    for _ in range(ITERATIONS):
        data = rng.randbytes(rng.randint(1, 300))
        by_daemon = _mac(ops, alias, _hex(data, rng), algorithm)
        direct = key.sign(data, mechanism=mechanism)
        oracle = hmac.new(material[alias], data, digest).digest()
        assert by_daemon == direct.hex().upper() == oracle.hex().upper()


@pytest.mark.parametrize(("alias", "algorithm"), [("alias/cmac-aes128", pb.CMAC), ("alias/cmac-tdes3", pb.CMAC),
                                                  ("alias/hmac-1", pb.HMAC_SHA256)])
def test_verify_mac(ops: pb_grpc.OperationsStub, token_session: Any, alias: str, algorithm: int) -> None:
    rng = random.Random(f"verify-mac-{alias}")
    key = _secret(token_session, alias)
    mechanism = {KeyType.AES: Mechanism.AES_CMAC, KeyType.DES3: Mechanism.DES3_CMAC}.get(key.key_type,
                                                                                      Mechanism.SHA256_HMAC)
    data = rng.randbytes(77)
    good = key.sign(data, mechanism=mechanism).hex().upper()
    ok = _verify_mac(ops, alias, data.hex(), good, algorithm)
    assert (ok.verified, ok.reason, ok.key_arn) == (True, "", alias)
    bad = _verify_mac(ops, alias, data.hex(), _flip(good, rng), algorithm)
    assert (bad.verified, bad.reason) == (False, "INVALID_MAC")
    other = _verify_mac(ops, alias, _flip(data.hex(), rng), good, algorithm)
    assert (other.verified, other.reason) == (False, "INVALID_MAC")
    # truncated to 8 bytes: generated, then verified with and without an explicit mac_length
    short = _mac(ops, alias, data.hex(), algorithm, 8)
    assert short == good[:16]
    assert _verify_mac(ops, alias, data.hex(), short, algorithm, 8).verified
    assert _verify_mac(ops, alias, data.hex(), short.lower(), algorithm).verified
    wrong = _verify_mac(ops, alias, data.hex(), _flip(short, rng), algorithm, 8)
    assert (wrong.verified, wrong.reason) == (False, "INVALID_MAC")


# -------------------------------------------------------------------------------- signatures
def _public(token_session: Any, alias: str) -> tuple[Any, Any]:
    """(token public key, the same key as a `cryptography` object exported from the token)."""
    pub = token_session.get_key(label=alias, object_class=ObjectClass.PUBLIC_KEY)
    if pub.key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                                       int.from_bytes(pub[Attribute.MODULUS], "big"))
        return pub, numbers.public_key()
    return pub, serialization.load_der_public_key(encode_ec_public_key(pub))


def _crypto_verify(public: Any, algorithm: int, signature: bytes, message: bytes) -> None:
    """Raises InvalidSignature unless `cryptography` accepts the signature."""
    if algorithm == pb.ECDSA_SHA_256:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif algorithm == pb.RSASSA_PSS_SHA_256:
        public.verify(signature, message, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    else:
        public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def _token_verify(pub: Any, algorithm: int, signature: bytes, message: bytes) -> bool:
    if algorithm == pb.ECDSA_SHA_256:
        raw = decode_ecdsa_signature(signature)
        return bool(pub.verify(hashlib.sha256(message).digest(), raw, mechanism=Mechanism.ECDSA))
    if algorithm == pb.RSASSA_PSS_SHA_256:
        return bool(pub.verify(message, signature, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                               mechanism_param=PSS_SHA256))
    return bool(pub.verify(message, signature, mechanism=Mechanism.SHA256_RSA_PKCS))


def _token_sign(token_session: Any, alias: str, algorithm: int, message: bytes) -> bytes:
    priv = token_session.get_key(label=alias, object_class=ObjectClass.PRIVATE_KEY)
    if algorithm == pb.ECDSA_SHA_256:
        return encode_ecdsa_signature(priv.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA))
    if algorithm == pb.RSASSA_PSS_SHA_256:
        return priv.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=PSS_SHA256)
    return priv.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS)


def _daemon_verify(ops: pb_grpc.OperationsStub, alias: str, algorithm: int, message: bytes,
                   signature: str) -> pb.VerifyResponse:
    return ops.Verify(pb.VerifyRequest(key_identifier=alias, message=message.hex(), signature=signature,
                                       signing_algorithm=algorithm), timeout=30)


SIGNING_CASES = [pytest.param("alias/sign-rsa", pb.RSASSA_PKCS1_V1_5_SHA_256, id="rsa-pkcs1v15"),
                 pytest.param("alias/sign-rsa", pb.RSASSA_PSS_SHA_256, id="rsa-pss"),
                 pytest.param("alias/sign-ec", pb.ECDSA_SHA_256, id="ecdsa-p256")]


@pytest.mark.parametrize(("alias", "algorithm"), SIGNING_CASES)
def test_sign_verifies_with_token_and_cryptography(ops: pb_grpc.OperationsStub, token_session: Any, alias: str,
                                                   algorithm: int) -> None:
    rng = random.Random(f"sign-{alias}-{algorithm}")
    pub, public = _public(token_session, alias)
    for _ in range(3):
        message = rng.randbytes(rng.randint(1, 500))
        reply = ops.Sign(pb.SignRequest(key_identifier=alias, message=_hex(message, rng), signing_algorithm=algorithm),
                         timeout=30)
        assert (reply.key_arn, reply.signing_algorithm) == (alias, algorithm)
        assert UPPER_HEX.fullmatch(reply.signature)
        signature = bytes.fromhex(reply.signature)
        assert _token_verify(pub, algorithm, signature, message)
        _crypto_verify(public, algorithm, signature, message)
        with pytest.raises(InvalidSignature):
            _crypto_verify(public, algorithm, signature, message + b"\0")
        if algorithm == pb.RSASSA_PKCS1_V1_5_SHA_256:  # deterministic: the very same bytes as the token's
            assert signature == _token_sign(token_session, alias, algorithm, message)


@pytest.mark.parametrize(("alias", "algorithm"), SIGNING_CASES[1:])
def test_randomized_signatures_differ(ops: pb_grpc.OperationsStub, alias: str, algorithm: int) -> None:
    request = pb.SignRequest(key_identifier=alias, message="00112233", signing_algorithm=algorithm)
    assert ops.Sign(request, timeout=30).signature != ops.Sign(request, timeout=30).signature


@pytest.mark.parametrize(("alias", "algorithm"), SIGNING_CASES)
def test_daemon_verify(ops: pb_grpc.OperationsStub, token_session: Any, alias: str, algorithm: int) -> None:
    rng = random.Random(f"verify-{alias}-{algorithm}")
    message = rng.randbytes(100)
    by_daemon = ops.Sign(pb.SignRequest(key_identifier=alias, message=message.hex(), signing_algorithm=algorithm),
                         timeout=30).signature
    by_token = _token_sign(token_session, alias, algorithm, message).hex().upper()
    for signature in (by_daemon, by_token):
        good = _daemon_verify(ops, alias, algorithm, message, signature)
        assert (good.verified, good.reason, good.key_arn) == (True, "", alias)
        # ECDSA: flip a bit in the last byte, inside s, so the DER stays well-formed
        tampered = signature[:-2] + f"{int(signature[-2:], 16) ^ 0x01:02X}"
        bad = _daemon_verify(ops, alias, algorithm, message, tampered)
        assert (bad.verified, bad.reason) == (False, "INVALID_SIGNATURE")
        other = _daemon_verify(ops, alias, algorithm, message + b"!", signature)
        assert (other.verified, other.reason) == (False, "INVALID_SIGNATURE")


# ------------------------------------------------------------------------------------ random
@pytest.mark.parametrize("count", [1, 16, 255, 1024])
def test_generate_random_length_and_format(ops: pb_grpc.OperationsStub, count: int) -> None:
    reply = ops.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=count), timeout=10)
    assert len(reply.random) == 2 * count
    assert UPPER_HEX.fullmatch(reply.random)


def test_generate_random_calls_differ(ops: pb_grpc.OperationsStub) -> None:
    draws = {ops.GenerateRandom(pb.GenerateRandomRequest(number_of_bytes=32), timeout=10).random for _ in range(5)}
    assert len(draws) == 5
