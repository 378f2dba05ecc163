"""Operation values: what the API hands the router, independent of wire format and backend.

One table says, per operation kind, which key usage it needs, its cost class and whether a
retry on another node is safe.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class OpKind(enum.StrEnum):
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    GENERATE_MAC = "generate_mac"
    VERIFY_MAC = "verify_mac"
    SIGN = "sign"
    VERIFY = "verify"
    RANDOM = "random"


class CostClass(enum.StrEnum):
    SYMMETRIC = "symmetric"
    ECDSA = "ecdsa"
    RSA = "rsa"


@dataclass(frozen=True, slots=True)
class OpTraits:
    usage: str | None  # token attribute the key must carry: encrypt, decrypt, sign, verify
    idempotent: bool


OP_TRAITS: dict[OpKind, OpTraits] = {
    OpKind.ENCRYPT: OpTraits("encrypt", idempotent=True),
    OpKind.DECRYPT: OpTraits("decrypt", idempotent=True),
    OpKind.GENERATE_MAC: OpTraits("sign", idempotent=True),
    OpKind.VERIFY_MAC: OpTraits("sign", idempotent=True),
    OpKind.SIGN: OpTraits("sign", idempotent=True),
    OpKind.VERIFY: OpTraits("verify", idempotent=True),
    OpKind.RANDOM: OpTraits(None, idempotent=True),
}


@dataclass(slots=True)
class Operation:
    """One decoded, validated request. `args` is kind-specific and holds bytes, never hex."""

    kind: OpKind
    key_alias: str | None
    args: tuple[Any, ...]
    deadline: float | None = None  # time.monotonic() seconds
    cost: CostClass = CostClass.SYMMETRIC


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as a node's token reports it (discovered, not configured)."""

    alias: str
    label: str
    key_type: str  # AES, DES3, GENERIC_SECRET, RSA, EC
    kcv: str  # hex, symmetric keys only
    usages: frozenset[str]
    bits: int = 0
