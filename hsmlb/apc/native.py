"""What the daemon's own requests to a region look like: native ops and the health canary as APC calls.

Why a module of its own: these are pure mappings from an Operation or a key inventory to an APC
operation name and input, with no I/O, so the backend (hsmlb/backends/apc.py) keeps only the
transport, the error mapping and the lifecycle.
"""

from __future__ import annotations

from typing import Any

from hsmlb.errors import InvalidArgument
from hsmlb.ops import DATA_KEY, KeyInfo, Operation, OpKind

# A harmless request per canary kind: 16 zero bytes (two TDES blocks, one AES block), one byte to MAC.
_ZERO_BLOCKS = "00" * 16


def native_request(op: Operation, arn: str) -> tuple[str, dict[str, Any], str]:
    """(APC operation, input, output member holding the hex result) for a native op's tuple args."""
    if op.kind in (OpKind.ENCRYPT, OpKind.DECRYPT):
        mode, iv, data = op.args
        symmetric: dict[str, Any] = {"Mode": mode}
        if iv:
            symmetric["InitializationVector"] = iv.hex().upper()
        if op.kind is OpKind.ENCRYPT:
            return "EncryptData", {"KeyIdentifier": arn, "PlainText": data.hex().upper(),
                                   "EncryptionAttributes": {"Symmetric": symmetric}}, "CipherText"
        return "DecryptData", {"KeyIdentifier": arn, "CipherText": data.hex().upper(),
                               "DecryptionAttributes": {"Symmetric": symmetric}}, "PlainText"
    if op.kind in (OpKind.GENERATE_MAC, OpKind.VERIFY_MAC):
        algorithm, data, length = op.args  # VERIFY_MAC: (.., mac); the codec compares the whole MAC itself
        params: dict[str, Any] = {"KeyIdentifier": arn, "MessageData": data.hex().upper(),
                                  "GenerationAttributes": {"Algorithm": algorithm}}
        if op.kind is OpKind.GENERATE_MAC and length:
            params["MacLength"] = length
        return "GenerateMac", params, "Mac"
    raise InvalidArgument(f"{op.kind.value} is not offered by APC regions")


def pick_canary(keys: dict[str, KeyInfo]) -> tuple[str, dict[str, Any]] | None:
    """A data-plane request on a discovered key that proves the region signs and answers; None: no such key."""
    for key in keys.values():
        if key.key_usage == DATA_KEY and "encrypt" in key.usages:
            return "EncryptData", {"KeyIdentifier": key.label, "PlainText": _ZERO_BLOCKS,
                                   "EncryptionAttributes": {"Symmetric": {"Mode": "ECB"}}}
        if key.key_usage in ("TR31_M6_ISO_9797_5_CMAC_KEY", "TR31_M7_HMAC_KEY") and "sign" in key.usages:
            algorithm = "CMAC" if key.key_usage.startswith("TR31_M6") else key.algorithm
            if algorithm:
                return "GenerateMac", {"KeyIdentifier": key.label, "MessageData": "00",
                                       "GenerationAttributes": {"Algorithm": algorithm}}
    return None
