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
    REENCRYPT = "reencrypt"
    GENERATE_CARD_VALIDATION = "generate_card_validation"
    VERIFY_CARD_VALIDATION = "verify_card_validation"
    TRANSLATE_PIN = "translate_pin"
    VERIFY_ARQC = "verify_arqc"


class Capability(enum.StrEnum):
    """What a node must be able to do for an op; the router sends a node only what it advertises.

    The native ones are PKCS#11 primitives on a key handle. The payment ones need derived keys or
    clear PIN blocks in the computing host's memory, which a PKCS#11 node offers only with
    `allow_host_side_derivation` (test clusters only: not PCI PIN compliant), and APC offers natively.
    """

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    GENERATE_MAC = "generate_mac"
    VERIFY_MAC = "verify_mac"
    SIGN = "sign"
    VERIFY = "verify"
    RANDOM = "random"
    REENCRYPT = "reencrypt"
    CARD_VALIDATION = "card_validation"
    PIN_TRANSLATION = "pin_translation"
    EMV_CRYPTOGRAM = "emv_cryptogram"
    ISO9797_MAC = "iso9797_mac"
    DUKPT = "dukpt"


NATIVE_CAPABILITIES = frozenset({Capability.ENCRYPT, Capability.DECRYPT, Capability.GENERATE_MAC,
                                 Capability.VERIFY_MAC, Capability.SIGN, Capability.VERIFY, Capability.RANDOM,
                                 Capability.REENCRYPT})
HOST_SIDE_CAPABILITIES = frozenset({Capability.CARD_VALIDATION, Capability.PIN_TRANSLATION,
                                    Capability.EMV_CRYPTOGRAM, Capability.ISO9797_MAC, Capability.DUKPT})


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
    # Payment ops: the engine (or APC) checks the key's TR-31 usage, which token attributes cannot express.
    OpKind.REENCRYPT: OpTraits(None, idempotent=True),
    OpKind.GENERATE_CARD_VALIDATION: OpTraits(None, idempotent=True),
    OpKind.VERIFY_CARD_VALIDATION: OpTraits(None, idempotent=True),
    OpKind.TRANSLATE_PIN: OpTraits(None, idempotent=True),  # random fill differs, the PIN does not
    OpKind.VERIFY_ARQC: OpTraits(None, idempotent=True),
}

# Key types (KeyInfo.key_type) each operation can use. A kind absent here is not checked.
_MAC_TYPES = frozenset({"AES", "DES3", "GENERIC_SECRET", "SHA256_HMAC"})  # CMAC; HMAC on generic secrets
OP_KEY_TYPES: dict[OpKind, frozenset[str]] = {
    OpKind.ENCRYPT: frozenset({"AES", "DES3"}),
    OpKind.DECRYPT: frozenset({"AES", "DES3"}),
    OpKind.GENERATE_MAC: _MAC_TYPES,
    OpKind.VERIFY_MAC: _MAC_TYPES,
    OpKind.SIGN: frozenset({"RSA", "EC"}),
    OpKind.VERIFY: frozenset({"RSA", "EC"}),
}


# The TR-31 usage a native op needs, where a node records its keys' usage (as APC does and as
# hsmlb's provisioning does in CKA_ID): a PIN key must never decrypt data, a CVK never encrypt.
DATA_KEY = "TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY"
NATIVE_KEY_USAGE: dict[tuple[OpKind, str], frozenset[str]] = {
    (OpKind.ENCRYPT, ""): frozenset({DATA_KEY}),
    (OpKind.DECRYPT, ""): frozenset({DATA_KEY}),
    (OpKind.GENERATE_MAC, "CMAC"): frozenset({"TR31_M6_ISO_9797_5_CMAC_KEY"}),
    (OpKind.VERIFY_MAC, "CMAC"): frozenset({"TR31_M6_ISO_9797_5_CMAC_KEY"}),
    (OpKind.GENERATE_MAC, "HMAC"): frozenset({"TR31_M7_HMAC_KEY"}),
    (OpKind.VERIFY_MAC, "HMAC"): frozenset({"TR31_M7_HMAC_KEY"}),
    (OpKind.SIGN, ""): frozenset({"TR31_S0_ASYMMETRIC_KEY_FOR_DIGITAL_SIGNATURE"}),
    (OpKind.VERIFY, ""): frozenset({"TR31_S0_ASYMMETRIC_KEY_FOR_DIGITAL_SIGNATURE"}),
}


@dataclass(slots=True)
class Operation:
    """One decoded, validated request.

    Native ops carry kind-specific `args` of bytes. Payment ops carry `args = (apc_operation, params)`:
    the botocore payment-cryptography-data input dict, which every backend kind understands.
    """

    kind: OpKind
    key_alias: str | None  # the key whose ARN and KCV the response reports (outgoing, for translations)
    args: tuple[Any, ...]
    deadline: float | None = None  # time.monotonic() seconds
    cost: CostClass = CostClass.SYMMETRIC
    capability: str = ""  # empty: the kind's own native capability
    other_keys: tuple[str, ...] = ()  # further keys the serving node must hold (incoming, for translations)
    node: str = ""  # the node of the latest attempt, set by the router (for logs, audit, spans)
    attempts: int = 0  # attempts started so far, set by the router
    trace: Any = None  # a sampled op's span hook (telemetry/tracing.py OpTrace): the router reports attempts to it

    @property
    def needs(self) -> str:
        return self.capability or self.kind.value

    @property
    def apc(self) -> bool:
        """True when args are (apc_operation, params)."""
        return bool(self.capability) or self.kind in PAYMENT_KINDS


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as a node's token reports it (discovered, not configured)."""

    alias: str
    label: str
    key_type: str  # AES, DES3, GENERIC_SECRET, RSA, EC
    kcv: str  # hex, symmetric keys only
    usages: frozenset[str]
    bits: int = 0
    key_usage: str = ""  # APC/TR-31 usage (TR31_C0_...), where the node records it
    algorithm: str = ""  # APC key algorithm (TDES_2KEY, AES_128, HMAC_SHA256, ...), where the node records it


PAYMENT_KINDS = frozenset({OpKind.REENCRYPT, OpKind.GENERATE_CARD_VALIDATION, OpKind.VERIFY_CARD_VALIDATION,
                           OpKind.TRANSLATE_PIN, OpKind.VERIFY_ARQC})

# The APC-shaped contract between the codec and every backend kind.
VERIFICATION_FAILED = "VerificationFailedReason"  # result key a backend sets when a verification fails
KEY_MEMBERS = ("KeyIdentifier", "IncomingKeyIdentifier", "OutgoingKeyIdentifier")


def map_key_identifiers(params: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """The params with each key member's alias replaced by the node's own name for it (a token
    label, a region's key ARN); the caller's dict is copied only when something changes."""
    out = params
    for member in KEY_MEMBERS:
        value = params.get(member)
        if value in mapping and mapping[value] != value:
            if out is params:
                out = dict(params)
            out[member] = mapping[value]
    return out
