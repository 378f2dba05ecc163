"""Crypto-aware comparison of a primary's and a candidate's results for the same operation. Pure.

Three classes of output:
- deterministic (ECB/CBC with an explicit IV, CMAC/HMAC/ISO 9797 MACs, CVV family, ARPC, ISO-0 PIN
  blocks, re-encryption, DUKPT data, RSA PKCS#1 v1.5 signatures): the result fields, byte for byte;
- verifications (VerifyMac, VerifyCardValidationData, ARQC, Verify): the verdict and reason;
- randomized (PIN blocks in ISO 9564 formats 1, 3 and 4, RSA-PSS and ECDSA signatures, random bytes):
  the API offers no cross-verification that does not cost the primary another call, so they are
  `not_comparable`, never discrepancies.
A differing key check value is key drift, decided before the call (shadower.py): a region holding
another key under the alias is excluded from it like any node whose KCV disagrees.

A comparison returns which field differed and both lengths, never a value.
"""

from __future__ import annotations

from typing import Any

from hsmlb.ops import VERIFICATION_FAILED, Operation, OpKind

MATCH = "match"
DISCREPANCY = "discrepancy"
NOT_COMPARABLE = "not_comparable"
KEY_DRIFT = "key_drift"

Verdict = tuple[str, str, int, int]  # (outcome, field that differed, primary length, candidate length)
_MATCH: Verdict = (MATCH, "", 0, 0)
_NOT_COMPARABLE: Verdict = (NOT_COMPARABLE, "", 0, 0)
_PAYMENT_FIELD = {OpKind.ENCRYPT: "CipherText", OpKind.DECRYPT: "PlainText", OpKind.GENERATE_MAC: "Mac",
                  OpKind.REENCRYPT: "CipherText", OpKind.GENERATE_CARD_VALIDATION: "ValidationData",
                  OpKind.TRANSLATE_PIN: "PinBlock"}
_NATIVE_FIELD = {OpKind.ENCRYPT: "cipher_text", OpKind.DECRYPT: "plain_text", OpKind.GENERATE_MAC: "mac",
                 OpKind.SIGN: "signature"}
_DETERMINISTIC_SIGNING = frozenset({"RSASSA_PKCS1_V1_5_SHA_256"})


def _same(field: str, a: Any, b: Any) -> Verdict:
    equal = a.upper() == b.upper() if isinstance(a, str) and isinstance(b, str) else a == b
    if equal:
        return _MATCH
    return DISCREPANCY, field, _length(a), _length(b)


def _length(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value) // 2  # hex
    return 0


def comparable(op: Operation) -> bool:
    """False for randomized outputs: shadowing them would only spend the candidate's quota."""
    kind = op.kind
    if kind is OpKind.RANDOM:
        return False
    if kind is OpKind.SIGN:
        return op.args[0] in _DETERMINISTIC_SIGNING
    if kind is OpKind.TRANSLATE_PIN:
        outgoing = op.args[1].get("OutgoingTranslationAttributes") or {}
        return "IsoFormat0" in outgoing
    return True


def compare(op: Operation, primary: Any, candidate: Any) -> Verdict:
    if not comparable(op):
        return _NOT_COMPARABLE
    kind = op.kind
    if op.apc:
        if not isinstance(primary, dict) or not isinstance(candidate, dict):
            return DISCREPANCY, "result", 0, 0
        verdict = _same("reason", primary.get(VERIFICATION_FAILED, ""), candidate.get(VERIFICATION_FAILED, ""))
        if verdict[0] != MATCH:
            return verdict
        if kind is OpKind.VERIFY_ARQC:
            return _same("AuthResponseValue", primary.get("AuthResponseValue", ""),
                         candidate.get("AuthResponseValue", ""))
        field = _PAYMENT_FIELD.get(kind)
        return _same(field, primary.get(field), candidate.get(field)) if field else _MATCH
    if kind is OpKind.VERIFY_MAC:
        expected = op.args[2]
        return _same("verified", bytes(primary[: len(expected)]) == expected,
                     bytes(candidate[: len(expected)]) == expected)
    if kind is OpKind.VERIFY:
        return _same("verified", bool(primary), bool(candidate))
    if kind is OpKind.GENERATE_MAC:
        length = op.args[2]
        return _same("mac", bytes(primary[:length]), bytes(candidate[:length]))
    field = _NATIVE_FIELD.get(kind, "result")
    return _same(field, bytes(primary), bytes(candidate))
