"""The emulator's key inventory: the dev keys file, with stable ARNs and dev-cluster KCVs.

Why: the daemon routes by key identifier and cross-checks KCVs between backends, so an APC key
must carry the same KCV the SoftHSM2 tokens report for the same alias, and a stable ARN so that
restarts and separate regions agree on identity.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hsmlb import keys as keys_file
from hsmlb.config import ConfigError
from hsmlb.payments import engine
from hsmlb.payments.types import KeyMaterial, KeyNotFoundError

ACCOUNT = "111122223333"
_REGION = re.compile(r"[a-z]{2}-[a-z]{1,16}-[0-9]+")  # the control plane model's Region pattern

# APC's KeyModesOfUse for each KeyUsage the keys file can name (what CreateKey would accept).
_MODES: dict[str, tuple[str, ...]] = {
    "TR31_D0_SYMMETRIC_DATA_ENCRYPTION_KEY": ("Encrypt", "Decrypt", "Wrap", "Unwrap"),
    "TR31_P0_PIN_ENCRYPTION_KEY": ("Encrypt", "Decrypt", "Wrap", "Unwrap"),
    "TR31_K0_KEY_ENCRYPTION_KEY": ("Encrypt", "Decrypt", "Wrap", "Unwrap"),
    "TR31_B0_BASE_DERIVATION_KEY": ("DeriveKey",),
    "TR31_E0_EMV_MKEY_APP_CRYPTOGRAMS": ("DeriveKey",),
    "TR31_C0_CARD_VERIFICATION_KEY": ("Generate", "Verify"),
    "TR31_M1_ISO_9797_1_MAC_KEY": ("Generate", "Verify"),
    "TR31_M3_ISO_9797_3_MAC_KEY": ("Generate", "Verify"),
    "TR31_M6_ISO_9797_5_CMAC_KEY": ("Generate", "Verify"),
    "TR31_M7_HMAC_KEY": ("Generate", "Verify"),
    "TR31_V1_IBM3624_PIN_VERIFICATION_KEY": ("Generate", "Verify"),
    "TR31_V2_VISA_PIN_VERIFICATION_KEY": ("Generate", "Verify"),
    "TR31_P1_PIN_GENERATION_KEY": ("Generate", "Verify"),
}
_ALL_MODES = ("Encrypt", "Decrypt", "Wrap", "Unwrap", "Generate", "Sign", "Verify", "DeriveKey", "NoRestrictions")


def check_value(algorithm: str, material: bytes) -> tuple[str, str]:
    """(KCV hex, KeyCheckValueAlgorithm) as the dev cluster's SoftHSM2 tokens report it.

    The engine's kcv(): TDES/AES per ANSI X9.24 (leftmost 3 bytes of E_K(zero block)); HMAC keys
    are generic secrets on the tokens, whose check value is SHA-1(padded key)[:3], which APC's
    model names SHA_1.
    """
    return engine.kcv(algorithm, material), "SHA_1" if algorithm.startswith("HMAC") else "ANSI_X9_24"


def key_id(alias: str) -> str:
    """Stable 32-character key id from the alias: same in every region and across restarts."""
    return hashlib.sha256(alias.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EmulatedKey:
    alias: str
    arn: str
    algorithm: str
    usage: str
    kcv: str
    kcv_algorithm: str
    material: bytes

    def description(self, created: datetime) -> dict[str, object]:
        """The control plane's `Key` shape."""
        modes = _MODES.get(self.usage, ())
        return {
            "KeyArn": self.arn,
            "KeyAttributes": {
                "KeyUsage": self.usage, "KeyClass": "SYMMETRIC_KEY", "KeyAlgorithm": self.algorithm,
                "KeyModesOfUse": {mode: mode in modes for mode in _ALL_MODES},
            },
            "KeyCheckValue": self.kcv, "KeyCheckValueAlgorithm": self.kcv_algorithm,
            "Enabled": True, "Exportable": False, "KeyState": "CREATE_COMPLETE", "KeyOrigin": "EXTERNAL",
            "CreateTimestamp": created.timestamp(), "UsageStartTimestamp": created.timestamp(),
        }

    def summary(self, created: datetime) -> dict[str, object]:
        """The control plane's `KeySummary` shape."""
        full = self.description(created)
        return {name: full[name] for name in ("KeyArn", "KeyState", "KeyAttributes", "KeyCheckValue",
                                              "Exportable", "Enabled")}


class KeyStore:
    """Alias and ARN lookup over the symmetric keys of a keys file (asymmetric ones are skipped:
    APC's data plane has no Sign, and their material is generated per dev-cluster state dir)."""

    def __init__(self, path: str | Path, region: str) -> None:
        if not _REGION.fullmatch(region):  # the model's KeyArn pattern needs a well-formed region
            raise ConfigError(f"region must look like an AWS region (us-east-1), not {region!r}")
        self.region = region
        self.created = datetime.now(UTC).replace(microsecond=0)
        self.prefix = f"arn:aws:payment-cryptography:{region}:{ACCOUNT}:"
        self.keys: list[EmulatedKey] = []
        self.skipped: list[str] = []
        for entry in keys_file.load_keys(path):
            if entry.asymmetric:
                self.skipped.append(entry.alias)
                continue
            material = keys_file.token_material(entry)  # what the dev tokens hold (HMAC padded)
            kcv, kcv_algorithm = check_value(entry.algorithm, material)
            self.keys.append(EmulatedKey(entry.alias, f"{self.prefix}key/{key_id(entry.alias)}", entry.algorithm,
                                         entry.usage, kcv, kcv_algorithm, material))
        self._by_name: dict[str, EmulatedKey] = {}
        for key in self.keys:
            self._by_name[key.alias] = key
            self._by_name[key.arn] = key
            self._by_name[self.prefix + key.alias] = key  # alias ARN form

    def find(self, identifier: str) -> EmulatedKey:
        key = self._by_name.get(identifier)
        if key is None:
            raise KeyNotFoundError(identifier)
        return key

    def resolve(self, identifier: str) -> KeyMaterial:
        """The engine's KeyResolver."""
        key = self.find(identifier)
        return KeyMaterial(identifier=identifier, algorithm=key.algorithm, usage=key.usage, material=key.material)
