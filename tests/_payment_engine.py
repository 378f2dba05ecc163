"""hsmlb.payments.engine driven in this process with the dev keys (no cluster): the key table, resolvers and
`run` shared by the engine-level known-answer and property tests."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hsmlb.payments import KeyMaterial, KeyNotFoundError, KeyResolver, engine
from tests._payment_common import DEV_KEYS, Claims

# The dev keys as the engine sees them. Read-only: a test that needs another key builds its own table (`adhoc`).
KEYS: Mapping[str, KeyMaterial] = MappingProxyType(
    {e.alias: KeyMaterial(e.alias, e.algorithm, e.usage, m) for e in DEV_KEYS if (m := e.material()) is not None})

# Vector ids the engine-level KAT modules check (see test_every_vector_is_checked).
checks = Claims()


def resolver(keys: Mapping[str, KeyMaterial]) -> KeyResolver:
    """A KeyResolver over `keys` that fails as the engine expects for an alias it does not hold."""
    def resolve(identifier: str) -> KeyMaterial:
        try:
            return keys[identifier]
        except KeyError:
            raise KeyNotFoundError(identifier) from None
    return resolve


resolve = resolver(KEYS)


def run(op: str, keys: Mapping[str, KeyMaterial] = KEYS, **params: Any) -> dict:
    """engine.execute with APC-named params (`keys` cannot clash: APC members are CamelCase)."""
    return engine.execute(op, params, resolver(keys))


def adhoc(alias: str, algorithm: str, usage: str, hex_key: str) -> dict[str, KeyMaterial]:
    """The dev keys plus one that no dev alias holds (vector-specific), as a fresh table: no other test sees it."""
    return {**KEYS, alias: KeyMaterial(alias, algorithm, usage, bytes.fromhex(hex_key))}
