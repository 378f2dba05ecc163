"""The codec table: stream oneof field / unary method -> (decoder, encoder)."""

from __future__ import annotations

from hsmlb.api.codec import (
    Decoder,
    Encoder,
    decode_random,
    decode_sign,
    decode_verify,
    encode_random,
    encode_sign,
    encode_verify,
)
from hsmlb.api.payment_codec import (
    decode_decrypt_any,
    decode_encrypt_any,
    decode_generate_card_validation,
    decode_generate_mac_any,
    decode_reencrypt,
    decode_translate_pin,
    decode_verify_arqc,
    decode_verify_card_validation,
    decode_verify_mac_any,
    encode_decrypt_any,
    encode_encrypt_any,
    encode_generate_card_validation,
    encode_generate_mac_any,
    encode_reencrypt,
    encode_translate_pin,
    encode_verify_arqc,
    encode_verify_card_validation,
    encode_verify_mac_any,
)

__all__ = ["CODECS", "Decoder", "Encoder"]

CODECS: dict[str, tuple[Decoder, Encoder]] = {
    "encrypt_data": (decode_encrypt_any, encode_encrypt_any),
    "decrypt_data": (decode_decrypt_any, encode_decrypt_any),
    "generate_mac": (decode_generate_mac_any, encode_generate_mac_any),
    "verify_mac": (decode_verify_mac_any, encode_verify_mac_any),
    "sign": (decode_sign, encode_sign),
    "verify": (decode_verify, encode_verify),
    "generate_random": (decode_random, encode_random),
    "re_encrypt_data": (decode_reencrypt, encode_reencrypt),
    "generate_card_validation_data": (decode_generate_card_validation, encode_generate_card_validation),
    "verify_card_validation_data": (decode_verify_card_validation, encode_verify_card_validation),
    "translate_pin_data": (decode_translate_pin, encode_translate_pin),
    "verify_auth_request_cryptogram": (decode_verify_arqc, encode_verify_arqc),
}
