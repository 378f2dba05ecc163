"""The daemon answers a known-answer encryption (NIST SP 800-38A F.1.1, AES-128 ECB)."""

from hsmlb.v1 import hsmlb_pb2 as pb
from tests.conftest import sym


def test_aes128_ecb_nist_sp800_38a_f11(ops):
    reply = ops.EncryptData(pb.EncryptDataRequest(
        key_identifier="alias/zek-aes128", plain_text="6BC1BEE22E409F96E93D7E117393172A",
        encryption_attributes=sym(pb.ECB)), timeout=10)
    assert reply.cipher_text == "3AD77BB40D7A3660A89ECAF32466EF97"
    assert reply.key_check_value == "7DF76B"
