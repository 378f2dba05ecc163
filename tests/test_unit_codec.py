"""Request validation in the API codec: precise field-naming errors, never the offending value."""

from __future__ import annotations

import pytest

from hsmlb.api import codec
from hsmlb.errors import InvalidArgument
from hsmlb.ops import CostClass, OpKind
from hsmlb.v1 import hsmlb_pb2 as pb
from tests.conftest import sym

PAN = "4111111111111111"


def test_decode_encrypt_cbc():
    op = codec.decode_encrypt(pb.EncryptDataRequest(
        key_identifier="alias/k", plain_text="00" * 16, encryption_attributes=sym(pb.CBC, "11" * 16)))
    assert op.kind is OpKind.ENCRYPT and op.key_alias == "alias/k"
    assert op.args == ("CBC", b"\x11" * 16, b"\0" * 16)


@pytest.mark.parametrize(("request_", "message"), [
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text=PAN + "ZZ", encryption_attributes=sym(pb.ECB)),
     "plain_text: must be an even number of hex digits"),
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text="00 11" * 4, encryption_attributes=sym(pb.ECB)),
     "plain_text: must be an even number of hex digits"),
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text="00" * 12, encryption_attributes=sym(pb.ECB)),
     "multiple of 8 bytes"),
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text="00" * 16, encryption_attributes=sym(pb.CBC)),
     "initialization_vector: must be at least 8 bytes"),
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text="00" * 16,
                           encryption_attributes=sym(pb.ECB, "00" * 16)),
     "not allowed with ECB"),
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text="00" * 16, encryption_attributes=sym(pb.CFB8)),
     "CFB8 is not supported"),
    (pb.EncryptDataRequest(key_identifier="alias/k", plain_text="00" * 16),
     "symmetric attributes are required"),
    (pb.EncryptDataRequest(key_identifier="", plain_text="00" * 16, encryption_attributes=sym(pb.ECB)),
     "key_identifier: required"),
])
def test_decode_encrypt_rejects(request_: pb.EncryptDataRequest, message: str):
    with pytest.raises(InvalidArgument, match=message) as info:
        codec.decode_encrypt(request_)
    assert PAN not in info.value.message


def test_mac_length_bounds_and_verify_mac_length_match():
    attrs = pb.MacAttributes(algorithm=pb.CMAC)
    with pytest.raises(InvalidArgument, match="mac_length: must be 4-16"):
        codec.decode_generate_mac(pb.GenerateMacRequest(key_identifier="alias/k", message_data="00",
                                                        generation_attributes=attrs, mac_length=17))
    with pytest.raises(InvalidArgument, match="does not match mac_length"):
        codec.decode_verify_mac(pb.VerifyMacRequest(key_identifier="alias/k", message_data="00", mac="00" * 8,
                                                    verification_attributes=attrs, mac_length=4))
    with pytest.raises(InvalidArgument, match="ISO9797_ALGORITHM3 is not supported"):
        codec.decode_generate_mac(pb.GenerateMacRequest(
            key_identifier="alias/k", message_data="00",
            generation_attributes=pb.MacAttributes(algorithm=pb.ISO9797_ALGORITHM3)))


def test_sign_cost_class_follows_algorithm():
    rsa = codec.decode_sign(pb.SignRequest(key_identifier="alias/k", message="00",
                                           signing_algorithm=pb.RSASSA_PSS_SHA_256))
    ec = codec.decode_sign(pb.SignRequest(key_identifier="alias/k", message="00", signing_algorithm=pb.ECDSA_SHA_256))
    assert (rsa.cost, ec.cost) == (CostClass.RSA, CostClass.ECDSA)
    with pytest.raises(InvalidArgument, match="signing_algorithm"):
        codec.decode_sign(pb.SignRequest(key_identifier="alias/k", message="00"))


@pytest.mark.parametrize("count", [0, -1, 1025])
def test_random_bounds(count: int):
    with pytest.raises(InvalidArgument, match="number_of_bytes: must be 1-1024"):
        codec.decode_random(pb.GenerateRandomRequest(number_of_bytes=count))
