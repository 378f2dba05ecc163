"""The backend contract: perform one operation on a session slot, report inventory, close.

A new backend kind (a payShield-style TCP HSM, a cloud region) is one new file implementing this.
Failures must already be translated into hsmlb.errors at the backend's boundary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hsmlb.ops import Capability, KeyInfo, Operation

# Called with the node whose state changed; a (re)discovered key inventory comes with the move to "up".
# The server rebuilds its routing tables and gRPC health status from it.
ChangeCallback = Callable[[Any], None]


@dataclass(slots=True)
class NodeStats:
    ops_ok: int = 0
    ops_failed: int = 0
    last_fault: str = ""


class Backend(Protocol):
    name: str
    kind: str
    capabilities: frozenset[Capability]  # what this node can do; the router sends it no op needing more
    on_change: list[ChangeCallback]  # fired with the node when its state (and so its inventory) changes

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


class BackendState:
    """The state, key inventory and change callbacks of a node, kept once for every backend kind so
    that what counts as a change, and who hears of it, cannot drift between kinds.

    A backend sets `_keys` itself when it (re)discovers its inventory, then moves its state with
    `_set_state`, which fires `on_change` only on a real transition.
    """

    def __init__(self) -> None:
        self._state = "starting"
        self._keys: dict[str, KeyInfo] = {}
        self.on_change: list[ChangeCallback] = []

    @property
    def state(self) -> str:
        return self._state

    @property
    def keys(self) -> dict[str, KeyInfo]:
        return self._keys

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            for callback in self.on_change:
                callback(self)
