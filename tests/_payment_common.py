"""What every payment test module shares: the public vectors, the dev keys file's clear material, the
hex spelling the APC model uses, ISO PIN-format builders, and vector-claim bookkeeping. The tables are
read-only mappings, so no test can change what another sees."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from hsmlb.dev.cluster import default_keys_file
from hsmlb.keys import KeyEntry, load_keys
from hsmlb.v1 import hsmlb_pb2 as pb

VECTORS = Path(__file__).resolve().parent / "vectors"


def _vectors(name: str) -> Mapping[str, dict[str, Any]]:
    return MappingProxyType({v["id"]: v for v in json.loads((VECTORS / name).read_text())["vectors"]})


PUBLIC = _vectors("public_kat.json")
EXTRA = _vectors("extra_kat.json")
ALL: Mapping[str, dict[str, Any]] = MappingProxyType({**PUBLIC, **EXTRA})

# hsmlb/dev/dev-keys.yaml, loaded once: the entries, and alias -> clear key bytes for those that carry material.
DEV_KEYS: tuple[KeyEntry, ...] = tuple(load_keys(default_keys_file()))
MATERIAL: Mapping[str, bytes] = MappingProxyType(
    {e.alias: m for e in DEV_KEYS if (m := e.material()) is not None})


# Vector key group -> the dev alias that holds its key; the pyemv cryptogram vectors that map to APC requests.
CMAC_ALIASES = MappingProxyType({"AES128": "alias/cmac-aes128", "AES192": "alias/cmac-aes192",
                                 "AES256": "alias/cmac-aes256", "TDES2": "alias/cmac-tdes2",
                                 "TDES3": "alias/cmac-tdes3"})
CVN_IDS = ("emv-pyemv-cvn10", "emv-pyemv-cvn18", "emv-pyemv-cvn133-mastercard-skd")


def h(data: bytes) -> str:
    """Bytes as the APC model spells them: upper-case hex."""
    return data.hex().upper()


def iso_format(n: int, pan: str) -> pb.TranslationIsoFormats:
    """TranslatePinData attributes for ISO format `n`; format 1 carries no PAN."""
    if n == 1:
        return pb.TranslationIsoFormats(iso_format1=pb.TranslationPinDataIsoFormat1())
    return pb.TranslationIsoFormats(**{f"iso_format{n}": pb.TranslationPinDataIsoFormat034(
        primary_account_number=pan)})


F = TypeVar("F", bound=Callable[..., Any])


class Claims:
    """Vector ids that tests claim, gathered at import by decorating them: a bookkeeping test compares the
    union with the vector files, so a new vector no test places fails loudly."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def __call__(self, *ids: str) -> Callable[[F], F]:
        for vid in ids:
            assert vid in ALL, vid
            self.ids.add(vid)
        return lambda fn: fn
