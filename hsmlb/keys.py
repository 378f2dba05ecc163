"""The dev keys file: `[{alias, algorithm, usage, material_hex, nodes}]`, validated.

Clear key material is for dev and test clusters only; production configs never carry it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from hsmlb.config import ConfigError
from hsmlb.payments.types import SYMMETRIC_BYTES  # the engine's key lengths, so both check the same

Algorithm = Literal["AES_128", "AES_192", "AES_256", "TDES_2KEY", "TDES_3KEY", "HMAC_SHA224", "HMAC_SHA256",
                    "HMAC_SHA384", "HMAC_SHA512",
                    "RSA_2048", "ECC_NIST_P256"]
# HMAC keys go onto dev tokens zero-padded to this length: SoftHSM2 wants at least the digest length
# (64 bytes for SHA-512), and HMAC pads a short key with zeros to the hash's block size (RFC 2104
# s.2; 64 bytes for SHA-224/256, 128 for SHA-384/512), so a padded key gives the same MACs.
HMAC_MIN_KEY = 64

# APC key usage -> the token attributes it grants (the token enforces them; the router reads them back).
USAGE_ATTRIBUTES: dict[str, frozenset[str]] = {
    "TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY": frozenset({"encrypt", "decrypt"}),
    "TR31_P0_PIN_ENCRYPTION_KEY": frozenset({"encrypt", "decrypt"}),
    "TR31_K0_KEY_ENCRYPTION_KEY": frozenset({"encrypt", "decrypt"}),
    "TR31_B0_BASE_DERIVATION_KEY": frozenset({"encrypt"}),
    "TR31_C0_CARD_VERIFICATION_KEY": frozenset({"encrypt", "decrypt"}),
    "TR31_E0_EMV_MKEY_APP_CRYPTOGRAMS": frozenset({"encrypt"}),
    "TR31_M1_ISO_9797_1_MAC_KEY": frozenset({"sign", "verify"}),
    "TR31_M3_ISO_9797_3_MAC_KEY": frozenset({"sign", "verify"}),
    "TR31_M6_ISO_9797_5_CMAC_KEY": frozenset({"sign", "verify"}),
    "TR31_M7_HMAC_KEY": frozenset({"sign", "verify"}),
    "TR31_S0_ASYMMETRIC_KEY_FOR_DIGITAL_SIGNATURE": frozenset({"sign", "verify"}),
}


class KeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alias: str = Field(pattern=r"^alias/[A-Za-z0-9/_-]{1,250}$")
    algorithm: Algorithm
    usage: str
    material_hex: str | None = Field(None, repr=False)
    nodes: list[str] | None = Field(None, description="nodes that hold it; default: every primary node")

    @field_validator("usage")
    @classmethod
    def _known_usage(cls, value: str) -> str:
        if value not in USAGE_ATTRIBUTES:
            raise ValueError(f"unknown key usage; known: {', '.join(sorted(USAGE_ATTRIBUTES))}")
        return value

    @field_validator("material_hex")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", value):
            raise ValueError("must be an even number of hex digits")
        return value

    def material(self) -> bytes | None:
        data = bytes.fromhex(self.material_hex) if self.material_hex else None
        want = SYMMETRIC_BYTES.get(self.algorithm)
        if want is not None and (data is None or len(data) != want):
            raise ConfigError(f"{self.alias}: material_hex must be {want} bytes for {self.algorithm}")
        if self.algorithm.startswith("HMAC") and not data:
            raise ConfigError(f"{self.alias}: material_hex is required for {self.algorithm}")
        return data

    @property
    def asymmetric(self) -> bool:
        return self.algorithm in ("RSA_2048", "ECC_NIST_P256")


def token_material(entry: KeyEntry) -> bytes:
    """The bytes a dev token is given for `entry`, over which its KCV is computed.

    The keys-file material, with HMAC keys zero-padded to HMAC_MIN_KEY (same MACs, see above).
    A 2-key TDES key stays K1K2 here: the token stores K1K2K1, which has the same KCV.
    """
    material = entry.material() or b""
    return material.ljust(HMAC_MIN_KEY, b"\0") if entry.algorithm.startswith("HMAC") else material


_ENTRIES = TypeAdapter(list[KeyEntry])


def load_keys(path: str | Path) -> list[KeyEntry]:
    try:
        data = yaml.safe_load(Path(path).read_text())
        entries = _ENTRIES.validate_python(data)
    except OSError as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc.strerror}") from None
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"keys file {path}: {where}") from None
    for entry in entries:
        entry.material()
    aliases = [e.alias for e in entries]
    if len(set(aliases)) != len(aliases):
        raise ConfigError(f"keys file {path}: duplicate aliases")
    return entries
