"""The backend contract: perform one operation on a session slot, report inventory, close.

A new backend kind (a payShield-style TCP HSM, a cloud region) is one new file implementing this.
Failures must already be translated into hsmlb.errors at the backend's boundary.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from hsmlb.ops import KeyInfo, Operation, OpKind


@dataclass(slots=True)
class NodeStats:
    ops_ok: int = 0
    ops_failed: int = 0
    last_fault: str = ""


class Backend(Protocol):
    name: str
    kind: str
    capabilities: frozenset[OpKind]  # operations this node can serve; the router sends it no others

    @property
    def state(self) -> str:
        """starting | up | down"""

    @property
    def keys(self) -> dict[str, KeyInfo]:
        """alias -> key, as discovered on the node."""

    async def start(self) -> None: ...

    def perform(self, op: Operation, slot: int) -> Awaitable[Any]:
        """Run one operation on session slot `slot`; raises hsmlb.errors types."""

    async def probe(self) -> None:
        """A harmless canary for active health checks; raises on failure."""

    async def inject_fault(self, fault: str, value: float = 0.0) -> None:
        """Test-only hooks, refused unless the config enables fault injection."""

    async def close(self) -> None: ...
