"""Backends: one small protocol (base.py), one file per kind, and the factory that picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hsmlb.backends.base import Backend, NodeStats

if TYPE_CHECKING:
    from hsmlb.config import ApcRegionConfig, Pkcs11NodeConfig

__all__ = ["Backend", "NodeStats", "create_backend"]


def create_backend(node_config: Pkcs11NodeConfig | ApcRegionConfig, fault_injection: bool = False) -> Backend:
    """The backend for a node's `kind`. Imports are local so a daemon without regions never loads
    aiohttp/boto3, and one without tokens never loads the PKCS#11 side."""
    if node_config.kind == "apc":
        from hsmlb.backends.apc import ApcRegionBackend

        return ApcRegionBackend(node_config, fault_injection=fault_injection)  # type: ignore[arg-type]
    if node_config.kind == "pkcs11":
        from hsmlb.backends.pkcs11 import Pkcs11Backend

        return Pkcs11Backend(node_config, fault_injection=fault_injection)  # type: ignore[arg-type]
    raise ValueError(f"unknown node kind {node_config.kind!r}")
